// Submission users keep their volume limits: a stolen password must not send without limit. A
// limits.rates rule keyed on auth_user holds on a submission listener after AUTH, where the
// network checks are waived (this failed before: every check waived for relay clients was
// waived for logged-in users too, rates and the throttle included).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { withTestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { freePort } from './harness/peers.ts';
import { hashPassword, writeUsers } from '../src/auth/passwords.ts';

test('a limits.rates rule on auth_user holds for a user on a submission listener', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-subrates-'));
  const users = path.join(dir, 'users');
  writeUsers(users, new Map([['alice@example.test', await hashPassword('wonderland')]]));
  const port = await freePort();
  try {
    await withTestApp(
      {
        listen: [{ address: `127.0.0.1:${port}`, mode: 'submission' }],
        auth: { users_file: users }, // loopback may AUTH without TLS (auth.plaintext_from)
        relay: { forward_from_ip: ['192.0.2.0/24'] },
        limits: { rates: [{ name: 'per_user', key: 'auth_user', count: 'messages', max: 1, per: '1h' }] },
      },
      async () => {
        const c = await RawClient.connect(port);
        const say = async (line: string) => {
          c.send(`${line}\r\n`);
          return c.reply();
        };
        try {
          assert.match(await c.reply(), /^220 /);
          assert.match(await say('EHLO laptop'), /^250/);
          assert.match(await say(`AUTH PLAIN ${Buffer.from('\0alice@example.test\0wonderland').toString('base64')}`), /^235 /);
          for (const [i, want] of [[1, /^250 /], [2, /^451 4\.7\.1 Rate limit per_user reached/]] as const) {
            assert.equal(await say('MAIL FROM:<alice@example.test>'), '250 2.1.0 Ok');
            const rcpt = await say('RCPT TO:<friend@far.test>');
            assert.match(rcpt, want, `message ${i}: ${rcpt}`);
            if (rcpt.startsWith('250')) {
              assert.match(await say('DATA'), /^354 /);
              assert.match(await say('Subject: one\r\n\r\nhi\r\n.'), /^250 /);
            } else assert.match(await say('RSET'), /^250 /);
          }
        } finally {
          c.close();
        }
      },
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
