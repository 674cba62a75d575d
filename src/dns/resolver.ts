// The DNS every check stands on: sender domain, reverse DNS, DNS blocklists, RHSBLs. Built on
// node:dns's Resolver (c-ares) with the servers from `dns.servers`, and on three promises:
//
// 1. No lookup ever throws. Each answer is one of three outcomes a mail check must treat
//    differently: `ok` (records), `nxdomain` (the name or the record type does not exist: a
//    permanent answer, 5xx material) and `error` (SERVFAIL, timeout, REFUSED, no server: a
//    temporary condition, never a reason to reject — 4xx at most).
// 2. No public method takes longer than `timeoutMs`, whatever c-ares does: every lookup is raced
//    against a deadline, and the composite ones (dnsblQuery, forwardConfirmed, domainExists)
//    share one deadline for all their questions.
// 3. Answers are cached for their TTL (LRU, bounded), negative answers for a short time, errors
//    never. Concurrent questions for the same name and type share one query.
//
// NXDOMAIN vs NODATA: c-ares reports rcode NXDOMAIN as ENOTFOUND ("no such name") and a NOERROR
// answer without records of the asked type as ENODATA ("the name exists, not this type"); both
// are `{ kind: 'nxdomain' }`, told apart by `nodata`. An answer that is only a CNAME chain (a
// dangling alias) comes back from c-ares as an empty list; it counts as NODATA too.
//
// TTLs: node:dns reports TTLs for A and AAAA only (`ttl: true`). Other types are cached for
// `defaultTtlSec`; a DNSBL's TXT reason is cached as long as its A answer. Every TTL is capped at
// `maxTtlSec`. The authority section (the SOA minimum of a negative answer) is not exposed by
// node:dns, so negative answers are cached for `negativeTtlSec`.
import dns from 'node:dns';
import net from 'node:net';
import { domainToASCII } from 'node:url';
import type { Logger } from '../util/log.ts';
import { clock } from '../util/clock.ts';
import { metrics } from '../util/metrics.ts';

// --- result types ---------------------------------------------------------------------------

/** Why a lookup gave no usable answer; all of them are temporary conditions except `invalid`. */
export type DnsErrorCode = 'timeout' | 'servfail' | 'refused' | 'unreachable' | 'invalid' | 'other';

export interface DnsOk<T> {
  readonly kind: 'ok';
  /** Never empty (an empty answer is NODATA). */
  readonly records: readonly T[];
  /** Seconds this answer stays valid (remaining, when it comes from the cache). */
  readonly ttl: number;
}

/** NXDOMAIN (`nodata: false`: no such name) or NODATA (`nodata: true`: name exists, no records of this type). */
export interface DnsNegative {
  readonly kind: 'nxdomain';
  readonly nodata: boolean;
}

export interface DnsError {
  readonly kind: 'error';
  readonly code: DnsErrorCode;
  /** For logs and SMTP texts, e.g. "MX example.com: SERVFAIL". */
  readonly reason: string;
}

export type DnsResult<T> = DnsOk<T> | DnsNegative | DnsError;

export interface MxRecord {
  /** Lower case, no trailing dot; '' is the root (null MX). */
  readonly exchange: string;
  readonly priority: number;
}

/** An MX answer; a null MX (RFC 7505: the single record `0 .`) is its own kind. */
export type MxResult = DnsOk<MxRecord> | { readonly kind: 'null-mx'; readonly ttl: number } | DnsNegative | DnsError;

/** A DNSBL / RHSBL answer: `records` are the A answers (e.g. 127.0.0.2), `reason` the TXT. */
export type ListResult =
  | (DnsOk<string> & {
      /** The name that was asked, e.g. 2.0.0.127.zen.example. */
      readonly name: string;
      /** The TXT record(s) of that name, joined with "; "; undefined when there is none (or it failed). */
      readonly reason: string | undefined;
    })
  | DnsNegative
  | DnsError;

export type ForwardConfirmedResult =
  /** `name` (from the PTR) resolves back to the IP. */
  | { readonly kind: 'confirmed'; readonly name: string }
  /** No PTR record (NXDOMAIN or NODATA). */
  | { readonly kind: 'no-ptr' }
  /** PTR names exist, but none of them resolves back to the IP. */
  | { readonly kind: 'unconfirmed'; readonly names: readonly string[] }
  | DnsError;

export type DomainExistsResult =
  /** Mail can be routed: MX records, or (no MX) an A or AAAA record (RFC 5321 implicit MX). */
  | { readonly kind: 'exists'; readonly via: 'mx' | 'a' | 'aaaa' }
  /** RFC 7505: the domain says it takes no mail. */
  | { readonly kind: 'null-mx' }
  /** `nodata: false`: the domain does not exist. `nodata: true`: it exists with no MX, A or AAAA. */
  | DnsNegative
  | DnsError;

export interface DnsResolverOptions {
  /** "ip:port", "[ipv6]:port" or a bare IP (port 53); empty = the system's resolvers. */
  readonly servers: readonly string[];
  /** No public method takes longer than this. */
  readonly timeoutMs: number;
  readonly log?: Logger;
  /** Cached answers kept at most (least recently used go first). Default 5000. */
  readonly cacheSize?: number;
  /** How long NXDOMAIN/NODATA is cached, seconds. Default 60. */
  readonly negativeTtlSec?: number;
  /** TTL assumed for answers whose TTL node:dns does not report (MX, TXT, PTR, NS). Default 300. */
  readonly defaultTtlSec?: number;
  /** No answer is cached longer than this, seconds. Default 3600. */
  readonly maxTtlSec?: number;
  /** Queries on the wire at once; more wait (within their deadline). Default 64. */
  readonly maxInflight?: number;
  /** Clock for the cache, ms (tests). Default util/clock.ts. */
  readonly now?: () => number;
}

// --- pure helpers ---------------------------------------------------------------------------

/** Normalises an IPv4-mapped IPv6 address (::ffff:1.2.3.4) to plain IPv4. */
function unmapIp(ip: string): string {
  const lower = ip.toLowerCase();
  return lower.startsWith('::ffff:') && net.isIPv4(lower.slice(7)) ? lower.slice(7) : ip;
}

/** The 32 hex nibbles of an IPv6 address, or undefined when it is not one. */
export function expandIpv6(ip: string): string | undefined {
  if (!net.isIPv6(ip) || ip.includes('%')) return undefined;
  let text = ip.toLowerCase();
  // An embedded IPv4 tail (::ffff:1.2.3.4, 64:ff9b::1.2.3.4) becomes two hex groups.
  const lastColon = text.lastIndexOf(':');
  const tail = text.slice(lastColon + 1);
  if (tail.includes('.')) {
    const o = tail.split('.').map(Number);
    const hex = (a: number | undefined, b: number | undefined): string => (((a ?? 0) << 8) | (b ?? 0)).toString(16);
    text = `${text.slice(0, lastColon + 1)}${hex(o[0], o[1])}:${hex(o[2], o[3])}`;
  }
  const halves = text.split('::');
  const head = halves[0] === '' ? [] : (halves[0] ?? '').split(':');
  const rest = halves.length > 1 ? (halves[1] === '' ? [] : (halves[1] ?? '').split(':')) : [];
  const groups = halves.length > 1 ? [...head, ...Array<string>(8 - head.length - rest.length).fill('0'), ...rest] : head;
  if (groups.length !== 8) return undefined;
  return groups.map((g) => g.padStart(4, '0')).join('');
}

/**
 * The reversed form of an IP as DNS reverse zones and DNSBLs want it: IPv4 octets reversed
 * (1.2.3.4 → 4.3.2.1), IPv6 nibbles reversed (2001:db8::1 → 1.0.0.…8.b.d.0.1.0.0.2).
 * An IPv4-mapped IPv6 address counts as IPv4. Undefined for anything that is not an IP.
 */
export function reverseIp(ip: string): { readonly family: 4 | 6; readonly reversed: string } | undefined {
  const addr = unmapIp(ip.trim());
  if (net.isIPv4(addr)) return { family: 4, reversed: addr.split('.').reverse().join('.') };
  const nibbles = expandIpv6(addr);
  if (nibbles === undefined) return undefined;
  return { family: 6, reversed: [...nibbles].reverse().join('.') };
}

/** 4.3.2.1.in-addr.arpa / …ip6.arpa for an IP; undefined when it is not one. */
export function ptrName(ip: string): string | undefined {
  const r = reverseIp(ip);
  if (r === undefined) return undefined;
  return `${r.reversed}.${r.family === 4 ? 'in-addr.arpa' : 'ip6.arpa'}`;
}

/** An IP in one comparable form: IPv4 dotted (mapped ones unmapped), IPv6 as 32 nibbles. */
export function ipKey(ip: string): string | undefined {
  const addr = unmapIp(ip.trim());
  if (net.isIPv4(addr)) return addr;
  return expandIpv6(addr);
}

const LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/;

/**
 * A domain name in the form we ask for and cache under: lower case, no trailing dot, IDNs as
 * A-labels (punycode). Undefined when it cannot be a DNS name.
 */
export function normalizeName(name: string): string | undefined {
  let n = name.trim();
  if (n.endsWith('.')) n = n.slice(0, -1);
  if (/[^\x21-\x7e]/.test(n)) {
    if (/[\s\x00-\x1f\x7f]/.test(n)) return undefined;
    n = domainToASCII(n);
  }
  n = n.toLowerCase();
  if (n === '' || n.length > 253) return undefined;
  return n.split('.').every((l) => LABEL.test(l)) ? n : undefined;
}

/** Exchanges lower-cased without the trailing dot, sorted by priority (ties keep server order). */
export function sortMx(records: readonly { exchange: string; priority: number }[]): MxRecord[] {
  return records
    .map((r) => ({ exchange: r.exchange.toLowerCase().replace(/\.$/, ''), priority: r.priority }))
    .sort((a, b) => a.priority - b.priority);
}

/**
 * RFC 7505 null MX: the domain's only MX points to the root ("0 ."). We accept any preference
 * (the RFC says 0) as long as it is the only record; a root MX among real ones is not a null MX
 * (callers drop it: nothing can be delivered to ".").
 */
export function isNullMx(records: readonly MxRecord[]): boolean {
  return records.length === 1 && records[0]?.exchange === '';
}

/** A server entry for Resolver.setServers: "ip:port", "[v6]:port", or a bare IP. */
export function serverAddress(entry: string): string {
  const text = entry.trim();
  if (net.isIP(text) !== 0) return text;
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(text);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (host === undefined || net.isIP(host) === 0 || !(port > 0 && port < 65536)) {
    throw new Error(`dns.servers: "${entry}" is not an IP address with an optional port (e.g. 127.0.0.1:53, [::1]:53)`);
  }
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

// --- the cache ------------------------------------------------------------------------------

/** A bounded map whose entries expire; least recently used entries go first when full. */
export class TtlCache<V> {
  private readonly map = new Map<string, { value: V; expiresAt: number }>();
  private readonly maxEntries: number;
  private readonly now: () => number;

  constructor(maxEntries: number, now: () => number = Date.now) {
    this.maxEntries = Math.max(1, maxEntries);
    this.now = now;
  }

  get size(): number {
    return this.map.size;
  }

  /** The value and its remaining lifetime in ms, or undefined when absent or expired. */
  get(key: string): { value: V; remainingMs: number } | undefined {
    const e = this.map.get(key);
    if (e === undefined) return undefined;
    const remainingMs = e.expiresAt - this.now();
    this.map.delete(key);
    if (remainingMs <= 0) return undefined;
    this.map.set(key, e); // most recently used goes to the end
    return { value: e.value, remainingMs };
  }

  /** Keeps value for ttlMs (nothing is kept for ttlMs <= 0). */
  set(key: string, value: V, ttlMs: number): void {
    this.map.delete(key);
    if (ttlMs <= 0) return;
    this.map.set(key, { value, expiresAt: this.now() + ttlMs });
    while (this.map.size > this.maxEntries) {
      const oldest = this.map.keys().next();
      if (oldest.done === true) break;
      this.map.delete(oldest.value);
    }
  }

  clear(): void {
    this.map.clear();
  }
}

// --- the resolver ---------------------------------------------------------------------------

interface RecordTypes {
  A: string;
  AAAA: string;
  MX: MxRecord;
  TXT: string;
  PTR: string;
  NS: string;
}
type RrType = keyof RecordTypes;

type Cacheable = DnsOk<unknown> | DnsNegative;

const ERROR_CODES: Readonly<Record<string, DnsErrorCode>> = {
  [dns.TIMEOUT]: 'timeout',
  [dns.SERVFAIL]: 'servfail',
  [dns.REFUSED]: 'refused',
  [dns.CONNREFUSED]: 'unreachable',
};

/** A promise that settles with `fallback()` when `ms` passes first. */
function within<T>(p: Promise<T>, ms: number, fallback: () => T): Promise<T> {
  if (ms <= 0) return Promise.resolve(fallback());
  return new Promise<T>((resolve) => {
    const timer = setTimeout(() => resolve(fallback()), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      () => {
        // lookups never reject; keep the fallback for safety
        clearTimeout(timer);
        resolve(fallback());
      },
    );
  });
}

/** Resolves with the first result that passes `good`, or with all results when none does. */
function firstGood<T>(ps: readonly Promise<T>[], good: (v: T) => boolean): Promise<{ hit: T } | { all: T[] }> {
  return new Promise((resolve) => {
    const all: T[] = new Array<T>(ps.length);
    let left = ps.length;
    if (left === 0) resolve({ all: [] });
    ps.forEach((p, i) => {
      void p.then((v) => {
        all[i] = v;
        if (good(v)) resolve({ hit: v });
        if (--left === 0) resolve({ all });
      });
    });
  });
}

const MAX_PTR_NAMES = 10;

export class DnsResolver {
  readonly timeoutMs: number;
  private readonly resolver: dns.promises.Resolver;
  private readonly log: Logger | undefined;
  private readonly cache: TtlCache<Cacheable>;
  private readonly inflight = new Map<string, Promise<DnsResult<unknown>>>();
  private readonly negativeTtlSec: number;
  private readonly defaultTtlSec: number;
  private readonly maxTtlSec: number;
  private readonly maxInflight: number;
  private readonly now: () => number;
  private active = 0;
  private readonly waiting: { wake: () => void; cancelled: boolean }[] = [];

  constructor(opts: DnsResolverOptions) {
    this.timeoutMs = Math.max(1, Math.floor(opts.timeoutMs));
    this.log = opts.log;
    this.now = opts.now ?? (() => clock.now());
    this.cache = new TtlCache<Cacheable>(opts.cacheSize ?? 5000, this.now);
    this.negativeTtlSec = opts.negativeTtlSec ?? 60;
    this.defaultTtlSec = opts.defaultTtlSec ?? 300;
    this.maxTtlSec = opts.maxTtlSec ?? 3600;
    this.maxInflight = Math.max(1, opts.maxInflight ?? 64);
    // c-ares doubles its timeout on each retry (and rounds short ones up), so a second try gets
    // a third of the budget first; our own deadline bounds the whole thing anyway.
    const tries = this.timeoutMs >= 400 ? 2 : 1;
    const perTry = tries === 2 ? Math.floor(this.timeoutMs / 3) : this.timeoutMs;
    this.resolver = new dns.promises.Resolver({ timeout: perTry, tries, maxTimeout: this.timeoutMs });
    if (opts.servers.length > 0) this.resolver.setServers(opts.servers.map(serverAddress));
  }

  /** The servers in use, as node:dns reports them. */
  servers(): string[] {
    return this.resolver.getServers();
  }

  /** Forgets every cached answer. */
  clearCache(): void {
    this.cache.clear();
  }

  a(name: string): Promise<DnsResult<string>> {
    return this.lookup('A', name, this.deadline());
  }

  aaaa(name: string): Promise<DnsResult<string>> {
    return this.lookup('AAAA', name, this.deadline());
  }

  /** MX records sorted by priority; the null MX is `{ kind: 'null-mx' }`. */
  mx(name: string): Promise<MxResult> {
    return this.mxBy(name, this.deadline());
  }

  /** TXT records, each record's strings joined (as SPF and DKIM want them). */
  txt(name: string): Promise<DnsResult<string>> {
    return this.lookup('TXT', name, this.deadline());
  }

  /** PTR names of an IP (IPv4 or IPv6), lower case without the trailing dot. */
  ptr(ip: string): Promise<DnsResult<string>> {
    const name = ptrName(ip);
    if (name === undefined) return Promise.resolve(invalid(`PTR: "${ip}" is not an IP address`));
    return this.lookup('PTR', name, this.deadline());
  }

  /** PTR records of a reverse name as asked (`4.3.2.1.in-addr.arpa`): SPF's ptr mechanism names them itself. */
  ptrByName(name: string): Promise<DnsResult<string>> {
    return this.lookup('PTR', name, this.deadline());
  }

  ns(name: string): Promise<DnsResult<string>> {
    return this.lookup('NS', name, this.deadline());
  }

  /**
   * Asks DNSBL `zone` about `ip`: A of <reversed ip>.<zone>, and when listed its TXT (the
   * reason). NXDOMAIN (or NODATA) means not listed. A TXT that fails leaves `reason` undefined.
   */
  dnsblQuery(ip: string, zone: string): Promise<ListResult> {
    const r = reverseIp(ip);
    if (r === undefined) return Promise.resolve(invalid(`DNSBL ${zone}: "${ip}" is not an IP address`));
    return this.listQuery(`${r.reversed}.${zone}`, this.deadline());
  }

  /** Asks RHSBL `zone` about `domain`: A (and TXT when listed) of <domain>.<zone>. */
  rhsblQuery(domain: string, zone: string): Promise<ListResult> {
    const d = normalizeName(domain);
    if (d === undefined) return Promise.resolve(invalid(`RHSBL ${zone}: "${domain}" is not a domain name`));
    return this.listQuery(`${d}.${zone}`, this.deadline());
  }

  /**
   * tcpserver -p ("paranoid"): the PTR names of `ip`, then the A (IPv4) or AAAA (IPv6) records
   * of each (the first ten); confirmed when one of them contains `ip`. A lookup that fails while
   * none confirms makes the whole answer an error: "unconfirmed" is only said when it is sure.
   */
  async forwardConfirmed(ip: string): Promise<ForwardConfirmedResult> {
    try {
      const deadline = this.deadline();
      const key = ipKey(ip);
      const pname = ptrName(ip);
      if (key === undefined || pname === undefined) return invalid(`PTR: "${ip}" is not an IP address`);
      const type = key.includes('.') ? 'A' : 'AAAA';
      const ptr = await this.lookup('PTR', pname, deadline);
      if (ptr.kind === 'error') return ptr;
      if (ptr.kind === 'nxdomain') return { kind: 'no-ptr' };
      const names = [...new Set(ptr.records.map((n) => normalizeName(n)).filter((n) => n !== undefined))].slice(0, MAX_PTR_NAMES);
      if (names.length === 0) return { kind: 'unconfirmed', names: ptr.records };
      const checks = names.map(async (name) => ({ name, res: await this.lookup(type, name, deadline) }));
      const matches = (v: { res: DnsResult<string> }): boolean => v.res.kind === 'ok' && v.res.records.some((a) => ipKey(a) === key);
      const out = await firstGood(checks, matches);
      if ('hit' in out) return { kind: 'confirmed', name: out.hit.name };
      const failed = out.all.find((v) => v.res.kind === 'error');
      if (failed !== undefined && failed.res.kind === 'error') return failed.res;
      return { kind: 'unconfirmed', names };
    } catch (err) {
      return this.unexpected('forwardConfirmed', ip, err);
    }
  }

  /**
   * Can mail be routed to `domain` (MAIL FROM's "sender domain must exist")? MX first; only
   * when the name exists without MX records, A and AAAA (RFC 5321 implicit MX).
   */
  async domainExists(domain: string): Promise<DomainExistsResult> {
    try {
      const deadline = this.deadline();
      const mx = await this.mxBy(domain, deadline);
      switch (mx.kind) {
        case 'ok':
          return { kind: 'exists', via: 'mx' };
        case 'null-mx':
          return { kind: 'null-mx' };
        case 'error':
          return mx;
        case 'nxdomain':
          if (!mx.nodata) return mx;
      }
      const byType = (type: 'A' | 'AAAA'): Promise<{ via: 'a' | 'aaaa'; res: DnsResult<string> }> =>
        this.lookup(type, domain, deadline).then((res) => ({ via: type === 'A' ? 'a' : 'aaaa', res }));
      const out = await firstGood([byType('A'), byType('AAAA')], (v) => v.res.kind === 'ok');
      if ('hit' in out) return { kind: 'exists', via: out.hit.via };
      const failed = out.all.find((v) => v.res.kind === 'error');
      if (failed !== undefined && failed.res.kind === 'error') return failed.res;
      return { kind: 'nxdomain', nodata: true };
    } catch (err) {
      return this.unexpected('domainExists', domain, err);
    }
  }

  // --- internals ----------------------------------------------------------------------------

  private deadline(): number {
    return Date.now() + this.timeoutMs;
  }

  private async mxBy(name: string, deadline: number): Promise<MxResult> {
    const res = await this.lookup('MX', name, deadline);
    if (res.kind !== 'ok') return res;
    const real = res.records.filter((r) => r.exchange !== '');
    if (isNullMx(res.records) || real.length === 0) return { kind: 'null-mx', ttl: res.ttl };
    return real.length === res.records.length ? res : { kind: 'ok', records: real, ttl: res.ttl };
  }

  private async listQuery(rawName: string, deadline: number): Promise<ListResult> {
    const name = normalizeName(rawName);
    if (name === undefined) return invalid(`"${rawName}" is not a domain name`);
    const a = await this.lookup('A', name, deadline);
    if (a.kind !== 'ok') return a;
    const txt = await this.lookup('TXT', name, deadline, a.ttl);
    const reason = txt.kind === 'ok' ? txt.records.join('; ') : undefined;
    return { kind: 'ok', name, records: a.records, ttl: a.ttl, reason };
  }

  /** One question: from the cache, from a query already under way, or asked now; by `deadline`. */
  private async lookup<T extends RrType>(type: T, rawName: string, deadline: number, ttlHintSec?: number): Promise<DnsResult<RecordTypes[T]>> {
    try {
      const name = normalizeName(rawName);
      if (name === undefined) return invalid(`${type}: "${rawName}" is not a domain name`);
      const key = `${type} ${name}`;
      const hit = this.cache.get(key);
      if (hit !== undefined) {
        const v = hit.value;
        metrics.dnsCacheHit(type);
        this.log?.debug({ dns: type, name, kind: v.kind, cached: true }, 'dns lookup');
        return (v.kind === 'ok' ? { ...v, ttl: Math.ceil(hit.remainingMs / 1000) } : v) as DnsResult<RecordTypes[T]>;
      }
      let p = this.inflight.get(key);
      if (p === undefined) {
        p = this.ask(type, name, ttlHintSec);
        this.inflight.set(key, p);
        const mine = p;
        void mine.then(() => {
          if (this.inflight.get(key) === mine) this.inflight.delete(key);
        });
      }
      const left = deadline - Date.now();
      return (await within(p, left, () => timedOut(type, name, this.timeoutMs))) as DnsResult<RecordTypes[T]>;
    } catch (err) {
      return this.unexpected(type, rawName, err);
    }
  }

  /** Puts one question on the wire (within the budget and the in-flight limit) and caches the answer. */
  private async ask(type: RrType, name: string, ttlHintSec: number | undefined): Promise<DnsResult<unknown>> {
    const started = Date.now();
    const deadline = started + this.timeoutMs;
    const slot = await this.acquire(deadline);
    if (!slot) return timedOut(type, name, this.timeoutMs);
    let res: DnsResult<unknown>;
    try {
      res = await within(this.query(type, name, ttlHintSec), deadline - Date.now(), () => timedOut(type, name, this.timeoutMs));
    } finally {
      this.release();
    }
    if (res.kind === 'ok') this.cache.set(`${type} ${name}`, res, res.ttl * 1000);
    else if (res.kind === 'nxdomain') this.cache.set(`${type} ${name}`, res, this.negativeTtlSec * 1000);
    const ms = Date.now() - started;
    metrics.dnsLookup(type, res.kind === 'error' ? res.code : res.kind === 'nxdomain' && (res as DnsNegative).nodata ? 'nodata' : res.kind);
    if (res.kind === 'error') this.log?.warn({ dns: type, name, code: res.code, ms }, `dns lookup failed: ${res.reason}`);
    else this.log?.debug({ dns: type, name, kind: res.kind, ms }, 'dns lookup');
    return res;
  }

  /** The c-ares call itself, its answer or error turned into a result. */
  private async query(type: RrType, name: string, ttlHintSec: number | undefined): Promise<DnsResult<unknown>> {
    const r = this.resolver;
    try {
      let records: unknown[];
      let ttl = ttlHintSec ?? this.defaultTtlSec;
      switch (type) {
        case 'A':
        case 'AAAA': {
          const rr = type === 'A' ? await r.resolve4(name, { ttl: true }) : await r.resolve6(name, { ttl: true });
          records = rr.map((x) => x.address);
          ttl = rr.reduce((min, x) => Math.min(min, x.ttl), Number.POSITIVE_INFINITY);
          break;
        }
        case 'MX':
          records = sortMx(await r.resolveMx(name));
          break;
        case 'TXT':
          records = (await r.resolveTxt(name)).map((chunks) => chunks.join(''));
          break;
        case 'PTR':
          records = (await r.resolvePtr(name)).map((n) => n.toLowerCase().replace(/\.$/, ''));
          break;
        case 'NS':
          records = (await r.resolveNs(name)).map((n) => n.toLowerCase().replace(/\.$/, ''));
          break;
      }
      if (records.length === 0) return { kind: 'nxdomain', nodata: true };
      return { kind: 'ok', records, ttl: Math.max(0, Math.min(Math.floor(ttl), this.maxTtlSec)) };
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === dns.NOTFOUND) return { kind: 'nxdomain', nodata: false };
      if (code === dns.NODATA) return { kind: 'nxdomain', nodata: true };
      const known = typeof code === 'string' ? ERROR_CODES[code] : undefined;
      const what = known === 'timeout' ? 'timeout' : known === 'servfail' ? 'SERVFAIL' : known === 'refused' ? 'REFUSED' : known === 'unreachable' ? 'no DNS server reachable' : String(code ?? (err as Error).message);
      return { kind: 'error', code: known ?? 'other', reason: `${type} ${name}: ${what}` };
    }
  }

  /** Waits for a slot among maxInflight; false when the deadline passes first. */
  private acquire(deadline: number): Promise<boolean> {
    if (this.active < this.maxInflight) {
      this.active++;
      return Promise.resolve(true);
    }
    return new Promise<boolean>((resolve) => {
      const waiter = {
        cancelled: false,
        wake: () => {
          clearTimeout(timer);
          this.active++;
          resolve(true);
        },
      };
      const timer = setTimeout(() => {
        waiter.cancelled = true;
        resolve(false);
      }, Math.max(0, deadline - Date.now()));
      this.waiting.push(waiter);
    });
  }

  private release(): void {
    this.active--;
    while (this.waiting.length > 0 && this.active < this.maxInflight) {
      const w = this.waiting.shift();
      if (w !== undefined && !w.cancelled) w.wake();
    }
  }

  private unexpected(what: string, name: string, err: unknown): DnsError {
    const reason = `${what} ${name}: ${err instanceof Error ? err.message : String(err)}`;
    this.log?.error({ dns: what, name, err }, 'dns lookup failed unexpectedly');
    return { kind: 'error', code: 'other', reason };
  }
}

function invalid(reason: string): DnsError {
  return { kind: 'error', code: 'invalid', reason };
}

function timedOut(type: string, name: string, ms: number): DnsError {
  return { kind: 'error', code: 'timeout', reason: `${type} ${name}: no answer within ${ms} ms` };
}

/**
 * One resolver while the dns settings stay the same, so its cache survives a reload; a new one
 * when they change. (A reload asks for it several times before it is applied.)
 */
export class ResolverForSettings {
  private current: { settings: string; resolver: DnsResolver } | undefined;

  get(config: { dns: { servers: readonly string[]; timeout: number } }, log?: Logger): DnsResolver {
    const settings = JSON.stringify(config.dns);
    if (this.current?.settings !== settings) this.current = { settings, resolver: new DnsResolver({ servers: config.dns.servers, timeoutMs: config.dns.timeout, ...(log ? { log } : {}) }) };
    return this.current.resolver;
  }
}
