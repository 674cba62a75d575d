// Runs the checks of one phase in order. The first final verdict (accept, reject, tempfail,
// discard) ends the phase; tags add up. A check that throws is a tempfail (451 4.3.0), never
// an accept: a broken check must not open the gate.
//
// Checks marked `concurrent` (the DNS lookups) are started together: when the engine reaches the
// first of them, it starts every concurrent check after it as well, so that a phase waits for
// the slowest lookup, not for the sum of them (a black-holed DNS server costs one dns.timeout
// per phase). The verdicts are still taken in registry order: a later check's answer counts only
// when every check ahead of it said continue or tag. The checks before the first concurrent one
// (ban.ip, say) still decide before any query is sent.
import type { AnyCheck, Check } from './check.ts';
import type { PhaseContexts } from './context.ts';
import type { FinalVerdict, Phase, Verdict } from './verdict.ts';
import { refusalReply } from './verdict.ts';
import type { TraceEntry } from './trace.ts';
import type { Logger } from '../util/log.ts';
import { PolicySession, type PolicySessionOptions } from './session.ts';

export interface PhaseResult {
  /** The verdict that ended the phase, or undefined when every check said continue/tag. */
  final?: FinalVerdict;
  score: number;
  headers: string[];
  /** Names of the checks that tagged, for the trace. */
  tags: string[];
  /** Hold the reply back this long (sum of the verdicts' delayMs). */
  delayMs: number;
  /** The checks whose verdicts were taken, in order, with the time each took (the transaction trace). */
  ran: TraceEntry[];
}

export class PolicyEngine {
  private readonly byPhase: { [P in Phase]: Check<P>[] } = { connect: [], helo: [], mail: [], rcpt: [], data: [] };
  private readonly log: Logger;

  private readonly waivedAfterAuthNames = new Set<string>();

  constructor(checks: readonly AnyCheck[], log: Logger) {
    this.log = log;
    for (const c of checks) {
      (this.byPhase[c.phase] as AnyCheck[]).push(c);
      if (c.waives?.afterAuth) this.waivedAfterAuthNames.add(c.name);
    }
  }

  /** The policy side of one connection (src/policy/session.ts). */
  session(opts: PolicySessionOptions): PolicySession {
    return new PolicySession(this, opts);
  }

  /** The names of a phase's checks, in the order they run. */
  checkNames(phase: Phase): string[] {
    return this.byPhase[phase].map((c) => c.name);
  }

  /** Is a refusal by this check waived at RCPT for a client that has since authenticated? (Waivers.afterAuth) */
  waivedAfterAuth(check: string): boolean {
    return this.waivedAfterAuthNames.has(check);
  }

  async run<P extends Phase>(phase: P, ctx: PhaseContexts[P]): Promise<PhaseResult> {
    const result: PhaseResult = { score: 0, headers: [], tags: [], delayMs: 0, ran: [] };
    const checks = this.byPhase[phase] as Check<P>[];
    let started: Map<Check<P>, Promise<Outcome>> | undefined;
    for (const [i, check] of checks.entries()) {
      if (check.concurrent && started === undefined) {
        started = new Map();
        for (const later of checks.slice(i)) if (later.concurrent) started.set(later, settle(later, ctx));
      }
      const pending = started?.get(check);
      const outcome = pending ?? runNow(check, ctx);
      const out = outcome instanceof Promise ? await outcome : outcome;
      let verdict: Verdict;
      if ('verdict' in out) verdict = out.verdict;
      else {
        this.log.error({ check: check.name, phase, err: out.err }, 'check failed');
        verdict = { kind: 'tempfail', check: check.name, code: 451, enhanced: '4.3.0', text: 'Temporary local problem, try again later' };
      }
      result.ran.push(traceEntry(phase, check.name, verdict, out.ms));
      if (verdict.delayMs) {
        result.delayMs += verdict.delayMs;
        this.log.info({ phase, check: verdict.check ?? check.name, delayMs: verdict.delayMs }, verdict.log ?? 'reply delayed');
      }
      if (verdict.kind === 'continue') {
        if (verdict.log && !verdict.delayMs) this.log.info({ phase, check: verdict.check ?? check.name }, verdict.log);
        continue;
      }
      if (verdict.kind === 'tag') {
        result.score += verdict.score;
        if (verdict.headers) result.headers.push(...verdict.headers);
        result.tags.push(verdict.check);
        if (verdict.log) this.log.info({ phase, check: verdict.check, score: verdict.score }, verdict.log);
        continue;
      }
      result.final = verdict;
      return result;
    }
    return result;
  }
}

/** A check's verdict or error, and the milliseconds it took. */
type Outcome = ({ verdict: Verdict } | { err: unknown }) & { ms: number };

/** Runs a check, synchronously when it answers synchronously; never throws. */
function runNow<P extends Phase>(check: Check<P>, ctx: PhaseContexts[P]): Outcome | Promise<Outcome> {
  const t0 = performance.now();
  const ms = (): number => performance.now() - t0;
  try {
    const v = check.run(ctx);
    return v instanceof Promise ? v.then((verdict) => ({ verdict, ms: ms() }), (err: unknown) => ({ err, ms: ms() })) : { verdict: v, ms: ms() };
  } catch (err) {
    return { err, ms: ms() };
  }
}

function traceEntry(phase: Phase, name: string, v: Verdict, ms: number): TraceEntry {
  return {
    phase,
    check: v.check ?? name,
    verdict: v.kind,
    ...(v.kind === 'tag' ? { score: v.score } : {}),
    ms,
    ...(v.kind === 'reject' || v.kind === 'tempfail' ? { reply: refusalReply(v) } : {}),
  };
}

/** Starts a check now; the promise never rejects (an answer nobody takes must not be unhandled). */
function settle<P extends Phase>(check: Check<P>, ctx: PhaseContexts[P]): Promise<Outcome> {
  return Promise.resolve(runNow(check, ctx));
}
