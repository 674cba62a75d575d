// The volume-limit rules (src/policy/rates/): the schema's checks on them, DMail's fromip_max as a
// rule, the store keys, the refusal text, the throttle's growing delay, and the RCPT check's
// counting against a real SQLite store (what a later refusal takes back, what bad_rcpts counts).
import { after, afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { configSchema, type ConfigInput } from '../../config/schema.ts';
import { limitText, rateKey, rateRules, windowText, type RateRule } from './rules.ts';
import { FROMIP_MAX } from '../../config/rates.ts';
import { ratesRcptCheck, ratesMailCheck } from './check.ts';
import { throttleDelay } from './throttle.ts';
import { SqliteStore } from '../../store/sqlite.ts';
import type { SessionInfo } from '../context.ts';
import type { Address } from '../../mail/address.ts';
import { resetClock } from '../../util/clock.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-rates-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
afterEach(() => resetClock());

const parse = (limits: ConfigInput['limits']) => configSchema.safeParse({ hostname: 'mx.example.test', limits });
const issues = (limits: ConfigInput['limits']) => {
  const r = parse(limits);
  return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
};

test('a rule parses with its defaults; per and max take units', () => {
  const r = parse({ rates: [{ name: 'big', key: 'sender_domain', count: 'bytes', max: '100MB', per: '1d' }] });
  assert.ok(r.success);
  assert.deepEqual(r.data.limits.rates, [{ name: 'big', key: 'sender_domain', count: 'bytes', max: 100 * 1024 * 1024, per: 86_400_000, action: 'tempfail', score: 1, delay: 5000, except: [] }]);
});

test('the schema refuses duplicate names, a name fromip_max takes, and keys a count cannot have', () => {
  const rule = { key: 'client_ip', count: 'messages', max: 10, per: '1h' } as const;
  assert.deepEqual(issues({ rates: [{ name: 'a', ...rule }, { name: 'a', ...rule }] }), ['limits.rates.1.name: another rule is already named "a"']);
  assert.match(issues({ fromip_max: 5, rates: [{ name: 'fromip_max', ...rule }] }).join(), /is the rule limits.fromip_max makes/);
  assert.deepEqual(issues({ rates: [{ name: 'fromip_max', ...rule }] }), [], 'free while fromip_max is off');
  assert.match(issues({ rates: [{ name: 'r', key: 'rcpt', count: 'messages', max: 1, per: '1h' }] }).join(), /messages cannot be counted per rcpt/);
  assert.match(issues({ rates: [{ name: 'c', key: 'sender', count: 'connections', max: 1, per: '1h' }] }).join(), /connections cannot be counted per sender; use one of client_ip, client_net/);
  assert.match(issues({ rates: [{ name: 'u', key: 'auth_user', count: 'auth_failures', max: 1, per: '1h' }] }).join(), /auth_failures cannot be counted per auth_user/);
  assert.deepEqual(issues({ rates: [{ name: 'ok', key: 'rcpt', count: 'bad_rcpts', max: 1, per: '1h' }] }), []);
  assert.match(issues({ rates: [{ name: 'a', key: 'client_ip', count: 'auth_failures', max: 1, per: '1h', action: 'score' }] }).join(), /auth_failures cannot score/);
  assert.match(issues({ rates: [{ name: 'z', ...rule, max: 0 }] }).join(), /must be more than 0/);
  assert.match(issues({ rates: [{ name: 'bad name', ...rule }] }).join(), /letters, digits/);
  assert.match(issues({ rates: [{ name: 'x', ...rule, except: ['192.0.2.1/16'] }] }).join(), /rates\.0\.except\.0/);
});

test('limits.fromip_max is one rule: messages per hour per client IP, fromip_nolimit its exceptions', () => {
  const off = parse({});
  assert.ok(off.success);
  assert.deepEqual(rateRules(off.data.limits), [], 'off by default');
  const on = parse({ fromip_max: 50, fromip_nolimit: ['10.0.0.0/8'] });
  assert.ok(on.success);
  assert.deepEqual(rateRules(on.data.limits), [{ name: FROMIP_MAX, key: 'client_ip', count: 'messages', max: 50, per: 3_600_000, action: 'tempfail', score: 0, delay: 0, except: ['10.0.0.0/8'] }]);
});

test('store keys: one per rule and value; none when the fact is missing', () => {
  const facts = { ip: '192.0.2.7', helo: 'Mail.Example.TEST', sender: 'Bob@Example.test', senderDomain: 'example.test', rcpt: 'Alice@example.test' };
  assert.equal(rateKey({ name: 'a', key: 'client_ip' }, facts), 'rate:a:192.0.2.7');
  assert.equal(rateKey({ name: 'b', key: 'client_ip' }, facts), 'rate:b:192.0.2.7', 'rules never share a count');
  assert.equal(rateKey({ name: 'n', key: 'client_net' }, facts), 'rate:n:192.0.2.0/24');
  assert.equal(rateKey({ name: 'n', key: 'client_net' }, { ip: '2001:db8:1:2:3::4' }), 'rate:n:2001:db8:1:2::/64');
  assert.equal(rateKey({ name: 's', key: 'sender' }, facts), 'rate:s:bob@example.test', 'case does not make another sender');
  assert.equal(rateKey({ name: 'd', key: 'sender_domain' }, facts), 'rate:d:example.test');
  assert.equal(rateKey({ name: 'r', key: 'rcpt' }, facts), 'rate:r:alice@example.test');
  assert.equal(rateKey({ name: 'h', key: 'helo' }, facts), 'rate:h:mail.example.test');
  assert.equal(rateKey({ name: 'u', key: 'auth_user' }, facts), undefined, 'not authenticated: the rule does not apply');
  assert.equal(rateKey({ name: 'u', key: 'auth_user' }, { ...facts, authUser: 'alice' }), 'rate:u:alice');
  assert.equal(rateKey({ name: 's', key: 'sender' }, { ...facts, sender: '', senderDomain: '' }), undefined, 'the null sender has no sender to count by');
});

test('the refusal names the rule, the limit and when to come back', () => {
  const rule: RateRule = { name: 'fromip_max', key: 'client_ip', count: 'messages', max: 100, per: 3_600_000, action: 'tempfail', score: 0, delay: 0, except: [] };
  assert.equal(limitText(rule), 'Rate limit fromip_max reached (100 messages per 1h per client address), try again in 3600 seconds');
  assert.equal(limitText({ ...rule, name: 'dict', count: 'bad_rcpts', max: 5, per: 600_000 }), 'Rate limit dict reached (5 bad rcpts per 10m per client address), try again in 600 seconds');
  assert.deepEqual([windowText(86_400_000), windowText(90_000), windowText(1500)], ['1d', '90s', '1500ms']);
});

test('the throttle: nothing up to the rate, then one step per message over it, up to max', () => {
  const s = { rate: 3, step: 1000, max: 2500 };
  assert.deepEqual([0, 1, 2, 3, 4, 5, 9].map((sent) => throttleDelay(sent, s)), [0, 0, 0, 1000, 2000, 2500, 2500]);
  assert.equal(throttleDelay(2.4, s), 1000, 'a fractional estimate over the rate counts as a message over');
  assert.equal(throttleDelay(1.9, s), 0);
});

const session = (ip = '192.0.2.9'): SessionInfo => ({ sid: 's', remoteIp: ip, remotePort: 1, localIp: '192.0.2.25', localPort: 25, tls: false, esmtp: true, earlyTalker: false, rcptCount: 0 });
const addr = (address: string): Address => ({ address, local: address.split('@')[0] ?? '', domain: address.split('@')[1] ?? '', utf8: false });
const rule = (r: Partial<RateRule> & Pick<RateRule, 'name' | 'key' | 'count' | 'max'>): RateRule => ({ per: 3_600_000, action: 'tempfail', score: 1, delay: 0, except: [], ...r });
let n = 0;
const openStore = () => new SqliteStore(path.join(dir, `rates-${++n}.db`));

test('rates_rcpt counts recipients let through; a later refusal takes its count back', async () => {
  const store = openStore();
  try {
    const check = ratesRcptCheck({ rules: [rule({ name: 'per_sender', key: 'sender', count: 'recipients', max: 2 })], failOpen: false }, store);
    const s = session();
    const from = addr('bob@example.test');
    const tx = { mailFrom: from, params: {}, rcpts: [] };
    const rcpt = async (to: string) => {
      const r = addr(to);
      return { r, v: await check.run({ session: s, tx, rcpt: r, score: 0 }) };
    };
    assert.equal((await rcpt('a@example.test')).v.kind, 'continue');
    const refused = await rcpt('b@elsewhere.test');
    // The relay check refused it after this check had counted it.
    await check.observe?.({ kind: 'rcpt_refused', session: s, mailFrom: from, rcpt: refused.r, verdict: { kind: 'reject', check: 'relay', code: 554, enhanced: '5.7.1', text: 'Relay access denied' } });
    assert.equal(await store.rateGet('rate:per_sender:bob@example.test', 3_600_000), 1);
    assert.equal((await rcpt('c@example.test')).v.kind, 'continue');
    const over = (await rcpt('d@example.test')).v;
    assert.equal(over.kind, 'tempfail');
    assert.ok(over.kind === 'tempfail' && over.code === 451 && over.enhanced === '4.7.1' && over.setting === 'limits.rates.per_sender', JSON.stringify(over));
    assert.equal(await store.rateGet('rate:per_sender:bob@example.test', 3_600_000), 2, 'the refused one is not counted');
    assert.equal((await check.run({ session: s, tx: { ...tx, mailFrom: addr('carol@example.test') }, rcpt: addr('d@example.test'), score: 0 })).kind, 'continue', 'another sender has its own count');
  } finally {
    await store.close();
  }
});

test('rates_rcpt: bad_rcpts counts recipients refused as unknown (5.1.x) only, and then refuses any RCPT', async () => {
  const store = openStore();
  try {
    const check = ratesRcptCheck({ rules: [rule({ name: 'dict', key: 'client_ip', count: 'bad_rcpts', max: 2, action: 'reject' })], failOpen: false }, store);
    const s = session();
    const from = addr('bob@example.test');
    const tx = { mailFrom: from, params: {}, rcpts: [] };
    const refuse = (to: string, code: number, enhanced: string) => check.observe?.({ kind: 'rcpt_refused', session: s, mailFrom: from, rcpt: addr(to), verdict: { kind: code >= 500 ? 'reject' : 'tempfail', check: 'recipients', code, enhanced, text: 'x' } });
    await refuse('x@example.test', 554, '5.7.1'); // relay denied: not an unknown user
    await refuse('y@example.test', 451, '4.1.1'); // a temporary answer: not counted
    await refuse('z@example.test', 550, '5.1.1');
    assert.equal((await check.run({ session: s, tx, rcpt: addr('alice@example.test'), score: 0 })).kind, 'continue');
    await refuse('w@example.test', 550, '5.1.1');
    const v = await check.run({ session: s, tx, rcpt: addr('alice@example.test'), score: 0 });
    assert.ok(v.kind === 'reject' && v.code === 550 && v.enhanced === '5.7.1' && !v.text.includes('try again'), JSON.stringify(v));
    assert.equal((await check.run({ session: session('192.0.2.10'), tx, rcpt: addr('alice@example.test'), score: 0 })).kind, 'continue', 'another client');
  } finally {
    await store.close();
  }
});

test('rates_mail: tarpit and score rules hold and tag; a bytes rule reads SIZE=; fail_open', async () => {
  const store = openStore();
  try {
    const rules = [rule({ name: 'slow', key: 'client_ip', count: 'messages', max: 1, action: 'tarpit', delay: 700 }), rule({ name: 'pts', key: 'client_ip', count: 'messages', max: 1, action: 'score', score: 2.5 }), rule({ name: 'vol', key: 'sender_domain', count: 'bytes', max: 1000 })];
    const check = ratesMailCheck({ rules, failOpen: false }, store);
    const s = session();
    const from = addr('bob@example.test');
    assert.equal((await check.run({ session: s, mailFrom: from, params: {} })).kind, 'continue');
    const big = await check.run({ session: s, mailFrom: from, params: { SIZE: '1001' } });
    assert.ok(big.kind === 'tempfail' && big.setting === 'limits.rates.vol', 'a declared size over the limit is refused at MAIL');
    await check.observe?.({ kind: 'accepted', session: s, mailFrom: from, size: 600 });
    const v = await check.run({ session: s, mailFrom: from, params: { SIZE: '300' } });
    assert.ok(v.kind === 'tag' && v.score === 2.5 && v.delayMs === 700, JSON.stringify(v));
    assert.deepEqual(v.kind === 'tag' ? v.tests : [], [{ name: 'rate_pts', score: 2.5 }]);
    await check.observe?.({ kind: 'accepted', session: s, mailFrom: from, size: 500 });
    const full = await check.run({ session: s, mailFrom: from, params: {} });
    assert.ok(full.kind === 'tempfail' && full.setting === 'limits.rates.vol' && full.delayMs === 700, JSON.stringify(full));
  } finally {
    await store.close();
  }
  // The store is closed now: every call throws, as an unreachable Redis does.
  const closed = ratesMailCheck({ rules: [rule({ name: 'm', key: 'client_ip', count: 'messages', max: 1 })], failOpen: false }, store);
  await assert.rejects(async () => closed.run({ session: session(), mailFrom: addr('a@b.test'), params: {} }), 'throws: the engine answers 451 4.3.0');
  const open = ratesMailCheck({ rules: [rule({ name: 'm', key: 'client_ip', count: 'messages', max: 1 })], failOpen: true }, store);
  assert.equal((await open.run({ session: session(), mailFrom: addr('a@b.test'), params: {} })).kind, 'continue', 'store.fail_open: no limit');
});
