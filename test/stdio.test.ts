// `mxguard stdio` (issue 4, "inetd-style operation", Must show 3): the seed 002 set-up —
// tcpserver with a tcprules CDB in front of the SMTP server, rblsmtpd's RBLSMTPD variable set
// per client — reproduced with the real ucspi-tcp tcpserver and tcprules, and systemd's
// systemd-socket-activate in inetd mode. One `mxguard stdio` per connection spools into the
// data_dir of a running `mxguard start` daemon, which delivers to smtp-sink.
//
// The clients connect from different loopback addresses (swaks --local-interface), which the
// tcprules pick by; rbldnsd lists two of them in the blocklist mxguard asks (dnsbl.zones).
// The last two rules are the seed's own ("=:allow", then `:allow,RBLSMTPD="-bad reverse dns"`):
// tcpserver runs with -H (no reverse lookup), so they act as they do for a client without
// reverse DNS under tcpserver -p.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { startRbldnsd, type RbldnsdPeer } from './harness/dns.ts';
import { freePort, makeTempDir, parseSinkDump, runSwaks, startSmtpSink, waitUntil, type SmtpSinkPeer } from './harness/peers.ts';
import { startMxguard, type MxguardProcess } from './harness/mxguard-process.ts';
import { startSocketActivate, startTcpserver, type LauncherPeer } from './harness/launchers.ts';

// The installed command (bin/mxguard.js, with its compile cache), as an administrator runs it.
const MAIN = path.resolve(import.meta.dirname, '../bin/mxguard.js');
const LIMIT = { timeout: 60_000 };

const RULES = [
  '127.0.0.2:allow,RBLSMTPD="-You are on our local blocklist; see https://example.test/why"',
  '127.0.0.4:allow,RBLSMTPD="Try again later: listed by rbl.example"',
  '127.0.0.3:allow,RBLSMTPD=""',
  '127.0.0.5:allow',
  '=:allow',
  ':allow,RBLSMTPD="-bad reverse dns"',
];

let rbl: RbldnsdPeer;
let sink: SmtpSinkPeer;
let mx: MxguardProcess;
let tcp: LauncherPeer;
let dir: string;
let configFile: string;
const stops: Array<() => Promise<unknown>> = [];

before(async () => {
  dir = await makeTempDir('stdio');
  rbl = await startRbldnsd({ zones: { 'bl.test': { type: 'ip4set', entries: ['127.0.0.3', '127.0.0.5'], txt: 'Listed in bl.test: $' } } });
  stops.push(() => rbl.stop());
  sink = await startSmtpSink({ dumpDir: path.join(dir, 'sink') });
  stops.push(() => sink.stop());
  const config = {
    hostname: 'mx.example.test',
    data_dir: path.join(dir, 'var'),
    deliver: `smtp://127.0.0.1:${sink.port}`,
    local_domains: ['example.test'],
    // The clients are not ours: no loopback privileges.
    relay: { forward_from_ip: [] },
    mail_from: { require_domain: false },
    dns: { servers: [rbl.server], timeout: '2s' },
    dnsbl: { zones: [{ zone: 'bl.test' }] },
    // Only the stdio processes' SIGUSR2 can make the daemon deliver within the test.
    queue: { scan_interval: '10m' },
  };
  mx = await startMxguard(dir, config, await freePort());
  stops.push(() => mx.stop());
  configFile = path.join(dir, 'mxguard.yaml');
  tcp = await startTcpserver(RULES, [process.execPath, MAIN, 'stdio', '-c', configFile]);
  stops.push(() => tcp.stop());
});

after(async () => {
  for (const stop of stops.reverse()) await stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

function swaksFrom(ip: string, port: number, to: string, extra: string[] = []) {
  return runSwaks(['--server', '127.0.0.1', '--port', String(port), '--local-interface', ip, '--helo', 'mail.client.test', '--from', 'sender@src.test', '--to', to, '--timeout', '30', ...extra]);
}

test('RBLSMTPD starting with "-": every RCPT gets 553 with its text, and the session goes on', LIMIT, async () => {
  const r = await swaksFrom('127.0.0.2', tcp.port, 'a@example.test,b@example.test');
  const refusals = r.stdout.match(/<\*\* 553 5\.7\.1 You are on our local blocklist; see https:\/\/example\.test\/why/g) ?? [];
  assert.equal(refusals.length, 2, r.stdout);
  assert.match(r.stdout, /<- {2}221 /, 'QUIT answered: the session was not dropped');
  assert.match(tcp.log(), /"check":"rblsmtpd","verdict":"reject".*"setting":"RBLSMTPD"/);
});

test('RBLSMTPD without "-": 451, a temporary refusal', LIMIT, async () => {
  const r = await swaksFrom('127.0.0.4', tcp.port, 'a@example.test');
  assert.match(r.stdout, /<\*\* 451 4\.7\.1 Try again later: listed by rbl\.example/);
});

test('RBLSMTPD set and empty: the DNS blocklists are skipped, the mail is accepted and the daemon delivers it', LIMIT, async () => {
  const before = sink.received();
  const r = await swaksFrom('127.0.0.3', tcp.port, 'c@example.test', ['--header', 'Subject: vouched for']);
  assert.match(r.stdout, /<- {2}250 2\.0\.0 Ok: queued as [0-9A-Z]{14}/, r.stdout);
  // The daemon's scan_interval is 10 minutes: delivery now means the SIGUSR2 from mxguard stdio worked.
  assert.ok(await waitUntil(() => sink.received() > before, 15_000), `not delivered; daemon log:\n${fs.readFileSync(mx.logFile, 'utf8').slice(-3000)}`);
  await rbl.sync();
  assert.ok(!rbl.queries().some((q) => q.name === '3.0.0.127.bl.test'), 'bl.test was not asked about 127.0.0.3');
  const dump = sink.files().map(parseSinkDump).find((d) => d.body.includes('Subject: vouched for'));
  assert.ok(dump, 'message in smtp-sink');
  assert.match(dump.body.toString('latin1'), /^Received: from mail\.client\.test \(\[127\.0\.0\.3\]\)\n\tby mx\.example\.test \(mxguard\)/);
});

test('RBLSMTPD unset: the blocklist decides (the same kind of client without the variable is refused)', LIMIT, async () => {
  const r = await swaksFrom('127.0.0.5', tcp.port, 'd@example.test');
  assert.match(r.stdout, /<\*\* 554 5\.7\.1 Service unavailable; client \[127\.0\.0\.5\] blocked using bl\.test; Listed in bl\.test: 127\.0\.0\.5/);
});

test("the seed's rules: no reverse DNS, no \"=\" match, so RBLSMTPD=\"-bad reverse dns\" refuses", LIMIT, async () => {
  const r = await swaksFrom('127.0.0.6', tcp.port, 'e@example.test');
  assert.match(r.stdout, /<\*\* 553 5\.7\.1 bad reverse dns/);
});

test('systemd-socket-activate --inetd: the client address comes from the socket, RBLSMTPD from -E', LIMIT, async () => {
  const plain = await startSocketActivate({}, [process.execPath, MAIN, 'stdio', '-c', configFile]);
  stops.push(() => plain.stop());
  const before = sink.received();
  const r = await swaksFrom('127.0.0.7', plain.port, 'f@example.test', ['--header', 'Subject: socket activated']);
  assert.match(r.stdout, /<- {2}250 2\.0\.0 Ok: queued as/, r.stdout);
  assert.ok(await waitUntil(() => sink.received() > before, 15_000), 'delivered by the daemon');
  const dump = sink.files().map(parseSinkDump).find((d) => d.body.includes('Subject: socket activated'));
  assert.ok(dump);
  assert.match(dump.body.toString('latin1'), /^Received: from mail\.client\.test \(\[127\.0\.0\.7\]\)/);

  const blocked = await startSocketActivate({ RBLSMTPD: '-Blocked by the launcher' }, [process.execPath, MAIN, 'stdio', '-c', configFile]);
  stops.push(() => blocked.stop());
  const r2 = await swaksFrom('127.0.0.7', blocked.port, 'g@example.test');
  assert.match(r2.stdout, /<\*\* 553 5\.7\.1 Blocked by the launcher/);
});

function stdioWithPipes(env: NodeJS.ProcessEnv, input: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [MAIN, 'stdio', '-c', configFile], { env, timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr });
    });
    child.stdin?.end(input);
  });
}

test('stdio on two pipes: TCPREMOTEIP names the client; without any address the client gets 421', LIMIT, async () => {
  const { TCPREMOTEIP: _a, REMOTE_ADDR: _b, SOCAT_PEERADDR: _c, RBLSMTPD: _d, ...env } = process.env;
  const session = 'EHLO mail.client.test\r\nMAIL FROM:<sender@src.test>\r\nRCPT TO:<h@example.test>\r\nDATA\r\nSubject: piped\r\n\r\nHi\r\n.\r\nQUIT\r\n';
  const ok = await stdioWithPipes({ ...env, TCPREMOTEIP: '192.0.2.44', TCPREMOTEPORT: '4444' }, session);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /^220 mx\.example\.test /);
  assert.match(ok.stdout, /\r\n250 2\.0\.0 Ok: queued as [0-9A-Z]{14}\r\n221 /);
  assert.doesNotMatch(ok.stdout, /"level"/, 'no log line on the client channel');
  assert.match(ok.stderr, /"ip":"192\.0\.2\.44","port":4444,"msg":"connect"/);

  const lost = await stdioWithPipes(env, session);
  assert.equal(lost.code, 1);
  assert.equal(lost.stdout, '421 4.3.0 mx.example.test Service not available: client address unknown\r\n');
  assert.match(lost.stderr, /cannot tell the client address/);
});
