// MTA-STS (RFC 8461): a receiving domain publishes, in DNS (TXT _mta-sts.<domain>, "v=STSv1;
// id=…;") and over HTTPS (https://mta-sts.<domain>/.well-known/mta-sts.txt), which MX hosts may
// take its mail and whether they must do so over verified TLS. src/delivery/mx.ts asks
// MtaSts.lookup() before it builds the targets of a domain.
//
// Discovery and fetch go through mxguard's own resolver (the policy host included: the HTTPS
// connection goes to the address it resolves to, with SNI and the certificate check for
// mta-sts.<domain>). Policies are cached in memory per domain until max_age; a new TXT id makes
// us fetch again, and a failed fetch (or a failed TXT lookup) keeps an unexpired cached policy
// (RFC 8461 5.1). Without a cached policy, a failure means "no policy": mail goes as usual.
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import type { DnsResolver, DnsResult } from '../dns/resolver.ts';
import { normalizeName } from '../dns/resolver.ts';
import type { Logger } from '../util/log.ts';
import { trustContext } from '../smtp-client/client.ts';

export type StsMode = 'enforce' | 'testing' | 'none';

export interface StsPolicy {
  readonly mode: StsMode;
  /** MX patterns, lower case: "mx.example.com" or "*.example.com" (one label). */
  readonly mx: readonly string[];
  /** Seconds, capped at MAX_AGE_CAP. */
  readonly maxAge: number;
}

/** RFC 8461 3.2: max_age is at most 31557600 seconds (about a year). */
export const MAX_AGE_CAP = 31_557_600;
/** The largest policy body we read (RFC 8461 3.3 suggests 64 KiB). */
export const MAX_POLICY_BYTES = 64 * 1024;
export const POLICY_PATH = '/.well-known/mta-sts.txt';
/** Policies kept at most; the oldest cached goes first. */
const MAX_CACHED = 10_000;

/** The id of the one "v=STSv1" record among a name's TXT records; undefined when there is none, several, or it is malformed. */
export function parseStsRecord(records: readonly string[]): string | undefined {
  const sts = records.filter((r) => /^v=STSv1(;|$)/.test(r.trim()));
  if (sts.length !== 1) return undefined;
  let id: string | undefined;
  // sts-text-record = sts-version 1*(sts-field-delim sts-field) [sts-field-delim]
  for (const part of (sts[0] ?? '').split(';')) {
    const m = /^\s*([A-Za-z0-9_.-]+)=(.*?)\s*$/.exec(part);
    if (!m) {
      if (part.trim() === '') continue;
      return undefined;
    }
    if (m[1] === 'id' && id === undefined) {
      if (!/^[A-Za-z0-9]{1,32}$/.test(m[2] ?? '')) return undefined;
      id = m[2];
    }
  }
  return id;
}

export type ParsedPolicy = { readonly ok: true; readonly policy: StsPolicy } | { readonly ok: false; readonly error: string };

/**
 * A policy body (RFC 8461 3.2): "key: value" lines (CRLF or LF); version STSv1, mode, max_age
 * and, unless the mode is none, at least one mx. Names and values are case-sensitive; unknown
 * keys are ignored; of a repeated key other than mx the first counts.
 */
export function parsePolicy(text: string): ParsedPolicy {
  const fields = new Map<string, string>();
  const mx: string[] = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.replace(/[ \t]+$/, '');
    if (line === '') continue;
    const m = /^([A-Za-z0-9_.-]{1,32})[ \t]*:[ \t]*(.*)$/.exec(line);
    if (!m) return { ok: false, error: `bad policy line ${JSON.stringify(line.slice(0, 80))}` };
    const key = m[1] as string;
    const value = m[2] as string;
    if (key === 'mx') {
      const p = mxPattern(value);
      if (p === undefined) return { ok: false, error: `bad mx pattern ${JSON.stringify(value.slice(0, 80))}` };
      mx.push(p);
    } else if (!fields.has(key)) fields.set(key, value);
  }
  if (fields.get('version') !== 'STSv1') return { ok: false, error: 'version is not STSv1' };
  const mode = fields.get('mode');
  if (mode !== 'enforce' && mode !== 'testing' && mode !== 'none') return { ok: false, error: `bad mode ${JSON.stringify(mode ?? '')}` };
  const age = fields.get('max_age');
  if (age === undefined || !/^[0-9]{1,10}$/.test(age)) return { ok: false, error: `bad max_age ${JSON.stringify(age ?? '')}` };
  if (mode !== 'none' && mx.length === 0) return { ok: false, error: `mode ${mode} without mx` };
  return { ok: true, policy: { mode, mx, maxAge: Math.min(Number(age), MAX_AGE_CAP) } };
}

/** A valid mx pattern, lower case, or undefined. */
function mxPattern(value: string): string | undefined {
  const wild = value.startsWith('*.');
  const name = normalizeName(wild ? value.slice(2) : value);
  if (name === undefined || value.endsWith('.') || name.includes('*')) return undefined;
  return wild ? `*.${name}` : name;
}

/** Whether an MX host name matches one of the patterns; "*.example.com" stands for exactly one more label. */
export function mxMatches(host: string, patterns: readonly string[]): boolean {
  const h = normalizeName(host);
  if (h === undefined) return false;
  return patterns.some((p) => {
    const pat = p.toLowerCase();
    if (!pat.startsWith('*.')) return h === pat;
    const dot = h.indexOf('.');
    return dot > 0 && h.slice(dot + 1) === pat.slice(2);
  });
}

/** What applies to a domain's mail: a policy (from the network or the cache), or none (with why, for the log). */
export type StsLookup =
  | { readonly kind: 'policy'; readonly policy: StsPolicy; readonly id: string; readonly cached: boolean }
  | { readonly kind: 'none'; readonly reason: string };

export interface MtaStsOptions {
  /** Only txt() (and a()/aaaa(), unless resolveHost is given) are used. */
  readonly dns: Pick<DnsResolver, 'txt' | 'a' | 'aaaa'>;
  /** Extra trust anchors (PEM) for the policy fetch, besides Node's and the system's. */
  readonly ca?: string | Buffer;
  /** The HTTPS port of policy hosts (443; a test serves its policy elsewhere). */
  readonly port?: number;
  /** The whole fetch, connect to last byte (default 10 s). */
  readonly timeoutMs?: number;
  /** Addresses of the policy host (default: A then AAAA through `dns`). */
  readonly resolveHost?: (host: string) => Promise<string[]>;
  /** Fetches a policy body (default: HTTPS as RFC 8461 3.3 says); for unit tests. */
  readonly fetchPolicy?: (domain: string) => Promise<string>;
  readonly now?: () => number;
  readonly log?: Logger;
}

interface CacheEntry {
  readonly id: string;
  readonly policy: StsPolicy;
  readonly expires: number;
}

export class MtaSts {
  readonly #opts: MtaStsOptions;
  readonly #cache = new Map<string, CacheEntry>();
  /** One lookup per domain at a time: concurrent deliveries share it. */
  readonly #inflight = new Map<string, Promise<StsLookup>>();

  constructor(opts: MtaStsOptions) {
    this.#opts = opts;
  }

  /** The policy for a (normalised) domain; never throws. */
  lookup(domain: string): Promise<StsLookup> {
    let p = this.#inflight.get(domain);
    if (p === undefined) {
      p = this.#lookup(domain)
        .catch((err: unknown): StsLookup => ({ kind: 'none', reason: `MTA-STS lookup failed: ${errText(err)}` }))
        .finally(() => this.#inflight.delete(domain));
      this.#inflight.set(domain, p);
    }
    return p;
  }

  async #lookup(domain: string): Promise<StsLookup> {
    const now = this.#now();
    const entry = this.#cache.get(domain);
    const cached = entry !== undefined && entry.expires > now ? entry : undefined;
    if (entry !== undefined && cached === undefined) this.#cache.delete(domain);
    const fromCache = (why: string): StsLookup => {
      if (cached === undefined) return { kind: 'none', reason: why };
      this.#opts.log?.info({ domain, sts_id: cached.id, err: why }, 'MTA-STS: using the cached policy');
      return { kind: 'policy', policy: cached.policy, id: cached.id, cached: true };
    };

    const txt: DnsResult<string> = await this.#opts.dns.txt(`_mta-sts.${domain}`);
    if (txt.kind === 'error') {
      this.#opts.log?.warn({ domain, err: txt.reason }, 'MTA-STS: TXT lookup failed');
      return fromCache(`TXT lookup failed: ${txt.reason}`);
    }
    const id = txt.kind === 'ok' ? parseStsRecord(txt.records) : undefined;
    if (id === undefined) return fromCache('no MTA-STS record');
    if (cached !== undefined && cached.id === id) return { kind: 'policy', policy: cached.policy, id, cached: true };

    let parsed: ParsedPolicy;
    try {
      const body = await (this.#opts.fetchPolicy ?? ((d: string) => this.#fetch(d)))(domain);
      parsed = parsePolicy(body);
    } catch (err) {
      parsed = { ok: false, error: errText(err) };
    }
    if (!parsed.ok) {
      this.#opts.log?.warn({ domain, sts_id: id, err: parsed.error }, 'MTA-STS: policy fetch failed');
      return fromCache(`policy fetch failed: ${parsed.error}`);
    }
    // Bounded: mail to many domains (backscatter to made-up ones) must not grow it without end.
    if (this.#cache.size >= MAX_CACHED && !this.#cache.has(domain)) this.#cache.delete(this.#cache.keys().next().value as string);
    this.#cache.set(domain, { id, policy: parsed.policy, expires: this.#now() + parsed.policy.maxAge * 1000 });
    this.#opts.log?.info({ domain, sts_id: id, mode: parsed.policy.mode, mx: parsed.policy.mx, max_age: parsed.policy.maxAge }, 'MTA-STS: policy fetched');
    return { kind: 'policy', policy: parsed.policy, id, cached: false };
  }

  #now(): number {
    return (this.#opts.now ?? Date.now)();
  }

  async #addresses(host: string): Promise<string[]> {
    if (this.#opts.resolveHost) return this.#opts.resolveHost(host);
    const answers = await Promise.all([this.#opts.dns.a(host), this.#opts.dns.aaaa(host)]);
    const addrs: string[] = [];
    const errors: string[] = [];
    for (const r of answers) {
      if (r.kind === 'ok') addrs.push(...r.records);
      else if (r.kind === 'error') errors.push(r.reason);
    }
    if (addrs.length === 0) throw new Error(`${host} does not resolve${errors.length > 0 ? `: ${errors.join('; ')}` : ''}`);
    return addrs;
  }

  /** GET https://mta-sts.<domain>/.well-known/mta-sts.txt: 200 only (no redirects), text/plain, at most 64 KiB, certificate valid for the host. */
  async #fetch(domain: string): Promise<string> {
    const host = `mta-sts.${domain}`;
    const timeoutMs = this.#opts.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    const addrs = await this.#addresses(host);
    let lastErr: unknown;
    for (const addr of addrs) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      try {
        return await this.#get(host, addr, left);
      } catch (err) {
        lastErr = err;
        // Only a failure to connect is worth the next address; an answer (bad status, type or
        // certificate) is the policy host's answer.
        if (!(err instanceof ConnectError)) throw err;
      }
    }
    throw lastErr instanceof Error ? lastErr : new Error(`no address of ${host} answered in ${timeoutMs} ms`);
  }

  #get(host: string, addr: string, timeoutMs: number): Promise<string> {
    const port = this.#opts.port ?? 443;
    return new Promise<string>((resolve, reject) => {
      let connected = false;
      let settled = false;
      const finish = (err: Error | undefined, body?: string): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        req.destroy();
        if (err) reject(err);
        else resolve(body ?? '');
      };
      const where = `https://${host}${port === 443 ? '' : `:${port}`}${POLICY_PATH} (${addr})`;
      const options: https.RequestOptions & Pick<tls.ConnectionOptions, 'secureContext'> = {
        host: addr,
        family: net.isIPv6(addr) ? 6 : 4,
        port,
        path: POLICY_PATH,
        method: 'GET',
        servername: host,
        headers: { host: port === 443 ? host : `${host}:${port}`, accept: 'text/plain', 'user-agent': 'mxguard' },
        secureContext: trustContext(this.#opts.ca),
        rejectUnauthorized: true,
        // checkServerIdentity gets servername (the policy host), not the address we connect to.
        agent: false,
      };
      const req = https.request(options);
      const timer = setTimeout(() => finish(connected ? new Error(`${where}: timed out`) : new ConnectError(`${where}: connect timed out`)), timeoutMs);
      req.on('socket', (s) => s.once('connect', () => (connected = true)));
      req.on('error', (err: NodeJS.ErrnoException) => {
        const msg = `${where}: ${err.message}`;
        const refused = !connected && ['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET', 'ETIMEDOUT'].includes(err.code ?? '');
        finish(refused ? new ConnectError(msg) : new Error(msg));
      });
      req.on('response', (res) => {
        if (res.statusCode !== 200) return finish(new Error(`${where}: HTTP ${res.statusCode ?? '?'} (only 200 counts, no redirects)`));
        const type = String(res.headers['content-type'] ?? '');
        if (!/^text\/plain\s*(;|$)/i.test(type)) return finish(new Error(`${where}: Content-Type ${JSON.stringify(type)} is not text/plain`));
        const declared = Number(res.headers['content-length'] ?? '0');
        if (declared > MAX_POLICY_BYTES) return finish(new Error(`${where}: policy larger than ${MAX_POLICY_BYTES} bytes`));
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_POLICY_BYTES) finish(new Error(`${where}: policy larger than ${MAX_POLICY_BYTES} bytes`));
          else chunks.push(c);
        });
        res.on('end', () => finish(undefined, Buffer.concat(chunks).toString('utf8')));
        res.on('error', (err) => finish(new Error(`${where}: ${err.message}`)));
      });
      req.end();
    });
  }
}

/** A failure before any answer: the next address of the policy host may do better. */
class ConnectError extends Error {}


function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
