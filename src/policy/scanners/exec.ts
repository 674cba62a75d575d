// The `exec` scanner (filters.scanners, issue 12): a local program run on each message, so that
// filter scripts written for two other MTAs run here unchanged.
//
// protocol: chasquid — chasquid's post-data hook (docs/hooks.md in chasquid): the message on
//   stdin, the envelope in the environment; exit 0 = accept, each stdout line a header field to
//   add; exit 20 = permanent refusal, any other exit = temporary refusal, the last stdout line
//   being the reply text in both.
// protocol: qmail-queue — a QMAILQUEUE program (qmail-scanner, simscan and the like): the message
//   on fd 0, the envelope on fd 1 as qmail-queue(8) reads it, qmail-queue's exit codes (below).
//   Such a filter adds header fields the way it does under qmail: by writing the message, fields
//   on top, to the next qmail-queue. Its QMAILQUEUE is bin/mxguard-queue-capture, which writes
//   what it is given into a private directory made for this run; after exit 0, header fields
//   put on top of exactly the message we gave are added. Any other change (body, existing
//   fields, envelope) is not made: mxguard adds and removes fields, it does not rewrite
//   messages. The message goes on as received and the log says so at warn.
//
// No shell and no PATH look-up (the schema wants an absolute path); a small environment of our
// own, not mxguard's (which may hold secrets); its own process group, so that a script and what
// it started are all killed at the timeout. A program killed by a signal, one that cannot be
// started, and one stopped at the timeout are failures: the entry's on_error decides.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import type { Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ScannerSpec } from './check.ts';
import { messageChunks, type ScanInput, type ScanResult, type Scanner } from './types.ts';
import { fold } from '../scoring.ts';

type ExecSpec = Extract<ScannerSpec, { type: 'exec' }>;

/** Output kept from the program's stdout / stderr: enough for header fields and a reply text. */
const OUTPUT_CAP = 64 * 1024;
/** The tail kept past the cap, for "the last line" of a chatty program. */
const TAIL_CAP = 4 * 1024;
/** After the program exits, how long a descendant still holding its stdout may delay us. */
const CLOSE_GRACE_MS = 200;
/** The longest reply text taken from the program (the reply line must stay under 512 octets). */
const TEXT_MAX = 300;
/** The most octets of header fields a qmail-queue filter may put on top of the message. */
const ADDED_MAX = OUTPUT_CAP;

/**
 * The "next qmail-queue" a qmail-queue filter is given as QMAILQUEUE: a /bin/sh script shipped
 * with mxguard (mode 755), found from this file, not on PATH. It writes the message (fd 0) and
 * the envelope (fd 1) to the files MXGUARD_QUEUE_MESSAGE and MXGUARD_QUEUE_ENVELOPE name.
 */
export const QUEUE_CAPTURE = fileURLToPath(new URL('../../../bin/mxguard-queue-capture', import.meta.url));

/**
 * qmail-queue(8), EXIT CODES, and the texts qmail's own qmail.c gives them. 11 to 40 are
 * permanent, everything else temporary (0 is success):
 *   11      address too long                                      → 554 5.1.3
 *   31      mail server permanently refuses (a filter's refusal)   → 554 5.7.1
 *   12–40   (others) permanent problem                             → 554 5.3.0
 *   51      out of memory            52 timeout                    → 451 4.3.0
 *   53      write error, disk full   54 cannot read message/envelope
 *   55      cannot read a config file  56 network connection problem
 *   61      trouble in home directory  62–66 trouble with queue files
 *   71      mail server temporarily refuses (a filter's deferral)  → 451 4.7.1
 *   72      connection to mail server timed out                    → 451 4.4.1
 *   73      connection to mail server refused                      → 451 4.4.1
 *   74      communication with mail server failed                  → 451 4.4.2
 *   81      internal bug             91 envelope format error      → 451 4.3.0
 *   any other (1–10, 41–99, 100+: e.g. 120 cannot exec)            → 451 4.3.0
 */
export function qmailQueueResult(code: number): { kind: 'reject' | 'tempfail'; code: number; enhanced: string; text: string } {
  const perm = (enhanced: string, what: string) => ({ kind: 'reject' as const, code: 554, enhanced, text: `${what} (qmail-queue exit ${code})` });
  const temp = (enhanced: string, what: string) => ({ kind: 'tempfail' as const, code: 451, enhanced, text: `${what} (qmail-queue exit ${code})` });
  if (code === 11) return perm('5.1.3', 'Envelope address too long');
  if (code === 31) return perm('5.7.1', 'Message refused');
  if (code >= 12 && code <= 40) return perm('5.3.0', 'Message refused: permanent problem');
  if (code === 71) return temp('4.7.1', 'Message deferred, try again later');
  if (code === 72 || code === 73) return temp('4.4.1', 'Temporary problem connecting to the mail server, try again later');
  if (code === 74) return temp('4.4.2', 'Temporary problem talking to the mail server, try again later');
  const what: Record<number, string> = { 51: 'out of memory', 52: 'timeout', 53: 'write error', 54: 'read error', 55: 'cannot read configuration', 56: 'network problem', 61: 'trouble in home directory', 81: 'internal bug', 91: 'envelope format error' };
  const detail = what[code] ?? (code >= 62 && code <= 66 ? 'trouble with queue files' : 'temporary problem');
  return temp('4.3.0', `Message not accepted now (${detail}), try again later`);
}

/** chasquid sanitizes EHLO_DOMAIN to these characters (domains and address literals); EHLO_DOMAIN_RAW is as given. */
function sanitizeEhlo(s: string): string {
  return s.replace(/[^A-Za-z0-9[\]\-.:]/g, '');
}

/** chasquid's post-data hook variables, plus ours; nothing of mxguard's own environment. */
export function hookEnvironment(input: Pick<ScanInput, 'session' | 'tx' | 'message'>): Record<string, string> {
  const { session, tx, message } = input;
  const helo = session.helo ?? '';
  return {
    PATH: '/usr/bin:/bin',
    REMOTE_ADDR: session.remoteIp,
    EHLO_DOMAIN: sanitizeEhlo(helo),
    // A NUL cannot go into the environment; the rest is the client's, unsanitized, as chasquid's.
    EHLO_DOMAIN_RAW: helo.replace(/\0/g, ''),
    MAIL_FROM: tx.mailFrom.address,
    RCPT_TO: tx.rcpts.map((r) => r.address).join(' '),
    AUTH_AS: session.authUser ?? '',
    ON_TLS: session.tls ? '1' : '0',
    SPF_PASS: tx.auth?.spf?.result === 'pass' ? '1' : '0',
    MXGUARD_QUEUE_ID: message.id,
  };
}

/** qmail-queue's envelope: F sender NUL, T recipient NUL for each, then a NUL. */
export function qmailEnvelope(tx: ScanInput['tx']): Buffer {
  const parts = [Buffer.from(`F${tx.mailFrom.address}\0`, 'utf8')];
  for (const r of tx.rcpts) parts.push(Buffer.from(`T${r.address}\0`, 'utf8'));
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}

/** Keeps the first OUTPUT_CAP octets and the last TAIL_CAP ones. */
class Collected {
  head: Buffer[] = [];
  headLen = 0;
  tail = Buffer.alloc(0);
  overflow = false;
  add(chunk: Buffer): void {
    if (this.headLen < OUTPUT_CAP) {
      const take = chunk.subarray(0, OUTPUT_CAP - this.headLen);
      this.head.push(take);
      this.headLen += take.length;
      if (take.length === chunk.length) return;
      chunk = chunk.subarray(take.length);
    }
    this.overflow = true;
    this.tail = Buffer.concat([this.tail, chunk]).subarray(-TAIL_CAP);
  }
  text(): string {
    return Buffer.concat(this.head).toString('utf8');
  }
  /** The last non-empty line of all the output. */
  lastLine(): string {
    const text = this.overflow ? this.tail.toString('utf8') : this.text();
    const lines = text.split(/\r?\n/).filter((l) => l.trim() !== '');
    return lines.at(-1) ?? '';
  }
}

/** A reply text from the program's words: printable, one line, bounded. */
function replyText(line: string, fallback: string): string {
  const clean = line.replace(/[^\x20-\x7e]/g, ' ').replace(/\s+/g, ' ').trim().slice(0, TEXT_MAX);
  return clean === '' ? fallback : clean;
}

const FIELD_NAME = /^[\x21-\x39\x3b-\x7e]+$/;

/**
 * chasquid hook output as header fields: "Name: value" lines, a line starting with white space
 * continuing the one before. Control characters are dropped, long single lines folded, each
 * field ends CRLF. Lines that are not header fields are dropped (counted for the log).
 */
export function parseHookHeaders(output: string): { headers: string[]; dropped: number } {
  const fields: string[][] = [];
  let dropped = 0;
  let current: string[] | undefined;
  for (const raw of output.split('\n')) {
    const line = raw.replace(/\r$/, '').replace(/[\0-\x08\x0a-\x1f\x7f]/g, '');
    if (line.trim() === '') {
      current = undefined;
      continue;
    }
    if (/^[ \t]/.test(line)) {
      if (current) current.push(line);
      else dropped++;
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0 || !FIELD_NAME.test(line.slice(0, colon))) {
      dropped++;
      current = undefined;
      continue;
    }
    current = [line];
    fields.push(current);
  }
  const headers = fields.map((lines) => {
    const first = lines[0] as string;
    if (lines.length === 1 && first.length > 78) {
      const colon = first.indexOf(':');
      return fold(first.slice(0, colon), first.slice(colon + 1).trim());
    }
    return lines.map((l) => `${l}\r\n`).join('');
  });
  return { headers, dropped };
}

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Collected;
  stderr: Collected;
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    child.kill('SIGKILL');
  }
}

/** Runs the program with the message on fd 0 (and, for qmail-queue, the envelope on fd 1). */
function run(spec: ExecSpec, input: ScanInput, env: Record<string, string>): Promise<Finished> {
  const { signal } = input;
  if (signal.aborted) return Promise.reject(new Error(`${spec.command[0]}: not started (aborted)`));
  return new Promise<Finished>((resolve, reject) => {
    const child = spawn(spec.command[0] as string, spec.command.slice(1), {
      shell: false,
      env,
      cwd: '/',
      stdio: ['pipe', 'pipe', 'pipe'],
      // Its own process group: the timeout kills the script and what it started.
      detached: true,
    });
    const stdout = new Collected();
    const stderr = new Collected();
    let settled = false;
    let grace: NodeJS.Timeout | undefined;
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    const done = (err?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(grace);
      signal.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve({ ...(exit as NonNullable<typeof exit>), stdout, stderr });
    };
    const onAbort = () => {
      killGroup(child);
      child.stdout?.destroy();
      child.stderr?.destroy();
      done(new Error(`${spec.command[0]} stopped (${signal.reason instanceof Error ? signal.reason.message : 'aborted'})`));
    };
    signal.addEventListener('abort', onAbort, { once: true });
    child.on('error', (err: NodeJS.ErrnoException) => done(new Error(`cannot run ${spec.command[0]}: ${err.code ?? err.message}`)));
    child.stderr?.on('data', (d: Buffer) => stderr.add(d));
    if (spec.protocol === 'qmail-queue') {
      // libuv makes each stdio "pipe" a socket pair, so fd 1 can be read by the child: we write
      // the envelope into it and shut our side (the program sees end-of-file after the last NUL).
      // Whatever the program writes to fd 1 is drained and ignored.
      child.stdout?.on('data', () => undefined);
      child.stdout?.on('error', () => undefined);
      (child.stdout as Socket | null)?.end(qmailEnvelope(input.tx));
    } else {
      child.stdout?.on('data', (d: Buffer) => stdout.add(d));
    }
    // A program may exit without reading the message (a hook deciding on the envelope alone):
    // the EPIPE that gives is no failure, its exit status says what it wanted.
    if (child.stdin) pipeline(Readable.from(messageChunks(input.message)), child.stdin).catch(() => undefined);
    child.on('exit', (code, sig) => {
      exit = { code, signal: sig };
      // A descendant left holding stdout would keep 'close' away: do not wait for it long.
      grace = setTimeout(() => {
        child.stdout?.destroy();
        child.stderr?.destroy();
        done();
      }, CLOSE_GRACE_MS);
    });
    child.on('close', (code, sig) => {
      exit ??= { code, signal: sig };
      done();
    });
  });
}

/** Octets to compare: a size and a fresh stream of them from an offset. */
export interface Octets {
  readonly size: number;
  read(start?: number): AsyncIterable<Buffer>;
}

/** The next non-empty chunk, or undefined at the end. */
async function nextChunk(it: AsyncIterator<Buffer>): Promise<Buffer | undefined> {
  for (;;) {
    const r = await it.next();
    if (r.done) return undefined;
    if (r.value.length > 0) return r.value;
  }
}

/** Whether two streams carry the same octets, however chunked; neither is held whole. */
export async function sameOctets(a: AsyncIterable<Buffer>, b: AsyncIterable<Buffer>, signal?: AbortSignal): Promise<boolean> {
  const ia = a[Symbol.asyncIterator]();
  const ib = b[Symbol.asyncIterator]();
  try {
    let x = await nextChunk(ia);
    let y = await nextChunk(ib);
    while (x && y) {
      signal?.throwIfAborted();
      const n = Math.min(x.length, y.length);
      if (!x.subarray(0, n).equals(y.subarray(0, n))) return false;
      x = n === x.length ? await nextChunk(ia) : x.subarray(n);
      y = n === y.length ? await nextChunk(ib) : y.subarray(n);
    }
    return x === undefined && y === undefined;
  } finally {
    // Closes a file stream left half-read.
    await Promise.allSettled([ia.return?.(), ib.return?.()]);
  }
}

/** The first `n` octets of a stream (fewer if it is shorter). */
async function firstOctets(stream: AsyncIterable<Buffer>, n: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let len = 0;
  if (n === 0) return Buffer.alloc(0);
  for await (const chunk of stream) {
    const take = chunk.subarray(0, n - len);
    parts.push(take);
    len += take.length;
    if (len >= n) break;
  }
  return Buffer.concat(parts);
}

/**
 * Octets a qmail-queue filter put on top of the message, as header fields to add: whole lines
 * (LF or CRLF), each a field or the continuation of one, no empty line (that would turn our
 * fields into body). Validated and made CRLF as the chasquid hook's stdout (parseHookHeaders).
 */
export function parseAddedFields(added: Buffer): { headers: string[] } | { changed: string } {
  if (added.length === 0) return { headers: [] };
  const text = added.toString('utf8');
  if (!text.endsWith('\n')) return { changed: 'what it put on top of the message does not end with a line end (it would run into the first field)' };
  if (text.slice(0, -1).split('\n').some((l) => l.replace(/\r$/, '').trim() === '')) return { changed: 'it put an empty line on top of the message' };
  const { headers, dropped } = parseHookHeaders(text);
  if (dropped > 0 || headers.length === 0) return { changed: `${dropped} line${dropped === 1 ? '' : 's'} it put on top of the message ${dropped === 1 ? 'is' : 'are'} not header fields` };
  return { headers };
}

/**
 * What a qmail-queue filter passed on, measured against the message it was given: header fields
 * followed by exactly that message are fields to add; anything else is a change (a reason). The
 * sizes first, then the two streams compared chunk by chunk (the message is never held in
 * memory), then what is on top (at most ADDED_MAX octets) read and checked.
 */
export async function addedFields(given: Octets, passed: Octets, signal?: AbortSignal): Promise<{ headers: string[] } | { changed: string }> {
  const extra = passed.size - given.size;
  if (extra < 0) return { changed: `the message it passed on is ${-extra} octets shorter than the one it was given` };
  if (extra > ADDED_MAX) return { changed: `the message it passed on is ${extra} octets longer than the one it was given (at most ${ADDED_MAX} octets of header fields are taken)` };
  // The message first: then what is on top is known to be all the filter added (the reason says so).
  if (!(await sameOctets(given.read(0), passed.read(extra), signal))) {
    return { changed: extra === 0 ? 'the message it passed on differs from the one it was given' : 'the message it passed on is not header fields followed by the one it was given' };
  }
  const added = await firstOctets(passed.read(0), extra);
  if (added.length < extra) return { changed: 'the message it passed on was cut short' };
  return parseAddedFields(added);
}

/** A file as Octets. */
function fileOctets(file: string, size: number): Octets {
  return { size, read: (start = 0) => fs.createReadStream(file, { start }) };
}

async function sizeOf(file: string): Promise<number | undefined> {
  try {
    return (await fsp.stat(file)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * After a qmail-queue filter's exit 0: what it passed on to QMAILQUEUE (bin/mxguard-queue-capture
 * wrote it to `message` and `envelope`), if anything. `none`: it did not run it (or not to the end).
 */
async function passedOn(capture: { message: string; envelope: string }, input: ScanInput): Promise<{ headers: string[] } | { changed: string } | { none: true }> {
  const size = await sizeOf(capture.message);
  if (size === undefined) {
    const started = (await sizeOf(`${capture.message}.part`)) !== undefined || (await sizeOf(`${capture.envelope}.part`)) !== undefined;
    return started ? { changed: 'it ran QMAILQUEUE, which did not finish' } : { none: true };
  }
  const envelope = qmailEnvelope(input.tx);
  const envelopeSize = await sizeOf(capture.envelope);
  if (envelopeSize !== envelope.length || !(await fsp.readFile(capture.envelope)).equals(envelope)) {
    return { changed: 'the envelope it passed on differs from the one it was given' };
  }
  return addedFields(input.message, fileOctets(capture.message, size), input.signal);
}

/** The qmail-queue protocol: QMAILQUEUE set to our capture, a private directory for what it writes. */
async function scanQmailQueue(spec: ExecSpec, input: ScanInput): Promise<ScanResult> {
  const program = spec.command[0] as string;
  // mkdtemp makes it 0700; said again, in case of an odd umask or platform.
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mxguard-qq-'));
  try {
    await fsp.chmod(dir, 0o700);
    const capture = { message: path.join(dir, 'message'), envelope: path.join(dir, 'envelope') };
    const env = { ...hookEnvironment(input), QMAILQUEUE: QUEUE_CAPTURE, MXGUARD_QUEUE_MESSAGE: capture.message, MXGUARD_QUEUE_ENVELOPE: capture.envelope };
    const r = await run(spec, input, env);
    const errLine = replyText(r.stderr.lastLine(), '');
    const why = errLine === '' ? '' : `; stderr: ${errLine}`;
    if (r.code === null) throw new Error(`${program} killed by ${r.signal ?? 'a signal'}${why}`);
    if (r.code !== 0) return { ...qmailQueueResult(r.code), log: `${program}: qmail-queue exit ${r.code}${why}` };
    const passed = await passedOn(capture, input);
    if ('none' in passed) return { kind: 'accept', log: `${program}: exit 0${why}` };
    if ('changed' in passed) {
      return {
        kind: 'accept',
        log: `${program}: exit 0, passed the message on changed, change not applied${why}`,
        warn: `${program}: ${passed.changed}: change not applied, the message goes on as received (mxguard adds header fields, it does not rewrite messages or envelopes)`,
      };
    }
    const n = passed.headers.length;
    return { kind: 'accept', headers: passed.headers, log: `${program}: exit 0, passed on with ${n} header field${n === 1 ? '' : 's'} added${why}` };
  } finally {
    await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

export function create(spec: ScannerSpec): Scanner {
  if (spec.type !== 'exec') throw new Error(`exec scanner given a ${spec.type} entry`);
  const program = spec.command[0] as string;
  if (spec.protocol === 'qmail-queue') {
    try {
      fs.accessSync(QUEUE_CAPTURE, fs.constants.X_OK);
    } catch {
      throw new Error(`${QUEUE_CAPTURE} (QMAILQUEUE for qmail-queue filters) is missing or not executable: it ships with mode 755`);
    }
    return { scan: (input) => scanQmailQueue(spec, input) };
  }
  return {
    async scan(input: ScanInput): Promise<ScanResult> {
      const r = await run(spec, input, hookEnvironment(input));
      const errLine = replyText(r.stderr.lastLine(), '');
      const why = errLine === '' ? '' : `; stderr: ${errLine}`;
      if (r.code === null) throw new Error(`${program} killed by ${r.signal ?? 'a signal'}${why}`);
      if (r.code === 0) {
        const { headers, dropped } = parseHookHeaders(r.stdout.text());
        const note = dropped > 0 ? `; ${dropped} stdout line${dropped === 1 ? '' : 's'} not a header field, dropped` : '';
        return { kind: 'accept', headers, log: `${program}: exit 0, ${headers.length} header field${headers.length === 1 ? '' : 's'}${note}${why}` };
      }
      const last = r.stdout.lastLine();
      if (r.code === 20) return { kind: 'reject', code: 554, enhanced: '5.7.1', text: replyText(last, 'Message refused'), log: `${program}: exit 20${why}` };
      return { kind: 'tempfail', code: 451, enhanced: '4.7.1', text: replyText(last, 'Message deferred, try again later'), log: `${program}: exit ${r.code}${why}` };
    },
  };
}
