// AUTH failure throttling (auth.max_failures, failure_window, failure_delay): the `auth`-phase
// check. Each password attempt is counted, per client IP in the shared store, BEFORE it is
// checked (issue 9): parallel connections from one address see each other's attempts, so no
// more than auth.max_failures passwords are ever tried in a window. The count is taken back when
// the password was right or was not checked at all. Every failure is answered a little later
// than the one before (failure_delay times the failures so far, at most 30 s).
import { defineCheck, type Check } from '../check.ts';
import type { Store } from '../../store/store.ts';
import { CONTINUE, type Verdict } from '../verdict.ts';

interface Settings {
  readonly max_failures: number;
  readonly failure_window: number;
  readonly failure_delay: number;
}

/** The slowest answer to a failed AUTH. */
const MAX_AUTH_DELAY_MS = 30_000;

const TOO_MANY = 'Too many failed authentication attempts, try again later';

function refusal(text: string, delayMs = 0, log?: string): Verdict {
  return { kind: 'tempfail', check: 'auth_failures', code: 454, enhanced: '4.7.0', text, setting: 'auth.max_failures', ...(delayMs > 0 ? { delayMs } : {}), ...(log ? { log } : {}) };
}

export function authFailuresCheck(s: Settings, store: Store): Check<'auth'> {
  const delay = (failures: number): number => Math.min(failures * s.failure_delay, MAX_AUTH_DELAY_MS);
  return {
    name: 'auth_failures',
    phase: 'auth',
    async run(ctx) {
      const key = `auth-fail:${ctx.session.remoteIp}`;
      try {
        switch (ctx.stage) {
          case 'start': {
            // AUTH is refused at once, before any exchange, to an address over the limit.
            const failures = await store.counterGet(key);
            return failures >= s.max_failures ? refusal(TOO_MANY, delay(failures), 'AUTH refused: too many failures') : CONTINUE;
          }
          case 'attempt': {
            const attempts = await store.counterIncr(key, s.failure_window);
            if (attempts <= s.max_failures) return CONTINUE;
            await store.counterDecr(key);
            return refusal(TOO_MANY, delay(attempts - 1), 'AUTH refused: too many failures');
          }
          case 'ok':
          case 'unchecked':
            await store.counterDecr(key);
            return CONTINUE;
          case 'failed': {
            // The same answer for an unknown user and a wrong password, a little later each time.
            const failures = await store.counterGet(key);
            return { kind: 'continue', check: 'auth_failures', delayMs: delay(failures), log: 'authentication failed' };
          }
        }
      } catch {
        // The store is unreachable: no password is checked that cannot be counted.
        if (ctx.stage === 'ok' || ctx.stage === 'unchecked' || ctx.stage === 'failed') return CONTINUE;
        return refusal('Temporary authentication failure');
      }
    },
  };
}

export const authFailures = defineCheck<Settings, 'auth'>({
  name: 'auth_failures',
  phase: 'auth',
  needs: ['store'],
  settings: (c) => (c.auth.enabled ? { max_failures: c.auth.max_failures, failure_window: c.auth.failure_window, failure_delay: c.auth.failure_delay } : undefined),
  create: (s, deps) => {
    if (!deps.store) throw new Error('auth_failures needs the store');
    return authFailuresCheck(s, deps.store);
  },
});
