// A Store that reads the real one and writes nowhere (`mxguard explain`, issue 14): every write
// is answered as if it were done and kept in memory for this process only, so that a check that
// counts and then reads (rates, greylisting over several recipients) sees its own writes, while
// the file or the Redis the daemon shares stays exactly as it was. The writes not made are listed
// (`writes`), so explain can say what a real session would have changed.
import type { CacheEntry, Relayer, Store } from './store.ts';

/** Writes kept in the list at most: one explain makes a handful; the bound only guards the memory. */
const MAX_WRITES_LISTED = 1000;

/** One write that was answered but not made. */
export interface SkippedWrite {
  readonly op: 'relayerAdd' | 'relayerDelete' | 'relayerExpire' | 'counterIncr' | 'counterDecr' | 'counterReset' | 'cacheSet' | 'cacheDelete' | 'rateAdd';
  readonly key: string;
  /** The value it would have written (cacheSet), or the amount (rateAdd). */
  readonly value?: string | number;
}

export class ReadOnlyStore implements Store {
  readonly kind: string;
  /** The writes that were answered but not made, in order. */
  readonly writes: SkippedWrite[] = [];
  private readonly inner: Store;
  /** Overlays of this process's own writes: a value, or null for "deleted here". */
  private readonly relayers = new Map<string, number | null>();
  private readonly counters = new Map<string, number>();
  private readonly cache = new Map<string, { value: string; expiresAt?: number } | null>();
  /** rateAdd amounts by key and window length. */
  private readonly rates = new Map<string, number>();

  constructor(inner: Store) {
    this.inner = inner;
    this.kind = `${inner.kind} (read-only)`;
  }

  private note(w: SkippedWrite): void {
    if (this.writes.length < MAX_WRITES_LISTED) this.writes.push(w);
  }

  async relayerAdd(ip: string, at: number, _keepMs?: number): Promise<void> {
    this.note({ op: 'relayerAdd', key: ip, value: at });
    this.relayers.set(ip, at);
  }

  async relayerGet(ip: string): Promise<number | undefined> {
    const mine = this.relayers.get(ip);
    if (mine !== undefined) return mine ?? undefined;
    return this.inner.relayerGet(ip);
  }

  async relayerDelete(ips: readonly string[]): Promise<number> {
    let n = 0;
    for (const ip of ips) {
      this.note({ op: 'relayerDelete', key: ip });
      if ((await this.relayerGet(ip)) !== undefined) n++;
      this.relayers.set(ip, null);
    }
    return n;
  }

  async relayerExpire(before: number): Promise<number> {
    this.note({ op: 'relayerExpire', key: String(before) });
    const old = (await this.relayerList()).filter((r) => r.at < before);
    for (const r of old) this.relayers.set(r.ip, null);
    return old.length;
  }

  async relayerList(): Promise<Relayer[]> {
    const byIp = new Map((await this.inner.relayerList()).map((r) => [r.ip, r.at]));
    for (const [ip, at] of this.relayers) {
      if (at === null) byIp.delete(ip);
      else byIp.set(ip, at);
    }
    return [...byIp].map(([ip, at]) => ({ ip, at })).sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : 0));
  }

  async counterIncr(key: string, _windowMs?: number): Promise<number> {
    this.note({ op: 'counterIncr', key });
    const v = (await this.counterGet(key)) + 1;
    this.counters.set(key, v);
    return v;
  }

  async counterGet(key: string): Promise<number> {
    return this.counters.get(key) ?? this.inner.counterGet(key);
  }

  async counterDecr(key: string): Promise<void> {
    this.note({ op: 'counterDecr', key });
    this.counters.set(key, Math.max(0, (await this.counterGet(key)) - 1));
  }

  async counterReset(key: string): Promise<void> {
    this.note({ op: 'counterReset', key });
    this.counters.set(key, 0);
  }

  async cacheSet(key: string, value: string, ttlMs: number): Promise<void> {
    this.note({ op: 'cacheSet', key, value });
    this.cache.set(key, { value, expiresAt: Date.now() + ttlMs });
  }

  async cacheGet(key: string): Promise<string | undefined> {
    const mine = this.cache.get(key);
    if (mine !== undefined) return mine?.value;
    return this.inner.cacheGet(key);
  }

  async cacheDelete(key: string): Promise<boolean> {
    this.note({ op: 'cacheDelete', key });
    const was = (await this.cacheGet(key)) !== undefined;
    this.cache.set(key, null);
    return was;
  }

  async cacheList(prefix: string): Promise<CacheEntry[]> {
    const byKey = new Map((await this.inner.cacheList(prefix)).map((e) => [e.key, e]));
    for (const [key, e] of this.cache) {
      if (!key.startsWith(prefix)) continue;
      if (e === null) byKey.delete(key);
      else byKey.set(key, { key, value: e.value, ...(e.expiresAt !== undefined ? { expiresAt: e.expiresAt } : {}) });
    }
    return [...byKey.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async rateAdd(key: string, amount: number, windowMs: number): Promise<number> {
    this.note({ op: 'rateAdd', key, value: amount });
    const k = `${windowMs} ${key}`;
    this.rates.set(k, (this.rates.get(k) ?? 0) + amount);
    return this.rateGet(key, windowMs);
  }

  async rateGet(key: string, windowMs: number): Promise<number> {
    return Math.max(0, (await this.inner.rateGet(key, windowMs)) + (this.rates.get(`${windowMs} ${key}`) ?? 0));
  }

  /** Closes the real store too: the read-only one owns it. */
  async close(): Promise<void> {
    await this.inner.close();
  }
}
