// The embedded Store: one SQLite file (node:sqlite, WAL) under data_dir. Reads skip expired
// rows; a sweep at most once a minute deletes them. "Now" is util/clock.ts (tests move it on). The calls are synchronous and take
// microseconds, so they run on the event loop; the API is async to match the Redis store.
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import fs from 'node:fs';
import path from 'node:path';
import type { CacheEntry, Relayer, Store } from './store.ts';
import { rateBucket, rateEstimate } from './rate.ts';
import { RateMemo, type PendingRate, type RateRow } from './rate-memo.ts';
import { clock } from '../util/clock.ts';

const SWEEP_EVERY_MS = 60_000;
/** How long a statement waits for another process's lock (SQLite's busy_timeout). */
const BUSY_TIMEOUT_MS = 5000;
/** Opening tries again this long when SQLite still says "database is locked" (SQLITE_BUSY). */
const OPEN_RETRY_MS = 5000;

const SCHEMA = `
  PRAGMA synchronous = NORMAL;
  CREATE TABLE IF NOT EXISTS relayers (ip TEXT PRIMARY KEY, at INTEGER NOT NULL, expires INTEGER NOT NULL);
  CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires INTEGER NOT NULL);
  CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires INTEGER NOT NULL);
  CREATE TABLE IF NOT EXISTS rates (key TEXT PRIMARY KEY, win INTEGER NOT NULL, bucket INTEGER NOT NULL, prev REAL NOT NULL, cur REAL NOT NULL, expires INTEGER NOT NULL);
`;

/**
 * Opens the file with the busy timeout in force before anything takes a lock: several processes
 * (mxguard stdio, one per connection) may open a fresh file at once, and switching it to WAL
 * needs an exclusive lock. Some lock transitions return SQLITE_BUSY without waiting (a deadlock
 * SQLite breaks by failing one side), so the whole opening is tried again, with a short random
 * sleep, until OPEN_RETRY_MS have passed. The constructor is synchronous: so is the sleep.
 */
function openDatabase(file: string): DatabaseSync {
  const deadline = Date.now() + OPEN_RETRY_MS;
  for (;;) {
    let db: DatabaseSync | undefined;
    try {
      db = new DatabaseSync(file, { timeout: BUSY_TIMEOUT_MS });
      // WAL: readers never wait for the writer; NORMAL: durable across a crash of this process
      // (state here is soft: losing the last second of it after a power cut is harmless).
      db.exec('PRAGMA journal_mode = WAL');
      db.exec(SCHEMA);
      return db;
    } catch (err) {
      db?.close();
      if (!isBusy(err) || Date.now() >= deadline) throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10 + Math.floor(Math.random() * 40));
    }
  }
}

function isBusy(err: unknown): boolean {
  const e = err as { errcode?: number; message?: string };
  // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
  return ((e.errcode ?? 0) & 0xff) === 5 || ((e.errcode ?? 0) & 0xff) === 6 || /database (table )?is locked/.test(e.message ?? '');
}

export class SqliteStore implements Store {
  readonly kind = 'sqlite';
  private readonly db: DatabaseSync;
  private readonly stmt: Record<string, StatementSync>;
  private lastSweep = 0;

  /** Writes of this many milliseconds share one transaction (0: each commits at once). */
  private readonly commitEveryMs: number;
  private commitTimer: NodeJS.Timeout | undefined;
  /** No new batch before this (Date.now(), real time: the lock is shared with real processes). */
  private nextBatchAt = 0;
  private readonly onCommitError: ((err: Error) => void) | undefined;
  /** With commitEveryMs: rate rows counted in memory between commits (store/rate-memo.ts). */
  private readonly rateMemo: RateMemo | undefined;
  private rateFlushTimer: NodeJS.Timeout | undefined;

  /**
   * `commitEveryMs`: batch the writes of that many milliseconds into one commit (the daemon;
   * `mxguard stdio`, one short process per connection, and the CLI commit each write, so they
   * never hold the write lock while others wait).
   */
  constructor(file: string, opts: { commitEveryMs?: number; onCommitError?: (err: Error) => void } = {}) {
    this.commitEveryMs = opts.commitEveryMs ?? 0;
    this.onCommitError = opts.onCommitError;
    this.rateMemo = this.commitEveryMs > 0 ? new RateMemo(this.commitEveryMs) : undefined;
    fs.mkdirSync(path.dirname(file), { recursive: true });
    this.db = openDatabase(file);
    this.stmt = {
      relayerAdd: this.db.prepare('INSERT INTO relayers (ip, at, expires) VALUES (?, ?, ?) ON CONFLICT (ip) DO UPDATE SET at = excluded.at, expires = excluded.expires'),
      relayerGet: this.db.prepare('SELECT at FROM relayers WHERE ip = ? AND expires > ?'),
      relayerDelete: this.db.prepare('DELETE FROM relayers WHERE ip = ?'),
      relayerExpire: this.db.prepare('DELETE FROM relayers WHERE at < ?'),
      relayerList: this.db.prepare('SELECT ip, at FROM relayers WHERE expires > ? ORDER BY ip'),
      counterIncr: this.db.prepare(
        `INSERT INTO counters (key, value, expires) VALUES (?1, 1, ?2 + ?3)
         ON CONFLICT (key) DO UPDATE SET
           value = CASE WHEN expires <= ?2 THEN 1 ELSE value + 1 END,
           expires = CASE WHEN expires <= ?2 THEN ?2 + ?3 ELSE expires END
         RETURNING value`,
      ),
      counterGet: this.db.prepare('SELECT value FROM counters WHERE key = ? AND expires > ?'),
      counterReset: this.db.prepare('DELETE FROM counters WHERE key = ?'),
      counterDecr: this.db.prepare('UPDATE counters SET value = value - 1 WHERE key = ? AND expires > ? AND value > 0'),
      cacheSet: this.db.prepare('INSERT INTO cache (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires'),
      cacheGet: this.db.prepare('SELECT value FROM cache WHERE key = ? AND expires > ?'),
      cacheDelete: this.db.prepare('DELETE FROM cache WHERE key = ? AND expires > ?'),
      cacheFrom: this.db.prepare('SELECT key, value, expires FROM cache WHERE key >= ? AND expires > ? ORDER BY key'),
      // One statement, so two processes on one file never lose an addition. Same window (or a
      // bucket ahead, from a clock running fast): add; the next window: the current count becomes
      // the previous one; older, or another window length: start again.
      rateAdd: this.db.prepare(
        `INSERT INTO rates (key, win, bucket, prev, cur, expires) VALUES (?1, ?2, ?3, 0, max(0, ?4), (?3 + 2) * ?2)
         ON CONFLICT (key) DO UPDATE SET
           prev = CASE WHEN win = ?2 AND bucket >= ?3 THEN prev WHEN win = ?2 AND bucket = ?3 - 1 THEN cur ELSE 0 END,
           cur = max(0, CASE WHEN win = ?2 AND bucket >= ?3 THEN cur + ?4 ELSE ?4 END),
           bucket = CASE WHEN win = ?2 AND bucket >= ?3 THEN bucket ELSE ?3 END,
           expires = (CASE WHEN win = ?2 AND bucket >= ?3 THEN bucket ELSE ?3 END + 2) * ?2,
           win = ?2
         RETURNING bucket, prev, cur`,
      ),
      rateGet: this.db.prepare('SELECT win, bucket, prev, cur FROM rates WHERE key = ? AND expires > ?'),
      sweepCache: this.db.prepare('DELETE FROM cache WHERE expires <= ?'),
      sweepRates: this.db.prepare('DELETE FROM rates WHERE expires <= ?'),
      sweepRelayers: this.db.prepare('DELETE FROM relayers WHERE expires <= ?'),
      sweepCounters: this.db.prepare('DELETE FROM counters WHERE expires <= ?'),
    } as Record<string, StatementSync>;
  }

  private s(name: string): StatementSync {
    return this.stmt[name] as StatementSync;
  }

  /**
   * A statement that writes. With commitEveryMs, writes share one transaction that commits that
   * long after its first write: one commit (one WAL frame, and a checkpoint a hundred times less
   * often) for every write of those milliseconds instead of one each; on the event loop, a
   * checkpoint's fsync blocks every session. This process reads its own writes at once; others
   * see them when the batch commits, and a kill -9 loses the last batch: soft state, a count or
   * a greylisting record (the triplet waits once more), never mail.
   */
  private w(name: string): StatementSync {
    // After a batch, as long again without one (writes commit one by one meanwhile): other
    // processes on the file (mxguard stdio, the CLI) find the write lock free half the time.
    if (this.commitEveryMs > 0 && !this.db.isTransaction && Date.now() >= this.nextBatchAt) {
      this.db.exec('BEGIN IMMEDIATE');
      this.commitTimer = setTimeout(() => this.endBatch(), this.commitEveryMs);
      this.commitTimer.unref();
    }
    return this.stmt[name] as StatementSync;
  }

  /** Ends the open batch, with the rate counts made in memory. A failed COMMIT is rolled back and the next write starts a new batch. */
  private endBatch(): void {
    if (this.db.isTransaction) this.flushRates();
    clearTimeout(this.commitTimer);
    this.commitTimer = undefined;
    this.nextBatchAt = Date.now() + this.commitEveryMs;
    if (!this.db.isTransaction) return; // SQLite rolled it back itself (an I/O error, a full disk)
    try {
      this.db.exec('COMMIT');
    } catch (err) {
      if (this.db.isTransaction) this.db.exec('ROLLBACK');
      this.onCommitError?.(err as Error);
    }
  }

  /**
   * Writes the rate amounts counted in memory; a write that fails is reported as a failed
   * commit is (the amounts are lost: soft state). The rows written are fresh again.
   */
  private flushRates(): void {
    clearTimeout(this.rateFlushTimer);
    this.rateFlushTimer = undefined;
    const memo = this.rateMemo;
    if (!memo?.hasPending) return;
    try {
      for (const p of memo.drain()) memo.set(p.key, this.writeRate(p), Date.now());
    } catch (err) {
      this.onCommitError?.(err as Error);
    }
    // The rows just written stay (fresh again); only the stale ones go.
    memo.forgetStale(Date.now());
  }

  /** Amounts counted in memory reach the file with the open write batch, or within commitEveryMs when none is open. */
  private scheduleRateFlush(): void {
    if (this.db.isTransaction || this.rateFlushTimer !== undefined) return;
    this.rateFlushTimer = setTimeout(() => this.flushRates(), this.commitEveryMs);
    this.rateFlushTimer.unref();
  }

  /** One rate statement: adds `amount` counted in window `bucket` and returns the row as the file now has it. */
  private writeRate(p: PendingRate): RateRow {
    const row = this.w('rateAdd').get(p.key, p.win, p.bucket, p.amount) as { bucket: number; prev: number; cur: number };
    return { win: p.win, bucket: row.bucket, prev: row.prev, cur: row.cur };
  }

  private sweep(now: number): void {
    if (now - this.lastSweep < SWEEP_EVERY_MS) return;
    this.lastSweep = now;
    this.w('sweepRelayers').run(now);
    this.w('sweepCounters').run(now);
    this.w('sweepCache').run(now);
    this.w('sweepRates').run(now);
  }

  async relayerAdd(ip: string, at: number, keepMs: number): Promise<void> {
    const now = clock.now();
    this.sweep(now);
    this.w('relayerAdd').run(ip, at, now + keepMs);
  }

  async relayerGet(ip: string): Promise<number | undefined> {
    const row = this.s('relayerGet').get(ip, clock.now()) as { at: number } | undefined;
    return row?.at;
  }

  async relayerDelete(ips: readonly string[]): Promise<number> {
    let n = 0;
    for (const ip of ips) n += Number(this.w('relayerDelete').run(ip).changes);
    return n;
  }

  async relayerExpire(before: number): Promise<number> {
    return Number(this.w('relayerExpire').run(before).changes);
  }

  async relayerList(): Promise<Relayer[]> {
    return (this.s('relayerList').all(clock.now()) as Array<{ ip: string; at: number }>).map((r) => ({ ip: r.ip, at: r.at }));
  }

  async counterIncr(key: string, windowMs: number): Promise<number> {
    const now = clock.now();
    this.sweep(now);
    const row = this.w('counterIncr').get(key, now, windowMs) as { value: number };
    return row.value;
  }

  async counterGet(key: string): Promise<number> {
    const row = this.s('counterGet').get(key, clock.now()) as { value: number } | undefined;
    return row?.value ?? 0;
  }

  async counterReset(key: string): Promise<void> {
    this.w('counterReset').run(key);
  }

  async counterDecr(key: string): Promise<void> {
    this.w('counterDecr').run(key, clock.now());
  }

  async cacheSet(key: string, value: string, ttlMs: number): Promise<void> {
    const now = clock.now();
    this.sweep(now);
    this.w('cacheSet').run(key, value, now + ttlMs);
  }

  async cacheGet(key: string): Promise<string | undefined> {
    const row = this.s('cacheGet').get(key, clock.now()) as { value: string } | undefined;
    return row?.value;
  }

  async cacheDelete(key: string): Promise<boolean> {
    return Number(this.w('cacheDelete').run(key, clock.now()).changes) > 0;
  }

  async cacheList(prefix: string): Promise<CacheEntry[]> {
    // Keys with the prefix are one run in key order (BINARY, the UTF-8 bytes): read from the
    // prefix on, through the index, and stop at the first key past it.
    const out: CacheEntry[] = [];
    for (const row of this.s('cacheFrom').iterate(prefix, clock.now()) as Iterable<{ key: string; value: string; expires: number }>) {
      if (!row.key.startsWith(prefix)) break;
      out.push({ key: row.key, value: row.value, expiresAt: row.expires });
    }
    // In JavaScript's string order, as the Redis store sorts (UTF-8 order differs past U+FFFF).
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async rateAdd(key: string, amount: number, windowMs: number): Promise<number> {
    const now = clock.now();
    this.sweep(now);
    const win = Math.max(1, Math.round(windowMs));
    const bucket = rateBucket(now, win);
    const memo = this.rateMemo;
    if (memo) {
      const kept = memo.add(key, win, bucket, amount, Date.now());
      if (kept) {
        this.scheduleRateFlush();
        return rateEstimate(now, win, kept.bucket, kept.prev, kept.cur);
      }
      // Not fresh, or the window moved on: what this key has pending goes first, in its own window.
      const pending = memo.take(key);
      if (pending) this.writeRate(pending);
    }
    const row = this.writeRate({ key, win, bucket, amount });
    memo?.set(key, row, Date.now());
    return rateEstimate(now, win, row.bucket, row.prev, row.cur);
  }

  async rateGet(key: string, windowMs: number): Promise<number> {
    const now = clock.now();
    const win = Math.max(1, Math.round(windowMs));
    const memo = this.rateMemo;
    if (memo) {
      const kept = memo.get(key, win, Date.now());
      if (kept) return rateEstimate(now, win, kept.bucket, kept.prev, kept.cur);
      // Not fresh: what this key has pending is written before the file is read.
      const pending = memo.take(key);
      if (pending) this.writeRate(pending);
    }
    const row = this.s('rateGet').get(key, now) as { win: number; bucket: number; prev: number; cur: number } | undefined;
    if (row !== undefined && row.win !== win) return 0; // counted in another window length: what rateAdd starts again
    // No row: counted as an empty one, so the next reads and additions stay in memory too.
    const r = row ?? { win, bucket: rateBucket(now, win), prev: 0, cur: 0 };
    memo?.set(key, r, Date.now());
    return rateEstimate(now, win, r.bucket, r.prev, r.cur);
  }

  async close(): Promise<void> {
    this.flushRates();
    this.endBatch();
    this.db.close();
  }
}
