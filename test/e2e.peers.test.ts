// End to end with real peers (the "Must show 2"): swaks → mxguard (a real process) →
// smtp-sink / a private Postfix / Dovecot LMTP, and the Maildir on the embedded defaults. Also
// what an administrator does to a running mxguard: a downstream that is down and `queue list`,
// SIGTERM in the middle of DATA, SIGHUP with a good and a broken file, `mxguard check`.
//
// The slow peers (Postfix above all) start once, in parallel, in before(), and are shared: every
// test finds its own message by a unique Message-ID. Every process started here is stopped in an
// after-hook, also when an assertion fails.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { stringify } from 'yaml';
import {
  freePort,
  maildirFiles,
  makeTempDir,
  probeBanner,
  parseSinkDump,
  runSwaks,
  startDovecotLmtp,
  startPostfix,
  startSmtpSink,
  waitUntil,
  type MailStorePeer,
  type SmtpSinkPeer,
  type SwaksResult,
} from './harness/peers.ts';
import { startMxguard, type MxguardProcess } from './harness/mxguard-process.ts';
import { RawClient } from './harness/smtp-talk.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');
const HOSTNAME = 'mx.example.test';
const PF_DOMAIN = 'pf.example.test';
const QUEUE_ID = '[0-9A-Z]{14}';
const QUEUED_AS = new RegExp(`<[-~] {1,2}250 2\\.0\\.0 Ok: queued as (${QUEUE_ID})`);

// --- shared peers and clean-up ---------------------------------------------------------------

let base = '';
let sink: SmtpSinkPeer;
let postfix: MailStorePeer;
let dovecot: MailStorePeer;
let tlsCert = '';
let tlsKey = '';
const cleanups: Array<() => unknown> = [];

async function runCleanups(list: Array<() => unknown>): Promise<void> {
  for (const c of list.splice(0).reverse()) {
    try {
      await c();
    } catch (err) {
      console.error('clean-up failed:', err);
    }
  }
}

before(async () => {
  base = await makeTempDir('e2e'); // 0755: smtp-sink writes its dumps below it as nobody
  cleanups.push(() => fsp.rm(base, { recursive: true, force: true }));
  const started = await Promise.allSettled([
    startSmtpSink({ dumpDir: path.join(base, 'sink') }),
    startPostfix({ domains: [PF_DOMAIN] }),
    startDovecotLmtp(),
    makeCert(path.join(base, 'tls')),
  ]);
  for (const r of started) {
    if (r.status === 'fulfilled' && typeof r.value === 'object' && 'stop' in r.value) {
      const peer = r.value;
      cleanups.push(() => peer.stop());
    }
  }
  const failed = started.find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
  const value = <T>(r: PromiseSettledResult<T>): T => (r as PromiseFulfilledResult<T>).value;
  sink = value(started[0]);
  postfix = value(started[1]);
  dovecot = value(started[2]);
});

after(() => runCleanups(cleanups));

/** A throwaway self-signed certificate (ECDSA P-256: fast to make). */
async function makeCert(dir: string): Promise<void> {
  await fsp.mkdir(dir);
  tlsCert = path.join(dir, 'cert.pem');
  tlsKey = path.join(dir, 'key.pem');
  const args = ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', tlsKey, '-out', tlsCert, '-days', '2', '-subj', `/CN=${HOSTNAME}`];
  const r = await run('openssl', args, {});
  assert.equal(r.code, 0, `openssl: ${r.stderr}`);
}

// --- child processes started here (besides the harness's) ------------------------------------

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

const liveChildren = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of liveChildren) c.kill('SIGKILL');
});

/** Runs a command to completion (killed after timeoutMs); never throws for a non-zero exit. */
function run(cmd: string, args: readonly string[], opts: { cwd?: string; timeoutMs?: number }): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    liveChildren.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 20_000);
    child.once('error', (err) => (stderr += `\nspawn error: ${err.message}`));
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      liveChildren.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** The real CLI: `node src/cli/main.ts ARGS`. */
function cli(args: readonly string[], cwd?: string): Promise<Ran> {
  return run(process.execPath, [MAIN, ...args], { cwd });
}

interface Daemon {
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  /** SIGTERM, bounded wait, then SIGKILL; resolves with the exit code. Safe to call twice. */
  stop(): Promise<number | null>;
}

/** A long-running child with its output in logFile; stopped by PID. */
function spawnDaemon(cmd: string, args: readonly string[], opts: { cwd?: string; logFile: string }): Daemon {
  const out = fs.openSync(opts.logFile, 'a');
  const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  liveChildren.add(child);
  const exited = new Promise<number | null>((resolve) => {
    child.once('error', () => resolve(null));
    child.once('exit', (code) => {
      liveChildren.delete(child);
      resolve(code);
    });
  });
  return {
    child,
    exited,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

// --- mxguard and its mail ----------------------------------------------------------------------

let seq = 0;

/** A fresh directory for one mxguard (under base, so it goes away with it). */
async function caseDir(name: string): Promise<string> {
  const dir = path.join(base, `${name}-${++seq}`);
  await fsp.mkdir(dir, { mode: 0o755 });
  return dir;
}

function baseConfig(dir: string, extra: Record<string, unknown>): Record<string, unknown> {
  return { hostname: HOSTNAME, local_domains: ['example.test'], data_dir: path.join(dir, 'var'), log: { level: 'info' }, ...extra };
}

/** Starts mxguard on a free port; it is stopped when the test ends, pass or fail. */
async function mxguard(t: { after(fn: () => unknown): void }, dir: string, config: Record<string, unknown>): Promise<MxguardProcess> {
  const mx = await startMxguard(dir, config, await freePort());
  t.after(() => mx.stop());
  return mx;
}

function swaks(port: number, args: readonly string[]): Promise<SwaksResult> {
  return runSwaks(['--server', '127.0.0.1', '--port', String(port), '--helo', 'client.src.test', '--timeout', '10', ...args], { timeoutMs: 20_000 });
}

function transcript(r: SwaksResult): string {
  return `swaks exit ${r.code}${r.timedOut ? ' (timed out)' : ''}\n${r.stdout}${r.stderr}`;
}

function queuedId(r: SwaksResult): string {
  const m = QUEUED_AS.exec(r.stdout);
  assert.ok(m?.[1], `no "250 2.0.0 Ok: queued as ID" in\n${transcript(r)}`);
  return m[1];
}

/**
 * A message with a known body (CRLF; no final CRLF, swaks adds "\r\n." itself). It has lines that
 * need dot-stuffing, trailing blanks, a tab and a long line; the last line names the Message-ID,
 * so a dump that holds it is complete.
 */
function message(msgId: string, to: string): string {
  return [
    'From: Sender <sender@src.test>',
    `To: ${to}`,
    `Subject: e2e ${msgId}`,
    'Date: Sat, 22 Nov 2025 03:00:00 +0000',
    `Message-ID: <${msgId}>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    'Hello,',
    '.a line that starts with a dot',
    '..and one with two',
    '.',
    'tab\there, trailing blanks   ',
    'x'.repeat(900),
    '',
    `END ${msgId}`,
  ].join('\r\n');
}

async function writeMessage(dir: string, msgId: string, to: string): Promise<string> {
  const file = path.join(dir, `${msgId}.eml`);
  await fsp.writeFile(file, message(msgId, to));
  return file;
}

/** Sink dump files that hold the whole of the message with this Message-ID. */
function dumpsOf(peer: { files(): string[] }, msgId: string): string[] {
  return peer.files().filter((f) => {
    try {
      const text = fs.readFileSync(f, 'latin1');
      return text.includes(`Message-ID: <${msgId}>`) && text.includes(`\nEND ${msgId}\n`);
    } catch {
      return false;
    }
  });
}

async function waitDumps(peer: { files(): string[] }, msgId: string, count = 1, timeoutMs = 10_000): Promise<string[]> {
  await waitUntil(() => dumpsOf(peer, msgId).length >= count, timeoutMs);
  return dumpsOf(peer, msgId);
}

/** Maildir files (new/ and cur/) that hold the given text. */
function mailWith(maildir: string, text: string): string[] {
  return maildirFiles(maildir).filter((f) => fs.readFileSync(f, 'latin1').includes(text));
}

/**
 * Splits a delivered message (LF line ends) into its first header field (with folds), the
 * X-Spam-* fields we put right after it (scoring.add_headers: all) and the rest.
 */
function firstField(text: string): { field: string; spam: string; rest: string } {
  const m = /^[^\n]*\n(?:[ \t][^\n]*\n)*/.exec(text);
  assert.ok(m, 'no header');
  const after = text.slice(m[0].length);
  const spam = /^(?:X-Spam-[A-Za-z]+: [^\n]*\n(?:[ \t][^\n]*\n)*)*/.exec(after)?.[0] ?? '';
  return { field: m[0], spam, rest: after.slice(spam.length) };
}

const DATE = '[A-Z][a-z]{2}, \\d{1,2} [A-Z][a-z]{2} \\d{4} \\d\\d:\\d\\d:\\d\\d \\+0000';

function ourReceived(id: string, proto: string, rcpt?: string): RegExp {
  const forPart = rcpt === undefined ? '' : `\\n\\tfor <${rcpt.replace(/\./g, '\\.')}>`;
  return new RegExp(`^Received: from client\\.src\\.test \\(\\[127\\.0\\.0\\.1\\]\\)\\n\\tby mx\\.example\\.test \\(mxguard\\) with ${proto} id ${id}${forPart};\\n\\t${DATE}\\n$`);
}

/** Reads a log file from offset `from`; bounded wait until `re` matches the new part. */
async function waitLog(file: string, from: number, re: RegExp, timeoutMs = 5000): Promise<boolean> {
  return waitUntil(() => re.test(readFrom(file, from)), timeoutMs);
}

function readFrom(file: string, from: number): string {
  try {
    return fs.readFileSync(file, 'utf8').slice(from);
  } catch {
    return '';
  }
}

function logSize(file: string): number {
  return readFrom(file, 0).length;
}

// --- 1. plain: body, Received, envelope ------------------------------------------------------

test('swaks → mxguard → smtp-sink: delivered once, body intact, our Received on top, envelope right', async (t) => {
  const dir = await caseDir('plain');
  const mx = await mxguard(t, dir, baseConfig(dir, { deliver: `smtp://127.0.0.1:${sink.port}` }));
  const msgId = `plain-${Date.now()}@src.test`;
  const file = await writeMessage(dir, msgId, 'bob@example.test');
  const r = await swaks(mx.port, ['--from', 'sender@src.test', '--to', 'bob@example.test', '--data', `@${file}`]);
  assert.equal(r.code, 0, transcript(r));
  const id = queuedId(r);

  const dumps = await waitDumps(sink, msgId);
  assert.equal(dumps.length, 1, `expected one copy at the sink, got ${dumps.length}`);
  await new Promise((res) => setTimeout(res, 200));
  assert.equal(dumpsOf(sink, msgId).length, 1, 'delivered more than once');
  const dump = parseSinkDump(dumps[0] as string);
  assert.equal(dump.mailArgs, '<sender@src.test>');
  assert.deepEqual(dump.rcptArgs, ['<bob@example.test>']);
  assert.equal(dump.helo, HOSTNAME, 'mxguard says EHLO with its hostname');

  const { field, spam, rest } = firstField(dump.body.toString('latin1'));
  assert.match(field, ourReceived(id, 'ESMTP', 'bob@example.test'));
  assert.equal(spam, 'X-Spam-Score: 0.0\nX-Spam-Status: No, score=0.0 required=5.0 tests=none\n', 'our X-Spam-* fields right after our Received');
  assert.equal(rest, message(msgId, 'bob@example.test').replace(/\r\n/g, '\n') + '\n', 'the message after our Received header is byte for byte what swaks sent');
  assert.equal(rest.match(/^Received: /gm), null, 'only one Received header of ours');
});

// --- 2. pipelining, three recipients -----------------------------------------------------------

test('swaks --pipeline with three recipients → smtp-sink: one transaction, three RCPTs', async (t) => {
  const dir = await caseDir('pipeline');
  const mx = await mxguard(t, dir, baseConfig(dir, { deliver: `smtp://127.0.0.1:${sink.port}` }));
  const msgId = `pipe-${Date.now()}@src.test`;
  const rcpts = ['a@example.test', 'b@example.test', 'c@example.test'];
  const file = await writeMessage(dir, msgId, rcpts.join(', '));
  const r = await swaks(mx.port, ['--pipeline', '--from', 'sender@src.test', '--to', rcpts.join(','), '--data', `@${file}`]);
  assert.equal(r.code, 0, transcript(r));
  // swaks really pipelined: MAIL, three RCPTs and DATA went out before the first reply came back.
  assert.match(r.stdout, /^ -> MAIL FROM:<sender@src\.test>\n -> RCPT TO:<a@example\.test>\n -> RCPT TO:<b@example\.test>\n -> RCPT TO:<c@example\.test>\n -> DATA\n<- {2}250 2\.1\.0 Ok\n<- {2}250 2\.1\.5 Ok\n<- {2}250 2\.1\.5 Ok\n<- {2}250 2\.1\.5 Ok\n<- {2}354 /m, transcript(r));
  const id = queuedId(r);
  assert.equal(r.stdout.match(/queued as/g)?.length, 1, 'one transaction at mxguard');

  const dumps = await waitDumps(sink, msgId);
  await new Promise((res) => setTimeout(res, 200));
  assert.equal(dumpsOf(sink, msgId).length, 1, 'one transaction downstream');
  const dump = parseSinkDump(dumps[0] as string);
  assert.equal(dump.mailArgs, '<sender@src.test>');
  assert.deepEqual(dump.rcptArgs, rcpts.map((a) => `<${a}>`));
  // With several recipients the Received header names none of them (no Bcc disclosure).
  assert.match(firstField(dump.body.toString('latin1')).field, ourReceived(id, 'ESMTP'));
});

// --- 3. STARTTLS -------------------------------------------------------------------------------

test('swaks -tls → mxguard with a certificate → smtp-sink: Received says ESMTPS', async (t) => {
  const dir = await caseDir('tls');
  const mx = await mxguard(t, dir, baseConfig(dir, { deliver: `smtp://127.0.0.1:${sink.port}`, tls: { cert: tlsCert, key: tlsKey } }));
  const msgId = `tls-${Date.now()}@src.test`;
  const file = await writeMessage(dir, msgId, 'bob@example.test');
  const r = await swaks(mx.port, ['-tls', '--from', 'sender@src.test', '--to', 'bob@example.test', '--data', `@${file}`]);
  assert.equal(r.code, 0, transcript(r));
  assert.match(r.stdout, /<- {2}250-STARTTLS/, 'STARTTLS offered');
  assert.match(r.stdout, /=== TLS started with cipher/, transcript(r));
  const id = queuedId(r);
  const dumps = await waitDumps(sink, msgId);
  assert.equal(dumps.length, 1);
  const dump = parseSinkDump(dumps[0] as string);
  const { field, rest } = firstField(dump.body.toString('latin1'));
  assert.match(field, ourReceived(id, 'ESMTPS', 'bob@example.test'));
  assert.equal(rest, message(msgId, 'bob@example.test').replace(/\r\n/g, '\n') + '\n');
});

test('swaks -tls → mxguard without a certificate: exit 29 (no STARTTLS), nothing delivered', async (t) => {
  const dir = await caseDir('notls');
  const mx = await mxguard(t, dir, baseConfig(dir, { deliver: `smtp://127.0.0.1:${sink.port}` }));
  const msgId = `notls-${Date.now()}@src.test`;
  const file = await writeMessage(dir, msgId, 'bob@example.test');
  const r = await swaks(mx.port, ['-tls', '--from', 'sender@src.test', '--to', 'bob@example.test', '--data', `@${file}`]);
  assert.equal(r.code, 29, transcript(r));
  assert.doesNotMatch(r.stdout, /STARTTLS/, 'not offered in EHLO');
  assert.doesNotMatch(r.stdout, /MAIL FROM/, 'swaks gave up before the transaction');
  // Nothing reached the spool, so nothing can reach the sink later.
  const list = await cli(['queue', '-c', path.join(dir, 'mxguard.yaml'), 'list']);
  assert.equal(list.code, 0, list.stderr);
  assert.match(list.stdout, /^-- 0 messages, 0 octets$/m, list.stdout);
  assert.doesNotMatch(fs.readFileSync(mx.logFile, 'utf8'), /"outcome":"accepted"/);
  assert.deepEqual(dumpsOf(sink, msgId), []);
});

// --- 4. a real Postfix: Maildir, and a bounce back through it --------------------------------------

test('swaks → mxguard → real Postfix: lands in its virtual Maildir; an unknown user bounces back to the sender through Postfix', async (t) => {
  const dir = await caseDir('postfix');
  const mx = await mxguard(t, dir, baseConfig(dir, { local_domains: [PF_DOMAIN], deliver: `smtp://127.0.0.1:${postfix.port}`, queue: { retry: ['500ms'] } }));

  const okId = `pf-${Date.now()}@src.test`;
  const okFile = await writeMessage(dir, okId, `bob@${PF_DOMAIN}`);
  const r = await swaks(mx.port, ['--from', 'sender@src.test', '--to', `bob@${PF_DOMAIN}`, '--data', `@${okFile}`]);
  assert.equal(r.code, 0, transcript(r));
  const id = queuedId(r);
  const bobBox = postfix.maildirFor(`bob@${PF_DOMAIN}`);
  assert.ok(await waitUntil(() => mailWith(bobBox, `END ${okId}`).length === 1, 15_000), `no mail in ${bobBox}\n${postfix.log()}`);
  const delivered = fs.readFileSync(mailWith(bobBox, `END ${okId}`)[0] as string, 'latin1').replace(/\r\n/g, '\n');
  assert.match(delivered, new RegExp(`by mx\\.example\\.test \\(mxguard\\) with ESMTP id ${id}`));
  assert.ok(delivered.endsWith(message(okId, `bob@${PF_DOMAIN}`).replace(/\r\n/g, '\n') + '\n'), `body changed on the way:\n${delivered}`);

  // Postfix refuses unknown users at RCPT (550 5.1.1); mxguard has already said 250 to the
  // client, so it bounces: a DSN from the null sender to alice, delivered through Postfix too.
  const badId = `pf-bounce-${Date.now()}@src.test`;
  const badFile = await writeMessage(dir, badId, `nosuchuser@${PF_DOMAIN}`);
  const b = await swaks(mx.port, ['--from', `alice@${PF_DOMAIN}`, '--to', `nosuchuser@${PF_DOMAIN}`, '--data', `@${badFile}`]);
  assert.equal(b.code, 0, `mxguard accepts (it does not know Postfix's users)\n${transcript(b)}`);
  const badQid = queuedId(b);
  const aliceBox = postfix.maildirFor(`alice@${PF_DOMAIN}`);
  assert.ok(
    await waitUntil(() => mailWith(aliceBox, `<${badId}>`).length === 1, 15_000),
    `no bounce in ${aliceBox}\nmxguard log:\n${fs.readFileSync(mx.logFile, 'utf8')}\npostfix log:\n${postfix.log()}`,
  );
  const dsn = fs.readFileSync(mailWith(aliceBox, `<${badId}>`)[0] as string, 'latin1').replace(/\r\n/g, '\n');
  const headers = dsn.slice(0, dsn.indexOf('\n\n'));
  assert.match(headers, /^Return-Path: <>$/m, 'the bounce comes from the null sender');
  assert.match(headers, /^From: .*MAILER-DAEMON@mx\.example\.test/m);
  assert.match(headers, /^To: .*alice@pf\.example\.test/m);
  assert.match(headers, /^Content-Type: multipart\/report;\s+report-type="?delivery-status"?/im);
  assert.match(dsn, /^Content-Type: message\/delivery-status/m);
  assert.match(dsn, /^Reporting-MTA: dns; ?mx\.example\.test$/m);
  assert.match(dsn, /^Final-Recipient: rfc822; ?nosuchuser@pf\.example\.test$/m);
  assert.match(dsn, /^Action: failed$/m);
  assert.match(dsn, /^Status: 5\.1\.1$/m);
  assert.match(dsn, /^Diagnostic-Code: smtp; ?550 5\.1\.1 /m);
  assert.match(dsn, new RegExp(`^Message-ID: <${badId.replace(/\./g, '\\.')}>$`, 'm'), 'the original headers are attached');
  assert.doesNotMatch(dsn, new RegExp(`END ${badId}`), 'headers only, not the body');
  assert.ok(dsn.includes(badQid), 'the report names the original queue ID');
  assert.equal(mailWith(bobBox, badId).length, 0);
  // Both messages and the bounce are done: nothing left in mxguard's queue.
  await waitUntil(async () => /^-- 0 messages/m.test((await cli(['queue', '-c', path.join(dir, 'mxguard.yaml'), 'list'])).stdout), 10_000);
  const list = await cli(['queue', '-c', path.join(dir, 'mxguard.yaml'), 'list']);
  assert.match(list.stdout, /^-- 0 messages, 0 octets$/m, list.stdout);
});

// --- 5. Dovecot LMTP ---------------------------------------------------------------------------

test('swaks → mxguard → real Dovecot LMTP: two recipients, each gets the message in its own Maildir', async (t) => {
  const dir = await caseDir('lmtp');
  const mx = await mxguard(t, dir, baseConfig(dir, { local_domains: ['lmtp.example.test'], deliver: `lmtp://127.0.0.1:${dovecot.port}` }));
  const msgId = `lmtp-${Date.now()}@src.test`;
  const rcpts = ['carol@lmtp.example.test', 'dave@lmtp.example.test'];
  const file = await writeMessage(dir, msgId, rcpts.join(', '));
  const r = await swaks(mx.port, ['--from', 'sender@src.test', '--to', rcpts.join(','), '--data', `@${file}`]);
  assert.equal(r.code, 0, transcript(r));
  const id = queuedId(r);
  for (const rcpt of rcpts) {
    const box = dovecot.maildirFor(rcpt);
    assert.ok(await waitUntil(() => mailWith(box, `END ${msgId}`).length === 1, 10_000), `nothing for ${rcpt} in ${box}\n${dovecot.log()}\n${fs.readFileSync(mx.logFile, 'utf8')}`);
    const text = fs.readFileSync(mailWith(box, `END ${msgId}`)[0] as string, 'latin1').replace(/\r\n/g, '\n');
    // Dovecot's own Received header (it writes no Delivered-To: for a multi-recipient transaction).
    assert.match(text, /^Received: from mx\.example\.test \(\[127\.0\.0\.1\]\)\n\tby [^ ]+ with LMTP\n/m);
    assert.match(text, /^Return-Path: <sender@src\.test>$/m);
    assert.match(text, new RegExp(`by mx\\.example\\.test \\(mxguard\\) with ESMTP id ${id};`));
    assert.ok(text.endsWith(message(msgId, rcpts.join(', ')).replace(/\r\n/g, '\n') + '\n'), `body changed:\n${text}`);
  }
  assert.ok(await waitLog(mx.logFile, 0, /"msg":"delivered"[\s\S]*"msg":"delivered"/), 'two per-recipient deliveries logged');
  const log = fs.readFileSync(mx.logFile, 'utf8');
  for (const rcpt of rcpts) assert.match(log, new RegExp(`"rcpt":"${rcpt}","relay":"lmtp://[^"]+","status":"ok"[^\\n]*"msg":"delivered"`));
});

// --- 6. Maildir on the embedded defaults ---------------------------------------------------------

test('Maildir on defaults: `mxguard start` without -c in an empty dir, swaks --to alice@localhost', async (t) => {
  const cwd = await caseDir('defaults');
  const logFile = path.join(base, `defaults-${seq}.log`);
  // The embedded defaults listen on the fixed 127.0.0.1:2525. When another process holds that
  // port, start on a config file holding only `listen:` (a free port) and nothing else: the
  // rest (local_domains, data_dir ./var, Maildir delivery) still comes from the defaults.
  let port = 2525;
  let mode = 'no config file';
  let d: Daemon | undefined;
  if (!(await canConnect(2525))) {
    d = spawnDaemon(process.execPath, [MAIN, 'start'], { cwd, logFile });
    t.after(() => d?.stop());
    const up = await waitUntil(() => d?.child.exitCode !== null || /"msg":"listening"/.test(readFrom(logFile, 0)), 15_000);
    if (!up || d.child.exitCode !== null) {
      // Lost a race for 2525 (EADDRINUSE); fall through to the config file.
      await d.stop();
      d = undefined;
    }
  }
  if (d === undefined) {
    port = await freePort();
    mode = `config file with only listen: 127.0.0.1:${port} (2525 was taken)`;
    await fsp.writeFile(path.join(cwd, 'mxguard.yaml'), `listen: ["127.0.0.1:${port}"]\n`);
    const d2 = spawnDaemon(process.execPath, [MAIN, 'start', '-c', 'mxguard.yaml'], { cwd, logFile });
    t.after(() => d2.stop());
    assert.ok(await waitUntil(() => d2.child.exitCode !== null || /"msg":"listening"/.test(readFrom(logFile, 0)), 15_000), readFrom(logFile, 0));
    assert.equal(d2.child.exitCode, null, `mxguard exited: ${readFrom(logFile, 0)}`);
    d = d2;
  }
  t.diagnostic(`defaults started with ${mode}`);
  assert.match(readFrom(logFile, 0), new RegExp(`"listen":"127\\.0\\.0\\.1:${port}"`));
  const msgId = `defaults-${Date.now()}@src.test`;
  const file = await writeMessage(base, msgId, 'alice@localhost');
  const r = await swaks(port, ['--from', 'sender@src.test', '--to', 'alice@localhost', '--data', `@${file}`]);
  assert.equal(r.code, 0, transcript(r));
  const id = queuedId(r);
  const box = path.join(cwd, 'var', 'maildir', 'alice');
  assert.ok(await waitUntil(() => mailWith(box, `END ${msgId}`).length === 1, 10_000), `nothing in ${box}/new\n${readFrom(logFile, 0)}`);
  const [delivered] = mailWith(box, `END ${msgId}`);
  assert.equal(path.dirname(delivered as string), path.join(box, 'new'));
  const text = fs.readFileSync(delivered as string, 'latin1');
  // The Maildir copy begins with Return-Path and Delivered-To (qmail-local's order), then our Received.
  assert.match(text, new RegExp(`^Return-Path: <sender@src\\.test>\\r\\nDelivered-To: alice@localhost\\r\\nReceived: from client\\.src\\.test \\(\\[127\\.0\\.0\\.1\\]\\)\\r\\n\\tby [^ ]+ \\(mxguard\\) with ESMTP id ${id}\\r\\n\\tfor <alice@localhost>;`));
  assert.ok(text.endsWith(message(msgId, 'alice@localhost') + '\r\n'), 'body stored as received (CRLF)');
  assert.ok(fs.existsSync(path.join(cwd, 'var', 'mxguard.pid')), 'PID file in ./var');
  assert.equal(await d.stop(), 0);
});

// --- 7. downstream down: deferred, listed, delivered when it comes back --------------------------

/** smtp-sink on a given port (the harness picks its own ports); stopped by PID. */
async function sinkOnPort(port: number, dumpDir: string, logFile: string): Promise<Daemon & { files(): string[] }> {
  await fsp.mkdir(dumpDir, { recursive: true });
  await fsp.chown(dumpDir, 65534, 65534);
  const d = spawnDaemon('smtp-sink', ['-u', 'nobody', '-c', '-d', `${dumpDir}/%Y%m%d%H%M%S.`, `127.0.0.1:${port}`, '128'], { logFile });
  const ready = await waitUntil(async () => d.child.exitCode !== null || (await probeBanner(port)), 10_000, 50);
  if (!ready || d.child.exitCode !== null) {
    await d.stop();
    throw new Error(`smtp-sink on ${port} did not start: ${readFrom(logFile, 0)}`);
  }
  return {
    ...d,
    files: () =>
      fs
        .readdirSync(dumpDir)
        .map((n) => path.join(dumpDir, n))
        .sort(),
  };
}

test('downstream down: the sender gets 250, `queue list` shows attempts and the error, delivery on the next retry', async (t) => {
  const dir = await caseDir('down');
  const downPort = await freePort(); // nothing listens there (yet)
  const mx = await mxguard(t, dir, baseConfig(dir, { deliver: `smtp://127.0.0.1:${downPort}`, queue: { retry: ['300ms'] } }));
  const cfg = path.join(dir, 'mxguard.yaml');
  const msgId = `down-${Date.now()}@src.test`;
  const file = await writeMessage(dir, msgId, 'bob@example.test');
  const r = await swaks(mx.port, ['--from', 'sender@src.test', '--to', 'bob@example.test', '--data', `@${file}`]);
  assert.equal(r.code, 0, transcript(r));
  const id = queuedId(r);

  const row = new RegExp(`^${id} +\\d+ +\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d +(\\d+) +<sender@src\\.test> → bob@example\\.test\\n +\\((4\\d\\d [^\\n]*ECONNREFUSED[^\\n]*); next try [^)]+\\)$`, 'm');
  let listing = '';
  assert.ok(
    await waitUntil(async () => row.test((listing = (await cli(['queue', '-c', cfg, 'list'])).stdout)), 10_000),
    `queue list does not show ${id} with attempts and a last error:\n${listing}\n${fs.readFileSync(mx.logFile, 'utf8').slice(-3000)}`,
  );
  const [, attempts, lastError] = row.exec(listing) as RegExpExecArray;
  assert.ok(Number(attempts) >= 1, listing);
  assert.match(lastError as string, new RegExp(`^421 4\\.4\\.1 connect to 127\\.0\\.0\\.1:${downPort} failed`));
  assert.match(listing, /^-- 1 message, \d+ octets$/m);
  assert.deepEqual(dumpsOf(sink, msgId), []);

  // The downstream comes back on the same port: the next retry delivers, the queue empties.
  const late = await sinkOnPort(downPort, path.join(dir, 'sink'), path.join(dir, 'sink.log'));
  t.after(() => late.stop());
  const dumps = await waitDumps(late, msgId, 1, 10_000);
  assert.equal(dumps.length, 1, `not delivered after the downstream came back:\n${fs.readFileSync(mx.logFile, 'utf8').slice(-3000)}`);
  assert.match(firstField(parseSinkDump(dumps[0] as string).body.toString('latin1')).field, ourReceived(id, 'ESMTP', 'bob@example.test'));
  assert.ok(await waitUntil(async () => /^-- 0 messages, 0 octets$/m.test((listing = (await cli(['queue', '-c', cfg, 'list'])).stdout)), 10_000), listing);
  assert.equal(dumpsOf(late, msgId).length, 1, 'delivered once');
});

// --- 8. SIGTERM in the middle of DATA --------------------------------------------------------------

test('SIGTERM during DATA: the client still gets 250 then 421, the message is delivered, exit code 0', async (t) => {
  const dir = await caseDir('sigterm');
  const config = baseConfig(dir, { deliver: `smtp://127.0.0.1:${sink.port}` });
  const mx = await mxguard(t, dir, config);
  const msgId = `term-${Date.now()}@src.test`;
  const msg = Buffer.from(message(msgId, 'bob@example.test').replace(/^\./gm, '..') + '\r\n.\r\n', 'latin1');
  const half = msg.length >> 1;

  const c = await RawClient.connect(mx.port);
  t.after(() => c.close());
  assert.match(await c.reply(), /^220 /);
  c.send('EHLO client.src.test\r\n');
  assert.match(await c.reply(), /^250-/);
  c.send('MAIL FROM:<sender@src.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n');
  const [mail, rcpt, data] = await c.replies(3);
  assert.match(mail as string, /^250 /);
  assert.match(rcpt as string, /^250 /);
  assert.match(data as string, /^354 /);
  c.send(msg.subarray(0, half));

  const from = logSize(mx.logFile);
  mx.signal('SIGTERM');
  assert.ok(await waitLog(mx.logFile, from, /"msg":"shutting down"/), 'mxguard did not log the SIGTERM');
  await new Promise((res) => setTimeout(res, 100));
  assert.equal(await canConnect(mx.port), false, 'no new connections once stopping');

  c.send(msg.subarray(half));
  const [done, bye] = await c.replies(2, 10_000);
  const m = new RegExp(`^250 2\\.0\\.0 Ok: queued as (${QUEUE_ID})$`).exec(done as string);
  assert.ok(m, `expected 250 queued, got ${done}`);
  assert.match(bye as string, /^421 4\.3\.2 /);
  assert.ok(await c.closed(5000), 'connection closed after the 421');

  const code = await Promise.race([mx.exited, new Promise<string>((res) => setTimeout(() => res('still running'), 20_000).unref())]);
  assert.equal(code, 0, `exit code; log:\n${readFrom(mx.logFile, from)}`);

  if (dumpsOf(sink, msgId).length === 0) {
    // It stopped before delivering: the spool must hold it, and the next start delivers it.
    assert.ok(fs.existsSync(path.join(dir, 'var', 'spool', 'queue', m[1] as string)), 'neither delivered nor in the spool: lost');
    const again = await startMxguard(dir, config, await freePort());
    t.after(() => again.stop());
  }
  const dumps = await waitDumps(sink, msgId);
  assert.equal(dumps.length, 1, `not delivered:\n${readFrom(mx.logFile, 0)}`);
  const { field, rest } = firstField(parseSinkDump(dumps[0] as string).body.toString('latin1'));
  assert.match(field, ourReceived(m[1] as string, 'ESMTP', 'bob@example.test'));
  assert.equal(rest, message(msgId, 'bob@example.test').replace(/\r\n/g, '\n') + '\n');
});

// --- 9. SIGHUP reload ----------------------------------------------------------------------------

test('SIGHUP: a new local domain is accepted by new sessions; an invalid file is logged and the running config stays', async (t) => {
  const dir = await caseDir('sighup');
  // Loopback must not relay here, or every domain would be accepted anyway.
  // Loopback may not relay here, so sender domains would be looked up: there is no DNS here.
  const config = baseConfig(dir, { local_domains: ['a.example.test'], relay: { forward_from_ip: ['192.0.2.0/24'] }, mail_from: { require_domain: false }, deliver: `smtp://127.0.0.1:${sink.port}` });
  const mx = await mxguard(t, dir, config);
  const file = path.join(dir, 'mxguard.yaml');
  const yamlOf = (c: Record<string, unknown>): string => stringify({ listen: [`127.0.0.1:${mx.port}`], ...c });
  const send = (to: string): Promise<SwaksResult> => swaks(mx.port, ['--from', 'sender@src.test', '--to', to, '--quit-after', 'RCPT']);

  const refused = await send('x@b.example.test');
  assert.equal(refused.code, 24, transcript(refused));
  assert.match(refused.stdout, /<\*\* 554 5\.7\.1 <x@b\.example\.test>: Relay access denied/);

  let from = logSize(mx.logFile);
  await fsp.writeFile(file, yamlOf({ ...config, local_domains: ['a.example.test', 'b.example.test'] }));
  mx.signal('SIGHUP');
  assert.ok(await waitLog(mx.logFile, from, /"msg":"configuration reloaded"/), readFrom(mx.logFile, from));
  const msgId = `hup-${Date.now()}@src.test`;
  const data = await writeMessage(dir, msgId, 'x@b.example.test');
  const after1 = await swaks(mx.port, ['--from', 'sender@src.test', '--to', 'x@b.example.test', '--data', `@${data}`]);
  assert.equal(after1.code, 0, transcript(after1));
  assert.equal((await waitDumps(sink, msgId)).length, 1);

  // A broken file (an unknown key, and a domain that must not take effect): logged, ignored.
  from = logSize(mx.logFile);
  await fsp.writeFile(file, yamlOf({ ...config, local_domains: ['a.example.test', 'b.example.test', 'c.example.test'], no_such_key: true }));
  mx.signal('SIGHUP');
  assert.ok(await waitLog(mx.logFile, from, /reload failed; keeping the running configuration/), readFrom(mx.logFile, from));
  assert.match(readFrom(mx.logFile, from), /no_such_key/, 'the log says what is wrong');
  assert.doesNotMatch(readFrom(mx.logFile, from), /"msg":"configuration reloaded"/);
  await new Promise((res) => setTimeout(res, 100));
  assert.equal(await canConnect(mx.port), true, 'still running');
  const still = await send('y@b.example.test');
  assert.equal(still.code, 0, `the previous config (with b.example.test) still applies\n${transcript(still)}`);
  const notC = await send('z@c.example.test');
  assert.equal(notC.code, 24, `the invalid file's domain must not apply\n${transcript(notC)}`);
  const msgId2 = `hup2-${Date.now()}@src.test`;
  const data2 = await writeMessage(dir, msgId2, 'a@a.example.test');
  const mail = await swaks(mx.port, ['--from', 'sender@src.test', '--to', 'a@a.example.test', '--data', `@${data2}`]);
  assert.equal(mail.code, 0, transcript(mail));
  assert.equal((await waitDumps(sink, msgId2)).length, 1, 'still delivers');
});

// --- 10. mxguard check ---------------------------------------------------------------------------

test('`mxguard check -c FILE`: 0 for a good file, 1 with FILE:LINE:COL for an unknown key', async () => {
  const dir = await caseDir('check');
  const good = path.join(dir, 'good.yaml');
  await fsp.writeFile(good, ['hostname: mx.example.test', 'listen: ["127.0.0.1:2525"]', 'local_domains: [example.test]', 'deliver: smtp://127.0.0.1:10025', ''].join('\n'));
  const ok = await cli(['check', '-c', good]);
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  assert.match(ok.stdout, new RegExp(`^${good.replace(/[.]/g, '\\.')}: OK`, 'm'));

  const bad = path.join(dir, 'bad.yaml');
  await fsp.writeFile(bad, ['hostname: mx.example.test', 'listen: ["127.0.0.1:2525"]', 'local_domain: [example.test]', ''].join('\n'));
  const no = await cli(['check', '-c', bad]);
  assert.equal(no.code, 1, no.stdout + no.stderr);
  assert.match(no.stderr, new RegExp(`^${bad.replace(/[.]/g, '\\.')}:3:1: local_domain: unknown key "local_domain", did you mean "local_domains"\\?$`, 'm'), no.stderr);
  assert.doesNotMatch(no.stdout, /OK/);
});

test('SMTP smuggling probes sent byte for byte by swaks: refused, or kept inside the one message', async (t) => {
  const { SMUGGLING_SEQUENCES } = await import('./fixtures/smuggling.ts');
  for (const mode of ['reject', 'normalize'] as const) {
    const dir = await caseDir(`smuggle-${mode}`);
    const mx = await mxguard(t, dir, baseConfig(dir, { deliver: `smtp://127.0.0.1:${sink.port}`, smtp: { bare_lf: mode } }));
    for (const [i, sequence] of SMUGGLING_SEQUENCES.entries()) {
      const tag = `smug-${mode}-${i}-${Date.now()}`;
      const file = path.join(dir, `${tag}.eml`);
      // The probe: an outer message, a fake end of data, then a whole second transaction.
      const probe = `From: <outer@src.test>\r\nSubject: outer ${tag}\r\n\r\nouter${sequence}MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\n${tag}\r\n\r\n.\r\n`;
      await fsp.writeFile(file, probe, 'latin1');
      const r = await swaks(mx.port, ['--from', 'outer@src.test', '--to', 'outer@example.test', '--data', `@${file}`, '--no-data-fixup']);
      if (mode === 'reject') {
        assert.match(r.stdout, /<\*\* +550 5\.(5\.2|6\.0) /, `${JSON.stringify(sequence)}: ${transcript(r)}`);
      } else {
        queuedId(r);
        await waitUntil(() => sink.files().some((f) => fs.readFileSync(f, 'latin1').includes(tag)), 10_000);
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    const dumps = sink.files().map((f) => ({ f, text: fs.readFileSync(f, 'latin1') }));
    const mine = dumps.filter((d) => d.text.includes(`smug-${mode}-`));
    if (mode === 'reject') {
      assert.equal(mine.length, 0, 'nothing of a refused probe reaches the downstream');
    } else {
      assert.equal(mine.length, SMUGGLING_SEQUENCES.length, 'one message per probe');
      for (const d of mine) {
        assert.equal(parseSinkDump(d.f).mailArgs.includes('evil@attacker.test'), false, 'no smuggled transaction');
        assert.match(d.text, /^MAIL FROM:<evil@attacker\.test>$/m, 'the smuggled commands are plain body lines');
      }
    }
  }
});
