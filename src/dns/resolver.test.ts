// The pure parts of the resolver: reverse names, name normalisation, MX handling, the cache.
// The lookups themselves run against real servers in test/dns.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DnsResolver, TtlCache, expandIpv6, ipKey, isNullMx, normalizeName, ptrName, reverseIp, serverAddress, sortMx } from './resolver.ts';

const V6_DOC_1 = '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2';

test('reverseIp: IPv4 octets reversed, IPv6 nibbles reversed, mapped IPv4 as IPv4', () => {
  assert.deepEqual(reverseIp('192.0.2.99'), { family: 4, reversed: '99.2.0.192' });
  assert.deepEqual(reverseIp('::ffff:192.0.2.99'), { family: 4, reversed: '99.2.0.192' });
  assert.deepEqual(reverseIp('::FFFF:192.0.2.99'), { family: 4, reversed: '99.2.0.192' });
  assert.deepEqual(reverseIp('2001:db8::1'), { family: 6, reversed: V6_DOC_1 });
  assert.deepEqual(reverseIp('2001:DB8:0:0:0:0:0:1'), { family: 6, reversed: V6_DOC_1 });
  assert.equal(reverseIp('::1')?.reversed, `1${'.0'.repeat(31)}`);
  assert.equal(reverseIp('::')?.reversed, `0${'.0'.repeat(31)}`);
  for (const bad of ['', 'example.com', '192.0.2', '192.0.2.256', '2001:db8::1::2', 'fe80::1%eth0', '1.2.3.4/32']) {
    assert.equal(reverseIp(bad), undefined, bad);
  }
});

test('ptrName: in-addr.arpa and ip6.arpa', () => {
  assert.equal(ptrName('192.0.2.25'), '25.2.0.192.in-addr.arpa');
  assert.equal(ptrName('2001:db8::1'), `${V6_DOC_1}.ip6.arpa`);
  assert.equal(ptrName('nonsense'), undefined);
});

test('expandIpv6: every notation to 32 nibbles', () => {
  assert.equal(expandIpv6('2001:db8::1'), '20010db8000000000000000000000001');
  assert.equal(expandIpv6('2001:db8:1:2:3:4:5:6'), '20010db8000100020003000400050006');
  assert.equal(expandIpv6('fe80::'), 'fe800000000000000000000000000000');
  assert.equal(expandIpv6('64:ff9b::192.0.2.33'), '0064ff9b0000000000000000c0000221');
  assert.equal(expandIpv6('::ffff:1.2.3.4'), '00000000000000000000ffff01020304');
  assert.equal(expandIpv6('1.2.3.4'), undefined);
  // Round trip against a random sample: expanding the compressed form gives back the nibbles.
  for (let i = 0; i < 200; i++) {
    const groups = Array.from({ length: 8 }, () => (Math.random() < 0.4 ? 0 : Math.floor(Math.random() * 0x10000)));
    const full = groups.map((g) => g.toString(16).padStart(4, '0')).join('');
    const compressed = new URL(`http://[${groups.map((g) => g.toString(16)).join(':')}]/`).hostname.slice(1, -1);
    assert.equal(expandIpv6(compressed), full, compressed);
  }
});

test('ipKey: equal addresses compare equal whatever their notation', () => {
  assert.equal(ipKey('2001:db8::25'), ipKey('2001:0DB8:0:0::0:25'));
  assert.equal(ipKey('::ffff:192.0.2.1'), '192.0.2.1');
  assert.notEqual(ipKey('192.0.2.1'), ipKey('192.0.2.10'));
  assert.equal(ipKey('x'), undefined);
});

test('normalizeName: lower case, no trailing dot, IDN to A-labels, junk refused', () => {
  assert.equal(normalizeName('Mail.Example.TEST.'), 'mail.example.test');
  assert.equal(normalizeName('_dmarc.example.com'), '_dmarc.example.com');
  assert.equal(normalizeName('bücher.example'), 'xn--bcher-kva.example');
  assert.equal(normalizeName('99.2.0.192.zen.example'), '99.2.0.192.zen.example');
  for (const bad of ['', '.', 'a..b', 'a b.test', 'a\r\nb.test', '-a.test', 'a-.test', `${'a'.repeat(64)}.test`, `${'a.'.repeat(127)}aa`, '[192.0.2.1]', 'a/b.test']) {
    assert.equal(normalizeName(bad), undefined, JSON.stringify(bad));
  }
  assert.equal(normalizeName(`${'a'.repeat(63)}.test`), `${'a'.repeat(63)}.test`);
});

test('sortMx: by priority, names normalised, ties keep their order', () => {
  const sorted = sortMx([
    { exchange: 'MX2.example.test.', priority: 20 },
    { exchange: 'b.example.test', priority: 10 },
    { exchange: 'a.example.test', priority: 10 },
    { exchange: 'backup.example.test', priority: 30 },
  ]);
  assert.deepEqual(
    sorted.map((r) => `${r.priority} ${r.exchange}`),
    ['10 b.example.test', '10 a.example.test', '20 mx2.example.test', '30 backup.example.test'],
  );
});

test('isNullMx: only the single record pointing to the root (RFC 7505)', () => {
  assert.equal(isNullMx(sortMx([{ exchange: '', priority: 0 }])), true);
  assert.equal(isNullMx(sortMx([{ exchange: '.', priority: 0 }])), true);
  assert.equal(isNullMx(sortMx([{ exchange: '', priority: 10 }])), true, 'any preference, if it is the only record');
  assert.equal(isNullMx(sortMx([{ exchange: '', priority: 0 }, { exchange: 'mx.example.test', priority: 10 }])), false);
  assert.equal(isNullMx(sortMx([{ exchange: 'mx.example.test', priority: 0 }])), false);
  assert.equal(isNullMx([]), false);
});

test('serverAddress: host:port forms node:dns accepts; host names refused', () => {
  assert.equal(serverAddress('127.0.0.1:5354'), '127.0.0.1:5354');
  assert.equal(serverAddress('[::1]:5354'), '[::1]:5354');
  assert.equal(serverAddress('192.0.2.53'), '192.0.2.53');
  assert.equal(serverAddress('2001:db8::53'), '2001:db8::53');
  for (const bad of ['localhost:53', 'dns.example:53', '127.0.0.1:0', '127.0.0.1:70000', '::1:53x']) {
    assert.throws(() => serverAddress(bad), /dns\.servers/, bad);
  }
});

test('TtlCache: entries expire with the (fake) clock', () => {
  let now = 1_000_000;
  const c = new TtlCache<string>(10, () => now);
  c.set('a', 'A', 60_000);
  c.set('zero', 'Z', 0);
  assert.equal(c.get('zero'), undefined, 'a TTL of 0 is not cached');
  assert.deepEqual(c.get('a'), { value: 'A', remainingMs: 60_000 });
  now += 59_999;
  assert.deepEqual(c.get('a'), { value: 'A', remainingMs: 1 });
  now += 1;
  assert.equal(c.get('a'), undefined);
  assert.equal(c.size, 0, 'an expired entry is dropped when seen');
});

test('TtlCache: the least recently used entry goes first when full', () => {
  const c = new TtlCache<number>(3, () => 0);
  c.set('a', 1, 1000);
  c.set('b', 2, 1000);
  c.set('c', 3, 1000);
  assert.equal(c.get('a')?.value, 1); // a is now the most recently used
  c.set('d', 4, 1000); // evicts b
  assert.equal(c.size, 3);
  assert.equal(c.get('b'), undefined);
  assert.deepEqual(['a', 'c', 'd'].map((k) => c.get(k)?.value), [1, 3, 4]);
  c.set('c', 30, 1000); // replacing does not grow it
  assert.equal(c.size, 3);
  assert.equal(c.get('c')?.value, 30);
});

test('DnsResolver: bad input is an error result, never an exception, and asks no server', async () => {
  // A server nobody listens on: any question that reached the wire would time out, not say "invalid".
  const r = new DnsResolver({ servers: ['127.0.0.1:9'], timeoutMs: 300 });
  for (const res of [await r.ptr('not-an-ip'), await r.dnsblQuery('300.1.1.1', 'bl.test'), await r.rhsblQuery('bad domain', 'dbl.test'), await r.a('a..b'), await r.forwardConfirmed('x'), await r.domainExists('')]) {
    assert.equal(res.kind, 'error');
    assert.ok(res.kind === 'error' && res.code === 'invalid', JSON.stringify(res));
  }
  assert.throws(() => new DnsResolver({ servers: ['localhost:53'], timeoutMs: 300 }), /dns\.servers/);
});
