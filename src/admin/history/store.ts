// The transaction history (issue 14): each finished transaction's trace (src/policy/trace.ts)
// kept in a bounded ring on disk, data_dir/history.sqlite (node:sqlite, WAL), for /api/history
// and the dashboard. The SMTP hot path only pushes the trace into memory: rows are written in
// batches (one transaction of SQLite per FLUSH_MS, or on the next turn of the event loop once
// FLUSH_ROWS wait: never in the caller's stack), and the oldest beyond history.keep are deleted
// with each batch, TRIM_CHUNK rows at a time (a lowered keep is worked off a chunk per turn, so
// that a million extra rows do not stall the SMTP sessions). A failed write loses that batch and
// is logged: history is a view of the mail flow, never part of it.
//
// The per-minute counts of /api/stats are kept in memory as traces arrive (seeded from the file
// at start, so a restart does not blank the last hour).
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import fs from 'node:fs';
import path from 'node:path';
import type { RefusedRcpt, TraceEntry, TraceOutcome, TransactionTrace } from '../../policy/trace.ts';
import type { Logger } from '../../util/log.ts';
import { historySql, OUTCOMES, type HistoryQuery } from './query.ts';

/** Write what arrived within this long in one SQLite transaction. */
const FLUSH_MS = 500;
/** …or on the next turn of the event loop once this many wait. */
export const FLUSH_ROWS = 500;
/** Rows beyond history.keep deleted at most per SQLite statement; more wait for the next turn. */
export const TRIM_CHUNK = 10_000;
/** Check entries kept per transaction (a dictionary attack's RCPTs each add theirs); the rest are counted in entriesOmitted. */
export const MAX_ENTRIES = 500;
/** Traces held in memory at most while writes fail or lag; more are dropped (and counted in the log). */
const MAX_PENDING = 20_000;
const MINUTE = 60_000;
/** /api/stats covers this many minutes. */
export const STATS_MINUTES = 60;

/** One transaction as /api/history serves it. */
export interface HistoryItem {
  readonly seq: number;
  /** When the transaction ended (ms since the epoch). */
  readonly at: number;
  readonly sid: string;
  readonly ip: string;
  readonly helo?: string;
  readonly mailFrom: string;
  readonly rcpts: readonly string[];
  readonly refused: readonly RefusedRcpt[];
  readonly id?: string;
  readonly size?: number;
  readonly entries: readonly TraceEntry[];
  /** Entries left out beyond MAX_ENTRIES (the latest ones are kept: they hold the decision). */
  readonly entriesOmitted?: number;
  readonly score: number;
  readonly reply?: string;
  readonly outcome: TraceOutcome;
}

/** One minute of /api/stats: transactions by outcome, and by the check that refused them. */
export interface MinuteStats {
  t: number;
  accepted: number;
  refused: number;
  tempfailed: number;
  discarded: number;
  aborted: number;
  byCheck: Record<string, number>;
}

const SCHEMA = `
  PRAGMA synchronous = NORMAL;
  CREATE TABLE IF NOT EXISTS tx (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    ip TEXT NOT NULL,
    sender TEXT NOT NULL,
    rcpts TEXT NOT NULL,
    outcome TEXT NOT NULL,
    checks TEXT NOT NULL,
    refused_by TEXT NOT NULL,
    record TEXT NOT NULL
  );
  CREATE INDEX IF NOT EXISTS tx_at ON tx (at);
  CREATE INDEX IF NOT EXISTS tx_ip ON tx (ip);
`;
// sender, rcpts: lower-case, for the substring search (rcpts: accepted and refused, one a line);
// checks: ",a,b," the checks with a verdict other than continue; refused_by: ",a," those that refused.

/** The checks that refused the transaction or one of its recipients, each once. */
export function refusingChecks(t: Pick<TransactionTrace, 'entries' | 'refused'>): string[] {
  const out = new Set<string>();
  for (const e of t.entries) if (e.verdict === 'reject' || e.verdict === 'tempfail') out.add(e.check);
  for (const r of t.refused ?? []) out.add(r.check);
  return [...out];
}

/** The checks that gave a verdict other than continue, each once. */
export function actingChecks(t: Pick<TransactionTrace, 'entries' | 'refused'>): string[] {
  const out = new Set<string>();
  for (const e of t.entries) if (e.verdict !== 'continue') out.add(e.check);
  for (const r of t.refused ?? []) out.add(r.check);
  return [...out];
}

const list = (names: readonly string[]): string => (names.length === 0 ? '' : `,${names.join(',')},`);

/** The record kept: the trace as /api/history serves it, times rounded to 0.1 ms. */
function recordOf(t: TransactionTrace, at: number): Omit<HistoryItem, 'seq'> {
  return {
    at,
    sid: t.sid,
    ip: t.ip,
    ...(t.helo !== undefined ? { helo: t.helo } : {}),
    mailFrom: t.mailFrom,
    rcpts: t.rcpts,
    refused: t.refused ?? [],
    ...(t.id !== undefined ? { id: t.id } : {}),
    ...(t.size !== undefined ? { size: t.size } : {}),
    entries: t.entries.slice(-MAX_ENTRIES).map((e) => ({ ...e, ms: Math.round(e.ms * 10) / 10 })),
    ...(t.entries.length > MAX_ENTRIES ? { entriesOmitted: t.entries.length - MAX_ENTRIES } : {}),
    score: t.score,
    ...(t.reply !== undefined ? { reply: t.reply } : {}),
    outcome: t.outcome,
  };
}

function emptyMinute(t: number): MinuteStats {
  return { t, accepted: 0, refused: 0, tempfailed: 0, discarded: 0, aborted: 0, byCheck: {} };
}

export class HistoryStore {
  private readonly db: DatabaseSync;
  private readonly insert: StatementSync;
  private readonly trim: StatementSync;
  private readonly byId: StatementSync;
  private readonly log: Logger;
  private keep: number;
  private pending: { t: TransactionTrace; at: number }[] = [];
  private timer: NodeJS.Timeout | undefined;
  /** A flush due on the next turn (FLUSH_ROWS waiting). */
  private flushSoon: NodeJS.Immediate | undefined;
  /** The next chunk of rows beyond keep to delete. */
  private trimming: NodeJS.Immediate | undefined;
  private dropped = 0;
  /** Minute start (ms) → its counts, the last STATS_MINUTES minutes. */
  private readonly minutes = new Map<number, MinuteStats>();
  private closed = false;

  constructor(file: string, opts: { keep: number; log: Logger }) {
    this.keep = opts.keep;
    this.log = opts.log;
    fs.mkdirSync(path.dirname(file), { recursive: true });
    this.db = new DatabaseSync(file, { timeout: 5000 });
    this.db.exec('PRAGMA journal_mode = WAL');
    this.db.exec(SCHEMA);
    this.insert = this.db.prepare('INSERT INTO tx (at, ip, sender, rcpts, outcome, checks, refused_by, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)');
    this.trim = this.db.prepare('DELETE FROM tx WHERE seq IN (SELECT seq FROM tx WHERE seq <= (SELECT MAX(seq) FROM tx) - ? ORDER BY seq LIMIT ?)');
    this.byId = this.db.prepare('SELECT seq, record FROM tx WHERE seq = ?');
    this.seedMinutes(Date.now());
  }

  /** history.keep changed (SIGHUP): rows beyond a lower one are deleted from the next turn on, a chunk per turn. */
  setKeep(keep: number): void {
    this.keep = keep;
    this.trimSoon();
  }

  /** A transaction ended (the SMTP hot path: memory only). */
  add(t: TransactionTrace, at = Date.now()): void {
    if (this.closed) return;
    this.count(at, t.outcome, refusingChecks(t));
    if (this.pending.length >= MAX_PENDING) {
      this.dropped++;
      return;
    }
    this.pending.push({ t, at });
    if (this.pending.length >= FLUSH_ROWS) {
      // Soon, not now: this is the SMTP session's trace callback.
      if (this.flushSoon === undefined) {
        this.flushSoon = setImmediate(() => this.flush());
        this.flushSoon.unref();
      }
    } else if (this.timer === undefined && this.flushSoon === undefined) {
      this.timer = setTimeout(() => this.flush(), FLUSH_MS);
      this.timer.unref();
    }
  }

  /** Writes what waits, in one SQLite transaction, and deletes the rows beyond history.keep. */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    clearImmediate(this.flushSoon);
    this.flushSoon = undefined;
    if (this.pending.length === 0 || this.closed) return;
    const batch = this.pending;
    this.pending = [];
    try {
      this.db.exec('BEGIN');
      for (const { t, at } of batch) {
        const rcpts = [...t.rcpts, ...(t.refused ?? []).map((r) => r.rcpt)].join('\n').toLowerCase();
        this.insert.run(at, t.ip, t.mailFrom.toLowerCase(), rcpts, t.outcome, list(actingChecks(t)), list(refusingChecks(t)), JSON.stringify(recordOf(t, at)));
      }
      const trimmed = Number(this.trim.run(this.keep, TRIM_CHUNK).changes);
      this.db.exec('COMMIT');
      if (trimmed >= TRIM_CHUNK) this.trimSoon();
    } catch (err) {
      if (this.db.isTransaction) this.db.exec('ROLLBACK');
      this.log.warn({ component: 'history', err: (err as Error).message, lost: batch.length }, 'could not write the transaction history');
    }
    if (this.dropped > 0) {
      this.log.warn({ component: 'history', lost: this.dropped }, 'transaction history fell behind: traces dropped');
      this.dropped = 0;
    }
  }

  /** The transactions a query matches, newest first. */
  search(q: HistoryQuery): HistoryItem[] {
    this.flush();
    const { sql, args } = historySql(q);
    return this.db
      .prepare(sql)
      .all(...args)
      .map((row) => itemOf(row));
  }

  get(seq: number): HistoryItem | undefined {
    this.flush();
    const row = this.byId.get(seq);
    return row === undefined ? undefined : itemOf(row);
  }

  /** The last STATS_MINUTES minutes up to `now`, oldest first, every minute present. */
  stats(now = Date.now()): MinuteStats[] {
    const last = Math.floor(now / MINUTE) * MINUTE;
    const out: MinuteStats[] = [];
    for (let t = last - (STATS_MINUTES - 1) * MINUTE; t <= last; t += MINUTE) {
      const m = this.minutes.get(t);
      out.push(m ? { ...m, byCheck: { ...m.byCheck } } : emptyMinute(t));
    }
    return out;
  }

  close(): void {
    if (this.closed) return;
    this.flush();
    clearImmediate(this.trimming);
    this.trimming = undefined;
    this.closed = true;
    this.db.close();
  }

  /** Deletes the next TRIM_CHUNK rows beyond keep on the next turn, and so on while more are left. */
  private trimSoon(): void {
    if (this.trimming !== undefined || this.closed) return;
    this.trimming = setImmediate(() => {
      this.trimming = undefined;
      if (this.closed) return;
      try {
        if (Number(this.trim.run(this.keep, TRIM_CHUNK).changes) >= TRIM_CHUNK) this.trimSoon();
      } catch (err) {
        this.log.warn({ component: 'history', err: (err as Error).message }, 'could not delete old transaction history rows');
      }
    });
    this.trimming.unref();
  }

  private count(at: number, outcome: TraceOutcome, refusedBy: readonly string[]): void {
    const t = Math.floor(at / MINUTE) * MINUTE;
    let m = this.minutes.get(t);
    if (m === undefined) {
      m = emptyMinute(t);
      this.minutes.set(t, m);
      // A new minute: forget those out of the window (the Map keeps insertion order, oldest first).
      for (const k of this.minutes.keys()) {
        if (k > t - STATS_MINUTES * MINUTE) break;
        this.minutes.delete(k);
      }
    }
    if ((OUTCOMES as readonly string[]).includes(outcome)) m[outcome]++;
    for (const c of refusedBy) m.byCheck[c] = (m.byCheck[c] ?? 0) + 1;
  }

  private seedMinutes(now: number): void {
    const from = Math.floor(now / MINUTE) * MINUTE - (STATS_MINUTES - 1) * MINUTE;
    const rows = this.db.prepare('SELECT at, outcome, refused_by FROM tx WHERE at >= ? ORDER BY at').all(from);
    for (const r of rows) {
      const refusedBy = String(r.refused_by);
      this.count(Number(r.at), String(r.outcome) as TraceOutcome, refusedBy === '' ? [] : refusedBy.slice(1, -1).split(','));
    }
  }
}

function itemOf(row: Record<string, unknown>): HistoryItem {
  return { seq: Number(row.seq), ...(JSON.parse(String(row.record)) as Omit<HistoryItem, 'seq'>) };
}
