import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { PolicyEngine } from './engine.ts';
import type { AnyCheck } from './check.ts';
import type { SessionInfo, TransactionInfo } from './context.ts';
import type { PolicySession, PolicySessionOptions, PolicyTx } from './session.ts';
import type { TransactionTrace } from './trace.ts';
import { CONTINUE, reject, type Phase, type Verdict } from './verdict.ts';
import type { Address } from '../mail/address.ts';
import type { Store } from '../store/store.ts';

function addr(a: string): Address {
  const [local = '', domain = ''] = a.split('@');
  return { address: a, local, domain, utf8: false };
}

function check(name: string, phase: Phase, run: () => Verdict, afterAuth = false): AnyCheck {
  return { name, phase, run, ...(afterAuth ? { waives: { afterAuth: true } } : {}) } as AnyCheck;
}

interface Harness {
  ps: PolicySession;
  info: SessionInfo;
  logs: Record<string, unknown>[];
  traces: TransactionTrace[];
  holds: number[];
}

function harness(checks: AnyCheck[], delayReject = true, extra: Partial<PolicySessionOptions> = {}): Harness {
  const logs: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
  const info: SessionInfo = { sid: 's1', remoteIp: '198.51.100.7', remotePort: 1, localIp: '127.0.0.1', localPort: 25, tls: false, esmtp: true, earlyTalker: false, rcptCount: 0 };
  const traces: TransactionTrace[] = [];
  const holds: number[] = [];
  const opts: PolicySessionOptions = {
    info,
    delayReject,
    log,
    hold: (ms) => {
      holds.push(ms);
      return Promise.resolve();
    },
    closed: () => false,
    onTrace: (t) => traces.push(t),
    ...extra,
  };
  return { ps: new PolicyEngine(checks, log).session(opts), info, logs, traces, holds };
}

async function begin(ps: PolicySession, from = 's@sender.test'): Promise<{ tx: PolicyTx; info: TransactionInfo }> {
  const m = await ps.mail(addr(from), {});
  assert.equal(m.kind, 'continue');
  if (m.kind !== 'continue') throw new Error('unreachable');
  return { tx: m.tx, info: { mailFrom: addr(from), params: {}, rcpts: [] } };
}

const tag = (name: string, phase: Phase, score: number, header: string): AnyCheck => check(name, phase, () => ({ kind: 'tag', check: name, score, headers: [header] }));

test('a connect refusal is held for RCPT under smtp.delay_reject, answered there with the decision logged', async () => {
  const h = harness([check('dnsbl', 'connect', () => reject('dnsbl', 554, '5.7.1', 'Listed', 'dnsbl.zones'))]);
  assert.deepEqual(await h.ps.connect(), { kind: 'continue' });
  assert.deepEqual(await h.ps.helo('client.test'), { kind: 'continue' });
  const { tx, info } = await begin(h.ps);
  const d = await h.ps.rcpt(tx, info, addr('u@example.test'));
  assert.deepEqual(d, { kind: 'reply', reply: '554 5.7.1 Listed' });
  const line = h.logs.find((l) => l.phase === 'rcpt');
  assert.equal(line?.check, 'dnsbl');
  assert.equal(line?.from, 's@sender.test');
  assert.equal(line?.rcpt, 'u@example.test');
  assert.equal(line?.setting, 'dnsbl.zones');
  assert.equal(line?.msg, 'Command RCPT refused');
  tx.trace.end();
  assert.equal(h.traces[0]?.reply, '554 5.7.1 Listed');
});

test('without smtp.delay_reject a connect refusal closes at once and a HELO refusal is the answer to HELO', async () => {
  const c = harness([check('ban.ip', 'connect', () => reject('ban.ip', 554, '5.7.1', 'Banned'))], false);
  assert.deepEqual(await c.ps.connect(), { kind: 'reply', reply: '554 5.7.1 Banned', close: true });
  const h = harness([check('helo', 'helo', () => reject('helo', 504, '5.5.2', 'Bad HELO'))], false);
  assert.deepEqual(await h.ps.helo('x'), { kind: 'reply', reply: '504 5.5.2 Bad HELO' });
});

test('a HELO refusal from an afterAuth check is waived once the client has authenticated; a MAIL one is not', async () => {
  const h = harness([check('helo', 'helo', () => reject('helo', 504, '5.5.2', 'Bad HELO'), true), check('relay', 'rcpt', () => ({ kind: 'accept', check: 'relay' }))]);
  await h.ps.helo('x');
  const first = await begin(h.ps);
  assert.equal((await h.ps.rcpt(first.tx, first.info, addr('u@far.test'))).kind, 'reply', 'not yet authenticated');
  h.info.authUser = 'alice';
  assert.deepEqual(await h.ps.rcpt(first.tx, first.info, addr('u@far.test')), { kind: 'continue' });

  const m = harness([check('ban.mail_from', 'mail', () => reject('ban.mail_from', 550, '5.7.1', 'Sender banned'), true)]);
  m.info.authUser = 'alice';
  const { tx, info } = await begin(m.ps);
  assert.deepEqual(await m.ps.rcpt(tx, info, addr('u@far.test')), { kind: 'reply', reply: '550 5.7.1 Sender banned' }, 'only session refusals are waived');
});

test('a check that is not afterAuth stays refused after AUTH', async () => {
  const h = harness([check('dnsbl', 'connect', () => reject('dnsbl', 554, '5.7.1', 'Listed'))]);
  await h.ps.connect();
  h.info.authUser = 'alice';
  const { tx, info } = await begin(h.ps);
  assert.equal((await h.ps.rcpt(tx, info, addr('u@example.test'))).kind, 'reply');
});

test('points and headers add up over connect, HELO, MAIL, every accepted RCPT and DATA; a new HELO replaces the HELO ones', async () => {
  const h = harness([
    tag('rdns', 'connect', 1, 'X-A: connect'),
    tag('helo', 'helo', 2, 'X-B: helo'),
    tag('sender_domain', 'mail', 4, 'X-C: mail'),
    tag('rules', 'rcpt', 8, 'X-D: rcpt'),
    check('relay', 'rcpt', () => ({ kind: 'accept', check: 'relay' })),
    tag('size', 'data', 16, 'X-E: data'),
  ]);
  await h.ps.connect();
  await h.ps.helo('a');
  const { tx, info } = await begin(h.ps);
  assert.equal(tx.score, 7);
  assert.deepEqual(await h.ps.rcpt(tx, info, addr('u@example.test')), { kind: 'continue' });
  assert.deepEqual(await h.ps.rcpt(tx, info, addr('v@example.test')), { kind: 'continue' });
  const d = await h.ps.data(tx, info, 100);
  assert.deepEqual(d, { kind: 'continue', score: 39, headers: ['X-A: connect', 'X-B: helo', 'X-C: mail', 'X-D: rcpt', 'X-D: rcpt', 'X-E: data'] });
  tx.trace.end('250 2.0.0 Ok', 'Q1');
  assert.equal(h.traces[0]?.score, 39);

  h.ps.forgetHelo();
  const next = await begin(h.ps);
  assert.equal(next.tx.score, 5, 'STARTTLS forgets the HELO points');
});

test('delays are handed to the SMTP session; a deny that closes the session says so', async () => {
  const h = harness([
    check('tarpit', 'rcpt', () => ({ kind: 'continue', delayMs: 250 })),
    check('rules', 'rcpt', () => ({ ...reject('rules', 550, '5.7.1', 'Denied'), closeSession: true })),
  ]);
  const { tx, info } = await begin(h.ps);
  assert.deepEqual(await h.ps.rcpt(tx, info, addr('u@example.test')), { kind: 'reply', reply: '550 5.7.1 Denied', close: true });
  assert.ok(h.holds.includes(250));
  assert.equal(h.traces[0]?.reply, '550 5.7.1 Denied', 'the deny ends the transaction trace');
});

test('DATA: a refusal, a discard', async () => {
  const r = harness([check('x', 'data', () => reject('x', 552, '5.3.4', 'Too big'))]);
  const a = await begin(r.ps);
  assert.deepEqual(await r.ps.data(a.tx, a.info, 1), { kind: 'reply', reply: '552 5.3.4 Too big' });
  const d = harness([check('y', 'data', () => ({ kind: 'discard', check: 'y' }))]);
  const b = await begin(d.ps);
  assert.deepEqual(await d.ps.data(b.tx, b.info, 1), { kind: 'discard' });
  assert.equal(d.logs.find((l) => l.phase === 'data')?.msg, 'data discard');
  assert.equal(CONTINUE.kind, 'continue');
});

test('relay.hide_auth recentpop: AUTH is hidden from a client that read its mail by POP within relay.forward_window', async () => {
  const now = Date.now() / 1000;
  const popAt = new Map<string, number>([['198.51.100.7', now - 60]]);
  const store = { relayerGet: (ip: string) => Promise.resolve(popAt.get(ip)) } as unknown as Store;
  const relay = { hide_auth: ['recentpop'], forward_user: true, forward_window: 600_000 } as const;
  assert.equal(await harness([], true, { relay: { ...relay, hide_auth: [...relay.hide_auth] }, store }).ps.hideAuth(), true);
  popAt.set('198.51.100.7', now - 3600);
  assert.equal(await harness([], true, { relay: { ...relay, hide_auth: [...relay.hide_auth] }, store }).ps.hideAuth(), false, 'too long ago');
  popAt.set('198.51.100.7', now);
  assert.equal(await harness([], true, { relay: { ...relay, hide_auth: [] }, store }).ps.hideAuth(), false, 'not configured');
  const down = { relayerGet: () => Promise.reject(new Error('down')) } as unknown as Store;
  assert.equal(await harness([], true, { relay: { ...relay, hide_auth: [...relay.hide_auth] }, store: down }).ps.hideAuth(), false, 'store down: AUTH offered');
});
