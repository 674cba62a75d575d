// The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): the header a load balancer
// sends first on each connection it forwards, naming the real client's address, since our socket
// only sees the balancer's. A pure, incremental parser over untrusted input: call it with all
// the bytes received so far until it stops answering 'incomplete'; it never throws. Whether the
// peer is allowed to send a header at all (a trusted proxy) is the caller's business.
import net from 'node:net';
import { plainIp } from '../util/cidr.ts';

export interface Endpoint {
  ip: string;
  port: number;
}

export type ProxyHeader =
  /** Need more bytes: what is there is a prefix of a possibly valid header. */
  | { kind: 'incomplete' }
  /** Not a valid PROXY header: the caller drops the connection. */
  | { kind: 'invalid'; reason: string }
  /** A client with an IP address; `udp` when the proxy said it came over a datagram protocol. */
  | { kind: 'proxied'; version: 1 | 2; consumed: number; source: Endpoint; destination: Endpoint; udp?: true }
  /** v2 LOCAL: the proxy's own connection (a health check), no client behind it. */
  | { kind: 'local'; version: 2; consumed: number }
  /**
   * A well-formed header that names no IP client: v1 "PROXY UNKNOWN", v2 AF_UNSPEC, AF_UNIX or
   * an unspecified protocol. The caller must not take the proxy for the client.
   */
  | { kind: 'unknown'; version: 1 | 2; consumed: number; reason: string };

const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
/** The longest v1 line, CRLF included (the spec's 107: "PROXY UNKNOWN" + two full IPv6 + ports). */
export const V1_MAX_LENGTH = 107;
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** Signature, version/command, family/protocol, 2-byte length. */
const V2_FIXED = 16;
/**
 * The longest v2 header: the 16 fixed bytes plus a length field of at most 65535 (addresses and
 * TLVs). The 16-bit field cannot say more, so any header it announces is accepted.
 */
export const V2_MAX_LENGTH = V2_FIXED + 0xffff;
const PORT = /^(0|[1-9][0-9]{0,4})$/;

function invalid(reason: string): ProxyHeader {
  return { kind: 'invalid', reason };
}

/** Whether buf's first bytes (as many as there are, up to sig's length) match sig. */
function startsLike(buf: Buffer, sig: Buffer): boolean {
  const n = Math.min(buf.length, sig.length);
  return buf.subarray(0, n).equals(sig.subarray(0, n));
}

/**
 * Parses the PROXY header at the start of `buf` (everything received so far on the connection).
 * `consumed` is the header's length; any bytes after it are the client's own (SMTP) input.
 */
export function parseProxyHeader(buf: Buffer): ProxyHeader {
  if (buf.length === 0) return { kind: 'incomplete' };
  if (buf[0] === V1_PREFIX[0]) {
    if (!startsLike(buf, V1_PREFIX)) return invalid('not a PROXY header');
    return parseV1(buf);
  }
  if (buf[0] === V2_SIGNATURE[0]) {
    if (!startsLike(buf, V2_SIGNATURE)) return invalid('bad PROXY v2 signature');
    return parseV2(buf);
  }
  return invalid('not a PROXY header');
}

// --- version 1: one text line ------------------------------------------------------------------

function parseV1(buf: Buffer): ProxyHeader {
  const window = buf.subarray(0, V1_MAX_LENGTH);
  const lf = window.indexOf(0x0a);
  // Only printable ASCII before the CR: reject garbage at once instead of waiting for 107 bytes.
  const scanEnd = lf === -1 ? window.length : lf;
  for (let i = 0; i < scanEnd; i++) {
    const c = window[i] as number;
    if (c === 0x0d && i === scanEnd - 1) break;
    if (c < 0x20 || c > 0x7e) return invalid('PROXY v1 line has a control or non-ASCII byte');
  }
  if (lf === -1) {
    return buf.length >= V1_MAX_LENGTH ? invalid(`PROXY v1 line longer than ${V1_MAX_LENGTH} bytes`) : { kind: 'incomplete' };
  }
  if (lf === 0 || window[lf - 1] !== 0x0d) return invalid('PROXY v1 line not ended by CRLF');
  const consumed = lf + 1;
  const line = window.toString('latin1', V1_PREFIX.length, lf - 1);
  if (line === 'UNKNOWN' || line.startsWith('UNKNOWN ')) return { kind: 'unknown', version: 1, consumed, reason: 'PROXY UNKNOWN' };
  const parts = line.split(' ');
  if (parts.length !== 5) return invalid('PROXY v1 line: expected "PROXY TCP4|TCP6 src dst sport dport"');
  const [proto, srcIp, dstIp, srcPort, dstPort] = parts as [string, string, string, string, string];
  let family: 4 | 6;
  if (proto === 'TCP4') family = 4;
  else if (proto === 'TCP6') family = 6;
  else return invalid(`PROXY v1: unknown protocol "${proto.slice(0, 16)}"`);
  const src = v1Ip(srcIp, family);
  const dst = v1Ip(dstIp, family);
  if (src === undefined || dst === undefined) return invalid(`PROXY v1: bad ${proto} address`);
  const sport = v1Port(srcPort);
  const dport = v1Port(dstPort);
  if (sport === undefined || dport === undefined) return invalid('PROXY v1: bad port');
  return { kind: 'proxied', version: 1, consumed, source: { ip: src, port: sport }, destination: { ip: dst, port: dport } };
}

/** The address in canonical form when it is one of `family`; zone IDs ("%eth0") are refused. */
function v1Ip(text: string, family: 4 | 6): string | undefined {
  if (family === 4) return net.isIPv4(text) ? text : undefined;
  if (!net.isIPv6(text) || text.includes('%')) return undefined;
  return canonicalIpv6(text);
}

function v1Port(text: string): number | undefined {
  if (!PORT.test(text)) return undefined;
  const n = Number(text);
  return n <= 0xffff ? n : undefined;
}

// --- version 2: binary --------------------------------------------------------------------------

function parseV2(buf: Buffer): ProxyHeader {
  if (buf.length < V2_FIXED) return { kind: 'incomplete' };
  const verCmd = buf[12] as number;
  const famProto = buf[13] as number;
  const length = buf.readUInt16BE(14);
  if (verCmd >> 4 !== 2) return invalid(`PROXY v2: unsupported version ${verCmd >> 4}`);
  const command = verCmd & 0x0f;
  if (command !== 0 && command !== 1) return invalid(`PROXY v2: unknown command ${command}`);
  const total = V2_FIXED + length;
  // LOCAL (health checks, the proxy's own connections): the spec says to ignore the family and
  // whatever address block follows.
  if (command === 0) return buf.length < total ? { kind: 'incomplete' } : { kind: 'local', version: 2, consumed: total };

  const family = famProto >> 4;
  const proto = famProto & 0x0f;
  if (family > 3 || proto > 2) return invalid(`PROXY v2: unknown family/protocol 0x${famProto.toString(16).padStart(2, '0')}`);
  // PROXY naming no IP client: AF_UNSPEC or an unspecified protocol (the spec's "unknown or
  // unsupported") and AF_UNIX. Their address block is skipped; the caller decides (it drops them).
  // DGRAM over INET/INET6 names a client address like STREAM does (udp: the caller warns).
  const udp = proto === 2;
  if (family === 0 || family === 3 || proto === 0) {
    if (buf.length < total) return { kind: 'incomplete' };
    const what = family === 3 ? 'AF_UNIX' : family === 0 ? 'AF_UNSPEC' : 'an unspecified protocol';
    return { kind: 'unknown', version: 2, consumed: total, reason: `PROXY v2 with ${what}` };
  }

  const v4 = family === 1;
  const need = v4 ? 12 : 36;
  if (length < need) return invalid(`PROXY v2: length ${length} is shorter than the ${need}-byte address block`);
  if (buf.length < total) return { kind: 'incomplete' };
  // The address block, then TLVs up to `total`, which we skip.
  let source: Endpoint;
  let destination: Endpoint;
  if (v4) {
    source = { ip: ipv4At(buf, 16), port: buf.readUInt16BE(24) };
    destination = { ip: ipv4At(buf, 20), port: buf.readUInt16BE(26) };
  } else {
    source = { ip: ipv6At(buf, 16), port: buf.readUInt16BE(48) };
    destination = { ip: ipv6At(buf, 32), port: buf.readUInt16BE(50) };
  }
  return udp ? { kind: 'proxied', version: 2, consumed: total, source, destination, udp } : { kind: 'proxied', version: 2, consumed: total, source, destination };
}

function ipv4At(buf: Buffer, at: number): string {
  return `${buf[at]}.${buf[at + 1]}.${buf[at + 2]}.${buf[at + 3]}`;
}

function ipv6At(buf: Buffer, at: number): string {
  const groups: string[] = [];
  for (let i = 0; i < 8; i++) groups.push(buf.readUInt16BE(at + 2 * i).toString(16));
  return canonicalIpv6(groups.join(':'));
}

/**
 * The usual compressed text form (RFC 5952: lower case, longest zero run as "::"), via node's
 * inet_ntop; IPv4-mapped addresses come out as plain IPv4.
 */
function canonicalIpv6(text: string): string {
  return plainIp(new net.SocketAddress({ address: text, family: 'ipv6' }).address);
}
