// `mxguard explain` (issue 14): why would this client, sender and recipient be refused, delayed
// or tagged? Runs the whole policy as a session would (src/policy/offline.ts), with the real
// DNS (dns.servers) and the real store read-only (src/store/read-only.ts: counters, greylisting
// records, rates and the greet memory are read, never written), and prints each step's checks,
// verdicts, points and times, the reply a client would get, the score and the outcome. Delays
// (greet delay, tarpit, rate-limit tarpits) are reported, not waited. Sends no mail.
import fs from 'node:fs';
import net from 'node:net';
import type { Config } from '../config/schema.ts';
import { buildChecks } from '../policy/index.ts';
import { OfflineSession, type OfflineDataStep, type OfflineStep } from '../policy/offline.ts';
import { openStore, type Store } from '../store/index.ts';
import { SqliteStore } from '../store/sqlite.ts';
import { ReadOnlyStore, type SkippedWrite } from '../store/read-only.ts';
import { DnsResolver } from '../dns/resolver.ts';
import { receivedHeader } from '../smtp/replies.ts';
import { createLogger } from '../util/log.ts';
import { formatScore } from '../policy/scoring.ts';

export interface ExplainOptions {
  readonly ip: string;
  readonly helo: string;
  readonly from: string;
  readonly to: readonly string[];
  readonly auth?: string;
  /** A message file (LF or CRLF lines): the DATA checks judge it. */
  readonly message?: string;
}

export interface ExplainResult {
  readonly client: { ip: string; helo: string; from: string; to: readonly string[]; auth?: string };
  readonly steps: readonly OfflineStep[];
  /** The transaction score: at the end of DATA, or the points so far when no message was given. */
  readonly score: number;
  /** accepted, refused (5xx), tempfailed (4xx), discarded, or not-judged (no --message: DATA checks not run). */
  readonly outcome: 'accepted' | 'refused' | 'tempfailed' | 'discarded' | 'not-judged';
  /** The reply that decided the outcome. */
  readonly reply: string;
  /** Headers a queued message would get. */
  readonly headers: readonly string[];
  /** What a real session would have written to the store (not written). */
  readonly storeWrites: readonly SkippedWrite[];
  readonly store: string;
}

/** The store, read-only. A SQLite file that does not exist yet is not created: an empty store stands in. */
async function readOnlyStore(config: Config): Promise<ReadOnlyStore> {
  let inner: Store;
  const file = config.store.path ?? `${config.data_dir}/state.db`;
  if (config.store.backend === 'sqlite' && !fs.existsSync(file)) inner = new SqliteStore(':memory:');
  else inner = await openStore(config);
  return new ReadOnlyStore(inner);
}

export async function explain(config: Config, o: ExplainOptions): Promise<ExplainResult> {
  if (net.isIP(o.ip) === 0) throw new Error(`--ip ${o.ip}: not an IP address`);
  if (o.message !== undefined && !fs.existsSync(o.message)) throw new Error(`--message ${o.message}: no such file`);
  // Warnings and errors (a check that failed, a store error) go to standard error; the decisions are the output.
  const log = createLogger('warn', undefined, { fd: 2, sync: true, fields: { mode: 'explain' } });
  const store = await readOnlyStore(config);
  try {
    const dns = new DnsResolver({ servers: config.dns.servers, timeoutMs: config.dns.timeout, log });
    const s = new OfflineSession({ ip: o.ip }, { config, checks: buildChecks(config, store, dns, log), log, store, dns, greet: true });
    const steps: OfflineStep[] = [];
    const run = async (step: Promise<OfflineStep> | OfflineStep): Promise<OfflineStep> => {
      const done = await step;
      steps.push(done);
      return done;
    };
    let last = await run(s.connect());
    let data: OfflineDataStep | undefined;
    if (!s.closed) last = await run(s.helo(o.helo));
    if (!s.closed && o.auth !== undefined && !last.refused) last = await run(s.auth(o.auth));
    if (!s.closed) last = await run(s.mail(o.from));
    if (!s.closed && s.inTransaction) {
      for (const to of o.to) {
        last = await run(s.rcpt(to));
        if (s.closed) break;
      }
    }
    const accepted = s.recipients.length > 0;
    const sofar = s.tagsSoFar();
    if (!s.closed && accepted) {
      last = await run(s.dataCommand());
      if (!last.refused && o.message !== undefined) {
        const received = receivedHeader({ helo: o.helo, ip: o.ip, hostname: config.hostname, protocol: o.auth !== undefined ? 'ESMTPA' : 'ESMTP', id: 'EXPLAIN', rcpts: s.recipients.map((r) => r.address), date: new Date() });
        const body = fs.readFileSync(o.message).toString('latin1').replace(/\r?\n/g, '\r\n');
        data = await s.data(Buffer.concat([Buffer.from(received), Buffer.from(body, 'latin1')]));
        steps.push(data);
        last = data;
      }
    }
    await s.end(); // not queued: what was counted at MAIL is taken back (in memory)
    let outcome: ExplainResult['outcome'];
    let reply = last.reply;
    if (data) outcome = data.discard ? 'discarded' : codeOutcome(data.reply);
    else if (last.refused || !accepted) {
      // Every recipient refused: the last refusal is the answer.
      const refusal = [...steps].reverse().find((st) => st.refused);
      reply = refusal?.reply ?? last.reply;
      outcome = codeOutcome(reply);
    } else outcome = 'not-judged';
    return {
      client: { ip: o.ip, helo: o.helo, from: o.from, to: o.to, ...(o.auth !== undefined ? { auth: o.auth } : {}) },
      steps,
      score: data ? data.score : sofar.score,
      outcome,
      reply,
      headers: data ? data.headers : outcome === 'not-judged' ? sofar.headers : [],
      storeWrites: store.writes,
      store: store.kind,
    };
  } finally {
    await store.close();
    log.flush();
  }
}

function codeOutcome(reply: string): ExplainResult['outcome'] {
  if (reply.startsWith('2')) return 'accepted';
  return reply.startsWith('4') ? 'tempfailed' : 'refused';
}

const COMMAND: Record<OfflineStep['phase'], (arg: string | undefined) => string> = {
  connect: () => 'connect',
  helo: (a) => `EHLO ${a ?? ''}`,
  auth: (a) => `AUTH as ${a ?? ''}`,
  mail: (a) => `MAIL FROM:<${a ?? ''}>`,
  rcpt: (a) => `RCPT TO:<${a ?? ''}>`,
  data_command: () => 'DATA',
  data: () => 'end of DATA (the message)',
};

/** The report as text: one block per step, the checks in the order they ran, then the outcome. */
export function formatExplain(r: ExplainResult): string {
  const out: string[] = [];
  const c = r.client;
  out.push(`client [${c.ip}] HELO ${c.helo}${c.auth !== undefined ? ` AUTH ${c.auth}` : ''}, from <${c.from}> to ${c.to.map((t) => `<${t}>`).join(' ')}`);
  out.push(`store: ${r.store}, nothing written; delays are shown, not waited`);
  for (const st of r.steps) {
    out.push('');
    out.push(COMMAND[st.phase](st.arg));
    if (st.checks.length === 0) out.push('  (no check)');
    const width = Math.max(12, ...st.checks.map((e) => e.check.length));
    for (const e of st.checks) {
      const points = e.score !== undefined ? `${e.score >= 0 ? '+' : ''}${formatScore(e.score)}` : '';
      out.push(`  ${e.check.padEnd(width)}  ${e.verdict.padEnd(8)} ${points.padStart(6)} ${`${e.ms.toFixed(1)} ms`.padStart(10)}${e.reply !== undefined ? `  ${e.reply}` : ''}`);
    }
    if (st.delayMs > 0) out.push(`  reply held ${(st.delayMs / 1000).toFixed(1)} s (not waited here)`);
    const held = st.checks.some((e) => e.reply !== undefined) && !st.refused && (st.phase === 'connect' || st.phase === 'helo' || st.phase === 'mail');
    out.push(`  -> ${st.reply}${held ? '   (the refusal is answered at RCPT: smtp.delay_reject)' : ''}${st.close ? '   (connection closed)' : ''}`);
  }
  out.push('');
  out.push(`score: ${formatScore(r.score)}`);
  if (r.outcome === 'not-judged') out.push(`outcome: the recipients are accepted; DATA checks not run (no --message)`);
  else out.push(`outcome: ${r.outcome}: ${r.reply}`);
  if (r.headers.length > 0) out.push('headers added:', ...r.headers.map((h) => `  ${h.replace(/\r\n$/, '').replace(/\r\n/g, '\n  ')}`));
  if (r.storeWrites.length > 0) {
    out.push(`store writes a real session would make (not made): ${r.storeWrites.length}`);
    for (const w of r.storeWrites.slice(0, 20)) out.push(`  ${w.op} ${w.key}${w.value !== undefined ? ` ${String(w.value)}` : ''}`);
  }
  return out.join('\n');
}
