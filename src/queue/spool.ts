// The durable spool. Nothing is acknowledged before it is on disk and synced, and every write
// on the way checks its count (spool-fs.ts: a short write is a full disk, never success):
// - a small message (up to MEMORY_LIMIT) is appended to the journal (journal.ts), whose
//   fdatasync is shared by all sessions committing at the same moment;
// - a large one streams into spool/queue/<id>.new while DATA arrives; at the end its trailer is
//   written, the file fdatasynced, linked to <id> and the queue directory fsynced (one directory
//   fsync serves every session that commits meanwhile).
// A message that needs a second delivery attempt, or that the journal held at a crash, gets a
// queue file of its own the same way (<id>.new, then renamed), so journal segments live only
// for seconds. A file named <id> was therefore complete when written: one whose trailer or CRCs
// do not check out is damaged, never "a crash in mid-DATA", and it is moved to spool/corrupt
// with an error line, never deleted. Only <id>.new files are unacknowledged leftovers.
//
// Shared mode (`mxguard stdio`, one short-lived process per connection, beside a running
// daemon): the journal has one writer, the daemon, so a shared spool writes every message as a
// queue file; link() refuses to replace a file of the same ID.
//
// Queue file layout: the message octets (CRLF lines, not dot-stuffed), then the envelope as
// one JSON line, then a fixed 39-octet trailer
// "MXQ2 <15-digit message length> <message CRC-32> <envelope line CRC-32>\n" (8 hex digits each).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { SyncGroup } from './sync-group.ts';
import { Journal, listSegments, parseSegment, readDone, removeSegment, segmentPath, type JournalRef } from './journal.ts';
import { isEnvelope, type Envelope } from '../mail/envelope.ts';
import { crc32Of, hex8, spoolFs, writevAll, writevAllSync } from './spool-fs.ts';
import type { MessageBody } from '../mail/transport.ts';
import type { Logger } from '../util/log.ts';

/** Delivery progress, kept beside the spool file; losing it only means an earlier retry. */
export interface DeliveryState {
  attempts: number;
  /** ms since epoch of the next attempt. */
  nextAt: number;
  /** Recipients not yet delivered. */
  rcpts: string[];
  lastError?: string;
}

const TRAILER_LEN = 39;
/** A queue file until it is complete (see the header). */
const NEW_SUFFIX = '.new';
/** A .new file untouched this long belongs to a process that died (data_timeout is minutes). */
const STALE_NEW_MS = 86_400_000;
/** Messages up to this size stay in memory until committed (and are delivered from memory). */
const MEMORY_LIMIT = 256 * 1024;

// Creating, writing, closing and unlinking a small file touch only the page cache and take
// microseconds: they run synchronously, because a thread-pool round trip per call costs more
// (context switches) than the call itself. Only the calls that wait for the disk (fdatasync,
// the directory fsync) and the writes of large messages go to the thread pool.

export interface SpoolPaths {
  queue: string;
  journal: string;
  /** Damaged queue files and journal segments, kept for a human to look at. */
  corrupt: string;
}

export interface CommittedMessage {
  readonly envelope: Envelope;
  /** Message octets when small enough to keep; otherwise read back from the file. */
  readonly cached?: Buffer[];
  readonly size: number;
  /** CRC-32 of the message octets. */
  readonly crc: number;
  /** Where the journal holds it; undefined for a message with a queue file of its own. */
  readonly journal?: JournalRef;
}

export interface QueuedMessage {
  readonly envelope: Envelope;
  readonly size: number;
  readonly crc: number;
  readonly state?: DeliveryState;
}

/** A spool file that does not check out (trailer, lengths, CRC or envelope): damaged. */
export class DamagedSpoolFile extends Error {}

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
   * Opens (creating) the spool under `dir`. The records a previous run left in the journal
   * stay there and are delivered from it (`recovered`): start-up writes nothing, so it works
   * on a full disk too. A damaged segment is copied to spool/corrupt, with an error line per
   * damaged stretch; if no copy can be made it is never deleted.
   */
  static async open(dir: string, opts: { shared?: boolean; log?: Logger } = {}): Promise<Spool> {
    const paths = Spool.at(dir);
    await fsp.mkdir(paths.queue, { recursive: true, mode: 0o700 });
    // A sharing process leaves recovery to the daemon, which owns the journal.
    if (opts.shared) return new Spool(paths, true);
    // Spools of earlier versions wrote into incoming/ first: nothing there was acknowledged.
    await fsp.rm(path.join(dir, 'incoming'), { recursive: true, force: true });
    const spool = new Spool(paths, false);
    for (const seq of listSegments(paths.journal)) spool.recoverSegment(seq, opts.log);
    return spool;
  }

  /** Messages a previous run left in the journal, for the forwarder; taken once. */
  takeRecovered(): CommittedMessage[] {
    return this.recovered.splice(0);
  }

  private readonly recovered: CommittedMessage[] = [];

  /** Start-up recovery of one journal segment (see open). */
  private recoverSegment(seq: number, log: Logger | undefined): void {
    const file = segmentPath(this.paths.journal, seq, 'log');
    const data = fs.readFileSync(file);
    const parsed = parseSegment(data, seq);
    const done = readDone(this.paths.journal, seq);
    const pending = parsed.records.filter((r) => !done.has(r.envelope.id));
    let keep = false;
    if (parsed.damage.length > 0) {
      const kept = moveToCorrupt(this.paths, file, `journal-${String(seq).padStart(10, '0')}-${Date.now()}.log`, [], true);
      keep = kept === undefined;
      for (const d of parsed.damage) {
        log?.error({ segment: file, offset: d.offset, length: d.length, id: d.id, kept: kept ?? `could not copy it; ${file} is kept instead` }, 'damaged journal record: the message in it is not delivered');
      }
    }
    if (parsed.tornAt !== undefined) log?.warn({ segment: file, offset: parsed.tornAt, length: data.length - parsed.tornAt }, 'journal segment ends in an unfinished record (a write cut off; never acknowledged)');
    if (pending.length === 0 && !keep) {
      removeSegment(this.paths.journal, seq);
      return;
    }
    this.journal.adopt(seq, pending.length, keep);
    for (const r of pending) this.recovered.push({ envelope: r.envelope, size: r.ref.size, crc: r.ref.crc, journal: r.ref });
    if (pending.length > 0) log?.info({ segment: file, messages: pending.length }, 'messages recovered from the journal');
  }

  /** The spool's paths (for the CLI, which only reads). */
  static at(dir: string): SpoolPaths {
    return { queue: path.join(dir, 'queue'), journal: path.join(dir, 'journal'), corrupt: path.join(dir, 'corrupt') };
  }

  /** Gives a journaled message a queue file of its own (before a retry), durably. */
  async moveOutOfJournal(envelope: Envelope, body: readonly Buffer[], size: number, crc: number): Promise<void> {
    await writeWholeQueueFile(this.paths, envelope, body, size, crc);
    await this.dirSync.sync();
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

  /** Moves a damaged queue file (and its delivery state) to spool/corrupt. Never throws. */
  quarantine(id: string): string | undefined {
    return moveToCorrupt(this.paths, this.queuePath(id), id, [this.queuePath(id) + '.state']);
  }

  /** Keeps a copy of the journal segment that holds a damaged record, named after the message. */
  keepDamagedJournalRecord(envelope: Envelope, ref: JournalRef): string | undefined {
    return moveToCorrupt(this.paths, segmentPath(this.paths.journal, ref.seq, 'log'), `${envelope.id}.journal-${String(ref.seq).padStart(10, '0')}.log`, [], true);
  }

  async writeState(id: string, state: DeliveryState): Promise<void> {
    await writeStateFile(this.paths, id, state);
  }

  /** Removes the .new files of writers that died mid-message (never acknowledged). */
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

/**
 * Moves (or, with `copy`, copies) a file into spool/corrupt under `name` (made unique), with
 * its companions. Returns where it went; logs nothing and never throws: the caller logs.
 */
function moveToCorrupt(paths: SpoolPaths, file: string, name: string, companions: string[], copy = false): string | undefined {
  try {
    fs.mkdirSync(paths.corrupt, { recursive: true, mode: 0o700 });
    let target = path.join(paths.corrupt, name);
    if (fs.existsSync(target)) target += `-${Date.now()}`;
    if (copy) fs.copyFileSync(file, target, fs.constants.COPYFILE_EXCL);
    else fs.renameSync(file, target);
    for (const c of companions) {
      try {
        fs.renameSync(c, target + path.extname(c));
      } catch {
        // not there
      }
    }
    return target;
  } catch {
    return undefined;
  }
}

/** The spool/corrupt entries, for `mxguard queue`. */
export async function listCorrupt(paths: SpoolPaths): Promise<string[]> {
  const names = await fsp.readdir(paths.corrupt).catch(() => [] as string[]);
  return names.sort();
}

/** A queue file's parts: message, envelope line, trailer. */
function queueFileParts(envelope: Envelope, body: readonly Buffer[], size: number, crc: number): Buffer[] {
  const env = Buffer.from(JSON.stringify(envelope) + '\n');
  return [...body, env, Buffer.from(`MXQ2 ${String(size).padStart(15, '0')} ${hex8(crc)} ${hex8(crc32Of([env]))}\n`, 'latin1')];
}

/**
 * Writes a whole queue file as <id>.new, fdatasyncs it and renames it to <id> (replacing an
 * older copy of the same message). The caller fsyncs the directory.
 */
async function writeWholeQueueFile(paths: SpoolPaths, envelope: Envelope, body: readonly Buffer[], size: number, crc: number): Promise<void> {
  const file = path.join(paths.queue, envelope.id);
  const fd = spoolFs.openSync(file + NEW_SUFFIX, 'w', 0o600);
  let ok = false;
  try {
    writevAllSync(fd, queueFileParts(envelope, body, size, crc));
    await spoolFs.fdatasync(fd);
    ok = true;
  } finally {
    fs.closeSync(fd);
    if (!ok) fs.rmSync(file + NEW_SUFFIX, { force: true });
  }
  spoolFs.renameSync(file + NEW_SUFFIX, file);
}

function unlinkIfThere(file: string): void {
  try {
    fs.unlinkSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** Writes a message's delivery state (not synced: losing it only means an earlier retry). */
export async function writeStateFile(paths: SpoolPaths, id: string, state: DeliveryState): Promise<void> {
  const file = path.join(paths.queue, id + '.state');
  try {
    await fsp.writeFile(file + '.tmp', JSON.stringify(state));
    await fsp.rename(file + '.tmp', file);
  } catch (err) {
    await fsp.rm(file + '.tmp', { force: true });
    throw err;
  }
}

/** Collects one message while DATA streams in; small messages stay in memory until commit. */
export class MessageWriter {
  readonly id: string;
  private readonly spool: Spool;
  /** <id>.new: the message becomes <id> only once it is complete and synced. */
  private readonly file: string;
  private chunks: Buffer[] = [];
  private size = 0;
  private crc = 0;
  private fd: number | undefined;
  private failed: Error | undefined;
  private writing: Promise<void> = Promise.resolve();

  constructor(spool: Spool, id: string, prefix: Buffer) {
    this.spool = spool;
    this.id = id;
    this.file = spool.queuePath(id) + NEW_SUFFIX;
    spool.writing.add(id);
    this.add([prefix]);
  }

  /** Appends decoded message octets. Resolves when it is fine to read more from the client. */
  add(bufs: Buffer[]): Promise<void> | undefined {
    for (const b of bufs) {
      this.chunks.push(b);
      this.size += b.length;
    }
    this.crc = crc32Of(bufs, this.crc);
    if (this.fd === undefined && this.size <= MEMORY_LIMIT) return undefined;
    // Too big for memory: stream what we have to the file, one write at a time.
    const pending = this.chunks;
    this.chunks = [];
    this.writing = this.writing.then(async () => {
      if (this.failed) return;
      try {
        this.fd ??= spoolFs.openSync(this.file, 'wx', 0o600);
        await writevAll(this.fd, pending);
      } catch (err) {
        this.failed = err as Error;
      }
    });
    return this.writing;
  }

  /**
   * Writes the envelope and trailer and makes it all durable. Throws on any I/O error, a short
   * write included (→ 452 when the disk is full, else 451): only a resolved commit may be
   * acknowledged.
   */
  async commit(envelope: Envelope): Promise<CommittedMessage> {
    await this.writing;
    if (this.failed) throw this.failed;
    if (this.fd === undefined && !this.spool.shared) {
      const journal = await this.spool.journal.append(envelope, this.chunks, this.size, this.crc);
      this.spool.writing.delete(this.id);
      return { envelope, size: this.size, crc: this.crc, cached: this.chunks, journal };
    }
    const fd = (this.fd ??= spoolFs.openSync(this.file, 'wx', 0o600));
    await writevAll(fd, queueFileParts(envelope, this.chunks, this.size, this.crc));
    await spoolFs.fdatasync(fd);
    // link() and not rename(): it refuses to replace a queue file of the same ID (EEXIST →
    // 451, the client retries) where rename would silently drop the other message.
    spoolFs.linkSync(this.file, this.spool.queuePath(this.id));
    this.fd = undefined;
    fs.closeSync(fd);
    unlinkIfThere(this.file);
    try {
      await this.spool.dirSync.sync();
    } catch (err) {
      // Not durable, so not acknowledged: take the message back out of the queue.
      unlinkIfThere(this.spool.queuePath(this.id));
      this.spool.writing.delete(this.id);
      throw err;
    }
    this.spool.writing.delete(this.id);
    return { envelope, size: this.size, crc: this.crc };
  }

  /** Octets received so far. */
  get length(): number {
    return this.size;
  }

  /**
   * The message received so far, from octet `start`, for the DATA checks: from memory when it is
   * small, else from <id>.new once the pending writes are done. Each call reads afresh.
   */
  async *read(start = 0): AsyncGenerator<Buffer> {
    await this.writing;
    if (this.failed) throw this.failed;
    if (this.fd === undefined) {
      let pos = 0;
      for (const chunk of this.chunks) {
        const end = pos + chunk.length;
        if (end > start) yield pos >= start ? chunk : chunk.subarray(start - pos);
        pos = end;
      }
      return;
    }
    if (start >= this.size) return;
    yield* fs.createReadStream(this.file, { start, end: this.size - 1, highWaterMark: 256 * 1024 }) as AsyncIterable<Buffer>;
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

/** Reads and checks the envelope and trailer of a queue file; DamagedSpoolFile when they do not check out. */
export async function readQueueFile(paths: SpoolPaths, id: string): Promise<QueuedMessage> {
  const file = path.join(paths.queue, id);
  const fh = await fsp.open(file, 'r');
  try {
    const { size: fileSize } = await fh.stat();
    if (fileSize < TRAILER_LEN) throw new DamagedSpoolFile(`${file}: no trailer (${fileSize} octets)`);
    const trailer = Buffer.alloc(TRAILER_LEN);
    await fh.read(trailer, 0, TRAILER_LEN, fileSize - TRAILER_LEN);
    const m = /^MXQ2 (\d{15}) ([0-9a-f]{8}) ([0-9a-f]{8})\n$/.exec(trailer.toString('latin1'));
    if (!m) throw new DamagedSpoolFile(`${file}: no valid trailer`);
    const size = Number(m[1]);
    const envLen = fileSize - TRAILER_LEN - size;
    if (envLen <= 1) throw new DamagedSpoolFile(`${file}: the trailer's length does not fit the file`);
    const envBuf = Buffer.alloc(envLen);
    await fh.read(envBuf, 0, envLen, size);
    if (hex8(crc32Of([envBuf])) !== m[3]) throw new DamagedSpoolFile(`${file}: envelope CRC mismatch`);
    let envelope: unknown;
    try {
      envelope = JSON.parse(envBuf.toString('utf8'));
    } catch {
      envelope = undefined;
    }
    if (!isEnvelope(envelope) || envelope.id !== id) throw new DamagedSpoolFile(`${file}: bad envelope`);
    const state = await readState(paths, id);
    return { envelope, size, crc: parseInt(m[2] as string, 16), state };
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

/**
 * A message body that streams from memory or from a file (a queue file at 0, or a journal
 * segment). Octets read from a file are counted and their CRC checked as they stream: a
 * mismatch throws DamagedSpoolFile at the end, before a transport can send the final dot (or
 * rename a Maildir file into new/), and `onDamage` hears of it. `addHeaders` go in at stored
 * octet `at` (after our Received header; 0: in front); `cut` ranges of the stored message
 * (incoming header fields the policy removed) are left out.
 */
export function messageBody(
  file: string,
  start: number,
  size: number,
  addHeaders: readonly string[] | undefined,
  opts: { cached?: Buffer[]; crc?: number; onDamage?: (err: DamagedSpoolFile) => void; cut?: readonly HeaderCut[]; at?: number } = {},
): MessageBody {
  const head = addHeaders && addHeaders.length > 0 ? Buffer.from(addHeaders.join('')) : undefined;
  const { cached, crc } = opts;
  const cut = opts.cut && opts.cut.length > 0 ? opts.cut : undefined;
  const at = head && opts.at !== undefined && opts.at > 0 ? Math.min(opts.at, size) : 0;
  const stored = async function* (): AsyncGenerator<Buffer> {
    if (cached) {
      yield* cached;
      return;
    }
    let got = 0;
    let sum = 0;
    if (size > 0) {
      const stream = fs.createReadStream(file, { start, end: start + size - 1, highWaterMark: 256 * 1024 });
      for await (const chunk of stream) {
        const b = chunk as Buffer;
        got += b.length;
        if (crc !== undefined) sum = crc32Of([b], sum);
        yield b;
      }
    }
    let problem: string | undefined;
    if (got !== size) problem = `${file}: ${got} of ${size} message octets at offset ${start}`;
    else if (crc !== undefined && sum !== crc) problem = `${file}: message CRC mismatch at offset ${start}`;
    if (problem) {
      const err = new DamagedSpoolFile(problem);
      opts.onDamage?.(err);
      throw err;
    }
  };
  return {
    size: size + (head?.length ?? 0) - (cut ? cutLength(cut, size) : 0),
    async *chunks() {
      if (head && at === 0) yield head;
      if (!cut && at === 0) {
        yield* stored();
        return;
      }
      const editor = new Editor(cut ?? [], at > 0 ? { at, head: head as Buffer } : undefined);
      // A message in memory is edited at once; one read from a file, chunk by chunk.
      if (cached) yield* editor.all(cached);
      else {
        for await (const chunk of stored()) yield* editor.push(chunk);
        yield* editor.end();
      }
    },
  };
}

/** A stretch [start, end) of the stored message left out at delivery. */
export type HeaderCut = readonly [number, number];

/** Octets the cuts remove from a message of `size` octets (ranges sorted, not overlapping). */
function cutLength(cut: readonly HeaderCut[], size: number): number {
  let n = 0;
  for (const [a, b] of cut) n += Math.max(0, Math.min(b, size) - Math.min(a, size));
  return n;
}

/**
 * Takes the stored message chunk by chunk and gives it back without the octets in `cut` (sorted,
 * not overlapping), and with `insert.head` put in at stored offset `insert.at` (which no cut
 * contains: it is the end of our Received header).
 */
class Editor {
  /** The insertion point is an empty cut that yields the head: one walk handles both. */
  private readonly marks: { a: number; b: number; head?: Buffer }[];
  private pos = 0;
  private i = 0;

  constructor(cut: readonly HeaderCut[], insert: { at: number; head: Buffer } | undefined) {
    this.marks = cut.map(([a, b]) => ({ a, b }));
    if (insert) {
      const i = this.marks.findIndex((m) => m.a >= insert.at);
      this.marks.splice(i === -1 ? this.marks.length : i, 0, { a: insert.at, b: insert.at, head: insert.head });
    }
  }

  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    const pos = this.pos;
    const end = pos + chunk.length;
    let from = pos;
    while (this.i < this.marks.length && (this.marks[this.i] as { a: number }).a < end) {
      const m = this.marks[this.i] as { a: number; b: number; head?: Buffer };
      if (m.a > from) out.push(chunk.subarray(from - pos, m.a - pos));
      if (m.head) out.push(m.head);
      if (m.b > end) {
        from = end;
        this.marks[this.i] = { a: end, b: m.b }; // the rest of this cut lies in the next chunk
        break;
      }
      from = Math.max(from, m.b);
      this.i++;
    }
    if (from < end) out.push(chunk.subarray(from - pos));
    this.pos = end;
    return out;
  }

  /** An insertion point at the very end (a message that is only our Received header). */
  end(): Buffer[] {
    const out: Buffer[] = [];
    for (; this.i < this.marks.length; this.i++) {
      const head = (this.marks[this.i] as { head?: Buffer }).head;
      if (head) out.push(head);
    }
    return out;
  }

  all(chunks: readonly Buffer[]): Buffer[] {
    const out: Buffer[] = [];
    for (const c of chunks) out.push(...this.push(c));
    out.push(...this.end());
    return out;
  }
}
