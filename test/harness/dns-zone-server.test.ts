// The zone server of the SPF suite (dns-zone-server.ts), asked through node:dns (c-ares) and
// raw packets: answers, NXDOMAIN vs NODATA, TIMEOUT, case, TXT strings, SPF duplication, CNAME,
// truncation with the TCP retry, malformed queries, stop().
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import dns from 'node:dns';
import { DnsResolver } from '../../src/dns/resolver.ts';
import { encodeName, startDnsZoneServer, TYPES, type DnsZoneServer } from './dns-zone-server.ts';

const LONG = 'x'.repeat(300);
const BIG = Array.from({ length: 12 }, (_, i) => `${i}-${'y'.repeat(60)}`);
let s: DnsZoneServer;
let r: dns.promises.Resolver;

before(async () => {
  s = await startDnsZoneServer({
    'Mixed.Example.com': [{ A: '192.0.2.1' }, { A: '192.0.2.2' }, { AAAA: 'CAFE:BABE::1' }, { MX: [10, 'mx.example.com'] }, { PTR: 'Host.Example.com.' }],
    'sub.deep.example.com': [{ A: '192.0.2.3' }],
    'txt.example.com': [{ TXT: ['v=spf1 ip4:', '192.0.2.5 -all'] }, { TXT: LONG }, { TXT: 'caf\xe9' }],
    'spfonly.example.com': [{ SPF: 'v=spf1 -all' }],
    'spfnone.example.com': [{ SPF: 'v=spf1 -all' }, { TXT: 'NONE' }],
    'both.example.com': [{ SPF: 'v=spf1 ?all' }, { TXT: 'v=spf1 -all' }],
    'timeout.example.com': ['TIMEOUT'],
    'halftimeout.example.com': [{ TXT: 'v=spf1 -all' }, 'TIMEOUT'],
    'alias.example.com': [{ CNAME: 'Mixed.Example.com.' }],
    'loop1.example.com': [{ CNAME: 'loop2.example.com' }],
    'loop2.example.com': [{ CNAME: 'loop1.example.com' }],
    'nullmx.example.com': [{ MX: [0, ''] }],
    'big.example.com': BIG.map((t) => ({ TXT: t })),
  });
  r = new dns.promises.Resolver({ timeout: 300, tries: 1 });
  r.setServers([s.server]);
});

after(async () => {
  await s?.stop();
});

const code = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return String((err as { code?: unknown }).code);
  }
};

/** One raw UDP exchange; the reply, or undefined after `ms`. */
function raw(msg: Buffer, ms = 300): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const sock = dgram.createSocket('udp4');
    const timer = setTimeout(() => {
      sock.close();
      resolve(undefined);
    }, ms);
    sock.on('message', (m) => {
      clearTimeout(timer);
      sock.close();
      resolve(m);
    });
    sock.send(msg, s.port, '127.0.0.1');
  });
}

const rcode = (m: Buffer | undefined): number => (m === undefined ? -1 : (m[3] ?? 0) & 0x0f);

function query(name: string, type: number, id = 0x1234): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt16BE(id, 0);
  h.writeUInt16BE(0x0100, 2);
  h.writeUInt16BE(1, 4);
  const tail = Buffer.alloc(4);
  tail.writeUInt16BE(type, 0);
  tail.writeUInt16BE(1, 2);
  return Buffer.concat([h, encodeName(name), tail]);
}

test('A, AAAA, MX, PTR; names case-insensitive; NXDOMAIN, NODATA and empty non-terminals', async () => {
  assert.deepEqual((await r.resolve4('mixed.example.COM')).sort(), ['192.0.2.1', '192.0.2.2']);
  assert.deepEqual(await r.resolve6('MIXED.example.com'), ['cafe:babe::1']);
  const mx = (rs: dns.MxRecord[]): object[] => rs.map((m) => ({ exchange: m.exchange, priority: m.priority }));
  assert.deepEqual(mx(await r.resolveMx('mixed.example.com')), [{ exchange: 'mx.example.com', priority: 10 }]);
  assert.deepEqual(await r.resolvePtr('mixed.example.com'), ['Host.Example.com']);
  assert.deepEqual(mx(await r.resolveMx('nullmx.example.com')), [{ exchange: '', priority: 0 }]);
  assert.equal(await code(r.resolve4('nowhere.example.com')), dns.NOTFOUND);
  assert.equal(await code(r.resolveTxt('mixed.example.com')), dns.NODATA);
  assert.equal(await code(r.resolve4('deep.example.com')), dns.NODATA, 'an empty non-terminal exists');
});

test('TXT: several strings in one record, strings over 255 octets split, one octet per character', async () => {
  const txt = await r.resolveTxt('txt.example.com');
  assert.equal(txt.length, 3);
  assert.ok(txt.some((x) => x.join('|') === 'v=spf1 ip4:|192.0.2.5 -all'));
  assert.ok(txt.some((x) => x.length === 2 && x[0]?.length === 255 && x.join('') === LONG));
  // mxguard's resolver joins a record's strings.
  const ours = await new DnsResolver({ servers: [s.server], timeoutMs: 1000 }).txt('txt.example.com');
  assert.equal(ours.kind, 'ok');
  if (ours.kind === 'ok') assert.ok(ours.records.includes('v=spf1 ip4:192.0.2.5 -all') && ours.records.includes(LONG));
  const reply = await raw(query('txt.example.com', TYPES.TXT));
  assert.ok(reply !== undefined && reply.includes(Buffer.from([4, 0x63, 0x61, 0x66, 0xe9])), '"caf\\xe9" is four octets');
});

test('SPF records: type 99 as asked, copied into TXT only where the name has no TXT entry', async () => {
  assert.deepEqual(await r.resolveTxt('spfonly.example.com'), [['v=spf1 -all']]);
  assert.equal(await code(r.resolveTxt('spfnone.example.com')), dns.NODATA, 'TXT: NONE stops the copy');
  assert.deepEqual(await r.resolveTxt('both.example.com'), [['v=spf1 -all']]);
  const reply = await raw(query('spfnone.example.com', TYPES.SPF));
  assert.ok(reply !== undefined);
  assert.equal(reply.readUInt16BE(6), 1, 'one type-99 answer');
  assert.ok(reply.includes(Buffer.from('\x0bv=spf1 -all', 'latin1')));
  assert.equal(reply[3]! & 0x0f, 0);
  assert.ok((reply[2]! & 0x04) !== 0, 'AA set');
});

test('TIMEOUT: no answer unless a record of the type comes before it', async () => {
  const t0 = Date.now();
  assert.equal(await code(r.resolve4('timeout.example.com')), dns.TIMEOUT);
  assert.ok(Date.now() - t0 >= 250);
  assert.deepEqual(await r.resolveTxt('halftimeout.example.com'), [['v=spf1 -all']]);
  assert.equal(await code(r.resolve4('halftimeout.example.com')), dns.TIMEOUT);
  assert.ok(s.queries.some((q) => q.name === 'timeout.example.com' && q.outcome === 'timeout'));
});

test('CNAME chains are followed in the zone; a loop ends the chain without an answer of the type', async () => {
  assert.deepEqual((await r.resolve4('alias.example.com')).sort(), ['192.0.2.1', '192.0.2.2']);
  assert.deepEqual(await r.resolveCname('alias.example.com'), ['Mixed.Example.com']);
  // c-ares gives an answer of aliases only as an empty list.
  assert.deepEqual(await r.resolve4('loop1.example.com').catch(() => []), []);
  assert.equal(s.queries.at(-1)?.outcome, 'answer');
});

test('answers over 512 octets are truncated over UDP and complete over TCP', async () => {
  const before = s.queries.length;
  const txt = await r.resolveTxt('big.example.com');
  assert.deepEqual(txt.map((x) => x.join('')).sort(), [...BIG].sort());
  const mine = s.queries.slice(before).filter((q) => q.name === 'big.example.com');
  assert.ok(mine.some((q) => q.transport === 'tcp' && q.outcome === 'answer'), JSON.stringify(mine));
  assert.ok(s.largestAnswer() > 512);
  const cut = await raw(query('big.example.com', TYPES.TXT));
  assert.ok(cut !== undefined && (cut[2]! & 0x02) !== 0 && cut.readUInt16BE(6) === 0, 'TC set, no answers');
});

test('malformed and unsupported queries', async () => {
  assert.equal(await raw(Buffer.from([1, 2, 3])), undefined, 'too short: ignored');
  const two = query('mixed.example.com', TYPES.A);
  two.writeUInt16BE(2, 4);
  assert.equal(rcode(await raw(two)), 1, 'two questions: FORMERR');
  const pointer = Buffer.concat([query('a.b', TYPES.A).subarray(0, 12), Buffer.from([0xc0, 0x0c, 0, 1, 0, 1])]);
  assert.equal(rcode(await raw(pointer)), 1, 'a compressed question: FORMERR');
  assert.equal(rcode(await raw(query('mixed.example.com', TYPES.ANY))), 4, 'ANY: NOTIMP');
});

test('stop() closes the sockets', async () => {
  const t = await startDnsZoneServer({ 'a.example.com': [{ A: '192.0.2.9' }] });
  const rr = new dns.promises.Resolver({ timeout: 200, tries: 1 });
  rr.setServers([t.server]);
  assert.deepEqual(await rr.resolve4('a.example.com'), ['192.0.2.9']);
  await t.stop();
  await t.stop();
  assert.notEqual(await code(rr.resolve4('a.example.com')), 'ok');
});
