// Ban lists and HELO checks through real SMTP sessions. Loopback may not relay in these tests
// (relay clients skip the HELO checks), so every rule has to do its own work.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { withTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';

const CLOSED = { forward_from_ip: ['192.0.2.0/24'] };

/** EHLO, MAIL, RCPT; the three replies. */
async function dialogue(app: TestApp, helo: string, from: string, to: string): Promise<string[]> {
  const c = await RawClient.connect(app.port);
  try {
    await c.reply();
    c.send(`EHLO ${helo}\r\nMAIL FROM:<${from}>\r\nRCPT TO:<${to}>\r\n`);
    return (await c.replies(3)).map((r) => r.split('\n')[0] as string);
  } finally {
    c.close();
  }
}

test('ban.ip refuses the client (answered at RCPT), others pass', async () => {
  await withTestApp({ relay: CLOSED, ban: { ip: ['127.0.0.0/8'] } }, async (app) => {
    const r = await dialogue(app, 'client.example', 'a@src.test', 'u@example.test');
    assert.equal(r[2], '554 5.7.1 Client host [127.0.0.1] blocked');
    assert.ok(app.logs().some((l) => l.check === 'ban_ip' && l.setting === 'ban.ip'));
  });
  await withTestApp({ relay: CLOSED, ban: { ip: ['10.0.0.0/8'] } }, async (app) => {
    assert.equal((await dialogue(app, 'client.example', 'a@src.test', 'u@example.test'))[2], '250 2.1.5 Ok');
  });
});

test('ban.mailfrom patterns, ban.mailfrom_regex and ban.rcptto', async () => {
  await withTestApp({ relay: CLOSED, ban: { mailfrom: ['*@aol.test'], mailfrom_regex: ['^[0-9]{6,}@'], rcptto: ['abuse-trap@*'] } }, async (app) => {
    assert.equal((await dialogue(app, 'client.example', 'x@AOL.test', 'u@example.test'))[2], '550 5.7.1 <x@aol.test>: Sender address rejected: matches *@aol.test');
    assert.equal((await dialogue(app, 'client.example', '1234567@spam.test', 'u@example.test'))[2], '550 5.7.1 <1234567@spam.test>: Sender address rejected');
    assert.equal((await dialogue(app, 'client.example', 'ok@src.test', 'abuse-trap@example.test'))[2], '550 5.7.1 <abuse-trap@example.test>: Recipient address rejected: matches abuse-trap@*');
    assert.equal((await dialogue(app, 'client.example', 'ok@src.test', 'u@example.test'))[2], '250 2.1.5 Ok');
  });
});

test('ban.action: tempfail answers 450, score tags the message with X-Spam-Warning', async () => {
  await withTestApp({ relay: CLOSED, ban: { mailfrom: ['*@aol.test'], action: 'tempfail' } }, async (app) => {
    assert.match((await dialogue(app, 'client.example', 'x@aol.test', 'u@example.test'))[2] as string, /^450 4\.7\.1 /);
  });
  await withTestApp({ relay: CLOSED, ban: { mailfrom: ['*@aol.test'], action: 'score', score: 4 } }, async (app) => {
    const c = await RawClient.connect(app.port);
    await c.reply();
    c.send('EHLO client.example\r\nMAIL FROM:<x@aol.test>\r\nRCPT TO:<tagged@example.test>\r\nDATA\r\n');
    await c.replies(4);
    c.send('Subject: tagged\r\n\r\nhi\r\n.\r\n');
    assert.match(await c.reply(), /^250 2\.0\.0 Ok: queued/);
    c.close();
    const [file] = await app.waitMaildir('tagged', 1);
    const { readFileSync } = await import('node:fs');
    assert.match(readFileSync(file as string, 'utf8'), /^X-Spam-Warning: ban_mailfrom: <x@aol\.test>: Sender address rejected: matches \*@aol\.test\r\nReceived: /);
  });
});

test('HELO names: refused at RCPT with the reason; loopback relay clients are not checked', async () => {
  await withTestApp({ relay: CLOSED }, async (app) => {
    assert.equal((await dialogue(app, 'localhost', 'a@src.test', 'u@example.test'))[2], '550 5.7.1 <localhost>: Helo command rejected: localhost is not your name');
    assert.equal((await dialogue(app, 'mx.example.test', 'a@src.test', 'u@example.test'))[2], '550 5.7.1 <mx.example.test>: Helo command rejected: that is our name, not yours');
    assert.equal((await dialogue(app, '203.0.113.5', 'a@src.test', 'u@example.test'))[2], '550 5.7.1 <203.0.113.5>: Helo command rejected: an IP address must be in brackets');
    assert.equal((await dialogue(app, '[203.0.113.5]', 'a@src.test', 'u@example.test'))[2], '550 5.7.1 <[203.0.113.5]>: Helo command rejected: address literal [203.0.113.5] is not your address');
    assert.equal((await dialogue(app, 'workstation', 'a@src.test', 'u@example.test'))[2], '550 5.7.1 <workstation>: Helo command rejected: need a fully qualified host name');
    assert.equal((await dialogue(app, '[127.0.0.1]', 'a@src.test', 'u@example.test'))[0]?.slice(0, 3), '250', 'EHLO itself is answered; the refusal waits for RCPT');
    assert.equal((await dialogue(app, 'client.example', 'a@src.test', 'u@example.test'))[2], '250 2.1.5 Ok');
  });
  await withTestApp({ relay: CLOSED, smtp: { delay_reject: false } }, async (app) => {
    assert.equal((await dialogue(app, 'localhost', 'a@src.test', 'u@example.test'))[0], '550 5.7.1 <localhost>: Helo command rejected: localhost is not your name', 'without delay_reject: at EHLO');
  });
  await withTestApp({}, async (app) => {
    assert.equal((await dialogue(app, 'workstation', 'a@src.test', 'u@example.test'))[2], '250 2.1.5 Ok', 'loopback may relay, so its HELO is not judged');
  });
});

test('an authenticated client is not held to its HELO name; ban.ip still applies', async () => {
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const { hashPassword } = await import('../src/auth/passwords.ts');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-helo-auth-'));
  try {
    const users = path.join(dir, 'users');
    fs.writeFileSync(users, `roamer:${await hashPassword('pw')}\n`);
    await withTestApp({ relay: CLOSED, auth: { users_file: users } }, async (app) => {
      const c = await RawClient.connect(app.port);
      await c.reply();
      c.send(`EHLO workstation\r\nAUTH PLAIN ${Buffer.from('\0roamer\0pw').toString('base64')}\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<u@example.test>\r\n`);
      const r = await c.replies(4);
      assert.equal(r[1], '235 2.7.0 Authentication successful');
      assert.equal(r[3], '250 2.1.5 Ok');
      c.close();
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
