// Large messages end to end (issue 8, defect 1, "Must show 1"): messages of 1, 5 and 20 MiB with
// random line lengths, and a 1.6 MB message of 100,000 header lines, go through mxguard (a real
// process, STARTTLS offered, 30MB limit) to smtp-sink, which dumps what it got; the test compares
// the SHA-256 of what arrived there with that of what was sent. Two ways in:
//   - swaks → mxguard (plain TCP: 64 KiB reads);
//   - Postfix's sendmail → a private Postfix → (relayhost = mxguard, smtp_tls_security_level =
//     encrypt) → mxguard (TLS: 16 KiB records).
// Each message must arrive once, complete and byte for byte; Postfix must relay each one at the
// first attempt (status=sent once, never deferred) and over TLS.
//
// The old DATA decoder (before 7a03cc0) lost or threw on a CR LF that landed on its 64 KiB output
// block boundary. Where the boundaries fall depends on how the input is chunked (the session
// feeds the decoder whatever has piled up, up to some 256 KiB), so the lines are mostly short,
// as in real mail, to make such a landing likely; the line lengths come from a seeded PRNG so
// that a message can be rebuilt (the seed is in every failure message). Against the old decoder
// the 100,000-header-line message got 421 every time, the 20 MiB one nearly every time, the
// 5 MiB one most times: this file fails on it in every run.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { freePort, makeTempDir, parseSinkDump, runSwaks, startPostfix, startSmtpSink, waitUntil, type MailStorePeer, type SmtpSinkPeer } from './harness/peers.ts';
import { runWithInput } from './harness/processes.ts';
import { startMxguard, type MxguardProcess } from './harness/mxguard-process.ts';
import { prng } from './harness/prng.ts';

const SEED = 0x8d1a7a03;
const MiB = 1024 * 1024;
const HOSTNAME = 'mx.example.test';
const SENDER = 'sender@src.test';
const RCPT = 'bob@example.test';
/** How long one message may take from submission to the downstream's dump (20 MiB, 2 cores). */
const DELIVERY_TIMEOUT_MS = 60_000;

// --- the messages ------------------------------------------------------------------------------

interface Sample {
  /** Unique per message: in its first header field and its last line. */
  readonly token: string;
  /** The message exactly as it must arrive: CRLF line ends, ends with CRLF, not dot-stuffed. */
  readonly bytes: Buffer;
  readonly sha256: string;
  readonly lines: number;
  readonly dotLines: number;
}

// Printable ASCII and tab, but no "%" or "\": swaks replaces its %TOKENS% and the two octets "\n"
// in the data even when they come from a file.
const TEXT = Buffer.from('\tABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 !"#$&\'()*+,-./:;<=>?@[]^_`{|}~');

function sha256(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

/** A growable output buffer of octets. */
class Out {
  buf: Buffer;
  len = 0;
  constructor(size: number) {
    this.buf = Buffer.allocUnsafe(size);
  }
  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(bigger, 0, 0, this.len);
    this.buf = bigger;
  }
  str(s: string): void {
    this.ensure(s.length);
    this.len += this.buf.write(s, this.len, 'latin1');
  }
  /** `n` random text octets. */
  text(rnd: () => number, n: number): void {
    this.ensure(n);
    for (let i = 0; i < n; i++) this.buf[this.len++] = TEXT[Math.floor(rnd() * TEXT.length)] as number;
  }
  done(): Buffer {
    return this.buf.subarray(0, this.len);
  }
}

/** Content octets of one body line, 1..998: mostly short, as in real mail, some up to the limit. */
function lineLength(rnd: () => number): number {
  const r = rnd();
  if (r < 0.6) return 1 + Math.floor(rnd() * 40);
  if (r < 0.9) return 41 + Math.floor(rnd() * 160);
  return 201 + Math.floor(rnd() * 798);
}

function headerBlock(token: string, extra = ''): string {
  return (
    `X-Large-Test: ${token}\r\n` +
    `From: <${SENDER}>\r\n` +
    `To: <${RCPT}>\r\n` +
    `Subject: large message ${token}\r\n` +
    'Date: Wed, 02 Dec 2026 03:00:00 +0000\r\n' +
    `Message-ID: <${token}@src.test>\r\n` +
    'MIME-Version: 1.0\r\n' +
    'Content-Type: text/plain; charset=us-ascii\r\n' +
    extra
  );
}

/**
 * A message of about `size` octets whose body lines have random lengths (1..998 octets plus CRLF);
 * about 3% of them start with "." (some are just "." or ".."), so every hop must dot-stuff them.
 * No bare CR or LF, no 8-bit octets: nothing a relay may rightly change.
 */
function bodyMessage(token: string, size: number, seed: number): Sample {
  const rnd = prng(seed);
  const out = new Out(size + 4096);
  out.str(headerBlock(token) + '\r\n');
  let lines = 0;
  let dotLines = 0;
  const end = `END ${token}\r\n`;
  while (out.len < size - 1000 - end.length) {
    const r = rnd();
    if (r < 0.004) {
      out.str(r < 0.002 ? '.\r\n' : '..\r\n');
      dotLines++;
    } else {
      const n = lineLength(rnd);
      if (r < 0.03) {
        // Up to 998 octets with the dot (1001 on the wire): the stuffing dot does not count.
        out.str('.');
        out.text(rnd, Math.min(n, 998) - 1);
        dotLines++;
      } else {
        out.text(rnd, n);
      }
      out.str('\r\n');
    }
    lines++;
  }
  // One last line of random text fills up to the size; then the end marker.
  const fill = Math.max(1, size - out.len - end.length - 2);
  out.text(rnd, Math.min(fill, 998));
  out.str('\r\n' + end);
  const bytes = out.done();
  return { token, bytes, sha256: sha256(bytes), lines: lines + 2, dotLines };
}

/**
 * The shape of the "1.6 MB message with 100,000 header lines": short header fields,
 * a fifth of them folded over two or three lines, then a short body.
 */
function headerMessage(token: string, headerLines: number, seed: number): Sample {
  const rnd = prng(seed);
  const out = new Out(headerLines * 20);
  out.str(headerBlock(token));
  let lines = 8;
  let field = 0;
  while (lines < headerLines) {
    out.str(`X-F${field++}: `);
    out.text(rnd, 1 + Math.floor(rnd() * 9));
    out.str('\r\n');
    lines++;
    const r = rnd();
    for (let folds = r < 0.1 ? 2 : r < 0.2 ? 1 : 0; folds > 0 && lines < headerLines; folds--) {
      out.str(' ');
      out.text(rnd, 1 + Math.floor(rnd() * 20));
      out.str('\r\n');
      lines++;
    }
  }
  out.str('\r\nA short body after a long header.\r\n.leading dot\r\n');
  out.str(`END ${token}\r\n`);
  const bytes = out.done();
  return { token, bytes, sha256: sha256(bytes), lines: lines + 4, dotLines: 1 };
}

interface Shape {
  readonly name: string;
  make(token: string, seed: number): Sample;
}

const SHAPES: readonly Shape[] = [
  { name: '1MiB', make: (t, s) => bodyMessage(t, 1 * MiB, s) },
  { name: '5MiB', make: (t, s) => bodyMessage(t, 5 * MiB, s) },
  { name: '20MiB', make: (t, s) => bodyMessage(t, 20 * MiB, s) },
  { name: '100k-header-lines', make: (t, s) => headerMessage(t, 100_000, s) },
];

// --- peers ---------------------------------------------------------------------------------

let base = '';
let sink: SmtpSinkPeer;
let mx: MxguardProcess;
let relay: MailStorePeer;
let relayEtc = '';
const cleanups: Array<() => unknown> = [];

before(async () => {
  base = await makeTempDir('large'); // 0755: smtp-sink writes its dumps below it as nobody
  cleanups.push(() => fsp.rm(base, { recursive: true, force: true }));
  const tls = path.join(base, 'tls');
  await fsp.mkdir(tls);
  const cert = path.join(tls, 'cert.pem');
  const key = path.join(tls, 'key.pem');
  const ssl = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${HOSTNAME}`], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(ssl.status, 0, `openssl: ${ssl.stderr}`);

  sink = await startSmtpSink({ dumpDir: path.join(base, 'sink') });
  cleanups.push(() => sink.stop());
  const mxDir = path.join(base, 'mxguard');
  await fsp.mkdir(mxDir);
  mx = await startMxguard(
    mxDir,
    {
      hostname: HOSTNAME,
      local_domains: ['example.test'],
      data_dir: path.join(mxDir, 'var'),
      deliver: `smtp://127.0.0.1:${sink.port}`,
      tls: { cert, key },
      limits: { max_message_size: '30MB' },
      mail_from: { require_domain: false },
      log: { level: 'info' },
    },
    await freePort(),
  );
  cleanups.push(() => mx.stop());
  // The sending Postfix: everything not its own (it owns only relay.invalid) goes to mxguard,
  // over TLS or not at all, and is never retried within this test.
  relay = await startPostfix({
    domains: ['relay.invalid'],
    mainCf: [
      'default_transport = smtp',
      `relayhost = [127.0.0.1]:${mx.port}`,
      'smtp_tls_security_level = encrypt',
      'smtp_tls_loglevel = 1',
      'message_size_limit = 50000000',
      'smtp_helo_name = relay.src.test',
    ],
  });
  cleanups.push(() => relay.stop());
  relayEtc = path.join(relay.dir, 'etc');
  await addTlsmgr(relay, relayEtc);
});

/**
 * The harness's master.cf has no tlsmgr, without which Postfix's smtp client has "no entropy for
 * TLS key generation" and, at security level encrypt, defers everything: add it and reload.
 */
async function addTlsmgr(peer: MailStorePeer, etc: string): Promise<void> {
  const master = path.join(etc, 'master.cf');
  await fsp.appendFile(master, 'tlsmgr unix - - n 1000? 1 tlsmgr\n');
  // Postfix waits for a config file modified within the last second to settle: date it back.
  const past = new Date(Date.now() - 60_000);
  await fsp.utimes(master, past, past);
  const r = spawnSync('postfix', ['-c', etc, 'reload'], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(r.status, 0, `postfix reload: ${r.stdout}${r.stderr}`);
  const socket = path.join(peer.dir, 'queue', 'private', 'tlsmgr');
  assert.ok(await waitUntil(() => fs.existsSync(socket), 10_000), `no ${socket} after reload:\n${peer.log().slice(-2000)}`);
}

after(async () => {
  for (const c of cleanups.splice(0).reverse()) {
    try {
      await c();
    } catch (err) {
      console.error('clean-up failed:', err);
    }
  }
});

// --- helpers -------------------------------------------------------------------------------

function readHead(file: string, n: number): string {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(n);
    return b.toString('latin1', 0, fs.readSync(fd, b, 0, n, 0));
  } finally {
    fs.closeSync(fd);
  }
}

function readTail(file: string, n: number): string {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const b = Buffer.alloc(Math.min(n, size));
    return b.toString('latin1', 0, fs.readSync(fd, b, 0, b.length, size - b.length));
  } finally {
    fs.closeSync(fd);
  }
}

/** smtp-sink's dump files of this message, complete ones only (its last line is there). */
function dumpsOf(token: string): string[] {
  return sink.files().filter((f) => {
    try {
      return readHead(f, 8192).includes(`\nX-Large-Test: ${token}\n`) && readTail(f, 256).includes(`\nEND ${token}\n`);
    } catch {
      return false;
    }
  });
}

function mxLog(): string {
  return fs.readFileSync(mx.logFile, 'utf8');
}

/**
 * Checks one dump against the sample: before the message there are only Received fields (the
 * ones the relays added) and mxguard's X-Spam-Score and X-Spam-Status, and the message itself is byte for byte what was sent. smtp-sink writes
 * LF for CRLF; the samples have no bare CR or LF, so turning every LF back into CRLF restores
 * exactly what it received. Returns the Received fields.
 */
function checkDump(file: string, sample: Sample, what: string): string {
  const body = parseSinkDump(file).body;
  const text = body.toString('latin1');
  const marker = `X-Large-Test: ${sample.token}\n`;
  const nl = text.indexOf(`\n${marker}`);
  const at = text.startsWith(marker) ? 0 : nl === -1 ? -1 : nl + 1;
  assert.ok(at >= 0, `${what}: no X-Large-Test header in ${file}`);
  const added = text.slice(0, at);
  // mxguard's score headers (scoring.add_headers: all) sit right after its Received field.
  assert.match(added, /^(?:(?:Received|X-Spam-Score|X-Spam-Status): [^\n]*\n(?:[ \t][^\n]*\n)*)+$/, `${what}: the relays added more than Received and X-Spam-* fields:\n${added}`);
  const got = Buffer.from(text.slice(at).replaceAll('\n', '\r\n'), 'latin1');
  if (got.length !== sample.bytes.length || sha256(got) !== sample.sha256) {
    let i = 0;
    const n = Math.min(got.length, sample.bytes.length);
    while (i < n && got[i] === sample.bytes[i]) i++;
    const show = (b: Buffer): string => JSON.stringify(b.toString('latin1', Math.max(0, i - 60), i + 60));
    assert.fail(
      `${what}: not byte-exact (seed ${SEED}): sent ${sample.bytes.length} octets sha256 ${sample.sha256}, ` +
        `got ${got.length} octets sha256 ${sha256(got)}; first difference at octet ${i}:\n sent ${show(sample.bytes)}\n  got ${show(got)}`,
    );
  }
  return added;
}

async function writeSample(sample: Sample, withFinalCrlf: boolean): Promise<string> {
  const file = path.join(base, `${sample.token}.eml`);
  await fsp.writeFile(file, withFinalCrlf ? sample.bytes : sample.bytes.subarray(0, sample.bytes.length - 2));
  return file;
}

/** The one dump of this message (waits for it, then a little longer for a duplicate). */
async function theDump(sample: Sample, what: string): Promise<string> {
  const arrived = await waitUntil(() => dumpsOf(sample.token).length > 0, DELIVERY_TIMEOUT_MS, 100);
  assert.ok(arrived, `${what}: not at the downstream after ${DELIVERY_TIMEOUT_MS} ms\nmxguard log:\n${mxLog().slice(-3000)}`);
  await new Promise((res) => setTimeout(res, 200));
  const dumps = dumpsOf(sample.token);
  assert.equal(dumps.length, 1, `${what}: delivered ${dumps.length} times`);
  return dumps[0] as string;
}

/** swaks → mxguard (plain) → smtp-sink; asserts it arrived once, byte-exact. */
async function viaSwaks(sample: Sample, what: string): Promise<{ ms: number; mxId: string }> {
  // swaks appends CRLF "." CRLF itself, dot-stuffs, and keeps CRLF line ends as they are: it
  // gets the message without its last CRLF (with it, the message would grow an empty line).
  const file = await writeSample(sample, false);
  const started = Date.now();
  const r = await runSwaks(
    ['--server', '127.0.0.1', '--port', String(mx.port), '--helo', 'client.src.test', '--timeout', '60', '--suppress-data', '--from', SENDER, '--to', RCPT, '--data', `@${file}`],
    { timeoutMs: DELIVERY_TIMEOUT_MS },
  );
  assert.equal(r.code, 0, `${what} (seed ${SEED}): swaks exit ${r.code}${r.timedOut ? ' (timed out)' : ''}\n${r.stdout.slice(-3000)}${r.stderr}\nmxguard log:\n${mxLog().slice(-3000)}`);
  const mxId = /<- {2}250 2\.0\.0 Ok: queued as (\S+)/.exec(r.stdout)?.[1];
  assert.ok(mxId, `${what}: no queue id in\n${r.stdout.slice(-2000)}`);
  const dump = await theDump(sample, what);
  const ms = Date.now() - started;
  const added = checkDump(dump, sample, what);
  assert.match(added, new RegExp(`^Received: from client\\.src\\.test \\(\\[127\\.0\\.0\\.1\\]\\)\\n\\tby mx\\.example\\.test \\(mxguard\\) with ESMTP id ${mxId}\\n`));
  return { ms, mxId };
}

/**
 * Postfix's sendmail → the private Postfix → (TLS) mxguard → smtp-sink; asserts Postfix sent it
 * at the first attempt and it arrived once, byte-exact. Returns Postfix's queue id too.
 */
async function viaPostfix(sample: Sample, what: string): Promise<{ ms: number; mxId: string; qid: string }> {
  const file = await writeSample(sample, true);
  const started = Date.now();
  // -i: a line of a lone "." is text (Postfix's smtp client dot-stuffs it on the way out).
  const sm = await runWithInput('sendmail', ['-C', relayEtc, '-i', '-f', SENDER, '--', RCPT], { file }, DELIVERY_TIMEOUT_MS);
  assert.equal(sm.code, 0, `sendmail: ${sm.output}\n${relay.log().slice(-2000)}`);
  const msgIdLine = new RegExp(`cleanup\\[\\d+\\]: ([0-9A-Za-z]+): message-id=<${sample.token}@src\\.test>`);
  assert.ok(await waitUntil(() => msgIdLine.test(relay.log()), 20_000, 50), `Postfix never queued ${what}:\n${relay.log().slice(-3000)}`);
  const qid = msgIdLine.exec(relay.log())?.[1] as string;
  const outcome = new RegExp(`\\b${qid}: to=<${RCPT.replace(/\./g, '\\.')}>, relay=([^,]+),.* status=(\\w+) \\(([^\\n]*)\\)`);
  assert.ok(await waitUntil(() => outcome.test(relay.log()), DELIVERY_TIMEOUT_MS, 100), `Postfix did not relay ${what} (${qid}) in time:\n${relay.log().slice(-3000)}\nmxguard log:\n${mxLog().slice(-3000)}`);
  const [, relayTo, status, reply] = outcome.exec(relay.log()) as RegExpExecArray;
  assert.equal(status, 'sent', `${what} (seed ${SEED}): Postfix ${status} it: ${reply}\n${relay.log().slice(-3000)}\nmxguard log:\n${mxLog().slice(-3000)}`);
  assert.equal(relayTo, `127.0.0.1[127.0.0.1]:${mx.port}`);
  const mxId = /^250 2\.0\.0 Ok: queued as (\S+)/.exec(reply as string)?.[1];
  assert.ok(mxId, `mxguard's reply: ${reply}`);
  const dump = await theDump(sample, what);
  const ms = Date.now() - started;
  const added = checkDump(dump, sample, what);
  // mxguard's field on top says ESMTPS (it received over TLS), Postfix's own below it.
  assert.match(added, new RegExp(`^Received: from relay\\.src\\.test \\(\\[127\\.0\\.0\\.1\\]\\)\\n\\tby mx\\.example\\.test \\(mxguard\\) with ESMTPS id ${mxId}\\n`));
  assert.match(added, new RegExp(`\\nReceived: by postfix\\.mxguard\\.test \\(Postfix[^\\n]*\\n\\tid ${qid};`));
  return { ms, mxId, qid };
}

function summary(what: string, sample: Sample, ms: number): string {
  return `# ${what}: ${(sample.bytes.length / 1e6).toFixed(2)} MB, ${sample.lines} lines (${sample.dotLines} start with "."), ${ms} ms, sha256 ${sample.sha256.slice(0, 16)}… matched`;
}

// --- 1. swaks → mxguard → smtp-sink ------------------------------------------------------------

test('swaks → mxguard → smtp-sink: 1, 5, 20 MiB and 100,000 header lines arrive byte-exact, once each', { timeout: 240_000 }, async () => {
  for (const [i, shape] of SHAPES.entries()) {
    const sample = shape.make(`swaks-${shape.name}-${SEED.toString(16)}`, SEED + i);
    const { ms } = await viaSwaks(sample, `swaks ${shape.name}`);
    console.log(summary(`swaks ${shape.name}`, sample, ms));
  }
  assert.doesNotMatch(mxLog(), /session failed|internal error/);
});

// --- 2. Postfix (relayhost = mxguard, TLS) → mxguard → smtp-sink -----------------------------

test('Postfix relaying over TLS → mxguard → smtp-sink: the same shapes arrive byte-exact, each sent once at the first attempt', { timeout: 240_000 }, async () => {
  const relayed: string[] = [];
  for (const [i, shape] of SHAPES.entries()) {
    const sample = shape.make(`postfix-${shape.name}-${SEED.toString(16)}`, SEED + 100 + i);
    const { ms, qid, mxId } = await viaPostfix(sample, `Postfix ${shape.name}`);
    relayed.push(qid);
    console.log(summary(`Postfix ${shape.name} (${qid} → mxguard ${mxId})`, sample, ms));
  }
  const log = relay.log();
  // Each message was tried exactly once (status=sent), and Postfix's queue is empty.
  for (const qid of relayed) {
    const tries = log.split('\n').filter((l) => l.includes(` ${qid}: to=<`));
    assert.equal(tries.length, 1, `${qid} tried ${tries.length} times:\n${tries.join('\n')}`);
    assert.match(tries[0] as string, /status=sent/);
  }
  assert.match(log, new RegExp(`postfix/smtp\\[\\d+\\]: (?:Untrusted|Anonymous|Trusted|Verified) TLS connection established to 127\\.0\\.0\\.1\\[127\\.0\\.0\\.1\\]:${mx.port}: TLS`), 'Postfix logged no TLS connection to mxguard');
  const q = spawnSync('postqueue', ['-c', relayEtc, '-p'], { encoding: 'utf8', timeout: 10_000 });
  assert.match(q.stdout + q.stderr, /Mail queue is empty/);
  assert.match(mxLog(), /"msg":"TLS established"/);
  assert.doesNotMatch(mxLog(), /session failed|internal error/);
});

// --- 3. the longest legal line that starts with "." -------------------------------------------

// RFC 5321 4.5.3.1.6 limits a text line to 1000 octets with its CRLF, "not counting the leading
// dot duplicated for transparency". The DATA decoder once counted that dot, so a line of 998
// octets that starts with "." (1001 on the wire) was refused with "550 5.6.0 … line longer than
// 1000 octets", and a relaying Postfix bounced the message.
test('a 998-octet line that starts with "." (1001 octets on the wire) arrives byte-exact, via swaks and via Postfix', { timeout: 60_000 }, async () => {
  const failures: string[] = [];
  for (const how of ['Postfix', 'swaks'] as const) {
    const token = `dotline-${how}-${SEED.toString(16)}`;
    const out = new Out(4096);
    out.str(headerBlock(token) + '\r\n');
    out.str('.' + 'd'.repeat(997) + '\r\n');
    out.str('x'.repeat(998) + '\r\n');
    out.str(`END ${token}\r\n`);
    const bytes = out.done();
    const sample: Sample = { token, bytes, sha256: sha256(bytes), lines: 3, dotLines: 1 };
    try {
      if (how === 'swaks') await viaSwaks(sample, `swaks ${token}`);
      else await viaPostfix(sample, `Postfix ${token}`);
    } catch (err) {
      failures.push(String((err as Error).message).split('\n')[0] as string);
    }
  }
  assert.deepEqual(failures, []);
});
