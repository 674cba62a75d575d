// Matching an envelope against parsed smtpd rules (src/config/rules-file.ts): the first rule whose three lists
// all match decides. DNS is asked only when a rule needs it, at most once per question per call,
// and a list that needs no lookup is tried before one that does, so a rule that cannot match
// anyway costs no query. Lookup errors propagate: the policy engine answers them with 451.
import net from 'node:net';
import { plainIp } from '../../util/cidr.ts';
import type { AddressItem, HostMatch, IdentMatch, IpMatch, NameServerMatch, Rule, RuleAction, RuleList, SourceItem } from '../../config/rules-file.ts';
import { globMatches } from '../../util/pattern.ts';

export interface RuleInput {
  /** The client's address (IPv4-mapped IPv6 is treated as IPv4). */
  ip: string;
  /**
   * The client's verified (forward-confirmed) PTR name when the caller already knows it; null
   * when it knows there is none; undefined to let `lookups.hostname` find out if a rule asks.
   */
  hostname?: string | null;
  /** The IDENT (RFC 1413) user, when one was obtained. */
  identUser?: string;
  /** MAIL FROM address without angle brackets; '' for the null sender. */
  from: string;
  /** RCPT TO address without angle brackets. */
  to: string;
}

export interface RuleLookups {
  /** The client's verified host name, or undefined when it has none. */
  hostname(ip: string): Promise<string | undefined>;
  /**
   * The name servers of the zone holding `domain` (walking up towards the root until NS records
   * are found, as smtpd did; smtpd counted MX hosts too): host names, plus their addresses when
   * the implementation resolves them (NS=192.0.2.0/24 compares with those). [] when none.
   */
  nameservers(domain: string): Promise<string[]>;
  /** Is `ip` listed in the DNS blocklist `zone`? Needed only by RBL.zone entries. */
  rbl?(ip: string, zone: string): Promise<boolean>;
}

export interface RuleReply {
  code: number;
  enhanced: string;
  text: string;
}

export interface RuleDecision {
  action: RuleAction;
  rule: Rule;
  line: number;
  /** The refusal for deny and noto, message expanded; undefined for allow. */
  reply?: RuleReply;
  /** The client's host name when matching or the message needed it (for the log). */
  hostname?: string;
}

/** What the rules may ask for, so that callers can skip work no rule needs (IDENT, say). */
export interface RulesNeeds {
  hostname: boolean;
  nameservers: boolean;
  rbl: boolean;
  ident: boolean;
}

/** smtpd's match_case_pattern: `*` matches any run of characters, the rest literally, ignoring case. */
export function globMatch(pattern: string, text: string): boolean {
  return globMatches(pattern, text, true);
}

/** The first rule that matches `input`, or undefined when none does. */
export async function matchRules(rules: readonly Rule[], input: RuleInput, lookups: RuleLookups): Promise<RuleDecision | undefined> {
  const ctx = new MatchContext(input, lookups);
  for (const rule of rules) {
    if (!(await ruleMatches(rule, ctx))) continue;
    const decision: RuleDecision = { action: rule.action, rule, line: rule.line };
    if (rule.action !== 'allow') decision.reply = await buildReply(rule, ctx);
    const hostname = ctx.resolvedHostname();
    if (hostname !== undefined) decision.hostname = hostname;
    return decision;
  }
  return undefined;
}

export function rulesNeed(rules: readonly Rule[]): RulesNeeds {
  const needs: RulesNeeds = { hostname: false, nameservers: false, rbl: false, ident: false };
  const host = (m: HostMatch): void => {
    if (m.kind === 'known' || m.kind === 'unknown' || m.kind === 'host') needs.hostname = true;
    if (m.kind === 'ns') needs.hostname = needs.nameservers = true;
    if (m.kind === 'rbl') needs.rbl = true;
  };
  const source = (i: SourceItem): void => {
    if (i.kind === 'ident') {
      needs.ident = true;
      host(i.host);
    } else host(i);
  };
  const address = (i: AddressItem): void => {
    if (i.kind === 'ns' || (i.kind === 'address' && i.domain.kind === 'ns')) needs.nameservers = true;
    if (i.kind === 'address' && i.local.kind === 'ident-user') needs.ident = true;
  };
  for (const rule of rules) {
    forEachItem(rule.source, source);
    forEachItem(rule.from, address);
    forEachItem(rule.to, address);
    if (rule.action !== 'allow') {
      const parts = rule.message?.parts ?? [];
      if (parts.length === 0) needs.hostname = true; // the default text names the host
      for (const p of parts) {
        if (p.kind === 'var' && p.name === 'H') needs.hostname = true;
        if (p.kind === 'var' && p.name === 'U') needs.ident = true;
      }
    }
  }
  return needs;
}

function forEachItem<T>(list: RuleList<T>, f: (item: T) => void): void {
  list.items.forEach(f);
  if (list.except) forEachItem(list.except, f);
}

/** Per-call state: the client's facts and the answers of the lookups made so far. */
class MatchContext {
  readonly ip: string;
  readonly ipText: string;
  readonly from: string;
  readonly to: string;
  readonly identUser: string | undefined;
  private readonly lookups: RuleLookups;
  private hostnamePromise: Promise<string | undefined> | undefined;
  private hostnameValue: { name: string | undefined } | undefined;
  private readonly ns = new Map<string, Promise<string[]>>();
  private readonly rblAnswers = new Map<string, Promise<boolean>>();

  constructor(input: RuleInput, lookups: RuleLookups) {
    this.ip = plainIp(input.ip);
    this.ipText = this.ip.toLowerCase();
    this.from = input.from;
    this.to = input.to;
    this.identUser = input.identUser === '' ? undefined : input.identUser;
    this.lookups = lookups;
    if (input.hostname !== undefined) this.hostnameValue = { name: normalizeHostname(input.hostname) };
  }

  hostname(): Promise<string | undefined> {
    if (this.hostnameValue) return Promise.resolve(this.hostnameValue.name);
    this.hostnamePromise ??= this.lookups.hostname(this.ip).then((h) => {
      const name = normalizeHostname(h);
      this.hostnameValue = { name };
      return name;
    });
    return this.hostnamePromise;
  }

  /** For message text: a failed lookup is "unknown" there, the decision is already made. */
  async hostnameForText(): Promise<string | undefined> {
    try {
      return await this.hostname();
    } catch {
      this.hostnameValue = { name: undefined };
      return undefined;
    }
  }

  resolvedHostname(): string | undefined {
    return this.hostnameValue?.name;
  }

  nameservers(domain: string): Promise<string[]> {
    const key = domain.toLowerCase().replace(/\.$/, '');
    let p = this.ns.get(key);
    if (!p) {
      p = this.lookups.nameservers(key);
      this.ns.set(key, p);
    }
    return p;
  }

  rbl(zone: string): Promise<boolean> {
    const lookup = this.lookups.rbl;
    if (!lookup) return Promise.reject(new Error(`RBL.${zone} needs a DNS blocklist lookup and none is configured`));
    let p = this.rblAnswers.get(zone);
    if (!p) {
      p = lookup.call(this.lookups, this.ip, zone);
      this.rblAnswers.set(zone, p);
    }
    return p;
  }
}

/** Lower case, no trailing dot; a "name" that is an IP address is no name (smtpd: "possible subversion attempt"). */
function normalizeHostname(h: string | null | undefined): string | undefined {
  if (h === null || h === undefined) return undefined;
  const name = h.toLowerCase().replace(/\.$/, '');
  if (name === '' || net.isIP(name) !== 0) return undefined;
  return name;
}

async function ruleMatches(rule: Rule, ctx: MatchContext): Promise<boolean> {
  const lists: Array<{ dear: boolean; run: () => Promise<boolean> }> = [
    { dear: listIsDear(rule.source, sourceIsDear), run: () => matchList(rule.source, sourceIsDear, (i) => matchSource(i, ctx)) },
    { dear: listIsDear(rule.from, addressIsDear), run: () => matchList(rule.from, addressIsDear, (i) => matchAddress(i, ctx.from, ctx)) },
    { dear: listIsDear(rule.to, addressIsDear), run: () => matchList(rule.to, addressIsDear, (i) => matchAddress(i, ctx.to, ctx)) },
  ];
  // All three must match: try the lists that need no DNS first.
  for (const l of [...lists.filter((x) => !x.dear), ...lists.filter((x) => x.dear)]) {
    if (!(await l.run())) return false;
  }
  return true;
}

function hostIsDear(m: HostMatch): boolean {
  return m.kind === 'known' || m.kind === 'unknown' || m.kind === 'host' || m.kind === 'ns' || m.kind === 'rbl';
}
function sourceIsDear(i: SourceItem): boolean {
  return i.kind === 'ident' ? hostIsDear(i.host) : hostIsDear(i);
}
function addressIsDear(i: AddressItem): boolean {
  return i.kind === 'ns' || (i.kind === 'address' && i.domain.kind === 'ns');
}
function listIsDear<T>(list: RuleList<T>, dear: (item: T) => boolean): boolean {
  return list.items.some(dear) || (list.except !== undefined && listIsDear(list.except, dear));
}

/** One of the items matches and the EXCEPT list (recursively) does not. */
async function matchList<T>(list: RuleList<T>, dear: (item: T) => boolean, match: (item: T) => Promise<boolean>): Promise<boolean> {
  let hit = false;
  for (const item of [...list.items.filter((i) => !dear(i)), ...list.items.filter(dear)]) {
    if (await match(item)) {
      hit = true;
      break;
    }
  }
  if (!hit) return false;
  return list.except ? !(await matchList(list.except, dear, match)) : true;
}

const blockLists = new WeakMap<IpMatch, net.BlockList>();

function ipMatches(m: IpMatch, ip: string): boolean {
  if (m.kind === 'ip-pattern') return globMatch(m.pattern, plainIp(ip));
  const plain = plainIp(ip);
  const family = net.isIP(plain);
  if (family === 0) return false;
  let list = blockLists.get(m);
  if (!list) {
    list = new net.BlockList();
    if (m.kind === 'ip') list.addAddress(m.address, net.isIPv6(m.address) ? 'ipv6' : 'ipv4');
    else list.addSubnet(m.network, m.bits, net.isIPv6(m.network) ? 'ipv6' : 'ipv4');
    blockLists.set(m, list);
  }
  return list.check(plain, family === 6 ? 'ipv6' : 'ipv4');
}

function matchSource(item: SourceItem, ctx: MatchContext): Promise<boolean> {
  if (item.kind !== 'ident') return matchHost(item, ctx);
  return identMatches(item.user, ctx.identUser) ? matchHost(item.host, ctx) : Promise.resolve(false);
}

function identMatches(m: IdentMatch, user: string | undefined): boolean {
  if (m.kind === 'all') return true;
  if (user === undefined) return false;
  return m.kind === 'known' || globMatch(m.pattern, user);
}

async function matchHost(m: HostMatch, ctx: MatchContext): Promise<boolean> {
  switch (m.kind) {
    case 'all':
      return true;
    case 'known':
      return (await ctx.hostname()) !== undefined;
    case 'unknown':
      return (await ctx.hostname()) === undefined;
    case 'ip':
    case 'cidr':
    case 'ip-pattern':
      return ipMatches(m, ctx.ip);
    case 'host': {
      const name = await ctx.hostname();
      return name !== undefined && globMatch(m.pattern, name);
    }
    case 'ns': {
      // smtpd: the name servers of the host name, or of the reverse zone when there is none.
      const name = await ctx.hostname();
      return nameServerMatches(m.match, await ctx.nameservers(name ?? reverseZone(ctx.ip)));
    }
    case 'rbl':
      return ctx.rbl(m.zone);
  }
}

function nameServerMatches(m: NameServerMatch, servers: readonly string[]): boolean {
  switch (m.kind) {
    case 'all':
    case 'known':
      return servers.length > 0;
    case 'unknown':
      return servers.length === 0;
    case 'ip':
    case 'cidr':
      return servers.some((s) => net.isIP(plainIp(s)) !== 0 && ipMatches(m, s));
    case 'ip-pattern':
    case 'host':
      return servers.some((s) => globMatch(m.pattern, s.replace(/\.$/, '')));
  }
}

function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at === -1 ? address : address.slice(at + 1);
}

async function domainNameservers(domain: string, ctx: MatchContext): Promise<string[]> {
  // The null sender and address literals have no zone to ask about.
  if (domain === '' || domain.startsWith('[')) return [];
  return ctx.nameservers(domain);
}

async function matchAddress(item: AddressItem, address: string, ctx: MatchContext): Promise<boolean> {
  switch (item.kind) {
    case 'all':
      return true;
    case 'pattern':
      return globMatch(item.pattern, address);
    case 'ns':
      return nameServerMatches(item.match, await domainNameservers(domainOf(address), ctx));
    case 'address': {
      const at = address.lastIndexOf('@');
      if (at === -1) return false; // a pattern with @ never matches an address without one
      const local = address.slice(0, at);
      const domain = address.slice(at + 1);
      const l = item.local;
      if (l.kind === 'ident-user') {
        // USER: the local part must be the IDENT user, compared literally (a user name with * in it is no pattern).
        if (ctx.identUser === undefined || local.toLowerCase() !== ctx.identUser.toLowerCase()) return false;
      } else if (l.kind === 'pattern' && !globMatch(l.pattern, local)) return false;
      const d = item.domain;
      if (d.kind === 'all') return true;
      if (d.kind === 'pattern') return globMatch(d.pattern, domain);
      return nameServerMatches(d.match, await domainNameservers(domain, ctx));
    }
  }
}

/** At most `max` UTF-8 octets of `text`, cut between characters. */
function truncateBytes(text: string, max: number): string {
  if (Buffer.byteLength(text) <= max) return text;
  let out = '';
  let bytes = 0;
  for (const ch of text) {
    bytes += Buffer.byteLength(ch);
    if (bytes > max) break;
    out += ch;
  }
  return out;
}

/** 4.3.2.1.in-addr.arpa, or the nibbles of an IPv6 address under ip6.arpa. */
export function reverseZone(ip: string): string {
  const plain = plainIp(ip);
  if (net.isIPv4(plain)) return `${plain.split('.').reverse().join('.')}.in-addr.arpa`;
  return `${expandIpv6(plain).split('').reverse().join('.')}.ip6.arpa`;
}

/** The 32 hex digits of an IPv6 address. */
function expandIpv6(ip: string): string {
  let text = ip.toLowerCase();
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4?.[1]) {
    const o = v4[1].split('.').map(Number);
    const hex = (a: number, b: number) => ((a << 8) | b).toString(16);
    text = text.slice(0, -v4[1].length) + `${hex(o[0] ?? 0, o[1] ?? 0)}:${hex(o[2] ?? 0, o[3] ?? 0)}`;
  }
  const [head = '', tail] = text.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...Array<string>(Math.max(0, 8 - h.length - t.length)).fill('0'), ...t];
  return groups.map((g) => g.padStart(4, '0')).join('');
}

const MAX_REPLY_LINE = 512; // RFC 5321 4.5.3.1.5, CRLF included

async function buildReply(rule: Rule, ctx: MatchContext): Promise<RuleReply> {
  const code = rule.message?.code ?? 550;
  const enhanced = rule.message?.enhanced ?? `${Math.floor(code / 100)}.7.1`;
  const parts = rule.message?.parts ?? [];
  const values = async (name: 'F' | 'T' | 'H' | 'I' | 'U'): Promise<string> => {
    switch (name) {
      // The paths in angle brackets, as smtpd printed what the client sent ("<>" for the null sender).
      case 'F':
        return `<${ctx.from}>`;
      case 'T':
        return `<${ctx.to}>`;
      case 'H':
        return (await ctx.hostnameForText()) ?? 'unknown';
      case 'I':
        return ctx.ip;
      case 'U':
        return ctx.identUser ?? '';
    }
  };
  let text = '';
  if (parts.length === 0) {
    // smtpd's default: "550 Mail from %F to %T prohibited from your location (%U@%H ip=%I)".
    const user = ctx.identUser;
    text = `Mail from ${await values('F')} to ${await values('T')} prohibited from your location (${user ? `${user}@` : ''}${await values('H')} ip=${ctx.ip})`;
  } else {
    for (const p of parts) text += p.kind === 'text' ? p.text : await values(p.name);
  }
  text = text.replace(/[\x00-\x1f\x7f]/g, '?');
  const room = MAX_REPLY_LINE - 2 - `${code} ${enhanced} `.length;
  return { code, enhanced, text: truncateBytes(text, room) };
}
