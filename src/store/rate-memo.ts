// The daemon's rate counts between two commits (SqliteStore with commitEveryMs). Under load one
// rate statement costs tens of microseconds (SQLite's upsert, and the row handed back to
// JavaScript, with cold caches), and the same few keys (a client, a sender) are counted hundreds
// of times a second. So a key's row, once read from the file, is kept here for commitEveryMs:
// additions within that time are made to it in memory and written to the file together (one
// statement per key, with the batch), and a read within that time is answered from it. What
// other processes on the file see is at most that late, as with the batch itself; a kill -9
// loses the additions of the last milliseconds, as it loses the last batch.
//
// A row here is the file's row (store/rate.ts: the count of window `bucket` and of the one
// before) plus what this process added to it since (`pending`). When the window moves on, or the
// row is older than `freshMs`, the caller writes the pending amount and goes to the file.

export interface RateRow {
  readonly win: number;
  readonly bucket: number;
  readonly prev: number;
  readonly cur: number;
}

interface Entry {
  win: number;
  bucket: number;
  prev: number;
  cur: number;
  /** Added here since the row was read, not yet in the file (may be negative: taken back). */
  pending: number;
  /** When the row was read from the file (Date.now(): real time, as the batch's). */
  readAt: number;
}

/** A pending amount to write: the key, its window and the window number it was counted in. */
export interface PendingRate {
  readonly key: string;
  readonly win: number;
  readonly bucket: number;
  readonly amount: number;
}

/** Rows kept at most; past that, rows with nothing pending are forgotten. */
const MAX_ROWS = 50_000;

export class RateMemo {
  private readonly rows = new Map<string, Entry>();
  /** The keys whose rows hold an amount not yet written. */
  private readonly pendingKeys = new Set<string>();
  private readonly freshMs: number;

  constructor(freshMs: number) {
    this.freshMs = freshMs;
  }

  /** The row when it is fresh and counts in `win`; else undefined (ask the file). */
  get(key: string, win: number, realNow: number): RateRow | undefined {
    const e = this.rows.get(key);
    return e !== undefined && e.win === win && realNow - e.readAt < this.freshMs && realNow >= e.readAt ? e : undefined;
  }

  /**
   * Adds `amount` to a fresh row of the same window (never below 0, as the file's statement
   * counts) and returns it; undefined when the row is not fresh, counts another window length or
   * the window moved on: then the caller writes this key's pending amount and adds in the file.
   */
  add(key: string, win: number, bucket: number, amount: number, realNow: number): RateRow | undefined {
    const e = this.get(key, win, realNow) as Entry | undefined;
    // A bucket behind ours (a clock stepped back) is counted in the row's own, as the file's statement does.
    if (e === undefined || bucket > e.bucket) return undefined;
    const next = Math.max(0, e.cur + amount);
    e.pending += next - e.cur;
    e.cur = next;
    if (e.pending !== 0) this.pendingKeys.add(key);
    else this.pendingKeys.delete(key);
    return e;
  }

  /** A row as the file has it now (read, or just written). */
  set(key: string, row: RateRow, realNow: number): void {
    if (this.rows.size >= MAX_ROWS && !this.rows.has(key)) this.forgetSettled();
    this.rows.set(key, { win: row.win, bucket: row.bucket, prev: row.prev, cur: row.cur, pending: 0, readAt: realNow });
  }

  /** This key's amount not yet written, taken out of the memo (the row is forgotten). */
  take(key: string): PendingRate | undefined {
    const e = this.rows.get(key);
    if (e === undefined) return undefined;
    this.rows.delete(key);
    this.pendingKeys.delete(key);
    return e.pending !== 0 ? { key, win: e.win, bucket: e.bucket, amount: e.pending } : undefined;
  }

  /** Every amount not yet written; their rows stay (set() refreshes them once written). */
  drain(): PendingRate[] {
    const out: PendingRate[] = [];
    for (const key of this.pendingKeys) {
      const e = this.rows.get(key) as Entry;
      out.push({ key, win: e.win, bucket: e.bucket, amount: e.pending });
      e.pending = 0;
    }
    this.pendingKeys.clear();
    return out;
  }

  get hasPending(): boolean {
    return this.pendingKeys.size > 0;
  }

  /** Forgets the rows with nothing pending (the memo stays small; they are read again when used). */
  forgetSettled(): void {
    for (const [key, e] of this.rows) if (e.pending === 0) this.rows.delete(key);
  }

  /** Forgets the rows with nothing pending that are no longer fresh (they would be read anew anyway). */
  forgetStale(realNow: number): void {
    for (const [key, e] of this.rows) if (e.pending === 0 && !(realNow - e.readAt < this.freshMs && realNow >= e.readAt)) this.rows.delete(key);
  }
}
