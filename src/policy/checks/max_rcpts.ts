// limits.max_rcpts (DMail max_rcpts): recipients per message. RFC 5321 asks us to take at least
// 100; past the limit the client gets 452 and sends the rest in another transaction.
import { defineCheck, type Check } from '../check.ts';
import { CONTINUE, reject } from '../verdict.ts';

export function maxRcptsCheck(max: number): Check<'rcpt'> {
  return {
    name: 'max_rcpts',
    phase: 'rcpt',
    run: (ctx) => (ctx.tx.rcpts.length >= max ? reject('max_rcpts', 452, '4.5.3', 'Error: too many recipients', 'limits.max_rcpts') : CONTINUE),
  };
}

export const maxRcpts = defineCheck({
  name: 'max_rcpts',
  phase: 'rcpt',
  settings: (config) => config.limits.max_rcpts,
  create: (max) => maxRcptsCheck(max),
});
