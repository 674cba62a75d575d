// The search of /api/history (issue 14), pure: the URL parameters checked into a HistoryQuery,
// and the query turned into SQL for the history table (src/admin/history/store.ts). Every
// value reaches SQLite as a bound parameter, never inside the SQL text.
import { canonicalIp } from '../../util/cidr.ts';
import type { TraceOutcome } from '../../policy/trace.ts';

export const OUTCOMES: readonly TraceOutcome[] = ['accepted', 'refused', 'tempfailed', 'discarded', 'aborted'];
export const DEFAULT_LIMIT = 100;
export const MAX_LIMIT = 1000;
/** Longest sender or recipient text searched for (an address is at most 320 octets, RFC 5321 4.5.3.1). */
const MAX_TEXT = 320;
const CHECK_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;
const PARAMS = new Set(['ip', 'sender', 'rcpt', 'outcome', 'check', 'since', 'until', 'limit']);

export interface HistoryQuery {
  /** The client address, exactly (canonical: IPv4-mapped IPv6 as IPv4). */
  readonly ip?: string;
  /** A piece of the envelope sender, lower-case. */
  readonly sender?: string;
  /** A piece of a recipient (accepted or refused), lower-case. */
  readonly rcpt?: string;
  readonly outcome?: TraceOutcome;
  /** A check that gave a verdict other than continue. */
  readonly check?: string;
  /** ms since the epoch, inclusive. */
  readonly since?: number;
  readonly until?: number;
  readonly limit: number;
}

/** The parameters of GET /api/history, checked; an empty value counts as not given. */
export function parseHistoryQuery(params: URLSearchParams): HistoryQuery | { error: string } {
  const seen = new Set<string>();
  for (const key of params.keys()) {
    if (!PARAMS.has(key)) return { error: `unknown parameter ${JSON.stringify(key.slice(0, 40))} (ip, sender, rcpt, outcome, check, since, until, limit)` };
    if (seen.has(key)) return { error: `${key} given twice` };
    seen.add(key);
  }
  const get = (k: string): string | undefined => {
    const v = params.get(k);
    return v === null || v === '' ? undefined : v;
  };
  const q: { -readonly [K in keyof HistoryQuery]: HistoryQuery[K] } = { limit: DEFAULT_LIMIT };
  const ip = get('ip');
  if (ip !== undefined) {
    const c = canonicalIp(ip);
    if (c === undefined) return { error: `ip: ${JSON.stringify(ip.slice(0, 60))} is not an IP address` };
    q.ip = c;
  }
  for (const k of ['sender', 'rcpt'] as const) {
    const v = get(k);
    if (v === undefined) continue;
    if (v.length > MAX_TEXT) return { error: `${k}: longer than ${MAX_TEXT} characters` };
    q[k] = v.toLowerCase();
  }
  const outcome = get('outcome');
  if (outcome !== undefined) {
    if (!(OUTCOMES as readonly string[]).includes(outcome)) return { error: `outcome: one of ${OUTCOMES.join(', ')}` };
    q.outcome = outcome as TraceOutcome;
  }
  const check = get('check');
  if (check !== undefined) {
    if (!CHECK_NAME.test(check)) return { error: 'check: a check name (letters, digits, _ . : -)' };
    q.check = check;
  }
  for (const k of ['since', 'until'] as const) {
    const v = get(k);
    if (v === undefined) continue;
    if (!/^\d{1,15}$/.test(v)) return { error: `${k}: milliseconds since the epoch` };
    q[k] = Number(v);
  }
  if (q.since !== undefined && q.until !== undefined && q.since > q.until) return { error: 'since is after until' };
  const limit = get('limit');
  if (limit !== undefined) {
    if (!/^\d{1,7}$/.test(limit) || Number(limit) < 1 || Number(limit) > MAX_LIMIT) return { error: `limit: 1 to ${MAX_LIMIT}` };
    q.limit = Number(limit);
  }
  return q;
}

/** The SELECT for a query: newest first, every value a bound parameter. */
export function historySql(q: HistoryQuery): { sql: string; args: (string | number)[] } {
  const where: string[] = [];
  const args: (string | number)[] = [];
  if (q.ip !== undefined) {
    where.push('ip = ?');
    args.push(q.ip);
  }
  // instr(), not LIKE: a % or _ in what the administrator typed is meant literally.
  if (q.sender !== undefined) {
    where.push('instr(sender, ?) > 0');
    args.push(q.sender);
  }
  if (q.rcpt !== undefined) {
    where.push('instr(rcpts, ?) > 0');
    args.push(q.rcpt);
  }
  if (q.outcome !== undefined) {
    where.push('outcome = ?');
    args.push(q.outcome);
  }
  if (q.check !== undefined) {
    where.push('instr(checks, ?) > 0');
    args.push(`,${q.check},`);
  }
  if (q.since !== undefined) {
    where.push('at >= ?');
    args.push(q.since);
  }
  if (q.until !== undefined) {
    where.push('at <= ?');
    args.push(q.until);
  }
  const sql = `SELECT seq, record FROM tx${where.length > 0 ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY seq DESC LIMIT ?`;
  args.push(q.limit);
  return { sql, args };
}
