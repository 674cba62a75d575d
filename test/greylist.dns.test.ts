// Greylisting's decisions that rest on DNS (issue 11, Must show 2), against real DNS: rbldnsd
// serves a blocklist and an allowlist, dnsmasq is mxguard's resolver and serves the reverse DNS.
//   - when: suspicious (the default): a clean client is not delayed; a client with DNSBL points is.
//   - a client a DNS allowlist vouches for (negative weight) is never greylisted, even with `always`.
//   - by_domain: two servers of one pool (forward-confirmed names under one domain, different
//     /24s) are one client: the second passes on the first one's retry.
//   - allow_clients host-name patterns match a forward-confirmed name only, never a bare PTR.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ConfigInput } from '../src/config/schema.ts';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { startDnsmasq, startRbldnsd, type DnsmasqPeer, type RbldnsdPeer } from './harness/dns.ts';
import { advanceClock, resetClock } from '../src/util/clock.ts';

const LIMIT = { timeout: 60_000 };
const LISTED = '127.5.0.66';
const VOUCHED = '127.5.1.1';
const CLEAN = '127.5.2.1';

let rbl: RbldnsdPeer;
let dm: DnsmasqPeer;

before(async () => {
  rbl = await startRbldnsd({
    ttl: 300,
    zones: {
      'bl.test': { type: 'ip4set', entries: [LISTED], txt: 'Listed: $' },
      'wl.test': { type: 'ip4set', entries: [VOUCHED], a: '127.0.10.2' },
      'dwl.test': { type: 'dnset', entries: ['big.example'], a: '127.0.10.2' },
    },
  });
  dm = await startDnsmasq({
    forward: { 'bl.test': rbl.port, 'wl.test': rbl.port, 'dwl.test': rbl.port },
    records: {
      a: {
        'mx1.pool.example.test': ['127.6.1.1'],
        'mx2.pool.example.test': ['127.6.2.1'],
        'mail.trusted.example.test': ['127.6.3.1'],
        'mx.other.example.test': ['127.6.5.1'],
        // A generic name of a dynamic pool: it spells out its address.
        'c-127-6-6-1.dyn.isp.example.test': ['127.6.6.1'],
        'c-127-6-7-1.dyn.isp.example.test': ['127.6.7.1'],
      },
      ptr: { '127.6.4.1': ['fake.trusted.example.test'] },
      txt: { 'pool.spf.test': ['v=spf1 ip4:127.10.0.0/16 -all'] },
    },
  });
});

after(async () => {
  resetClock();
  await dm?.stop();
  await rbl?.stop();
});

const TOKEN = 'greylist-dns-admin-token-0123456789';

function app(greylist: NonNullable<ConfigInput['greylist']>, more: Partial<ConfigInput> = {}): Promise<TestApp> {
  return startTestApp({
    ...more,
    dns: { servers: [dm.server], timeout: '3s' },
    relay: { forward_from_ip: ['192.0.2.0/24'] },
    dnsbl: { zones: [{ zone: 'bl.test' }, { zone: 'wl.test', weight: -5 }], rhsbl_sender: [{ zone: 'dwl.test', weight: -5 }], action: 'score', score: 5 },
    admin: { listen: '127.0.0.1:0', token: TOKEN },
    greylist,
  });
}

async function rcpt(a: TestApp, ip: string, from = 'someone@sender.example'): Promise<string> {
  const c = await RawClient.connect(a.port, '127.0.0.1', ip);
  try {
    await c.reply(10_000);
    c.send('EHLO client.example.org\r\n');
    await c.reply(10_000);
    c.send(`MAIL FROM:<${from}>\r\n`);
    await c.reply(10_000);
    c.send('RCPT TO:<bob@example.test>\r\n');
    const r = await c.reply(10_000);
    c.send('QUIT\r\n');
    return r;
  } finally {
    c.close();
  }
}

test('when: suspicious — a clean client is not delayed, a client with DNSBL points is; an allowlisted one never is', LIMIT, async () => {
  const a = await app({});
  try {
    assert.equal(await rcpt(a, CLEAN), '250 2.1.5 Ok', 'no points: not greylisted');
    assert.equal(await rcpt(a, LISTED), '451 4.7.1 Greylisted, please try again in 300 seconds');
    assert.equal(await rcpt(a, VOUCHED), '250 2.1.5 Ok');
  } finally {
    await a.stop();
  }
  const always = await app({ when: 'always' });
  try {
    assert.match(await rcpt(always, CLEAN), /^451 4\.7\.1 Greylisted/, 'always: the clean client too');
    assert.equal(await rcpt(always, VOUCHED), '250 2.1.5 Ok', 'a DNS allowlist vouches for it (its score is below zero)');
    // Found in review: a domain allowlist (rhsbl_sender) vouches for a name anyone can write in
    // MAIL FROM; it gave negative points, and so a forged sender skipped greylisting.
    assert.match(await rcpt(always, CLEAN, 'anyone@big.example'), /^451 4\.7\.1 Greylisted/, 'a forged allowlisted sender domain is no waiver');
  } finally {
    await always.stop();
  }
});

test('by_domain: two servers of one pool are one client; allow_clients names match a forward-confirmed name only', LIMIT, async () => {
  const a = await app({ when: 'always', by_domain: true, allow_clients: ['*.trusted.example.test'] });
  try {
    assert.match(await rcpt(a, '127.6.1.1'), /^451 .* in 300 seconds$/);
    advanceClock(301_000);
    assert.equal(await rcpt(a, '127.6.2.1'), '250 2.1.5 Ok', 'mx2 retries what mx1 began');
    assert.ok(a.logs().some((l) => typeof l.msg === 'string' && l.msg.includes('greylisting passed dns:pool.example.test|someone@sender.example|bob@example.test')));
    assert.equal(await rcpt(a, '127.6.3.1'), '250 2.1.5 Ok', 'mail.trusted.example.test is confirmed and allowed');
    assert.match(await rcpt(a, '127.6.4.1'), /^451 4\.7\.1 Greylisted/, 'a PTR claiming the allowed domain, not confirmed, is no waiver');
    // An administrator allows a network: its clients pass, whatever name they have (found in review:
    // with by_domain the look-up used the domain key and missed the allowed network).
    const allowed = await fetch(`http://127.0.0.1:${a.app.adminPort as number}/api/greylist/allow?net=127.6.5.0%2F24`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(allowed.status, 200);
    assert.equal(await rcpt(a, '127.6.5.1'), '250 2.1.5 Ok', 'mx.other.example.test, in an allowed network');
    // A generic pool name is not a domain of one sender's servers: each keeps its own network.
    assert.match(await rcpt(a, '127.6.6.1'), /^451/);
    advanceClock(301_000);
    assert.match(await rcpt(a, '127.6.7.1'), /^451 .* in 300 seconds$/, 'another host of the dynamic pool is a new client');
  } finally {
    resetClock();
    await a.stop();
  }
});

test('release from the history frees the record greylisting made, also when by_domain keyed it on the pool\'s domain', LIMIT, async () => {
  const a = await app({ when: 'always', by_domain: true });
  try {
    assert.match(await rcpt(a, '127.6.1.1', 'history@sender.example'), /^451 4\.7\.1 Greylisted/);
    const api = (p: string, method = 'GET') => fetch(`http://127.0.0.1:${a.app.adminPort as number}${p}`, { method, headers: { authorization: `Bearer ${TOKEN}` } });
    let items: Array<{ seq: number; refused: Array<{ rcpt: string; check: string; key?: string }> }> = [];
    const found = async () => {
      items = ((await (await api('/api/history?sender=history@')).json()) as { items: typeof items }).items;
      return items.length === 1;
    };
    for (let i = 0; i < 100 && !(await found()); i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(items.length, 1, 'the greylisted transaction is in the history');
    const item = items[0] as (typeof items)[number];
    assert.deepEqual(item.refused.map((r) => [r.check, r.key]), [['greylist', 'dns:pool.example.test|history@sender.example|bob@example.test']]);
    const released = await api(`/api/history/${item.seq}/release`, 'POST');
    assert.equal(released.status, 200, await released.clone().text());
    assert.deepEqual(await released.json(), { released: ['dns:pool.example.test|history@sender.example|bob@example.test'] });
    // No time passed: only the release lets the pool's other server through.
    assert.equal(await rcpt(a, '127.6.2.1', 'history@sender.example'), '250 2.1.5 Ok');
  } finally {
    await a.stop();
  }
});

test('spf_domain: a sender whose SPF passes is keyed by its domain, so its pool passes on the first retry from another network', LIMIT, async () => {
  const a = await app({ when: 'always', auto_allow: 0 }, { spf: {} });
  try {
    assert.match(await rcpt(a, '127.10.1.1', 'news@pool.spf.test'), /^451 .* in 300 seconds$/);
    advanceClock(301_000);
    assert.equal(await rcpt(a, '127.10.2.1', 'news@pool.spf.test'), '250 2.1.5 Ok', 'another /24 of the same SPF-passing domain');
    assert.ok(a.logs().some((l) => String(l.msg).includes('greylisting passed spf:pool.spf.test|news@pool.spf.test|bob@example.test')));
    // Without an SPF pass the network is the key: a sender in no SPF record, from two networks, is two clients.
    assert.match(await rcpt(a, '127.10.1.1', 'x@nospf.test'), /^451/);
    advanceClock(301_000);
    assert.match(await rcpt(a, '127.10.2.1', 'x@nospf.test'), /^451 .* in 300 seconds$/);
  } finally {
    resetClock();
    await a.stop();
  }
});
