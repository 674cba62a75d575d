// Issue 13, the smarthost route: relayed mail goes through a provider's submission server with
// STARTTLS required and AUTH from a password file. The smarthost here is a real mxguard with a
// submission listener (TLS, a password file of users, AUTH before MAIL), which relays to a Maildir.
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { freePort } from './harness/peers.ts';
import { hashPassword, writeUsers } from '../src/auth/passwords.ts';
import type { Config, ConfigInput } from '../src/config/schema.ts';

let dir = '';
let cert = '';
let far = '';
let port = 0;
let smarthost: TestApp;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-smarthost-'));
  cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=smarthost.test', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  const usersFile = path.join(dir, 'users');
  writeUsers(usersFile, new Map([['relayuser', await hashPassword('s3cret')]]));
  fs.writeFileSync(path.join(dir, 'good.pw'), 's3cret\n', { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'bad.pw'), 'wrong\n', { mode: 0o600 });
  far = path.join(dir, 'far');
  port = await freePort();
  smarthost = await startTestApp({
    listen: [{ address: `127.0.0.1:${port}`, mode: 'submission' }],
    tls: { cert, key },
    auth: { users_file: usersFile, plaintext_from: [] },
    relay: { forward_from_ip: ['192.0.2.0/24'] },
    submission: { senders: { relayuser: ['*@example.com'] } },
    routes: { 'far.test': `maildir:${far}/%d/%u` },
  });
});
after(async () => {
  await smarthost?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The sending mxguard: relayed mail ("*") goes to the smarthost. */
async function sender(t: TestContext, isp: Record<string, unknown>): Promise<TestApp> {
  const a = await startTestApp({ local_domains: ['example.com'], routes: { '*': 'smarthost:isp' }, smarthosts: { isp: { url: `smtp://127.0.0.1:${port}`, ...isp } } as ConfigInput['smarthosts'], queue: { retry: ['1h'] } });
  t.after(() => a.stop());
  return a;
}

async function relay(a: TestApp, rcpt: string, subject: string): Promise<void> {
  const c = await RawClient.connect(a.port, '127.0.0.1');
  try {
    assert.match(await c.reply(), /^220 /);
    c.send('EHLO laptop.example.com\r\n');
    assert.match(await c.reply(), /^250/);
    c.send(`MAIL FROM:<ann@example.com>\r\nRCPT TO:<${rcpt}>\r\nDATA\r\n`);
    assert.match(await c.reply(), /^250 /);
    assert.match(await c.reply(), /^250 /, 'a loopback client relays');
    assert.match(await c.reply(), /^354 /);
    c.send(`From: <ann@example.com>\r\nSubject: ${subject}\r\n\r\nthrough the smarthost\r\n.\r\n`);
    assert.match(await c.reply(10_000), /^250 /);
  } finally {
    c.close();
  }
}

async function logLine(a: TestApp, pred: (l: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const l = a.logs().find(pred);
    if (l) return l;
    if (Date.now() > deadline) assert.fail(JSON.stringify(a.logs().slice(-10)));
    await new Promise((r) => setTimeout(r, 25));
  }
}

test('relayed mail goes through the smarthost: STARTTLS, AUTH with the password file, ESMTPSA at the other end', async (t) => {
  const a = await sender(t, { user: 'relayuser', password_file: path.join(dir, 'good.pw') });
  await relay(a, 'bob@far.test', 'via isp');
  const delivered = await logLine(a, (l) => l.msg === 'delivered' && l.rcpt === 'bob@far.test');
  assert.equal(delivered.relay, 'smarthost:isp');
  const box = path.join(far, 'far.test', 'bob', 'new');
  const deadline = Date.now() + 10_000;
  while (!(fs.existsSync(box) && fs.readdirSync(box).length > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
  const [file] = fs.readdirSync(box);
  const text = fs.readFileSync(path.join(box, file as string), 'latin1');
  assert.match(text, /with ESMTPSA id /, 'TLS and AUTH on the way to the smarthost');
  assert.match(text, /Subject: via isp/);
});

test('a wrong password defers (4.7.8); tls: verify without the smarthost\'s CA defers (4.7.5), with it delivers', async (t) => {
  const bad = await sender(t, { user: 'relayuser', password_file: path.join(dir, 'bad.pw') });
  await relay(bad, 'carol@far.test', 'bad password');
  const deferred = await logLine(bad, (l) => l.msg === 'deferred' && l.rcpt === 'carol@far.test');
  assert.match(String(deferred.reply), /^451 4\.7\.8 authentication failed: 535 /);

  const unverified = await sender(t, { user: 'relayuser', password_file: path.join(dir, 'good.pw'), tls: 'verify' });
  await relay(unverified, 'dave@far.test', 'unverified');
  const refused = await logLine(unverified, (l) => l.msg === 'deferred' && l.rcpt === 'dave@far.test');
  assert.match(String(refused.reply), /^421 4\.7\.5 certificate verification failed/);

  const verified = await sender(t, { user: 'relayuser', password_file: path.join(dir, 'good.pw'), tls: 'verify', ca: cert });
  await relay(verified, 'erin@far.test', 'verified');
  await logLine(verified, (l) => l.msg === 'delivered' && l.rcpt === 'erin@far.test');

  const missing = await sender(t, { user: 'relayuser', password_file: path.join(dir, 'nosuch.pw') });
  await relay(missing, 'fay@far.test', 'no password file');
  const why = await logLine(missing, (l) => l.msg === 'deferred' && l.rcpt === 'fay@far.test');
  assert.match(String(why.reply), /^451 4\.3\.5 smarthost:isp: cannot read .*nosuch\.pw: ENOENT/);
});

test('a reload that adds a smarthost and routes to it: the next relayed message goes through it', async (t) => {
  const a = await startTestApp({ local_domains: ['example.com'], queue: { retry: ['1h'] } });
  t.after(() => a.stop());
  // The config a SIGHUP would load: the running one plus a route and its smarthost.
  const next: Config = {
    ...a.config,
    routes: { 'far.test': 'smarthost:isp' },
    smarthosts: { isp: { url: `smtp://127.0.0.1:${port}`, tls: 'required', user: 'relayuser', password_file: path.join(dir, 'good.pw') } },
  };
  a.app.reload(next);
  await relay(a, 'gus@far.test', 'after reload');
  const delivered = await logLine(a, (l) => l.msg === 'delivered' && l.rcpt === 'gus@far.test');
  assert.equal(delivered.relay, 'smarthost:isp');
});
