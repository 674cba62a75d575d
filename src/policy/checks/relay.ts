// Relaying (DMail relay.forward_from_ip): a recipient outside local_domains is relayed only for
// clients listed in forward_from_ip (default: loopback). Everyone else: 554 5.7.1, so a fresh
// install is never an open relay. Runs after local_domains, so it only sees foreign recipients.
import type { Check } from '../check.ts';
import { reject } from '../verdict.ts';
import { AddressList } from '../../util/cidr.ts';

export function relayCheck(forwardFromIp: readonly string[]): Check<'rcpt'> {
  const allowed = new AddressList(forwardFromIp);
  return {
    name: 'relay',
    phase: 'rcpt',
    run: (ctx) =>
      allowed.has(ctx.session.remoteIp)
        ? { kind: 'accept', check: 'relay', log: 'Command RCPT OK (relaying allowed)' }
        : reject('relay', 554, '5.7.1', `<${ctx.rcpt.address}>: Relay access denied`, 'relay.forward_from_ip'),
  };
}
