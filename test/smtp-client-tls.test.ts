// STARTTLS and AUTH in mxguard's SMTP client (src/smtp-client/client.ts), against real servers:
// mxguard's own SMTP server (STARTTLS with a self-signed certificate, AUTH against a password
// file, relaying only for the authenticated) and Postfix's smtp-sink (no STARTTLS; AUTH PLAIN
// LOGIN offered). What the receiving side saw is read from its Maildir (the Received header's
// protocol: ESMTP, ESMTPS, ESMTPSA, RFC 3848) and its log.
import { test, before, after, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { startTestApp, type TestApp } from './harness/app.ts';
import net from 'node:net';
import { freePort, startSmtpSink, waitUntil, type SmtpSinkPeer } from './harness/peers.ts';
import { hashPassword, writeUsers } from '../src/auth/passwords.ts';
import { createSmtpTransport, type SmtpTransportOptions } from '../src/smtp-client/client.ts';
import { createMxTransport, type MxTransportOptions } from '../src/delivery/mx.ts';
import { DnsResolver } from '../src/dns/resolver.ts';
import { startDnsmasq } from './harness/dns.ts';
import type { RcptResult, Transport } from '../src/mail/transport.ts';

let dir = '';
let certFile = '';
let caPem = '';
let app: TestApp;
let sink: SmtpSinkPeer;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-client-tls-'));
  const key = path.join(dir, 'key.pem');
  certFile = path.join(dir, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-days', '2', '-keyout', key, '-out', certFile], { stdio: 'ignore' });
  caPem = fs.readFileSync(certFile, 'utf8');
  const usersFile = path.join(dir, 'users');
  writeUsers(usersFile, new Map([['alice', await hashPassword('wonderland')]]));
  app = await startTestApp({
    local_domains: ['example.test', 'localhost', 'tls.test'],
    tls: { cert: certFile, key },
    // AUTH only over TLS, loopback included; only authenticated clients may relay (to far.test,
    // routed into a Maildir of the test's own).
    auth: { users_file: usersFile, plaintext_from: [], failure_delay: 0 },
    relay: { forward_from_ip: ['198.51.100.0/24'], auth_allow_relay: true },
    routes: { 'far.test': `maildir:${path.join(dir, 'far')}` },
  });
  sink = await startSmtpSink();
});

after(async () => {
  await app?.stop();
  await sink?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

let seq = 0;

/** A client for app (or url), its log lines collected; closed after the test. */
function client(t: TestContext, opts: Partial<SmtpTransportOptions>): { tr: Transport; logs: () => Array<Record<string, unknown>> } {
  const lines: string[] = [];
  const sinkStream = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      done();
    },
  });
  const tr = createSmtpTransport({
    url: `smtp://127.0.0.1:${app.port}`,
    heloName: 'client.example.test',
    maxConnections: 2,
    connectTimeoutMs: 5000,
    commandTimeoutMs: 10_000,
    log: pino({ level: 'debug' }, sinkStream),
    ...opts,
  });
  t.after(() => tr.close());
  return { tr, logs: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

function send(tr: Transport, rcpts: string[]): Promise<RcptResult[]> {
  const id = `T${++seq}`;
  const text = `From: a@client.example.test\r\nTo: ${rcpts.join(', ')}\r\nSubject: ${id}\r\nMessage-ID: <${id}@client.example.test>\r\n\r\nhello ${id}\r\n`;
  const data = Buffer.from(text);
  return tr.deliver({
    id,
    mailFrom: 'a@client.example.test',
    rcpts,
    body: {
      size: data.length,
      async *chunks() {
        yield data;
      },
    },
  });
}

/** The Received header's "with" protocol of the newest message in the Maildir dir/new. */
async function receivedWith(files: () => string[], count: number): Promise<string> {
  const deadline = Date.now() + 5000;
  let got = files();
  while (got.length < count && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
    got = files();
  }
  assert.equal(got.length, count, 'the message arrived');
  const newest = got.map((f) => ({ f, t: fs.statSync(f).mtimeMs })).sort((a, b) => a.t - b.t || (a.f < b.f ? -1 : 1)).at(-1)?.f ?? '';
  const m = /^Received:[^\n]*(?:\n[ \t][^\n]*)*/m.exec(fs.readFileSync(newest, 'utf8'));
  const w = /\bwith (\S+)/.exec(m?.[0] ?? '');
  assert.ok(w, `a Received header with a protocol: ${m?.[0]}`);
  return w[1] ?? '';
}

const tlsLines = (logs: Array<Record<string, unknown>>) => logs.filter((l) => l.msg === 'TLS established');

test("tls mode 'none' (the default) stays in plain text although STARTTLS is offered", async (t) => {
  const before = app.maildir('nobody1').length;
  const { tr, logs } = client(t, {});
  const r = await send(tr, ['nobody1@example.test']);
  assert.equal(r[0]?.status, 'ok', JSON.stringify(r));
  assert.equal(await receivedWith(() => app.maildir('nobody1'), before + 1), 'ESMTP');
  assert.equal(tlsLines(logs()).length, 0);
});

test('opportunistic: STARTTLS when offered; the server takes the mail over TLS (ESMTPS); one log line per connection', async (t) => {
  const serverTlsBefore = app.logs().filter((l) => l.msg === 'TLS established').length;
  const { tr, logs } = client(t, { tls: { mode: 'opportunistic' } });
  const r = await send(tr, ['opp@example.test']);
  assert.equal(r[0]?.status, 'ok', JSON.stringify(r));
  assert.equal(await receivedWith(() => app.maildir('opp'), 1), 'ESMTPS');
  // The same pooled connection again: no second handshake, no second line.
  assert.equal((await send(tr, ['opp@example.test']))[0]?.status, 'ok');
  await receivedWith(() => app.maildir('opp'), 2);
  const lines = tlsLines(logs());
  assert.equal(lines.length, 1, JSON.stringify(logs()));
  assert.equal(lines[0]?.relay, `smtp://127.0.0.1:${app.port}`);
  assert.match(String(lines[0]?.tls), /^TLSv1\.[23]$/);
  assert.equal(typeof lines[0]?.cipher, 'string');
  assert.equal(lines[0]?.verified, false, 'a self-signed certificate is not verified, and opportunistic TLS does not mind');
  const server = app.logs().filter((l) => l.msg === 'TLS established');
  assert.equal(server.length, serverTlsBefore + 1, 'the server saw one handshake');
});

test('opportunistic: plain text when STARTTLS is not offered (smtp-sink)', async (t) => {
  const { tr, logs } = client(t, { url: `smtp://127.0.0.1:${sink.port}`, tls: { mode: 'opportunistic' } });
  const r = await send(tr, ['x@sink.test', 'y@sink.test']);
  assert.deepEqual(
    r.map((x) => x.status),
    ['ok', 'ok'],
    JSON.stringify(r),
  );
  assert.equal(tlsLines(logs()).length, 0);
  assert.ok(logs().some((l) => l.msg === 'no STARTTLS offered: plain text'));
});

test("required: no STARTTLS offered is a temporary 421 4.7.4 for every recipient, and nothing is sent", async (t) => {
  const { tr } = client(t, { url: `smtp://127.0.0.1:${sink.port}`, tls: { mode: 'required' } });
  const before = sink.received();
  const r = await send(tr, ['x@sink.test', 'y@sink.test']);
  for (const x of r) {
    assert.equal(x.status, 'temp');
    assert.equal(x.code, 421);
    assert.match(x.text, /^4\.7\.4 TLS is required, but 127\.0\.0\.1:\d+ does not offer STARTTLS$/);
  }
  assert.equal(sink.received(), before, 'no message reached smtp-sink');
});

test('required: TLS with any certificate when offered', async (t) => {
  const { tr, logs } = client(t, { tls: { mode: 'required' } });
  assert.equal((await send(tr, ['req@example.test']))[0]?.status, 'ok');
  assert.equal(await receivedWith(() => app.maildir('req'), 1), 'ESMTPS');
  assert.equal(tlsLines(logs())[0]?.verified, false);
});

test('verify: a self-signed certificate fails with 421 4.7.5 unless it is given as ca; then it verifies, also for the name in servername', async (t) => {
  const untrusted = client(t, { tls: { mode: 'verify' } });
  const bad = await send(untrusted.tr, ['ver@example.test']);
  assert.equal(bad[0]?.status, 'temp');
  assert.equal(bad[0]?.code, 421);
  assert.match(bad[0]?.text ?? '', /^4\.7\.5 certificate verification failed: DEPTH_ZERO_SELF_SIGNED_CERT/);
  assert.equal(app.maildir('ver').length, 0);

  // Trusted, but for another name than the one the certificate is for.
  const wrongName = client(t, { tls: { mode: 'verify', ca: caPem, servername: 'mx.other.test' } });
  const wrong = await send(wrongName.tr, ['ver@example.test']);
  assert.equal(wrong[0]?.code, 421);
  assert.match(wrong[0]?.text ?? '', /^4\.7\.5 certificate verification failed: .*mx\.other\.test/);

  for (const [label, opts] of [
    ['by address (the URL host 127.0.0.1, in the certificate as an IP SAN)', { mode: 'verify', ca: caPem }],
    ['by name (servername localhost, sent as SNI)', { mode: 'verify', ca: Buffer.from(caPem), servername: 'localhost' }],
  ] as const) {
    const c = client(t, { tls: opts });
    const before = app.maildir('ver').length;
    const ok = await send(c.tr, ['ver@example.test']);
    assert.equal(ok[0]?.status, 'ok', `${label}: ${JSON.stringify(ok)}`);
    assert.equal(await receivedWith(() => app.maildir('ver'), before + 1), 'ESMTPS');
    assert.equal(tlsLines(c.logs())[0]?.verified, true, label);
  }
});

test('AUTH PLAIN over STARTTLS: the server lets the authenticated client relay (ESMTPSA); without AUTH it refuses', async (t) => {
  const farFiles = () => {
    const d = path.join(dir, 'far', 'friend', 'new');
    return fs.existsSync(d) ? fs.readdirSync(d).map((f) => path.join(d, f)) : [];
  };
  const anon = client(t, { tls: { mode: 'required' } });
  const refused = await send(anon.tr, ['friend@far.test']);
  assert.equal(refused[0]?.status, 'perm', `relaying needs AUTH: ${JSON.stringify(refused)}`);

  const authed = client(t, { tls: { mode: 'required' }, auth: { user: 'alice', password: 'wonderland' } });
  const r = await send(authed.tr, ['friend@far.test']);
  assert.equal(r[0]?.status, 'ok', JSON.stringify(r));
  assert.equal(await receivedWith(farFiles, 1), 'ESMTPSA');
  assert.ok(
    app.logs().some((l) => l.msg === 'Command RCPT OK (authenticated channel)'),
    'the server relayed because of AUTH',
  );
  assert.ok(!JSON.stringify(authed.logs()).includes('wonderland'), 'the password is never logged');
});

test('AUTH with a wrong password: temporary 451 4.7.8 with the server reply, for every recipient', async (t) => {
  const c = client(t, { tls: { mode: 'required' }, auth: { user: 'alice', password: 'looking-glass' } });
  const r = await send(c.tr, ['friend@far.test', 'other@example.test']);
  for (const x of r) {
    assert.equal(x.status, 'temp', JSON.stringify(r));
    assert.equal(x.code, 451);
    assert.match(x.text, /^4\.7\.8 authentication failed: 535 /);
  }
});

test('AUTH: credentials never go over plain text to a non-loopback address; to loopback they may (smtp-sink, AUTH PLAIN LOGIN)', async (t) => {
  // Loopback: smtp-sink offers AUTH without STARTTLS and takes any credentials.
  const local = client(t, { url: `smtp://127.0.0.1:${sink.port}`, auth: { user: 'u', password: 'p' } });
  const lr = await send(local.tr, ['x@sink.test']);
  assert.equal(lr[0]?.status, 'ok', JSON.stringify(lr));

  const ip = Object.values(os.networkInterfaces())
    .flat()
    .find((i) => i !== undefined && i.family === 'IPv4' && !i.internal)?.address;
  // A skipped half would prove nothing: the machines this runs on have one (the CI machine's eth0).
  assert.ok(ip !== undefined, 'this test needs a non-loopback IPv4 address on this machine');
  // smtp-sink on that address (the harness's listens on 127.0.0.1 only).
  const port = await freePort();
  const child = spawn('smtp-sink', ['-u', 'nobody', '-c', `${ip}:${port}`, '16'], { stdio: 'ignore' });
  t.after(() => {
    if (child.exitCode === null) child.kill();
  });
  assert.ok(await waitUntil(() => child.exitCode === null && probeAt(ip, port), 10_000, 50), `smtp-sink on ${ip}:${port} is up`);
  for (const mode of ['none', 'opportunistic'] as const) {
    const far = client(t, { url: `smtp://${ip}:${port}`, tls: { mode }, auth: { user: 'u', password: 'p' } });
    const r = await send(far.tr, ['x@sink.test']);
    assert.equal(r[0]?.status, 'temp', mode);
    assert.equal(r[0]?.code, 451);
    assert.match(r[0]?.text ?? '', /^4\.7\.0 not sending credentials over an unencrypted connection/);
  }
});

/** True once something at ip:port answers with a 220 line. */
function probeAt(ip: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: ip, port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.once('error', () => done(false));
    s.once('data', (d: Buffer) => done(d.toString().startsWith('220')));
  });
}

test('MX delivery: opportunistic TLS by default (ESMTPS); verify checks the certificate for the MX host name; none stays plain', async (t) => {
  // tls.test's MX is mx-tls.test, 127.0.0.1: mxguard's test server (the MX port is its port).
  const dm = await startDnsmasq({ records: { mx: { 'tls.test': [{ exchange: 'mx-tls.test', priority: 10 }] }, a: { 'mx-tls.test': ['127.0.0.1'] } } });
  t.after(() => dm.stop());
  const dns = new DnsResolver({ servers: [dm.server], timeoutMs: 3000 });
  const mxFor = (tls: MxTransportOptions['tls']) => {
    const lines: Array<Record<string, unknown>> = [];
    const log = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) });
    const mx = createMxTransport({ dns, heloName: 'gw.origin.test', port: app.port, maxConnections: 1, connectTimeoutMs: 2000, commandTimeoutMs: 5000, self: { names: [], addresses: [] }, log, ...(tls ? { tls } : {}) });
    t.after(() => mx.close());
    return { mx, lines };
  };

  const byDefault = mxFor(undefined);
  const r = await send(byDefault.mx, ['mxuser@tls.test']);
  assert.equal(r[0]?.status, 'ok', JSON.stringify(r));
  assert.equal(await receivedWith(() => app.maildir('mxuser'), 1), 'ESMTPS');
  assert.equal(tlsLines(byDefault.lines).length, 1);

  // Verify: the self-signed certificate fails, and the name checked is the MX host's: a 421,
  // the next MX address would be tried (there is none), so the mail waits.
  const verify = mxFor('verify');
  const v = await send(verify.mx, ['mxuser@tls.test']);
  assert.equal(v[0]?.status, 'temp');
  assert.equal(v[0]?.code, 421);
  assert.match(v[0]?.text ?? '', /^4\.7\.5 certificate verification failed: DEPTH_ZERO_SELF_SIGNED_CERT \(for mx-tls\.test\) \(all 1 MX addresses of tls\.test tried\)$/);

  const plain = mxFor('none');
  assert.equal((await send(plain.mx, ['mxuser@tls.test']))[0]?.status, 'ok');
  assert.equal(await receivedWith(() => app.maildir('mxuser'), 2), 'ESMTP');
  assert.equal(tlsLines(plain.lines).length, 0);
});
