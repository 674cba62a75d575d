// The variants of the 1 KiB, 20 sessions cell (issue 10, "Must show" 5 and 6): the same cell
// against mxguard processes that differ in one thing each, interleaved round by round with the
// shipped defaults, so each can be read as a ratio to the defaults of the same round:
// - 100 SpamAssassin rules (filters.rules), 100 Mfilter rules (filters.mfilter): target ≥ 0.8;
// - greylisting with every client allowed and two rate rules (issue 11, Must show 6): target ≥ 0.8;
// - SPF + DKIM + ARC + DMARC on a DKIM-signed message, DNS on loopback (issue 12, Must show 4): target ≥ 0.6;
//   (BENCH_SPLIT=1 adds the non-relay client alone, greylisting alone and the two rate rules alone, to see which costs what);
// - log.level warn: what the info lines cost;
// - the spool on tmpfs (/dev/shm), where fsync costs nothing: what the fsyncs cost;
// - BENCH_BASELINE=DIR: the same defaults on another checkout (the code before an issue).
// CPU per message is the whole process's user + system time (all threads, the forwarder
// included), read from /proc/<pid>/stat, over the messages of the cell.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { freePort } from '../test/harness/peers.ts';
import { startMxguard, type MxguardProcess } from '../test/harness/mxguard-process.ts';
import { generateMfilter, generateRules } from './filter-rules.ts';
import { median } from './stats.ts';
import { signedMessage } from './signed-message.ts';
import { startDnsmasq } from '../test/harness/dns.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');

export interface Variant {
  readonly key: string;
  readonly what: string;
  readonly mx: MxguardProcess;
}

export interface VariantSample {
  readonly key: string;
  readonly round: number;
  readonly rate: number;
  readonly sink: number;
  readonly cpuPerMsg: number;
}

/** Starts one mxguard per variant, the shipped defaults first, each in its own directory. */
export async function startVariants(dir: string, base: Record<string, unknown>, baseline: string | undefined): Promise<{ variants: Variant[]; tmpfsDir: string; messageFile: string; stopVariantPeers: () => Promise<void> }> {
  // The message every variant gets (DKIM-signed), and the DNS that judges it: SPF, DKIM, DMARC.
  const signed = await signedMessage(dir);
  const dm = await startDnsmasq({ records: signed.records });
  const rulesFile = path.join(dir, 'bench-100.cf');
  fs.writeFileSync(rulesFile, generateRules());
  const mfilterFile = path.join(dir, 'bench-100.rul');
  fs.writeFileSync(mfilterFile, generateMfilter());
  const shm = fs.mkdtempSync('/dev/shm/mxguard-bench-');
  // The defaults run in a process of their own too, started and warmed up like the others: a
  // process that already ran the big cells has a grown heap and fewer collections, which would
  // flatter it.
  // Greylisting that runs for every recipient and finds the client's network allowed (a Store
  // look-up per RCPT), and two rate rules counted in the Store per message and per recipient.
  // The bench clients (127.0.0.1) are relay clients by default, which greylisting waives: here
  // they are not, so the HELO and sender-domain checks they then meet are turned off (smtp-source
  // says HELO with the machine's short name; there is no DNS here).
  // The bench clients' network, allowed through the CLI before the run (a Store entry, as an administrator would).
  const allowLoopback = (configFile: string): string => execFileSync(process.execPath, [MAIN, 'greylist', '-c', configFile, 'allow', '127.0.0.1'], { encoding: 'utf8' });
  const greyConfig = {
    relay: { forward_from_ip: ['192.0.2.0/24'] },
    helo: { reject_invalid: false },
    mail_from: { require_domain: false },
    greylist: { when: 'always' },
    limits: { ...(base.limits as object), fromip_max: 10_000_000, fromip_nolimit: [], rates: [{ name: 'rcpts_per_sender', key: 'sender', count: 'recipients', max: 10_000_000, per: '1h' }] },
  };
  const specs: { key: string; what: string; config: Record<string, unknown>; main?: string; prepare?: (configFile: string) => void }[] = [
    { key: 'defaults', what: 'shipped defaults (info log to a file, fsynced spool)', config: {} },
    { key: 'rules', what: '+ 100 SpamAssassin rules (filters.rules)', config: { filters: { rules: [rulesFile] } } },
    { key: 'mfilter', what: '+ 100 Mfilter rules (filters.mfilter)', config: { filters: { mfilter: mfilterFile } } },
    { key: 'warn', what: 'log.level warn (no info lines)', config: { log: { ...(base.log as object), level: 'warn' } } },
    { key: 'tmpfs', what: 'spool on tmpfs (fsync costs nothing)', config: { data_dir: path.join(shm, 'var') } },
    {
      key: 'auth',
      what: '+ SPF, DKIM, ARC and DMARC (spf, dmarc; a DKIM-signed message, DNS on loopback)',
      config: { relay: { forward_from_ip: ['192.0.2.0/24'] }, helo: { reject_invalid: false }, mail_from: { require_domain: false }, dns: { servers: [dm.server] }, spf: {}, dmarc: {} },
    },
    ...(process.env.BENCH_SPLIT === '1'
      ? [
          { key: 'nonrelay', what: 'the bench clients not relay clients, nothing else (what greylisting and rates run on)', config: { relay: greyConfig.relay, helo: greyConfig.helo, mail_from: greyConfig.mail_from } },
          { key: 'greyonly', what: 'greylisting only', config: { ...greyConfig, limits: base.limits }, prepare: allowLoopback },
          { key: 'ratesonly', what: 'two rate rules only', config: { relay: greyConfig.relay, helo: greyConfig.helo, mail_from: greyConfig.mail_from, limits: greyConfig.limits } },
        ]
      : []),
    {
      key: 'greylist',
      what: '+ greylisting (when: always, the client network allowed) and two rate rules (limits.fromip_max, recipients per sender)',
      config: greyConfig,
      prepare: allowLoopback,
    },
  ];
  if (baseline !== undefined) specs.push({ key: 'baseline', what: `shipped defaults, the code of ${commitOf(baseline)} (BENCH_BASELINE)`, config: {}, main: path.join(baseline, 'src/cli/main.ts') });
  // BENCH_VARIANTS=defaults,baseline: only those (a longer A/B in the same time).
  const only = process.env.BENCH_VARIANTS?.split(',');
  const out: Variant[] = [];
  for (const s of specs) {
    if (only && !only.includes(s.key)) continue;
    const vdir = path.join(dir, `variant-${s.key}`);
    fs.mkdirSync(vdir, { recursive: true });
    const config = { ...base, data_dir: path.join(vdir, 'var'), log: { ...(base.log as object), file: path.join(vdir, 'mxguard-json.log') }, ...s.config };
    const mx = await startMxguard(vdir, config, await freePort(), s.main !== undefined ? { main: s.main } : {});
    s.prepare?.(path.join(vdir, 'mxguard.yaml'));
    out.push({ key: s.key, what: s.what, mx });
  }
  return { variants: out, tmpfsDir: shm, messageFile: signed.file, stopVariantPeers: () => dm.stop() };
}

/** The variants' table: medians over rounds of rate, ratio to smtp-sink and ratio to the defaults of the same round. */
export function variantsTable(samples: VariantSample[], whats: Map<string, string>, messages: number): string {
  const keys = [...whats.keys()];
  const rows = keys.map((key) => {
    const mine = samples.filter((s) => s.key === key);
    const toDefaults = mine.map((s) => {
      const ref = samples.find((r) => r.key === 'defaults' && r.round === s.round);
      return ref ? s.rate / ref.rate : NaN;
    });
    return `| ${whats.get(key) ?? key} | ${mine.length} | ${median(mine.map((s) => s.rate)).toFixed(0)} | ${median(mine.map((s) => s.rate / s.sink)).toFixed(3)} | ${key === 'defaults' ? '1' : median(toDefaults).toFixed(3)} | ${median(mine.map((s) => s.cpuPerMsg)).toFixed(2)} |`;
  });
  return [`| mxguard, 1 KiB, 20 sessions (${messages} msgs) | rounds | msg/s | ratio to smtp-sink | ratio to the defaults, same round | CPU ms/msg |`, '|---|---:|---:|---:|---:|---:|', ...rows].join('\n');
}

/** Per-round lines of the variants. */
export function variantRounds(samples: VariantSample[]): string {
  return samples.map((s) => `round ${s.round} ${s.key.padEnd(9)} sink ${s.sink.toFixed(0).padStart(6)}  mxguard ${s.rate.toFixed(0).padStart(6)} (${(s.rate / s.sink).toFixed(3)})  cpu ${s.cpuPerMsg.toFixed(2)} ms`).join('\n');
}

/** The short commit of a checkout, for the table. */
function commitOf(dir: string): string {
  try {
    return execFileSync('git', ['-C', dir, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
  } catch {
    return dir;
  }
}

/** Medians of one variant: its CPU ms/msg and its rate as a ratio to the defaults of the same round. */
export function variantMedians(samples: VariantSample[], key: string): { cpu: number; toDefaults: number } | undefined {
  const mine = samples.filter((s) => s.key === key);
  if (mine.length === 0) return undefined;
  const ratios = mine.map((s) => s.rate / (samples.find((r) => r.key === 'defaults' && r.round === s.round)?.rate ?? NaN));
  return { cpu: median(mine.map((s) => s.cpuPerMsg)), toDefaults: median(ratios) };
}
