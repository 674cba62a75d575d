// local_domains: mail for these domains is ours and is accepted (recipient validation comes in
// a later check). A bare <postmaster> (RFC 5321 4.5.1) is always ours.
import { defineCheck, type Check } from '../check.ts';
import { CONTINUE } from '../verdict.ts';
import { asciiDomain } from '../../util/idna.ts';

/** `localDomains` in ASCII form (asciiDomain); `domain` in either form: IDNs compare after IDNA mapping. */
export function isLocalDomain(domain: string, localDomains: ReadonlySet<string>): boolean {
  return domain === '' || localDomains.has(asciiDomain(domain));
}

export function localDomainsCheck(domains: readonly string[]): Check<'rcpt'> {
  const set = new Set(domains.map(asciiDomain));
  return {
    name: 'local_domains',
    phase: 'rcpt',
    run: (ctx) => (isLocalDomain(ctx.rcpt.domain, set) ? { kind: 'accept', check: 'local_domains', log: 'Command RCPT OK (local domain)' } : CONTINUE),
  };
}

export const localDomains = defineCheck({
  name: 'local_domains',
  phase: 'rcpt',
  settings: (config) => config.local_domains,
  create: (domains) => localDomainsCheck(domains),
});
