// The journal: small messages on their first delivery attempt, appended to a shared segment
// file. Each append is one write to the page cache; the fdatasync that makes it durable is
// shared by every session that appended meanwhile (group commit), so a busy server pays one
// fdatasync per batch instead of a file creation, an fsync and an unlink per message.
//
// A segment `journal/<seq>.log` starts with "MXJ2 <nonce>\n" (16 random hex digits) and holds
// records:
//   "MXR2 <nonce> <queue id> <envelope length> <message length> <message crc> <envelope crc>\n"
//   <envelope JSON> <message> "\n"
// (CRC-32, 8 hex digits each), and `journal/<seq>.done` lists, one per line, the IDs that need
// nothing more from the segment (delivered, bounced, or moved to a spool file of their own). A
// segment is deleted once it is closed and every record in it is done.
//
// Reading (recovery at start-up) trusts nothing: a record counts only when its header, lengths,
// CRCs and envelope all check out. After a damaged stretch, reading resynchronises on the next
// record header that carries the segment's nonce (a message body cannot forge one: the nonce is
// random and never leaves the file), so one flipped octet costs one record, not the rest of
// the segment. A crash can only tear the tail (an unfinished record, never acknowledged);
// anything else that does not check out is damage, which recovery reports and keeps.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { SyncGroup } from './sync-group.ts';
import { isEnvelope, type Envelope } from '../mail/envelope.ts';
import { crc32Of, hex8, spoolFs, writevAllSync } from './spool-fs.ts';

/** Start a new segment past this size. */
const SEGMENT_LIMIT = 16 * 1024 * 1024;
/** A segment whose messages are all done is closed and deleted after this long without new ones. */
const IDLE_CLOSE_MS = 2000;

export interface JournalRef {
  readonly seq: number;
  /** Offset of the message octets in the segment file. */
  readonly offset: number;
  readonly size: number;
  /** CRC-32 of the message octets, checked whenever they are read back from the file. */
  readonly crc: number;
}

export interface JournalRecord {
  readonly envelope: Envelope;
  readonly ref: JournalRef;
}

interface Segment {
  readonly seq: number;
  readonly fd: number;
  doneFd: number | undefined;
  /** A done line was cut short (full disk): the next one starts on a fresh line. */
  doneTorn: boolean;
  readonly nonce: string;
  size: number;
  records: number;
  /** IDs marked done (a set: the same ID may be reported twice, e.g. deleted while in flight). */
  readonly done: Set<string>;
  closed: boolean;
  /** Damaged, and no copy could be kept elsewhere: never deleted. */
  keep: boolean;
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

/** A stretch of a segment that did not check out. */
export interface SegmentDamage {
  readonly offset: number;
  readonly length: number;
  /** The queue ID, when the record's header could still be read. */
  readonly id?: string;
}

export interface ParsedSegment {
  /** Every record that checks out, done or not. */
  readonly records: JournalRecord[];
  /** Damaged stretches: recovery keeps a copy of the segment and logs them. */
  readonly damage: SegmentDamage[];
  /** Where an unfinished last record starts (a write cut off by a crash or a full disk). */
  readonly tornAt?: number;
}

const SEGMENT_HEADER_LEN = 22; // "MXJ2 " + 16 hex digits + "\n"
const RECORD_HEADER_MAX = 120;
const RECORD_HEADER = /^MXR2 ([0-9a-f]{16}) ([0-9A-Z]{14}) (\d{1,9}) (\d{1,12}) ([0-9a-f]{8}) ([0-9a-f]{8})$/;

function segmentHeader(nonce: string): Buffer {
  return Buffer.from(`MXJ2 ${nonce}\n`, 'latin1');
}

/**
 * The segment's nonce: the header's, when records carry it. Else (a damaged header) the nonce
 * of the first record that checks out; a forgery would have to sit in a body before every real
 * record and survive two damaged headers.
 */
function nonceOf(data: Buffer, seq: number): string | undefined {
  const m = /^MXJ2 ([0-9a-f]{16})\n/.exec(data.toString('latin1', 0, SEGMENT_HEADER_LEN));
  if (m && (data.length === SEGMENT_HEADER_LEN || data.includes(`MXR2 ${m[1]} `, SEGMENT_HEADER_LEN, 'latin1'))) return m[1];
  const text = data.toString('latin1');
  for (const r of text.matchAll(/MXR2 ([0-9a-f]{16}) [0-9A-Z]{14} /g)) {
    if ('record' in recordAt(data, seq, r.index, r[1] as string)) return r[1];
  }
  return m?.[1];
}

type RecordAt = { record: JournalRecord; end: number } | { torn: true } | { bad: true; id?: string };

/** The record starting at `pos`, checked from end to end. */
function recordAt(data: Buffer, seq: number, pos: number, nonce: string): RecordAt {
  const nl = data.indexOf(10, pos);
  if (nl === -1 || nl - pos > RECORD_HEADER_MAX) {
    // No header line: a tail too short to hold one was cut off in mid-write.
    return data.length - pos < RECORD_HEADER_MAX ? { torn: true } : { bad: true };
  }
  const m = RECORD_HEADER.exec(data.toString('latin1', pos, nl));
  if (!m || m[1] !== nonce) return { bad: true };
  const id = m[2] as string;
  const envStart = nl + 1;
  const msgStart = envStart + Number(m[3]);
  const size = Number(m[4]);
  const end = msgStart + size;
  if (end >= data.length) return { torn: true }; // the file ends inside this record
  if (data[end] !== 10) return { bad: true, id };
  const env = data.subarray(envStart, msgStart);
  const crc = crc32Of([data.subarray(msgStart, end)]);
  if (hex8(crc) !== m[5] || hex8(crc32Of([env])) !== m[6]) return { bad: true, id };
  let envelope: unknown;
  try {
    envelope = JSON.parse(env.toString('utf8'));
  } catch {
    return { bad: true, id };
  }
  if (!isEnvelope(envelope) || envelope.id !== id) return { bad: true, id };
  return { record: { envelope, ref: { seq, offset: msgStart, size, crc } }, end: end + 1 };
}

/** Reads a whole segment: the records that check out, the damaged stretches, a torn tail. */
export function parseSegment(data: Buffer, seq: number): ParsedSegment {
  const records: JournalRecord[] = [];
  const damage: SegmentDamage[] = [];
  const nonce = nonceOf(data, seq);
  if (nonce === undefined) {
    // Not one record header: an empty segment, a header cut short, or nothing but damage.
    if (data.length === 0) return { records, damage };
    if (data.length < SEGMENT_HEADER_LEN && 'MXJ2 '.startsWith(data.toString('latin1', 0, Math.min(5, data.length)))) return { records, damage, tornAt: 0 };
    return { records, damage: [{ offset: 0, length: data.length }] };
  }
  const marker = Buffer.from(`MXR2 ${nonce} `, 'latin1');
  let pos = data.subarray(0, SEGMENT_HEADER_LEN).equals(segmentHeader(nonce)) ? SEGMENT_HEADER_LEN : 0;
  let tornAt: number | undefined;
  while (pos < data.length) {
    const r = recordAt(data, seq, pos, nonce);
    if ('record' in r) {
      records.push(r.record);
      pos = r.end;
      continue;
    }
    // Resynchronise: the next position where a whole record checks out.
    let next = -1;
    for (let at = data.indexOf(marker, pos + 1); at !== -1; at = data.indexOf(marker, at + 1)) {
      if ('record' in recordAt(data, seq, at, nonce)) {
        next = at;
        break;
      }
    }
    if (next === -1 && isTornTail(data, seq, pos, nonce)) {
      tornAt = pos;
      break;
    }
    const end = next === -1 ? data.length : next;
    damage.push({ offset: pos, length: end - pos, id: 'id' in r ? r.id : undefined });
    pos = end;
  }
  return { records, damage, tornAt };
}

/**
 * Whether the segment ends at `pos` in an unfinished record: a prefix of one, perhaps followed
 * by zeros (a file system that extended the file but never wrote the data, on power loss).
 */
function isTornTail(data: Buffer, seq: number, pos: number, nonce: string): boolean {
  let end = data.length;
  while (end > pos && data[end - 1] === 0) end--;
  if (end === pos) return true;
  return 'torn' in recordAt(data.subarray(0, end), seq, pos, nonce);
}

/** The records of a segment that are not done yet (damage and a torn tail are left out). */
export function readSegment(dir: string, seq: number): JournalRecord[] {
  const done = readDone(dir, seq);
  return parseSegment(fs.readFileSync(segmentPath(dir, seq, 'log')), seq).records.filter((r) => !done.has(r.envelope.id));
}

/** The IDs a segment's .done file lists (none when it has no .done file yet). */
export function readDone(dir: string, seq: number): Set<string> {
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
    const nonce = crypto.randomBytes(8).toString('hex');
    const fd = spoolFs.openSync(segmentPath(this.dir, seq, 'log'), 'wx', 0o600);
    const header = segmentHeader(nonce);
    try {
      writevAllSync(fd, [header], 0);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    const segment: Segment = { seq, fd, nonce, doneFd: undefined, doneTorn: false, size: header.length, records: 0, done: new Set(), closed: false, keep: false, sync: new SyncGroup(fd, true), created: this.dirSync.sync() };
    segment.created.catch(() => undefined); // reported to the appenders that await it
    this.segments.set(seq, segment);
    return segment;
  }

  /** Appends one message (`crc`: CRC-32 of its octets); resolves once it is durable. */
  async append(envelope: Envelope, chunks: readonly Buffer[], size: number, crc: number): Promise<JournalRef> {
    if (this.active && this.active.size >= SEGMENT_LIMIT) this.retire(this.active);
    const segment = (this.active ??= this.newSegment());
    const env = Buffer.from(JSON.stringify(envelope));
    const header = Buffer.from(`MXR2 ${segment.nonce} ${envelope.id} ${env.length} ${size} ${hex8(crc)} ${hex8(crc32Of([env]))}\n`, 'latin1');
    const offset = segment.size + header.length + env.length;
    const total = header.length + env.length + size + 1;
    const start = segment.size;
    segment.size += total;
    segment.records++;
    let written = false;
    try {
      writevAllSync(segment.fd, [header, env, ...chunks, NEWLINE], start);
      written = true;
      await Promise.all([segment.sync.sync(), segment.created]);
    } catch (err) {
      // A torn record hides nothing after it (reading resynchronises), but append nothing more
      // to a segment that failed. The client hears 452/451, so the record must never be
      // delivered: a whole one is marked done; a torn one is ignored when read.
      if (written) this.done({ seq: segment.seq, offset, size, crc }, envelope.id);
      else segment.done.add(envelope.id);
      this.retire(segment);
      throw err;
    }
    return { seq: segment.seq, offset, size, crc };
  }

  /**
   * Nothing more is needed of this record (no fsync: after a crash it is merely sent twice).
   * Never throws: a done line that cannot be written (full disk) only risks a duplicate.
   */
  done(ref: JournalRef, id: string): void {
    const segment = this.segments.get(ref.seq);
    if (!segment) return;
    if (segment.done.has(id)) return;
    segment.done.add(id);
    try {
      segment.doneFd ??= spoolFs.openSync(segmentPath(this.dir, segment.seq, 'done'), 'a', 0o600);
      writevAllSync(segment.doneFd, [Buffer.from(`${segment.doneTorn ? '\n' : ''}${id}\n`, 'latin1')]);
      segment.doneTorn = false;
    } catch {
      segment.doneTorn = true;
    }
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

  /**
   * Takes over a segment a previous run left (start-up recovery): closed, with `pending`
   * records still to deliver from it. It is deleted once they are done, unless `keep`.
   */
  adopt(seq: number, pending: number, keep: boolean): void {
    const fd = fs.openSync(segmentPath(this.dir, seq, 'log'), 'r');
    const nonce = '';
    this.segments.set(seq, { seq, fd, nonce, doneFd: undefined, doneTorn: true, size: 0, records: pending, done: new Set(), closed: true, keep, sync: new SyncGroup(fd, true), created: Promise.resolve() });
  }

  private maybeRemove(segment: Segment): void {
    if (!segment.closed || segment.done.size < segment.records) return;
    fs.closeSync(segment.fd);
    if (segment.doneFd !== undefined) fs.closeSync(segment.doneFd);
    this.segments.delete(segment.seq);
    if (!segment.keep) removeSegment(this.dir, segment.seq);
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
