// The history side of the admin API (issue 14); src/admin/server.ts routes here after the token.
//   GET  /api/history?ip=&sender=&rcpt=&outcome=&check=&since=&until=&limit=
//        {"items": [HistoryItem…]} newest first (src/admin/history/query.ts says what each matches)
//   GET  /api/history/<seq>            one HistoryItem, or 404
//   POST /api/history/<seq>/release    lets the transaction's greylisted triplets through now:
//        {"released": [keys]}; 404 without such a transaction or when no triplet is left in the
//        store, 409 when nothing in it was greylisted
//   GET  /api/stats                    {"now", "minutes": [MinuteStats…] (the last 60, oldest
//        first, every minute present; byCheck counts transactions a check refused, or refused
//        a recipient of), "queue": {"active", "deferred", "oldestAgeSeconds"}}
import type { Config } from '../../config/schema.ts';
import type { Store } from '../../store/store.ts';
import type { Logger } from '../../util/log.ts';
import type { QueueStats } from '../../util/metrics.ts';
import { GreyStore, keyFromArgs } from '../../policy/greylist/store.ts';
import { parseHistoryQuery } from './query.ts';
import type { HistoryItem, HistoryStore } from './store.ts';

export interface HistoryApiDeps {
  readonly history: HistoryStore;
  readonly store: Store;
  readonly config: Config;
  readonly log: Logger;
  /** The forwarder's queue now, when the daemon runs one. */
  readonly queue?: () => QueueStats | undefined;
}

export interface ApiAnswer {
  readonly status: number;
  readonly body: unknown;
}

/** The answer to a history or stats request, or undefined when the path is not one of them. */
export async function historyApi(url: URL, method: string, deps: HistoryApiDeps): Promise<ApiAnswer | undefined> {
  const p = url.pathname;
  if (p === '/api/stats') return method === 'GET' ? { status: 200, body: stats(deps) } : notAllowed();
  if (p === '/api/history') {
    if (method !== 'GET') return notAllowed();
    const q = parseHistoryQuery(url.searchParams);
    if ('error' in q) return { status: 400, body: { error: q.error } };
    return { status: 200, body: { items: deps.history.search(q) } };
  }
  const m = /^\/api\/history\/([^/]+)(\/release)?$/.exec(p);
  if (!m) return undefined;
  if (!/^\d{1,15}$/.test(m[1] as string)) return { status: 400, body: { error: 'a transaction is named by its seq number' } };
  const item = deps.history.get(Number(m[1]));
  if (m[2] === undefined) {
    if (method !== 'GET') return notAllowed();
    return item ? { status: 200, body: item } : { status: 404, body: { error: `no transaction ${m[1] as string} in the history` } };
  }
  if (method !== 'POST') return notAllowed();
  if (!item) return { status: 404, body: { error: `no transaction ${m[1] as string} in the history` } };
  return release(item, deps);
}

const notAllowed = (): ApiAnswer => ({ status: 405, body: { error: 'method not allowed' } });

/**
 * The recipients greylisting deferred in a transaction: those it refused at RCPT, and for the
 * null sender (deferred at DATA) the accepted ones.
 */
export function greylistedRcpts(item: Pick<HistoryItem, 'refused' | 'entries' | 'rcpts'>): string[] {
  const out = item.refused.filter((r) => r.check === 'greylist').map((r) => r.rcpt);
  if (item.entries.some((e) => e.phase === 'data' && e.check === 'greylist' && e.verdict === 'tempfail')) out.push(...item.rcpts);
  return [...new Set(out)];
}

async function release(item: HistoryItem, deps: HistoryApiDeps): Promise<ApiAnswer> {
  const rcpts = greylistedRcpts(item);
  if (rcpts.length === 0) return { status: 409, body: { error: `nothing in transaction ${item.seq} was greylisted` } };
  const g = deps.config.greylist;
  const mode = g?.mode ?? 'triplet';
  const expire = g?.expire ?? 35 * 86_400_000;
  const grey = new GreyStore(deps.store);
  // The keys greylisting used, as the trace kept them (by_domain and spf_domain key on more than
  // the client address); else as `mxguard greylist release IP SENDER RCPT` names them.
  const keys = new Set<string>(item.refused.filter((r) => r.check === 'greylist' && r.key !== undefined).map((r) => r.key as string));
  const keyed = new Set(item.refused.filter((r) => r.key !== undefined).map((r) => r.rcpt));
  for (const rcpt of rcpts) {
    if (keyed.has(rcpt)) continue;
    const key = keyFromArgs(mode, mode === 'ip' ? [item.ip] : [item.ip, item.mailFrom === '' ? '<>' : item.mailFrom, rcpt]);
    if (typeof key === 'string') keys.add(key);
  }
  const released: string[] = [];
  for (const key of keys) if (await grey.release(key, expire)) released.push(key);
  if (released.length === 0) return { status: 404, body: { error: `no greylisted triplet of transaction ${item.seq} is left in the store (passed or expired?)` } };
  deps.log.info({ check: 'greylist', keys: released, seq: item.seq, via: 'admin' }, 'triplets released from the history');
  return { status: 200, body: { released } };
}

function stats(deps: HistoryApiDeps): unknown {
  const now = Date.now();
  const q = deps.queue?.();
  const oldest = [q?.active.oldestAt, q?.deferred.oldestAt].filter((x): x is number => x !== undefined);
  return {
    now,
    minutes: deps.history.stats(now),
    queue: {
      active: q?.active.count ?? 0,
      deferred: q?.deferred.count ?? 0,
      oldestAgeSeconds: oldest.length === 0 ? 0 : Math.max(0, Math.round((now - Math.min(...oldest)) / 1000)),
    },
  };
}
