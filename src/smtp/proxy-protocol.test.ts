import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { parseProxyHeader, V1_MAX_LENGTH, type ProxyHeader } from './proxy-protocol.ts';
import { prng } from '../../test/harness/prng.ts';

const SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

function ipBytes(ip: string): Buffer {
  if (net.isIPv4(ip)) return Buffer.from(ip.split('.').map(Number));
  // Expand "::" and any trailing dotted quad into 16 bytes.
  let text = ip;
  const quad = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (quad) {
    const b = ipBytes(quad[1] as string);
    text = text.slice(0, -(quad[1] as string).length) + `${b.readUInt16BE(0).toString(16)}:${b.readUInt16BE(2).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), 2 * i));
  return out;
}

/** A v2 header: command 0/1, family/protocol byte, addresses and ports, then extra bytes (TLVs). */
function v2(opts: { verCmd?: number; fam?: number; src?: string; dst?: string; sport?: number; dport?: number; tlvs?: Buffer; length?: number; block?: Buffer }): Buffer {
  let block = opts.block;
  if (block === undefined) {
    if (opts.src !== undefined && opts.dst !== undefined) {
      const ports = Buffer.alloc(4);
      ports.writeUInt16BE(opts.sport ?? 0, 0);
      ports.writeUInt16BE(opts.dport ?? 0, 2);
      block = Buffer.concat([ipBytes(opts.src), ipBytes(opts.dst), ports]);
    } else {
      block = Buffer.alloc(0);
    }
  }
  const body = Buffer.concat([block, opts.tlvs ?? Buffer.alloc(0)]);
  const fixed = Buffer.alloc(4);
  fixed[0] = opts.verCmd ?? 0x21;
  fixed[1] = opts.fam ?? 0x11;
  fixed.writeUInt16BE(opts.length ?? body.length, 2);
  return Buffer.concat([SIG, fixed, body]);
}

function tlv(type: number, value: Buffer): Buffer {
  const h = Buffer.alloc(3);
  h[0] = type;
  h.writeUInt16BE(value.length, 1);
  return Buffer.concat([h, value]);
}

const TLVS = Buffer.concat([tlv(0x01, Buffer.from('smtp')), tlv(0x04, Buffer.alloc(0)), tlv(0x20, Buffer.from([0x07, 0, 0, 0, 0, 0x21, 0x01, 0x33]))]);

function parse(s: string | Buffer): ProxyHeader {
  return parseProxyHeader(typeof s === 'string' ? Buffer.from(s, 'latin1') : s);
}

function assertInvalid(input: string | Buffer, what: string): void {
  const r = parse(input);
  assert.equal(r.kind, 'invalid', `${what}: ${JSON.stringify(r)}`);
  if (r.kind === 'invalid') assert.ok(r.reason.length > 0);
}

test('v1 TCP4', () => {
  const line = 'PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n';
  assert.deepEqual(parse(line), {
    kind: 'proxied',
    version: 1,
    consumed: line.length,
    source: { ip: '192.0.2.1', port: 56324 },
    destination: { ip: '198.51.100.2', port: 25 },
  });
  assert.deepEqual(parse('PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n'), {
    kind: 'proxied',
    version: 1,
    consumed: 44,
    source: { ip: '0.0.0.0', port: 0 },
    destination: { ip: '255.255.255.255', port: 65535 },
  });
});

test('v1 TCP6: compressed canonical form, IPv4-mapped as plain IPv4', () => {
  const line = 'PROXY TCP6 2001:DB8:0:0:0:0:0:1 2001:db8::0002 40000 587\r\n';
  assert.deepEqual(parse(line), {
    kind: 'proxied',
    version: 1,
    consumed: line.length,
    source: { ip: '2001:db8::1', port: 40000 },
    destination: { ip: '2001:db8::2', port: 587 },
  });
  const r = parse('PROXY TCP6 ::ffff:192.0.2.9 ::1 1 2\r\n');
  assert.ok(r.kind === 'proxied');
  assert.equal(r.source.ip, '192.0.2.9');
  assert.equal(r.destination.ip, '::1');
  // The longest legal line is exactly 107 bytes.
  const full = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';
  const longest = `PROXY TCP6 ${full} ${full} 65535 65535\r\n`;
  assert.equal(longest.length, 104);
  const unknownLongest = `PROXY UNKNOWN ${full} ${full} 65535 65535\r\n`;
  assert.equal(unknownLongest.length, V1_MAX_LENGTH);
  assert.deepEqual(parse(unknownLongest), { kind: 'unknown', version: 1, consumed: V1_MAX_LENGTH, reason: 'PROXY UNKNOWN' });
  assert.equal(parse(longest).kind, 'proxied');
});

test('v1 UNKNOWN names no client (never "local"), with or without the rest of the line', () => {
  assert.deepEqual(parse('PROXY UNKNOWN\r\n'), { kind: 'unknown', version: 1, consumed: 15, reason: 'PROXY UNKNOWN' });
  assert.deepEqual(parse('PROXY UNKNOWN whatever the proxy says 1 2\r\nEHLO x\r\n'), { kind: 'unknown', version: 1, consumed: 43, reason: 'PROXY UNKNOWN' });
});

test('v2 PROXY IPv4 with TLVs', () => {
  const h = v2({ fam: 0x11, src: '203.0.113.7', dst: '192.0.2.25', sport: 61000, dport: 25, tlvs: TLVS });
  assert.deepEqual(parse(h), {
    kind: 'proxied',
    version: 2,
    consumed: h.length,
    source: { ip: '203.0.113.7', port: 61000 },
    destination: { ip: '192.0.2.25', port: 25 },
  });
});

test('v2 PROXY IPv6 with TLVs; IPv4-mapped comes out as IPv4', () => {
  const h = v2({ fam: 0x21, src: '2001:db8:0:0:1:0:0:1', dst: '2001:db8::25', sport: 1234, dport: 25, tlvs: TLVS });
  assert.deepEqual(parse(h), {
    kind: 'proxied',
    version: 2,
    consumed: h.length,
    source: { ip: '2001:db8::1:0:0:1', port: 1234 },
    destination: { ip: '2001:db8::25', port: 25 },
  });
  const m = parse(v2({ fam: 0x21, src: '::ffff:198.51.100.7', dst: '::', sport: 5, dport: 6 }));
  assert.ok(m.kind === 'proxied');
  assert.equal(m.source.ip, '198.51.100.7');
  assert.equal(m.destination.ip, '::');
});

test('v2 LOCAL is local; PROXY with AF_UNSPEC, AF_UNIX or no protocol names no client; UDP names its client', () => {
  const local = v2({ verCmd: 0x20, fam: 0x00 });
  assert.deepEqual(parse(local), { kind: 'local', version: 2, consumed: 16 });
  // LOCAL ignores family and address block, whatever they are.
  const localWithBlock = v2({ verCmd: 0x20, fam: 0x11, src: '10.0.0.1', dst: '10.0.0.2', tlvs: TLVS });
  assert.deepEqual(parse(localWithBlock), { kind: 'local', version: 2, consumed: localWithBlock.length });
  const reasons: Record<number, string> = { 0x00: 'AF_UNSPEC', 0x01: 'AF_UNSPEC', 0x10: 'an unspecified protocol', 0x20: 'an unspecified protocol', 0x31: 'AF_UNIX', 0x32: 'AF_UNIX' };
  for (const [fam, what] of Object.entries(reasons)) {
    const h = v2({ verCmd: 0x21, fam: Number(fam), block: Buffer.alloc(Number(fam) >> 4 === 3 ? 216 : 12) });
    assert.deepEqual(parse(h), { kind: 'unknown', version: 2, consumed: h.length, reason: `PROXY v2 with ${what}` }, `fam 0x${Number(fam).toString(16)}`);
  }
  const udp4 = v2({ verCmd: 0x21, fam: 0x12, src: '203.0.113.7', dst: '192.0.2.25', sport: 53, dport: 25 });
  assert.deepEqual(parse(udp4), { kind: 'proxied', version: 2, consumed: udp4.length, source: { ip: '203.0.113.7', port: 53 }, destination: { ip: '192.0.2.25', port: 25 }, udp: true });
  const udp6 = v2({ verCmd: 0x21, fam: 0x22, src: '2001:db8::7', dst: '2001:db8::25', sport: 53, dport: 25 });
  assert.deepEqual(parse(udp6), { kind: 'proxied', version: 2, consumed: udp6.length, source: { ip: '2001:db8::7', port: 53 }, destination: { ip: '2001:db8::25', port: 25 }, udp: true });
  assert.equal(parse(v2({ verCmd: 0x21, fam: 0x22, block: Buffer.alloc(12) })).kind, 'invalid', 'UDP6 with an IPv4-sized block');
});

test('v2 with the maximum length field is accepted', () => {
  const h = v2({ fam: 0x11, src: '192.0.2.1', dst: '192.0.2.2', sport: 1, dport: 2, tlvs: tlv(0xee, Buffer.alloc(0xffff - 12 - 3)) });
  assert.equal(h.length, 16 + 0xffff);
  const r = parse(Buffer.concat([h, Buffer.from('EHLO x\r\n')]));
  assert.equal(r.kind, 'proxied');
  if (r.kind === 'proxied') assert.equal(r.consumed, 16 + 0xffff);
  assert.equal(parse(h.subarray(0, h.length - 1)).kind, 'incomplete');
});

test('fed byte by byte: every proper prefix is incomplete, the whole is parsed', () => {
  const inputs: Buffer[] = [
    Buffer.from('PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n'),
    Buffer.from('PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n'),
    Buffer.from('PROXY UNKNOWN\r\n'),
    v2({ fam: 0x11, src: '192.0.2.1', dst: '192.0.2.2', sport: 1, dport: 2, tlvs: TLVS }),
    v2({ fam: 0x21, src: '2001:db8::1', dst: '2001:db8::2', sport: 1, dport: 2, tlvs: TLVS }),
    v2({ verCmd: 0x20, fam: 0x00, tlvs: TLVS }),
  ];
  for (const whole of inputs) {
    for (let n = 0; n < whole.length; n++) {
      assert.deepEqual(parseProxyHeader(whole.subarray(0, n)), { kind: 'incomplete' }, `${whole.toString('hex')} at ${n}`);
    }
    const r = parseProxyHeader(whole);
    assert.ok(r.kind === 'proxied' || r.kind === 'local' || r.kind === 'unknown', JSON.stringify(r));
    assert.equal(r.consumed, whole.length);
  }
});

test('bytes after the header are not consumed', () => {
  const smtp = Buffer.from('EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n');
  for (const h of [
    Buffer.from('PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n'),
    Buffer.from('PROXY UNKNOWN\r\n'),
    v2({ fam: 0x21, src: '2001:db8::1', dst: '2001:db8::2', sport: 1, dport: 2, tlvs: TLVS }),
    v2({ verCmd: 0x20, fam: 0x00 }),
  ]) {
    const all = Buffer.concat([h, smtp]);
    const r = parseProxyHeader(all);
    assert.ok(r.kind === 'proxied' || r.kind === 'local' || r.kind === 'unknown', JSON.stringify(r));
    assert.equal(r.consumed, h.length);
    assert.deepEqual(all.subarray(r.consumed), smtp);
  }
});

test('malformed input is invalid', () => {
  // Not a PROXY header at all: rejected from the first byte, without waiting for more.
  assertInvalid('E', 'SMTP from byte one');
  assertInvalid('EHLO x\r\n', 'SMTP');
  assertInvalid('\r\n\r\n\r\n', 'blank lines (the v2 signature has a NUL after two CRLFs)');
  assert.equal(parse('\r\n').kind, 'incomplete', 'a CRLF could still be the v2 signature');
  assertInvalid('p', 'lower-case p');
  assertInvalid('proxy TCP4 192.0.2.1 192.0.2.2 1 2\r\n', 'lower-case "proxy"');
  assertInvalid('PROXYTCP4', 'no space after PROXY');
  assertInvalid('PROXY tcp4 192.0.2.1 192.0.2.2 1 2\r\n', 'lower-case tcp4');
  assertInvalid(Buffer.from([0x00]), 'NUL');
  assertInvalid(Buffer.from('0d0a0d0a000d0a5155495421', 'hex'), 'bad v2 signature (last byte)');
  assertInvalid(Buffer.from('0d0a0d0b', 'hex'), 'bad v2 signature, caught early');
  // v1 line shape.
  assertInvalid(`PROXY UNKNOWN ${'x'.repeat(V1_MAX_LENGTH)}`, 'oversize v1 line without CRLF');
  assertInvalid(`PROXY UNKNOWN ${'x'.repeat(V1_MAX_LENGTH - 15)}\r\n`, 'v1 line of 108 bytes');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n', 'bare LF');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 1 2\rX', 'CR not followed by LF');
  assertInvalid('PROXY TCP4 192.0.2.1\t192.0.2.2 1 2\r\n', 'tab');
  assertInvalid('PROXY TCP4 192.0.2.1  192.0.2.2 1 2\r\n', 'double space');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n', 'trailing space');
  assertInvalid('PROXY  TCP4 192.0.2.1 192.0.2.2 1 2\r\n', 'double space after PROXY');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n', 'missing port');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n', 'extra field');
  assertInvalid('PROXY \r\n', 'empty');
  assertInvalid('PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n', 'unknown protocol');
  assertInvalid('PROXY UNKNOWNX\r\n', 'UNKNOWN glued to junk');
  // A missing CRLF under 107 bytes is only incomplete; at 107 it is invalid.
  assert.equal(parse('PROXY TCP4 192.0.2.1 192.0.2.2 1 2').kind, 'incomplete');
  assertInvalid(`PROXY TCP4 192.0.2.1 192.0.2.2 1 2${' '.repeat(V1_MAX_LENGTH - 34)}`, 'missing CRLF at 107 bytes');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 1 2EHLO x\r\n', 'missing CRLF, SMTP glued on');
  // v1 addresses and ports.
  assertInvalid('PROXY TCP4 192.0.2.256 192.0.2.2 1 2\r\n', 'octet 256');
  assertInvalid('PROXY TCP4 192.0.2 192.0.2.2 1 2\r\n', 'three octets');
  assertInvalid('PROXY TCP4 192.0.2.01 192.0.2.2 1 2\r\n', 'octet with leading zero');
  assertInvalid('PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n', 'IPv6 in TCP4');
  assertInvalid('PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n', 'IPv4 in TCP6');
  assertInvalid('PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n', 'zone ID');
  assertInvalid('PROXY TCP6 2001:db8:::1 2001:db8::2 1 2\r\n', 'bad IPv6');
  assertInvalid('PROXY TCP4 192.0.2.1 localhost 1 2\r\n', 'a name');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n', 'port 65536');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 1 99999\r\n', 'port 99999');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 025 2\r\n', 'port with leading zero');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 00 2\r\n', 'port 00');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 +25 2\r\n', 'port with a sign');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n', 'negative port');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 0x19 2\r\n', 'hex port');
  assertInvalid('PROXY TCP4 192.0.2.1 192.0.2.2 1 \r\n', 'empty port');
  // v2 fixed part: invalid as soon as the 16 fixed bytes are in.
  const good = v2({ fam: 0x11, src: '192.0.2.1', dst: '192.0.2.2', sport: 1, dport: 2 });
  const withByte = (at: number, value: number): Buffer => {
    const b = Buffer.from(good);
    b[at] = value;
    return b;
  };
  assertInvalid(withByte(12, 0x11), 'version 1 in a v2 header');
  assertInvalid(withByte(12, 0x31), 'version 3');
  assertInvalid(withByte(12, 0x22), 'command 2');
  assertInvalid(withByte(12, 0x2f), 'command 15');
  assertInvalid(withByte(13, 0x41), 'family 4');
  assertInvalid(withByte(13, 0x13), 'protocol 3');
  assertInvalid(v2({ fam: 0x11, length: 11 }).subarray(0, 16), 'v2 IPv4 length shorter than the address block');
  assertInvalid(v2({ fam: 0x21, src: '192.0.2.1', dst: '192.0.2.2', sport: 1, dport: 2 }), 'v2 IPv6 with a 12-byte block');
  assertInvalid(v2({ fam: 0x21, length: 0 }), 'v2 IPv6 with length 0');
});

test('fuzz: mutated headers never throw, consumed never exceeds the input', () => {
  const rand = prng(0x50524f58);
  const seeds: Buffer[] = [
    Buffer.from('PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO x\r\n'),
    Buffer.from('PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 1 65535\r\n'),
    Buffer.from('PROXY UNKNOWN\r\n'),
    v2({ fam: 0x11, src: '192.0.2.1', dst: '192.0.2.2', sport: 1, dport: 2, tlvs: TLVS }),
    v2({ fam: 0x21, src: '2001:db8::1', dst: '::ffff:10.0.0.1', sport: 1, dport: 2, tlvs: TLVS }),
    v2({ verCmd: 0x20, fam: 0x00 }),
    v2({ verCmd: 0x20, fam: 0x11, src: '10.0.0.1', dst: '10.0.0.2', tlvs: TLVS }),
    v2({ fam: 0x31, block: Buffer.alloc(216, 0x41) }),
  ];
  const alphabet = Buffer.from('PROXY TCP46UNKOW0123456789abcdef.:\r\n\x00\x0d\x0a\x21\x11\xff');
  const pick = (n: number): number => Math.floor(rand() * n);
  const counts: Record<string, number> = { incomplete: 0, invalid: 0, proxied: 0, local: 0, unknown: 0 };
  for (let i = 0; i < 20_000; i++) {
    let b = Buffer.from(seeds[pick(seeds.length)] as Buffer);
    const edits = 1 + pick(4);
    for (let e = 0; e < edits; e++) {
      const at = pick(b.length + 1);
      switch (pick(5)) {
        case 0: // overwrite with a random byte
          if (at < b.length) b[at] = pick(256);
          break;
        case 1: // overwrite with an "interesting" byte
          if (at < b.length) b[at] = alphabet[pick(alphabet.length)] as number;
          break;
        case 2: // delete a byte
          b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1)]);
          break;
        case 3: // insert a byte
          b = Buffer.concat([b.subarray(0, at), Buffer.from([alphabet[pick(alphabet.length)] as number]), b.subarray(at)]);
          break;
        default: // truncate
          b = b.subarray(0, at);
      }
    }
    let r: ProxyHeader;
    try {
      r = parseProxyHeader(b);
    } catch (err) {
      assert.fail(`threw on ${b.toString('hex')}: ${String(err)}`);
    }
    counts[r.kind] = (counts[r.kind] ?? 0) + 1;
    if (r.kind === 'proxied' || r.kind === 'local' || r.kind === 'unknown') {
      assert.ok(r.consumed > 0 && r.consumed <= b.length, `consumed ${r.consumed} of ${b.length}: ${b.toString('hex')}`);
    }
    if (r.kind === 'proxied') {
      assert.ok(net.isIP(r.source.ip) !== 0 && net.isIP(r.destination.ip) !== 0, JSON.stringify(r));
      assert.ok(Number.isInteger(r.source.port) && r.source.port >= 0 && r.source.port <= 65535);
    }
  }
  // The mutations reach every outcome (the loop is not just producing garbage).
  for (const k of ['incomplete', 'invalid', 'proxied', 'local', 'unknown']) assert.ok((counts[k] ?? 0) > 100, `${k}: ${JSON.stringify(counts)}`);
});
