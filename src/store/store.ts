// The Store: all shared policy state behind one interface, so no check knows whether it talks
// to the embedded SQLite file or to a Redis several mxguard hosts share. Every entry expires by
// itself (expiry is part of the interface): no cron job keeps the store small.
//
// Errors: a method rejects when its backend is unreachable (Redis down). The policy engine turns
// a check that throws into 451 4.3.0, so such trouble delays mail and never opens the gate.

/** One POP-before-SMTP relayer: a client IP and when it last logged in (epoch seconds). */
export interface Relayer {
  readonly ip: string;
  readonly at: number;
}

/** One live cache entry (cacheList): its key, value and when it expires (epoch ms on util/clock.ts). */
export interface CacheEntry {
  readonly key: string;
  readonly value: string;
  readonly expiresAt?: number;
}

export interface Store {
  /** "sqlite" or "redis", for logs. */
  readonly kind: string;

  /** Records a login from `ip` at `at` (epoch seconds, may lie in the future); kept `keepMs`. */
  relayerAdd(ip: string, at: number, keepMs: number): Promise<void>;
  /** When `ip` last logged in, or undefined. */
  relayerGet(ip: string): Promise<number | undefined>;
  /** Removes these IPs; resolves with how many were there. */
  relayerDelete(ips: readonly string[]): Promise<number>;
  /** Removes every entry older than `before` (epoch seconds); future-dated ones stay. */
  relayerExpire(before: number): Promise<number>;
  /** Every entry, future-dated ones included, sorted by IP. */
  relayerList(): Promise<Relayer[]>;

  /**
   * Adds one to a counter and returns the new value. A counter lives `windowMs` from its first
   * increment, then starts again from zero (a fixed window: auth failures, rate limits).
   */
  counterIncr(key: string, windowMs: number): Promise<number>;
  /** The counter's value, 0 when absent or expired. */
  counterGet(key: string): Promise<number>;
  /** Takes one back from a live counter (never below 0, its window unchanged): an attempt counted ahead and then forgiven. */
  counterDecr(key: string): Promise<void>;
  counterReset(key: string): Promise<void>;

  /**
   * A small key/value cache (recipient callout answers): `value` is kept `ttlMs`, then gone.
   * Setting a key again replaces its value and starts its time again.
   */
  cacheSet(key: string, value: string, ttlMs: number): Promise<void>;
  /** The value, or undefined when absent or expired. */
  cacheGet(key: string): Promise<string | undefined>;
  /** Forgets the key; resolves with whether it was there. */
  cacheDelete(key: string): Promise<boolean>;
  /** Every live entry whose key starts with `prefix` (no wildcards: the prefix is literal), sorted by key. */
  cacheList(prefix: string): Promise<CacheEntry[]>;

  /**
   * A rate (limits.rates, the throttle): adds `amount` to the counter `key` and returns its count
   * over the last `windowMs`, this amount included. The count is a sliding-window ESTIMATE from
   * two fixed windows (Cloudflare's and nginx's approximation): the current window
   * floor(now / windowMs) counts in full, the previous one in proportion to the part of it still
   * inside the sliding window. Two numbers per key, kept atomically (one SQL statement, one Redis
   * script); "now" is util/clock.ts on both backends. A key lives two windows after its last
   * addition, then it is gone: no counter leaks when a host dies.
   */
  rateAdd(key: string, amount: number, windowMs: number): Promise<number>;
  // A negative amount takes back what was added (a count is never below 0 in its window).
  /** The count over the last `windowMs` as rateAdd reckons it, without adding; 0 for an unknown key. */
  rateGet(key: string, windowMs: number): Promise<number>;

  close(): Promise<void>;
}

/** Thrown when the backend cannot be reached; the message says which and why. */
export class StoreUnavailable extends Error {
  override readonly name = 'StoreUnavailable';
}
