// The embedded Store: one SQLite file (node:sqlite, WAL) under data_dir. Reads skip expired
// rows; a sweep at most once a minute deletes them. The calls are synchronous and take
// microseconds, so they run on the event loop; the API is async to match the Redis store.
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import fs from 'node:fs';
import path from 'node:path';
import type { Relayer, Store } from './store.ts';

const SWEEP_EVERY_MS = 60_000;

export class SqliteStore implements Store {
  readonly kind = 'sqlite';
  private readonly db: DatabaseSync;
  private readonly stmt: Record<string, StatementSync>;
  private lastSweep = 0;

  constructor(file: string) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    this.db = new DatabaseSync(file);
    // WAL: readers never wait for the writer; NORMAL: durable across a crash of this process
    // (state here is soft: losing the last second of it after a power cut is harmless).
    this.db.exec(`
      PRAGMA journal_mode = WAL;
      PRAGMA synchronous = NORMAL;
      PRAGMA busy_timeout = 5000;
      CREATE TABLE IF NOT EXISTS relayers (ip TEXT PRIMARY KEY, at INTEGER NOT NULL, expires INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires INTEGER NOT NULL);
    `);
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
      cacheSet: this.db.prepare('INSERT INTO cache (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires'),
      cacheGet: this.db.prepare('SELECT value FROM cache WHERE key = ? AND expires > ?'),
      cacheDelete: this.db.prepare('DELETE FROM cache WHERE key = ? AND expires > ?'),
      sweepCache: this.db.prepare('DELETE FROM cache WHERE expires <= ?'),
      sweepRelayers: this.db.prepare('DELETE FROM relayers WHERE expires <= ?'),
      sweepCounters: this.db.prepare('DELETE FROM counters WHERE expires <= ?'),
    } as Record<string, StatementSync>;
  }

  private s(name: string): StatementSync {
    return this.stmt[name] as StatementSync;
  }

  private sweep(now: number): void {
    if (now - this.lastSweep < SWEEP_EVERY_MS) return;
    this.lastSweep = now;
    this.s('sweepRelayers').run(now);
    this.s('sweepCounters').run(now);
    this.s('sweepCache').run(now);
  }

  async relayerAdd(ip: string, at: number, keepMs: number): Promise<void> {
    const now = Date.now();
    this.sweep(now);
    this.s('relayerAdd').run(ip, at, now + keepMs);
  }

  async relayerGet(ip: string): Promise<number | undefined> {
    const row = this.s('relayerGet').get(ip, Date.now()) as { at: number } | undefined;
    return row?.at;
  }

  async relayerDelete(ips: readonly string[]): Promise<number> {
    let n = 0;
    for (const ip of ips) n += Number(this.s('relayerDelete').run(ip).changes);
    return n;
  }

  async relayerExpire(before: number): Promise<number> {
    return Number(this.s('relayerExpire').run(before).changes);
  }

  async relayerList(): Promise<Relayer[]> {
    return (this.s('relayerList').all(Date.now()) as Array<{ ip: string; at: number }>).map((r) => ({ ip: r.ip, at: r.at }));
  }

  async counterIncr(key: string, windowMs: number): Promise<number> {
    const now = Date.now();
    this.sweep(now);
    const row = this.s('counterIncr').get(key, now, windowMs) as { value: number };
    return row.value;
  }

  async counterGet(key: string): Promise<number> {
    const row = this.s('counterGet').get(key, Date.now()) as { value: number } | undefined;
    return row?.value ?? 0;
  }

  async counterReset(key: string): Promise<void> {
    this.s('counterReset').run(key);
  }

  async cacheSet(key: string, value: string, ttlMs: number): Promise<void> {
    const now = Date.now();
    this.sweep(now);
    this.s('cacheSet').run(key, value, now + ttlMs);
  }

  async cacheGet(key: string): Promise<string | undefined> {
    const row = this.s('cacheGet').get(key, Date.now()) as { value: string } | undefined;
    return row?.value;
  }

  async cacheDelete(key: string): Promise<boolean> {
    return Number(this.s('cacheDelete').run(key, Date.now()).changes) > 0;
  }

  async close(): Promise<void> {
    this.db.close();
  }
}
