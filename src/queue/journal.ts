// The journal: small messages on their first delivery attempt, appended to a shared segment
// file. Each append is one write to the page cache; the fdatasync that makes it durable is
// shared by every session that appended meanwhile (group commit), so a busy server pays one
// fdatasync per batch instead of a file creation, an fsync and an unlink per message.
//
// A segment `journal/<seq>.log` holds records:
//   "MXR1 <queue id> <envelope length> <message length>\n" <envelope JSON> <message> "\n"
// and `journal/<seq>.done` lists, one per line, the IDs that need nothing more from the
// segment (delivered, bounced, or moved to a spool file of their own). A segment is deleted
// once it is closed and every record in it is done. Only a suffix of a segment can be torn by a
// crash (everything before an acknowledged record was synced with it), so reading stops at the
// first record that does not parse.
import fs from 'node:fs';
import path from 'node:path';
import { SyncGroup } from './sync-group.ts';
import { isEnvelope, type Envelope } from './envelope.ts';

/** Start a new segment past this size. */
const SEGMENT_LIMIT = 16 * 1024 * 1024;
/** A segment whose messages are all done is closed and deleted after this long without new ones. */
const IDLE_CLOSE_MS = 2000;

export interface JournalRef {
  readonly seq: number;
  /** Offset of the message octets in the segment file. */
  readonly offset: number;
  readonly size: number;
}

export interface JournalRecord {
  readonly envelope: Envelope;
  readonly ref: JournalRef;
}

interface Segment {
  readonly seq: number;
  readonly fd: number;
  doneFd: number | undefined;
  size: number;
  records: number;
  /** IDs marked done (a set: the same ID may be reported twice, e.g. deleted while in flight). */
  readonly done: Set<string>;
  closed: boolean;
  readonly sync: SyncGroup;
  /** Resolves when the segment's directory entry is durable. */
  readonly created: Promise<void>;
}

export function segmentPath(dir: string, seq: number, kind: 'log' | 'done'): string {
  return path.join(dir, `${String(seq).padStart(10, '0')}.${kind}`);
}

/** The sequence numbers of the segments in `dir`, oldest first. */
export function listSegments(dir: string): number[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((n) => /^\d{10}\.log$/.test(n))
    .map((n) => Number(n.slice(0, 10)))
    .sort((a, b) => a - b);
}

/** The records of a segment that are not done yet (a torn tail is ignored). */
export function readSegment(dir: string, seq: number): JournalRecord[] {
  const data = fs.readFileSync(segmentPath(dir, seq, 'log'));
  const done = readDone(dir, seq);
  const out: JournalRecord[] = [];
  let pos = 0;
  while (pos < data.length) {
    const nl = data.indexOf(10, pos);
    if (nl === -1 || nl - pos > 80) break;
    const m = /^MXR1 ([0-9A-Z]{14}) (\d{1,9}) (\d{1,12})$/.exec(data.toString('latin1', pos, nl));
    if (!m) break;
    const envLen = Number(m[2]);
    const size = Number(m[3]);
    const envStart = nl + 1;
    const msgStart = envStart + envLen;
    const end = msgStart + size;
    if (end >= data.length || data[end] !== 10) break;
    let envelope: unknown;
    try {
      envelope = JSON.parse(data.toString('utf8', envStart, msgStart));
    } catch {
      break;
    }
    if (!isEnvelope(envelope) || envelope.id !== m[1]) break;
    if (!done.has(envelope.id)) out.push({ envelope, ref: { seq, offset: msgStart, size } });
    pos = end + 1;
  }
  return out;
}

function readDone(dir: string, seq: number): Set<string> {
  try {
    return new Set(fs.readFileSync(segmentPath(dir, seq, 'done'), 'latin1').split('\n').filter(Boolean));
  } catch {
    return new Set();
  }
}

/** Marks a record done from outside the server (`mxguard queue delete`); O_APPEND keeps lines whole. */
export function markDoneExternally(dir: string, seq: number, id: string): void {
  fs.appendFileSync(segmentPath(dir, seq, 'done'), `${id}\n`);
}

export function removeSegment(dir: string, seq: number): void {
  for (const kind of ['log', 'done'] as const) {
    try {
      fs.unlinkSync(segmentPath(dir, seq, kind));
    } catch {
      // already gone
    }
  }
}

export class Journal {
  readonly dir: string;
  private readonly dirSync: SyncGroup;
  private readonly segments = new Map<number, Segment>();
  /** The segment appends go to; created on demand, so an idle server keeps no journal file. */
  private active: Segment | undefined;
  private nextSeq: number;
  private idleTimer: NodeJS.Timeout | undefined;

  /** Opens the journal for appending. Existing segments are left for recovery to read. */
  constructor(dir: string) {
    this.dir = dir;
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.dirSync = SyncGroup.forDirectory(dir);
    const existing = listSegments(dir);
    this.nextSeq = (existing[existing.length - 1] ?? 0) + 1;
  }

  private newSegment(): Segment {
    const seq = this.nextSeq++;
    const fd = fs.openSync(segmentPath(this.dir, seq, 'log'), 'wx', 0o600);
    const segment: Segment = { seq, fd, doneFd: undefined, size: 0, records: 0, done: new Set(), closed: false, sync: new SyncGroup(fd, true), created: this.dirSync.sync() };
    segment.created.catch(() => undefined); // reported to the appenders that await it
    this.segments.set(seq, segment);
    return segment;
  }

  /** Appends one message; resolves once it is durable. */
  async append(envelope: Envelope, chunks: readonly Buffer[], size: number): Promise<JournalRef> {
    if (this.active && this.active.size >= SEGMENT_LIMIT) this.retire(this.active);
    const segment = (this.active ??= this.newSegment());
    const env = Buffer.from(JSON.stringify(envelope));
    const header = Buffer.from(`MXR1 ${envelope.id} ${env.length} ${size}\n`);
    const offset = segment.size + header.length + env.length;
    const bufs = [header, env, ...chunks, NEWLINE];
    const total = header.length + env.length + size + 1;
    const start = segment.size;
    segment.size += total;
    segment.records++;
    try {
      const written = fs.writevSync(segment.fd, bufs, start);
      if (written !== total) throw new Error(`short journal write (${written} of ${total} octets)`);
      await Promise.all([segment.sync.sync(), segment.created]);
    } catch (err) {
      // A torn record would hide every record after it from recovery: append nothing more to
      // this segment. The record stays counted, so the segment is kept (and read at the next
      // start, up to the torn record) until a restart.
      this.retire(segment);
      throw err;
    }
    return { seq: segment.seq, offset, size };
  }

  /** Nothing more is needed of this record (no fsync: after a crash it is merely sent twice). */
  done(ref: JournalRef, id: string): void {
    const segment = this.segments.get(ref.seq);
    if (!segment) return;
    if (segment.done.has(id)) return;
    segment.doneFd ??= fs.openSync(segmentPath(this.dir, segment.seq, 'done'), 'a', 0o600);
    fs.writeSync(segment.doneFd, `${id}\n`);
    segment.done.add(id);
    if (segment === this.active && segment.done.size >= segment.records) {
      // All delivered: if nothing new comes for a moment, close and delete the segment.
      clearTimeout(this.idleTimer);
      const records = segment.records;
      this.idleTimer = setTimeout(() => {
        if (this.active === segment && segment.records === records && segment.done.size >= records) this.retire(segment);
      }, IDLE_CLOSE_MS);
      this.idleTimer.unref();
    }
    this.maybeRemove(segment);
  }

  /** No more appends to this segment; it goes once its last record is done. */
  private retire(segment: Segment): void {
    segment.closed = true;
    if (this.active === segment) this.active = undefined;
    this.maybeRemove(segment);
  }

  /** IDs marked done by another process (`mxguard queue delete`) in a live segment. */
  doneElsewhere(seq: number): Set<string> {
    return readDone(this.dir, seq);
  }

  private maybeRemove(segment: Segment): void {
    if (!segment.closed || segment.done.size < segment.records) return;
    fs.closeSync(segment.fd);
    if (segment.doneFd !== undefined) fs.closeSync(segment.doneFd);
    this.segments.delete(segment.seq);
    removeSegment(this.dir, segment.seq);
  }

  close(): void {
    clearTimeout(this.idleTimer);
    for (const segment of this.segments.values()) {
      segment.closed = true;
      if (segment.done.size >= segment.records) this.maybeRemove(segment);
      else {
        fs.closeSync(segment.fd);
        if (segment.doneFd !== undefined) fs.closeSync(segment.doneFd);
      }
    }
    this.segments.clear();
    this.dirSync.close();
  }
}

const NEWLINE = Buffer.from('\n');
