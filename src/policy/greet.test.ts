// The greet delay as the policy session decides it (src/policy/greet.ts, PolicySession.connect),
// with a fake resolver and Store: who waits, what an unreachable Store means, and how early
// talking and the later protocol findings count.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { PolicyEngine } from './engine.ts';
import type { AnyCheck } from './check.ts';
import type { SessionInfo } from './context.ts';
import type { PolicySessionOptions } from './session.ts';
import { greetPlan } from './greet.ts';
import type { DnsResolver, ForwardConfirmedResult } from '../dns/resolver.ts';
import type { Store } from '../store/store.ts';
import { configSchema } from '../config/schema.ts';

const DELAY = 5000;

function session(opts: { rdns?: ForwardConfirmedResult['kind']; store?: Partial<Store>; checks?: AnyCheck[]; smtp?: Record<string, unknown>; relay?: string[]; early?: boolean }) {
  const logs: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
  const info: SessionInfo = { sid: 's1', remoteIp: '198.51.100.7', remotePort: 1, localIp: '127.0.0.1', localPort: 25, tls: false, esmtp: true, earlyTalker: opts.early ?? false, rcptCount: 0 };
  const holds: number[] = [];
  const lookups: string[] = [];
  const dns = {
    forwardConfirmed: (ip: string) => {
      lookups.push(ip);
      return Promise.resolve(opts.rdns === 'confirmed' ? { kind: 'confirmed', name: 'mail.example.test' } : { kind: opts.rdns ?? 'no-ptr', names: [] });
    },
  } as unknown as DnsResolver;
  const smtp = configSchema.parse({ hostname: 'mx.example.test', smtp: { greet_delay: `${DELAY}ms`, greet_delay_for: 'suspicious', ...opts.smtp } }).smtp;
  const full: PolicySessionOptions = {
    info,
    delayReject: true,
    log,
    hold: (ms) => {
      if (ms > 0) holds.push(ms);
      return Promise.resolve();
    },
    closed: () => false,
    onTrace: () => undefined,
    scoring: { tag_at: 5, reject_at: 100, add_headers: 'none', data_timeout: 1000 },
    smtp,
    dns,
    relayClients: opts.relay ?? [],
    ...(opts.store ? { store: opts.store as Store } : {}),
  };
  return { ps: new PolicyEngine(opts.checks ?? [], log).session(full), holds, logs, lookups };
}

const points = (score: number): AnyCheck => ({ name: 'dnsbl', phase: 'connect', run: () => ({ kind: 'tag', check: 'dnsbl', score }) }) as AnyCheck;
const addr = (a: string) => ({ address: a, local: a.split('@')[0] ?? '', domain: a.split('@')[1] ?? '', utf8: false });

test('greetPlan: all makes everyone wait; suspicious spares relay, remembered and confirmed clients', () => {
  const clean = { relayClient: false, remembered: false, rdns: 'confirmed' as const, score: 0 };
  assert.equal(greetPlan('all', { ...clean, relayClient: true, remembered: true }).wait, true);
  assert.equal(greetPlan('suspicious', clean).wait, false);
  assert.equal(greetPlan('suspicious', { ...clean, rdns: 'no-ptr' }).wait, true);
  assert.equal(greetPlan('suspicious', { ...clean, rdns: 'unconfirmed' }).wait, true);
  assert.equal(greetPlan('suspicious', { ...clean, rdns: 'error' }).wait, true, 'a DNS failure is not a confirmation');
  assert.equal(greetPlan('suspicious', { ...clean, rdns: undefined }).wait, true);
  assert.deepEqual(greetPlan('suspicious', { ...clean, score: 2 }), { wait: true, why: 'score 2' });
  assert.equal(greetPlan('suspicious', { ...clean, score: -1, rdns: 'no-ptr' }).wait, true, 'a DNSWL credit does not stand for reverse DNS');
  assert.equal(greetPlan('suspicious', { ...clean, rdns: 'no-ptr', remembered: true }).wait, false);
  assert.equal(greetPlan('suspicious', { ...clean, rdns: 'no-ptr', score: 9, relayClient: true }).wait, false);
});

test('a confirmed client waits only when the connect checks gave it points', async () => {
  const clean = session({ rdns: 'confirmed' });
  assert.equal((await clean.ps.connect()).kind, 'continue');
  assert.deepEqual(clean.holds, []);
  const listed = session({ rdns: 'confirmed', checks: [points(2)] });
  await listed.ps.connect();
  assert.equal(listed.holds.length, 1);
  assert.ok((listed.holds[0] ?? 0) > DELAY - 1000, `held ${listed.holds[0]} ms`);
});

test('a relay client never waits and costs no lookup; the Store unreachable: the client waits, the session goes on', async () => {
  const relay = session({ relay: ['198.51.100.0/24'], checks: [points(9)] });
  await relay.ps.connect();
  assert.deepEqual(relay.holds, []);
  assert.deepEqual(relay.lookups, []);
  const down = session({ rdns: 'confirmed', store: { cacheGet: () => Promise.reject(new Error('connect ECONNREFUSED')), cacheSet: () => Promise.reject(new Error('connect ECONNREFUSED')) }, checks: [points(1)] });
  assert.equal((await down.ps.connect()).kind, 'continue');
  assert.equal(down.holds.length, 1);
  assert.ok(down.logs.some((l) => l.msg === 'store unreachable: the client waits'));
  const stored: string[] = [];
  const remember = (k: string): Promise<void> => {
    stored.push(k);
    return Promise.resolve();
  };
  const remembered = session({ store: { cacheGet: (k: string) => Promise.resolve(k === 'greet:198.51.100.7' ? '1' : undefined), cacheSet: remember } });
  await remembered.ps.connect();
  assert.deepEqual(remembered.holds, [], 'passed before: no wait even without reverse DNS');
  const fresh = session({ store: { cacheGet: () => Promise.resolve(undefined), cacheSet: remember } });
  await fresh.ps.connect();
  assert.equal(fresh.holds.length, 1);
  assert.deepEqual(stored, ['greet:198.51.100.7'], 'it waited without talking: remembered');
});

test('early talking scored counts in every transaction; a later finding counts once, from the open transaction on', async () => {
  const h = session({ early: true, smtp: { early_talker: 'score', early_talker_score: 2, bare_pipelining: 'score', bare_pipelining_score: 3, non_smtp_command: 'ignore' } });
  await h.ps.connect();
  const m1 = await h.ps.mail(addr('a@src.test'), {});
  assert.ok(m1.kind === 'continue');
  assert.equal(m1.tx.score, 2);
  assert.deepEqual(h.ps.finding('bare_pipelining', 'MAIL', m1.tx), { kind: 'continue' });
  assert.deepEqual(h.ps.finding('bare_pipelining', 'RCPT', m1.tx), { kind: 'continue' });
  assert.deepEqual(h.ps.finding('non_smtp_command', 'GET', m1.tx), { kind: 'continue' }, 'ignore');
  assert.equal(m1.tx.score, 5, 'counted once');
  assert.deepEqual(m1.tx.tests.map((t) => t.name), ['early_talker', 'bare_pipelining']);
  const m2 = await h.ps.mail(addr('b@src.test'), {});
  assert.ok(m2.kind === 'continue');
  assert.equal(m2.tx.score, 5, 'and in every later transaction');
  const r = session({ smtp: { non_smtp_command: 'reject' }, rdns: 'confirmed' });
  assert.deepEqual(r.ps.finding('non_smtp_command', 'GET', undefined), { kind: 'reply', reply: '521 5.5.1 Error: non-SMTP command, closing connection', close: true });
});
