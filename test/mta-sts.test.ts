// MTA-STS (RFC 8461) in delivery by MX, against real parts: a private CA made with openssl,
// dnsmasq for the MX, A and TXT records, a node:https server serving the policies (on
// 127.0.0.30, a free port), Postfix's smtp-sink as the preferred MX mx-bad.sts.test (127.0.0.31,
// outside the policy) and mxguard itself as mx-good.sts.test (127.0.0.32, STARTTLS with a
// certificate from the private CA for that name). Every MX host shares one port (queue.mx_port).
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { startDnsmasq, type DnsmasqPeer } from './harness/dns.ts';
import { sharedPort, sinkAt } from './harness/mx-sinks.ts';
import { startTestApp, type TestApp } from './harness/app.ts';
import { DnsResolver } from '../src/dns/resolver.ts';
import { createMxTransport, type MxTransportOptions } from '../src/delivery/mx.ts';
import type { OutgoingMessage, RcptResult, Transport } from '../src/mail/transport.ts';

const IP = { https: '127.0.0.30', bad: '127.0.0.31', good: '127.0.0.32', nothing: '127.0.0.33' } as const;

const POLICIES: Record<string, string> = {
  'mta-sts.sts.test': 'version: STSv1\r\nmode: enforce\r\nmx: mx-good.sts.test\r\nmax_age: 86400\r\n',
  // mx-good.other.test is mxguard too, whose certificate is for mx-good.sts.test only.
  'mta-sts.other.test': 'version: STSv1\r\nmode: enforce\r\nmx: mx-good.other.test\r\nmax_age: 86400\r\n',
  'mta-sts.testing.test': 'version: STSv1\r\nmode: testing\r\nmx: mx-good.sts.test\r\nmax_age: 86400\r\n',
  'mta-sts.nomatch.test': 'version: STSv1\r\nmode: enforce\r\nmx: *.elsewhere.test\r\nmax_age: 86400\r\n',
};

const BOTH_MX = [
  { exchange: 'mx-bad.sts.test', priority: 10 },
  { exchange: 'mx-good.sts.test', priority: 20 },
];

let dir = '';
let caPem = '';
let dm: DnsmasqPeer;
let dns: DnsResolver;
let port = 0;
let httpsServer: https.Server;
let httpsPort = 0;
const policyRequests: string[] = [];
let app: TestApp;

/** A key and a certificate for `names`, signed by the test CA. */
function leaf(name: string, names: readonly string[]): { key: string; cert: string } {
  const key = path.join(dir, `${name}.key`);
  const csr = path.join(dir, `${name}.csr`);
  const cert = path.join(dir, `${name}.pem`);
  const ext = path.join(dir, `${name}.ext`);
  fs.writeFileSync(ext, `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}\nextendedKeyUsage=serverAuth\n`);
  execFileSync('openssl', ['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${names[0]}`, '-keyout', key, '-out', csr], { stdio: 'ignore' });
  execFileSync('openssl', ['x509', '-req', '-in', csr, '-CA', path.join(dir, 'ca.pem'), '-CAkey', path.join(dir, 'ca.key'), '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', cert], { stdio: 'ignore' });
  return { key, cert };
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-mta-sts-'));
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=mxguard test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-days', '2', '-keyout', path.join(dir, 'ca.key'), '-out', path.join(dir, 'ca.pem')],
    { stdio: 'ignore' },
  );
  caPem = fs.readFileSync(path.join(dir, 'ca.pem'), 'utf8');
  const web = leaf('mta-sts', Object.keys(POLICIES));
  const mxGood = leaf('mx-good', ['mx-good.sts.test']);

  // The policy server: the policy of the Host asked for, text/plain.
  httpsServer = https.createServer({ key: fs.readFileSync(web.key), cert: fs.readFileSync(web.cert) }, (req, res) => {
    const host = String(req.headers.host ?? '').replace(/:\d+$/, '');
    policyRequests.push(`${host}${req.url ?? ''}`);
    const body = POLICIES[host];
    if (req.url !== '/.well-known/mta-sts.txt' || body === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' }).end(body);
  });
  await new Promise<void>((resolve, reject) => {
    httpsServer.once('error', reject);
    httpsServer.listen(0, IP.https, () => resolve());
  });
  httpsPort = (httpsServer.address() as AddressInfo).port;

  dm = await startDnsmasq({
    records: {
      mx: {
        'sts.test': BOTH_MX,
        'plain.test': BOTH_MX,
        'nofetch.test': BOTH_MX,
        'testing.test': BOTH_MX,
        'nomatch.test': BOTH_MX,
        'wronghost.test': BOTH_MX,
        'other.test': [
          { exchange: 'mx-bad.sts.test', priority: 10 },
          { exchange: 'mx-good.other.test', priority: 20 },
        ],
      },
      a: {
        'mx-bad.sts.test': [IP.bad],
        'mx-good.sts.test': [IP.good],
        'mx-good.other.test': [IP.good],
        'mta-sts.sts.test': [IP.https],
        'mta-sts.other.test': [IP.https],
        'mta-sts.testing.test': [IP.https],
        'mta-sts.nomatch.test': [IP.https],
        'mta-sts.nofetch.test': [IP.nothing], // nothing listens there
        'mta-sts.wronghost.test': [IP.https], // its certificate does not name this host
      },
      txt: {
        '_mta-sts.sts.test': ['v=STSv1; id=1'],
        '_mta-sts.other.test': ['v=STSv1; id=1'],
        '_mta-sts.testing.test': ['v=STSv1; id=1'],
        '_mta-sts.nomatch.test': ['v=STSv1; id=1'],
        '_mta-sts.nofetch.test': ['v=STSv1; id=1'],
        '_mta-sts.wronghost.test': ['v=STSv1; id=1'],
      },
    },
  });
  dns = new DnsResolver({ servers: [dm.server], timeoutMs: 3000 });
  port = await sharedPort([IP.bad, IP.good]);
  // mxguard as mx-good: takes the mail of every test domain into its Maildir, STARTTLS offered.
  app = await startTestApp({
    listen: [`${IP.good}:${port}`],
    local_domains: ['example.test', 'localhost', 'sts.test', 'other.test', 'plain.test', 'nofetch.test', 'testing.test', 'nomatch.test', 'wronghost.test'],
    tls: { cert: mxGood.cert, key: mxGood.key },
  });
});

after(async () => {
  await app?.stop();
  await dm?.stop();
  await new Promise<void>((resolve) => (httpsServer ? httpsServer.close(() => resolve()) : resolve()));
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

function message(rcpts: readonly string[]): OutgoingMessage {
  const id = `STS${Math.floor(Math.random() * 1e9)}`;
  const raw = Buffer.from(`From: sender@origin.test\r\nTo: ${rcpts.join(', ')}\r\nSubject: ${id}\r\nMessage-ID: <${id}@origin.test>\r\n\r\nHello by MX.\r\n`);
  return {
    id,
    mailFrom: 'sender@origin.test',
    rcpts,
    body: {
      size: raw.length,
      async *chunks() {
        yield raw;
      },
    },
  };
}

/** A fresh MX transport with MTA-STS on (the policy fetch trusting the test CA), log lines collected. */
function transport(t: TestContext, extra: Partial<MxTransportOptions> = {}): { mx: Transport; logs: Array<Record<string, unknown>> } {
  const logs: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'info' }, { write: (line: string) => logs.push(JSON.parse(line) as Record<string, unknown>) });
  const mx = createMxTransport({
    dns,
    heloName: 'gw.origin.test',
    port,
    maxConnections: 1,
    connectTimeoutMs: 2000,
    commandTimeoutMs: 5000,
    self: { names: [], addresses: [] },
    log,
    tlsCa: caPem,
    mtaSts: { ca: caPem, port: httpsPort, timeoutMs: 3000 },
    ...extra,
  });
  t.after(() => mx.close());
  return { mx, logs };
}

const brief = (rs: readonly RcptResult[]): string[] => rs.map((r) => `${r.rcpt} ${r.status} ${r.code}`);

/** The Received header's "with" protocol of the newest message in app's Maildir for `local`, once `count` are there. */
async function receivedWith(local: string, count: number): Promise<string> {
  const files = await app.waitMaildir(local, count);
  assert.equal(files.length, count, `${count} message(s) for ${local}`);
  const newest = files.map((f) => ({ f, t: fs.statSync(f).mtimeMs })).sort((a, b) => a.t - b.t || (a.f < b.f ? -1 : 1)).at(-1)?.f ?? '';
  const m = /^Received:[^\n]*(?:\n[ \t][^\n]*)*/m.exec(fs.readFileSync(newest, 'utf8'));
  return /\bwith (\S+)/.exec(m?.[0] ?? '')?.[1] ?? '';
}

test('enforce: the preferred MX outside the policy gets nothing; mx-good gets the mail over verified TLS; the policy is cached', async (t) => {
  const bad = await sinkAt(t, IP.bad, port);
  const { mx, logs } = transport(t);
  const before = policyRequests.filter((r) => r.startsWith('mta-sts.sts.test')).length;
  const rs = await mx.deliver(message(['alice@sts.test']));
  assert.deepEqual(brief(rs), ['alice@sts.test ok 250'], JSON.stringify(rs));
  assert.match(rs[0]?.text ?? '', /\(host mx-good\.sts\.test\[127\.0\.0\.32\]:\d+\)$/);
  assert.equal(bad.files().length, 0, 'mx-bad (preference 10) is outside the policy');
  assert.equal(await receivedWith('alice', 1), 'ESMTPS');
  const tlsLine = logs.find((l) => l.msg === 'TLS established');
  assert.equal(tlsLine?.verified, true, JSON.stringify(logs));
  assert.ok(logs.some((l) => l.msg === 'MTA-STS: policy fetched' && l.domain === 'sts.test' && l.mode === 'enforce'));
  const dropped = logs.find((l) => l.msg === 'MTA-STS enforce: MX hosts outside the policy dropped');
  assert.deepEqual(dropped?.refused, ['mx-bad.sts.test']);
  assert.deepEqual(
    logs.filter((l) => l.msg === 'mx delivery attempt').map((l) => l.mx),
    ['mx-good.sts.test'],
  );

  // The same id in DNS: the cached policy, no second fetch.
  const again = await mx.deliver(message(['alice@sts.test']));
  assert.deepEqual(brief(again), ['alice@sts.test ok 250']);
  await receivedWith('alice', 2);
  assert.equal(policyRequests.filter((r) => r.startsWith('mta-sts.sts.test')).length, before + 1, 'one policy fetch');
  assert.equal(bad.files().length, 0);
});

test('enforce without the CA for the MX certificate: deferred with 4.7.5, never sent in plain text nor to mx-bad', async (t) => {
  const bad = await sinkAt(t, IP.bad, port);
  const before = app.maildir('bob').length;
  // The policy is fetched (its CA is given), but the MX certificate is not trusted.
  const { mx } = transport(t, { tlsCa: undefined });
  const rs = await mx.deliver(message(['bob@sts.test']));
  assert.deepEqual(brief(rs), ['bob@sts.test temp 421'], JSON.stringify(rs));
  assert.match(rs[0]?.text ?? '', /^4\.7\.5 certificate verification failed: .*\(for mx-good\.sts\.test\).*\(all 1 MX addresses of sts\.test tried\)$/);
  // mx_tls none in the configuration does not weaken enforce either.
  const { mx: plain } = transport(t, { tlsCa: undefined, tls: 'none' });
  const rs2 = await plain.deliver(message(['bob@sts.test']));
  assert.deepEqual(brief(rs2), ['bob@sts.test temp 421'], JSON.stringify(rs2));
  assert.match(rs2[0]?.text ?? '', /^4\.7\.5 certificate verification failed/);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(app.maildir('bob').length, before, 'mx-good got nothing');
  assert.equal(bad.files().length, 0, 'mx-bad got nothing');
});

test('enforce, a certificate for another name at the MX: deferred with 4.7.5 naming the mismatch', async (t) => {
  const bad = await sinkAt(t, IP.bad, port);
  const before = app.maildir('carol').length;
  const { mx } = transport(t);
  const rs = await mx.deliver(message(['carol@other.test']));
  assert.deepEqual(brief(rs), ['carol@other.test temp 421'], JSON.stringify(rs));
  assert.match(rs[0]?.text ?? '', /^4\.7\.5 certificate verification failed: .*mx-good\.other\.test.*\(all 1 MX addresses of other\.test tried\)$/);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(app.maildir('carol').length, before);
  assert.equal(bad.files().length, 0);
});

test('enforce, no MX host matches the policy: temp 451 4.7.5 without a connection', async (t) => {
  const bad = await sinkAt(t, IP.bad, port);
  const { mx, logs } = transport(t);
  const rs = await mx.deliver(message(['dan@nomatch.test']));
  assert.deepEqual(brief(rs), ['dan@nomatch.test temp 451']);
  assert.equal(rs[0]?.text, '4.7.5 no MX host of nomatch.test matches its MTA-STS policy');
  assert.equal(logs.filter((l) => l.msg === 'mx delivery attempt').length, 0);
  assert.equal(bad.files().length, 0);
});

test('testing: delivered as usual (to the preferred mx-bad), and what enforce would refuse is logged', async (t) => {
  const bad = await sinkAt(t, IP.bad, port);
  const { mx, logs } = transport(t);
  const rs = await mx.deliver(message(['erin@testing.test']));
  assert.deepEqual(brief(rs), ['erin@testing.test ok 250'], JSON.stringify(rs));
  assert.match(rs[0]?.text ?? '', /\(host mx-bad\.sts\.test\[127\.0\.0\.31\]:\d+\)$/);
  assert.equal(bad.files().length, 1);
  const line = logs.find((l) => l.msg === 'MTA-STS testing: enforce would refuse these MX hosts');
  assert.deepEqual(line?.refused, ['mx-bad.sts.test']);
  assert.equal(line?.domain, 'testing.test');
});

test('no _mta-sts record, or a policy that cannot be fetched: delivered as before (to the preferred MX), the failure logged', async (t) => {
  const bad = await sinkAt(t, IP.bad, port);
  const { mx, logs } = transport(t);
  const rs = await mx.deliver(message(['fay@plain.test', 'gus@nofetch.test']));
  assert.deepEqual(brief(rs), ['fay@plain.test ok 250', 'gus@nofetch.test ok 250'], JSON.stringify(rs));
  assert.match(rs[0]?.text ?? '', /\(host mx-bad\.sts\.test\[127\.0\.0\.31\]:\d+\)$/);
  assert.match(rs[1]?.text ?? '', /\(host mx-bad\.sts\.test\[127\.0\.0\.31\]:\d+\)$/);
  assert.deepEqual(bad.rcpts().sort(), ['<fay@plain.test>', '<gus@nofetch.test>']);
  const failed = logs.find((l) => l.msg === 'MTA-STS: policy fetch failed');
  assert.equal(failed?.domain, 'nofetch.test');
  assert.match(String(failed?.err), /mta-sts\.nofetch\.test.*127\.0\.0\.33/);
  assert.ok(!logs.some((l) => l.domain === 'plain.test' && String(l.msg).startsWith('MTA-STS')), 'nothing to say about a domain without a record');
});

test('MTA-STS off (no mtaSts option): enforce is not applied, the preferred MX gets the mail', async (t) => {
  const bad = await sinkAt(t, IP.bad, port);
  const { mx } = transport(t, { mtaSts: undefined });
  const rs = await mx.deliver(message(['hal@sts.test']));
  assert.deepEqual(brief(rs), ['hal@sts.test ok 250']);
  assert.equal(bad.files().length, 1);
});

test('the policy fetch verifies the HTTPS certificate: untrusted, or not for mta-sts.<domain>, is no policy (delivered as usual, logged)', async (t) => {
  const bad = await sinkAt(t, IP.bad, port);
  // No CA for the fetch: the policy of sts.test (enforce) cannot be trusted, so it does not apply.
  const untrusted = transport(t, { mtaSts: { port: httpsPort, timeoutMs: 3000 } });
  const rs = await untrusted.mx.deliver(message(['ian@sts.test']));
  assert.deepEqual(brief(rs), ['ian@sts.test ok 250'], JSON.stringify(rs));
  assert.match(rs[0]?.text ?? '', /\(host mx-bad\.sts\.test\[127\.0\.0\.31\]:\d+\)$/);
  const failed = untrusted.logs.find((l) => l.msg === 'MTA-STS: policy fetch failed');
  assert.match(String(failed?.err), /certificate/i, JSON.stringify(failed));

  // The policy server's certificate does not name mta-sts.wronghost.test.
  const { mx, logs } = transport(t);
  const rs2 = await mx.deliver(message(['jo@wronghost.test']));
  assert.deepEqual(brief(rs2), ['jo@wronghost.test ok 250'], JSON.stringify(rs2));
  const failed2 = logs.find((l) => l.msg === 'MTA-STS: policy fetch failed');
  assert.match(String(failed2?.err), /mta-sts\.wronghost\.test/, JSON.stringify(failed2));
  assert.match(String(failed2?.err), /altnames|Hostname/i);
  assert.equal(bad.files().length, 2);
});
