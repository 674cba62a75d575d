// A small authoritative DNS server in this process, on 127.0.0.1 (UDP and TCP, one free port),
// answering from zone data shaped like the `zonedata` of the openspf test suites
// (test/fixtures/spf/rfc7208-tests.yml): name → list of records, each one of
//   {A: ip} {AAAA: ip} {MX: [priority, host]} {TXT: text | [strings]} {SPF: text | [strings]}
//   {PTR: name} {CNAME: name}, or the literal TIMEOUT.
//
// The semantics are those of the suite's reference driver (pyspf's test/testspf.py):
// - SPF records are served as type SPF (99) when asked, and duplicated into TXT records when
//   the name has no TXT entry at all ("auto-magic duplication of SPF to TXT records by test
//   suite drivers", the suite's header). `TXT: NONE` (or `SPF: NONE`) is no record, but still
//   stops that duplication: the name has "no TXT".
// - TIMEOUT: a question whose type has no record before the TIMEOUT entry gets no answer at all
//   (the client times out); records of the type listed before it are answered. The generated
//   TXT records count as listed last.
// - An unknown name is NXDOMAIN (or NODATA when a longer name in the zone ends with it: an
//   empty non-terminal, as a real authoritative server says); names under `error.` that are not
//   in the zone time out. A known name without records of the type is NODATA.
// - Names are matched case-insensitively; the question is echoed as asked.
// - CNAME: the alias is answered, then followed inside the zone (a loop stops the chain); the
//   RCODE is that of the last name (NXDOMAIN when the target is unknown).
// - TXT: a text is one record; a list is one record of several character-strings ([] is a
//   record with no strings, RDLENGTH 0, which the suite calls illegal but harmless). Strings
//   longer than 255 octets are split into 255-octet character-strings. Text whose characters
//   all fit in one octet is sent as those octets (the suite's "\xEF\xBB\xBF" are three octets,
//   a UTF-8 BOM); other text as UTF-8.
// - Over UDP an answer longer than 512 octets (or the client's EDNS payload size) is cut to the
//   question with TC set, and the client retries over TCP (c-ares does); EDNS queries get an OPT
//   record back.
import dgram from 'node:dgram';
import net from 'node:net';
import { expandIpv6 } from '../../src/dns/resolver.ts';

export type ZoneText = string | readonly string[];
export type ZoneRecord =
  | 'TIMEOUT'
  | { readonly A: string }
  | { readonly AAAA: string }
  | { readonly MX: readonly [number, string] }
  | { readonly TXT: ZoneText }
  | { readonly SPF: ZoneText }
  | { readonly PTR: string }
  | { readonly CNAME: string };
export type ZoneData = Readonly<Record<string, readonly ZoneRecord[]>>;

export interface ZoneServerOptions {
  /** Duplicate SPF records into TXT where a name has no TXT entry (the suite's driver rule). Default true. */
  readonly duplicateSpfAsTxt?: boolean;
  /** TTL of every answer, seconds. Default 300. */
  readonly ttl?: number;
}

export interface ZoneQuery {
  readonly name: string;
  /** Mnemonic (A, TXT, SPF…) or TYPE<n>. */
  readonly type: string;
  readonly transport: 'udp' | 'tcp';
  /** What the server did. */
  readonly outcome: 'answer' | 'nodata' | 'nxdomain' | 'timeout' | 'truncated' | 'error';
}

export interface DnsZoneServer {
  readonly port: number;
  /** "127.0.0.1:port", as DnsResolver's `servers` wants it. */
  readonly server: string;
  /** Every question received, in order. */
  readonly queries: ZoneQuery[];
  /** The largest answer built so far, octets (before any truncation). */
  readonly largestAnswer: () => number;
  stop(): Promise<void>;
}

export const TYPES = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, MX: 15, TXT: 16, AAAA: 28, SPF: 99, OPT: 41, ANY: 255 } as const;
const TYPE_NAMES = new Map<number, string>(Object.entries(TYPES).map(([k, v]) => [v, k]));
const typeName = (t: number): string => TYPE_NAMES.get(t) ?? `TYPE${t}`;

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
const MAX_CNAME_CHAIN = 8;
const MAX_TCP_MESSAGE = 65_535;

// --- zone data ------------------------------------------------------------------------------

type RrType = 'A' | 'AAAA' | 'MX' | 'TXT' | 'SPF' | 'PTR' | 'CNAME';
/** One record, its RDATA encoded except for names (MX, PTR and CNAME keep theirs as text). */
interface Rr {
  readonly type: RrType;
  readonly rdata: Buffer;
  /** For CNAME: the target, lower-cased, no trailing dot. */
  readonly target?: string;
}
type Entry = Rr | 'TIMEOUT';

/** Octets of a text: one octet per character when they all fit, else UTF-8. */
export function textOctets(s: string): Buffer {
  return /^[\x00-\xff]*$/.test(s) ? Buffer.from(s, 'latin1') : Buffer.from(s, 'utf8');
}

/** TXT RDATA: each string as character-strings of at most 255 octets (an empty string stays one empty character-string). */
export function txtRdata(text: ZoneText): Buffer {
  const strings = typeof text === 'string' ? [text] : text;
  const parts: Buffer[] = [];
  for (const s of strings) {
    const o = textOctets(s);
    if (o.length === 0) parts.push(Buffer.from([0]));
    for (let i = 0; i < o.length; i += 255) {
      const chunk = o.subarray(i, i + 255);
      parts.push(Buffer.from([chunk.length]), chunk);
    }
  }
  return Buffer.concat(parts);
}

/** A domain name in wire form (uncompressed); "" and "." are the root. */
export function encodeName(name: string): Buffer {
  const n = name.endsWith('.') ? name.slice(0, -1) : name;
  if (n === '') return Buffer.from([0]);
  const parts: Buffer[] = [];
  for (const label of n.split('.')) {
    const o = textOctets(label);
    if (o.length === 0 || o.length > 63) throw new Error(`zone: "${name}" has a label of ${o.length} octets`);
    parts.push(Buffer.from([o.length]), o);
  }
  parts.push(Buffer.from([0]));
  const out = Buffer.concat(parts);
  if (out.length > 255) throw new Error(`zone: "${name}" is longer than 255 octets`);
  return out;
}

const keyOf = (name: string): string => name.toLowerCase().replace(/\.$/, '');

function toRr(owner: string, type: string, value: unknown): Rr {
  const bad = (): Error => new Error(`zone: ${owner}: bad ${type} record ${JSON.stringify(value)}`);
  switch (type) {
    case 'A': {
      if (typeof value !== 'string' || !net.isIPv4(value)) throw bad();
      return { type, rdata: Buffer.from(value.split('.').map(Number)) };
    }
    case 'AAAA': {
      const hex = typeof value === 'string' ? expandIpv6(value) : undefined;
      if (hex === undefined) throw bad();
      return { type, rdata: Buffer.from(hex, 'hex') };
    }
    case 'MX': {
      if (!Array.isArray(value) || typeof value[0] !== 'number' || typeof value[1] !== 'string') throw bad();
      const pref = Buffer.alloc(2);
      pref.writeUInt16BE(value[0]);
      return { type, rdata: Buffer.concat([pref, encodeName(value[1])]) };
    }
    case 'TXT':
    case 'SPF': {
      if (typeof value === 'string' || (Array.isArray(value) && value.every((s) => typeof s === 'string'))) return { type, rdata: txtRdata(value as ZoneText) };
      if (typeof value === 'number' || typeof value === 'boolean') return { type, rdata: txtRdata(String(value)) };
      throw bad();
    }
    case 'PTR':
      if (typeof value !== 'string') throw bad();
      return { type, rdata: encodeName(value) };
    case 'CNAME':
      if (typeof value !== 'string') throw bad();
      return { type, rdata: encodeName(value), target: keyOf(value) };
    default:
      throw new Error(`zone: ${owner}: record type ${type} is not supported`);
  }
}

/** The zone as the server uses it: lower-cased names → entries in order, generated TXT last. */
export function compileZone(zone: ZoneData, duplicateSpfAsTxt = true): Map<string, Entry[]> {
  const out = new Map<string, Entry[]>();
  for (const [owner, records] of Object.entries(zone)) {
    const entries: Entry[] = [];
    const generated: Rr[] = [];
    let hasTxt = false;
    for (const r of records ?? []) {
      if (r === 'TIMEOUT') {
        entries.push('TIMEOUT');
        continue;
      }
      if (typeof r !== 'object' || r === null) throw new Error(`zone: ${owner}: bad entry ${JSON.stringify(r)}`);
      for (const [type, value] of Object.entries(r)) {
        if (type === 'TXT') hasTxt = true;
        if (value === 'NONE') continue;
        const rr = toRr(owner, type, value);
        entries.push(rr);
        if (type === 'SPF') generated.push({ type: 'TXT', rdata: rr.rdata });
      }
    }
    if (duplicateSpfAsTxt && !hasTxt) entries.push(...generated);
    const key = keyOf(owner);
    out.set(key, [...(out.get(key) ?? []), ...entries]);
  }
  return out;
}

type Lookup =
  | { readonly kind: 'timeout' }
  | { readonly kind: 'answer'; readonly rcode: number; readonly chain: readonly { readonly owner: string; readonly rrs: readonly Rr[] }[] };

/** The answer to (name, type): records (following CNAMEs), NODATA, NXDOMAIN, or no answer at all. */
export function lookupZone(zone: ReadonlyMap<string, Entry[]>, qname: string, qtype: number): Lookup {
  const want = typeName(qtype);
  const chain: { owner: string; rrs: Rr[] }[] = [];
  const seen = new Set<string>();
  let name = keyOf(qname);
  for (let hop = 0; hop <= MAX_CNAME_CHAIN; hop++) {
    const entries = zone.get(name);
    if (entries === undefined) {
      if (hop === 0 && name.startsWith('error.')) return { kind: 'timeout' };
      const ent = [...zone.keys()].some((k) => k.endsWith(`.${name}`));
      return { kind: 'answer', rcode: ent ? RCODE.NOERROR : RCODE.NXDOMAIN, chain };
    }
    seen.add(name);
    const rrs: Rr[] = [];
    let cname: Rr | undefined;
    for (const e of entries) {
      if (e === 'TIMEOUT') {
        if (rrs.length === 0 && cname === undefined) return { kind: 'timeout' };
        break;
      }
      if (e.type === want) rrs.push(e);
      else if (e.type === 'CNAME' && cname === undefined) cname = e;
    }
    if (rrs.length > 0 || cname === undefined || want === 'CNAME') {
      chain.push({ owner: name, rrs });
      return { kind: 'answer', rcode: RCODE.NOERROR, chain };
    }
    chain.push({ owner: name, rrs: [cname] });
    const next = cname.target ?? '';
    if (seen.has(next)) break; // a loop: answer the chain so far
    name = next;
  }
  return { kind: 'answer', rcode: RCODE.NOERROR, chain };
}

// --- the wire -------------------------------------------------------------------------------

interface Question {
  readonly id: number;
  readonly flags: number;
  /** The question section as received (name as asked, type, class). */
  readonly raw: Buffer;
  readonly name: string;
  readonly qtype: number;
  readonly qclass: number;
  /** The client's EDNS UDP payload size, when it sent an OPT record. */
  readonly edns?: number;
}

/** Reads an uncompressed name at `off`; undefined when malformed. */
function readName(msg: Buffer, off: number): { name: string; end: number } | undefined {
  const labels: string[] = [];
  let i = off;
  for (;;) {
    const len = msg[i];
    if (len === undefined || len > 63) return undefined; // compression is not used in questions
    i++;
    if (len === 0) break;
    if (i + len > msg.length) return undefined;
    labels.push(msg.toString('latin1', i, i + len));
    i += len;
  }
  return { name: labels.join('.'), end: i };
}

/** The question of a query; `error` (an RCODE) when it is one we cannot answer; undefined for no query at all (ignored). */
export function parseQuery(msg: Buffer): Question | { readonly id: number; readonly flags: number; readonly error: number } | undefined {
  if (msg.length < 12) return undefined;
  const id = msg.readUInt16BE(0);
  const flags = msg.readUInt16BE(2);
  if ((flags & 0x8000) !== 0) return undefined; // a response: ignore
  if (((flags >> 11) & 0xf) !== 0) return { id, flags, error: RCODE.NOTIMP };
  if (msg.readUInt16BE(4) !== 1) return { id, flags, error: RCODE.FORMERR };
  const q = readName(msg, 12);
  if (q === undefined || q.end + 4 > msg.length) return { id, flags, error: RCODE.FORMERR };
  const qtype = msg.readUInt16BE(q.end);
  const qclass = msg.readUInt16BE(q.end + 2);
  const raw = Buffer.from(msg.subarray(12, q.end + 4));
  // EDNS: an OPT record (root name, type 41) among the additional records.
  let edns: number | undefined;
  let i = q.end + 4;
  const skip = msg.readUInt16BE(6) + msg.readUInt16BE(8);
  const additional = msg.readUInt16BE(10);
  for (let n = 0; n < skip + additional && i < msg.length; n++) {
    const rr = readName(msg, i);
    if (rr === undefined || rr.end + 10 > msg.length) break;
    const type = msg.readUInt16BE(rr.end);
    if (n >= skip && type === TYPES.OPT && rr.name === '') edns = msg.readUInt16BE(rr.end + 2);
    i = rr.end + 10 + msg.readUInt16BE(rr.end + 8);
  }
  return { id, flags, raw, name: q.name, qtype, qclass, ...(edns !== undefined ? { edns } : {}) };
}

function header(id: number, queryFlags: number, rcode: number, counts: readonly [number, number, number, number], tc = false): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt16BE(id, 0);
  // QR, the opcode and RD copied, AA; no RA (authoritative only).
  h.writeUInt16BE(0x8000 | (queryFlags & 0x7900) | 0x0400 | (tc ? 0x0200 : 0) | (rcode & 0xf), 2);
  counts.forEach((c, k) => h.writeUInt16BE(c, 4 + 2 * k));
  return h;
}

function rrBytes(owner: Buffer, type: number, ttl: number, rdata: Buffer): Buffer {
  const fixed = Buffer.alloc(10);
  fixed.writeUInt16BE(type, 0);
  fixed.writeUInt16BE(1, 2); // IN
  fixed.writeUInt32BE(ttl, 4);
  fixed.writeUInt16BE(rdata.length, 8);
  return Buffer.concat([owner, fixed, rdata]);
}

const OPT_PAYLOAD = 1232;
const optRecord = (): Buffer => {
  const b = Buffer.alloc(11);
  b[0] = 0; // root
  b.writeUInt16BE(TYPES.OPT, 1);
  b.writeUInt16BE(OPT_PAYLOAD, 3);
  return b; // extended RCODE, version, flags and RDLENGTH all 0
};

/** The full response to a question (never truncated), or undefined for "do not answer". */
function respond(zone: ReadonlyMap<string, Entry[]>, q: Question, ttl: number): { msg: Buffer; outcome: ZoneQuery['outcome']; questionLength: number } | undefined {
  const opt = q.edns !== undefined ? [optRecord()] : [];
  const plain = (rcode: number, outcome: ZoneQuery['outcome']): { msg: Buffer; outcome: ZoneQuery['outcome']; questionLength: number } => ({
    msg: Buffer.concat([header(q.id, q.flags, rcode, [1, 0, 0, opt.length]), q.raw, ...opt]),
    outcome,
    questionLength: 12 + q.raw.length,
  });
  if (q.qclass !== 1) return plain(RCODE.REFUSED, 'error');
  if (q.qtype === TYPES.ANY || q.qtype === TYPES.OPT) return plain(RCODE.NOTIMP, 'error');
  const r = lookupZone(zone, q.name, q.qtype);
  if (r.kind === 'timeout') return undefined;
  const answers: Buffer[] = [];
  r.chain.forEach((link, k) => {
    // The first owner is the question's name as asked: a pointer to it (offset 12).
    const owner = k === 0 ? Buffer.from([0xc0, 0x0c]) : encodeName(link.owner);
    for (const rr of link.rrs) answers.push(rrBytes(owner, TYPES[rr.type], ttl, rr.rdata));
  });
  const outcome = r.rcode === RCODE.NXDOMAIN ? 'nxdomain' : answers.length === 0 ? 'nodata' : 'answer';
  return {
    msg: Buffer.concat([header(q.id, q.flags, r.rcode, [1, answers.length, 0, opt.length]), q.raw, ...answers, ...opt]),
    outcome,
    questionLength: 12 + q.raw.length,
  };
}

/** A UDP socket on a free port of 127.0.0.1 and a TCP server on the same port (retried while another process holds it). */
async function bindBoth(onTcp: (sock: net.Socket) => void): Promise<{ udp: dgram.Socket; tcp: net.Server }> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const udp = dgram.createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(0, '127.0.0.1', () => {
        udp.off('error', reject);
        resolve();
      });
    });
    const tcp = net.createServer(onTcp);
    const ok = await new Promise<boolean>((resolve) => {
      const onError = (): void => resolve(false);
      tcp.once('error', onError);
      tcp.listen(udp.address().port, '127.0.0.1', () => {
        tcp.off('error', onError);
        resolve(true);
      });
    });
    if (ok) return { udp, tcp };
    await new Promise<void>((resolve) => udp.close(() => resolve()));
  }
  throw new Error('dns-zone-server: no port free for both UDP and TCP');
}

/** Starts the server on 127.0.0.1, UDP and TCP on the same free port. */
export async function startDnsZoneServer(zoneData: ZoneData, opts: ZoneServerOptions = {}): Promise<DnsZoneServer> {
  const zone = compileZone(zoneData, opts.duplicateSpfAsTxt ?? true);
  const ttl = opts.ttl ?? 300;
  const queries: ZoneQuery[] = [];
  let largest = 0;

  /** The reply to one message, or undefined for none. */
  const handle = (msg: Buffer, transport: 'udp' | 'tcp'): Buffer | undefined => {
    const q = parseQuery(msg);
    if (q === undefined) return undefined;
    if ('error' in q) {
      queries.push({ name: '', type: '', transport, outcome: 'error' });
      return header(q.id, q.flags, q.error, [0, 0, 0, 0]);
    }
    const r = respond(zone, q, ttl);
    const log = (outcome: ZoneQuery['outcome']): void => {
      queries.push({ name: q.name, type: typeName(q.qtype), transport, outcome });
    };
    if (r === undefined) {
      log('timeout');
      return undefined;
    }
    largest = Math.max(largest, r.msg.length);
    const limit = transport === 'tcp' ? MAX_TCP_MESSAGE : Math.max(512, Math.min(q.edns ?? 512, OPT_PAYLOAD));
    if (r.msg.length <= limit) {
      log(r.outcome);
      return r.msg;
    }
    log('truncated');
    // The question alone (and the OPT record, when asked with EDNS), with TC set.
    const cut = Buffer.concat([header(q.id, q.flags, RCODE.NOERROR, [1, 0, 0, q.edns !== undefined ? 1 : 0], true), q.raw, ...(q.edns !== undefined ? [optRecord()] : [])]);
    return cut;
  };

  const sockets = new Set<net.Socket>();
  const onTcp = (sock: net.Socket): void => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => sock.destroy());
    let buf = Buffer.alloc(0);
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const msg = Buffer.from(buf.subarray(2, 2 + len));
        buf = buf.subarray(2 + len);
        const reply = handle(msg, 'tcp');
        if (reply !== undefined) {
          const prefix = Buffer.alloc(2);
          prefix.writeUInt16BE(reply.length);
          sock.write(Buffer.concat([prefix, reply]));
        }
      }
    });
  };
  const { udp, tcp } = await bindBoth(onTcp);
  udp.on('message', (msg, rinfo) => {
    const reply = handle(msg, 'udp');
    if (reply !== undefined) udp.send(reply, rinfo.port, rinfo.address);
  });
  udp.on('error', () => {
    // A send to a vanished client: nothing to do.
  });
  const port = udp.address().port;

  let stopped = false;
  return {
    port,
    server: `127.0.0.1:${port}`,
    queries,
    largestAnswer: () => largest,
    async stop() {
      if (stopped) return;
      stopped = true;
      for (const s of sockets) s.destroy();
      await Promise.all([new Promise<void>((resolve) => udp.close(() => resolve())), new Promise<void>((resolve) => tcp.close(() => resolve()))]);
    },
  };
}
