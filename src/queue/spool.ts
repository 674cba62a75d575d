// The durable spool. A message is written to spool/incoming/<id>, fsynced, renamed into
// spool/queue/<id>, and the queue directory is fsynced (grouped across sessions) before the
// client gets its 250. A crash before the rename leaves only incoming/ files, which were never
// acknowledged and are removed at start-up; a crash after it leaves a complete queue file.
//
// File layout: the message octets (CRLF lines, not dot-stuffed), then the envelope as one JSON
// line, then a fixed 21-octet trailer "MXQ1 <15-digit message length>\n".
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import crypto from 'node:crypto';
import { DirSync } from './dir-sync.ts';
import { isEnvelope, type DeliveryState, type Envelope } from './envelope.ts';
import type { MessageBody } from '../delivery/types.ts';

const TRAILER_LEN = 21;
/** Messages up to this size stay in memory until committed (and are delivered from memory). */
const MEMORY_LIMIT = 256 * 1024;

export interface SpoolPaths {
  incoming: string;
  queue: string;
}

export interface CommittedMessage {
  readonly envelope: Envelope;
  /** Message octets when small enough to keep; otherwise read back from the file. */
  readonly cached?: Buffer[];
  readonly size: number;
}

export interface QueuedMessage {
  readonly envelope: Envelope;
  readonly size: number;
  readonly state?: DeliveryState;
}

let idCounter = 0;

/** Queue IDs sort by time: 8 base-36 digits of ms, then 2 of a counter and 4 random. */
export function newQueueId(now = Date.now()): string {
  idCounter = (idCounter + 1) % 1296;
  const rand = crypto.randomBytes(3).readUIntBE(0, 3) % 1679616;
  return (now.toString(36).padStart(8, '0') + idCounter.toString(36).padStart(2, '0') + rand.toString(36).padStart(4, '0')).toUpperCase();
}

export function isQueueId(name: string): boolean {
  return /^[0-9A-Z]{14}$/.test(name);
}

export class Spool {
  readonly paths: SpoolPaths;
  private readonly dirSync: DirSync;

  private constructor(paths: SpoolPaths) {
    this.paths = paths;
    this.dirSync = new DirSync(paths.queue);
  }

  /** Opens (creating) the spool under `dir`; removes unacknowledged leftovers in incoming/. */
  static async open(dir: string): Promise<Spool> {
    const paths = { incoming: path.join(dir, 'incoming'), queue: path.join(dir, 'queue') };
    await fsp.mkdir(paths.incoming, { recursive: true, mode: 0o700 });
    await fsp.mkdir(paths.queue, { recursive: true, mode: 0o700 });
    for (const name of await fsp.readdir(paths.incoming)) await fsp.rm(path.join(paths.incoming, name), { force: true });
    return new Spool(paths);
  }

  /** Opens read-only views (for the CLI); does not clean incoming/. */
  static at(dir: string): SpoolPaths {
    return { incoming: path.join(dir, 'incoming'), queue: path.join(dir, 'queue') };
  }

  begin(id: string, prefix: Buffer): MessageWriter {
    return new MessageWriter(this, id, prefix);
  }

  /** Durably moves a fully written incoming file into the queue. */
  async publish(id: string): Promise<void> {
    await fsp.rename(path.join(this.paths.incoming, id), path.join(this.paths.queue, id));
    await this.dirSync.sync();
  }

  queuePath(id: string): string {
    return path.join(this.paths.queue, id);
  }

  async remove(id: string): Promise<void> {
    await fsp.rm(path.join(this.paths.queue, id), { force: true });
    await fsp.rm(path.join(this.paths.queue, id + '.state'), { force: true });
  }

  async writeState(id: string, state: DeliveryState): Promise<void> {
    await writeStateFile(this.paths, id, state);
  }

  close(): void {
    this.dirSync.close();
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
  private readonly tmpPath: string;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private size = 0;
  private fh: fsp.FileHandle | undefined;
  private failed: Error | undefined;
  private writing: Promise<void> = Promise.resolve();

  constructor(spool: Spool, id: string, prefix: Buffer) {
    this.spool = spool;
    this.id = id;
    this.tmpPath = path.join(spool.paths.incoming, id);
    this.add([prefix]);
  }

  /** Appends decoded message octets. Resolves when it is fine to read more from the client. */
  add(bufs: Buffer[]): Promise<void> | undefined {
    for (const b of bufs) {
      this.chunks.push(b);
      this.buffered += b.length;
      this.size += b.length;
    }
    if (this.fh === undefined && this.size <= MEMORY_LIMIT) return undefined;
    // Too big for memory: stream what we have to the file, one write at a time.
    const pending = this.chunks;
    this.chunks = [];
    this.buffered = 0;
    this.writing = this.writing.then(async () => {
      if (this.failed) return;
      try {
        this.fh ??= await fsp.open(this.tmpPath, 'wx', 0o600);
        await this.fh.writev(pending);
      } catch (err) {
        this.failed = err as Error;
      }
    });
    return this.writing;
  }

  /** Writes the envelope, fsyncs, publishes into the queue. Throws on any I/O error (→ 451). */
  async commit(envelope: Envelope): Promise<CommittedMessage> {
    await this.writing;
    if (this.failed) throw this.failed;
    const env = Buffer.from(JSON.stringify(envelope) + '\n');
    const trailer = Buffer.from(`MXQ1 ${String(this.size).padStart(15, '0')}\n`);
    const inMemory = this.fh === undefined;
    const fh = (this.fh ??= await fsp.open(this.tmpPath, 'wx', 0o600));
    try {
      await fh.writev([...this.chunks, env, trailer]);
      await fh.datasync();
    } finally {
      this.fh = undefined;
      await fh.close();
    }
    await this.spool.publish(this.id);
    return { envelope, size: this.size, cached: inMemory ? this.chunks : undefined };
  }

  /** Drops the message (refused, or the session died before the end of DATA). */
  async abort(): Promise<void> {
    await this.writing;
    const fh = this.fh;
    this.fh = undefined;
    if (fh) await fh.close().catch(() => undefined);
    this.chunks = [];
    await fsp.rm(this.tmpPath, { force: true });
  }
}

/** Reads the envelope and message length of a queue file. */
export async function readQueueFile(paths: SpoolPaths, id: string): Promise<QueuedMessage> {
  const file = path.join(paths.queue, id);
  const fh = await fsp.open(file, 'r');
  try {
    const { size: fileSize } = await fh.stat();
    if (fileSize < TRAILER_LEN) throw new Error(`${file}: truncated spool file`);
    const trailer = Buffer.alloc(TRAILER_LEN);
    await fh.read(trailer, 0, TRAILER_LEN, fileSize - TRAILER_LEN);
    const m = /^MXQ1 (\d{15})\n$/.exec(trailer.toString('latin1'));
    if (!m || m[1] === undefined) throw new Error(`${file}: bad spool trailer`);
    const size = Number(m[1]);
    const envLen = fileSize - TRAILER_LEN - size;
    if (envLen <= 0) throw new Error(`${file}: bad spool layout`);
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

/** A message body that streams from memory or from the spool file. */
export function messageBody(file: string, size: number, addHeaders: readonly string[] | undefined, cached?: Buffer[]): MessageBody {
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
      const stream = fs.createReadStream(file, { start: 0, end: size - 1, highWaterMark: 256 * 1024 });
      for await (const chunk of stream) yield chunk as Buffer;
    },
  };
}
