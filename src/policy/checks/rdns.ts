// rdns.require (seed 002: tcpserver -p, "451 bad reverse DNS"): the client's address must have
// a PTR (ptr), and with `confirmed` that name must resolve back to the address, so a spammer
// cannot claim any name it likes in its own reverse zone. A DNS failure is never a reason to
// refuse for good: it is answered 451 whatever rdns.action says. Relay clients are not checked;
// an authenticated client's refusal is waived at RCPT (like HELO; both declared in `waives`).
import { defineCheck, needDns, type Check } from '../check.ts';
import type { Config } from '../../config/schema.ts';
import type { DnsResolver } from '../../dns/resolver.ts';
import { CONTINUE } from '../verdict.ts';
import { findingVerdict } from '../action.ts';

export function rdnsCheck(spec: Config['rdns'], dns: DnsResolver): Check<'connect'> {
  const refuse = (ip: string, why: string) => findingVerdict('rdns', 'rdns.require', spec, 550, '5.7.1', `Client host [${ip}] bad reverse DNS: ${why}`, 451);
  const dnsTrouble = (ip: string, reason: string) => ({ kind: 'tempfail' as const, check: 'rdns', code: 451, enhanced: '4.7.1', text: `Client host [${ip}] bad reverse DNS: lookup failed, try again later`, setting: 'rdns.require', log: `reverse DNS of ${ip}: ${reason}` });
  return {
    name: 'rdns',
    phase: 'connect',
    concurrent: true,
    async run(ctx) {
      const ip = ctx.session.remoteIp;
      if (spec.require === 'off') return CONTINUE;
      if (spec.require === 'ptr') {
        const r = await dns.ptr(ip);
        if (r.kind === 'ok') return CONTINUE;
        if (r.kind === 'error') return dnsTrouble(ip, r.reason);
        return refuse(ip, 'no PTR record');
      }
      const r = await dns.forwardConfirmed(ip);
      if (r.kind === 'confirmed') return CONTINUE;
      if (r.kind === 'error') return dnsTrouble(ip, r.reason);
      return refuse(ip, r.kind === 'no-ptr' ? 'no PTR record' : `${r.names.join(', ')} does not point back to it`);
    },
  };
}

export const rdns = defineCheck({
  name: 'rdns',
  phase: 'connect',
  needs: ['dns'],
  waives: { relayClients: true, afterAuth: true },
  settings: ({ rdns }) => (rdns.require !== 'off' ? rdns : undefined),
  create: (spec, deps) => rdnsCheck(spec, needDns(deps, 'rdns')),
});
