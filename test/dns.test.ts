// The resolver against real DNS servers on loopback: dnsmasq for ordinary records (with zones
// that answer SERVFAIL or never answer) forwarding the blocklist zones to rbldnsd.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { DnsResolver, type DnsResult, type ListResult } from '../src/dns/resolver.ts';
import { freeDnsPort, startDnsmasq, startRbldnsd, startUdpStub, type DnsmasqPeer, type RbldnsdPeer, type UdpStub } from './harness/dns.ts';

/** Upper bound slack for "answers within timeoutMs" on a loaded machine. */
const SLACK_MS = 1500;

function isOk<T>(r: DnsResult<T>): r is Extract<DnsResult<T>, { kind: 'ok' }> {
  return r.kind === 'ok';
}

function listed(r: ListResult): Extract<ListResult, { kind: 'ok' }> {
  assert.equal(r.kind, 'ok', JSON.stringify(r));
  return r as Extract<ListResult, { kind: 'ok' }>;
}

async function timed<T>(p: Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await p;
  return { value, ms: performance.now() - t0 };
}

describe('DnsResolver against dnsmasq and rbldnsd', () => {
  let rbl: RbldnsdPeer;
  let dm: DnsmasqPeer;
  let blackhole: UdpStub;
  /** Through dnsmasq, as production would use a local resolver. */
  let r: DnsResolver;

  before(async () => {
    rbl = await startRbldnsd({
      zones: {
        'bl.test': [
          { type: 'ip4set', entries: ['192.0.2.99', '198.51.100.0/24 :127.0.0.4:Other list: $', '203.0.113.0/25'], txt: 'Listed in bl.test, see http://bl.test/lookup?ip=$', ttl: 120 },
          { type: 'ip6trie', entries: ['2001:db8::99'], txt: 'IPv6 listed: $', ttl: 120 },
        ],
        'dbl.test': { type: 'dnset', entries: ['spammer.test', '.evil.test'], a: '127.0.1.2', txt: 'Domain $ is listed' },
      },
    });
    dm = await startDnsmasq({
      records: {
        a: {
          'mail.example.test': ['192.0.2.25'],
          'mail2.example.test': ['192.0.2.26'],
          'liar.example.test': ['192.0.2.31'],
          'multi.example.test': ['192.0.2.33'],
          'alonly.test': ['192.0.2.50'],
          'round.example.test': ['192.0.2.61', '192.0.2.62'],
        },
        aaaa: { 'v6host.example.test': ['2001:db8::25'], 'aaaaonly.test': ['2001:db8::51'] },
        mx: {
          'example.test': [
            { exchange: 'mail.example.test', priority: 10 },
            { exchange: 'mail2.example.test', priority: 5 },
          ],
          'nullmx.test': [{ exchange: '.', priority: 0 }],
        },
        txt: {
          'example.test': ['v=spf1 ip4:192.0.2.0/24 mx -all'],
          'long.example.test': [['v=DKIM1; k=rsa; ', 'p=MIIBIjANBg']],
          'txtonly.test': ['hello'],
        },
        ptr: {
          '192.0.2.30': ['liar.example.test'],
          '192.0.2.33': ['nowhere.example.test', 'multi.example.test'],
          '192.0.2.34': ['ghost.example.test'],
          '192.0.2.35': ['host.slow.test'],
        },
        cname: { 'alias.example.test': 'mail.example.test' },
      },
      forward: { 'bl.test': rbl.port, 'dbl.test': rbl.port },
      servfail: ['sf.test', '77.2.0.192.in-addr.arpa', 'sfbl.test'],
      timeout: ['slow.test', 'slowbl.test', '88.2.0.192.in-addr.arpa'],
    });
    blackhole = await startUdpStub('blackhole');
    r = new DnsResolver({ servers: [dm.server], timeoutMs: 2000 });
  });

  after(async () => {
    await dm?.stop();
    await rbl?.stop();
    await blackhole?.stop();
  });

  test('A, AAAA, MX, TXT, PTR answers', async () => {
    const a = await r.a('Mail.Example.TEST.');
    assert.deepEqual(a, { kind: 'ok', records: ['192.0.2.25'], ttl: 300 });
    const round = await r.a('round.example.test');
    assert.ok(isOk(round));
    assert.deepEqual([...round.records].sort(), ['192.0.2.61', '192.0.2.62']);
    assert.deepEqual(await r.a('alias.example.test'), { kind: 'ok', records: ['192.0.2.25'], ttl: 300 }, 'CNAME followed');
    assert.deepEqual(await r.aaaa('v6host.example.test'), { kind: 'ok', records: ['2001:db8::25'], ttl: 300 });
    const mx = await r.mx('example.test');
    assert.equal(mx.kind, 'ok');
    assert.deepEqual(mx.kind === 'ok' && mx.records, [
      { exchange: 'mail2.example.test', priority: 5 },
      { exchange: 'mail.example.test', priority: 10 },
    ]);
    const txt = await r.txt('example.test');
    assert.deepEqual(isOk(txt) && txt.records, ['v=spf1 ip4:192.0.2.0/24 mx -all']);
    const long = await r.txt('long.example.test');
    assert.deepEqual(isOk(long) && long.records, ['v=DKIM1; k=rsa; p=MIIBIjANBg'], 'character-strings joined');
    const ptr = await r.ptr('192.0.2.25');
    assert.deepEqual(isOk(ptr) && ptr.records, ['mail.example.test']);
    const ptr6 = await r.ptr('2001:db8::25');
    assert.deepEqual(isOk(ptr6) && ptr6.records, ['v6host.example.test']);
    const mapped = await r.ptr('::ffff:192.0.2.25');
    assert.deepEqual(isOk(mapped) && mapped.records, ['mail.example.test'], 'IPv4-mapped client address asks in-addr.arpa');
  });

  test('NXDOMAIN (no such name) is told apart from NODATA (name exists, not this type)', async () => {
    assert.deepEqual(await r.a('nothere.example.test'), { kind: 'nxdomain', nodata: false });
    assert.deepEqual(await r.mx('nothere.example.test'), { kind: 'nxdomain', nodata: false });
    assert.deepEqual(await r.mx('mail.example.test'), { kind: 'nxdomain', nodata: true });
    assert.deepEqual(await r.aaaa('mail.example.test'), { kind: 'nxdomain', nodata: true });
    assert.deepEqual(await r.a('example.test'), { kind: 'nxdomain', nodata: true });
    assert.deepEqual(await r.ns('example.test'), { kind: 'nxdomain', nodata: true });
    assert.deepEqual(await r.ptr('192.0.2.98'), { kind: 'nxdomain', nodata: false });
  });

  test('null MX, and domainExists for MAIL FROM', async () => {
    assert.deepEqual(await r.mx('nullmx.test'), { kind: 'null-mx', ttl: 300 });
    assert.deepEqual(await r.domainExists('nullmx.test'), { kind: 'null-mx' });
    assert.deepEqual(await r.domainExists('example.test'), { kind: 'exists', via: 'mx' });
    assert.deepEqual(await r.domainExists('alonly.test'), { kind: 'exists', via: 'a' });
    assert.deepEqual(await r.domainExists('aaaaonly.test'), { kind: 'exists', via: 'aaaa' });
    assert.deepEqual(await r.domainExists('nothere.test'), { kind: 'nxdomain', nodata: false });
    assert.deepEqual(await r.domainExists('txtonly.test'), { kind: 'nxdomain', nodata: true }, 'exists, but no MX, A or AAAA');
  });

  test('SERVFAIL is an error, never nxdomain, and is not cached', async () => {
    const before = dm.stubPackets().servfail;
    for (const res of [await r.a('x.sf.test'), await r.mx('x.sf.test'), await r.txt('x.sf.test'), await r.ptr('192.0.2.77'), await r.domainExists('x.sf.test'), await r.dnsblQuery('192.0.2.1', 'sfbl.test')]) {
      assert.equal(res.kind, 'error', JSON.stringify(res));
      assert.ok(res.kind === 'error' && res.code === 'servfail', JSON.stringify(res));
    }
    const again = await r.a('x.sf.test');
    assert.ok(again.kind === 'error' && again.code === 'servfail');
    const asked = dm.queries().filter((q) => q.type === 'A' && q.name === 'x.sf.test').length;
    assert.ok(asked >= 2, `dnsmasq was asked A x.sf.test ${asked} times: the error was not cached`);
    // Every question above went upstream (with dnsmasq's and c-ares's retries: at least one each).
    assert.ok(dm.stubPackets().servfail - before >= 7, `SERVFAIL stub saw ${dm.stubPackets().servfail - before} packets`);
  });

  test('a server that never answers: error within timeoutMs', async (t) => {
    const quick = new DnsResolver({ servers: [dm.server], timeoutMs: 500 });
    for (const [what, run] of [
      ['A', () => quick.a('x.slow.test')],
      ['domainExists', () => quick.domainExists('x.slow.test')],
      ['dnsblQuery', () => quick.dnsblQuery('192.0.2.1', 'slowbl.test')],
      ['forwardConfirmed (PTR)', () => quick.forwardConfirmed('192.0.2.88')],
      ['forwardConfirmed (A of the PTR name)', () => quick.forwardConfirmed('192.0.2.35')],
    ] as const) {
      const { value, ms } = await timed<{ kind: string; code?: string }>(run());
      t.diagnostic(`${what} through dnsmasq to a blackhole: ${value.kind} ${value.code ?? ''} in ${ms.toFixed(0)} ms`);
      assert.equal(value.kind, 'error');
      assert.equal(value.code, 'timeout');
      assert.ok(ms >= 450, `gave up early: ${ms} ms`);
      assert.ok(ms <= 500 + SLACK_MS, `took ${ms} ms`);
    }
    // Straight at a server that swallows everything (no dnsmasq in between), in parallel.
    const direct = new DnsResolver({ servers: [`127.0.0.1:${blackhole.port}`], timeoutMs: 300 });
    const { value: all, ms } = await timed(Promise.all([direct.a('a.example'), direct.mx('b.example'), direct.dnsblQuery('192.0.2.99', 'bl.test'), direct.forwardConfirmed('192.0.2.25'), direct.domainExists('c.example')]));
    t.diagnostic(`5 lookups straight at the blackhole (timeoutMs 300): ${ms.toFixed(0)} ms`);
    for (const v of all) assert.ok(v.kind === 'error' && v.code === 'timeout', JSON.stringify(v));
    assert.ok(ms <= 300 + SLACK_MS, `took ${ms} ms`);
    assert.ok(blackhole.received() >= 5);
  });

  test('nobody listening on the server port: error "unreachable" at once', async () => {
    const closed = new DnsResolver({ servers: [`127.0.0.1:${await freeDnsPort()}`], timeoutMs: 2000 });
    const { value, ms } = await timed(closed.a('mail.example.test'));
    assert.ok(value.kind === 'error' && (value.code === 'unreachable' || value.code === 'timeout'), JSON.stringify(value));
    assert.ok(ms <= 2000 + SLACK_MS, `took ${ms} ms`);
  });

  test('forward-confirmed reverse DNS (tcpserver -p)', async () => {
    assert.deepEqual(await r.forwardConfirmed('192.0.2.25'), { kind: 'confirmed', name: 'mail.example.test' });
    assert.deepEqual(await r.forwardConfirmed('::ffff:192.0.2.25'), { kind: 'confirmed', name: 'mail.example.test' });
    assert.deepEqual(await r.forwardConfirmed('2001:db8:0::25'), { kind: 'confirmed', name: 'v6host.example.test' });
    assert.deepEqual(await r.forwardConfirmed('192.0.2.33'), { kind: 'confirmed', name: 'multi.example.test' }, 'the second PTR name confirms');
    assert.deepEqual(await r.forwardConfirmed('192.0.2.30'), { kind: 'unconfirmed', names: ['liar.example.test'] }, 'its A is another IP');
    assert.deepEqual(await r.forwardConfirmed('192.0.2.34'), { kind: 'unconfirmed', names: ['ghost.example.test'] }, 'its name does not exist');
    assert.deepEqual(await r.forwardConfirmed('192.0.2.98'), { kind: 'no-ptr' });
    const sf = await r.forwardConfirmed('192.0.2.77');
    assert.ok(sf.kind === 'error' && sf.code === 'servfail', JSON.stringify(sf));
  });

  test('DNSBL: a listed IP with its TXT reason ($ is the IP), an unlisted one, IPv6', async () => {
    const hit = listed(await r.dnsblQuery('192.0.2.99', 'bl.test'));
    assert.equal(hit.name, '99.2.0.192.bl.test');
    assert.deepEqual(hit.records, ['127.0.0.2']);
    assert.equal(hit.reason, 'Listed in bl.test, see http://bl.test/lookup?ip=192.0.2.99');
    assert.equal(hit.ttl, 120);
    const other = listed(await r.dnsblQuery('198.51.100.7', 'bl.test'));
    assert.deepEqual(other.records, ['127.0.0.4']);
    assert.equal(other.reason, 'Other list: 198.51.100.7');
    assert.deepEqual(await r.dnsblQuery('192.0.2.98', 'bl.test'), { kind: 'nxdomain', nodata: false });

    const v6 = listed(await r.dnsblQuery('2001:db8::99', 'bl.test'));
    assert.equal(v6.name, '9.9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test');
    assert.equal(v6.reason, 'IPv6 listed: 2001:db8::99');
    assert.deepEqual(await r.dnsblQuery('2001:db8::98', 'bl.test'), { kind: 'nxdomain', nodata: false });
    await rbl.sync();
    const names = rbl.queries().map((q) => q.name);
    assert.ok(names.includes(v6.name), `rbldnsd saw ${names.join(', ')}`);
    assert.ok(names.includes('8.9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test'));
  });

  test('RHSBL: listed domains, wildcard subdomains, an unlisted domain', async () => {
    const hit = listed(await r.rhsblQuery('Spammer.TEST.', 'dbl.test'));
    assert.equal(hit.name, 'spammer.test.dbl.test');
    assert.deepEqual(hit.records, ['127.0.1.2']);
    assert.equal(hit.reason, 'Domain spammer.test is listed');
    // In a dnset, `$` is the listed entry (the wildcard's base), not the name asked about.
    assert.equal(listed(await r.rhsblQuery('mail.evil.test', 'dbl.test')).reason, 'Domain evil.test is listed');
    assert.equal(listed(await r.rhsblQuery('evil.test', 'dbl.test')).reason, 'Domain evil.test is listed');
    assert.deepEqual(await r.rhsblQuery('clean.test', 'dbl.test'), { kind: 'nxdomain', nodata: false });
    assert.deepEqual(await r.rhsblQuery('sub.spammer.test', 'dbl.test'), { kind: 'nxdomain', nodata: false });
  });

  test('answers are cached for their TTL, negative ones for negativeTtlSec, straight at rbldnsd', async () => {
    let now = 1_000_000_000;
    const c = new DnsResolver({ servers: [rbl.server], timeoutMs: 2000, now: () => now, negativeTtlSec: 60 });
    const count = async (name: string, type: string): Promise<number> => {
      await rbl.sync();
      return rbl.queries().filter((q) => q.name === name && q.type === type).length;
    };
    const listedName = '99.2.0.192.bl.test';
    const unlistedName = '97.2.0.192.bl.test';
    const a0 = await count(listedName, 'A');
    const txt0 = await count(listedName, 'TXT');
    const nx0 = await count(unlistedName, 'A');

    assert.equal(listed(await c.dnsblQuery('192.0.2.99', 'bl.test')).ttl, 120);
    assert.deepEqual(await c.dnsblQuery('192.0.2.97', 'bl.test'), { kind: 'nxdomain', nodata: false });
    now += 20_000;
    const second = listed(await c.dnsblQuery('192.0.2.99', 'bl.test'));
    assert.equal(second.ttl, 100, 'the remaining TTL');
    assert.equal(second.reason, 'Listed in bl.test, see http://bl.test/lookup?ip=192.0.2.99');
    assert.equal((await c.dnsblQuery('192.0.2.97', 'bl.test')).kind, 'nxdomain');
    assert.equal(await count(listedName, 'A'), a0 + 1, 'the second lookup did not reach rbldnsd');
    assert.equal(await count(listedName, 'TXT'), txt0 + 1);
    assert.equal(await count(unlistedName, 'A'), nx0 + 1, 'NXDOMAIN cached too');

    now += 41_000; // 61 s in: the negative answer has expired, the positive one (120 s) has not
    await c.dnsblQuery('192.0.2.97', 'bl.test');
    await c.dnsblQuery('192.0.2.99', 'bl.test');
    assert.equal(await count(unlistedName, 'A'), nx0 + 2);
    assert.equal(await count(listedName, 'A'), a0 + 1);
    now += 60_000; // 121 s: expired
    assert.equal(listed(await c.dnsblQuery('192.0.2.99', 'bl.test')).ttl, 120);
    assert.equal(await count(listedName, 'A'), a0 + 2);
  });

  test('concurrent questions for one name share one query', async () => {
    const c = new DnsResolver({ servers: [rbl.server], timeoutMs: 2000 });
    await rbl.sync();
    const before = rbl.queries().length;
    const all = await Promise.all(Array.from({ length: 20 }, () => c.dnsblQuery('203.0.113.5', 'bl.test')));
    for (const res of all) assert.deepEqual(listed(res).records, ['127.0.0.2']);
    await rbl.sync();
    const seen = rbl.queries().slice(before);
    assert.deepEqual(
      seen.map((q) => `${q.type} ${q.name}`),
      ['A 5.113.0.203.bl.test', 'TXT 5.113.0.203.bl.test'],
    );
  });

  test('200 parallel DNSBL lookups complete', async (t) => {
    const c = new DnsResolver({ servers: [dm.server], timeoutMs: 3000 });
    const ips = Array.from({ length: 200 }, (_, i) => `203.0.113.${i}`); // .0-.127 listed
    const { value: all, ms } = await timed(Promise.all(ips.map((ip) => c.dnsblQuery(ip, 'bl.test'))));
    const kinds = all.map((x) => x.kind);
    t.diagnostic(`200 DNSBL lookups through dnsmasq to rbldnsd: ${ms.toFixed(0)} ms`);
    assert.deepEqual(
      kinds.map((k, i) => (i < 128 ? k === 'ok' : k === 'nxdomain')).filter((good) => !good).length,
      0,
      JSON.stringify(all.filter((x) => x.kind === 'error').slice(0, 3)),
    );
    assert.equal(listed(all[10] as ListResult).reason, 'Listed in bl.test, see http://bl.test/lookup?ip=203.0.113.10');
  });
});
