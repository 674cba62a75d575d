// `mxguard greylist list | allow IP|CIDR... | release KEY | delete KEY... | stats`: greylisting's
// records in the store (src/policy/greylist/store.ts), the same ones the admin API serves.
//   list                      every triplet (grey or passed) and every allowed network
//   allow IP|CIDR...          allow these client networks for greylist.expire (a /24 or /64 each)
//   release KEY | IP FROM TO  let a waiting triplet through now (a login link must not wait)
//   delete KEY...             forget triplets or allowed networks, by the key `list` shows
//   stats                     how many of each
import type { Config } from '../config/schema.ts';
import { openStore } from '../store/index.ts';
import { GreyStore, keyFromArgs, networksToAllow, nowSec, type GreyEntry } from '../policy/greylist/store.ts';

const iso = (sec: number): string => new Date(sec * 1000).toISOString().replace(/\.000Z$/, 'Z');

/** One `list` line per triplet: its state, key, and the times that matter. */
export function formatTriplet(e: GreyEntry, delaySec: number, now: number): string {
  const r = e.record;
  if (r.passed !== undefined) return `passed  ${e.key}  first=${iso(r.first)} last=${iso(r.passed)}`;
  const due = r.first + delaySec * ((r.tries ?? 0) + 1);
  return `grey    ${e.key}  first=${iso(r.first)} ${due > now ? `retry in ${due - now}s` : 'retry due'}`;
}

export async function greylistCommand(config: Config, command: string, args: readonly string[]): Promise<string> {
  const g = config.greylist;
  const mode = g?.mode ?? 'triplet';
  const expire = g?.expire ?? 35 * 86_400_000;
  const store = await openStore(config);
  const grey = new GreyStore(store);
  try {
    switch (command) {
      case 'list': {
        const { triplets, allowed } = await grey.list();
        const now = nowSec();
        return [...triplets.map((t) => formatTriplet(t, (g?.delay ?? 300_000) / 1000, now)), ...allowed.map((a) => `allowed ${a.net}  by=${a.by} since=${iso(a.at)}`)].join('\n');
      }
      case 'allow': {
        if (args.length === 0) throw new Error('usage: mxguard greylist allow IP|CIDR...');
        const nets: string[] = [];
        for (const a of args) {
          const n = networksToAllow(a);
          if ('error' in n) throw new Error(n.error);
          nets.push(...n);
        }
        for (const n of nets) await grey.allow(n, 'admin', expire);
        return `allowed ${nets.length} network${nets.length === 1 ? '' : 's'}${nets.length <= 4 ? `: ${nets.join(', ')}` : ''}`;
      }
      case 'release': {
        const key = keyFromArgs(mode, args);
        if (typeof key !== 'string') throw new Error(key.error);
        if (!(await grey.release(key, expire))) throw new Error(`no such triplet: ${key}`);
        return `released ${key}`;
      }
      case 'delete': {
        if (args.length === 0) throw new Error('usage: mxguard greylist delete KEY...');
        const n = await grey.delete(args);
        return `deleted ${n} of ${args.length}`;
      }
      case 'stats': {
        const s = await grey.stats();
        return [`grey ${s.grey}`, `passed ${s.passed}`, `allowed_auto ${s.allowedAuto}`, `allowed_admin ${s.allowedAdmin}`].join('\n');
      }
      default:
        throw new Error(`unknown greylist command "${command}" (list, allow, release, delete, stats)`);
    }
  } finally {
    await store.close();
  }
}
