// DNS blocklists (seeds 001 and 002: rblsmtpd, "tag instead of reject"), weighted the way
// Postfix's postscreen does it: every zone under `dnsbl.zones` is asked about the client's
// address at once; each zone whose answer counts adds its weight (negative for an allowlist,
// DNSWL); when the sum reaches `dnsbl.threshold` the client is refused — or, with
// `dnsbl.action: score`, its mail is tagged with `X-DNSBL:` naming the lists (seed 002's
// "variation"). `dnsbl.rhsbl_sender` and `dnsbl.rhsbl_helo` do the same for the sender's domain
// and the HELO name.
//
// - Which answers count: the zone's `answers` ("127.0.0.2", "127.0.0.4-7"), or any 127.0.0.0/8
//   answer when it lists none. Never an answer outside 127.0.0.0/8 (a resolver that rewrites
//   NXDOMAIN), never 127.255.255.x: that is how lists say "query refused" (Spamhaus: public
//   resolver, too many queries, bad query), not "listed".
// - A zone that fails (timeout, SERVFAIL …) counts as not listed: a broken list never refuses
//   mail on its own, and the resolver's deadline (`dns.timeout`) bounds the wait. The resolver
//   logs each failed lookup (warn); the check's line names the zone too.
// - The reply: 554 5.7.1, like Postfix and rblsmtpd, with the TXT reason of the heaviest listing
//   zone: "Service unavailable; client [192.0.2.1] blocked using bl.example; <TXT>". 450 4.7.1
//   when every deciding zone says `reply: 4xx`, or with `action: tempfail`.
// - Answers are cached by the resolver for their TTL, so a client that comes back within it
//   costs no query.
//
// Under `mxguard stdio`, an empty RBLSMTPD variable (rblsmtpd's "known good client") skips all
// three checks (rblsmtpd.ts).
//
// The client check runs at connect; its refusal, like every connect refusal, is answered at RCPT
// (smtp.delay_reject), so the log shows sender and recipient.
import net from 'node:net';
import { defineCheck, needDns, type Check } from '../check.ts';
import type { SessionInfo } from '../context.ts';
import type { Config } from '../../config/schema.ts';
import type { DnsResolver, ListResult } from '../../dns/resolver.ts';
import { normalizeName } from '../../dns/resolver.ts';
import type { Verdict } from '../verdict.ts';
import { CONTINUE } from '../verdict.ts';

export type DnsblSettings = Config['dnsbl'];
export type ZoneSpec = DnsblSettings['zones'][number];

// --- pure helpers ---------------------------------------------------------------------------

/** An A answer as four octets, or undefined when it is not a dotted IPv4 address. */
function octets(ip: string): [number, number, number, number] | undefined {
  if (net.isIPv4(ip) === false) return undefined;
  const o = ip.split('.').map(Number);
  return [o[0] ?? 0, o[1] ?? 0, o[2] ?? 0, o[3] ?? 0];
}

/** 127.255.255.x: the list refused to answer (a public resolver, over quota, a bad query). */
export function isRefusalCode(answer: string): boolean {
  const o = octets(answer);
  return o !== undefined && o[0] === 127 && o[1] === 255 && o[2] === 255;
}

/** Does one pattern ("127.0.0.2", "127.0.0.4-7": a range of the last octet) take this answer? */
export function answerMatches(answer: string, pattern: string): boolean {
  const a = octets(answer);
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:-(\d{1,3}))?$/.exec(pattern.trim());
  if (a === undefined || m === null) return false;
  const [, p0, p1, p2, lo, hi] = m;
  if (a[0] !== Number(p0) || a[1] !== Number(p1) || a[2] !== Number(p2)) return false;
  const low = Number(lo);
  const high = hi === undefined ? low : Number(hi);
  return a[3] >= Math.min(low, high) && a[3] <= Math.max(low, high);
}

/**
 * Does this A answer count as "listed" for a zone with these `answers` patterns? Only
 * 127.0.0.0/8, never 127.255.255.x, and (when there are patterns) only what one of them takes.
 */
export function answerCounts(answer: string, patterns: readonly string[]): boolean {
  const o = octets(answer);
  if (o === undefined || o[0] !== 127 || isRefusalCode(answer)) return false;
  return patterns.length === 0 || patterns.some((p) => answerMatches(answer, p));
}

/** What one zone said, as the weighting sees it. */
export type ZoneOutcome =
  /** Answers that count: the zone's weight is added. */
  | { readonly kind: 'listed'; readonly spec: ZoneSpec; readonly answers: readonly string[]; readonly reason: string | undefined }
  /** NXDOMAIN, or answers that do not count (`ignored`; `refusedCode` when the list said 127.255.255.x). */
  | { readonly kind: 'clean'; readonly spec: ZoneSpec; readonly ignored: readonly string[]; readonly refusedCode?: string }
  /** The lookup failed (timeout, SERVFAIL …): counts as not listed. */
  | { readonly kind: 'error'; readonly spec: ZoneSpec; readonly code: string; readonly reason: string };

export type ListHit = Extract<ZoneOutcome, { kind: 'listed' }>;

/** A resolver answer → the zone's outcome. */
export function classify(spec: ZoneSpec, res: ListResult): ZoneOutcome {
  if (res.kind === 'error') return { kind: 'error', spec, code: res.code, reason: res.reason };
  if (res.kind === 'nxdomain') return { kind: 'clean', spec, ignored: [] };
  const counting = res.records.filter((a) => answerCounts(a, spec.answers));
  if (counting.length > 0) return { kind: 'listed', spec, answers: counting, reason: res.reason };
  const refusedCode = res.records.find(isRefusalCode);
  return refusedCode === undefined ? { kind: 'clean', spec, ignored: res.records } : { kind: 'clean', spec, ignored: res.records, refusedCode };
}

export interface Decision {
  /** The weights of every zone that listed, allowlists included. */
  readonly sum: number;
  /** At least one blocklist (positive weight) listed and the sum reached the threshold. */
  readonly listed: boolean;
  /** The blocklists that listed (positive weight), heaviest first (ties: configuration order). */
  readonly deciding: readonly ListHit[];
  /** Every deciding zone asks for a temporary refusal (`reply: 4xx`). */
  readonly temporary: boolean;
}

/**
 * postscreen's arithmetic: add the weights of the listing zones; refuse at the threshold. Without
 * a blocklist among them nothing is refused, however low the threshold is set.
 */
export function decide(hits: readonly ListHit[], threshold: number): Decision {
  const sum = hits.reduce((s, h) => s + h.spec.weight, 0);
  const deciding = hits
    .map((h, i) => ({ h, i }))
    .filter(({ h }) => h.spec.weight > 0)
    .sort((a, b) => b.h.spec.weight - a.h.spec.weight || a.i - b.i)
    .map(({ h }) => h);
  return { sum, listed: deciding.length > 0 && sum >= threshold, deciding, temporary: deciding.length > 0 && deciding.every((h) => h.spec.reply === '4xx') };
}

const MAX_REASON = 200;

/** A TXT reason fit for an SMTP reply or a header: printable ASCII, one line, bounded. */
export function cleanReason(text: string): string {
  const flat = text
    .replace(/[\x00-\x1f\x7f]+/g, ' ')
    .replace(/[^\x20-\x7e]/g, '?')
    .replace(/ {2,}/g, ' ')
    .trim();
  return flat.length > MAX_REASON ? `${flat.slice(0, MAX_REASON - 3)}...` : flat;
}

/** "Service unavailable; client [192.0.2.1] blocked using bl.example; <TXT>" (Postfix's words). */
export function refusalText(subject: string, top: ListHit): string {
  const reason = top.reason === undefined ? '' : cleanReason(top.reason);
  return `Service unavailable; ${subject} blocked using ${top.spec.zone}${reason ? `; ${reason}` : ''}`;
}

/** "X-DNSBL: bl.example (<TXT>), other.example\r\n", folded before 78 columns where it can be. */
export function dnsblHeader(hits: readonly ListHit[]): string {
  const seen = new Set<string>();
  const items: string[] = [];
  for (const h of hits) {
    if (seen.has(h.spec.zone)) continue;
    seen.add(h.spec.zone);
    const reason = h.reason === undefined ? '' : cleanReason(h.reason);
    items.push(reason ? `${h.spec.zone} (${reason})` : h.spec.zone);
  }
  let out = 'X-DNSBL:';
  let col = out.length;
  items.forEach((item, i) => {
    const piece = i < items.length - 1 ? `${item},` : item;
    if (i > 0 && col + 1 + piece.length > 78) {
      out += '\r\n\t';
      col = 1;
    } else {
      out += ' ';
      col += 1;
    }
    out += piece;
    col += piece.length;
  });
  return `${out}\r\n`;
}

/** One line for the log: every zone that answered or failed, and the sum. */
export function describeOutcomes(subject: string, outcomes: readonly ZoneOutcome[], d: Decision, threshold: number): string {
  const parts: string[] = [];
  for (const o of outcomes) {
    const w = o.spec.weight;
    const weight = w >= 0 ? `+${w}` : String(w);
    if (o.kind === 'listed') parts.push(`${o.spec.zone}=${o.answers.join('/')} (${weight})`);
    else if (o.kind === 'error') parts.push(`${o.spec.zone}: ${o.code}, not counted`);
    else if (o.refusedCode !== undefined) parts.push(`${o.spec.zone}=${o.refusedCode} (query refused by the list, not counted)`);
    else if (o.ignored.length > 0) parts.push(`${o.spec.zone}=${o.ignored.join('/')} (not counted)`);
  }
  return `${subject}: ${parts.join(', ')}; sum ${d.sum}, threshold ${threshold}`;
}

/** Anything worth a log line: a zone that answered (counting or not) or failed. */
function noteworthy(outcomes: readonly ZoneOutcome[]): boolean {
  return outcomes.some((o) => o.kind !== 'clean' || o.ignored.length > 0);
}

// --- the checks -----------------------------------------------------------------------------

export interface ListCheckSpec {
  readonly check: string;
  readonly setting: string;
  readonly zones: readonly ZoneSpec[];
  readonly settings: DnsblSettings;
}

/** Asks every zone at once; never rejects (a failing lookup is an `error` outcome). */
async function askAll(zones: readonly ZoneSpec[], ask: (zone: string) => Promise<ListResult>): Promise<ZoneOutcome[]> {
  return Promise.all(
    zones.map(async (spec) => {
      try {
        return classify(spec, await ask(spec.zone));
      } catch (err) {
        return { kind: 'error', spec, code: 'other', reason: err instanceof Error ? err.message : String(err) } satisfies ZoneOutcome;
      }
    }),
  );
}

/**
 * The verdict for one subject (a client address, a domain): refuse, tag or go on, with the log
 * line naming every zone that answered and the sum. Pure once the outcomes are in.
 */
export function listVerdict(c: ListCheckSpec, subject: string, outcomes: readonly ZoneOutcome[]): Verdict {
  const hits = outcomes.filter((o): o is ListHit => o.kind === 'listed');
  const d = decide(hits, c.settings.threshold);
  const log = `${c.check}: ${describeOutcomes(subject, outcomes, d, c.settings.threshold)}`;
  const top = d.deciding[0];
  if (!d.listed || top === undefined) {
    // An allowlist (negative weight) of the client's address that answered counts its weight as
    // points, as SpamAssassin's RCVD_IN_DNSWL_* do: the score goes below zero, and greylisting
    // lets such a client be. Not for the sender's domain or the HELO name: anyone can claim those.
    const allow = c.check === 'dnsbl' ? hits.reduce((sum, h) => sum + Math.min(0, h.spec.weight), 0) : 0;
    if (allow < 0) return { kind: 'tag', check: c.check, score: allow, tests: [{ name: `${c.check}_allowlist`, score: allow }], log: `${log}; allowlisted, scored ${allow}` };
    return noteworthy(outcomes) ? { kind: 'continue', check: c.check, log } : CONTINUE;
  }
  const action = c.settings.action;
  if (action === 'score') {
    return { kind: 'tag', check: c.check, score: c.settings.score, headers: [dnsblHeader(d.deciding)], log: `${log}; scored ${c.settings.score}` };
  }
  const temporary = action === 'tempfail' || d.temporary;
  const text = refusalText(subject, top);
  return temporary
    ? { kind: 'tempfail', check: c.check, code: 450, enhanced: '4.7.1', text, setting: c.setting, log }
    : { kind: 'reject', check: c.check, code: 554, enhanced: '5.7.1', text, setting: c.setting, log };
}

/** RBLSMTPD set and empty: the launcher vouched for this client, blocklists are not asked. */
function vouchedFor(session: SessionInfo): boolean {
  return session.rblsmtpd === '';
}

/** `dnsbl.zones`: the client's address against the DNS blocklists (and allowlists), at connect. */
export function dnsblCheck(config: DnsblSettings, dns: DnsResolver): Check<'connect'> {
  const c: ListCheckSpec = { check: 'dnsbl', setting: 'dnsbl.zones', zones: config.zones, settings: config };
  return {
    name: c.check,
    phase: 'connect',
    concurrent: true,
    async run(ctx) {
      const ip = ctx.session.remoteIp;
      if (c.zones.length === 0 || net.isIP(ip) === 0 || vouchedFor(ctx.session)) return CONTINUE;
      const outcomes = await askAll(c.zones, (zone) => dns.dnsblQuery(ip, zone));
      return listVerdict(c, `client [${ip}]`, outcomes);
    },
  };
}

/** A name an RHSBL can be asked about: not an address literal or a bare IP, and a valid DNS name. */
export function rhsblName(name: string): string | undefined {
  const n = name.trim();
  if (n === '' || n.startsWith('[') || net.isIP(n) !== 0) return undefined;
  return normalizeName(n);
}

/**
 * `dnsbl.rhsbl_sender`: the sender's domain against domain blocklists, at MAIL. The null sender
 * (bounces) is not asked about, nor is an authenticated client's sender (its own domain).
 */
export function rhsblSenderCheck(config: DnsblSettings, dns: DnsResolver): Check<'mail'> {
  const c: ListCheckSpec = { check: 'rhsbl_sender', setting: 'dnsbl.rhsbl_sender', zones: config.rhsbl_sender, settings: config };
  return {
    name: c.check,
    phase: 'mail',
    concurrent: true,
    async run(ctx) {
      if (c.zones.length === 0 || ctx.mailFrom.address === '' || ctx.session.authUser !== undefined || vouchedFor(ctx.session)) return CONTINUE;
      const domain = rhsblName(ctx.mailFrom.domain);
      if (domain === undefined) return CONTINUE;
      const outcomes = await askAll(c.zones, (zone) => dns.rhsblQuery(domain, zone));
      return listVerdict(c, `sender domain [${domain}]`, outcomes);
    },
  };
}

/** `dnsbl.rhsbl_helo`: the HELO/EHLO name against domain blocklists (address literals are not asked about). */
export function rhsblHeloCheck(config: DnsblSettings, dns: DnsResolver): Check<'helo'> {
  const c: ListCheckSpec = { check: 'rhsbl_helo', setting: 'dnsbl.rhsbl_helo', zones: config.rhsbl_helo, settings: config };
  return {
    name: c.check,
    phase: 'helo',
    concurrent: true,
    async run(ctx) {
      if (c.zones.length === 0 || vouchedFor(ctx.session)) return CONTINUE;
      const name = rhsblName(ctx.helo);
      if (name === undefined) return CONTINUE;
      const outcomes = await askAll(c.zones, (zone) => dns.rhsblQuery(name, zone));
      return listVerdict(c, `helo name [${name}]`, outcomes);
    },
  };
}

// An authenticated client's connect- and HELO-time listings are waived at RCPT (roaming users
// connect from listed networks); rhsbl_sender skips authenticated clients itself (see above).
export const dnsbl = defineCheck({
  name: 'dnsbl',
  phase: 'connect',
  needs: ['dns'],
  waives: { afterAuth: true },
  settings: ({ dnsbl }) => (dnsbl.zones.length > 0 ? dnsbl : undefined),
  create: (s, deps) => dnsblCheck(s, needDns(deps, 'dnsbl')),
});

export const rhsblHelo = defineCheck({
  name: 'rhsbl_helo',
  phase: 'helo',
  needs: ['dns'],
  waives: { afterAuth: true },
  settings: ({ dnsbl }) => (dnsbl.rhsbl_helo.length > 0 ? dnsbl : undefined),
  create: (s, deps) => rhsblHeloCheck(s, needDns(deps, 'rhsbl_helo')),
});

export const rhsblSender = defineCheck({
  name: 'rhsbl_sender',
  phase: 'mail',
  needs: ['dns'],
  settings: ({ dnsbl }) => (dnsbl.rhsbl_sender.length > 0 ? dnsbl : undefined),
  create: (s, deps) => rhsblSenderCheck(s, needDns(deps, 'rhsbl_sender')),
});
