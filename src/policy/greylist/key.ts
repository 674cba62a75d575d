// The greylisting key (issue 11): the client network, the sender normalised as postgrey does,
// the recipient. Normalising makes one sender one key however its mailing-list software varies
// the address per message; the network makes a mail pool that retries from a neighbouring
// address one client.
import { clientNetwork } from '../../util/cidr.ts';

/**
 * The sender as a greylist key: lower case; a BATV tag (`prvs=1234abcdef=user`,
 * `msprvs1=…=user`) removed; a `+extension` removed (VERP, mailing lists); every run of digits
 * standing alone replaced by `#` (postgrey's rule: `bounce-4711@` and `bounce-4712@` are one
 * sender). The null sender stays empty.
 */
export function normaliseSender(address: string): string {
  if (address === '') return '';
  const lower = address.toLowerCase();
  const at = lower.lastIndexOf('@');
  let local = at === -1 ? lower : lower.slice(0, at);
  const domain = at === -1 ? '' : lower.slice(at);
  const batv = /^(?:prvs|msprvs1|btv1)=[^=]*=(.+)$/.exec(local);
  if (batv) local = batv[1] as string;
  const plus = local.indexOf('+');
  if (plus > 0) local = local.slice(0, plus);
  local = local.replace(/\b\d+\b/g, '#');
  return local + domain;
}

/** The triplet key ("198.51.100.0/24|bounce-#@lists.example|bob@example.test"); undefined when the client address is not one. */
export function tripletKey(clientIp: string, sender: string, rcpt: string): string | undefined {
  const network = clientNetwork(clientIp);
  if (network === undefined) return undefined;
  return `${network}|${normaliseSender(sender)}|${rcpt.toLowerCase()}`;
}

/**
 * Does a host name spell out the address it stands for, as the generic names of dynamic and
 * cloud pools do (`c-73-162-5-10.hsd1.ca.comcast.net`, `ec2-3-91-20-7.compute-1.amazonaws.com`,
 * `4a5b140a.dyn.example`)? Then its domain is a pool of strangers, not one sender's servers.
 * IPv4: three of the four octets among the name's numbers, or the address in hex; IPv6: two of
 * its non-zero groups.
 */
export function spellsAddress(name: string, ip: string): boolean {
  const lower = name.toLowerCase();
  if (ip.includes(':')) {
    const groups = ip.split(':').filter((g) => g !== '' && !/^0+$/.test(g));
    const words = new Set(lower.split(/[^0-9a-f]+/));
    return groups.filter((g) => words.has(g.replace(/^0+/, ''))).length >= 2;
  }
  const octets = ip.split('.');
  if (octets.length !== 4) return false;
  const numbers: string[] = lower.match(/\d+/g) ?? [];
  const found = octets.filter((o) => numbers.includes(o)).length;
  const hex = octets.map((o) => Number(o).toString(16).padStart(2, '0')).join('');
  return found >= 3 || lower.includes(hex);
}
