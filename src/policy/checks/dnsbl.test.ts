// The pure parts of the DNSBL checks: which answers count, postscreen's weighted sum, the reply
// text, the X-DNSBL header, the log line. The checks against real DNS: test/dnsbl.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { answerCounts, answerMatches, classify, cleanReason, decide, describeOutcomes, dnsblCheck, dnsblHeader, isRefusalCode, listVerdict, refusalText, rhsblHeloCheck, rhsblName, rhsblSenderCheck, type ListCheckSpec, type ListHit, type ZoneOutcome, type ZoneSpec } from './dnsbl.ts';
import { configSchema } from '../../config/schema.ts';
import type { DnsResolver, ListResult } from '../../dns/resolver.ts';
import type { SessionInfo } from '../context.ts';

const defaults = configSchema.parse({}).dnsbl;

function zone(name: string, over: Partial<ZoneSpec> = {}): ZoneSpec {
  return { zone: name, weight: 1, answers: [], reply: '5xx', ...over };
}

function hit(name: string, over: Partial<ZoneSpec> = {}, reason?: string, answers = ['127.0.0.2']): ListHit {
  return { kind: 'listed', spec: zone(name, over), answers, reason };
}

function ok(records: string[], reason?: string): ListResult {
  return { kind: 'ok', name: 'x', records, ttl: 60, reason };
}

test('answerCounts: only 127.0.0.0/8, never 127.255.255.x, and what the patterns take', () => {
  assert.equal(answerCounts('127.0.0.2', []), true);
  assert.equal(answerCounts('127.0.1.9', []), true, 'any 127/8 answer without patterns');
  assert.equal(answerCounts('192.0.2.1', []), false, 'outside 127/8 (an NXDOMAIN-rewriting resolver)');
  assert.equal(answerCounts('127.255.255.254', []), false, 'Spamhaus: query via a public resolver');
  assert.equal(answerCounts('127.255.255.252', ['127.255.255.252']), false, 'refusal codes never count');
  assert.equal(answerCounts('not-an-ip', []), false);
  assert.equal(answerCounts('::1', []), false);
  assert.equal(answerCounts('127.0.0.2', ['127.0.0.2']), true);
  assert.equal(answerCounts('127.0.0.3', ['127.0.0.2']), false);
  for (const a of ['127.0.0.4', '127.0.0.5', '127.0.0.7']) assert.equal(answerCounts(a, ['127.0.0.2', '127.0.0.4-7']), true, a);
  for (const a of ['127.0.0.3', '127.0.0.8', '127.0.1.4']) assert.equal(answerCounts(a, ['127.0.0.2', '127.0.0.4-7']), false, a);
});

test('answerMatches: single addresses and last-octet ranges (reversed ranges too)', () => {
  assert.equal(answerMatches('127.0.0.10', '127.0.0.10-11'), true);
  assert.equal(answerMatches('127.0.0.11', '127.0.0.11-10'), true);
  assert.equal(answerMatches('127.0.0.12', '127.0.0.10-11'), false);
  assert.equal(answerMatches('127.0.0.2', '127.0.0.2 '), true);
  assert.equal(answerMatches('127.0.0.2', 'garbage'), false);
  assert.equal(isRefusalCode('127.255.255.255'), true);
  assert.equal(isRefusalCode('127.0.0.255'), false);
});

test('classify: listed, clean (NXDOMAIN or answers that do not count), error', () => {
  const z = zone('bl.test', { answers: ['127.0.0.2'] });
  assert.deepEqual(classify(z, ok(['127.0.0.3', '127.0.0.2'], 'why')), { kind: 'listed', spec: z, answers: ['127.0.0.2'], reason: 'why' });
  assert.deepEqual(classify(z, ok(['127.0.0.3'])), { kind: 'clean', spec: z, ignored: ['127.0.0.3'] });
  assert.deepEqual(classify(z, ok(['127.255.255.254'])), { kind: 'clean', spec: z, ignored: ['127.255.255.254'], refusedCode: '127.255.255.254' });
  assert.deepEqual(classify(z, { kind: 'nxdomain', nodata: false }), { kind: 'clean', spec: z, ignored: [] });
  assert.deepEqual(classify(z, { kind: 'error', code: 'timeout', reason: 'A x: no answer' }), { kind: 'error', spec: z, code: 'timeout', reason: 'A x: no answer' });
});

test('decide: weights add up to the threshold; allowlists pull the sum down', () => {
  assert.deepEqual(decide([], 1), { sum: 0, listed: false, deciding: [], temporary: false });
  assert.equal(decide([hit('a')], 1).listed, true);
  assert.equal(decide([hit('a')], 2).listed, false, 'one list of weight 1 is not enough for threshold 2');
  const two = decide([hit('a'), hit('b')], 2);
  assert.equal(two.listed, true);
  assert.equal(two.sum, 2);
  const allowed = decide([hit('a', { weight: 3 }), hit('wl', { weight: -5 })], 1);
  assert.equal(allowed.sum, -2);
  assert.equal(allowed.listed, false, 'the allowlist wins');
  assert.equal(decide([hit('wl', { weight: -5 })], -10).listed, false, 'no blocklist, no refusal, whatever the threshold');
  assert.equal(decide([], 0).listed, false);
  const zero = decide([hit('z', { weight: 0 })], 0);
  assert.equal(zero.listed, false, 'a weight-0 zone is only informative');
});

test('decide: the heaviest listing zone comes first; 4xx only when every deciding zone says so', () => {
  const d = decide([hit('light', { weight: 1 }), hit('heavy', { weight: 3 }), hit('also3', { weight: 3 }), hit('wl', { weight: -1 })], 1);
  assert.deepEqual(
    d.deciding.map((h) => h.spec.zone),
    ['heavy', 'also3', 'light'],
  );
  assert.equal(d.temporary, false);
  assert.equal(decide([hit('a', { reply: '4xx' }), hit('b', { reply: '4xx' }), hit('wl', { weight: -1 })], 1).temporary, true, 'an allowlist does not decide');
  assert.equal(decide([hit('a', { reply: '4xx' }), hit('b')], 1).temporary, false);
});

test('reply text like Postfix and rblsmtpd, with a clean TXT', () => {
  assert.equal(refusalText('client [192.0.2.1]', hit('bl.test', {}, 'Listed, see http://bl.test/?ip=192.0.2.1')), 'Service unavailable; client [192.0.2.1] blocked using bl.test; Listed, see http://bl.test/?ip=192.0.2.1');
  assert.equal(refusalText('client [192.0.2.1]', hit('bl.test')), 'Service unavailable; client [192.0.2.1] blocked using bl.test');
  assert.equal(cleanReason('evil\r\n250 ok\x00 caf\u00e9'), 'evil 250 ok caf?');
  assert.equal(cleanReason('x'.repeat(500)).length, 200);
  assert.equal(refusalText('client [192.0.2.1]', hit('bl.test', {}, '  \r\n ')), 'Service unavailable; client [192.0.2.1] blocked using bl.test', 'an empty reason is left out');
});

test('X-DNSBL names every list with its reason, once each, folded when long', () => {
  assert.equal(dnsblHeader([hit('bl.test', {}, 'Listed'), hit('other.test')]), 'X-DNSBL: bl.test (Listed), other.test\r\n');
  assert.equal(dnsblHeader([hit('bl.test'), hit('bl.test', { answers: ['127.0.0.3'] })]), 'X-DNSBL: bl.test\r\n');
  const long = dnsblHeader([hit('one.test', {}, 'a'.repeat(60)), hit('two.test', {}, 'b'.repeat(60)), hit('three.test')]);
  const lines = long.split('\r\n');
  assert.equal(lines.at(-1), '', 'ends with CRLF');
  assert.ok(lines.slice(1, -1).every((l) => l.startsWith('\t')), JSON.stringify(long));
  assert.ok(lines.length >= 4, 'folded');
  assert.ok(!/[\r\n](?![\n\t])/.test(long.slice(0, -2)), 'no bare line breaks');
});

test('listVerdict: continue (logged when a zone answered or failed), refusal, tag', () => {
  const settings = { ...defaults, threshold: 2 };
  const c: ListCheckSpec = { check: 'dnsbl', setting: 'dnsbl.zones', zones: [], settings };
  const a = zone('a.test', { weight: 1 });
  const b = zone('b.test', { weight: 1, reply: '4xx' });
  const wl = zone('wl.test', { weight: -5 });
  const slow = zone('slow.test', { weight: 5 });
  const quiet: ZoneOutcome[] = [{ kind: 'clean', spec: a, ignored: [] }];
  assert.deepEqual(listVerdict(c, 'client [192.0.2.1]', quiet), { kind: 'continue' }, 'nothing to say: no log line');

  const timedOut: ZoneOutcome[] = [{ kind: 'error', spec: slow, code: 'timeout', reason: 'A x: no answer within 800 ms' }, { kind: 'listed', spec: a, answers: ['127.0.0.2'], reason: 'r' }];
  const v1 = listVerdict(c, 'client [192.0.2.1]', timedOut);
  assert.equal(v1.kind, 'continue', 'a list that times out never counts');
  assert.equal(v1.kind === 'continue' && v1.log, 'dnsbl: client [192.0.2.1]: slow.test: timeout, not counted, a.test=127.0.0.2 (+1); sum 1, threshold 2');

  const both: ZoneOutcome[] = [
    { kind: 'listed', spec: a, answers: ['127.0.0.2'], reason: 'A says no' },
    { kind: 'listed', spec: b, answers: ['127.0.0.4'], reason: undefined },
  ];
  const vouched: ZoneOutcome[] = [
    { kind: 'listed', spec: a, answers: ['127.0.0.2'], reason: 'r' },
    { kind: 'listed', spec: wl, answers: ['127.0.10.2'], reason: undefined },
  ];
  assert.deepEqual(listVerdict(c, 'client [192.0.2.1]', vouched), {
    kind: 'tag',
    check: 'dnsbl',
    score: -5,
    tests: [{ name: 'dnsbl_allowlist', score: -5 }],
    log: 'dnsbl: client [192.0.2.1]: a.test=127.0.0.2 (+1), wl.test=127.0.10.2 (-5); sum -4, threshold 2; allowlisted, scored -5',
  }, 'an allowlist that answered counts its weight as points');

  const v2 = listVerdict(c, 'client [192.0.2.1]', both);
  assert.equal(v2.kind, 'reject');
  assert.ok(v2.kind === 'reject');
  assert.equal(`${v2.code} ${v2.enhanced} ${v2.text}`, '554 5.7.1 Service unavailable; client [192.0.2.1] blocked using a.test; A says no');
  assert.equal(v2.setting, 'dnsbl.zones');
  assert.equal(v2.log, 'dnsbl: client [192.0.2.1]: a.test=127.0.0.2 (+1), b.test=127.0.0.4 (+1); sum 2, threshold 2');

  const v3 = listVerdict({ ...c, settings: { ...settings, action: 'tempfail' } }, 'client [192.0.2.1]', both);
  assert.ok(v3.kind === 'tempfail');
  assert.equal(`${v3.code} ${v3.enhanced}`, '450 4.7.1');

  const allow = listVerdict(c, 'client [192.0.2.1]', [...both, { kind: 'listed', spec: wl, answers: ['127.0.10.2'], reason: undefined }]);
  assert.ok(allow.kind === 'tag', 'not refused: the allowlist wins, with its points');
  assert.match(allow.log ?? '', /wl\.test=127\.0\.10\.2 \(-5\); sum -3, threshold 2; allowlisted, scored -5$/);

  const refused = listVerdict(c, 'client [192.0.2.1]', [{ kind: 'clean', spec: a, ignored: ['127.255.255.254'], refusedCode: '127.255.255.254' }]);
  assert.ok(refused.kind === 'continue');
  assert.match(refused.log ?? '', /a\.test=127\.255\.255\.254 \(query refused by the list, not counted\)/);

  const tag = listVerdict({ ...c, settings: { ...settings, action: 'score', score: 7 } }, 'client [192.0.2.1]', both);
  assert.deepEqual(tag, { kind: 'tag', check: 'dnsbl', score: 7, headers: ['X-DNSBL: a.test (A says no), b.test\r\n'], log: 'dnsbl: client [192.0.2.1]: a.test=127.0.0.2 (+1), b.test=127.0.0.4 (+1); sum 2, threshold 2; scored 7' });
});

test('describeOutcomes: zones with answers that do not count are named; silent zones are not', () => {
  const z = zone('only2.test', { answers: ['127.0.0.2'] });
  const line = describeOutcomes('client [192.0.2.1]', [{ kind: 'clean', spec: z, ignored: ['127.0.0.3'] }, { kind: 'clean', spec: zone('nx.test'), ignored: [] }], decide([], 1), 1);
  assert.equal(line, 'client [192.0.2.1]: only2.test=127.0.0.3 (not counted); sum 0, threshold 1');
});

test('rhsblName: host names only, no address literals or bare IPs', () => {
  assert.equal(rhsblName('Mail.Spam.TEST.'), 'mail.spam.test');
  assert.equal(rhsblName('[192.0.2.1]'), undefined);
  assert.equal(rhsblName('[IPv6:2001:db8::1]'), undefined);
  assert.equal(rhsblName('192.0.2.1'), undefined);
  assert.equal(rhsblName('bad name'), undefined);
  assert.equal(rhsblName(''), undefined);
});

// --- the checks with a scripted resolver (the real one: test/dnsbl.test.ts) -----------------

function fakeDns(answers: Record<string, ListResult | Error>, asked: string[] = []): DnsResolver {
  const answer = (name: string): Promise<ListResult> => {
    asked.push(name);
    const a = answers[name] ?? { kind: 'nxdomain', nodata: false };
    return a instanceof Error ? Promise.reject(a) : Promise.resolve(a);
  };
  return {
    dnsblQuery: (ip: string, zone: string) => answer(`${ip.split('.').reverse().join('.')}.${zone}`),
    rhsblQuery: (domain: string, zone: string) => answer(`${domain}.${zone}`),
  } as unknown as DnsResolver;
}

const session: SessionInfo = { sid: 's', remoteIp: '192.0.2.1', remotePort: 1, localIp: '127.0.0.1', localPort: 25, tls: false, esmtp: true, earlyTalker: false, rcptCount: 0 };

test('dnsblCheck asks every zone; a resolver that throws counts as not listed', async () => {
  const asked: string[] = [];
  const dns = fakeDns({ '1.2.0.192.a.test': ok(['127.0.0.2'], 'listed in a'), '1.2.0.192.broken.test': new Error('boom') }, asked);
  const check = dnsblCheck({ ...defaults, zones: [zone('a.test'), zone('broken.test', { weight: 5 }), zone('c.test')] }, dns);
  assert.equal(check.phase, 'connect');
  const v = await check.run({ session });
  assert.deepEqual(asked.sort(), ['1.2.0.192.a.test', '1.2.0.192.broken.test', '1.2.0.192.c.test']);
  assert.ok(v.kind === 'reject');
  assert.equal(v.text, 'Service unavailable; client [192.0.2.1] blocked using a.test; listed in a');
  assert.match(v.log ?? '', /broken\.test: other, not counted/);
  const onlyBroken = dnsblCheck({ ...defaults, zones: [zone('broken.test', { weight: 5 })] }, dns);
  assert.equal((await onlyBroken.run({ session })).kind, 'continue');
});

test('rhsblSenderCheck skips the null sender and authenticated clients; rhsblHeloCheck skips literals', async () => {
  const asked: string[] = [];
  const dns = fakeDns({ 'spam.test.dbl.test': ok(['127.0.1.2'], 'Domain spam.test is listed') }, asked);
  const settings = { ...defaults, rhsbl_sender: [zone('dbl.test')], rhsbl_helo: [zone('dbl.test', { reply: '4xx' })] };
  const sender = rhsblSenderCheck(settings, dns);
  const from = (address: string) => ({ address, local: address.split('@')[0] ?? '', domain: address.split('@')[1] ?? '', utf8: false });
  const v = await sender.run({ session, mailFrom: from('x@spam.test'), params: {} });
  assert.ok(v.kind === 'reject');
  assert.equal(`${v.code} ${v.enhanced} ${v.text}`, '554 5.7.1 Service unavailable; sender domain [spam.test] blocked using dbl.test; Domain spam.test is listed');
  assert.equal(v.setting, 'dnsbl.rhsbl_sender');
  asked.length = 0;
  assert.equal((await sender.run({ session, mailFrom: from(''), params: {} })).kind, 'continue');
  assert.equal((await sender.run({ session: { ...session, authUser: 'alice' }, mailFrom: from('x@spam.test'), params: {} })).kind, 'continue');
  assert.equal((await sender.run({ session, mailFrom: from('x@[192.0.2.1]'), params: {} })).kind, 'continue');
  assert.deepEqual(asked, [], 'nothing asked');

  const helo = rhsblHeloCheck(settings, dns);
  const h = await helo.run({ session, helo: 'spam.test' });
  assert.ok(h.kind === 'tempfail', 'the zone says 4xx');
  assert.equal(`${h.code} ${h.enhanced} ${h.text}`, '450 4.7.1 Service unavailable; helo name [spam.test] blocked using dbl.test; Domain spam.test is listed');
  assert.equal(h.setting, 'dnsbl.rhsbl_helo');
  asked.length = 0;
  assert.equal((await helo.run({ session, helo: '[192.0.2.1]' })).kind, 'continue');
  assert.equal((await helo.run({ session, helo: '192.0.2.1' })).kind, 'continue');
  assert.deepEqual(asked, []);
});
