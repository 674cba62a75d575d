// Relaying, as DMail defines it (settings under relay:). Runs after local_domains, so it only
// sees recipients outside our domains; each rule that allows relaying logs DMail's own line:
//   auth_allow_relay  the client did SMTP AUTH (always so on a submission listener)   "Command RCPT OK (authenticated channel)"
//   relay_to          recipient domain we relay to      "Command RCPT OK (relay_to allowed)"
//   forward_from_ip   client network                    "Command RCPT OK (relaying allowed)"
//   forward_from      sender domain (forgeable!)        "Command RCPT OK (forward_from allowed)"
//   forward_user      POP/IMAP login within forward_window (relayers table)   "(x.x.x.x) is recent"
// Nothing covers it: 554 5.7.1 Relay access denied. The store is asked last, only when the
// cheap rules did not decide. An unreachable store throws (→ 451 4.3.0), or with
// store.fail_open the POP-before-SMTP rule simply does not grant: it never opens the relay.
import { defineCheck, type Check } from '../check.ts';
import { isSubmission } from '../context.ts';
import { reject } from '../verdict.ts';
import { AddressList } from '../../util/cidr.ts';
import { DomainSet } from '../../util/idna.ts';
import type { Config } from '../../config/schema.ts';
import type { Store } from '../../store/store.ts';
import { clock } from '../../util/clock.ts';

/**
 * Did `ip` log in to POP/IMAP within `windowMs` (relay.forward_user)? A login dated in the future
 * is no login. Rejects when the store is unreachable.
 */
export async function recentPopLogin(store: Store, ip: string, windowMs: number): Promise<boolean> {
  const at = await store.relayerGet(ip);
  const now = clock.now() / 1000;
  return at !== undefined && at <= now + 1 && now - at <= windowMs / 1000;
}

export function relayCheck(relay: Config['relay'], store: Store | undefined, failOpen = false): Check<'rcpt'> {
  const allowedIps = new AddressList(relay.forward_from_ip);
  const relayTo = new DomainSet(relay.relay_to);
  const forwardFrom = new DomainSet(relay.forward_from);
  return {
    name: 'relay',
    phase: 'rcpt',
    async run(ctx) {
      const ok = (log: string) => ({ kind: 'accept' as const, check: 'relay', log });
      // On a submission listener an authenticated user always relays: that is what it is for.
      if (ctx.session.authUser !== undefined && (relay.auth_allow_relay || isSubmission(ctx.session))) return ok('Command RCPT OK (authenticated channel)');
      if (relayTo.has(ctx.rcpt.domain)) return ok('Command RCPT OK (relay_to allowed)');
      if (allowedIps.has(ctx.session.remoteIp)) return ok('Command RCPT OK (relaying allowed)');
      if (ctx.tx.mailFrom.domain !== '' && forwardFrom.has(ctx.tx.mailFrom.domain)) return ok('Command RCPT OK (forward_from allowed)');
      if (relay.forward_user && store) {
        let recent = false;
        try {
          recent = await recentPopLogin(store, ctx.session.remoteIp, relay.forward_window);
        } catch (err) {
          if (!failOpen) throw err;
        }
        if (recent) return ok(`(${ctx.session.remoteIp}) is recent`);
      }
      return reject('relay', 554, '5.7.1', `<${ctx.rcpt.address}>: Relay access denied`, 'relay.forward_from_ip');
    },
  };
}

export interface RelaySettings {
  readonly relay: Config['relay'];
  /** store.fail_open: an unreachable store does not grant POP-before-SMTP (instead of 451). */
  readonly failOpen: boolean;
}

export const relaySettings = (config: Config): RelaySettings => ({ relay: config.relay, failOpen: config.store.fail_open });

/** Always built, last: what no check accepted is refused here. */
export const relay = defineCheck({
  name: 'relay',
  phase: 'rcpt',
  settings: relaySettings,
  create: (s, deps) => relayCheck(s.relay, deps.store, s.failOpen),
});
