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
import type { AnyCheck, Check, PolicyEvent } from './check.ts';
import type { DataContext, PhaseContexts, SessionInfo } from './context.ts';
import type { FinalVerdict, Phase, TestHit, Verdict } from './verdict.ts';
import { refusalReply } from './verdict.ts';
import type { TraceEntry } from './trace.ts';
import type { Logger } from '../util/log.ts';
import { PolicySession, type PolicySessionOptions } from './session.ts';
import { metrics } from '../util/metrics.ts';

export interface PhaseResult {
  /** The verdict that ended the phase, or undefined when every check said continue/tag. */
  final?: FinalVerdict;
  score: number;
  headers: string[];
  /** Names of the checks that tagged, for the trace. */
  tags: string[];
  /** The points by rule name, for X-Spam-Status tests= and the 550 naming the largest contributors. */
  tests: TestHit[];
  /** Incoming header fields the checks asked to remove (lower-case names). */
  removeHeaders: string[];
  /** Hold the reply back this long (sum of the verdicts' delayMs). */
  delayMs: number;
  /** The checks whose verdicts were taken, in order, with the time each took (the transaction trace). */
  ran: TraceEntry[];
}

export class PolicyEngine {
  private readonly byPhase: { [P in Phase]: Check<P>[] } = { connect: [], helo: [], auth: [], mail: [], rcpt: [], data: [] };
  private readonly log: Logger;

  private readonly waivedAfterAuthNames = new Set<string>();
  /** The checks that count what happened (Check.observe), in registry order. */
  private readonly observers: AnyCheck[] = [];

  constructor(checks: readonly AnyCheck[], log: Logger) {
    this.log = log;
    for (const c of checks) {
      (this.byPhase[c.phase] as AnyCheck[]).push(c);
      if (c.waives?.afterAuth) this.waivedAfterAuthNames.add(c.name);
      if (c.observe) this.observers.push(c);
    }
  }

  /** Whether any check counts what happened (Check.observe). */
  get observes(): boolean {
    return this.observers.length > 0;
  }

  /** Tells the checks that count (Check.observe) what happened; never throws, and costs nothing when none do. */
  async notify(event: PolicyEvent): Promise<void> {
    // Together, not one after another: with Redis unreachable each waits out its own timeout.
    await Promise.all(
      this.observers.map(async (c) => {
        try {
          await c.observe?.(event);
        } catch (err) {
          this.log.warn({ sid: event.session.sid, ip: event.session.remoteIp, check: c.name, event: event.kind, err: errText(err) }, 'could not count (store unreachable?)');
        }
      }),
    );
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
    const result = emptyResult();
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
      if (this.take(result, phase, check, out, ctx.session)) return result;
    }
    return result;
  }

  /**
   * The DATA checks: all started at once, each given until `timeoutMs` (scoring.data_timeout);
   * their verdicts are taken in registry order. A check that fails or misses the deadline counts
   * as its `onError` says: tempfail (451, the default) or accept (its verdict is left out). The
   * reply never waits past the deadline; a late check is told through ctx.signal to stop.
   */
  async runData(ctx: Omit<DataContext, 'signal'>, timeoutMs: number): Promise<PhaseResult> {
    const result = emptyResult();
    const checks = this.byPhase.data;
    if (checks.length === 0) return result;
    const abort = new AbortController();
    const full: DataContext = { ...ctx, signal: abort.signal };
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => {
        abort.abort(); // only when a check is late: an abort builds a DOMException, not free per message
        resolve('timeout');
      }, timeoutMs);
    });
    const t0 = performance.now();
    const started = checks.map((c) => settle(c, full));
    let taken = 0;
    try {
      for (const [i, check] of checks.entries()) {
        const out = await Promise.race([started[i] as Promise<Outcome>, deadline]);
        const outcome: Outcome = out === 'timeout' ? { err: new DataCheckTimeout(timeoutMs), ms: performance.now() - t0 } : out;
        taken++;
        if (this.take(result, 'data', check, outcome, ctx.session)) return result;
      }
      return result;
    } finally {
      clearTimeout(timer);
      // Checks after a final verdict are no longer waited for: tell them to stop.
      if (taken < checks.length && !abort.signal.aborted) abort.abort();
    }
  }

  /** Adds one check's outcome to the phase's result; true when it ended the phase. Its lines carry the session's ID. */
  private take<P extends Phase>(result: PhaseResult, phase: P, check: Check<P>, out: Outcome, session: SessionInfo): boolean {
    const { sid, remoteIp: ip } = session;
    let verdict: Verdict;
    if ('verdict' in out) verdict = out.verdict;
    else if (phase === 'data' && check.onError === 'accept') {
      const why = out.err instanceof DataCheckTimeout ? 'timeout' : 'error';
      this.log.warn({ sid, ip, check: check.name, phase, err: errText(out.err), onError: 'accept' }, `DATA check ${why === 'timeout' ? 'missed scoring.data_timeout' : 'failed'}: message goes on without its verdict (on_error: accept)`);
      verdict = { kind: 'continue', check: check.name };
    } else {
      if (phase === 'data') this.log.error({ sid, ip, check: check.name, phase, err: errText(out.err), onError: 'tempfail' }, `DATA check ${out.err instanceof DataCheckTimeout ? 'missed scoring.data_timeout' : 'failed'}: message refused for now (on_error: tempfail)`);
      else this.log.error({ sid, ip, check: check.name, phase, err: out.err }, 'check failed');
      verdict = { kind: 'tempfail', check: check.name, code: 451, enhanced: '4.3.0', text: 'Temporary local problem, try again later' };
    }
    result.ran.push(traceEntry(phase, check.name, verdict, out.ms));
    metrics.verdict(verdict.check ?? check.name, verdict.kind);
    if (verdict.delayMs) {
      result.delayMs += verdict.delayMs;
      this.log.info({ sid, ip, phase, check: verdict.check ?? check.name, delayMs: verdict.delayMs }, verdict.log ?? 'reply delayed');
    }
    if (verdict.kind === 'continue') {
      if (verdict.log && !verdict.delayMs) this.log.info({ sid, ip, phase, check: verdict.check ?? check.name }, verdict.log);
      return false;
    }
    if (verdict.kind === 'tag') {
      result.score += verdict.score;
      if (verdict.headers) result.headers.push(...verdict.headers);
      if (verdict.removeHeaders) result.removeHeaders.push(...verdict.removeHeaders);
      result.tests.push(...(verdict.tests ?? [{ name: verdict.check, score: verdict.score }]));
      result.tags.push(verdict.check);
      if (verdict.log) this.log.info({ sid, ip, phase, check: verdict.check, score: verdict.score }, verdict.log);
      return false;
    }
    result.final = verdict;
    return true;
  }
}

/** A DATA check that did not answer within scoring.data_timeout. */
export class DataCheckTimeout extends Error {
  constructor(ms: number) {
    super(`no answer within scoring.data_timeout (${ms} ms)`);
  }
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function emptyResult(): PhaseResult {
  return { score: 0, headers: [], tags: [], tests: [], removeHeaders: [], delayMs: 0, ran: [] };
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
