// Unknown recipients are refused during SMTP (recipients.file), and <> may have one recipient.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { withTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';

async function rcpts(app: TestApp, from: string, to: string[]): Promise<string[]> {
  const c = await RawClient.connect(app.port);
  try {
    await c.reply();
    c.send(`EHLO client.example\r\nMAIL FROM:<${from}>\r\n${to.map((t) => `RCPT TO:<${t}>\r\n`).join('')}`);
    return (await c.replies(2 + to.length)).slice(2);
  } finally {
    c.close();
  }
}

test('recipients.file: listed users and catch-all domains pass, others get 550 5.1.1; edits count at once', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-rcpts-'));
  try {
    const file = path.join(dir, 'recipients');
    fs.writeFileSync(file, '# our users\nalice@example.test\nBob@Example.test\n@catchall.test\n');
    await withTestApp({ local_domains: ['example.test', 'catchall.test'], recipients: { file } }, async (app) => {
      assert.deepEqual(await rcpts(app, 'a@src.test', ['alice@example.test', 'BOB@example.test', 'anyone@catchall.test', 'nobody@example.test', 'postmaster@example.test', 'x@far.test']), [
        '250 2.1.5 Ok',
        '250 2.1.5 Ok',
        '250 2.1.5 Ok',
        '550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown',
        '250 2.1.5 Ok',
        '250 2.1.5 Ok', // relayed mail (loopback may relay) is not ours to judge
      ]);
      assert.ok(app.logs().some((l) => l.check === 'recipients' && l.setting === 'recipients.file' && l.rcpt === 'nobody@example.test'));
      fs.writeFileSync(file, 'alice@example.test\nnobody@example.test\n');
      assert.deepEqual(await rcpts(app, 'a@src.test', ['nobody@example.test', 'bob@example.test']), ['250 2.1.5 Ok', '550 5.1.1 <bob@example.test>: Recipient address rejected: User unknown']);
      fs.rmSync(file);
      assert.deepEqual(await rcpts(app, 'a@src.test', ['alice@example.test']), ['451 4.3.0 Temporary local problem, try again later'], 'an unreadable list never accepts');
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the null sender may have one recipient (mail_from.null_sender_max_rcpts)', async () => {
  await withTestApp({}, async (app) => {
    assert.deepEqual(await rcpts(app, '', ['a@example.test', 'b@example.test']), ['250 2.1.5 Ok', '550 5.5.3 Error: a message from <> may have at most 1 recipient']);
    assert.deepEqual(await rcpts(app, 'real@src.test', ['a@example.test', 'b@example.test']), ['250 2.1.5 Ok', '250 2.1.5 Ok']);
  });
});
