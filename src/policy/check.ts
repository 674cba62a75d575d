// A check: one small module, one phase, one job. It names itself in every verdict and log line.
import type { Phase, Verdict } from './verdict.ts';
import type { PhaseContexts } from './context.ts';

export interface Check<P extends Phase = Phase> {
  readonly name: string;
  readonly phase: P;
  /**
   * The check only asks (DNS) and changes nothing, so the engine may start it together with the
   * other such checks of its phase, before the checks ahead of it have decided: a phase then waits
   * for one DNS timeout, not one per check. Its verdict still counts in registry order.
   */
  readonly concurrent?: boolean;
  run(ctx: PhaseContexts[P]): Verdict | Promise<Verdict>;
}

export type AnyCheck = { [P in Phase]: Check<P> }[Phase];
