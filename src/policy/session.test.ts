import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { PolicyEngine } from './engine.ts';
import type { AnyCheck } from './check.ts';
import type { MessageView, SessionInfo, TransactionInfo } from './context.ts';
import { parseHeaderBlock } from '../mail/header-block.ts';
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
    scoring: { tag_at: 5, reject_at: 100, add_headers: 'none', data_timeout: 1000 },
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

/** A stored message as the DATA checks see it. */
function view(text = 'Subject: hi\r\n\r\nbody\r\n'): MessageView {
  const buf = Buffer.from(text);
  const h = parseHeaderBlock(buf);
  return {
    id: 'Q1',
    size: buf.length,
    lines: text.split('\n').length - 1,
    headers: h.fields,
    headersTruncated: h.truncated,
    bodyOffset: h.bodyOffset,
    mayHaveField: (prefix) => h.fields.some((f) => f.key.startsWith(prefix)),
    read: async function* (start = 0) {
      yield buf.subarray(start);
    },
  };
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

test('points and headers add up over connect, HELO, MAIL, RCPT and DATA, a RCPT finding once per message; a new HELO replaces the HELO ones', async () => {
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
  const d = await h.ps.data(tx, info, view());
  // Two recipients, one finding: the score is the message's, not the sum over its recipients.
  assert.deepEqual(d, { kind: 'continue', score: 31, headers: ['X-A: connect', 'X-B: helo', 'X-C: mail', 'X-D: rcpt', 'X-E: data'], cut: [] });
  tx.trace.end('250 2.0.0 Ok', 'Q1');
  assert.equal(h.traces[0]?.score, 31, 'the trace carries the transaction score');

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
  assert.deepEqual(await r.ps.data(a.tx, a.info, view()), { kind: 'reply', reply: '552 5.3.4 Too big' });
  const d = harness([check('y', 'data', () => ({ kind: 'discard', check: 'y' }))]);
  const b = await begin(d.ps);
  assert.deepEqual(await d.ps.data(b.tx, b.info, view()), { kind: 'discard' });
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

const scoring = { tag_at: 5, reject_at: 15, add_headers: 'all', data_timeout: 1000 } as const;

test('scores: the sum over every phase is tagged in SpamAssassin format, tests named by check', async () => {
  const h = harness([tag('helo', 'helo', 2.5, 'X-Spam-Warning: helo\r\n'), tag('dnsbl', 'rcpt', 3, 'X-Spam-Warning: dnsbl\r\n'), tag('body', 'data', 2, 'X-B: 1\r\n')], true, { scoring });
  await h.ps.helo('a');
  const { tx, info } = await begin(h.ps);
  await h.ps.rcpt(tx, info, addr('u@example.test'));
  const d = await h.ps.data(tx, info, view('X-Spam-Flag: NO\r\nSubject: x\r\nx-spam-status: No\r\n\r\nhi\r\n'));
  assert.equal(d.kind, 'continue');
  if (d.kind !== 'continue') return;
  assert.equal(d.score, 7.5);
  assert.ok(d.headers.includes('X-Spam-Flag: YES\r\n'));
  assert.ok(d.headers.includes('X-Spam-Status: Yes, score=7.5 required=5.0 tests=body,dnsbl,helo\r\n'), d.headers.join(''));
  assert.deepEqual(d.cut, [
    [0, 17],
    [29, 48],
  ], 'both incoming X-Spam-* fields are cut, Subject is not');
});

test('scores: at reject_at the message is refused naming the largest contributors; tempfail_at below it', async () => {
  const checks = () => [tag('dnsbl', 'rcpt', 8, 'X: 1\r\n'), tag('helo', 'helo', 5, 'X: 2\r\n'), tag('mfilter', 'data', 3, 'X: 3\r\n')];
  const h = harness(checks(), true, { scoring });
  await h.ps.helo('a');
  const { tx, info } = await begin(h.ps);
  await h.ps.rcpt(tx, info, addr('u@example.test'));
  assert.deepEqual(await h.ps.data(tx, info, view()), { kind: 'reply', reply: '550 5.7.1 Message refused as spam (score 16.0, limit 15.0): dnsbl=8.0 helo=5.0 mfilter=3.0' });
  assert.ok(h.logs.some((l) => l.check === 'scoring' && l.setting === 'scoring.reject_at'));
  const t = harness(checks(), true, { scoring: { ...scoring, reject_at: 20, tempfail_at: 16 } });
  await t.ps.helo('a');
  const b = await begin(t.ps);
  await t.ps.rcpt(b.tx, b.info, addr('u@example.test'));
  const r = await t.ps.data(b.tx, b.info, view());
  assert.equal(r.kind === 'reply' && r.reply.slice(0, 9), '451 4.7.1');
});

test('a DATA check slower than scoring.data_timeout does not hold the reply: on_error tempfail or accept, logged', async () => {
  const never = (name: string, onError?: 'accept' | 'tempfail'): AnyCheck => ({ name, phase: 'data', run: () => new Promise<Verdict>(() => undefined), ...(onError ? { onError } : {}) }) as AnyCheck;
  const fast = { ...scoring, data_timeout: 50 };
  const h = harness([never('slow')], true, { scoring: fast });
  const a = await begin(h.ps);
  assert.deepEqual(await h.ps.data(a.tx, a.info, view()), { kind: 'reply', reply: '451 4.3.0 Temporary local problem, try again later' });
  assert.ok(h.logs.some((l) => l.check === 'slow' && l.onError === 'tempfail' && /data_timeout/.test(String(l.msg))));
  const k = harness([never('slow', 'accept'), tag('fast', 'data', 1, 'X-F: 1\r\n')], true, { scoring: fast });
  const b = await begin(k.ps);
  const d = await k.ps.data(b.tx, b.info, view());
  assert.equal(d.kind, 'continue');
  assert.ok(d.kind === 'continue' && d.headers.includes('X-F: 1\r\n'), 'the later check still counts');
  assert.ok(k.logs.some((l) => l.check === 'slow' && l.onError === 'accept'));
});

test('DATA checks run at once: two checks of 150 ms each finish within one deadline of 250 ms', async () => {
  const slow = (name: string): AnyCheck => ({ name, phase: 'data', run: () => new Promise<Verdict>((r) => setTimeout(() => r({ kind: 'tag', check: name, score: 1 }), 150)) }) as AnyCheck;
  const h = harness([slow('a'), slow('b')], true, { scoring: { ...scoring, data_timeout: 250 } });
  const { tx, info } = await begin(h.ps);
  const d = await h.ps.data(tx, info, view());
  assert.equal(d.kind === 'continue' && d.score, 2, 'neither missed the deadline: they ran concurrently');
});
