// The DNS the rules file needs, over src/dns/resolver.ts. A DNS error throws, so the policy
// engine answers 451 4.3.0: a rule is never decided on a lookup that failed.
import type { DnsResolver } from '../../dns/resolver.ts';
import type { RuleLookups } from './match.ts';

export function dnsRuleLookups(dns: DnsResolver): RuleLookups {
  return {
    async hostname(ip) {
      // KNOWN means a PTR whose name points back at the client (qmail's tcpserver -p paranoia).
      const r = await dns.forwardConfirmed(ip);
      if (r.kind === 'error') throw new Error(`reverse DNS of ${ip}: ${r.reason}`);
      return r.kind === 'confirmed' ? r.name : undefined;
    },
    async nameservers(domain) {
      // NS records live at the zone apex: walk up from the name until some are found.
      const labels = domain.toLowerCase().replace(/\.$/, '').split('.');
      for (let i = 0; i < labels.length - 1; i++) {
        const name = labels.slice(i).join('.');
        const r = await dns.ns(name);
        if (r.kind === 'ok') return [...r.records];
        if (r.kind === 'error') throw new Error(`NS of ${name}: ${r.reason}`);
      }
      return [];
    },
    async rbl(ip, zone) {
      const r = await dns.dnsblQuery(ip, zone);
      if (r.kind === 'error') throw new Error(`${zone}: ${r.reason}`);
      // Answers outside 127.0.0.0/8 are a list's way of saying "query refused", not "listed".
      return r.kind === 'ok' && r.records.some((a) => a.startsWith('127.'));
    },
  };
}
