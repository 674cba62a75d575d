// MTA-STS (RFC 8461) without the network: the TXT record, the policy body, MX pattern matching,
// and the cache rules of RFC 8461 5.1 (a fake resolver and a fake policy fetch).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import type { DnsResult } from '../dns/resolver.ts';
import { jsonToText } from '../util/log-text.ts';
import { MAX_AGE_CAP, MtaSts, mxMatches, parsePolicy, parseStsRecord, type StsLookup } from './mta-sts.ts';

test('parseStsRecord: the id of exactly one v=STSv1 record', () => {
  assert.equal(parseStsRecord(['v=STSv1; id=20160831085700Z;']), '20160831085700Z');
  assert.equal(parseStsRecord(['v=STSv1;id=abc']), 'abc');
  assert.equal(parseStsRecord(['v=spf1 -all', 'v=STSv1; id=1; ext=x;']), '1', 'other TXT records and unknown fields are ignored');
  assert.equal(parseStsRecord(['v=STSv1; id=1;', 'v=STSv1; id=2;']), undefined, 'two STSv1 records: no policy');
  assert.equal(parseStsRecord(['v=STSv1;']), undefined, 'no id');
  assert.equal(parseStsRecord(['v=STSv1; id=not-alnum;']), undefined);
  assert.equal(parseStsRecord(['v=STSv1; id=' + 'a'.repeat(33)]), undefined, 'id at most 32 characters');
  assert.equal(parseStsRecord(['v=STSv10; id=1']), undefined);
  assert.equal(parseStsRecord([]), undefined);
});

test('parsePolicy: RFC 8461 3.2 (CRLF or LF, unknown keys ignored, several mx, max_age capped)', () => {
  const p = parsePolicy('version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET\r\nmax_age: 604800\r\nextra: x\r\n');
  assert.deepEqual(p, { ok: true, policy: { mode: 'enforce', mx: ['mail.example.com', '*.example.net'], maxAge: 604800 } });
  assert.deepEqual(parsePolicy('version:STSv1\nmode:testing\nmx:mx.example\nmax_age:9999999999'), {
    ok: true,
    policy: { mode: 'testing', mx: ['mx.example'], maxAge: MAX_AGE_CAP },
  });
  assert.deepEqual(parsePolicy('version: STSv1\nmode: none\nmax_age: 86400\n'), { ok: true, policy: { mode: 'none', mx: [], maxAge: 86400 } }, 'mode none needs no mx');
  assert.deepEqual(parsePolicy('version: STSv1\nmode: enforce\nmode: none\nmx: a.example\nmax_age: 1\n'), { ok: true, policy: { mode: 'enforce', mx: ['a.example'], maxAge: 1 } }, 'the first of a repeated key counts');
  const bad = (text: string): string => {
    const r = parsePolicy(text);
    assert.equal(r.ok, false, text);
    return r.ok ? '' : r.error;
  };
  assert.match(bad('version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1'), /version/);
  assert.match(bad('mode: enforce\nmx: a.example\nmax_age: 1'), /version/);
  assert.match(bad('version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1'), /mode/, 'values are case-sensitive');
  assert.match(bad('version: STSv1\nmode: enforce\nmax_age: 1'), /without mx/);
  assert.match(bad('version: STSv1\nmode: enforce\nmx: a.example'), /max_age/);
  assert.match(bad('version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1'), /max_age/);
  assert.match(bad('version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901'), /max_age/, 'at most 10 digits');
  assert.match(bad('version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1'), /mx pattern/);
  assert.match(bad('version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1'), /mx pattern/);
  assert.match(bad('<html>not a policy</html>'), /bad policy line/);
});

test('mxMatches: exact names, "*." for exactly one label, case and trailing dot ignored', () => {
  const pats = ['mail.example.com', '*.example.net'];
  assert.equal(mxMatches('mail.example.com', pats), true);
  assert.equal(mxMatches('MAIL.Example.COM.', pats), true);
  assert.equal(mxMatches('mx1.example.net', pats), true);
  assert.equal(mxMatches('example.net', pats), false, 'the wildcard needs a label');
  assert.equal(mxMatches('a.b.example.net', pats), false, 'one label only');
  assert.equal(mxMatches('other.example.com', pats), false);
  assert.equal(mxMatches('xexample.net', pats), false);
  assert.equal(mxMatches('mail.example.com', []), false);
});

/** A resolver whose TXT answer for _mta-sts.<domain> the test sets, and a fetch that counts. */
function fixture(start: { txt: DnsResult<string>; body: string | Error }) {
  const state = { ...start, now: 1_000_000, fetches: 0, txtLookups: 0 };
  const none = async (): Promise<DnsResult<string>> => ({ kind: 'nxdomain', nodata: false });
  const sts = new MtaSts({
    dns: {
      txt: async (name: string) => {
        state.txtLookups++;
        assert.equal(name, '_mta-sts.example.com');
        return state.txt;
      },
      a: none,
      aaaa: none,
    },
    fetchPolicy: async (domain: string) => {
      state.fetches++;
      assert.equal(domain, 'example.com');
      if (state.body instanceof Error) throw state.body;
      return state.body;
    },
    now: () => state.now,
  });
  return { state, sts };
}

const txt = (...records: string[]): DnsResult<string> => ({ kind: 'ok', records, ttl: 300 });
const policy = (mode: string, mx: string, age = 3600): string => `version: STSv1\nmode: ${mode}\nmx: ${mx}\nmax_age: ${age}\n`;
const brief = (l: StsLookup): string => (l.kind === 'none' ? `none: ${l.reason}` : `${l.policy.mode} ${l.policy.mx.join(',')} id=${l.id}${l.cached ? ' cached' : ''}`);

test('MtaSts: fetched once per id; a new id fetches again; the cache ends at max_age', async () => {
  const { state, sts } = fixture({ txt: txt('v=STSv1; id=1'), body: policy('enforce', 'mx.example.com') });
  assert.equal(brief(await sts.lookup('example.com')), 'enforce mx.example.com id=1');
  assert.equal(brief(await sts.lookup('example.com')), 'enforce mx.example.com id=1 cached');
  assert.equal(state.fetches, 1);

  state.txt = txt('v=STSv1; id=2');
  state.body = policy('testing', '*.example.com');
  assert.equal(brief(await sts.lookup('example.com')), 'testing *.example.com id=2');
  assert.equal(state.fetches, 2);

  state.now += 3600_000; // max_age passed: fetched again although the id is the same
  assert.equal(brief(await sts.lookup('example.com')), 'testing *.example.com id=2');
  assert.equal(state.fetches, 3);
});

test('MtaSts: concurrent lookups of a domain share one fetch', async () => {
  const { state, sts } = fixture({ txt: txt('v=STSv1; id=1'), body: policy('enforce', 'mx.example.com') });
  const all = await Promise.all([sts.lookup('example.com'), sts.lookup('example.com'), sts.lookup('example.com')]);
  assert.deepEqual(all.map(brief), Array(3).fill('enforce mx.example.com id=1'));
  assert.equal(state.fetches, 1);
  assert.equal(state.txtLookups, 1);
});

test('MtaSts: without a cached policy, no record, a DNS error or a failed fetch mean no policy', async () => {
  const { state, sts } = fixture({ txt: { kind: 'nxdomain', nodata: false }, body: policy('enforce', 'mx.example.com') });
  assert.equal(brief(await sts.lookup('example.com')), 'none: no MTA-STS record');
  state.txt = { kind: 'error', code: 'servfail', reason: 'TXT _mta-sts.example.com: SERVFAIL' };
  assert.equal(brief(await sts.lookup('example.com')), 'none: TXT lookup failed: TXT _mta-sts.example.com: SERVFAIL');
  state.txt = txt('v=STSv1; id=1', 'v=STSv1; id=2');
  assert.equal(brief(await sts.lookup('example.com')), 'none: no MTA-STS record', 'two STSv1 records');
  assert.equal(state.fetches, 0);
  state.txt = txt('v=STSv1; id=1');
  state.body = new Error('connect ECONNREFUSED');
  assert.equal(brief(await sts.lookup('example.com')), 'none: policy fetch failed: connect ECONNREFUSED');
  state.body = 'version: STSv1\nmode: bogus\n';
  assert.match(brief(await sts.lookup('example.com')), /^none: policy fetch failed: bad mode/);
});

test('MtaSts: an unexpired cached policy outlives a failed refetch, a DNS error and a vanished record (RFC 8461 5.1)', async () => {
  const { state, sts } = fixture({ txt: txt('v=STSv1; id=1'), body: policy('enforce', 'mx.example.com') });
  assert.equal(brief(await sts.lookup('example.com')), 'enforce mx.example.com id=1');
  state.txt = txt('v=STSv1; id=2');
  state.body = new Error('HTTP 500');
  assert.equal(brief(await sts.lookup('example.com')), 'enforce mx.example.com id=1 cached', 'a new id whose policy cannot be fetched');
  state.txt = { kind: 'error', code: 'timeout', reason: 'TXT: timeout' };
  assert.equal(brief(await sts.lookup('example.com')), 'enforce mx.example.com id=1 cached');
  state.txt = { kind: 'nxdomain', nodata: false };
  assert.equal(brief(await sts.lookup('example.com')), 'enforce mx.example.com id=1 cached');
  state.now += 3600_000;
  assert.equal(brief(await sts.lookup('example.com')), 'none: no MTA-STS record', 'expired: gone');
});

test('MtaSts: the remote policy id is logged as sts_id, never as id (a queue-ID-shaped id must not lead a text line)', async () => {
  const forged = '0MIQ1ABC01ZZZZ'; // a valid STS id (1-32 alphanumerics) shaped like one of our queue IDs
  const lines: string[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(s) });
  const state = { txt: txt(`v=STSv1; id=${forged}`), body: policy('enforce', 'mx.example.com') as string | Error, now: 0 };
  const sts = new MtaSts({
    dns: { txt: async () => state.txt, a: async () => ({ kind: 'nxdomain', nodata: false }), aaaa: async () => ({ kind: 'nxdomain', nodata: false }) },
    fetchPolicy: async () => {
      if (state.body instanceof Error) throw state.body;
      return state.body;
    },
    now: () => state.now,
    log,
  });
  await sts.lookup('example.com'); // policy fetched
  state.txt = txt('v=STSv1; id=1ABCDEFGHIJKLM');
  state.body = new Error('HTTP 500');
  await sts.lookup('example.com'); // policy fetch failed, then the cached policy
  assert.equal(lines.length, 3, lines.join(''));
  for (const line of lines) {
    const o = JSON.parse(line) as Record<string, unknown>;
    assert.equal(o.id, undefined, line);
    assert.match(String(o.sts_id), /^(0MIQ1ABC01ZZZZ|1ABCDEFGHIJKLM)$/);
    const text = jsonToText(line, 'mx');
    assert.doesNotMatch(text, /mxguard\[\d+\]: [0-9A-Z]{14}:/, text);
    assert.match(text, /sts_id=(0MIQ1ABC01ZZZZ|1ABCDEFGHIJKLM)/);
  }
});
