// A check: one small module, one phase, one job. It names itself in every verdict and log line.
import type { Phase, Verdict } from './verdict.ts';
import type { PhaseContexts } from './context.ts';

export interface Check<P extends Phase = Phase> {
  readonly name: string;
  readonly phase: P;
  run(ctx: PhaseContexts[P]): Verdict | Promise<Verdict>;
}

export type AnyCheck = { [P in Phase]: Check<P> }[Phase];
