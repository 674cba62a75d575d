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

/**
 * For a configured network: an error message when `entry` has bits set past its prefix
 * (10.1.2.3/8: did the administrator mean 10.0.0.0/8 or the one address?), else undefined.
 * Assumes cidrError(entry) is undefined.
 */
export function cidrHostBitsError(entry: string): string | undefined {
  const slash = entry.indexOf('/');
  if (slash === -1) return undefined;
  const addr = entry.slice(0, slash);
  const bits = Number(entry.slice(slash + 1));
  const v4 = net.isIPv4(addr);
  const width = v4 ? 32 : 128;
  const value = v4 ? ipv4Value(addr) : ipv6Value(addr);
  if (value === undefined) return undefined;
  const hostMask = (1n << BigInt(width - bits)) - 1n;
  if ((value & hostMask) === 0n) return undefined;
  const network = `${v4 ? ipv4Text(value & ~hostMask) : new net.SocketAddress({ address: ipv6Text(value & ~hostMask), family: 'ipv6' }).address}/${bits}`;
  return `"${entry}" has host bits set past the /${bits} prefix: write the network ${network}, or the single address ${v4 ? addr : addr.toLowerCase()}`;
}

/** Does the list let in every address of a family (0.0.0.0/0, ::/0, ::ffff:0:0/96 …)? The family's name, or undefined. */
export function coversEverything(entry: string): string | undefined {
  if (cidrError(entry)) return undefined;
  const one = new AddressList([entry]);
  const v4 = one.has('0.0.0.0') && one.has('255.255.255.255');
  const v6 = one.has('::') && one.has('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff');
  return v4 && v6 ? 'every address' : v4 ? 'every IPv4 address' : v6 ? 'every IPv6 address' : undefined;
}

function ipv4Value(addr: string): bigint {
  return addr.split('.').reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n);
}

function ipv4Text(v: bigint): string {
  return [24n, 16n, 8n, 0n].map((s) => String((v >> s) & 255n)).join('.');
}

function ipv6Value(addr: string): bigint | undefined {
  let text = addr;
  // A dotted IPv4 tail (::ffff:1.2.3.4) as two groups.
  const tail = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (tail) {
    const v = ipv4Value(tail[1] as string);
    text = `${text.slice(0, tail.index)}${(v >> 16n).toString(16)}:${(v & 0xffffn).toString(16)}`;
  }
  const [head = '', rest] = text.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = rest === undefined || rest === '' ? [] : rest.split(':');
  const groups = rest === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  if (groups.length !== 8) return undefined;
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

function ipv6Text(v: bigint): string {
  return Array.from({ length: 8 }, (_, i) => ((v >> BigInt((7 - i) * 16)) & 0xffffn).toString(16)).join(':');
}

/** Normalises an IPv4-mapped IPv6 address (::ffff:1.2.3.4) to plain IPv4. */
export function plainIp(ip: string): string {
  return ip.startsWith('::ffff:') && net.isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}

/**
 * An address as the SMTP side names a client: IPv4 as is, IPv6 in its canonical form, IPv4-mapped
 * IPv6 in any spelling (::FFFF:192.0.2.1, 0:0:0:0:0:ffff:c000:201) as plain IPv4; undefined when
 * `raw` is not an IP address (zone IDs included).
 */
export function canonicalIp(raw: string): string | undefined {
  const family = net.isIP(raw);
  if (family === 4) return raw;
  if (family !== 6 || raw.includes('%')) return undefined;
  try {
    return plainIp(new net.SocketAddress({ address: raw, family: 'ipv6' }).address);
  } catch {
    return undefined;
  }
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
    if (this.entries.length === 0) return false; // most lists are empty: no parse, no BlockList call
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

/**
 * The network a client address belongs to for counting and greylisting (postgrey's default):
 * IPv4 /24, IPv6 /64, as CIDR text ("198.51.100.0/24", "2001:db8:1:2::/64" in canonical
 * form). A mail pool retries from a neighbouring address; a /24 or /64 is one sender. Undefined
 * when `ip` is not an address.
 */
export function clientNetwork(ip: string, v4Bits = 24, v6Bits = 64): string | undefined {
  const canonical = canonicalIp(ip);
  if (canonical === undefined) return undefined;
  if (net.isIPv4(canonical)) {
    const v = ipv4Value(canonical);
    const masked = v & ~((1n << BigInt(32 - v4Bits)) - 1n) & 0xffffffffn;
    return `${[24n, 16n, 8n, 0n].map((s) => ((masked >> s) & 0xffn).toString()).join('.')}/${v4Bits}`;
  }
  const v = ipv6Value(canonical);
  if (v === undefined) return undefined;
  const masked = v & ~((1n << BigInt(128 - v6Bits)) - 1n) & ((1n << 128n) - 1n);
  return `${new net.SocketAddress({ address: ipv6Text(masked), family: 'ipv6' }).address}/${v6Bits}`;
}
