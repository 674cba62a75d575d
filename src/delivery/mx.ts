// Delivery by MX (RFC 5321 section 5), modelled on Postfix's smtp client: the recipients are
// grouped by domain, each domain's MX hosts are looked up and tried in preference order, one
// address after another, until a server gives a real answer. The SMTP conversation itself is
// src/smtp-client/client.ts: one pooled client per target address, created on first use.
//
// What ends a domain without a connection: a null MX (RFC 7505) or NXDOMAIN bounces, a DNS
// error defers, and an MX list that leads back to ourselves (RFC 5321 5.1) bounces as a loop.
//
// MTA-STS (RFC 8461, src/delivery/mta-sts.ts), when enabled: a domain's policy in mode enforce
// keeps only the MX hosts its patterns match (none left: the mail waits, 451 4.7.5) and makes
// every connection to them verified TLS for the MX host name (a certificate failure fails that
// address, never falls back to plain text); mode testing only logs what enforce would refuse.
import net from 'node:net';
import { ipKey, normalizeName, type DnsResolver, type MxRecord } from '../dns/resolver.ts';
import type { Logger } from '../util/log.ts';
import type { OutgoingMessage, RcptResult, Transport } from '../mail/transport.ts';
import { createSmtpTransport, type SmtpTlsMode } from '../smtp-client/client.ts';
import { domainOf } from './routes.ts';
import { MtaSts, mxMatches, type MtaStsOptions, type StsLookup } from './mta-sts.ts';

export interface MxTransportOptions {
  readonly dns: DnsResolver;
  readonly heloName: string;
  /** The port of every MX host (25; tests use a free port). */
  readonly port: number;
  /** Per target address, passed to createSmtpTransport. */
  readonly maxConnections: number;
  readonly connectTimeoutMs: number;
  readonly commandTimeoutMs: number;
  /** Our own host names and IP addresses: an MX that is one of them (or resolves to one) is never a target — a mail loop (RFC 5321 5.1). */
  readonly self: { readonly names: readonly string[]; readonly addresses: readonly string[] };
  readonly log?: Logger;
  /**
   * STARTTLS to MX hosts (src/smtp-client/client.ts, SmtpTlsMode): 'opportunistic' by default
   * (Postfix's smtp_tls_security_level=may), 'verify' checks the certificate for the MX host
   * name (a failure is a 421: the next address is tried), 'none' never.
   */
  readonly tls?: 'none' | 'opportunistic' | 'verify';
  /** Extra trust anchors (PEM) for certificates of MX hosts (verify mode, MTA-STS enforce). */
  readonly tlsCa?: string | Buffer;
  /**
   * How long a domain none of whose MX addresses answered is not tried again (its messages are
   * deferred at once meanwhile); 0: always tried. The queue uses its first retry wait.
   */
  readonly deadMs?: number;
  /** Per recipient domain ("example.net" or "*.example.net"): TLS for its MX hosts instead of `tls` (queue.tls_policy). */
  readonly tlsPolicy?: Readonly<Record<string, SmtpTlsMode>>;
  /** MTA-STS (RFC 8461): off when undefined. The policy fetch's options (its resolver is `dns`). */
  readonly mtaSts?: Omit<MtaStsOptions, 'dns' | 'log'>;
}

/**
 * Addresses tried per domain and delivery attempt, so that a domain with a long MX list cannot
 * hold a queue slot for many connect timeouts (Postfix: smtp_mx_address_limit, default 5).
 */
export const MAX_ADDRESSES = 10;

/** SMTP clients (one per MX address and name) kept at most. */
const MAX_CLIENTS = 1000;

/** One address to try: the MX host it belongs to (the domain itself for an implicit MX) and its IP. */
export interface MxTarget {
  readonly host: string;
  readonly addr: string;
  /** The domain's own TLS (queue.tls_policy), or verify for an MTA-STS policy in mode enforce; else the transport's. */
  readonly tls?: SmtpTlsMode;
}

/** The same answer for every recipient of a domain, decided without connecting. */
export interface MxVerdict {
  readonly status: 'temp' | 'perm';
  readonly code: number;
  readonly text: string;
}

export type MxRoute = { readonly kind: 'targets'; readonly targets: readonly MxTarget[] } | ({ readonly kind: 'verdict' } & MxVerdict);

/** The IP of an address literal domain ("[192.0.2.1]", "[ipv6:2001:db8::1]"), else undefined. */
export function addressLiteral(domain: string): string | undefined {
  if (!domain.startsWith('[') || !domain.endsWith(']')) return undefined;
  const inner = domain.slice(1, -1);
  if (net.isIPv4(inner)) return inner;
  if (inner.toLowerCase().startsWith('ipv6:') && net.isIPv6(inner.slice(5))) return inner.slice(5);
  return undefined;
}

/** MX records by preference, hosts of equal preference shuffled (RFC 5321 5.1: spread the load). */
export function orderMx(records: readonly MxRecord[], random: () => number = Math.random): MxRecord[] {
  const out = [...records].sort((a, b) => a.priority - b.priority);
  for (let start = 0; start < out.length; ) {
    let end = start + 1;
    while (end < out.length && out[end]?.priority === out[start]?.priority) end++;
    // Fisher-Yates within [start, end).
    for (let i = end - 1; i > start; i--) {
      const j = start + Math.floor(random() * (i - start + 1));
      [out[i], out[j]] = [out[j] as MxRecord, out[i] as MxRecord];
    }
    start = end;
  }
  return out;
}

/** An MX host with the addresses it resolved to (error: why it has none, when DNS failed). */
export interface ResolvedHost {
  readonly host: string;
  readonly priority: number;
  readonly addrs: readonly string[];
  readonly error?: string;
}

const TLS_RANK: Record<SmtpTlsMode, number> = { none: 0, opportunistic: 1, required: 2, verify: 3 };

/** A domain's entry in queue.tls_policy: the exact domain, else the longest *.parent that matches. */
export function tlsPolicyFor(domain: string, policy: Readonly<Record<string, SmtpTlsMode>> | undefined): SmtpTlsMode | undefined {
  if (policy === undefined) return undefined;
  const exact = policy[domain];
  if (exact !== undefined) return exact;
  let best: [number, SmtpTlsMode] | undefined;
  for (const [pattern, mode] of Object.entries(policy)) {
    if (pattern.startsWith('*.') && domain.endsWith(pattern.slice(1)) && (best === undefined || pattern.length > best[0])) best = [pattern.length, mode];
  }
  return best?.[1];
}

/**
 * The loop guard (RFC 5321 5.1): when a host is ourselves, by name or by one of its addresses,
 * it and every host of equal or worse preference go. Returns the hosts left and whether any
 * were dropped that way.
 */
export function dropSelf(hosts: readonly ResolvedHost[], isSelf: (h: ResolvedHost) => boolean): { hosts: ResolvedHost[]; looped: boolean } {
  let cut = Infinity;
  for (const h of hosts) if (h.priority < cut && isSelf(h)) cut = h.priority;
  return { hosts: hosts.filter((h) => h.priority < cut), looped: cut !== Infinity };
}

/**
 * A 421 (ours for a connect failure, timeout or lost connection, 4.4.1 / 4.4.2, or the server's
 * own "closing the connection") means this address gave no answer: the next one is tried.
 */
function connectionFailed(r: RcptResult): boolean {
  return r.status === 'temp' && r.code === 421;
}

class MxTransport implements Transport {
  readonly name = 'mx';
  readonly #opts: MxTransportOptions;
  readonly #selfNames: ReadonlySet<string>;
  readonly #selfAddrs: ReadonlySet<string>;
  /** One pooled SMTP client per target address and MX host name, by URL and name. */
  readonly #clients = new Map<string, Transport>();
  readonly #sts: MtaSts | undefined;
  /** Destinations whose every MX address failed to answer: until when they are not tried again, and why. */
  readonly #dead = new Map<string, { until: number; text: string }>();
  #closed = false;

  constructor(opts: MxTransportOptions) {
    this.#opts = opts;
    this.#sts = opts.mtaSts === undefined ? undefined : new MtaSts({ ...opts.mtaSts, dns: opts.dns, ...(opts.log ? { log: opts.log } : {}) });
    this.#selfNames = new Set(opts.self.names.map((n) => normalizeName(n) ?? n.toLowerCase()));
    this.#selfAddrs = new Set(opts.self.addresses.map((a) => ipKey(a) ?? a));
  }

  async deliver(msg: OutgoingMessage): Promise<RcptResult[]> {
    const byDomain = new Map<string, number[]>();
    msg.rcpts.forEach((rcpt, i) => {
      const d = domainOf(rcpt);
      const list = byDomain.get(d);
      if (list === undefined) byDomain.set(d, [i]);
      else list.push(i);
    });
    const out = new Array<RcptResult>(msg.rcpts.length);
    await Promise.all(
      [...byDomain].map(async ([domain, indices]) => {
        const results = await this.#deliverDomain(msg, domain, indices);
        indices.forEach((i, k) => (out[i] = results[k] as RcptResult));
      }),
    );
    return out;
  }

  async close(): Promise<void> {
    this.#closed = true;
    const clients = [...this.#clients.values()];
    this.#clients.clear();
    await Promise.all(clients.map((c) => c.close()));
  }

  /** Results for msg.rcpts[indices], in that order. */
  async #deliverDomain(msg: OutgoingMessage, domain: string, indices: readonly number[]): Promise<RcptResult[]> {
    const rcptAt = (i: number): string => msg.rcpts[i] ?? '';
    const all = (v: MxVerdict): RcptResult[] => indices.map((i) => ({ rcpt: rcptAt(i), status: v.status, code: v.code, text: v.text }));
    if (this.#closed) return all({ status: 'temp', code: 421, text: '4.3.2 transport is closed' });
    // A destination none of whose MX hosts answered a moment ago is not tried again yet: its
    // messages wait without holding a delivery slot through every connect timeout.
    const dead = this.#dead.get(domain);
    if (dead !== undefined) {
      const left = dead.until - Date.now();
      if (left > 0) return all({ status: 'temp', code: 421, text: `${dead.text} (not tried again for ${Math.ceil(left / 1000)} s)` });
      this.#dead.delete(domain);
    }

    let route: MxRoute;
    try {
      route = await this.#route(domain, msg.id);
    } catch (err) {
      // The resolver does not throw; this is a safety net for the "never throws" promise.
      return all({ status: 'temp', code: 451, text: `4.4.3 MX lookup for ${domain} failed: ${err instanceof Error ? err.message : String(err)}` });
    }
    if (route.kind === 'verdict') {
      this.#opts.log?.info({ id: msg.id, domain, result: `${route.status} ${route.code} ${route.text}` }, 'mx delivery');
      return all(route);
    }

    const results = new Map<number, RcptResult>();
    let pending = [...indices];
    let last: RcptResult | undefined;
    let tried = 0;
    for (const t of route.targets) {
      if (pending.length === 0) break;
      if (this.#closed) {
        last = { rcpt: '', status: 'temp', code: 421, text: '4.3.2 transport is closed' };
        break;
      }
      tried++;
      const got = await this.#client(t).deliver({ ...msg, rcpts: pending.map(rcptAt) });
      const where = `${t.host}[${t.addr}]:${this.#opts.port}`;
      const next: number[] = [];
      pending.forEach((i, k) => {
        const r = got[k] ?? { rcpt: rcptAt(i), status: 'temp', code: 451, text: '4.3.0 no result from the SMTP client' };
        if (connectionFailed(r)) {
          next.push(i);
          last = r;
        } else {
          // Keep the reply first (the DSN reads its status code there), then say who gave it.
          results.set(i, { ...r, rcpt: rcptAt(i), text: `${r.text} (host ${where})`, remoteMta: t.host });
        }
      });
      this.#opts.log?.info({ id: msg.id, domain, mx: t.host, addr: t.addr, result: summary(got) }, 'mx delivery attempt');
      pending = next;
    }
    for (const i of pending) {
      const code = last?.code ?? 421;
      const text = `${last?.text ?? '4.4.1 no answer'} (all ${tried} MX addresses of ${domain} tried)`;
      results.set(i, { rcpt: rcptAt(i), status: 'temp', code, text });
    }
    // No address gave any answer: the destination is dead for deadMs (a real answer ends that).
    const deadMs = this.#opts.deadMs ?? 0;
    if (pending.length === indices.length && tried > 0 && deadMs > 0) {
      if (this.#dead.size >= 10_000) this.#dead.clear();
      this.#dead.set(domain, { until: Date.now() + deadMs, text: `${last?.text ?? '4.4.1 no answer'} (all ${tried} MX addresses of ${domain} failed)` });
    }
    return indices.map((i) => results.get(i) as RcptResult);
  }

  /** Where mail for the domain goes, or why it cannot go anywhere. */
  async #route(domain: string, id: string): Promise<MxRoute> {
    const verdict = (status: MxVerdict['status'], code: number, text: string): MxRoute => ({ kind: 'verdict', status, code, text });
    const literal = addressLiteral(domain);
    if (literal !== undefined) {
      if (this.#isSelfAddr(literal)) return verdict('perm', 554, `5.4.6 mail for ${domain} loops back to myself`);
      return { kind: 'targets', targets: [{ host: domain, addr: literal }] };
    }
    const name = normalizeName(domain);
    if (name === undefined) return verdict('perm', 501, `5.1.3 bad recipient address syntax: no valid domain`);

    // The policy is looked up alongside the MX records (its lookup never throws).
    const stsLookup: Promise<StsLookup> | undefined = this.#sts?.lookup(name);
    const mx = await this.#opts.dns.mx(name);
    let hosts: MxRecord[];
    if (mx.kind === 'null-mx') return verdict('perm', 556, `5.1.10 domain ${name} does not accept mail (null MX)`);
    if (mx.kind === 'error') return verdict('temp', 451, `4.4.3 MX lookup for ${name} failed: ${mx.reason}`);
    if (mx.kind === 'nxdomain') {
      if (!mx.nodata) return verdict('perm', 550, `5.1.2 Host or domain name not found: domain ${name} not found`);
      hosts = [{ exchange: name, priority: 0 }]; // no MX: the domain is its own mail host (implicit MX)
    } else {
      // A root exchange among real ones cannot take mail: ignore it.
      hosts = orderMx(mx.records.filter((r) => r.exchange !== ''));
      if (hosts.length === 0) return verdict('perm', 556, `5.1.10 domain ${name} does not accept mail (null MX)`);
    }

    const resolved = await Promise.all(hosts.map((h) => this.#resolve(h)));
    const kept = dropSelf(resolved, (h) => this.#selfNames.has(h.host) || h.addrs.some((a) => this.#isSelfAddr(a)));
    if (kept.looped && kept.hosts.length === 0) return verdict('perm', 554, `5.4.6 mail for ${name} loops back to myself`);

    let enforce = false;
    const sts = await stsLookup;
    if (sts?.kind === 'policy' && sts.policy.mode !== 'none') {
      const { policy } = sts;
      const refused = kept.hosts.filter((h) => !mxMatches(h.host, policy.mx)).map((h) => h.host);
      if (policy.mode === 'testing') {
        if (refused.length > 0) this.#opts.log?.warn({ id, domain: name, sts_id: sts.id, refused, mx_patterns: policy.mx }, 'MTA-STS testing: enforce would refuse these MX hosts');
      } else {
        enforce = true;
        if (refused.length > 0) this.#opts.log?.info({ id, domain: name, sts_id: sts.id, refused, mx_patterns: policy.mx }, 'MTA-STS enforce: MX hosts outside the policy dropped');
        kept.hosts = kept.hosts.filter((h) => mxMatches(h.host, policy.mx));
        if (kept.hosts.length === 0) return verdict('temp', 451, `4.7.5 no MX host of ${name} matches its MTA-STS policy`);
      }
    }

    // The domain's TLS: its queue.tls_policy entry, and never less than verify under MTA-STS enforce.
    let domainTls = tlsPolicyFor(name, this.#opts.tlsPolicy);
    if (enforce && (domainTls === undefined || TLS_RANK[domainTls] < TLS_RANK.verify)) domainTls = 'verify';
    const targets: MxTarget[] = [];
    const seen = new Set<string>();
    const unresolved: string[] = [];
    let dnsError = false;
    for (const h of kept.hosts) {
      if (h.addrs.length === 0) {
        unresolved.push(`${h.host}: ${h.error ?? 'no address'}`);
        dnsError ||= h.error !== undefined;
        this.#opts.log?.info({ id, domain: name, mx: h.host, err: h.error ?? 'no address' }, 'mx host skipped: it does not resolve');
        continue;
      }
      for (const addr of h.addrs) {
        const key = ipKey(addr) ?? addr;
        if (seen.has(key)) continue;
        seen.add(key);
        targets.push(domainTls !== undefined ? { host: h.host, addr, tls: domainTls } : { host: h.host, addr });
      }
    }
    if (targets.length === 0) {
      const why = unresolved.join('; ');
      // A DNS failure may heal; names that do not exist will not (Postfix bounces with 5.4.4).
      if (dnsError) return verdict('temp', 451, `4.4.3 no mail host of ${name} could be resolved: ${why}`);
      return verdict('perm', 550, `5.4.4 Host or domain name not found: no mail host of ${name} has an address (${why})`);
    }
    return { kind: 'targets', targets: targets.slice(0, MAX_ADDRESSES) };
  }

  /** A host's IPv4 then IPv6 addresses. */
  async #resolve(h: MxRecord): Promise<ResolvedHost> {
    const answers = await Promise.all([this.#opts.dns.a(h.exchange), this.#opts.dns.aaaa(h.exchange)]);
    const addrs: string[] = [];
    const errors: string[] = [];
    for (const r of answers) {
      if (r.kind === 'ok') addrs.push(...r.records);
      else if (r.kind === 'error') errors.push(r.reason);
    }
    const base = { host: h.exchange, priority: h.priority, addrs };
    return addrs.length === 0 && errors.length > 0 ? { ...base, error: errors.join('; ') } : base;
  }

  #isSelfAddr(addr: string): boolean {
    return this.#selfAddrs.has(ipKey(addr) ?? addr);
  }

  #client(t: MxTarget): Transport {
    const url = `smtp://${net.isIPv6(t.addr) ? `[${t.addr}]` : t.addr}:${this.#opts.port}`;
    // The certificate is checked for the MX host name (an address literal: its address), so an
    // address reached under two names gets a client per name.
    const servername = addressLiteral(t.host) ?? t.host;
    const mode: SmtpTlsMode = t.tls ?? this.#opts.tls ?? 'opportunistic';
    const key = `${url} ${servername} ${mode}`;
    let c = this.#clients.get(key);
    if (c === undefined) {
      c = createSmtpTransport({
        url,
        heloName: this.#opts.heloName,
        maxConnections: this.#opts.maxConnections,
        connectTimeoutMs: this.#opts.connectTimeoutMs,
        commandTimeoutMs: this.#opts.commandTimeoutMs,
        log: this.#opts.log,
        tls: { mode, servername, ...(this.#opts.tlsCa !== undefined ? { ca: this.#opts.tlsCa } : {}) },
      });
      // Bounded: the client used longest ago is let go (not closed: a delivery may still be on
      // it; its connections end at their idle timeout).
      if (this.#clients.size >= MAX_CLIENTS) this.#clients.delete(this.#clients.keys().next().value as string);
    } else this.#clients.delete(key); // re-inserted below: the Map's order is the order of use
    this.#clients.set(key, c);
    return c;
  }
}

/** "ok 250 x2, perm 550" plus the first text, for the log. */
function summary(results: readonly RcptResult[]): string {
  const counts = new Map<string, number>();
  for (const r of results) counts.set(`${r.status} ${r.code}`, (counts.get(`${r.status} ${r.code}`) ?? 0) + 1);
  const parts = [...counts].map(([k, n]) => (n > 1 ? `${k} x${n}` : k));
  return `${parts.join(', ')}: ${results[0]?.text ?? ''}`;
}

/** A Transport that delivers each recipient to the MX hosts of its domain. */
export function createMxTransport(opts: MxTransportOptions): Transport {
  return new MxTransport(opts);
}
