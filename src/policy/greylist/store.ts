// Greylisting's state in the shared Store (issue 11), for the check, `mxguard greylist` and the
// admin API alike. Every entry lives in the Store's cache with a TTL, so nothing needs sweeping
// and several mxguard hosts on one Redis share it:
//   grey:t:<key>       a triplet (or, in ip mode, a network): {"first":…, "passed":…, "tries":…}
//   grey:allow:<net>   an allowed client network: {"at":…, "by":"auto"|"admin"}
//   counter grey:passes:<net>   greylisted triplets of the network that passed (auto_allow)
// The decision itself reads the times inside the record (src/policy/greylist/decide.ts), never a
// TTL: a record is judged the same on SQLite and on Redis, whatever clock expires it.
import type { Store } from '../../store/store.ts';
import type { GreyRecord } from './decide.ts';
import { clock } from '../../util/clock.ts';
import { canonicalIp, clientNetwork } from '../../util/cidr.ts';
import { normaliseSender } from './key.ts';

const TRIPLET = 'grey:t:';
const ALLOW = 'grey:allow:';
const PASSES = 'grey:passes:';

/** An allowed network: since when, and who allowed it. */
export interface Allowed {
  readonly at: number;
  readonly by: 'auto' | 'admin';
}

export interface GreyEntry {
  readonly key: string;
  readonly record: GreyRecord;
}

export interface GreyStats {
  /** Triplets waiting for their retry. */
  readonly grey: number;
  /** Triplets that passed and are remembered. */
  readonly passed: number;
  /** Allowed networks, by who allowed them. */
  readonly allowedAuto: number;
  readonly allowedAdmin: number;
}

/** Seconds since the epoch, on util/clock.ts. */
export function nowSec(): number {
  return Math.floor(clock.now() / 1000);
}

export class GreyStore {
  private readonly store: Store;

  constructor(store: Store) {
    this.store = store;
  }

  async get(key: string): Promise<GreyRecord | undefined> {
    return parseRecord(await this.store.cacheGet(TRIPLET + key));
  }

  /** Keeps the record as long as it can still matter: its retry window while grey, `expire` once passed. */
  async put(key: string, record: GreyRecord, ttlMs: number): Promise<void> {
    await this.store.cacheSet(TRIPLET + key, JSON.stringify(record), ttlMs);
  }

  async allowed(net: string): Promise<Allowed | undefined> {
    return parseAllowed(await this.store.cacheGet(ALLOW + net));
  }

  async allow(net: string, by: Allowed['by'], ttlMs: number): Promise<void> {
    await this.store.cacheSet(ALLOW + net, JSON.stringify({ at: nowSec(), by }), ttlMs);
  }

  /** Counts one more greylisted triplet of `net` that passed; resolves with the count in the window. */
  async countPass(net: string, windowMs: number): Promise<number> {
    return this.store.counterIncr(PASSES + net, windowMs);
  }

  async list(): Promise<{ triplets: GreyEntry[]; allowed: Array<{ net: string } & Allowed> }> {
    const triplets: GreyEntry[] = [];
    for (const e of await this.store.cacheList(TRIPLET)) {
      const record = parseRecord(e.value);
      if (record) triplets.push({ key: e.key.slice(TRIPLET.length), record });
    }
    const allowed: Array<{ net: string } & Allowed> = [];
    for (const e of await this.store.cacheList(ALLOW)) {
      const net = e.key.slice(ALLOW.length);
      const a = parseAllowed(e.value);
      if (a) allowed.push({ net, ...a });
    }
    return { triplets, allowed };
  }

  async stats(): Promise<GreyStats> {
    const { triplets, allowed } = await this.list();
    const passed = triplets.filter((t) => t.record.passed !== undefined).length;
    const allowedAdmin = allowed.filter((a) => a.by === 'admin').length;
    return { grey: triplets.length - passed, passed, allowedAuto: allowed.length - allowedAdmin, allowedAdmin };
  }

  /** Lets a waiting triplet through now (a login link must not wait): it is passed from now on. */
  async release(key: string, ttlMs: number): Promise<boolean> {
    const record = await this.get(key);
    if (record === undefined) return false;
    await this.put(key, { first: record.first, passed: nowSec() }, ttlMs);
    return true;
  }

  /** Forgets triplets and allowed networks by their keys (as `list` shows them); resolves with how many were there. */
  async delete(keys: readonly string[]): Promise<number> {
    let n = 0;
    for (const k of keys) {
      if (await this.store.cacheDelete(TRIPLET + k)) n++;
      else if (await this.store.cacheDelete(ALLOW + k)) n++;
    }
    return n;
  }
}

function parseAllowed(v: string | undefined): Allowed | undefined {
  if (v === undefined) return undefined;
  try {
    const a = JSON.parse(v) as Allowed;
    return typeof a.at === 'number' && (a.by === 'auto' || a.by === 'admin') ? a : undefined;
  } catch {
    return undefined; // a damaged entry allows nothing
  }
}

function parseRecord(v: string | undefined): GreyRecord | undefined {
  if (v === undefined) return undefined;
  try {
    const r = JSON.parse(v) as GreyRecord;
    if (typeof r.first !== 'number' || (r.passed !== undefined && typeof r.passed !== 'number') || (r.tries !== undefined && typeof r.tries !== 'number')) return undefined;
    return r;
  } catch {
    return undefined; // a damaged record is a new triplet, never a pass
  }
}

/**
 * The greylisting networks an administrator's `allow IP|CIDR` covers: the /24 (IPv6 /64) of an
 * address or of a narrower network, each /24 of a network from /16 (IPv6 each /64 from /56).
 * Wider ones belong in greylist.allow_clients, which takes any CIDR without a Store entry each.
 */
export function networksToAllow(text: string): string[] | { error: string } {
  const slash = text.indexOf('/');
  const ip = canonicalIp(slash === -1 ? text : text.slice(0, slash));
  if (ip === undefined) return { error: `${JSON.stringify(text)} is not an IP address or CIDR` };
  const v6 = ip.includes(':');
  const bits = slash === -1 ? (v6 ? 128 : 32) : Number(text.slice(slash + 1));
  const unit = v6 ? 64 : 24;
  const widest = v6 ? 56 : 16;
  if (!Number.isInteger(bits) || bits < 0 || bits > (v6 ? 128 : 32)) return { error: `${JSON.stringify(text)}: bad prefix length` };
  if (bits < widest) return { error: `${text} is wider than /${widest}: list it in greylist.allow_clients instead` };
  if (bits >= unit) return [clientNetwork(ip) as string];
  const count = 2 ** (unit - bits);
  const out: string[] = [];
  if (!v6) {
    const base = ip.split('.').map(Number).reduce((a, b) => a * 256 + b, 0) & ~(2 ** (32 - bits) - 1);
    for (let i = 0; i < count; i++) {
      const n = (base >>> 0) + i * 256;
      out.push(`${[24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.')}`);
    }
    return out.map((a) => clientNetwork(a) as string);
  }
  // IPv6: the 4th group carries bits 48..63; walk the /64s under the prefix.
  const groups = expandV6(ip);
  const g4 = groups[3] as number;
  const mask = 0xffff & ~(2 ** (64 - bits) - 1);
  for (let i = 0; i < count; i++) {
    const parts = [...groups.slice(0, 3), (g4 & mask) + i, 0, 0, 0, 0];
    out.push(clientNetwork(parts.map((p) => p.toString(16)).join(':')) as string);
  }
  return out;
}

function expandV6(ip: string): number[] {
  const [head, tail] = ip.split('::') as [string, string | undefined];
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const zeros = tail === undefined ? [] : Array<string>(8 - h.length - t.length).fill('0');
  return [...h, ...zeros, ...t].map((g) => parseInt(g, 16));
}

/**
 * The key of a triplet as an administrator names it: as `list` prints it (one argument), or as
 * `IP SENDER RECIPIENT` (three; in ip mode the IP alone), normalised as the check does.
 */
export function keyFromArgs(mode: 'triplet' | 'ip', args: readonly string[]): string | { error: string } {
  const strip = (a: string): string => a.replace(/^<(.*)>$/, '$1');
  if (args.length === 1 && (args[0] as string).includes('|')) return args[0] as string;
  const ip = args[0] === undefined ? undefined : canonicalIp(args[0]);
  const net = ip === undefined ? undefined : clientNetwork(ip);
  if (net === undefined) return { error: `expected the key as \`list\` shows it, or ${mode === 'ip' ? 'IP' : 'IP SENDER RECIPIENT'}` };
  if (mode === 'ip') return args.length === 1 ? net : { error: 'in ip mode a key is the client IP alone' };
  if (args.length !== 3) return { error: 'expected IP SENDER RECIPIENT (the sender may be <> for the null sender)' };
  return `${net}|${normaliseSender(strip(args[1] as string))}|${strip(args[2] as string).toLowerCase()}`;
}
