// Where each recipient's copy goes (issue 13): `routes:` maps recipient domains to a target,
// `deliver:` is the short form for "every local domain", and relayed mail for other domains goes
// by MX unless a route says otherwise, as DMail's DSMTP and Postfix do. Never the local mailbox
// for a foreign domain: x@gmail.com from a relay client is not the local user x.
//
// Which route a domain takes, first match wins:
//   1. an exact route:            example.com: lmtp://127.0.0.1:24
//   2. the longest wildcard:      "*.example.org": maildir:/var/mail/%d/%u  (subdomains only)
//   3. a domain we take mail for: deliver (default maildir:<data_dir>/maildir): local_domains,
//      relay.relay_to (the mail system behind us; a backup MX routes those `mx`), no domain at all
//   4. the catch-all:             "*": smtp://smarthost.example.net:25
//   5. otherwise:                 mx
// Pure: src/delivery/routes.test.ts.

import type { RouteTarget } from '../config/routes.ts';
import { asciiDomain, DomainSet } from '../util/idna.ts';

export interface RouteTable {
  /** The target of mail for `domain` (any case), and the pattern that chose it (for logs and `mxguard check`). */
  routeFor(domain: string): { readonly target: RouteTarget; readonly by: string };
}

export interface RouteSettings {
  readonly routes: Readonly<Record<string, RouteTarget>>;
  /** local_domains and relay.relay_to: the domains whose mail goes to `deliver`. */
  readonly localDomains: readonly string[];
  /** Where local domains' mail goes (deliver, or its default). */
  readonly deliver: RouteTarget;
}

export function routeTable(s: RouteSettings): RouteTable {
  const exact = new Map<string, RouteTarget>();
  const wild: Array<[string, RouteTarget]> = [];
  let any: RouteTarget | undefined;
  for (const [pattern, target] of Object.entries(s.routes)) {
    const p = pattern.toLowerCase();
    if (p === '*') any = target;
    else if (p.startsWith('*.')) wild.push([p.slice(1), target]); // ".example.org"
    else exact.set(p, target);
  }
  wild.sort((a, b) => b[0].length - a[0].length); // the longest suffix first
  const local = new DomainSet(s.localDomains);
  return {
    routeFor(domain) {
      const d = asciiDomain(domain).replace(/\.$/, '');
      const e = exact.get(d);
      if (e !== undefined) return { target: e, by: `routes.${d}` };
      for (const [suffix, target] of wild) if (d.endsWith(suffix)) return { target, by: `routes.*${suffix}` };
      if (d === '' || local.has(d)) return { target: s.deliver, by: 'deliver' };
      if (any !== undefined) return { target: any, by: 'routes.*' };
      return { target: 'mx', by: 'mx (the default for relayed mail)' };
    },
  };
}

/** The domain of an address: after its last @, lower case; '' when there is none. */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at === -1 ? '' : address.slice(at + 1).toLowerCase();
}
