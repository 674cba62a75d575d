// mailauth asks DNS through a function of (name, type) with node:dns's answer shapes and error
// codes. This one answers from mxguard's own resolver (src/dns/resolver.ts): its cache, its
// dns.servers and dns.timeout, so SPF and DKIM look-ups behave as every other check's, and tests
// point them at the DNS server on loopback.
import type { DnsResolver, DnsResult } from '../../dns/resolver.ts';

/** An error as node:dns throws it: `code` ENOTFOUND (NXDOMAIN), ENODATA (NODATA), ETIMEOUT, ESERVFAIL… */
function dnsError(name: string, code: string, message: string): Error {
  // No stack: a "no such name" is an answer, asked for on every message (DMARC's tree walk), and
  // capturing a stack trace each time is most of its cost.
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  const err = new Error(message) as Error & { code: string; hostname: string };
  Error.stackTraceLimit = limit;
  err.code = code;
  err.hostname = name;
  return err;
}

function unwrap<T>(name: string, type: string, r: DnsResult<T>): readonly T[] {
  if (r.kind === 'ok') return r.records;
  if (r.kind === 'nxdomain') throw dnsError(name, r.nodata ? 'ENODATA' : 'ENOTFOUND', `${type} ${name}: ${r.nodata ? 'no records' : 'no such name'}`);
  const code = { timeout: 'ETIMEOUT', servfail: 'ESERVFAIL', refused: 'EREFUSED', unreachable: 'ECONNREFUSED', invalid: 'EBADNAME', other: 'ESERVFAIL' }[r.code];
  throw dnsError(name, code, r.reason); // the resolver's reason names the type and the name already
}

export type MailauthResolver = (name: string, type: string) => Promise<unknown>;

export function mailauthResolver(dns: DnsResolver): MailauthResolver {
  return async (name, type) => {
    switch (type.toUpperCase()) {
      case 'TXT':
        // Our resolver joins a record's strings (what SPF and DKIM want); node:dns gives them as a list.
        return unwrap(name, 'TXT', await dns.txt(name)).map((r) => [r]);
      case 'A':
        return [...unwrap(name, 'A', await dns.a(name))];
      case 'AAAA':
        return [...unwrap(name, 'AAAA', await dns.aaaa(name))];
      case 'PTR':
        return [...unwrap(name, 'PTR', await dns.ptrByName(name))];
      case 'MX': {
        const r = await dns.mx(name);
        if (r.kind === 'null-mx') return [{ exchange: '', priority: 0 }];
        return unwrap(name, 'MX', r).map((m) => ({ exchange: m.exchange, priority: m.priority }));
      }
      default:
        throw dnsError(name, 'ENOTIMP', `${type} ${name}: ${type} look-ups are not supported here`);
    }
  };
}
