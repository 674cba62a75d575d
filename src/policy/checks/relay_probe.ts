// Relay probes (seed 002, issue 3): recipient addresses that ask us to route mail on to another
// host. Russell Nelson's qmail patch refuses local parts with '!', '%' or '@'; Postfix's
// allow_untrusted_routing=no does the same for clients that may not relay. The forms:
//   user%victim.test@example.test      percent hack (sendmail turns the last % into @)
//   victim.test!user@example.test      UUCP bang path
//   "user@victim.test"@example.test    a second @ hidden in a quoted local part
//   @a.test,@b.test:user@victim.test   source route (needs Address.sourceRoute from the parser)
//   user@[192.0.2.1]                   address literal that is not one of our addresses
// This check runs BEFORE local_domains: the outer domain of user%victim.test@example.test is ours,
// so local_domains alone would accept it, and a downstream MTA that honours the percent hack
// (Postfix, sendmail: mxguard is in their mynetworks) would relay it to victim.test.
// Refused with `554 5.7.1 <addr>: Relay access denied` unless every host the address names is
// ours (a local domain, or one of our IPs as a literal) or a relay rule covers it (mayRelay). It
// never accepts: when it lets a probe form through, local_domains and relay decide as usual.
import net from 'node:net';
import { defineCheck, type Check } from '../check.ts';
import { relayCheck, relaySettings, type RelaySettings } from './relay.ts';
import type { RcptContext } from '../context.ts';
import { CONTINUE, reject } from '../verdict.ts';
import { plainIp } from '../../util/cidr.ts';
import { asciiDomain } from '../../util/idna.ts';

/** What the check reads of an address; src/mail/address.ts's Address fits. */
export interface ProbeAddress {
  readonly local: string;
  /** Lower-cased; an address literal keeps its brackets: "[192.0.2.1]", "[ipv6:2001:db8::1]". */
  readonly domain: string;
  /** The obsolete source route the parser stripped ("@a.test,@b.test"), when it reports one. */
  readonly sourceRoute?: string;
}

/** A relay-probe form found in an address. */
export interface ProbeFinding {
  /** Why it is a probe, for the log ("percent hack (%)", "address literal [192.0.2.1] is not ours" …). */
  readonly reason: string;
  /**
   * The hosts the address asks to be routed through or delivered to besides its own domain,
   * lower-cased; an address literal as written ("[192.0.2.1]"). Our own literals are left out.
   */
  readonly hosts: readonly string[];
}

/**
 * "May this client relay to `destination`?" — wired to the relay rules (see relayRulesAllow).
 * `destination` is each host the probe names (a domain, or a literal such as "[192.0.2.1]").
 */
export type MayRelay = (ctx: RcptContext, destination: string) => boolean | Promise<boolean>;

/** The content of a quoted local part, unescaped; an unquoted local part as it is. */
export function unquoteLocal(local: string): { text: string; quoted: boolean } {
  if (local.length < 2 || !local.startsWith('"') || !local.endsWith('"')) return { text: local, quoted: false };
  return { text: local.slice(1, -1).replace(/\\(.)/g, '$1'), quoted: true };
}

/** "[192.0.2.1]" → "192.0.2.1", "[IPv6:::1]" → "::1"; undefined for a domain name. */
export function literalIp(domain: string): string | undefined {
  if (!domain.startsWith('[') || !domain.endsWith(']')) return undefined;
  const inner = domain.slice(1, -1);
  return /^ipv6:/i.test(inner) ? inner.slice(5) : inner;
}

/** Canonical text of an IP (IPv4-mapped IPv6 as IPv4, IPv6 compressed), or undefined. */
function canonicalIp(ip: string): string | undefined {
  const plain = plainIp(ip);
  const family = net.isIP(plain);
  if (family === 0) return undefined;
  if (family === 4) return plain;
  try {
    // The URL parser prints an IPv6 address in its canonical compressed form.
    return plainIp(new URL(`http://[${plain}]/`).hostname.slice(1, -1));
  } catch {
    return undefined;
  }
}

function ipSet(ips: Iterable<string>): Set<string> {
  const set = new Set<string>();
  for (const ip of ips) {
    const c = canonicalIp(ip);
    if (c !== undefined) set.add(c);
  }
  return set;
}

function isOurLiteral(domain: string, ours: ReadonlySet<string>): boolean {
  const ip = literalIp(domain);
  if (ip === undefined) return false;
  const c = canonicalIp(ip);
  return c !== undefined && ours.has(c);
}

const normHost = (h: string) => asciiDomain(h).replace(/\.$/, '');

/** The hosts named inside a local part with routing characters. */
function routedHosts(text: string): string[] {
  const bang = text.includes('!');
  const other = /[%@]/.test(text);
  if (bang && !other) return text.split('!').slice(0, -1); // a!b!user: via a, to b
  if (other && !bang) return text.split(/[%@]/).slice(1); // user%b%a, "user@b": to b (via a)
  // Mixed forms (a!user%b) are read differently by every MTA: every part may be a host.
  return text.split(/[%@!]/);
}

/**
 * Finds the relay-probe forms in an address; undefined for an ordinary one. `ourIps` are the
 * addresses an address literal may name without being a probe (the check adds the IP the client
 * connected to).
 */
export function findProbe(address: ProbeAddress, ourIps: Iterable<string> = []): ProbeFinding | undefined {
  const reasons: string[] = [];
  const hosts: string[] = [];
  const ours = ipSet(ourIps);

  if (address.sourceRoute !== undefined && address.sourceRoute !== '') {
    reasons.push(`source route ${address.sourceRoute}:`);
    for (const hop of address.sourceRoute.split(',')) {
      const host = normHost(hop.trim().replace(/^@/, ''));
      if (!isOurLiteral(host, ours)) hosts.push(host);
    }
  }

  const { text, quoted } = unquoteLocal(address.local);
  if (text.includes('@')) reasons.push(quoted ? 'quoted local part hides an address (@)' : 'second @ in the local part');
  if (text.includes('%')) reasons.push(quoted ? 'quoted local part hides a percent hack (%)' : 'percent hack (%)');
  if (text.includes('!')) reasons.push(quoted ? 'quoted local part hides a bang path (!)' : 'bang path (!)');
  if (/[%@!]/.test(text)) {
    for (const h of routedHosts(text)) {
      const host = normHost(h);
      if (!isOurLiteral(host, ours)) hosts.push(host);
    }
  }

  const domain = normHost(address.domain);
  if (literalIp(domain) !== undefined && !isOurLiteral(domain, ours)) {
    reasons.push(`address literal ${domain} is not ours`);
    hosts.push(domain);
  }

  if (reasons.length === 0) return undefined;
  return { reason: reasons.join(', '), hosts: [...new Set(hosts)] };
}

/** Why `address` is a relay probe ("percent hack (%)" …), or undefined for an ordinary address. */
export function probeReason(address: ProbeAddress, ourIps: Iterable<string> = []): string | undefined {
  return findProbe(address, ourIps)?.reason;
}

/**
 * The rcpt check. `localDomains`: hosts a probe may name without leaving us (user%example.test@
 * example.test is ours, as Postfix's percent hack makes it). `ourIps`: address literals that are
 * ours besides the IP the client connected to. `mayRelay`: the relay rules; without it no
 * probe that names a foreign host passes.
 */
export function relayProbeCheck(localDomains: readonly string[], ourIps: readonly string[] = [], mayRelay?: MayRelay): Check<'rcpt'> {
  const local = new Set(localDomains.map(normHost));
  return {
    name: 'relay_probe',
    phase: 'rcpt',
    async run(ctx) {
      const ours = [...ourIps, ctx.session.localIp];
      const found = findProbe(ctx.rcpt, ours);
      if (!found) return CONTINUE;
      const ourSet = ipSet(ours);
      const foreign = found.hosts.filter((h) => !local.has(h) && !isOurLiteral(h, ourSet));
      if (foreign.length === 0) return CONTINUE; // every host it names is ours: not relaying
      if (mayRelay) {
        let covered = true;
        for (const host of foreign) {
          if (!(await mayRelay(ctx, host))) {
            covered = false;
            break;
          }
        }
        if (covered) return { kind: 'continue', check: 'relay_probe', log: `relay probe allowed by the relay rules: ${found.reason}` };
      }
      const verdict = reject('relay_probe', 554, '5.7.1', `<${ctx.rcpt.address}>: Relay access denied`, 'relay');
      return { ...verdict, log: `Command RCPT refused (relay probe: ${found.reason}; to ${foreign.join(', ')})` };
    },
  };
}

/**
 * A MayRelay from the relay check itself: would `relay` accept a recipient at `destination` from
 * this client, with this sender? So relay_to is asked about the probe's real destination and the
 * client rules (forward_from_ip, auth, POP-before-SMTP, forward_from) apply as they are.
 */
export function relayRulesAllow(relay: Check<'rcpt'>): MayRelay {
  return async (ctx, destination) => {
    const rcpt = { ...ctx.rcpt, address: `probe@${destination}`, local: 'probe', domain: destination };
    const verdict = await relay.run({ ...ctx, rcpt });
    return verdict.kind === 'accept';
  };
}

/**
 * Always built. It reads the relay rules as well as local_domains: a probe passes when the relay
 * rules would take its real destination (its own relayCheck, built from the same settings).
 */
export const relayProbe = defineCheck({
  name: 'relay_probe',
  phase: 'rcpt',
  settings: (config): { localDomains: readonly string[]; relay: RelaySettings } => ({ localDomains: config.local_domains, relay: relaySettings(config) }),
  create: (s, deps) => relayProbeCheck(s.localDomains, [], relayRulesAllow(relayCheck(s.relay.relay, deps.store, s.relay.failOpen))),
});
