// Address lists: single IPs, CIDR networks, IPv4 and IPv6. Matching uses node:net's BlockList,
// which compares IPv4-mapped IPv6 client addresses (::ffff:1.2.3.4) correctly.
import net from 'node:net';

/** Returns an error message when `entry` is not an IP or CIDR, else undefined. */
export function cidrError(entry: string): string | undefined {
  const slash = entry.indexOf('/');
  const addr = slash === -1 ? entry : entry.slice(0, slash);
  const family = net.isIP(addr);
  if (family === 0) return `"${entry}" is not an IP address or CIDR network`;
  if (slash === -1) return undefined;
  const bitsText = entry.slice(slash + 1);
  if (!/^\d{1,3}$/.test(bitsText)) return `"${entry}" has a bad prefix length`;
  const bits = Number(bitsText);
  const max = family === 4 ? 32 : 128;
  if (bits > max) return `"${entry}" has a prefix longer than ${max} bits`;
  return undefined;
}

/** Normalises an IPv4-mapped IPv6 address (::ffff:1.2.3.4) to plain IPv4. */
export function plainIp(ip: string): string {
  return ip.startsWith('::ffff:') && net.isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}

export class AddressList {
  readonly entries: readonly string[];
  private readonly list = new net.BlockList();

  constructor(entries: readonly string[]) {
    this.entries = entries;
    for (const entry of entries) {
      const err = cidrError(entry);
      if (err) throw new Error(err);
      const slash = entry.indexOf('/');
      if (slash === -1) {
        this.list.addAddress(entry, net.isIPv6(entry) ? 'ipv6' : 'ipv4');
      } else {
        const addr = entry.slice(0, slash);
        this.list.addSubnet(addr, Number(entry.slice(slash + 1)), net.isIPv6(addr) ? 'ipv6' : 'ipv4');
      }
    }
  }

  has(ip: string): boolean {
    const plain = plainIp(ip);
    const family = net.isIP(plain);
    if (family === 0) return false;
    return this.list.check(plain, family === 6 ? 'ipv6' : 'ipv4');
  }
}

/** The matcher for a configured address list, built once per list (config arrays never change). */
const matchers = new WeakMap<readonly string[], AddressList>();
export function addressListOf(list: readonly string[]): AddressList {
  let matcher = matchers.get(list);
  if (!matcher) matchers.set(list, (matcher = new AddressList(list)));
  return matcher;
}
