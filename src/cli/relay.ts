// `mxguard relay add|delete|expire|list|dump|load`: vsmtprelay's commands on the relayers table
// (POP-before-SMTP logins: IP → epoch seconds). Output is one `IP TIMESTAMP` line per entry, so
// it can be edited and fed back with `mxguard relay load`.
//   add ip [ticks]   insert with the current time (or ticks, epoch seconds)
//   delete ip [...]  remove these addresses
//   expire [n]       remove old entries (older than relay.forward_window, or than n minutes)
//   list [n]         list old entries (same meaning of "old")
//   dump             list every entry, future-dated ones too
//   load [file]      add `IP TIMESTAMP` lines (standard input without a file)
import fs from 'node:fs';
import net from 'node:net';
import type { Config } from '../config/schema.ts';
import { openStore, type Relayer, type Store } from '../store/index.ts';
import { clock } from '../util/clock.ts';

function format(entries: readonly Relayer[]): string {
  return entries.map((r) => `${r.ip} ${r.at}`).join('\n');
}

function checkIp(ip: string): string {
  if (net.isIP(ip) === 0) throw new Error(`"${ip}" is not an IP address`);
  return ip;
}

function ticks(text: string | undefined, what: string): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d{1,12}$/.test(text)) throw new Error(`${what} must be a whole number, not "${text}"`);
  return Number(text);
}

/** The cut-off for "old": n minutes ago, or relay.forward_window ago. */
function cutoff(config: Config, minutes: string | undefined): number {
  const n = ticks(minutes, 'n (minutes)');
  const windowS = n === undefined ? config.relay.forward_window / 1000 : n * 60;
  return Math.floor(clock.now() / 1000 - windowS);
}

export async function relayCommand(config: Config, command: string, args: readonly string[]): Promise<string> {
  const store: Store = await openStore(config);
  try {
    const now = Math.floor(clock.now() / 1000);
    const keep = config.relay.relayers_keep;
    switch (command) {
      case 'add': {
        const [ip, at] = args;
        if (ip === undefined || args.length > 2) throw new Error('usage: mxguard relay add IP [TICKS]');
        await store.relayerAdd(checkIp(ip), ticks(at, 'TICKS') ?? now, keep);
        return '';
      }
      case 'delete': {
        if (args.length === 0) throw new Error('usage: mxguard relay delete IP [IP...]');
        await store.relayerDelete(args.map(checkIp));
        return '';
      }
      case 'expire': {
        await store.relayerExpire(cutoff(config, args[0]));
        return '';
      }
      case 'list': {
        const before = cutoff(config, args[0]);
        return format((await store.relayerList()).filter((r) => r.at < before));
      }
      case 'dump':
        return format(await store.relayerList());
      case 'load': {
        const text = fs.readFileSync(args[0] ?? 0, 'utf8');
        let n = 0;
        for (const [i, raw] of text.split('\n').entries()) {
          const line = raw.trim();
          if (line === '' || line.startsWith('#')) continue;
          const m = /^(\S+)\s+(\d{1,12})$/.exec(line);
          if (!m || net.isIP(m[1] as string) === 0) throw new Error(`line ${i + 1}: expected "IP TIMESTAMP", got "${line}"`);
          await store.relayerAdd(m[1] as string, Number(m[2]), keep);
          n++;
        }
        return `loaded ${n} entr${n === 1 ? 'y' : 'ies'}`;
      }
      default:
        throw new Error(`unknown relay command "${command}" (add, delete, expire, list, dump, load)`);
    }
  } finally {
    await store.close();
  }
}
