// mail_from.require_domain (seeds 001, 002: "reject bad MAIL FROM", qmail's mfcheck): the
// sender's domain must exist in DNS — an MX, or an A/AAAA to fall back on — and must not publish
// a null MX (RFC 7505: it sends no mail). A domain that does not exist is a permanent refusal; a
// DNS failure (SERVFAIL, timeout) is only ever 451: we do not know, so the client tries again.
// The null sender (bounces) and address literals are not checked; nor are relay clients (`waives`).
import { defineCheck, needDns, type Check } from '../check.ts';
import type { Config } from '../../config/schema.ts';
import type { DnsResolver } from '../../dns/resolver.ts';
import { CONTINUE } from '../verdict.ts';
import { findingVerdict } from '../action.ts';

export function senderDomainCheck(spec: Config['mail_from'], dns: DnsResolver): Check<'mail'> {
  return {
    name: 'sender_domain',
    phase: 'mail',
    concurrent: true,
    async run(ctx) {
      const { address, domain } = ctx.mailFrom;
      if (address === '' || domain.startsWith('[')) return CONTINUE;
      const r = await dns.domainExists(domain);
      switch (r.kind) {
        case 'exists':
          return CONTINUE;
        case 'null-mx':
          return findingVerdict('sender_domain', 'mail_from.require_domain', spec, 550, '5.7.27', `<${address}>: Sender address rejected: ${domain} does not send mail (null MX)`);
        case 'nxdomain':
          return findingVerdict('sender_domain', 'mail_from.require_domain', spec, 550, '5.1.8', `<${address}>: Sender address rejected: Domain not found`);
        case 'error':
          return { kind: 'tempfail', check: 'sender_domain', code: 451, enhanced: '4.1.8', text: `<${address}>: Sender address rejected: Domain not found (DNS lookup failed, try again later)`, setting: 'mail_from.require_domain', log: `DNS trouble for ${domain}: ${r.reason}` };
      }
    },
  };
}

export const senderDomain = defineCheck({
  name: 'sender_domain',
  phase: 'mail',
  needs: ['dns'],
  waives: { relayClients: true },
  settings: ({ mail_from }) => (mail_from.require_domain ? mail_from : undefined),
  create: (spec, deps) => senderDomainCheck(spec, needDns(deps, 'sender_domain')),
});
