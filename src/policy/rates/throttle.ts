// qmail's spam throttle (throttle:): when a client has sent more than `rate` messages in the last
// minute, the reply to the end of its DATA is held back, `step` longer for each message over the
// rate, up to `max`. A bulk sender's throughput collapses; someone sending a few messages never
// notices. The messages are counted per client IP in the store (Store.rateAdd: a sliding-window
// estimate, shared by the hosts on one Redis) when they are queued. The hold is the session's
// own (verdict delayMs): other sessions never wait for it.
import { defineCheck, type Check, type PolicyEvent } from '../check.ts';
import type { Store } from '../../store/store.ts';
import type { Config } from '../../config/schema.ts';
import { CONTINUE } from '../verdict.ts';
import { AddressList } from '../../util/cidr.ts';

const MINUTE = 60_000;

type Settings = Config['throttle'];

/** How long to hold the reply when `sent` messages were counted in the last minute (this one not yet). */
export function throttleDelay(sent: number, s: Pick<Settings, 'rate' | 'step' | 'max'>): number {
  const over = Math.ceil(sent + 1 - s.rate - 1e-9); // this message included; the estimate is fractional
  return over > 0 ? Math.min(over * s.step, s.max) : 0;
}

export const throttleKey = (ip: string): string => `throttle:${ip}`;

export function throttleCheck(s: Settings, store: Store): Check<'data'> {
  const exempt = new AddressList(s.except);
  return {
    name: 'throttle',
    phase: 'data',
    // A throttle that cannot read its count lets the message go on unheld.
    onError: 'accept',
    async run(ctx) {
      if (exempt.has(ctx.session.remoteIp)) return CONTINUE;
      const sent = await store.rateGet(throttleKey(ctx.session.remoteIp), MINUTE);
      const delayMs = throttleDelay(sent, s);
      return delayMs > 0 ? { kind: 'continue', check: 'throttle', delayMs, log: `throttle: ${Math.round(sent)} messages in the last minute (throttle.rate ${s.rate})` } : CONTINUE;
    },
    async observe(e: PolicyEvent) {
      if (e.kind === 'accepted' && !exempt.has(e.session.remoteIp)) await store.rateAdd(throttleKey(e.session.remoteIp), 1, MINUTE);
    },
  };
}

export const throttle = defineCheck<Settings, 'data'>({
  name: 'throttle',
  phase: 'data',
  needs: ['store'],
  waives: { relayClients: true },
  settings: (c) => (c.throttle.rate > 0 ? c.throttle : undefined),
  create: (s, deps) => {
    if (!deps.store) throw new Error('throttle needs the store');
    return throttleCheck(s, deps.store);
  },
});
