import { test } from 'node:test';
import assert from 'node:assert/strict';
import { addressLiteral, dropSelf, orderMx, tlsPolicyFor, type ResolvedHost } from './mx.ts';

test('addressLiteral: IPv4 and IPv6 literals, nothing else', () => {
  assert.equal(addressLiteral('[192.0.2.1]'), '192.0.2.1');
  assert.equal(addressLiteral('[ipv6:2001:db8::1]'), '2001:db8::1');
  assert.equal(addressLiteral('[2001:db8::1]'), undefined);
  assert.equal(addressLiteral('example.test'), undefined);
});

test('orderMx: by preference, equal preferences shuffled, never mixed across preferences', () => {
  const recs = [
    { exchange: 'c', priority: 20 },
    { exchange: 'a1', priority: 10 },
    { exchange: 'a2', priority: 10 },
    { exchange: 'a3', priority: 10 },
  ];
  const firsts = new Set<string>();
  for (let i = 0; i < 200; i++) {
    const o = orderMx(recs);
    assert.deepEqual(
      o.map((r) => r.priority),
      [10, 10, 10, 20],
    );
    assert.deepEqual(o.slice(0, 3).map((r) => r.exchange).sort(), ['a1', 'a2', 'a3']);
    firsts.add(o[0]?.exchange ?? '');
  }
  assert.equal(firsts.size, 3, 'each host of the best preference comes first sometimes');
  // A fixed random source gives a fixed order (and the input is not modified).
  assert.deepEqual(orderMx(recs, () => 0).map((r) => r.exchange), ['a2', 'a3', 'a1', 'c']);
  assert.equal(recs[0]?.exchange, 'c');
});

test('dropSelf: the self host and every host of equal or worse preference go', () => {
  const h = (host: string, priority: number): ResolvedHost => ({ host, priority, addrs: [] });
  const hosts = [h('a', 10), h('me', 20), h('b', 20), h('c', 30)];
  assert.deepEqual(
    dropSelf(hosts, (x) => x.host === 'me').hosts.map((x) => x.host),
    ['a'],
  );
  assert.deepEqual(dropSelf(hosts, (x) => x.host === 'me').looped, true);
  assert.deepEqual(dropSelf(hosts, () => false), { hosts, looped: false });
  assert.deepEqual(dropSelf([h('me', 10), h('b', 20)], (x) => x.host === 'me'), { hosts: [], looped: true });
});

test('tlsPolicyFor: the exact domain, else the longest *.parent; nothing for the rest', () => {
  const p = { 'bank.example': 'verify', '*.example': 'required', '*.eu.example': 'none' } as const;
  assert.equal(tlsPolicyFor('bank.example', p), 'verify');
  assert.equal(tlsPolicyFor('shop.example', p), 'required');
  assert.equal(tlsPolicyFor('x.eu.example', p), 'none', 'the longest wildcard');
  assert.equal(tlsPolicyFor('example', p), undefined, '*.example is for subdomains');
  assert.equal(tlsPolicyFor('other.test', p), undefined);
  assert.equal(tlsPolicyFor('bank.example', undefined), undefined);
});
