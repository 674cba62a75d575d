// Issue 13, "Submission": listeners with a role. One mxguard with three listeners: mx (as
// always), submission (587-style: STARTTLS, AUTH before MAIL) and submissions (465-style:
// implicit TLS, RFC 8314). Users come from a real password file, the certificate from openssl;
// greylisting (always) and a greet delay are on, so the mx listener shows what the submission
// listeners skip. Loopback is not a relay client here (relay.forward_from_ip: 192.0.2.0/24).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { freePort, runSwaks } from './harness/peers.ts';
import { hashPassword, writeUsers } from '../src/auth/passwords.ts';
import { configSchema } from '../src/config/schema.ts';
import { generateKey } from '../src/delivery/dkim-sign.ts';
import { startDnsmasq, type DnsmasqPeer } from './harness/dns.ts';
import { DnsResolver } from '../src/dns/resolver.ts';
import { verifyMessage } from '../src/policy/auth/verify.ts';

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

let dir = '';
let cert = '';
let key = '';
let far = '';
let app: TestApp;
let mxPort = 0;
let subPort = 0;
let subsPort = 0;
/** Publishes the DKIM key our users' mail is signed with (the receiving side's DNS). */
let dm: DnsmasqPeer;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-submission-'));
  cert = path.join(dir, 'cert.pem');
  key = path.join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=mx.example.test'], { stdio: 'ignore' });
  const usersFile = path.join(dir, 'users');
  writeUsers(usersFile, new Map([
    ['alice', await hashPassword('wonderland')],
    ['bob@example.test', await hashPassword('builder')],
  ]));
  far = path.join(dir, 'far');
  // Mail from example.test users is DKIM-signed; the key's record is served by a real dnsmasq.
  const dkimKey = generateKey();
  fs.writeFileSync(path.join(dir, 'dkim.pem'), dkimKey.privateKey, { mode: 0o600 });
  const chunks: string[] = [];
  for (let i = 0; i < dkimKey.record.length; i += 250) chunks.push(dkimKey.record.slice(i, i + 250));
  dm = await startDnsmasq({ records: { txt: { 's1._domainkey.example.test': [chunks] } } });
  [mxPort, subPort, subsPort] = [await freePort(), await freePort(), await freePort()];
  app = await startTestApp({
    listen: [`127.0.0.1:${mxPort}`, { address: `127.0.0.1:${subPort}`, mode: 'submission' }, { address: `127.0.0.1:${subsPort}`, mode: 'submissions' }],
    tls: { cert, key },
    // TLS before AUTH for everyone, loopback included.
    auth: { users_file: usersFile, plaintext_from: [] },
    relay: { forward_from_ip: ['192.0.2.0/24'] },
    submission: { senders: { alice: ['alice@example.test', '*@alice.example'] } },
    routes: { 'far.test': `maildir:${far}` },
    greylist: { when: 'always' },
    smtp: { greet_delay: '1500ms' },
    dkim: { sign: [{ domain: 'example.test', selector: 's1', key: path.join(dir, 'dkim.pem') }] },
  });
});

after(async () => {
  await app?.stop();
  await dm?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Files delivered anywhere under `root` (a Maildir tree). */
function filesUnder(root: string): string[] {
  if (!fs.existsSync(root)) return [];
  return fs.readdirSync(root, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

async function waitFiles(root: string, count: number): Promise<string[]> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const files = filesUnder(root);
    if (files.length >= count || Date.now() > deadline) return files;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Sends one line and reads one reply. */
async function say(c: RawClient, line: string): Promise<string> {
  c.send(`${line}\r\n`);
  return c.reply();
}

test('config: a listen entry is "host:port" (mx) or {address, mode}; submissions needs tls', () => {
  const c = configSchema.parse({ listen: ['127.0.0.1:25', { address: '127.0.0.1:587', mode: 'submission' }, { address: '127.0.0.1:2526' }] });
  assert.deepEqual(c.listen, [
    { address: '127.0.0.1:25', mode: 'mx' },
    { address: '127.0.0.1:587', mode: 'submission' },
    { address: '127.0.0.1:2526', mode: 'mx' },
  ]);
  const bad = configSchema.safeParse({ listen: [{ address: '127.0.0.1:465', mode: 'submissions' }] });
  assert.equal(bad.success, false);
  assert.match(JSON.stringify(bad.error?.issues), /mode submissions \(implicit TLS\): it needs tls/);
  const proxied = configSchema.safeParse({ listen: [{ address: '127.0.0.1:465', mode: 'submissions' }], tls: { cert: 'c.pem', key: 'k.pem' }, proxy_protocol: { listen: ['127.0.0.1:465'] } });
  assert.match(JSON.stringify(proxied.error?.issues), /the PROXY protocol is not supported there/);
  const senders = configSchema.parse({ submission: { senders: { u: ['U.Ser@Example.COM', '*@Dom.Example'] } } }).submission.senders;
  assert.deepEqual(senders, { u: ['u.ser@example.com', '*@dom.example'] });
  assert.equal(configSchema.safeParse({ submission: { senders: { u: ['nobody'] } } }).success, false);
});

test('587: MAIL before AUTH is 530; AUTH only after STARTTLS; then an owned sender relays at once, a foreign one gets 553', async () => {
  const c = await RawClient.connect(subPort);
  try {
    const started = Date.now();
    assert.match(await c.reply(), /^220 mx\.example\.test /);
    assert.ok(Date.now() - started < 1000, 'no greet delay on a submission listener');
    const ehlo = await say(c, 'EHLO laptop');
    assert.ok(ehlo.includes('STARTTLS') && !ehlo.includes('AUTH'), ehlo);
    assert.equal(await say(c, 'MAIL FROM:<alice@example.test>'), '530 5.7.0 Authentication required');
    assert.equal(await say(c, `AUTH PLAIN ${b64('\0alice\0wonderland')}`), '538 5.7.11 Encryption required for requested authentication mechanism');
    assert.equal(await say(c, 'STARTTLS'), '220 2.0.0 Ready to start TLS');
    await c.startTls();
    assert.match(await say(c, 'EHLO laptop'), /AUTH PLAIN LOGIN/);
    assert.equal(await say(c, 'MAIL FROM:<alice@example.test>'), '530 5.7.0 Authentication required', 'TLS alone is not enough');
    assert.equal(await say(c, `AUTH PLAIN ${b64('\0alice\0wonderland')}`), '235 2.7.0 Authentication successful');
    assert.equal(await say(c, 'MAIL FROM:<mallory@example.test>'), '553 5.7.1 Sender address <mallory@example.test> not owned by user alice');
    assert.equal(await say(c, 'MAIL FROM:<bob@example.test>'), '553 5.7.1 Sender address <bob@example.test> not owned by user alice');
    // *@alice.example: any address of that domain; the null sender is always allowed.
    assert.equal(await say(c, 'MAIL FROM:<Anything@ALICE.example>'), '250 2.1.0 Ok');
    assert.equal(await say(c, 'RSET'), '250 2.0.0 Ok');
    assert.equal(await say(c, 'MAIL FROM:<>'), '250 2.1.0 Ok');
    assert.equal(await say(c, 'RSET'), '250 2.0.0 Ok');
    // An owned address, to a relayed domain (auth_allow_relay is off: the listener's role allows it)
    // and a local recipient; greylisting (always) is skipped for the authenticated user.
    assert.equal(await say(c, 'MAIL FROM:<alice@example.test>'), '250 2.1.0 Ok');
    assert.equal(await say(c, 'RCPT TO:<friend@far.test>'), '250 2.1.5 Ok');
    assert.equal(await say(c, 'RCPT TO:<carol@example.test>'), '250 2.1.5 Ok');
    assert.equal(await say(c, 'DATA'), '354 End data with <CR><LF>.<CR><LF>');
    assert.match(await say(c, 'From: alice@example.test\r\nSubject: via 587\r\n\r\nhello\r\n.'), /^250 2\.0\.0 Ok: queued as /);
    assert.match(await say(c, 'QUIT'), /^221 /);
  } finally {
    c.close();
  }
  const [relayed] = await waitFiles(far, 1);
  assert.ok(relayed, 'relayed by the far.test route');
  assert.match(fs.readFileSync(relayed, 'utf8'), /with ESMTPSA id [\s\S]*Subject: via 587/);
  // Signed on its way out (dkim.sign: example.test); the receiving side's check says pass.
  const raw = fs.readFileSync(relayed);
  assert.match(raw.toString('latin1'), /\r\nDKIM-Signature: v=1; a=rsa-sha256; c=relaxed\/relaxed; d=example\.test;/);
  const v = await verifyMessage([raw], { ip: '192.0.2.1', minKeyBits: 1024 }, new DnsResolver({ servers: [dm.server], timeoutMs: 3000 }));
  assert.deepEqual((v.dkim ?? []).map((d) => `${d.result} ${d.domain}`), ['pass example.test']);
  const [local] = await app.waitMaildir('carol', 1);
  assert.ok(local, 'delivered to the local Maildir');
  assert.ok(app.logs().some((l) => l.check === 'submission_sender' && l.from === 'mallory@example.test' && l.setting === 'submission.senders'));
});

test('465: TLS first, then 220; AUTH, and a user not listed in senders may send only as its login name', async () => {
  const socket = tls.connect({ port: subsPort, host: '127.0.0.1', rejectUnauthorized: false });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve);
    socket.once('error', reject);
  });
  socket.setEncoding('latin1');
  let buf = '';
  socket.on('data', (d: string) => (buf += d));
  const next = async (): Promise<string> => {
    const deadline = Date.now() + 5000;
    for (;;) {
      const m = /^(?:\d{3}-.*\r\n)*\d{3}(?: .*)?\r\n/.exec(buf);
      if (m) {
        buf = buf.slice(m[0].length);
        return m[0].trimEnd();
      }
      if (Date.now() > deadline) throw new Error(`no reply: ${JSON.stringify(buf)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  const send = (line: string) => {
    socket.write(`${line}\r\n`);
    return next();
  };
  try {
    assert.equal(socket.getProtocol(), 'TLSv1.3');
    assert.match(await next(), /^220 mx\.example\.test /);
    const ehlo = await send('EHLO laptop');
    assert.ok(ehlo.includes('AUTH PLAIN LOGIN') && !ehlo.includes('STARTTLS'), ehlo);
    assert.equal(await send('MAIL FROM:<bob@example.test>'), '530 5.7.0 Authentication required');
    assert.equal(await send(`AUTH PLAIN ${b64('\0bob@example.test\0builder')}`), '235 2.7.0 Authentication successful');
    assert.equal(await send('MAIL FROM:<bob2@example.test>'), '553 5.7.1 Sender address <bob2@example.test> not owned by user bob@example.test');
    assert.equal(await send('MAIL FROM:<Bob@Example.Test>'), '250 2.1.0 Ok');
    assert.equal(await send('RCPT TO:<dave@example.test>'), '250 2.1.5 Ok');
    assert.equal(await send('DATA'), '354 End data with <CR><LF>.<CR><LF>');
    assert.match(await send('Subject: via 465\r\n\r\nhi\r\n.'), /^250 2\.0\.0 Ok: queued as /);
    // Its own envelope sender, but a From: it does not own: delivered, never signed for example.test.
    assert.equal(await send('MAIL FROM:<bob@example.test>'), '250 2.1.0 Ok');
    assert.equal(await send('RCPT TO:<erin@example.test>'), '250 2.1.5 Ok');
    assert.equal(await send('DATA'), '354 End data with <CR><LF>.<CR><LF>');
    assert.match(await send('From: <ceo@example.test>\r\nSubject: not yours\r\n\r\nhi\r\n.'), /^250 2\.0\.0 Ok: queued as /);
    await send('QUIT');
  } finally {
    socket.destroy();
  }
  const [file] = await app.waitMaildir('dave', 1);
  assert.ok(file);
  assert.match(fs.readFileSync(file, 'utf8'), /with ESMTPSA id /);
  const [forged] = await app.waitMaildir('erin', 1);
  assert.ok(forged);
  assert.doesNotMatch(fs.readFileSync(forged, 'utf8'), /DKIM-Signature/, 'a From: the user does not own is not signed');
  // A client that speaks plain SMTP there gets no banner in clear text.
  const plain = await RawClient.connect(subsPort);
  try {
    plain.send('EHLO plain\r\n');
    await assert.rejects(plain.reply(1000));
  } finally {
    plain.close();
  }
});

test('swaks on 465 (--tls-on-connect, AUTH PLAIN) relays for alice', async () => {
  const before = filesUnder(far).length;
  const r = await runSwaks(['--server', '127.0.0.1', '--port', String(subsPort), '--tls-on-connect', '--auth', 'PLAIN', '--auth-user', 'alice', '--auth-password', 'wonderland', '--from', 'alice@example.test', '--to', 'someone@far.test', '--helo', 'laptop.example']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /<~ +220 mx\.example\.test /);
  assert.match(r.stdout, /<~ +235 2\.7\.0 Authentication successful/);
  assert.match(r.stdout, /<~ +250 2\.0\.0 Ok: queued as/);
  assert.equal((await waitFiles(far, before + 1)).length, before + 1);
  // And a sender alice does not own, through swaks too.
  const foreign = await runSwaks(['--server', '127.0.0.1', '--port', String(subsPort), '--tls-on-connect', '--auth', 'PLAIN', '--auth-user', 'alice', '--auth-password', 'wonderland', '--from', 'ceo@bank.example', '--to', 'someone@far.test']);
  assert.notEqual(foreign.code, 0);
  assert.match(foreign.stdout, /<~\*? +553 5\.7\.1 Sender address <ceo@bank\.example> not owned by user alice/);
});

test('the mx listener is unchanged: a greet delay, MAIL without AUTH, greylisting, no relaying', async () => {
  const c = await RawClient.connect(mxPort);
  try {
    const started = Date.now();
    assert.match(await c.reply(3000), /^220 /);
    assert.ok(Date.now() - started >= 1400, 'the greet delay applies on mx');
    const ehlo = await say(c, 'EHLO client.example.org');
    assert.ok(ehlo.includes('STARTTLS'), ehlo);
    assert.equal(await say(c, 'MAIL FROM:<someone@sender.example>'), '250 2.1.0 Ok');
    assert.match(await say(c, 'RCPT TO:<carol@example.test>'), /^451 4\.7\.1 /, 'greylisted');
    assert.match(await say(c, 'RCPT TO:<friend@far.test>'), /^554 5\.7\.1 <friend@far\.test>: Relay access denied/);
    await say(c, 'QUIT');
  } finally {
    c.close();
  }
});
