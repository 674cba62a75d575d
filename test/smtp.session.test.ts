// The SMTP engine over real TCP on loopback: the dialogue, pipelining at every chunk split,
// malformed input, limits, smuggling and STARTTLS. mxguard runs in-process with Maildir delivery.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { SMUGGLING_SEQUENCES } from './fixtures/smuggling.ts';

const SEQUENCES = SMUGGLING_SEQUENCES;

let t: TestApp;
before(async () => {
  t = await startTestApp();
});
after(async () => {
  await t.stop();
});

async function greeted(port = t.port): Promise<RawClient> {
  const c = await RawClient.connect(port);
  assert.match(await c.reply(), /^220 mx\.example\.test /);
  return c;
}

test('a plain transaction is queued and lands in the Maildir with a Received header', async () => {
  const c = await greeted();
  c.send('EHLO client.test\r\n');
  const ehlo = await c.reply();
  for (const kw of ['PIPELINING', 'SIZE 26214400', '8BITMIME', 'SMTPUTF8', 'ENHANCEDSTATUSCODES']) assert.ok(ehlo.includes(kw), kw);
  assert.ok(!ehlo.includes('STARTTLS'), 'no STARTTLS without a certificate');
  c.send('MAIL FROM:<sender@remote.test>\r\n');
  assert.equal(await c.reply(), '250 2.1.0 Ok');
  c.send('RCPT TO:<plain@example.test>\r\n');
  assert.equal(await c.reply(), '250 2.1.5 Ok');
  c.send('DATA\r\n');
  assert.match(await c.reply(), /^354 /);
  c.send('Subject: plain\r\nMessage-ID: <plain-1@remote.test>\r\n\r\nHello\r\n..dot line\r\n.\r\n');
  const queued = await c.reply();
  const m = /^250 2\.0\.0 Ok: queued as ([0-9A-Z]{14})$/.exec(queued);
  assert.ok(m, queued);
  c.send('QUIT\r\n');
  assert.match(await c.reply(), /^221 /);
  assert.ok(await c.closed());
  const files = await t.waitMaildir('plain', 1);
  assert.equal(files.length, 1);
  const text = fs.readFileSync(files[0] as string, 'utf8');
  assert.match(text, new RegExp(`^Return-Path: <sender@remote\\.test>\\r\\nDelivered-To: plain@example\\.test\\r\\nReceived: from client\\.test \\(\\[127\\.0\\.0\\.1\\]\\)\\r\\n\\tby mx\\.example\\.test \\(mxguard\\) with ESMTP id ${m[1]}\\r\\n\\tfor <plain@example\\.test>;`));
  assert.ok(text.endsWith('Subject: plain\r\nMessage-ID: <plain-1@remote.test>\r\n\r\nHello\r\n.dot line\r\n'));
});

test('a pipelined transaction split at every position is answered in order', async () => {
  const wire = 'EHLO split.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<split@example.test>\r\nRCPT TO:<nobody@elsewhere.test>\r\nDATA\r\n';
  const body = 'Subject: split\r\n\r\nbody\r\n.\r\nRSET\r\nQUIT\r\n';
  const full = wire + body;
  let delivered = 0;
  for (let cut = 1; cut < full.length; cut++) {
    const c = await greeted();
    c.send(full.slice(0, cut));
    await new Promise((r) => setTimeout(r, 2)); // let the first part arrive alone
    c.send(full.slice(cut));
    const r = await c.replies(8);
    assert.match(r[0] as string, /^250-mx\.example\.test/);
    assert.deepEqual(r.slice(1, 4), ['250 2.1.0 Ok', '250 2.1.5 Ok', '250 2.1.5 Ok'], `cut at ${cut}`);
    assert.match(r[4] as string, /^354 /);
    assert.match(r[5] as string, /^250 2\.0\.0 Ok: queued as /);
    assert.equal(r[6], '250 2.0.0 Ok');
    assert.match(r[7] as string, /^221 /);
    delivered++;
    c.close();
  }
  const files = await t.waitMaildir('split', delivered, 10_000);
  assert.equal(files.length, full.length - 1);
});

test('malformed commands get clear replies and the session goes on', async () => {
  const c = await greeted();
  const cases: Array<[string, RegExp]> = [
    ['FOO bar\r\n', /^500 5\.5\.2 /],
    ['MAIL FROM:<a@b.test>\r\n', /^503 5\.5\.1 .*HELO/], // helo.required
    ['EHLO client.test\r\n', /^250[ -]/],
    ['MAIL FROM:<a@b.test>\r\n', /^250 /],
    ['MAIL FROM:<a@b.test>\r\n', /^503 5\.5\.1 .*nested/],
    ['RSET\r\n', /^250 /],
    ['RCPT TO:<x@example.test>\r\n', /^503 5\.5\.1 /],
    ['DATA\r\n', /^503 5\.5\.1 /],
    ['MAIL FROM:<broken\r\n', /^501 /],
    ['MAIL FROM:<a@b.test> FOO=1\r\n', /^555 5\.5\.4 /],
    ['EHLO\r\n', /^501 /],
    ['VRFY alice\r\n', /^252 /],
    ['HELP\r\n', /^214 /],
    ['NOOP\r\n', /^250 /],
    ['X'.repeat(600) + '\r\n', /^500 5\.5\.2 .*too long/],
    ['NOOP\n', /^500 5\.5\.2 .*bare <LF>/],
    ['AUTH CRAM-MD5\r\n', /^504 5\.5\.4 /],
  ];
  for (const [line, expected] of cases) {
    c.send(line);
    assert.match(await c.reply(), expected, JSON.stringify(line.slice(0, 40)));
  }
  c.send('NOOP\r\n');
  assert.equal(await c.reply(), '250 2.0.0 Ok');
  c.close();
});

test('too many errors end the session with 421', async () => {
  const c = await greeted();
  for (let i = 0; i < 19; i++) c.send('BOGUS\r\n');
  const r = await c.replies(19);
  assert.ok(r.every((x) => x.startsWith('500')));
  c.send('BOGUS\r\n');
  const last = await c.replies(2);
  assert.match(last[1] as string, /^421 4\.7\.0 .*too many errors/);
  assert.ok(await c.closed());
});

test('recipients past limits.max_rcpts get 452 4.5.3', async () => {
  const small = await startTestApp({ limits: { max_rcpts: 2 } });
  try {
    const c = await greeted(small.port);
    c.send('EHLO x.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r1@example.test>\r\nRCPT TO:<r2@example.test>\r\nRCPT TO:<r3@example.test>\r\n');
    const r = await c.replies(5);
    assert.equal(r[4], '452 4.5.3 Error: too many recipients');
    c.close();
  } finally {
    await small.stop();
  }
});

test('relaying is refused unless the client is in relay.forward_from_ip', async () => {
  const strict = await startTestApp({ relay: { forward_from_ip: ['192.0.2.0/24'] } });
  try {
    const c = await greeted(strict.port);
    c.send('EHLO x.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<victim@elsewhere.test>\r\nRCPT TO:<ok@example.test>\r\nRCPT TO:<postmaster>\r\n');
    const r = await c.replies(5);
    assert.equal(r[2], '554 5.7.1 <victim@elsewhere.test>: Relay access denied');
    assert.equal(r[3], '250 2.1.5 Ok');
    assert.equal(r[4], '250 2.1.5 Ok', 'a bare <postmaster> is always ours');
    c.close();
  } finally {
    await strict.stop();
  }
  // Loopback may relay by default.
  const c = await greeted();
  c.send('EHLO x.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<someone@elsewhere.test>\r\n');
  assert.equal((await c.replies(3))[2], '250 2.1.5 Ok');
  c.close();
});

test('size limits: SIZE= too big is refused at MAIL; an oversized body is drained and refused', async () => {
  const small = await startTestApp({ limits: { max_message_size: '4KB' } });
  try {
    const c = await greeted(small.port);
    c.send('EHLO x.test\r\nMAIL FROM:<a@b.test> SIZE=999999\r\n');
    assert.match((await c.replies(2))[1] as string, /^552 5\.3\.4 /);
    c.send('MAIL FROM:<a@b.test>\r\nRCPT TO:<big@example.test>\r\nDATA\r\n');
    await c.replies(3);
    c.send(('x'.repeat(70) + '\r\n').repeat(200) + '.\r\n');
    assert.match(await c.reply(), /^552 5\.3\.4 /);
    // The session goes on and a small message still gets through.
    c.send('MAIL FROM:<a@b.test>\r\nRCPT TO:<big@example.test>\r\nDATA\r\n');
    await c.replies(3);
    c.send('Subject: small\r\n\r\nok\r\n.\r\n');
    assert.match(await c.reply(), /^250 2\.0\.0 Ok: queued/);
    c.close();
    assert.equal((await small.waitMaildir('big', 1)).length, 1);
  } finally {
    await small.stop();
  }
});

test('every smuggling sequence is refused and smuggles nothing (bare_lf: reject)', async () => {
  for (const seq of SEQUENCES) {
    const c = await greeted();
    const rcpt = `smug${SEQUENCES.indexOf(seq)}@example.test`;
    c.send(`EHLO x.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<${rcpt}>\r\nDATA\r\n`);
    await c.replies(4);
    c.send(`Subject: outer\r\n\r\nouter${seq}MAIL FROM:<evil@remote.test>\r\nRCPT TO:<smuggled@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n`);
    const r = await c.reply();
    assert.match(r, /^550 5\.(5\.2|6\.0) /, `${JSON.stringify(seq)} → ${r}`);
    c.send('QUIT\r\n');
    assert.match(await c.reply(), /^221 /);
    c.close();
  }
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(t.maildir('smuggled').length, 0);
});

test('with bare_lf: normalize, a smuggled message stays inside the one message', async () => {
  const norm = await startTestApp({ smtp: { bare_lf: 'normalize' } });
  try {
    for (const seq of SEQUENCES) {
      const c = await greeted(norm.port);
      c.send(`EHLO x.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<outer@example.test>\r\nDATA\r\n`);
      await c.replies(4);
      c.send(`Subject: outer\r\n\r\nouter${seq}MAIL FROM:<evil@remote.test>\r\nRCPT TO:<smuggled@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n`);
      assert.match(await c.reply(), /^250 2\.0\.0 Ok: queued/, JSON.stringify(seq));
      c.close();
    }
    const files = await norm.waitMaildir('outer', SEQUENCES.length);
    assert.equal(files.length, SEQUENCES.length);
    for (const f of files) {
      const text = fs.readFileSync(f, 'latin1');
      assert.ok(text.includes('MAIL FROM:<evil@remote.test>'));
      assert.doesNotMatch(text.replace(/\r\n/g, ''), /[\r\n\0]/, 'no bare CR/LF or NUL is stored');
    }
    assert.equal(norm.maildir('smuggled').length, 0);
  } finally {
    await norm.stop();
  }
});

test('an early talker is refused at RCPT; a patient client is not', async () => {
  const slow = await startTestApp({ smtp: { greet_delay: '300ms' } });
  try {
    const rude = await RawClient.connect(slow.port);
    rude.send('EHLO rude.test\r\n');
    assert.match(await rude.reply(), /^220 /);
    rude.send('MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n');
    const r = await rude.replies(3);
    assert.equal(r[2], '554 5.5.1 Error: protocol error: talked before greeting');
    rude.close();
    const polite = await greeted(slow.port);
    polite.send('EHLO polite.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n');
    assert.equal((await polite.replies(3))[2], '250 2.1.5 Ok');
    polite.close();
  } finally {
    await slow.stop();
  }
});

test('an idle client is cut off with 421 4.4.2 after limits.command_timeout', async () => {
  const quick = await startTestApp({ limits: { command_timeout: '300ms' } });
  try {
    const c = await greeted(quick.port);
    assert.match(await c.reply(3000), /^421 4\.4\.2 /);
    assert.ok(await c.closed());
  } finally {
    await quick.stop();
  }
});

test('limits.max_connections_per_ip refuses the extra connection with 421', async () => {
  const few = await startTestApp({ limits: { max_connections_per_ip: 2 } });
  try {
    const a = await greeted(few.port);
    const b = await greeted(few.port);
    const c = await RawClient.connect(few.port);
    assert.match(await c.reply(), /^421 4\.7\.0 .*too many connections/);
    a.close();
    b.close();
    c.close();
  } finally {
    await few.stop();
  }
});

test('STARTTLS: offered with a certificate, pipelined plaintext after it is discarded, state resets', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-tls-'));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=mx.example.test'], { stdio: 'ignore' });
  const secure = await startTestApp({ tls: { cert, key } });
  try {
    const c = await greeted(secure.port);
    c.send('EHLO x.test\r\n');
    assert.ok((await c.reply()).includes('STARTTLS'));
    // The injected RSET must not be answered (CVE-2011-0411).
    c.send('STARTTLS\r\nRSET\r\n');
    assert.match(await c.reply(), /^220 2\.0\.0 /);
    const tlsSocket = await c.startTls();
    assert.ok(tlsSocket.encrypted);
    // RFC 3207: TLS forgets the earlier EHLO, so MAIL needs a new one; that EHLO no longer offers STARTTLS.
    c.send('MAIL FROM:<a@b.test>\r\n');
    assert.equal(await c.reply(), '503 5.5.1 Error: send HELO/EHLO first');
    c.send('EHLO x.test\r\n');
    assert.ok(!(await c.reply()).includes('STARTTLS'));
    c.send('MAIL FROM:<a@b.test>\r\nRCPT TO:<tls@example.test>\r\nDATA\r\n');
    await c.replies(3);
    c.send('Subject: tls\r\n\r\nsecret\r\n.\r\n');
    assert.match(await c.reply(), /^250 2\.0\.0 Ok: queued/);
    c.close();
    const files = await secure.waitMaildir('tls', 1);
    assert.match(fs.readFileSync(files[0] as string, 'utf8'), /with ESMTPS id /);
  } finally {
    await secure.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a graceful stop says 421 at once to a client idle inside a transaction', async () => {
  const app = await startTestApp();
  const c = await greeted(app.port);
  c.send('EHLO x.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n');
  await c.replies(3);
  const started = Date.now();
  const stopping = app.stop();
  assert.match(await c.reply(2000), /^421 4\.3\.2 /);
  assert.ok(await c.closed());
  await stopping;
  assert.ok(Date.now() - started < 2000, `stop took ${Date.now() - started} ms`);
});

test('limits.tarpit_start: past it, each RCPT is answered later, and other sessions are not held up', async () => {
  const tar = await startTestApp({ limits: { tarpit_start: 2, tarpit_delay: '500ms', tarpit_except: [] } });
  try {
    const c = await greeted(tar.port);
    c.send('EHLO bulk.test\r\nMAIL FROM:<a@b.test>\r\n');
    await c.replies(2);
    const timings: number[] = [];
    for (let i = 1; i <= 4; i++) {
      const t0 = Date.now();
      c.send(`RCPT TO:<r${i}@example.test>\r\n`);
      assert.equal(await c.reply(3000), '250 2.1.5 Ok');
      timings.push(Date.now() - t0);
    }
    // Recipients 1 and 2 at once; 3 after 500 ms; 4 after 1000 ms.
    assert.ok((timings[0] as number) < 450 && (timings[1] as number) < 450, `first two: ${timings}`);
    assert.ok((timings[2] as number) >= 490, `third: ${timings}`);
    assert.ok((timings[3] as number) >= 990, `fourth: ${timings}`);
    // While this session waits 1500 ms for its fifth answer, another one is served first.
    const order: string[] = [];
    c.send('RCPT TO:<r5@example.test>\r\n');
    const held = c.reply(3000).then((r) => order.push(`held ${r}`));
    const other = await greeted(tar.port);
    other.send('EHLO other.test\r\n');
    await other.reply();
    order.push('other');
    await held;
    assert.deepEqual(order, ['other', 'held 250 2.1.5 Ok']);
    c.close();
    other.close();
  } finally {
    await tar.stop();
  }
});

test('pipelined MAIL, RCPT, RCPT, DATA cost the server one write (RFC 2920: flush only when no command waits)', async () => {
  const c = await greeted();
  c.send('EHLO pipe.test\r\n');
  await c.reply();
  // Count what the server side of this connection writes (mxguard runs in this process).
  const writes: string[] = [];
  const original = net.Socket.prototype.write;
  const port = t.port;
  net.Socket.prototype.write = function (this: net.Socket, ...args: Parameters<typeof original>) {
    if (this.localPort === port) writes.push(String(args[0]));
    return original.apply(this, args);
  } as typeof original;
  try {
    c.send('MAIL FROM:<s@remote.test>\r\nRCPT TO:<pipe1@example.test>\r\nRCPT TO:<pipe2@example.test>\r\nDATA\r\n');
    assert.equal(await c.reply(), '250 2.1.0 Ok');
    assert.equal(await c.reply(), '250 2.1.5 Ok');
    assert.equal(await c.reply(), '250 2.1.5 Ok');
    assert.match(await c.reply(), /^354 /);
  } finally {
    net.Socket.prototype.write = original;
  }
  assert.equal(writes.length, 1, `one write for four replies, got ${JSON.stringify(writes)}`);
  c.send('Subject: p\r\n\r\nx\r\n.\r\nQUIT\r\n');
  assert.match(await c.reply(), /^250 /);
  assert.match(await c.reply(), /^221 /);
});
