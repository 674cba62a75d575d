// The Obtuse smtpd rules file (seed 004, `smtpd_check_rules`), read as smtpd read it:
//
//   [allow|deny|noto]:SourceList:FromList:ToList[:XXX message]
//
// one rule per line, `#` lines and blank lines ignored, first match wins, all three lists must
// match. Where the seed is silent, smtpd's own address_check.c (1998, the version OpenBSD
// shipped) decided; where mxguard deviates it says so here:
//
// - Fields are split on `:`. In the three lists a colon inside `[...]` does not split, so IPv6 is
//   written in brackets: `[2001:db8::/32]`, `[::1]`, `*@[IPv6:2001:db8::1]` (smtpd was IPv4-only;
//   brackets are the address-literal convention of RFC 5321). A message cannot hold a colon:
//   write it `%C`, as smtpd wanted.
// - After the message (or instead of it) a field that starts with `#` is a comment
//   (`allow:ALL:ALL:ALL:# everyone`). Inside a list a token that starts with `#` ends that list
//   (smtpd tried `#` and the words after it as patterns: they almost never matched, and an ALL
//   in a comment matched everything).
// - Lists are split on spaces, tabs and commas. `EXCEPT` (any case) splits a list:
//   `A B EXCEPT C EXCEPT D` matches A or B, unless it matches C and not D (Venema's tcp_wrappers
//   semantics, which smtpd copied).
// - Specials are upper case, as in smtpd: ALL, KNOWN, UNKNOWN, NS=, RBL., USER. `all` is a host
//   or address pattern like any other.
// - `*` is the only wildcard; matching ignores case.
// - SourceList: `a.b.c.d`, `a.b.c.d/bits`, `0/0`, `[IPv6]`, `[IPv6/bits]`; digits-dots-stars
//   globs (`192.168.*`) compared with the address text; host name globs (`*.example.com`)
//   compared with the client's verified host name only (smtpd also tried them against the
//   address text; a name pattern never matches an IPv4 text, and a numeric glob no longer matches
//   a PTR name an attacker chose, such as 192.168.1.2.evil.example); ALL, KNOWN, UNKNOWN;
//   `NS=pattern` (the name servers of the client's host name, or of its reverse zone);
//   `RBL.zone` (a DNS blocklist lookup, from the OpenBSD smtpd examples); `user@host` with
//   an IDENT user pattern, KNOWN or ALL on the left.
// - FromList / ToList: `user@host` globs split at the last `@`, `ALL` on either side, `USER@…`
//   (the local part must equal the IDENT user), `…@NS=pattern` and `NS=pattern` (the name servers
//   of the address's domain); a pattern without `@` is compared with the whole address.
// - The message: a 3-digit 4xx or 5xx code (any code on an allow line, which never uses it),
//   optionally an RFC 3463 enhanced code of the same class, then text with %F %T %H %I %U, %C for
//   a colon and %% for a percent sign. smtpd checked this at run time and answered "550 Recipient
//   not allowed" for a bad message; mxguard refuses the file instead.
// - Actions: allow, deny, noto, and smtpd's own spellings noto_delay and deny_delay (same as noto
//   and deny here: mxguard's `noto_delay` setting delays every deny and noto).
// - smtpd silently collapsed empty fields (`deny::ALL:ALL` was `deny:ALL:ALL`); here an empty
//   field is an error, and so are tokens that could never match (`192.168.`, `<a@b>`, `/regex/`).
//
// The parser lives in config/ because the config loader and `mxguard check` read the file and
// report its errors by line; src/policy/rules/ matches the parsed rules.
import net from 'node:net';
import { cidrError } from '../util/cidr.ts';

export type RuleAction = 'allow' | 'deny' | 'noto';
/** The action as written; the `_delay` forms are smtpd's spellings of deny and noto. */
export type RuleSpelling = RuleAction | 'deny_delay' | 'noto_delay';

/** A list: matches when one of `items` matches and `except` (itself a list) does not. */
export interface RuleList<T> {
  readonly items: readonly T[];
  readonly except?: RuleList<T>;
}

/** An address, a network, or a glob over the address text ("192.168.*"). */
export type IpMatch =
  | { readonly kind: 'ip'; readonly address: string }
  | { readonly kind: 'cidr'; readonly network: string; readonly bits: number }
  | { readonly kind: 'ip-pattern'; readonly pattern: string };

/** What NS= compares with the name servers (names, and their addresses when the lookup gives them). */
export type NameServerMatch =
  | { readonly kind: 'all' }
  | { readonly kind: 'known' }
  | { readonly kind: 'unknown' }
  | IpMatch
  | { readonly kind: 'host'; readonly pattern: string };

/** A SourceList entry without an IDENT user. */
export type HostMatch =
  | { readonly kind: 'all' }
  | { readonly kind: 'known' }
  | { readonly kind: 'unknown' }
  | IpMatch
  | { readonly kind: 'host'; readonly pattern: string }
  | { readonly kind: 'ns'; readonly match: NameServerMatch }
  | { readonly kind: 'rbl'; readonly zone: string };

export type IdentMatch = { readonly kind: 'all' } | { readonly kind: 'known' } | { readonly kind: 'pattern'; readonly pattern: string };

export type SourceItem = HostMatch | { readonly kind: 'ident'; readonly user: IdentMatch; readonly host: HostMatch };

export type LocalMatch = { readonly kind: 'all' } | { readonly kind: 'ident-user' } | { readonly kind: 'pattern'; readonly pattern: string };
export type DomainMatch =
  | { readonly kind: 'all' }
  | { readonly kind: 'pattern'; readonly pattern: string }
  | { readonly kind: 'ns'; readonly match: NameServerMatch };

export type AddressItem =
  | { readonly kind: 'all' }
  /** No @: a glob over the whole address. */
  | { readonly kind: 'pattern'; readonly pattern: string }
  /** NS=…: the name servers of the address's domain. */
  | { readonly kind: 'ns'; readonly match: NameServerMatch }
  | { readonly kind: 'address'; readonly local: LocalMatch; readonly domain: DomainMatch };

/** %F sender, %T recipient, %H client host name, %I client IP, %U IDENT user. */
export type MessageVar = 'F' | 'T' | 'H' | 'I' | 'U';
export type MessagePart = { readonly kind: 'text'; readonly text: string } | { readonly kind: 'var'; readonly name: MessageVar };

export interface RuleMessage {
  readonly code: number;
  /** Given in the file ("550 5.7.1 text"); otherwise the check uses <class>.7.1. */
  readonly enhanced?: string;
  /** Empty when the line gives only the code: the default text is used. */
  readonly parts: readonly MessagePart[];
}

export interface Rule {
  /** 1-based line number in the file. */
  readonly line: number;
  readonly action: RuleAction;
  readonly spelled: RuleSpelling;
  readonly source: RuleList<SourceItem>;
  readonly from: RuleList<AddressItem>;
  readonly to: RuleList<AddressItem>;
  readonly message?: RuleMessage;
  /** The line as written. */
  readonly text: string;
}

export interface RulesProblem {
  file: string;
  line: number;
  /** 1-based column of the offending text. */
  column: number;
  message: string;
}

/** `FILE:LINE:COL: message`, like the config loader's diagnostics. */
export function formatRulesProblem(p: RulesProblem): string {
  return `${p.file}:${p.line}:${p.column}: ${p.message.replace(/[\x00-\x1f\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)}`;
}

/** The file cannot be used. `problems` lists every bad line; `message` is one line per problem. */
export class RulesError extends Error {
  readonly problems: RulesProblem[];

  constructor(problems: RulesProblem[]) {
    super(problems.map(formatRulesProblem).join('\n'));
    this.name = 'RulesError';
    this.problems = problems;
  }
}

/** A piece of a line and the 1-based column where it starts. */
interface Piece {
  readonly text: string;
  readonly col: number;
}

type Report = (col: number, message: string) => void;

const ACTIONS: Record<string, { action: RuleAction; spelled: RuleSpelling }> = {
  allow: { action: 'allow', spelled: 'allow' },
  deny: { action: 'deny', spelled: 'deny' },
  noto: { action: 'noto', spelled: 'noto' },
  deny_delay: { action: 'deny', spelled: 'deny_delay' },
  noto_delay: { action: 'noto', spelled: 'noto_delay' },
};

/**
 * Parses a whole rules file. `file` names it in the problems. Throws RulesError listing every
 * problem of every bad line; otherwise returns the rules in file order.
 */
export function parseRulesFile(text: string, file: string): { rules: Rule[] } {
  const rules: Rule[] = [];
  const problems: RulesProblem[] = [];
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    let line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (i === 0 && line.startsWith('\uFEFF')) line = line.slice(1);
    const trimmed = line.trim();
    if (trimmed === '' || trimmed.startsWith('#')) return;
    const lineNo = i + 1;
    let bad = false;
    const report: Report = (column, message) => {
      bad = true;
      problems.push({ file, line: lineNo, column, message });
    };
    const rule = parseRuleLine(line, lineNo, report);
    if (rule && !bad) rules.push(rule);
  });
  if (problems.length > 0) throw new RulesError(problems);
  return { rules };
}

/** One non-comment line → a rule, or undefined after reporting its problems. */
function parseRuleLine(line: string, lineNo: number, report: Report): Rule | undefined {
  const control = /[\x00-\x08\x0a-\x1f\x7f]/.exec(line);
  if (control) {
    report(control.index + 1, `control character U+${control[0].charCodeAt(0).toString(16).padStart(4, '0').toUpperCase()} in the line`);
    return undefined;
  }

  const split = splitFields(line, report);
  if (!split) return undefined;
  const { fields, rest } = split;
  if (fields.length < 4) {
    report(1, `expected action:SourceList:FromList:ToList[:XXX message], found ${fields.length} field${fields.length === 1 ? '' : 's'}`);
    return undefined;
  }
  const [actionField, sourceField, fromField, toField] = fields as [Piece, Piece, Piece, Piece];

  // "deny:2001:db8::1:ALL:ALL" splits the address into fields; say so rather than what follows from it.
  const hexGroup = /^[0-9a-f]{1,4}$/i;
  if (hexGroup.test(sourceField.text.trim()) && (fromField.text.trim() === '' || hexGroup.test(fromField.text.trim())) && !net.isIPv4(sourceField.text.trim())) {
    report(trimPiece(sourceField).col, 'an IPv6 address is written in brackets ([2001:db8::1], [2001:db8::/32]): a bare ":" separates the fields');
    return undefined;
  }

  const actionText = trimPiece(actionField);
  const action = Object.hasOwn(ACTIONS, actionText.text) ? ACTIONS[actionText.text] : undefined;
  if (!action) {
    const hint = Object.hasOwn(ACTIONS, actionText.text.toLowerCase()) ? ' (actions are written in lower case)' : '';
    report(actionText.col, actionText.text === '' ? 'missing action: allow, deny or noto' : `unknown action "${actionText.text}": allow, deny or noto${hint}`);
  }

  const source = parseList(sourceField, 'SourceList', parseSourceItem, report);
  const from = parseList(fromField, 'FromList', parseAddressItem, report);
  const to = parseList(toField, 'ToList', parseAddressItem, report);
  // smtpd kept a message on an allow line and never used it: any 3-digit code is let through there.
  const message = rest ? parseRest(rest, action?.action !== 'allow', report) : undefined;

  if (!action || !source || !from || !to || message === null) return undefined;
  return { line: lineNo, action: action.action, spelled: action.spelled, source, from, to, ...(message ? { message } : {}), text: line };
}

/**
 * Splits the four fields on `:` (not inside brackets); `rest` is everything after the fourth
 * field's colon (message and comment), when there is one.
 */
function splitFields(line: string, report: Report): { fields: Piece[]; rest?: Piece } | undefined {
  const fields: Piece[] = [];
  let start = 0;
  let bracket = -1;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === '[' && bracket === -1) bracket = i;
    else if (c === ']' && bracket !== -1) bracket = -1;
    else if (c === ':' && bracket === -1) {
      fields.push({ text: line.slice(start, i), col: start + 1 });
      start = i + 1;
      if (fields.length === 4) return { fields, rest: { text: line.slice(start), col: start + 1 } };
    }
  }
  if (bracket !== -1) {
    report(bracket + 1, '"[" is not closed by "]"');
    return undefined;
  }
  fields.push({ text: line.slice(start), col: start + 1 });
  return { fields };
}

function trimPiece(p: Piece): Piece {
  const lead = p.text.length - p.text.trimStart().length;
  return { text: p.text.trim(), col: p.col + lead };
}

/** The tokens of a list field: split on spaces, tabs and commas; a `#` token ends the list. */
function tokens(p: Piece): Piece[] {
  const out: Piece[] = [];
  for (const m of p.text.matchAll(/[^ ,\t]+/g)) {
    if (m[0].startsWith('#')) break;
    out.push({ text: m[0], col: p.col + m.index });
  }
  return out;
}

function parseList<T>(field: Piece, what: string, parseItem: (tok: Piece, report: Report) => T | undefined, report: Report): RuleList<T> | undefined {
  const toks = tokens(field);
  if (toks.length === 0) {
    report(trimPiece(field).col, `empty ${what}: write ALL to match everything`);
    return undefined;
  }
  const segments: Piece[][] = [[]];
  const exceptCols: number[] = [];
  for (const tok of toks) {
    if (tok.text.toUpperCase() === 'EXCEPT') {
      exceptCols.push(tok.col);
      segments.push([]);
    } else {
      (segments[segments.length - 1] as Piece[]).push(tok);
    }
  }
  let ok = true;
  const parsed: T[][] = segments.map((segment, i) => {
    if (segment.length === 0) {
      ok = false;
      if (i === 0) report(exceptCols[0] ?? field.col, `${what}: EXCEPT needs a pattern before it`);
      else report(exceptCols[i - 1] ?? field.col, `${what}: EXCEPT needs a pattern after it`);
    }
    const items: T[] = [];
    for (const tok of segment) {
      const item = parseItem(tok, report);
      if (item === undefined) ok = false;
      else items.push(item);
    }
    return items;
  });
  if (!ok) return undefined;
  let list: RuleList<T> | undefined;
  for (let i = parsed.length - 1; i >= 0; i--) {
    const items = parsed[i] as T[];
    list = list ? { items, except: list } : { items };
  }
  return list;
}

const HOST_PATTERN = /^[a-z0-9*_-]+(\.[a-z0-9*_-]+)*\.?$/i;
const ZONE = /^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$/i;

function parseSourceItem(tok: Piece, report: Report): SourceItem | undefined {
  const t = tok.text;
  const at = t.startsWith('[') ? -1 : t.lastIndexOf('@');
  if (at === -1) return parseHostMatch(tok, report);
  // user@host: the IDENT (RFC 1413) user on the left.
  const userText = t.slice(0, at);
  const hostText = t.slice(at + 1);
  if (userText === '') {
    report(tok.col, `"${t}" has no IDENT user before the @ (write ALL@${hostText || 'host'}, KNOWN@… or a user pattern)`);
    return undefined;
  }
  if (hostText === '') {
    report(tok.col + at, `"${t}" has no host after the @ (write ${userText}@ALL)`);
    return undefined;
  }
  const host = parseHostMatch({ text: hostText, col: tok.col + at + 1 }, report);
  if (!host) return undefined;
  const user: IdentMatch = userText === 'ALL' ? { kind: 'all' } : userText === 'KNOWN' ? { kind: 'known' } : { kind: 'pattern', pattern: userText.toLowerCase() };
  return { kind: 'ident', user, host };
}

function parseHostMatch(tok: Piece, report: Report): HostMatch | undefined {
  const t = tok.text;
  if (t === 'ALL') return { kind: 'all' };
  if (t === 'KNOWN') return { kind: 'known' };
  if (t === 'UNKNOWN') return { kind: 'unknown' };
  if (t.startsWith('NS=')) {
    const match = parseNameServerMatch({ text: t.slice(3), col: tok.col + 3 }, t, report);
    return match && { kind: 'ns', match };
  }
  if (t.startsWith('RBL.')) {
    const zone = t.slice(4);
    if (!ZONE.test(zone)) {
      report(tok.col + 4, zone === '' ? '"RBL." needs a DNS blocklist zone after it (RBL.zen.example.org)' : `"${zone}" is not a DNS zone name`);
      return undefined;
    }
    return { kind: 'rbl', zone: zone.toLowerCase().replace(/\.$/, '') };
  }
  return parseIpOrHost(tok, report);
}

function parseNameServerMatch(p: Piece, whole: string, report: Report): NameServerMatch | undefined {
  const t = p.text;
  if (t === '') {
    report(p.col, `"${whole}" needs a pattern after NS= (a name server glob, an address or network, KNOWN or UNKNOWN)`);
    return undefined;
  }
  if (t === 'ALL') return { kind: 'all' };
  if (t === 'KNOWN') return { kind: 'known' };
  if (t === 'UNKNOWN') return { kind: 'unknown' };
  return parseIpOrHost(p, report);
}

/** An address, a network, an address glob or a host name glob. */
function parseIpOrHost(tok: Piece, report: Report): IpMatch | { kind: 'host'; pattern: string } | undefined {
  const t = tok.text;
  if (t.startsWith('[')) {
    if (!t.endsWith(']')) {
      report(tok.col, `"${t}": text after the closing "]"`);
      return undefined;
    }
    const inner = t.slice(1, -1);
    const err = cidrError(inner);
    if (err) {
      report(tok.col, `${err} (inside [...] write an IPv6 or IPv4 address or network)`);
      return undefined;
    }
    return ipOrCidr(inner);
  }
  if (t.length > 1 && t.startsWith('/') && t.endsWith('/')) {
    report(tok.col, `"${t}": /regex/ patterns (smtpd's USE_REGEX build) are not supported; use * globs`);
    return undefined;
  }
  if (/^[0-9.]+(\/.*)?$/.test(t)) {
    if (t === '0/0') return { kind: 'cidr', network: '0.0.0.0', bits: 0 };
    const slash = t.indexOf('/');
    const addr = slash === -1 ? t : t.slice(0, slash);
    if (!net.isIPv4(addr)) {
      const parts = addr.split('.').filter((x) => x !== '');
      const hint =
        parts.length > 0 && parts.length < 4 && slash === -1
          ? ` (a network is written ${[...parts, ...Array(4 - parts.length).fill('0')].join('.')}/${parts.length * 8}, an address prefix ${parts.join('.')}.*)`
          : '';
      report(tok.col, `"${t}" is not an IPv4 address or a.b.c.d/bits network${hint}`);
      return undefined;
    }
    if (slash !== -1) {
      const err = cidrError(t);
      if (err) {
        report(tok.col, err);
        return undefined;
      }
    }
    return ipOrCidr(t);
  }
  if (/^[0-9.*]+$/.test(t)) return { kind: 'ip-pattern', pattern: t };
  if (HOST_PATTERN.test(t)) return { kind: 'host', pattern: t.toLowerCase().replace(/\.$/, '') };
  report(tok.col, `"${t}" is not an IP address, a.b.c.d/bits network, [IPv6 address or network], host name pattern, ALL, KNOWN or UNKNOWN`);
  return undefined;
}

function ipOrCidr(text: string): IpMatch {
  const slash = text.indexOf('/');
  if (slash === -1) return { kind: 'ip', address: text.toLowerCase() };
  return { kind: 'cidr', network: text.slice(0, slash).toLowerCase(), bits: Number(text.slice(slash + 1)) };
}

function parseAddressItem(tok: Piece, report: Report): AddressItem | undefined {
  const t = tok.text;
  if (t === 'ALL') return { kind: 'all' };
  if (t.length > 1 && t.startsWith('/') && t.endsWith('/')) {
    report(tok.col, `"${t}": /regex/ patterns (smtpd's USE_REGEX build) are not supported; use * globs`);
    return undefined;
  }
  if (/[<>]/.test(t)) {
    report(tok.col, `"${t}": write addresses without angle brackets (the null sender <> is matched by ALL or *)`);
    return undefined;
  }
  if (t.startsWith('NS=')) {
    const match = parseNameServerMatch({ text: t.slice(3), col: tok.col + 3 }, t, report);
    return match && { kind: 'ns', match };
  }
  const at = t.lastIndexOf('@');
  if (at === -1) return { kind: 'pattern', pattern: t.toLowerCase() };
  const localText = t.slice(0, at);
  const domainText = t.slice(at + 1);
  if (localText === '') {
    report(tok.col, `"${t}" has nothing before the @ (write *${t} for any user)`);
    return undefined;
  }
  if (domainText === '') {
    report(tok.col + at, `"${t}" has nothing after the @ (write ${t}* for any domain)`);
    return undefined;
  }
  const local: LocalMatch = localText === 'ALL' ? { kind: 'all' } : localText === 'USER' ? { kind: 'ident-user' } : { kind: 'pattern', pattern: localText.toLowerCase() };
  let domain: DomainMatch;
  if (domainText === 'ALL') domain = { kind: 'all' };
  else if (domainText.startsWith('NS=')) {
    const match = parseNameServerMatch({ text: domainText.slice(3), col: tok.col + at + 4 }, domainText, report);
    if (!match) return undefined;
    domain = { kind: 'ns', match };
  } else domain = { kind: 'pattern', pattern: domainText.toLowerCase() };
  return { kind: 'address', local, domain };
}

/**
 * The text after the fourth field: a message, a `#` comment, or a message and then a comment.
 * Returns undefined for no message, null after reporting a problem.
 */
function parseRest(rest: Piece, refusal: boolean, report: Report): RuleMessage | undefined | null {
  const p = trimStartPiece(rest);
  if (p.text === '' || p.text.startsWith('#')) return undefined;
  const colon = p.text.indexOf(':');
  const messageText = colon === -1 ? p.text : p.text.slice(0, colon);
  let ok = true;
  if (colon !== -1) {
    const after = trimStartPiece({ text: p.text.slice(colon + 1), col: p.col + colon + 1 });
    if (after.text !== '' && !after.text.startsWith('#')) {
      report(p.col + colon, `text after the message: "${p.text.slice(colon)}" (a colon in a message is written %C; a comment after it starts with :#)`);
      ok = false;
    }
  }
  const message = parseMessage({ text: messageText.trimEnd(), col: p.col }, refusal, report);
  return ok && message ? message : null;
}

function trimStartPiece(p: Piece): Piece {
  const lead = p.text.length - p.text.trimStart().length;
  return { text: p.text.trimStart(), col: p.col + lead };
}

const VARS = new Set<string>(['F', 'T', 'H', 'I', 'U']);

function parseMessage(p: Piece, refusal: boolean, report: Report): RuleMessage | undefined {
  const codeMatch = /^(\d{3})(?=\s|$)/.exec(p.text);
  if (!codeMatch) {
    report(p.col, `the message must start with a 3-digit SMTP reply code and a space ("550 text"), not "${p.text}"`);
    return undefined;
  }
  const code = Number(codeMatch[1]);
  let ok = true;
  if (refusal && (code < 400 || code > 599)) {
    report(p.col, `reply code ${code}: a deny or noto reply is 4xx (try again later) or 5xx (refused)`);
    ok = false;
  }
  let rest = trimStartPiece({ text: p.text.slice(3), col: p.col + 3 });
  let enhanced: string | undefined;
  const enh = /^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)/.exec(rest.text);
  if (enh) {
    if (enh[1] !== String(code)[0]) {
      report(rest.col, `enhanced status code ${enh[0]} does not go with reply code ${code} (its first digit must be ${String(code)[0]})`);
      ok = false;
    }
    enhanced = enh[0];
    rest = trimStartPiece({ text: rest.text.slice(enh[0].length), col: rest.col + enh[0].length });
  }

  const parts: MessagePart[] = [];
  let text = '';
  const s = rest.text;
  for (let i = 0; i < s.length; i++) {
    const c = s[i] as string;
    if (c !== '%') {
      text += c;
      continue;
    }
    const next = s[i + 1];
    if (next !== undefined && VARS.has(next)) {
      if (text) parts.push({ kind: 'text', text });
      text = '';
      parts.push({ kind: 'var', name: next as MessageVar });
    } else if (next === 'C') text += ':';
    else if (next === '%') text += '%';
    else {
      report(rest.col + i, `${next === undefined ? '"%" at the end of the message' : `unknown "%${next}" in the message`}: known are %F %T %H %I %U, %C (a colon) and %% (a percent sign)`);
      ok = false;
    }
    i++;
  }
  if (text) parts.push({ kind: 'text', text });
  if (!ok) return undefined;
  return { code, ...(enhanced ? { enhanced } : {}), parts };
}
