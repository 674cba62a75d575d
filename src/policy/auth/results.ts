// Authentication results of one transaction (issue 12): what the SPF check found at MAIL (and,
// later, DKIM, DMARC and ARC at the end of DATA), kept on the transaction so that later checks
// can use them (greylisting keys a pool by its SPF-passing domain; an exec scanner gets
// SPF_PASS) and so that mxguard writes them into one RFC 8601 Authentication-Results field with
// its own host name as the authserv-id.

/** RFC 7208 results. */
export type SpfResult = 'pass' | 'fail' | 'softfail' | 'neutral' | 'none' | 'temperror' | 'permerror';

export interface SpfOutcome {
  readonly result: SpfResult;
  /** The domain checked: the MAIL FROM domain, or the HELO name for the null sender. */
  readonly domain: string;
  /** Which identity: smtp.mailfrom, or smtp.helo for the null sender. */
  readonly identity: 'mailfrom' | 'helo';
  /** The sender address (mailfrom) or the HELO name, as the A-R property value. */
  readonly value: string;
  /** Why, for the A-R comment and the log (the matching mechanism, the DNS error). */
  readonly comment?: string;
}

/** One result as mailauth formats it for RFC 8601 (`info`: "dkim=pass header.d=… header.s=…"). */
export interface MethodOutcome {
  readonly result: string;
  readonly info: string;
}

export interface DmarcOutcome extends MethodOutcome {
  /** The policy that applies (p, or sp for a subdomain): none, quarantine or reject. */
  readonly policy: string;
  /** t=y: the domain is testing its policy; it is not to be enforced. */
  readonly testMode: boolean;
  /** The author (From:) domain. */
  readonly domain: string;
}

/** RFC 8601 2.7.3 iprev: does the client's reverse DNS name resolve back to it? */
export interface IprevOutcome {
  readonly result: 'pass' | 'fail' | 'temperror';
  /** The forward-confirmed name (pass), for the comment. */
  readonly name?: string;
  readonly ip: string;
}

/** Filled by the checks of one transaction; every field is set at most once. */
export interface AuthResults {
  spf?: SpfOutcome;
  iprev?: IprevOutcome;
  /** Each DKIM signature's result (end of DATA). */
  dkim?: readonly (MethodOutcome & { readonly domain: string })[];
  arc?: MethodOutcome & { readonly sealers: readonly string[] };
  dmarc?: DmarcOutcome;
}

/** A property value as RFC 8601 wants it: a token as is, anything else quoted. */
function pvalue(v: string): string {
  return /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]+$/.test(v) ? v : `"${v.replace(/["\\]/g, '\\$&')}"`;
}

/** A result mailauth formatted, on one line (we fold between results, never inside one). */
function oneLine(info: string): string {
  return info.replace(/\r?\n[ \t]*/g, ' ').trim();
}

/** RFC 8601 comment text: parentheses and backslashes escaped, one line. */
function comment(text: string): string {
  return ` (${text.replace(/[\r\n]+/g, ' ').replace(/[()\\]/g, '\\$&')})`;
}

/**
 * The Authentication-Results field (ending CRLF): `authservId; spf=pass smtp.mailfrom=…;
 * auth=pass smtp.auth=alice`, one result per folded line; `none` when there is none.
 */
export function authResultsHeader(authservId: string, results: AuthResults, authUser?: string): string {
  const parts: string[] = [];
  const spf = results.spf;
  for (const d of results.dkim ?? []) parts.push(oneLine(d.info));
  if (spf) parts.push(`spf=${spf.result}${spf.comment ? comment(spf.comment) : ''} smtp.${spf.identity}=${pvalue(spf.value)}`);
  if (results.dmarc) parts.push(oneLine(results.dmarc.info));
  const iprev = results.iprev;
  if (iprev) parts.push(`iprev=${iprev.result}${iprev.name ? comment(iprev.name) : ''} policy.iprev=${pvalue(iprev.ip)}`);
  if (results.arc) parts.push(oneLine(results.arc.info));
  if (authUser !== undefined) parts.push(`auth=pass smtp.auth=${pvalue(authUser)}`);
  if (parts.length === 0) return `Authentication-Results: ${authservId}; none\r\n`;
  return `Authentication-Results: ${authservId};\r\n\t${parts.join(';\r\n\t')}\r\n`;
}

/** The authserv-id an incoming Authentication-Results field claims (its first token), lower case. */
export function authservIdOf(fieldValue: string): string {
  return (/^\s*(?:\([^)]*\)\s*)*([^\s;()]+)/.exec(fieldValue)?.[1] ?? '').toLowerCase();
}
