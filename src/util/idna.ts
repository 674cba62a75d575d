// Domain names compared in one form: the ASCII (A-label, "xn--") form of IDNA, so that a
// local_domains or relay_to entry written in Unicode (bücher.example) and mail to either form
// (alice@bücher.example with SMTPUTF8, alice@xn--bcher-kva.example) all match.
import net from 'node:net';
import { domainToASCII } from 'node:url';

/**
 * The lower-cased ASCII form of a domain name (UTS #46 mapping, as Node's url.domainToASCII).
 * An all-ASCII name is only lower-cased (no URL-style rewriting of "127.1" and the like); a
 * Unicode name that does not map, or maps to an IP address, comes back lower-cased as given.
 */
export function asciiDomain(domain: string): string {
  if (!/[^\x00-\x7f]/.test(domain)) return domain.toLowerCase();
  const ascii = domainToASCII(domain);
  if (ascii === '' || net.isIP(ascii) !== 0) return domain.toLowerCase();
  return ascii;
}

/** A set of domain names that matches a name in either form (see asciiDomain). */
export class DomainSet {
  private readonly names: Set<string>;

  constructor(domains: Iterable<string>) {
    this.names = new Set([...domains].map(asciiDomain));
  }

  has(domain: string): boolean {
    return this.names.has(asciiDomain(domain));
  }

  get size(): number {
    return this.names.size;
  }
}
