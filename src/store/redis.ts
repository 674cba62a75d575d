// The shared Store: Redis through node-redis, for several mxguard hosts behind one MX name.
// Keys are `<prefix>relayer:<ip>` (value: epoch seconds, with a TTL), `<prefix>counter:<key>`
// (INCR, with the window as TTL set on the first increment), `<prefix>cache:<key>` (a string
// with its TTL) and `<prefix>rate:<key>` (a hash: window, bucket, previous and current count,
// with a TTL of two windows). Redis expires them itself, on its own clock: unlike the SQLite
// store, TTLs cannot follow util/clock.ts, so advanceClock() in a test does not expire anything
// here (the Redis tests wait in real time, briefly). Rates are the exception: the script is given
// util/clock.ts's "now", so their windows move with it on both stores.
//
// While Redis is away, commands fail at once (no offline queue) or after COMMAND_TIMEOUT_MS,
// as StoreUnavailable; the client reconnects in the background and the store works again as
// soon as Redis is back. Nothing here may crash the process.
import { createClient } from '@redis/client';
import type { CacheEntry, Relayer, Store } from './store.ts';
import { StoreUnavailable } from './store.ts';
import type { Logger } from '../util/log.ts';
import { clock } from '../util/clock.ts';

const COMMAND_TIMEOUT_MS = 2000;

type RedisReply = string | number | null | RedisReply[];

export class RedisStore implements Store {
  readonly kind = 'redis';
  private readonly client: ReturnType<typeof createClient>;
  private readonly prefix: string;
  private readonly log: Logger | undefined;
  private lastErrorLog = 0;

  private constructor(url: string, prefix: string, log: Logger | undefined) {
    this.prefix = prefix;
    this.log = log;
    this.client = createClient({
      url,
      disableOfflineQueue: true,
      socket: { connectTimeout: COMMAND_TIMEOUT_MS, reconnectStrategy: (retries: number) => Math.min(100 * 2 ** retries, 2000) },
    });
    // Without an 'error' listener node-redis would throw: log, at most every 10 s.
    this.client.on('error', (err: Error) => {
      const now = Date.now();
      if (now - this.lastErrorLog > 10_000) {
        this.lastErrorLog = now;
        this.log?.warn({ store: 'redis', err: err.message }, 'redis unavailable; checks that need it answer 451 until it is back');
      }
    });
    this.client.on('ready', () => this.log?.info({ store: 'redis' }, 'redis connected'));
  }

  /** Connects; a Redis that is down now does not stop mxguard from starting. */
  static async open(url: string, prefix = 'mxguard:', log?: Logger): Promise<RedisStore> {
    const store = new RedisStore(url, prefix, log);
    const connected = store.client.connect().then(
      () => true,
      () => false,
    );
    await Promise.race([connected, new Promise((r) => setTimeout(r, COMMAND_TIMEOUT_MS))]);
    return store;
  }

  /** One command, as StoreUnavailable when Redis is not there or does not answer in time. */
  private async cmd(args: string[]): Promise<RedisReply> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return (await Promise.race<unknown>([
        this.client.sendCommand(args),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${COMMAND_TIMEOUT_MS} ms`)), COMMAND_TIMEOUT_MS);
        }),
      ])) as RedisReply;
    } catch (err) {
      throw new StoreUnavailable(`redis: ${(err as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
  }

  private relayerKey(ip: string): string {
    return `${this.prefix}relayer:${ip}`;
  }

  private counterKey(key: string): string {
    return `${this.prefix}counter:${key}`;
  }

  private cacheKey(key: string): string {
    return `${this.prefix}cache:${key}`;
  }

  async relayerAdd(ip: string, at: number, keepMs: number): Promise<void> {
    // PX here and below: the TTL runs on the Redis server's clock, not util/clock.ts.
    await this.cmd(['SET', this.relayerKey(ip), String(at), 'PX', String(Math.max(1, Math.round(keepMs)))]);
  }

  async relayerGet(ip: string): Promise<number | undefined> {
    const v = await this.cmd(['GET', this.relayerKey(ip)]);
    return typeof v === 'string' ? Number(v) : undefined;
  }

  async relayerDelete(ips: readonly string[]): Promise<number> {
    if (ips.length === 0) return 0;
    return Number(await this.cmd(['DEL', ...ips.map((ip) => this.relayerKey(ip))]));
  }

  async relayerExpire(before: number): Promise<number> {
    const old = (await this.relayerList()).filter((r) => r.at < before);
    return this.relayerDelete(old.map((r) => r.ip));
  }

  async relayerList(): Promise<Relayer[]> {
    const keys: string[] = [];
    let cursor = '0';
    do {
      const [next, batch] = (await this.cmd(['SCAN', cursor, 'MATCH', `${this.relayerKey('')}*`, 'COUNT', '1000'])) as [string, string[]];
      cursor = next;
      keys.push(...batch);
    } while (cursor !== '0');
    if (keys.length === 0) return [];
    const values = (await this.cmd(['MGET', ...keys])) as Array<string | null>;
    const start = this.relayerKey('').length;
    const out: Relayer[] = [];
    keys.forEach((k, i) => {
      const v = values[i];
      if (typeof v === 'string') out.push({ ip: k.slice(start), at: Number(v) });
    });
    return out.sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : 0));
  }

  async counterIncr(key: string, windowMs: number): Promise<number> {
    const k = this.counterKey(key);
    // INCR, and the TTL only when the key has none yet (a fixed window from the first hit).
    const [value] = (await this.cmd(['EVAL', INCR_WITH_WINDOW, '1', k, String(Math.max(1, Math.round(windowMs)))])) as [number];
    return Number(value);
  }

  async counterGet(key: string): Promise<number> {
    const v = await this.cmd(['GET', this.counterKey(key)]);
    return typeof v === 'string' ? Number(v) : 0;
  }

  async counterReset(key: string): Promise<void> {
    await this.cmd(['DEL', this.counterKey(key)]);
  }

  async counterDecr(key: string): Promise<void> {
    await this.cmd(['EVAL', DECR_LIVE, '1', this.counterKey(key)]);
  }

  async cacheSet(key: string, value: string, ttlMs: number): Promise<void> {
    await this.cmd(['SET', this.cacheKey(key), value, 'PX', String(Math.max(1, Math.round(ttlMs)))]);
  }

  async cacheGet(key: string): Promise<string | undefined> {
    const v = await this.cmd(['GET', this.cacheKey(key)]);
    return typeof v === 'string' ? v : undefined;
  }

  async cacheDelete(key: string): Promise<boolean> {
    return Number(await this.cmd(['DEL', this.cacheKey(key)])) > 0;
  }

  async cacheList(prefix: string): Promise<CacheEntry[]> {
    const base = this.cacheKey('');
    const keys = await this.scan(`${globEscape(base + prefix)}*`);
    const out: CacheEntry[] = [];
    // Values and TTLs in batches, each one script: a key that expires between SCAN and here is left out.
    for (let i = 0; i < keys.length; i += 500) {
      const batch = keys.slice(i, i + 500);
      const now = clock.now();
      const rows = (await this.cmd(['EVAL', GET_WITH_PTTL, String(batch.length), ...batch])) as Array<[string, string, number]>;
      for (const [k, value, pttl] of rows) out.push({ key: k.slice(base.length), value, ...(pttl >= 0 ? { expiresAt: now + pttl } : {}) });
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async rateAdd(key: string, amount: number, windowMs: number): Promise<number> {
    return this.rate(key, amount, windowMs);
  }

  async rateGet(key: string, windowMs: number): Promise<number> {
    return this.rate(key, 0, windowMs);
  }

  /** The rate script: util/clock.ts's now goes in as an argument, so every host reckons on its own clock, as SQLite does. */
  private async rate(key: string, amount: number, windowMs: number): Promise<number> {
    const win = Math.max(1, Math.round(windowMs));
    const v = await this.cmd(['EVAL', RATE, '1', `${this.prefix}rate:${key}`, String(clock.now()), String(win), String(amount)]);
    return Number(v);
  }

  /** Every key matching a SCAN pattern (SCAN may return a key twice: deduplicated). */
  private async scan(match: string): Promise<string[]> {
    const keys = new Set<string>();
    let cursor = '0';
    do {
      const [next, batch] = (await this.cmd(['SCAN', cursor, 'MATCH', match, 'COUNT', '1000'])) as [string, string[]];
      cursor = next;
      for (const k of batch) keys.add(k);
    } while (cursor !== '0');
    return [...keys];
  }

  /** Closes gracefully, but not for ever: a Redis that does not answer (or never did) is cut off. */
  async close(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      if (this.client.isOpen) {
        const timeout = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), COMMAND_TIMEOUT_MS)));
        if ((await Promise.race([this.client.close(), timeout])) === 'timeout') this.client.destroy();
      }
    } catch {
      this.client.destroy();
    } finally {
      clearTimeout(timer);
    }
  }
}

// One round trip, atomic: INCR then PEXPIRE when the key has no TTL (works on Redis 6 and 7).
// DECR keeps the key's TTL; a key that is gone (its window over) or at 0 is left alone.
const DECR_LIVE = "local v = tonumber(redis.call('GET', KEYS[1])) if v and v > 0 then redis.call('DECR', KEYS[1]) end return 0";
const INCR_WITH_WINDOW = "local v = redis.call('INCR', KEYS[1]) if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return {v}";

/** A literal string in a SCAN MATCH pattern: Redis glob's special characters behind a backslash. */
export function globEscape(s: string): string {
  return s.replace(/[*?[\]\\^-]/g, (c) => `\\${c}`);
}

// {key, value, PTTL} for each key that still has a value (a string key: counters are another prefix).
const GET_WITH_PTTL = "local out = {} for _, k in ipairs(KEYS) do local v = redis.call('GET', k) if v then out[#out + 1] = {k, v, redis.call('PTTL', k)} end end return out";

// Store.rateAdd: the sliding-window estimate from two fixed windows (src/store/rate.ts does the
// same arithmetic for SQLite). ARGV: now (epoch ms), window (ms), amount (0: only read). Numbers
// go back as strings: Redis would truncate a Lua number to an integer.
const RATE = `
local now, win, amt = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = math.floor(now / win)
local h = redis.call('HMGET', KEYS[1], 'w', 'b', 'p', 'c')
local w, sb, p, c = tonumber(h[1]), tonumber(h[2]), tonumber(h[3]) or 0, tonumber(h[4]) or 0
if w ~= win or sb == nil then sb, p, c = b, 0, 0
elseif sb >= b then
elseif sb == b - 1 then sb, p, c = b, c, 0
else sb, p, c = b, 0, 0 end
if amt ~= 0 then
  c = math.max(0, c + amt)
  redis.call('HSET', KEYS[1], 'w', tostring(win), 'b', tostring(sb), 'p', tostring(p), 'c', tostring(c))
  redis.call('PEXPIRE', KEYS[1], 2 * win)
end
local f = (now - sb * win) / win
if f < 0 then f = 0 elseif f > 1 then f = 1 end
return tostring(p * (1 - f) + c)`;
