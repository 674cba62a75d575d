// One structured logger (pino) for the whole process. Every decision is one line with a `check`
// field; the queue and delivery log with the queue ID under `id`.
//
// Logging never stops the mail. pino's own destination (sonic-boom) turns a failed write (a full
// log disk: ENOSPC, EIO, EPIPE…) into an 'error' event, an uncaught exception, and its exit hook
// then retries the write for ever; a sync destination throws into the caller. LogDestination
// below drops what it cannot write instead, counts it (logDropped(), for the metrics), and logs
// one warning with the count once a write succeeds again. Only EAGAIN/EBUSY (a full pipe) is
// waited out, and then with a bounded buffer: what does not fit is dropped and counted too.
//
// log.format text renders each JSON line as Postfix-like text in the destination (log-text.ts).
// reopen() (SIGHUP, SIGUSR1: logrotate) opens the file anew; a batch already under way finishes
// on the old descriptor, which is closed after it, so no line is cut or lost between the two.
import fs from 'node:fs';
import path from 'node:path';
import { pino, type DestinationStream, type Logger } from 'pino';
import { jsonToText } from './log-text.ts';

export type { Logger };

/** Bytes (UTF-16 units, close enough) an async destination buffers while a write is slow. */
const MAX_PENDING = 8 * 1024 * 1024;
/** How long to wait before writing again after EAGAIN/EBUSY. */
const BUSY_RETRY_MS = 50;
/** How long a synchronous write (stdio mode, the exit flush) waits out EAGAIN/EBUSY in all. */
const SYNC_BUSY_MAX_MS = 1000;

let droppedTotal = 0;

/** Log lines dropped by this process because they could not be written (full disk, I/O error…). */
export function logDropped(): number {
  return droppedTotal;
}

const NL = 0x0a;
const isBusy = (err: NodeJS.ErrnoException): boolean => err.code === 'EAGAIN' || err.code === 'EBUSY';
const sleepBuf = new Int32Array(new SharedArrayBuffer(4));

/** A buffer of whole lines to write, after a separating newline if `start` is 1. */
interface Batch {
  /** The descriptor it goes to: all of it to the same one, even if the file is reopened meanwhile. */
  fd: number;
  buf: Buffer;
  start: number;
  lines: number;
  /** flushSync wrote (or dropped) it while it waited out EAGAIN. */
  taken?: boolean;
}

const wroteNothing = (): NodeJS.ErrnoException => Object.assign(new Error('write wrote nothing'), { code: 'EIO' });

/** Complete lines in `buf` from `start` to `end`. */
function countLines(buf: Buffer, start: number, end: number): number {
  let n = 0;
  for (let i = buf.indexOf(NL, start); i !== -1 && i < end; i = buf.indexOf(NL, i + 1)) n++;
  return n;
}

/**
 * A pino destination on a file descriptor, async (one write in flight, lines arriving meanwhile
 * go out together in the next) or sync (each line written before write() returns).
 */
export class LogDestination implements DestinationStream {
  /** Called once a write succeeds after lines were dropped: their number and the last error. */
  onRecovered: ((dropped: number, error: string) => void) | undefined;
  private pending: string[] = [];
  private pendingLen = 0;
  private writing = false;
  private dropped = 0;
  private lastError = '';
  /** The last byte that reached the file ends a partial line (a write failed half-way). */
  private midLine = false;
  private drained: Array<() => void> = [];
  /** A batch waiting out EAGAIN/EBUSY, from `offset` on (written by flushSync if the process exits). */
  private waiting: { batch: Batch; offset: number } | undefined;
  /** Descriptors replaced by reopen(), closed once no batch writes to them. */
  private retired: number[] = [];
  /** The file, when the destination opened one (reopen() opens it again). */
  private path: string | undefined;
  /** log.format text: turns pino's JSON line into text line(s); undefined writes the JSON as it is. */
  format: ((json: string) => string) | undefined;

  private currentFd: number;
  readonly sync: boolean;

  constructor(fd: number, sync: boolean, file?: string) {
    this.currentFd = fd;
    this.sync = sync;
    this.path = file;
  }

  get fd(): number {
    return this.currentFd;
  }

  /** The log file written to (undefined: a descriptor given at start, standard output). */
  get file(): string | undefined {
    return this.path;
  }

  /**
   * Opens `file` (default: the file already in use) again and writes there from now on: after
   * logrotate moved it, or when log.file changed. Throws if it cannot be opened, and then keeps
   * writing to the old descriptor. `undefined` with no file in use does nothing; `null` goes back to `fd`.
   */
  reopen(file: string | null | undefined = this.path, fallbackFd = 1): void {
    if (file === undefined) return;
    const next = file === null ? fallbackFd : openLogFile(file);
    const old = this.currentFd;
    const owned = this.path !== undefined;
    this.currentFd = next;
    this.path = file ?? undefined;
    this.midLine = false;
    if (owned && old !== next) this.retired.push(old);
    if (!this.writing) this.closeRetired();
  }

  private closeRetired(): void {
    for (const fd of this.retired.splice(0)) {
      try {
        fs.closeSync(fd);
      } catch {
        // already gone: nothing to do
      }
    }
  }

  write(json: string): void {
    let line = json;
    if (this.format) {
      try {
        line = this.format(json);
      } catch {
        // the formatter never throws; if it did, the JSON line is still a line
      }
    }
    if (this.sync) {
      this.writeSync([line]);
      return;
    }
    if (this.pendingLen + line.length > MAX_PENDING) {
      this.drop(1, 'log buffer full');
      return;
    }
    this.pending.push(line);
    this.pendingLen += line.length;
    if (!this.writing) this.next();
  }

  /** Calls `cb` once what was logged so far is written (or dropped). */
  flush(cb?: (err?: Error) => void): void {
    if (!cb) return;
    if (this.writing) this.drained.push(cb);
    else process.nextTick(cb);
  }

  /** Writes whatever waits, now, for the exit path: never loops on an error (EAGAIN: at most ~1 s). */
  flushSync(): void {
    if (this.waiting) {
      const { batch, offset } = this.waiting;
      this.waiting = undefined;
      batch.taken = true;
      this.writeBatchSync(batch, offset);
    }
    if (this.pending.length === 0) return;
    const lines = this.pending;
    this.pending = [];
    this.pendingLen = 0;
    this.writeSync(lines);
  }

  /** Lines counted as dropped since the last successful write (for the warning), and in all. */
  private drop(lines: number, error: string): void {
    this.dropped += lines;
    droppedTotal += lines;
    this.lastError = error;
  }

  private recovered(): void {
    if (this.dropped === 0) return;
    const n = this.dropped;
    this.dropped = 0;
    try {
      this.onRecovered?.(n, this.lastError);
    } catch {
      // a logging failure never reaches the caller
    }
  }

  /** The next batch: `lines` in one buffer (after a newline if a line was cut). */
  private batch(lines: readonly string[]): Batch {
    const start = this.midLine ? 1 : 0;
    const buf = Buffer.from((start ? '\n' : '') + lines.join(''));
    // Text lines: one event may be several lines (a queued transaction).
    return { fd: this.currentFd, buf, start, lines: this.format ? countLines(buf, start, buf.length) : lines.length };
  }

  /** Writing `b` failed at `offset`: the lines not written are dropped. */
  private failed(err: NodeJS.ErrnoException, b: Batch, offset: number): void {
    if (offset > 0 && b.fd === this.currentFd) this.midLine = b.buf[offset - 1] !== NL;
    this.drop(b.lines - countLines(b.buf, b.start, offset), err.code ?? err.message);
  }

  private next(): void {
    // No batch is in flight here: an old descriptor reopen() replaced can go.
    if (this.retired.length > 0) this.closeRetired();
    if (this.pending.length === 0) {
      this.writing = false;
      for (const cb of this.drained.splice(0)) cb();
      return;
    }
    this.writing = true;
    const b = this.batch(this.pending);
    const { buf } = b;
    this.pending = [];
    this.pendingLen = 0;
    const writeFrom = (offset: number): void => {
      this.waiting = undefined;
      if (b.taken) {
        this.next();
        return;
      }
      fs.write(b.fd, buf, offset, buf.length - offset, null, (err, n) => {
        if (err && isBusy(err)) {
          // Unref'd: a process about to exit writes it in flushSync instead of waiting here.
          this.waiting = { batch: b, offset };
          setTimeout(writeFrom, BUSY_RETRY_MS, offset).unref();
          return;
        }
        if (err || n === 0) {
          this.failed(err ?? wroteNothing(), b, offset);
        } else if (offset + n < buf.length) {
          writeFrom(offset + n);
          return;
        } else {
          if (b.fd === this.currentFd) this.midLine = false;
          this.recovered();
        }
        this.next();
      });
    };
    try {
      writeFrom(0);
    } catch (err) {
      // Only a bad argument throws here (a closed descriptor errs in the callback).
      this.failed(err as NodeJS.ErrnoException, b, 0);
      this.writing = false;
    }
  }

  private writeSync(lines: readonly string[]): void {
    this.writeBatchSync(this.batch(lines), 0);
  }

  private writeBatchSync(b: Batch, from: number): void {
    const { buf } = b;
    let offset = from;
    let waited = 0;
    while (offset < buf.length) {
      try {
        const n = fs.writeSync(b.fd, buf, offset, buf.length - offset);
        if (n === 0) throw wroteNothing();
        offset += n;
      } catch (err) {
        if (isBusy(err as NodeJS.ErrnoException) && waited < SYNC_BUSY_MAX_MS) {
          Atomics.wait(sleepBuf, 0, 0, 10);
          waited += 10;
          continue;
        }
        this.failed(err as NodeJS.ErrnoException, b, offset);
        return;
      }
    }
    if (b.fd === this.currentFd) this.midLine = false;
    this.recovered();
    if (!this.writing) this.closeRetired();
  }
}

/** Async destinations still alive, flushed synchronously when the process exits. */
const toFlushOnExit = new Set<WeakRef<LogDestination>>();
let exitHook = false;

function flushOnExit(dest: LogDestination): void {
  for (const ref of toFlushOnExit) if (ref.deref() === undefined) toFlushOnExit.delete(ref);
  toFlushOnExit.add(new WeakRef(dest));
  if (exitHook) return;
  exitHook = true;
  process.on('exit', () => {
    for (const ref of toFlushOnExit) ref.deref()?.flushSync();
  });
}

/**
 * Opens `file` to append to, its directory made. As root, a symbolic link or a hard link there is
 * refused: the log directory may belong to the unprivileged user, who could otherwise point the
 * log file of a root start at /etc/shadow (and have it handed over by src/util/privileges.ts).
 */
function openLogFile(file: string): number {
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    if (process.getuid?.() !== 0) return fs.openSync(file, 'a');
    const { O_WRONLY, O_APPEND, O_CREAT, O_NOFOLLOW } = fs.constants;
    const fd = fs.openSync(file, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW, 0o640);
    const st = fs.fstatSync(fd);
    if (st.isFile() && st.nlink > 1) {
      fs.closeSync(fd);
      throw new Error('it has other hard links (refused while running as root)');
    }
    return fd;
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ELOOP' ? 'it is a symbolic link (refused while running as root: name the real file)' : (err as Error).message;
    throw new Error(`cannot open the log file ${file}: ${why}`, { cause: err });
  }
}

/** Opens the log destination: `file` (appended to, its directory made), else descriptor `fd`. */
export function logDestination(file: string | undefined, fd: number, sync: boolean): LogDestination {
  const dest = file ? new LogDestination(openLogFile(file), sync, file) : new LogDestination(fd, sync);
  if (!sync) flushOnExit(dest);
  return dest;
}

/**
 * Logs to `file`, else to file descriptor `fd` (standard output by default). `sync` writes each
 * line at once (for short-lived processes); `fields` go into every line. Lines that cannot be
 * written are dropped and counted (logDropped()); a warning with their number follows once
 * writing works again.
 */
export function createLogger(level: string, file?: string, opts: { fd?: number; sync?: boolean; fields?: Record<string, unknown>; format?: LogFormat } = {}): Logger {
  return openLog({ level, file, format: opts.format ?? 'json' }, opts).log;
}

export type LogFormat = 'json' | 'text';

/** log: in the config. */
export interface LogSettings {
  readonly level: string;
  readonly file?: string | undefined;
  readonly format: LogFormat;
}

/** The daemon's logger and what SIGHUP / SIGUSR1 do to it. */
export interface LogOutput {
  readonly log: Logger;
  readonly destination: LogDestination;
  /** Opens the log file again (logrotate moved it); a failure keeps the old file and is logged. */
  reopen(): void;
  /** New log settings (SIGHUP): level, format, and file (opened anew; a failure keeps the old one and is logged). */
  apply(next: LogSettings): void;
}

function formatterOf(format: LogFormat): ((json: string) => string) | undefined {
  return format === 'text' ? jsonToText : undefined;
}

/**
 * The process's logger on `settings` (file, else descriptor `fd`, standard output by default),
 * with the handles to reopen the file and apply new settings. `sync` writes each line at once;
 * `fields` go into every line.
 */
export function openLog(settings: LogSettings, opts: { fd?: number; sync?: boolean; fields?: Record<string, unknown> } = {}): LogOutput {
  const fd = opts.fd ?? 1;
  const destination = logDestination(settings.file, fd, opts.sync ?? false);
  destination.format = formatterOf(settings.format);
  const logger = pino({ level: settings.level, base: { pid: process.pid, ...opts.fields }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
  destination.onRecovered = (dropped, error) => logger.warn({ dropped, error, droppedTotal }, `logging failed (${error}): ${dropped} log lines dropped`);
  const reopenTo = (file: string | null | undefined, why: string): boolean => {
    try {
      destination.reopen(file, fd);
      return true;
    } catch (err) {
      logger.error({ file, err: (err as Error).message, kept: destination.file ?? `descriptor ${destination.fd}` }, `${why}: cannot open the log file; logging goes on to the old one`);
      return false;
    }
  };
  return {
    log: logger,
    destination,
    reopen: () => void reopenTo(destination.file, 'log reopen'),
    apply(next) {
      // Children made without a level of their own (every child() here) follow the root's level.
      if (logger.level !== next.level) logger.level = next.level;
      destination.format = formatterOf(next.format);
      if (next.file !== destination.file && reopenTo(next.file ?? null, 'log.file changed')) logger.info({ file: next.file ?? `descriptor ${fd}` }, 'logging to a new file');
    },
  };
}

/** A logger that writes nothing, for unit tests. */
export const silentLogger: Logger = pino({ level: 'silent' });
