// Clients that half-close (shutdown(SHUT_WR)) and keep reading: Exim 4.96 without TLS writes
// the final "." and QUIT in one go and shuts its sending side at once. Every command read before
// the end of the input is answered while the client can still read; a message the input ends
// inside is never acknowledged; every session still ends (issue 8, defect 6).
// mxguard runs in-process with Maildir delivery; the clients are plain node:net / node:tls
// (test/harness/half-close.ts). A real Exim doing the same: test/exim.peers.test.ts.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTestApp, withTestApp, type TestApp } from './harness/app.ts';
import { HalfCloseClient, splitReplies } from './harness/half-close.ts';
import { startHaproxy } from './harness/haproxy.ts';

function sessionsBalanced(app: TestApp): { connects: number; disconnects: number } {
  const logs = app.logs();
  return { connects: logs.filter((l) => l.msg === 'connect').length, disconnects: logs.filter((l) => l.msg === 'disconnect').length };
}

/** Waits until every session the app started has ended (each 'connect' log line has its 'disconnect'). */
async function allSessionsEnded(app: TestApp, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { connects, disconnects } = sessionsBalanced(app);
    if (connects === disconnects) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 25));
  }
}

function messageIds(files: string[]): string[] {
  return files.map((f) => /^Message-ID: (<[^>]+>)/im.exec(fs.readFileSync(f, 'latin1'))?.[1] ?? '?').sort();
}

let t: TestApp;
before(async () => {
  t = await startTestApp();
});
after(async () => {
  await t.stop();
});

/** Connects and reads the greeting; `greeting: false` does not wait for it, `read: false` never reads. */
async function greeted(port = t.port, opts: { greeting?: boolean; read?: boolean } = {}): Promise<HalfCloseClient> {
  const c = await HalfCloseClient.connect(port, { read: opts.read });
  if (opts.greeting !== false && opts.read !== false) assert.match(await c.reply(), /^220 mx\.example\.test /);
  return c;
}

test('Exim\'s ending: "." and QUIT in one write, then a half-close: the client reads 250 and 221, each message is queued once', async () => {
  const ids: string[] = [];
  for (let i = 1; i <= 5; i++) {
    const c = await greeted();
    c.send('EHLO exim.test\r\n');
    assert.match(await c.reply(), /^250-mx\.example\.test\n/);
    c.send('MAIL FROM:<sender@exim.test>\r\nRCPT TO:<halfclose@example.test>\r\nDATA\r\n');
    assert.equal(await c.reply(), '250 2.1.0 Ok');
    assert.equal(await c.reply(), '250 2.1.5 Ok');
    assert.match(await c.reply(), /^354 /);
    const id = `<half-close-${i}@exim.test>`;
    ids.push(id);
    c.halfClose(`Subject: half-close ${i}\r\nMessage-ID: ${id}\r\n\r\nbody ${i}\r\n.\r\nQUIT\r\n`);
    const rest = await c.rest();
    assert.match(rest, /^250 2\.0\.0 Ok: queued as [0-9A-Z]{14}\r\n221 2\.0\.0 mx\.example\.test Bye\r\n$/, `message ${i}`);
  }
  const files = await t.waitMaildir('halfclose', 5);
  assert.deepEqual(messageIds(files), ids.sort());
  assert.ok(await allSessionsEnded(t, 2000), JSON.stringify(sessionsBalanced(t)));
});

test('a half-close after a pipelined transaction and more commands: every complete command is answered, then the server closes', async () => {
  const c = await greeted();
  c.halfClose(
    'EHLO pipe.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<pipe@example.test>\r\nDATA\r\n' +
      'Subject: pipelined\r\nMessage-ID: <pipe-1@remote.test>\r\n\r\nbody\r\n.\r\n' +
      'RSET\r\nNOOP\r\nFOO bar\r\nVRFY pipe\r\nHELP\r\nNOOP',
  );
  const replies = splitReplies(await c.rest());
  assert.equal(replies.length, 10, JSON.stringify(replies));
  assert.match(replies[0] as string, /^250-mx\.example\.test\n/);
  assert.deepEqual(replies.slice(1, 3), ['250 2.1.0 Ok', '250 2.1.5 Ok']);
  assert.match(replies[3] as string, /^354 /);
  assert.match(replies[4] as string, /^250 2\.0\.0 Ok: queued as [0-9A-Z]{14}$/);
  assert.deepEqual(replies.slice(5, 7), ['250 2.0.0 Ok', '250 2.0.0 Ok']);
  assert.match(replies[7] as string, /^500 5\.5\.2 /);
  assert.match(replies[8] as string, /^252 /);
  assert.match(replies[9] as string, /^214 /, 'the last complete command is answered; the unterminated "NOOP" is not');
  assert.deepEqual(messageIds(await t.waitMaildir('pipe', 1)), ['<pipe-1@remote.test>']);

  // Everything sent and half-closed before the greeting: the greeting, then every answer.
  const early = await greeted(t.port, { greeting: false });
  early.halfClose('EHLO early.test\r\nNOOP\r\nQUIT\r\n');
  const all = splitReplies(await early.rest());
  assert.equal(all.length, 4, JSON.stringify(all));
  assert.match(all[0] as string, /^220 /);
  assert.match(all[1] as string, /^250-mx\.example\.test\n/);
  assert.equal(all[2], '250 2.0.0 Ok');
  assert.match(all[3] as string, /^221 /);
  assert.ok(await allSessionsEnded(t, 2000), JSON.stringify(sessionsBalanced(t)));
});

test('a half-close inside DATA, before the final dot: the message is not acknowledged, not queued, and the session ends', async () => {
  await withTestApp({}, async (app) => {
    const c = await greeted(app.port);
    c.send('EHLO cut.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<cut@example.test>\r\nDATA\r\n');
    await c.reply();
    await c.reply();
    await c.reply();
    assert.match(await c.reply(), /^354 /);
    c.halfClose('Subject: cut short\r\nMessage-ID: <cut@remote.test>\r\n\r\nno final dot\r\n.. stuffed\r\n');
    assert.equal(await c.rest(), '', 'nothing after 354: no 250 for a message that never ended');
    assert.ok(await allSessionsEnded(app, 2000), JSON.stringify(sessionsBalanced(app)));
    const logs = app.logs();
    assert.ok(!logs.some((l) => l.msg === 'transaction' && l.outcome === 'accepted'), 'nothing queued');
    assert.ok(logs.some((l) => l.msg === 'disconnect' && l.lostData === true), 'the disconnect says a message was lost');
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(app.maildir('cut'), []);
    const queue = path.join(app.dir, 'spool', 'queue');
    assert.deepEqual(fs.existsSync(queue) ? fs.readdirSync(queue) : [], [], 'no queue file left behind');
  });
});

test('after STARTTLS: "." and QUIT, then a TLS half-close: the client reads 250 and 221', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-halfclose-tls-'));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=mx.example.test'], { stdio: 'ignore' });
  try {
    await withTestApp({ tls: { cert, key } }, async (app) => {
      const c = await greeted(app.port);
      c.send('EHLO tls.test\r\n');
      assert.match(await c.reply(), /STARTTLS/);
      c.send('STARTTLS\r\n');
      assert.match(await c.reply(), /^220 2\.0\.0 /);
      await c.startTls();
      c.send('EHLO tls.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<tlshalf@example.test>\r\nDATA\r\n');
      assert.match(await c.reply(), /^250-/);
      assert.equal(await c.reply(), '250 2.1.0 Ok');
      assert.equal(await c.reply(), '250 2.1.5 Ok');
      assert.match(await c.reply(), /^354 /);
      c.halfClose('Subject: tls half-close\r\nMessage-ID: <tls-half@remote.test>\r\n\r\nsecret\r\n.\r\nQUIT\r\n');
      assert.match(await c.rest(), /^250 2\.0\.0 Ok: queued as [0-9A-Z]{14}\r\n221 2\.0\.0 mx\.example\.test Bye\r\n$/);
      const files = await app.waitMaildir('tlshalf', 1);
      assert.deepEqual(messageIds(files), ['<tls-half@remote.test>']);
      assert.ok(await allSessionsEnded(app, 2000), JSON.stringify(sessionsBalanced(app)));
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a client that half-closes and never reads is still cut off (close timer): no session is left behind', async () => {
  await withTestApp({}, async (app) => {
    // About 19 MB of replies: more than loopback's socket buffers hold, so our last write can
    // never finish and only the close timer ends the session.
    const c = await greeted(app.port, { read: false });
    c.halfClose('HELP\r\n'.repeat(200_000));
    const started = Date.now();
    assert.ok(await allSessionsEnded(app, 10_000), `session still open after ${Date.now() - started} ms: ${JSON.stringify(sessionsBalanced(app))}`);
    c.destroy();
  });
});

test('a graceful stop while a half-closed client\'s message is being committed: 250 first, then 421, and the stop is quick', async () => {
  const app = await startTestApp();
  let stopping: Promise<void> | undefined;
  try {
    const c = await greeted(app.port);
    c.send('EHLO stop.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<stop@example.test>\r\nDATA\r\n');
    for (let i = 0; i < 3; i++) await c.reply();
    assert.match(await c.reply(), /^354 /);
    c.halfClose('Subject: stopping\r\nMessage-ID: <stop@remote.test>\r\n\r\nbody\r\n.\r\nQUIT\r\n');
    const started = Date.now();
    stopping = app.stop();
    assert.match(await c.rest(), /^250 2\.0\.0 Ok: queued as [0-9A-Z]{14}\r\n421 4\.3\.2 mx\.example\.test Service shutting down/);
    await stopping;
    assert.ok(Date.now() - started < 2000, `stop took ${Date.now() - started} ms`);
    assert.ok(await allSessionsEnded(app, 0));
  } finally {
    await (stopping ?? app.stop());
  }
});

test('behind a real HAProxy (PROXY v2): the half-close passes through, and the client still reads 250 and 221', { timeout: 60_000 }, async () => {
  await withTestApp({ proxy_protocol: { listen: ['127.0.0.1:0'], timeout: '10s' } }, async (app) => {
    const hap = await startHaproxy({ backend: { host: '127.0.0.1', port: app.port }, sendProxy: 'v2' });
    try {
      const c = await greeted(hap.port);
      c.send('EHLO proxied.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<proxied@example.test>\r\nDATA\r\n');
      for (let i = 0; i < 3; i++) await c.reply();
      assert.match(await c.reply(), /^354 /);
      c.halfClose('Subject: proxied half-close\r\nMessage-ID: <proxied-half@remote.test>\r\n\r\nbody\r\n.\r\nQUIT\r\n');
      assert.match(await c.rest(), /^250 2\.0\.0 Ok: queued as [0-9A-Z]{14}\r\n221 2\.0\.0 mx\.example\.test Bye\r\n$/);
      assert.deepEqual(messageIds(await app.waitMaildir('proxied', 1)), ['<proxied-half@remote.test>']);

      // A proxy that shuts its sending side before the header is complete is dropped at once,
      // not after proxy_protocol.timeout.
      const cut = await HalfCloseClient.connect(app.port);
      const started = Date.now();
      cut.halfClose('PROXY TCP4 192.0.2.');
      assert.equal(await cut.rest(2000), '', 'no banner');
      assert.ok(Date.now() - started < 2000);
      assert.ok(app.logs().some((l) => l.check === 'proxy_protocol' && l.reason === 'closed before the header'));
      assert.ok(await allSessionsEnded(app, 2000), JSON.stringify(sessionsBalanced(app)));
    } finally {
      await hap.stop();
    }
  });
});
