// Issue 14, Must show 6: mxguard as a Postfix policy service. A real Postfix asks mxguard at
// `check_policy_service inet:127.0.0.1:PORT` in smtpd_recipient_restrictions; swaks talks to
// Postfix and sets the client address with XCLIENT (so it is not loopback, which mxguard lets
// relay and never greylists). A new triplet is deferred by Postfix (450, mxguard's greylisting),
// a banned sender refused (5xx, ban.mailfrom), the greylisted triplet retried after the delay and
// a recipient greylisting leaves alone are delivered into Postfix's mailbox, with the header
// mxguard asked Postfix to PREPEND. Plus the protocol's bounds on a raw connection.
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { startTestApp, type TestApp } from './harness/app.ts';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { stringify } from 'yaml';
import { freePort, makeTempDir, maildirFiles, runSwaks, sleep, startPostfix, waitUntil, type MailStorePeer } from './harness/peers.ts';

const LIMIT = { timeout: 90_000 };
const CLIENT = '192.0.2.55';

let app: TestApp;
let postfix: MailStorePeer;
let policyPort: number;

before(async () => {
  app = await startTestApp({
    policy: { listen: '127.0.0.1:0', max_delay: '3s' },
    greylist: { when: 'always', delay: '1s', allow_recipients: ['carol@example.test'] },
    ban: { mailfrom: ['*@banned.example'] },
    limits: { tarpit_start: 1, tarpit_delay: '10s' },
  });
  policyPort = app.app.policyPort as number;
  assert.ok(policyPort > 0, 'the policy service listens');
  postfix = await startPostfix({
    domains: ['example.test'],
    mainCf: [`smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:${policyPort}, permit_mynetworks, reject_unauth_destination`, 'smtpd_authorized_xclient_hosts = 127.0.0.0/8'],
  });
});

after(async () => {
  await postfix?.stop();
  await app?.stop();
});

/** One message through Postfix from CLIENT (XCLIENT); swaks' transcript. */
async function send(from: string, to: string): Promise<string> {
  const r = await runSwaks(['--server', `127.0.0.1:${postfix.port}`, '--helo', 'mail.sender.example', '--xclient-addr', CLIENT, '--xclient-name', '[UNAVAILABLE]', '--from', from, '--to', to, '--body', 'hello through the policy service'], { timeoutMs: 30_000 });
  return r.stdout + r.stderr;
}

test('a new triplet is deferred by Postfix (greylisting), its retry after the delay delivered with X-Greylist', LIMIT, async () => {
  const first = await send('alice@sender.example', 'alice@example.test');
  assert.match(first, /<\*\* 450 4\.7\.1 <alice@example\.test>: Recipient address rejected: Greylisted, please try again in \d+ seconds/, first);
  const answer = app.logs().find((l) => l.msg === 'policy answer' && l.rcpt === 'alice@example.test');
  assert.equal(answer?.check, 'greylist');
  assert.match(String(answer?.action), /^DEFER_IF_PERMIT Greylisted/);
  await sleep(1500);
  const retry = await send('alice@sender.example', 'alice@example.test');
  assert.match(retry, /<- {2}250 2\.0\.0 Ok: queued/, retry);
  assert.ok(await waitUntil(() => maildirFiles(postfix.maildirFor('alice@example.test')).length === 1, 15_000), postfix.log());
  const file = maildirFiles(postfix.maildirFor('alice@example.test'))[0] as string;
  assert.match(fs.readFileSync(file, 'utf8'), /^X-Greylist: delayed \d+ seconds by mxguard$/m, 'the header mxguard asked Postfix to PREPEND');
});

test('a banned sender is refused by Postfix with mxguard\'s 5xx', LIMIT, async () => {
  const out = await send('spammer@banned.example', 'bob@example.test');
  assert.match(out, /<\*\* 5\d\d 5\.\d\.\d <bob@example\.test>: Recipient address rejected: .*/, out);
  const answer = app.logs().find((l) => l.msg === 'policy answer' && l.from === 'spammer@banned.example');
  assert.equal(answer?.check, 'ban_mailfrom');
  assert.equal(maildirFiles(postfix.maildirFor('bob@example.test')).length, 0);
});

test('a clean message is delivered into Postfix\'s mailbox, tagged with X-Spam-Status', LIMIT, async () => {
  const out = await send('dave@sender.example', 'carol@example.test');
  assert.match(out, /<- {2}250 2\.0\.0 Ok: queued/, out);
  assert.ok(await waitUntil(() => maildirFiles(postfix.maildirFor('carol@example.test')).length === 1, 15_000), postfix.log());
  const text = fs.readFileSync(maildirFiles(postfix.maildirFor('carol@example.test'))[0] as string, 'utf8');
  assert.match(text, /^X-Spam-Status: No, score=0\.0/m);
  assert.match(text, /hello through the policy service/);
});

test('asked at DATA and END-OF-MESSAGE too: a permit_mynetworks client\'s mail goes through (no "no valid recipients" from mxguard); greylisting the null sender defers at DATA, or at the end of the message when DATA is not asked', LIMIT, async (t) => {
  const dir = await makeTempDir('policy-data');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  // CLIENT_NO_DATA skips the DATA question (as a Postfix without smtpd_data_restrictions would): END-OF-MESSAGE answers for it.
  const CLIENT_NO_DATA = '192.0.2.57';
  const skipData = path.join(dir, 'skip-data');
  fs.writeFileSync(skipData, `${CLIENT_NO_DATA} OK\n`);
  const policy = `check_policy_service inet:127.0.0.1:${policyPort}`;
  const pf = await startPostfix({
    domains: ['example.test'],
    mainCf: [
      `smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination, ${policy}`,
      `smtpd_data_restrictions = check_client_access texthash:${skipData}, ${policy}`,
      `smtpd_end_of_data_restrictions = ${policy}`,
      'smtpd_authorized_xclient_hosts = 127.0.0.0/8',
    ],
  });
  t.after(() => pf.stop());
  const sendVia = async (args: string[]): Promise<string> => {
    const r = await runSwaks(['--server', `127.0.0.1:${pf.port}`, '--helo', 'mail.sender.example', '--body', 'hello at DATA', ...args], { timeoutMs: 30_000 });
    return r.stdout + r.stderr;
  };
  // From 127.0.0.1, in mynetworks: the policy service is first asked at DATA, with no recipient of its own.
  const local = await sendVia(['--from', 'local@sender.example', '--to', 'dave@example.test']);
  assert.match(local, /<- {2}250 2\.0\.0 Ok: queued/, local);
  assert.ok(await waitUntil(() => maildirFiles(pf.maildirFor('dave@example.test')).length === 1, 15_000), pf.log());
  // The null sender, greylisted: answered to DATA (smtpd_data_restrictions).
  const bounce = await sendVia(['--xclient-addr', CLIENT, '--xclient-name', '[UNAVAILABLE]', '--from', '<>', '--to', 'bob@example.test']);
  assert.match(bounce, / -> DATA\s+<\*\* 450 4\.7\.1 .*Greylisted, please try again in \d+ seconds/, bounce);
  // Without the DATA question: answered at the end of the message, which Postfix then does not queue.
  const late = await sendVia(['--xclient-addr', CLIENT_NO_DATA, '--xclient-name', '[UNAVAILABLE]', '--from', '<>', '--to', 'alice@example.test']);
  assert.match(late, /<\*\* 4\d\d 4\.7\.1 .*Greylisted, please try again in \d+ seconds/, late);
  assert.doesNotMatch(late, /queued as/, late);
  const eom = app.logs().find((l) => l.msg === 'policy answer' && l.state === 'END-OF-MESSAGE' && l.client === CLIENT_NO_DATA);
  assert.equal(eom?.check, 'greylist');
  await sleep(1000);
  assert.equal(maildirFiles(pf.maildirFor('bob@example.test')).length + maildirFiles(pf.maildirFor('alice@example.test')).length, 0, 'nothing greylisted was delivered');
});

/** A raw policy connection: what it answers to `text`, until it closes or `replies` answers came. */
function raw(text: string, replies: number, timeoutMs = 10_000, port = policyPort): Promise<{ out: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let out = '';
    let closed = false;
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ out, closed });
    }, timeoutMs);
    s.on('data', (d: Buffer) => {
      out += d.toString('utf8');
      if ((out.match(/\n\n/g) ?? []).length >= replies) {
        clearTimeout(timer);
        s.destroy();
        resolve({ out, closed });
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => {
      closed = true;
      clearTimeout(timer);
      resolve({ out, closed });
    });
    s.write(text);
  });
}

const req = (attrs: Record<string, string>): string => `${Object.entries({ request: 'smtpd_access_policy', ...attrs }).map(([k, v]) => `${k}=${v}`).join('\n')}\n\n`;

test('protocol: several requests per connection, one transaction per instance (the tarpit held under policy.max_delay); garbage is answered and closed', LIMIT, async () => {
  const base = { protocol_state: 'RCPT', client_address: '198.51.100.9', client_name: 'unknown', helo_name: 'h.example.org', sender: 'x@y.example', instance: 'abc.1' };
  const t0 = performance.now();
  const two = await raw(req({ ...base, recipient: 'carol@example.test' }) + req({ ...base, recipient: 'carol@example.test' }), 2);
  const ms = performance.now() - t0;
  const actions = two.out.split('\n\n').filter(Boolean);
  assert.equal(actions.length, 2, two.out);
  assert.match(actions[0] as string, /^action=(DUNNO|PREPEND .*)$/);
  assert.ok(ms >= 2500 && ms < 8000, `the second recipient of the instance is tarpitted (10 s asked, held ${Math.round(ms)} ms: policy.max_delay 3s)`);
  const bad = await raw('this is not a policy request\n\n', 1);
  assert.equal(bad.out, 'action=DEFER_IF_PERMIT Service temporarily unavailable\n\n');
  assert.ok(bad.closed || (await waitUntil(() => true, 10)), 'closed after the answer');
  const long = await raw(`sender=${'x'.repeat(20_000)}\n\n`, 1);
  assert.equal(long.out, 'action=DEFER_IF_PERMIT Service temporarily unavailable\n\n');
  const noIp = await raw(req({ protocol_state: 'RCPT', client_address: 'unknown', sender: 'a@b.example', recipient: 'alice@example.test', instance: 'n1' }), 1);
  assert.equal(noIp.out, 'action=DUNNO\n\n');
  // Asked at MAIL (check_policy_service in smtpd_sender_restrictions, smtpd_delay_reject = no): the sender's refusal is the answer there.
  const atMail = await raw(req({ protocol_state: 'MAIL', client_address: '198.51.100.9', helo_name: 'h.example.org', sender: 'm@banned.example', instance: 'm.1' }), 1);
  assert.match(atMail.out, /^action=550 5\.7\.1 <m@banned\.example>: Sender address rejected/);
  // Still serving after all that.
  const again = await raw(req({ ...base, instance: 'abc.2', sender: 'z@banned.example', recipient: 'bob@example.test' }), 1);
  assert.match(again.out, /^action=5\d\d 5\.\d\.\d /);
});

/** `mxguard policy -c FILE` as a process (the real command line); killed at the end of the test if still running. */
function runPolicyCommand(t: TestContext, file: string): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
  const root = path.resolve(import.meta.dirname, '..');
  const child = spawn(path.join(root, 'node_modules/.bin/node'), [path.join(root, 'bin/mxguard.js'), 'policy', '-c', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (output += d.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.after(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return { child, output: () => output, exited };
}

test('`mxguard policy` runs the policy service alone (no SMTP listener), reloads on SIGHUP and stops on SIGTERM', LIMIT, async (t) => {
  const dir = await makeTempDir('policy-cli');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const file = path.join(dir, 'mxguard.yaml');
  fs.writeFileSync(file, stringify({ hostname: 'mx.example.test', local_domains: ['example.test'], data_dir: path.join(dir, 'var'), mail_from: { require_domain: false }, policy: { listen: `127.0.0.1:${port}` }, ban: { mailfrom: ['*@banned.example'] } }));
  const { child, output, exited } = runPolicyCommand(t, file);
  assert.ok(await waitUntil(() => output().includes('policy service listening'), 15_000), output());
  const refused = await raw(req({ protocol_state: 'RCPT', client_address: CLIENT, helo_name: 'h.example.org', sender: 'x@banned.example', recipient: 'bob@example.test', instance: 'cli.1' }), 1, 10_000, port);
  assert.match(refused.out, /^action=550 5\.7\.1 <x@banned\.example>: Sender address rejected/);
  assert.ok(!fs.readdirSync(path.join(dir, 'var')).includes('spool'), 'no spool: only the policy service runs');
  // SIGHUP reloads the file: a new ban applies to the transactions that begin afterwards.
  fs.writeFileSync(file, stringify({ hostname: 'mx.example.test', local_domains: ['example.test'], data_dir: path.join(dir, 'var'), mail_from: { require_domain: false }, policy: { listen: `127.0.0.1:${port}` }, ban: { mailfrom: ['*@banned.example', '*@later.example'] } }));
  child.kill('SIGHUP');
  assert.ok(await waitUntil(() => output().includes('configuration reloaded'), 10_000), output());
  const later = await raw(req({ protocol_state: 'RCPT', client_address: CLIENT, helo_name: 'h.example.org', sender: 'x@later.example', recipient: 'bob@example.test', instance: 'cli.2' }), 1, 10_000, port);
  assert.match(later.out, /^action=550 5\.7\.1 <x@later\.example>: Sender address rejected/);
  child.kill('SIGTERM');
  assert.equal(await exited, 0, output());
  assert.match(output(), /"check":"ban_mailfrom".*"msg":"policy answer"/);
});

test('`mxguard policy` logs as `mxguard start` does (log.format text, log.file) and reopens its log file on SIGUSR1 and SIGHUP (logrotate)', LIMIT, async (t) => {
  const dir = await makeTempDir('policy-log');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const file = path.join(dir, 'mxguard.yaml');
  const logFile = path.join(dir, 'policy.log');
  fs.writeFileSync(file, stringify({ hostname: 'mx.example.test', local_domains: ['example.test'], data_dir: path.join(dir, 'var'), mail_from: { require_domain: false }, policy: { listen: `127.0.0.1:${port}` }, log: { file: logFile, format: 'text' } }));
  const { child, output, exited } = runPolicyCommand(t, file);
  const logText = (f: string): string => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '');
  assert.ok(await waitUntil(() => logText(logFile).includes('policy service listening'), 15_000), output() + logText(logFile));
  assert.ok(!logText(logFile).startsWith('{'), `log.format text: ${logText(logFile).slice(0, 200)}`);
  const ask = (instance: string) => raw(req({ protocol_state: 'RCPT', client_address: CLIENT, helo_name: 'h.example.org', sender: 'x@sender.example', recipient: 'bob@example.test', instance }), 1, 10_000, port);
  for (const [signal, n] of [['SIGUSR1', 1], ['SIGHUP', 2]] as const) {
    fs.renameSync(logFile, `${logFile}.${n}`);
    child.kill(signal);
    assert.ok(await waitUntil(() => fs.existsSync(logFile), 10_000), `${signal}: the log file opened again`);
    assert.match((await ask(`log.${n}`)).out, /^action=/);
    assert.ok(await waitUntil(() => logText(logFile).includes('policy answer'), 10_000), `${signal}: ${logText(logFile)}`);
  }
  child.kill('SIGTERM');
  assert.equal(await exited, 0, output());
  assert.match(logText(logFile), /stopped/);
});
