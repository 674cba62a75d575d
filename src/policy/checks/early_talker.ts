// smtp.early_talker: a client that sends before our banner is a bot that does not wait for the
// greeting (Postfix postscreen's pregreet test). Refused (at RCPT, with smtp.delay_reject).
import { defineCheck, type Check } from '../check.ts';
import { CONTINUE, reject } from '../verdict.ts';

export function earlyTalkerCheck(): Check<'connect'> {
  return {
    name: 'early_talker',
    phase: 'connect',
    run: (ctx) =>
      ctx.session.earlyTalker ? reject('early_talker', 554, '5.5.1', 'Error: protocol error: talked before greeting', 'smtp.early_talker') : CONTINUE,
  };
}

export const earlyTalker = defineCheck({
  name: 'early_talker',
  phase: 'connect',
  settings: (config) => (config.smtp.early_talker === 'reject' ? {} : undefined),
  create: () => earlyTalkerCheck(),
});
