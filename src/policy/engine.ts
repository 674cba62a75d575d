// Runs the checks of one phase in order. The first final verdict (accept, reject, tempfail,
// discard) ends the phase; tags add up. A check that throws is a tempfail (451 4.3.0), never
// an accept: a broken check must not open the gate.
import type { AnyCheck, Check } from './check.ts';
import type { PhaseContexts } from './context.ts';
import type { FinalVerdict, Phase, Verdict } from './verdict.ts';
import type { Logger } from '../util/log.ts';

export interface PhaseResult {
  /** The verdict that ended the phase, or undefined when every check said continue/tag. */
  final?: FinalVerdict;
  score: number;
  headers: string[];
  /** Names of the checks that tagged, for the trace. */
  tags: string[];
  /** Hold the reply back this long (sum of the verdicts' delayMs). */
  delayMs: number;
}

export class PolicyEngine {
  private readonly byPhase: { [P in Phase]: Check<P>[] } = { connect: [], helo: [], mail: [], rcpt: [], data: [] };
  private readonly log: Logger;

  constructor(checks: readonly AnyCheck[], log: Logger) {
    this.log = log;
    for (const c of checks) (this.byPhase[c.phase] as AnyCheck[]).push(c);
  }

  async run<P extends Phase>(phase: P, ctx: PhaseContexts[P]): Promise<PhaseResult> {
    const result: PhaseResult = { score: 0, headers: [], tags: [], delayMs: 0 };
    for (const check of this.byPhase[phase] as Check<P>[]) {
      let verdict: Verdict;
      try {
        const v = check.run(ctx);
        verdict = v instanceof Promise ? await v : v;
      } catch (err) {
        this.log.error({ check: check.name, phase, err }, 'check failed');
        verdict = { kind: 'tempfail', check: check.name, code: 451, enhanced: '4.3.0', text: 'Temporary local problem, try again later' };
      }
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
