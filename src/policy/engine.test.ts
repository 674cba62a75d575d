import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PolicyEngine } from './engine.ts';
import type { AnyCheck } from './check.ts';
import type { RcptContext, SessionInfo } from './context.ts';
import { localDomainsCheck } from './checks/local_domains.ts';
import { maxRcptsCheck } from './checks/max_rcpts.ts';
import { relayCheck } from './checks/relay.ts';
import { tarpitCheck } from './checks/tarpit.ts';
import { silentLogger } from '../util/log.ts';
import { configSchema } from '../config/schema.ts';
import type { Address } from '../mail/address.ts';

function session(ip: string, rcptCount = 0): SessionInfo {
  return { sid: 's', remoteIp: ip, remotePort: 1, localIp: '127.0.0.1', localPort: 25, tls: false, esmtp: true, earlyTalker: false, rcptCount };
}
function addr(a: string): Address {
  const [local = '', domain = ''] = a.split('@');
  return { address: a, local, domain, utf8: false };
}
function rcptCtx(ip: string, rcpt: string, accepted = 0, rcptCount = 0): RcptContext {
  return { session: session(ip, rcptCount), tx: { mailFrom: addr('s@x.test'), params: {}, rcpts: Array.from({ length: accepted }, (_, i) => addr(`r${i}@example.test`)) }, rcpt: addr(rcpt), score: 0 };
}

const relaySettings = (forward_from_ip: string[]) => configSchema.parse({ relay: { forward_from_ip } }).relay;
const standard = (forward: string[] = ['127.0.0.0/8', '::1']): AnyCheck[] => [maxRcptsCheck(3), localDomainsCheck(['example.test']), relayCheck(relaySettings(forward), undefined)];

test('local recipients are accepted, foreign ones relayed only for forward_from_ip', async () => {
  const engine = new PolicyEngine(standard(['192.0.2.0/24', '2001:db8::/32']), silentLogger);
  const r = (ip: string, rcpt: string) => engine.run('rcpt', rcptCtx(ip, rcpt)).then((x) => x.final);
  assert.equal((await r('198.51.100.7', 'u@example.test'))?.check, 'local_domains');
  assert.equal((await r('198.51.100.7', 'u@EXAMPLE.test'.toLowerCase()))?.kind, 'accept');
  const denied = await r('198.51.100.7', 'u@elsewhere.test');
  assert.equal(denied?.kind, 'reject');
  assert.ok(denied && denied.kind === 'reject' && denied.code === 554 && denied.enhanced === '5.7.1' && denied.setting === 'relay.forward_from_ip');
  assert.equal((await r('192.0.2.9', 'u@elsewhere.test'))?.kind, 'accept');
  assert.equal((await r('::ffff:192.0.2.9', 'u@elsewhere.test'))?.kind, 'accept', 'IPv4-mapped IPv6 matches the IPv4 network');
  assert.equal((await r('2001:db8::1', 'u@elsewhere.test'))?.kind, 'accept');
  assert.equal((await r('2001:db9::1', 'u@elsewhere.test'))?.kind, 'reject');
});

test('max_rcpts refuses the recipient past the limit with 452 4.5.3, before anything accepts it', async () => {
  const engine = new PolicyEngine(standard(), silentLogger);
  const final = (await engine.run('rcpt', rcptCtx('127.0.0.1', 'u@example.test', 3))).final;
  assert.ok(final && final.kind === 'tempfail' && final.code === 452 && final.enhanced === '4.5.3');
});

test('tags add up and the first final verdict wins; later checks do not run', async () => {
  let ranAfter = false;
  const checks: AnyCheck[] = [
    { name: 't1', phase: 'mail', run: () => ({ kind: 'tag', check: 't1', score: 2, headers: ['X-A: 1\r\n'] }) },
    { name: 't2', phase: 'mail', run: async () => ({ kind: 'tag', check: 't2', score: 1.5 }) },
    { name: 'stop', phase: 'mail', run: () => ({ kind: 'discard', check: 'stop' }) },
    { name: 'never', phase: 'mail', run: () => ((ranAfter = true), { kind: 'continue' }) },
  ];
  const result = await new PolicyEngine(checks, silentLogger).run('mail', { session: session('127.0.0.1'), mailFrom: addr('a@b.test'), params: {} });
  assert.equal(result.score, 3.5);
  assert.deepEqual(result.headers, ['X-A: 1\r\n']);
  assert.deepEqual(result.tags, ['t1', 't2']);
  assert.equal(result.final?.kind, 'discard');
  assert.equal(ranAfter, false);
});

test('a check that throws is a 451 tempfail, never an accept', async () => {
  const checks: AnyCheck[] = [
    { name: 'broken', phase: 'rcpt', run: () => Promise.reject(new Error('backend down')) },
    localDomainsCheck(['example.test']),
  ];
  const final = (await new PolicyEngine(checks, silentLogger).run('rcpt', rcptCtx('127.0.0.1', 'u@example.test'))).final;
  assert.ok(final && final.kind === 'tempfail' && final.code === 451 && final.check === 'broken');
});

test('tarpit delays grow per recipient past tarpit_start, spare tarpit_except, and add up', async () => {
  const engine = new PolicyEngine([tarpitCheck(2, 1000, ['10.0.0.0/8']), localDomainsCheck(['example.test'])], silentLogger);
  const delay = async (ip: string, count: number) => (await engine.run('rcpt', rcptCtx(ip, 'u@example.test', 0, count))).delayMs;
  assert.deepEqual([await delay('192.0.2.1', 0), await delay('192.0.2.1', 1), await delay('192.0.2.1', 2), await delay('192.0.2.1', 4)], [0, 0, 1000, 3000]);
  assert.equal(await delay('192.0.2.1', 500), 60_000, 'capped at a minute');
  assert.equal(await delay('10.1.2.3', 50), 0, 'tarpit_except');
});

test('concurrent checks of a phase run together (one wait, not the sum); the verdicts still count in registry order', async () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const started: string[] = [];
  const finished: string[] = [];
  const slow = (name: string, ms: number, kind: 'continue' | 'reject' | 'tag'): AnyCheck => ({
    name,
    phase: 'mail',
    concurrent: true,
    async run() {
      started.push(name);
      await sleep(ms);
      finished.push(`${name} (started: ${started.join(' ')})`);
      if (kind === 'reject') return { kind, check: name, code: 550, enhanced: '5.7.1', text: name };
      if (kind === 'tag') return { kind, check: name, score: 1 };
      return { kind: 'continue' };
    },
  });
  const mail = { session: session('127.0.0.1'), mailFrom: addr('a@b.test'), params: {} };
  // The later check answers first with a refusal; the earlier one (slower) refuses too: the earlier one wins.
  const t0 = performance.now();
  const r = await new PolicyEngine([slow('tag', 300, 'tag'), slow('first', 300, 'reject'), slow('second', 50, 'reject')], silentLogger).run('mail', mail);
  const ms = performance.now() - t0;
  assert.equal(r.final?.check, 'first');
  assert.deepEqual(r.tags, ['tag']);
  // Every one was started before the first of them finished; in sequence they took 650 ms.
  assert.equal(finished[0], 'second (started: tag first second)');
  assert.ok(ms < 2000, `three 300/300/50 ms checks took ${Math.round(ms)} ms`);
  // A plain check ahead of them decides before any of them starts (ban.ip before dnsbl: no query).
  started.length = 0;
  const stop: AnyCheck = { name: 'ban', phase: 'mail', run: () => ({ kind: 'reject', check: 'ban', code: 550, enhanced: '5.7.1', text: 'banned' }) };
  assert.equal((await new PolicyEngine([stop, slow('dns', 10, 'continue')], silentLogger).run('mail', mail)).final?.check, 'ban');
  assert.deepEqual(started, []);
  // A plain check between them still comes in order; a concurrent check that throws is a 451.
  const broken: AnyCheck = { name: 'broken', phase: 'mail', concurrent: true, run: () => Promise.reject(new Error('resolver down')) };
  const plain: AnyCheck = { name: 'plain', phase: 'mail', run: () => ({ kind: 'reject', check: 'plain', code: 554, enhanced: '5.7.1', text: 'plain' }) };
  assert.equal((await new PolicyEngine([slow('dns', 10, 'continue'), plain, broken], silentLogger).run('mail', mail)).final?.check, 'plain');
  const f = (await new PolicyEngine([slow('dns', 10, 'continue'), broken, plain], silentLogger).run('mail', mail)).final;
  assert.ok(f && f.kind === 'tempfail' && f.code === 451 && f.check === 'broken');
});
