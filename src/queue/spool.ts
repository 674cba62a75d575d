// The durable spool. Nothing is acknowledged before it is on disk and synced:
// - a small message (up to MEMORY_LIMIT) is appended to the journal (journal.ts), whose
//   fdatasync is shared by all sessions committing at the same moment;
// - a large one streams into spool/queue/<id> while DATA arrives; at the end its trailer is
//   written, the file fdatasynced and, in parallel, the queue directory fsynced (one directory
//   fsync serves every session that commits meanwhile).
// A message that needs a second delivery attempt, or that the journal held at a crash, moves
// to a queue file of its own, so journal segments live only for seconds. A queue file without
// a valid trailer was never acknowledged (crash in mid-DATA) and is removed.
//
// Shared mode (`mxguard stdio`, one short-lived process per connection, beside a running
// daemon): the journal has one writer, the daemon, so a shared spool writes every message to
// spool/queue/<id>.new, syncs it, and links it to <id> only when complete; the daemon's rescan
// sees finished files only and never takes a half-written one for a crash leftover.
//
// Queue file layout: the message octets (CRLF lines, not dot-stuffed), then the envelope as
// one JSON line, then a fixed 21-octet trailer "MXQ1 <15-digit message length>\n".
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { SyncGroup } from './sync-group.ts';
import { Journal, listSegments, readSegment, removeSegment, type JournalRef } from './journal.ts';
import { isEnvelope, type DeliveryState, type Envelope } from './envelope.ts';
import type { MessageBody } from '../delivery/types.ts';

const TRAILER_LEN = 21;
/** A shared spool's message until it is complete (see the header). */
const NEW_SUFFIX = '.new';
/** A .new file untouched this long belongs to a process that died (data_timeout is minutes). */
const STALE_NEW_MS = 86_400_000;
/** Messages up to this size stay in memory until committed (and are delivered from memory). */
const MEMORY_LIMIT = 256 * 1024;

// Creating, writing, closing and unlinking a small file touch only the page cache and take
// microseconds: they run synchronously, because a thread-pool round trip per call costs more
// (context switches) than the call itself. Only the calls that wait for the disk (fdatasync,
// the directory fsync) and the writes of large messages go to the thread pool.
const writev = promisify(fs.writev);
const fdatasync = promisify(fs.fdatasync);
const open = promisify(fs.open);

export interface SpoolPaths {
  queue: string;
  journal: string;
}

export interface CommittedMessage {
  readonly envelope: Envelope;
  /** Message octets when small enough to keep; otherwise read back from the file. */
  readonly cached?: Buffer[];
  readonly size: number;
  /** Where the journal holds it; undefined for a message with a queue file of its own. */
  readonly journal?: JournalRef;
}

export interface QueuedMessage {
  readonly envelope: Envelope;
  readonly size: number;
  readonly state?: DeliveryState;
}

/** A spool file whose trailer is missing or wrong: the write never finished. */
export class IncompleteSpoolFile extends Error {}

let idCounter = 0;

/** Queue IDs sort by time: 8 base-36 digits of ms, then 2 of a counter and 4 random. */
export function newQueueId(now = Date.now()): string {
  idCounter = (idCounter + 1) % 1296;
  const rand = Math.floor(Math.random() * 1679616);
  return (now.toString(36).padStart(8, '0') + idCounter.toString(36).padStart(2, '0') + rand.toString(36).padStart(4, '0')).toUpperCase();
}

export function isQueueId(name: string): boolean {
  return /^[0-9A-Z]{14}$/.test(name);
}

export class Spool {
  readonly paths: SpoolPaths;
  readonly dirSync: SyncGroup;
  readonly journal: Journal;
  /** IDs being written right now: a rescan must not take them for broken files. */
  readonly writing = new Set<string>();

  /** A spool that other processes write to at the same time (see the header): no journal. */
  readonly shared: boolean;

  private constructor(paths: SpoolPaths, shared: boolean) {
    this.paths = paths;
    this.shared = shared;
    this.dirSync = SyncGroup.forDirectory(paths.queue);
    this.journal = new Journal(paths.journal);
  }

  /**
   * Opens (creating) the spool under `dir`. Messages a previous run left in the journal get
   * queue files of their own first, so the forwarder finds everything in spool/queue.
   */
  static async open(dir: string, opts: { shared?: boolean } = {}): Promise<Spool> {
    const paths = Spool.at(dir);
    await fsp.mkdir(paths.queue, { recursive: true, mode: 0o700 });
    // A sharing process leaves recovery to the daemon, which owns the journal.
    if (opts.shared) return new Spool(paths, true);
    // Spools of earlier versions wrote into incoming/ first: nothing there was acknowledged.
    await fsp.rm(path.join(dir, 'incoming'), { recursive: true, force: true });
    const segments = listSegments(paths.journal);
    if (segments.length > 0) {
      const dirFd = fs.openSync(paths.queue, 'r');
      for (const seq of segments) {
        const data = fs.readFileSync(path.join(paths.journal, `${String(seq).padStart(10, '0')}.log`));
        for (const rec of readSegment(paths.journal, seq)) {
          const body = data.subarray(rec.ref.offset, rec.ref.offset + rec.ref.size);
          const fd = fs.openSync(path.join(paths.queue, rec.envelope.id), 'w', 0o600);
          fs.writevSync(fd, queueFileParts(rec.envelope, [body], rec.ref.size));
          fs.fdatasyncSync(fd);
          fs.closeSync(fd);
        }
        fs.fsyncSync(dirFd); // the new queue files are durable before the segment goes
        removeSegment(paths.journal, seq);
      }
      fs.closeSync(dirFd);
    }
    return new Spool(paths, false);
  }

  /** The spool's paths (for the CLI, which only reads). */
  static at(dir: string): SpoolPaths {
    return { queue: path.join(dir, 'queue'), journal: path.join(dir, 'journal') };
  }

  /** Gives a journaled message a queue file of its own (before a retry), durably. */
  async moveOutOfJournal(envelope: Envelope, body: readonly Buffer[], size: number): Promise<void> {
    const fd = await open(this.queuePath(envelope.id), 'w', 0o600);
    try {
      fs.writevSync(fd, queueFileParts(envelope, body, size));
      await Promise.all([fdatasync(fd), this.dirSync.sync()]);
    } finally {
      fs.closeSync(fd);
    }
  }

  begin(id: string, prefix: Buffer): MessageWriter {
    return new MessageWriter(this, id, prefix);
  }

  queuePath(id: string): string {
    return path.join(this.paths.queue, id);
  }

  /** Removes a delivered message (and its delivery state, when one was written). */
  remove(id: string, hasState: boolean): void {
    fs.unlink(this.queuePath(id), () => undefined);
    if (hasState) fs.unlink(this.queuePath(id) + '.state', () => undefined);
  }

  async writeState(id: string, state: DeliveryState): Promise<void> {
    await writeStateFile(this.paths, id, state);
  }

  /** Removes the .new files of `mxguard stdio` processes that died mid-message (never acknowledged). */
  removeStaleNew(maxAgeMs = STALE_NEW_MS): void {
    const cutoff = Date.now() - maxAgeMs;
    for (const name of fs.readdirSync(this.paths.queue)) {
      if (!name.endsWith(NEW_SUFFIX)) continue;
      const file = path.join(this.paths.queue, name);
      try {
        if (fs.statSync(file).mtimeMs < cutoff) fs.unlinkSync(file);
      } catch {
        // gone meanwhile
      }
    }
  }

  close(): void {
    this.dirSync.close();
    this.journal.close();
  }
}

/** A queue file's parts: message, envelope line, trailer. */
function queueFileParts(envelope: Envelope, body: readonly Buffer[], size: number): Buffer[] {
  return [...body, Buffer.from(JSON.stringify(envelope) + '\n'), Buffer.from(`MXQ1 ${String(size).padStart(15, '0')}\n`)];
}

function unlinkIfThere(file: string): void {
  try {
    fs.unlinkSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

export async function writeStateFile(paths: SpoolPaths, id: string, state: DeliveryState): Promise<void> {
  const file = path.join(paths.queue, id + '.state');
  await fsp.writeFile(file + '.tmp', JSON.stringify(state));
  await fsp.rename(file + '.tmp', file);
}

/** Collects one message while DATA streams in; small messages stay in memory until commit. */
export class MessageWriter {
  readonly id: string;
  private readonly spool: Spool;
  private readonly file: string;
  private chunks: Buffer[] = [];
  private size = 0;
  private fd: number | undefined;
  private failed: Error | undefined;
  private writing: Promise<void> = Promise.resolve();

  constructor(spool: Spool, id: string, prefix: Buffer) {
    this.spool = spool;
    this.id = id;
    this.file = spool.shared ? spool.queuePath(id) + NEW_SUFFIX : spool.queuePath(id);
    spool.writing.add(id);
    this.add([prefix]);
  }

  /** Appends decoded message octets. Resolves when it is fine to read more from the client. */
  add(bufs: Buffer[]): Promise<void> | undefined {
    for (const b of bufs) {
      this.chunks.push(b);
      this.size += b.length;
    }
    if (this.fd === undefined && this.size <= MEMORY_LIMIT) return undefined;
    // Too big for memory: stream what we have to the file, one write at a time.
    const pending = this.chunks;
    this.chunks = [];
    this.writing = this.writing.then(async () => {
      if (this.failed) return;
      try {
        this.fd ??= await open(this.file, 'wx', 0o600);
        await writev(this.fd, pending);
      } catch (err) {
        this.failed = err as Error;
      }
    });
    return this.writing;
  }

  /** Writes the envelope and trailer and makes it all durable. Throws on any I/O error (→ 451). */
  async commit(envelope: Envelope): Promise<CommittedMessage> {
    await this.writing;
    if (this.failed) throw this.failed;
    if (this.fd === undefined && !this.spool.shared) {
      const journal = await this.spool.journal.append(envelope, this.chunks, this.size);
      this.spool.writing.delete(this.id);
      return { envelope, size: this.size, cached: this.chunks, journal };
    }
    const fd = (this.fd ??= await open(this.file, 'wx', 0o600));
    await writev(fd, queueFileParts(envelope, this.chunks, this.size));
    if (this.spool.shared) {
      await fdatasync(fd);
      // link() and not rename(): it refuses to replace a queue file of the same ID (EEXIST →
      // 451, the client retries) where rename would silently drop the other message.
      fs.linkSync(this.file, this.spool.queuePath(this.id));
      unlinkIfThere(this.file);
      await this.spool.dirSync.sync();
    } else {
      // The directory fsync starts after the file was created, so it covers the new entry.
      await Promise.all([fdatasync(fd), this.spool.dirSync.sync()]);
    }
    this.fd = undefined;
    this.spool.writing.delete(this.id);
    fs.closeSync(fd);
    return { envelope, size: this.size };
  }

  /** Drops the message (refused, failed, or the session died before the end of DATA). */
  async abort(): Promise<void> {
    await this.writing;
    const fd = this.fd;
    this.fd = undefined;
    this.chunks = [];
    if (fd !== undefined) {
      fs.closeSync(fd);
      unlinkIfThere(this.file);
    }
    this.spool.writing.delete(this.id);
  }
}

/** Reads the envelope and message length of a queue file. */
export async function readQueueFile(paths: SpoolPaths, id: string): Promise<QueuedMessage> {
  const file = path.join(paths.queue, id);
  const fh = await fsp.open(file, 'r');
  try {
    const { size: fileSize } = await fh.stat();
    if (fileSize < TRAILER_LEN) throw new IncompleteSpoolFile(`${file}: no trailer`);
    const trailer = Buffer.alloc(TRAILER_LEN);
    await fh.read(trailer, 0, TRAILER_LEN, fileSize - TRAILER_LEN);
    const m = /^MXQ1 (\d{15})\n$/.exec(trailer.toString('latin1'));
    if (!m || m[1] === undefined) throw new IncompleteSpoolFile(`${file}: no trailer`);
    const size = Number(m[1]);
    const envLen = fileSize - TRAILER_LEN - size;
    if (envLen <= 0) throw new IncompleteSpoolFile(`${file}: bad trailer`);
    const envBuf = Buffer.alloc(envLen);
    await fh.read(envBuf, 0, envLen, size);
    const envelope: unknown = JSON.parse(envBuf.toString('utf8'));
    if (!isEnvelope(envelope)) throw new Error(`${file}: bad envelope`);
    const state = await readState(paths, id);
    return { envelope, size, state };
  } finally {
    await fh.close();
  }
}

async function readState(paths: SpoolPaths, id: string): Promise<DeliveryState | undefined> {
  try {
    const parsed: unknown = JSON.parse(await fsp.readFile(path.join(paths.queue, id + '.state'), 'utf8'));
    if (typeof parsed === 'object' && parsed !== null && Array.isArray((parsed as DeliveryState).rcpts)) return parsed as DeliveryState;
  } catch {
    // No state yet, or a torn write: start from the envelope.
  }
  return undefined;
}

/** The IDs of all queued messages, oldest first. */
export async function listQueue(paths: SpoolPaths): Promise<string[]> {
  const names = await fsp.readdir(paths.queue).catch(() => [] as string[]);
  return names.filter(isQueueId).sort();
}

/** A message body that streams from memory or from a file (a queue file at 0, or a journal segment). */
export function messageBody(file: string, start: number, size: number, addHeaders: readonly string[] | undefined, cached?: Buffer[]): MessageBody {
  const head = addHeaders && addHeaders.length > 0 ? Buffer.from(addHeaders.join('')) : undefined;
  return {
    size: size + (head?.length ?? 0),
    async *chunks() {
      if (head) yield head;
      if (cached) {
        yield* cached;
        return;
      }
      if (size === 0) return;
      const stream = fs.createReadStream(file, { start, end: start + size - 1, highWaterMark: 256 * 1024 });
      for await (const chunk of stream) yield chunk as Buffer;
    },
  };
}
