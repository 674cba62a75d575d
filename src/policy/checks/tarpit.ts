// DMail's tarpit (limits.tarpit_start, limits.tarpit_except): once a session has given
// tarpit_start recipients, each further RCPT is answered more slowly — tarpit_delay more per
// recipient, up to a minute. A bulk sender's throughput collapses; a person sending to a few
// people never notices. The wait holds only this session's reply, never the server.
import { defineCheck, type Check } from '../check.ts';
import { CONTINUE } from '../verdict.ts';
import { AddressList } from '../../util/cidr.ts';

const MAX_DELAY_MS = 60_000;

export function tarpitCheck(start: number, stepMs: number, except: readonly string[]): Check<'rcpt'> {
  const exempt = new AddressList(except);
  return {
    name: 'tarpit',
    phase: 'rcpt',
    run(ctx) {
      const n = ctx.session.rcptCount + 1; // this recipient included
      if (n <= start || exempt.has(ctx.session.remoteIp)) return CONTINUE;
      return { kind: 'continue', check: 'tarpit', delayMs: Math.min((n - start) * stepMs, MAX_DELAY_MS), log: `tarpit: recipient ${n} of the session (limits.tarpit_start ${start})` };
    },
  };
}

export const tarpit = defineCheck({
  name: 'tarpit',
  phase: 'rcpt',
  settings: ({ limits }) => (limits.tarpit_start > 0 ? { start: limits.tarpit_start, delayMs: limits.tarpit_delay, except: limits.tarpit_except } : undefined),
  create: (s) => tarpitCheck(s.start, s.delayMs, s.except),
});
