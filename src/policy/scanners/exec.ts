// The `exec` scanner (filters.scanners, issue 12): a local program run on each message, so that
// filter scripts written for two other MTAs run here unchanged.
//
// protocol: chasquid — chasquid's post-data hook (docs/hooks.md in chasquid): the message on
//   stdin, the envelope in the environment; exit 0 = accept, each stdout line a header field to
//   add; exit 20 = permanent refusal, any other exit = temporary refusal, the last stdout line
//   being the reply text in both.
// protocol: qmail-queue — a QMAILQUEUE program (qmail-scanner, simscan and the like): the message
//   on fd 0, the envelope on fd 1 as qmail-queue(8) reads it, qmail-queue's exit codes (below).
//
// No shell and no PATH look-up (the schema wants an absolute path); a small environment of our
// own, not mxguard's (which may hold secrets); its own process group, so that a script and what
// it started are all killed at the timeout. A program killed by a signal, one that cannot be
// started, and one stopped at the timeout are failures: the entry's on_error decides.
import { spawn, type ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
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
function run(spec: ExecSpec, input: ScanInput): Promise<Finished> {
  const { signal } = input;
  if (signal.aborted) return Promise.reject(new Error(`${spec.command[0]}: not started (aborted)`));
  return new Promise<Finished>((resolve, reject) => {
    const child = spawn(spec.command[0] as string, spec.command.slice(1), {
      shell: false,
      env: hookEnvironment(input),
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

export function create(spec: ScannerSpec): Scanner {
  if (spec.type !== 'exec') throw new Error(`exec scanner given a ${spec.type} entry`);
  const program = spec.command[0] as string;
  return {
    async scan(input: ScanInput): Promise<ScanResult> {
      const r = await run(spec, input);
      const errLine = replyText(r.stderr.lastLine(), '');
      const why = errLine === '' ? '' : `; stderr: ${errLine}`;
      if (r.code === null) throw new Error(`${program} killed by ${r.signal ?? 'a signal'}${why}`);
      if (spec.protocol === 'qmail-queue') {
        if (r.code === 0) return { kind: 'accept', log: `${program}: exit 0${why}` };
        return { ...qmailQueueResult(r.code), log: `${program}: qmail-queue exit ${r.code}${why}` };
      }
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
