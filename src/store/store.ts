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

  close(): Promise<void>;
}

/** Thrown when the backend cannot be reached; the message says which and why. */
export class StoreUnavailable extends Error {
  override readonly name = 'StoreUnavailable';
}
