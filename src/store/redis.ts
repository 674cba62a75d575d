// The shared Store: Redis through node-redis, for several mxguard hosts behind one MX name.
// Keys are `<prefix>relayer:<ip>` (value: epoch seconds, with a TTL), `<prefix>counter:<key>`
// (INCR, with the window as TTL set on the first increment) and `<prefix>cache:<key>` (a string
// with its TTL). Redis expires them itself, on its own clock: unlike the SQLite store, this one
// cannot follow util/clock.ts, so advanceClock() in a test does not expire anything here (the
// Redis tests wait in real time, briefly).
//
// While Redis is away, commands fail at once (no offline queue) or after COMMAND_TIMEOUT_MS,
// as StoreUnavailable; the client reconnects in the background and the store works again as
// soon as Redis is back. Nothing here may crash the process.
import { createClient } from '@redis/client';
import type { Relayer, Store } from './store.ts';
import { StoreUnavailable } from './store.ts';
import type { Logger } from '../util/log.ts';

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

  async close(): Promise<void> {
    try {
      if (this.client.isOpen) await this.client.close();
    } catch {
      this.client.destroy();
    }
  }
}

// One round trip, atomic: INCR then PEXPIRE when the key has no TTL (works on Redis 6 and 7).
// DECR keeps the key's TTL; a key that is gone (its window over) or at 0 is left alone.
const DECR_LIVE = "local v = tonumber(redis.call('GET', KEYS[1])) if v and v > 0 then redis.call('DECR', KEYS[1]) end return 0";
const INCR_WITH_WINDOW = "local v = redis.call('INCR', KEYS[1]) if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return {v}";
