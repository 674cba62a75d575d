// POP-before-SMTP from a POP/IMAP server's log (seed 003: "every time someone successfully enters
// a correct username and password to your POP or IMAP server, the server records the IP address
// of the remote client"). We follow the server's log files like `tail -F` and add the client IP
// of every successful login to the relayers table, where the relay check's forward_user rule
// (DMail: "(x.x.x.x) is recent") finds it.
//
// Following, per file:
// - start at the END (old logins are not replayed), or at the start of a line still being written;
// - a file that does not exist yet is waited for, and read from its start when it appears (one
//   that exists but cannot be read yet is read from its end once it can);
// - rotation (renamed and recreated, or replaced): what is left in the old file is read, the new
//   file is read from its start, and the old one is still read for a few seconds (a daemon keeps
//   writing to it until it reopens its log);
// - truncation (copytruncate): read again from the start;
// - partial lines wait for their newline; a line longer than MAX_LINE_BYTES is skipped whole.
// Woken by fs.watch on the file's directory where that works, and by a poll (default 250 ms)
// everywhere, so a login counts within a second. A store that fails is logged and retried with
// the next login; nothing stops the watcher but stop().
//
// The default patterns are anchored so that text a client controls (the user name, which Dovecot
// and Courier also log for FAILED logins, e.g. `user=<pop3-login: Login: user=<x>, …, rip=6.6.6.6>`)
// can never pass for a login line: before the process name there may be no `=`, `<` or `(`, and
// every field a client chooses comes after one of those.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Store } from '../store/store.ts';
import type { Logger } from '../util/log.ts';
import { clock } from '../util/clock.ts';
import { linearRegex, type LinearRegex } from '../util/regex.ts';

const open = promisify(fs.open);
const read = promisify(fs.read);
const close = promisify(fs.close);
const stat = promisify(fs.stat);
const fstat = promisify(fs.fstat);

/** Lines longer than this (bytes, without the newline) are skipped: no login line is near it. */
export const MAX_LINE_BYTES = 16 * 1024;
const CHUNK_BYTES = 64 * 1024;
/** How long a rotated-away file is still read (its writer may not have reopened its log yet). */
const RETIRED_READ_MS = 5000;
const DEFAULT_POLL_MS = 250;
/** Non-blocking, so that a FIFO at the path cannot hang us (it is refused: not a regular file). */
const OPEN_FLAGS = fs.constants.O_RDONLY | fs.constants.O_NONBLOCK;

// What may precede the process name: a syslog <PRI>, then timestamp, host and tag, none of which
// holds `=`, `<` or `(` (a host literally named "(none)" excepted).
const PREFIX = String.raw`^(?:<\d{1,3}>)?(?:[^=<(]|\(none\))*?(?:^|\s)`;

/**
 * Dovecot with its default login_log_format(_elements), in log_path or syslog form: a successful
 * POP3 or IMAP login,
 * `… pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=192.0.2.10, lip=…, mpid=…, session=<…>`.
 * Not: `Disconnected (auth failed, …): user=<…>, method=PLAIN, rip=…`, `Aborted login …`,
 * `auth: … Password mismatch`, and no failed login whatever user name the client sent.
 */
export const DOVECOT_LOGIN = new RegExp(
  PREFIX + String.raw`(?:pop3|imap)-login: (?:Info: )?Login: user=<[^<>]*>, method=[^,<>\s]*, rip=(?<ip>[0-9A-Fa-f:.]+)(?=[,\s]|$)`,
);

/**
 * Courier (courierpop3login/imaplogin, or pop3d/imapd and their -ssl variants):
 * `… courierpop3login: LOGIN, user=alice, ip=[::ffff:192.0.2.10], port=[41234]`.
 * Not: `LOGIN FAILED, …`, `LOGOUT, …`, `Connection, ip=[…]`.
 */
export const COURIER_LOGIN = new RegExp(
  PREFIX + String.raw`(?:courierpop3login|imaplogin|pop3d(?:-ssl)?|imapd(?:-ssl)?)(?:\[\d+\])?: LOGIN, user=[^,]*, ip=\[(?<ip>[0-9A-Fa-f:.]+)\]`,
);

/** Used when relay.pop_log_pattern is not set. */
export const DEFAULT_LOGIN_PATTERNS: readonly RegExp[] = [DOVECOT_LOGIN, COURIER_LOGIN];

/** A built-in pattern (ours, so a RegExp), or relay.pop_log_pattern on the linear-time engine. */
export type LoginPattern = RegExp | LinearRegex;

/** relay.pop_log_pattern (a regex source with a named group `ip`), or the defaults. */
export function loginPatterns(pattern?: string): readonly LoginPattern[] {
  if (pattern === undefined) return DEFAULT_LOGIN_PATTERNS;
  const re = linearRegex(pattern);
  if (!/\(\?P?<ip>/.test(pattern)) throw new Error('relay.pop_log_pattern needs a named group (?<ip>...)');
  return [re];
}

/** An IP as the SMTP side sees it: IPv6 in its canonical form, IPv4-mapped IPv6 as plain IPv4. */
function normalizeIp(raw: string): string | undefined {
  const family = net.isIP(raw);
  if (family === 4) return raw;
  if (family !== 6) return undefined;
  const canonical = new net.SocketAddress({ address: raw, family: 'ipv6' }).address;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(canonical);
  return mapped && net.isIPv4(mapped[1] as string) ? (mapped[1] as string) : canonical;
}

/** The client IP of a successful login line, or undefined (no pattern matches, or no valid IP). */
export function loginIp(line: string, patterns: readonly LoginPattern[]): string | undefined {
  for (const re of patterns) {
    let ip: string | undefined;
    if (re instanceof RegExp) {
      re.lastIndex = 0;
      ip = re.exec(line)?.groups?.ip;
    } else ip = re.groups(line)?.ip;
    if (ip === undefined) continue;
    const plain = normalizeIp(ip.trim());
    if (plain !== undefined) return plain;
  }
  return undefined;
}

export interface LogWatcherOptions {
  /** Absolute paths of the POP/IMAP logs (relay.pop_logs). */
  readonly files: readonly string[];
  /** relay.pop_log_pattern; undefined = DEFAULT_LOGIN_PATTERNS. */
  readonly pattern?: string;
  readonly store: Store;
  /** relay.relayers_keep: how long an entry stays in the relayers table. */
  readonly keepMs: number;
  readonly log: Logger;
  /** Poll interval, also where fs.watch works (it can miss events); default 250 ms. */
  readonly pollMs?: number;
}

export interface LogWatcher {
  /** Stops following; resolves when nothing is read or written any more and every file is closed. */
  stop(): Promise<void>;
}

interface Sink {
  readonly file: string;
  readonly patterns: readonly LoginPattern[];
  readonly store: Store;
  readonly keepMs: number;
  readonly log: Logger;
  stopped(): boolean;
}

/** One open file: where we are in it and the start of a line whose newline has not come yet. */
class Reader {
  readonly fd: number;
  readonly dev: number;
  readonly ino: number;
  pos: number;
  private partial: Buffer[] = [];
  private partialLen = 0;
  /** Inside an over-long line: drop everything up to its newline. */
  private skipping: boolean;

  constructor(fd: number, st: fs.Stats, pos: number, skipping = false) {
    this.fd = fd;
    this.dev = st.dev;
    this.ino = st.ino;
    this.pos = pos;
    this.skipping = skipping;
  }

  sameFile(st: fs.Stats): boolean {
    return st.dev === this.dev && st.ino === this.ino;
  }

  /** Forgets the unfinished line (the file was truncated under it). */
  restart(pos: number): void {
    this.pos = pos;
    this.partial = [];
    this.partialLen = 0;
    this.skipping = false;
  }

  /** Reads from pos to the end of the file, handing each complete line to onLine. */
  async drain(buf: Buffer, onLine: (line: Buffer) => Promise<void>, stopped: () => boolean): Promise<void> {
    while (!stopped()) {
      const { bytesRead } = await read(this.fd, buf, 0, buf.length, this.pos);
      if (bytesRead === 0) return;
      this.pos += bytesRead;
      let start = 0;
      for (;;) {
        const nl = buf.indexOf(0x0a, start);
        if (nl === -1 || nl >= bytesRead) break;
        const piece = buf.subarray(start, nl);
        start = nl + 1;
        if (this.skipping) {
          this.skipping = false;
          continue;
        }
        const len = this.partialLen + piece.length;
        const line = this.partialLen === 0 ? piece : Buffer.concat([...this.partial, piece], len);
        this.partial = [];
        this.partialLen = 0;
        if (len <= MAX_LINE_BYTES) await onLine(line);
        if (stopped()) return;
      }
      if (start < bytesRead && !this.skipping) {
        const rest = buf.subarray(start, bytesRead);
        if (this.partialLen + rest.length > MAX_LINE_BYTES) {
          this.partial = [];
          this.partialLen = 0;
          this.skipping = true;
        } else {
          this.partial.push(Buffer.from(rest)); // buf is reused for the next read
          this.partialLen += rest.length;
        }
      }
    }
  }
}

/** Where to start in a file that already exists: its end, or the start of its unfinished last line. */
function startOffset(fd: number, size: number): { pos: number; skipping: boolean } {
  if (size === 0) return { pos: 0, skipping: false };
  const len = Math.min(size, MAX_LINE_BYTES + 1);
  const tail = Buffer.alloc(len);
  const n = fs.readSync(fd, tail, 0, len, size - len);
  const nl = tail.subarray(0, n).lastIndexOf(0x0a);
  if (nl === n - 1) return { pos: size, skipping: false };
  if (nl === -1) return len < MAX_LINE_BYTES + 1 ? { pos: 0, skipping: false } : { pos: size, skipping: true };
  return { pos: size - n + nl + 1, skipping: false };
}

function errCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Follows one log file; check() is never run twice at once (kick() coalesces). */
class Follower {
  private readonly sink: Sink;
  private current: Reader | undefined;
  private retired: Array<{ reader: Reader; until: number }> = [];
  private readonly buf = Buffer.alloc(CHUNK_BYTES);
  private running: Promise<void> | undefined;
  private again = false;
  private problem: string | undefined;
  /** The file was there at start-up but could not be opened: when it can, start at its end too. */
  private startAtEnd = false;
  watcher: fs.FSWatcher | undefined;

  constructor(sink: Sink) {
    this.sink = sink;
    this.open();
  }

  private get ctx(): { check: string; file: string } {
    return { check: 'forward_user', file: this.sink.file };
  }

  /** At start-up, synchronously, so that a line appended once startLogWatcher returned counts. */
  private open(): void {
    let fd: number | undefined;
    try {
      fd = fs.openSync(this.sink.file, OPEN_FLAGS);
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new Error('not a regular file');
      const { pos, skipping } = startOffset(fd, st.size);
      this.current = new Reader(fd, st, pos, skipping);
      this.sink.log.info({ ...this.ctx, pos }, 'following POP/IMAP log for POP-before-SMTP logins');
    } catch (err) {
      if (fd !== undefined) fs.closeSync(fd);
      if (errCode(err) === 'ENOENT') {
        this.sink.log.info(this.ctx, 'POP/IMAP log does not exist yet; waiting for it');
      } else {
        this.startAtEnd = true;
        this.trouble(err);
      }
    }
  }

  private trouble(err: unknown): void {
    const text = errText(err);
    if (text === this.problem) return; // once per distinct problem, not once per poll
    this.problem = text;
    this.sink.log.warn({ ...this.ctx, err: text }, 'cannot read POP/IMAP log; retrying');
  }

  kick(): void {
    if (this.sink.stopped()) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.check();
      } while (this.again && !this.sink.stopped());
    })().finally(() => {
      this.running = undefined;
    });
  }

  private readonly onLine = async (line: Buffer): Promise<void> => {
    const ip = loginIp(line.toString('utf8'), this.sink.patterns);
    if (ip === undefined) return;
    const { store, keepMs, log } = this.sink;
    log.info({ ...this.ctx, ip }, 'POP-before-SMTP login');
    try {
      await store.relayerAdd(ip, Math.floor(clock.now() / 1000), keepMs);
    } catch (err) {
      log.warn({ ...this.ctx, ip, err: errText(err) }, 'POP-before-SMTP login not recorded: store failed');
    }
  };

  private async check(): Promise<void> {
    const stopped = this.sink.stopped;
    try {
      const now = Date.now();
      for (const r of [...this.retired]) {
        await r.reader.drain(this.buf, this.onLine, stopped);
        if (now >= r.until) {
          this.retired.splice(this.retired.indexOf(r), 1);
          await close(r.reader.fd);
        }
      }
      if (this.current) await this.current.drain(this.buf, this.onLine, stopped);
      if (stopped()) return;

      let st: fs.Stats;
      try {
        st = await stat(this.sink.file);
      } catch (err) {
        if (errCode(err) !== 'ENOENT') throw err;
        return; // renamed away and not recreated yet: keep reading the old one
      }
      const cur = this.current;
      if (cur && cur.sameFile(st)) {
        if (st.size < cur.pos) {
          this.sink.log.info(this.ctx, 'POP/IMAP log truncated; reading it from its start');
          cur.restart(0);
          await cur.drain(this.buf, this.onLine, stopped);
        }
        this.problem = undefined;
        return;
      }
      if (!st.isFile()) throw new Error('not a regular file');
      // A new file at the path (created, or the old one rotated away): read it from its start.
      const fd = await open(this.sink.file, OPEN_FLAGS);
      let next: Reader;
      try {
        const fst = await fstat(fd);
        if (this.startAtEnd && !cur) {
          const { pos, skipping } = startOffset(fd, fst.size);
          next = new Reader(fd, fst, pos, skipping);
        } else {
          next = new Reader(fd, fst, 0);
        }
      } catch (err) {
        await close(fd);
        throw err;
      }
      if (this.startAtEnd && !cur) {
        this.sink.log.info({ ...this.ctx, pos: next.pos }, 'following POP/IMAP log for POP-before-SMTP logins');
      } else if (cur) {
        this.retired.push({ reader: cur, until: now + RETIRED_READ_MS });
        this.sink.log.info(this.ctx, 'POP/IMAP log rotated; reading the new file from its start');
      } else {
        this.sink.log.info(this.ctx, 'POP/IMAP log appeared; reading it from its start');
      }
      this.current = next;
      this.startAtEnd = false;
      this.problem = undefined;
      await next.drain(this.buf, this.onLine, stopped);
    } catch (err) {
      this.trouble(err);
    }
  }

  async close(): Promise<void> {
    this.watcher?.close();
    this.watcher = undefined;
    await this.running;
    for (const r of this.retired) await close(r.reader.fd).catch(() => undefined);
    this.retired = [];
    if (this.current) await close(this.current.fd).catch(() => undefined);
    this.current = undefined;
  }
}

/**
 * Follows `files` (like `tail -F`) and adds the client IP of every successful POP/IMAP login
 * to the relayers table: store.relayerAdd(ip, now, keepMs).
 */
export function startLogWatcher(opts: LogWatcherOptions): LogWatcher {
  const patterns = loginPatterns(opts.pattern);
  let stopped = false;
  const isStopped = (): boolean => stopped;
  const followers = opts.files.map((file) => {
    const f = new Follower({ file, patterns, store: opts.store, keepMs: opts.keepMs, log: opts.log, stopped: isStopped });
    watch(f, file);
    return f;
  });

  /** fs.watch on the directory sees the file being appended to, created and renamed. */
  function watch(f: Follower, file: string): void {
    if (f.watcher || stopped) return;
    const base = path.basename(file);
    try {
      const w = fs.watch(path.dirname(file), { persistent: false }, (_event, name) => {
        if (name === null || name === base) f.kick();
      });
      w.on('error', () => {
        w.close();
        if (f.watcher === w) f.watcher = undefined; // the poll carries on, and tries again
      });
      f.watcher = w;
    } catch {
      // No such directory yet, or no inotify: the poll does the work.
    }
  }

  const timer = setInterval(() => {
    followers.forEach((f, i) => {
      watch(f, opts.files[i] as string);
      f.kick();
    });
  }, opts.pollMs ?? DEFAULT_POLL_MS);
  timer.unref();

  return {
    async stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      await Promise.all(followers.map((f) => f.close()));
    },
  };
}
