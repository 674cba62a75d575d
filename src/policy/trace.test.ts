import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SessionTrace, TraceBuffer, formatEntries, traceLogFields, type TraceEntry, type TransactionTrace } from './trace.ts';
import { PolicyEngine } from './engine.ts';
import type { AnyCheck } from './check.ts';
import type { ConnectContext } from './context.ts';
import { silentLogger } from '../util/log.ts';

const entry = (e: Partial<TraceEntry> & Pick<TraceEntry, 'check' | 'verdict'>): TraceEntry => ({ phase: 'rcpt', ms: 0.2, ...e });

function recorder(): { session: SessionTrace; emitted: TransactionTrace[] } {
  const emitted: TransactionTrace[] = [];
  return { session: new SessionTrace('sid1', '192.0.2.1', (t) => emitted.push(t)), emitted };
}

test('the engine reports each check whose verdict it took: name, verdict, points, time, refusal reply', async () => {
  const checks: AnyCheck[] = [
    { name: 'a', phase: 'connect', run: () => ({ kind: 'continue' }) },
    { name: 'b', phase: 'connect', run: async () => ({ kind: 'tag', check: 'b', score: 2.5 }) },
    { name: 'c', phase: 'connect', run: () => ({ kind: 'reject', check: 'c', code: 554, enhanced: '5.7.1', text: 'no' }) },
    { name: 'd', phase: 'connect', run: () => ({ kind: 'accept', check: 'd' }) },
  ];
  const ctx = { session: { sid: 's', remoteIp: '192.0.2.1', remotePort: 1, localIp: '127.0.0.1', localPort: 25, tls: false, esmtp: false, earlyTalker: false, rcptCount: 0 } } as ConnectContext;
  const result = await new PolicyEngine(checks, silentLogger).run('connect', ctx);
  assert.deepEqual(
    result.ran.map(({ ms: _ms, ...e }) => e),
    [
      { phase: 'connect', check: 'a', verdict: 'continue' },
      { phase: 'connect', check: 'b', verdict: 'tag', score: 2.5 },
      { phase: 'connect', check: 'c', verdict: 'reject', reply: '554 5.7.1 no' },
    ],
    'd never ran: c ended the phase',
  );
  for (const e of result.ran) assert.ok(e.ms >= 0 && e.ms < 1000);
  const failing: AnyCheck[] = [{ name: 'boom', phase: 'connect', run: () => Promise.reject(new Error('x')) }];
  const failed = await new PolicyEngine(failing, silentLogger).run('connect', ctx);
  assert.equal(failed.ran[0]?.verdict, 'tempfail');
  assert.equal(failed.ran[0]?.reply, '451 4.3.0 Temporary local problem, try again later');
});

test('connect and HELO entries belong to every transaction; an accepted message ends with its reply and ID', () => {
  const { session, emitted } = recorder();
  session.phase('connect', { ran: [entry({ phase: 'connect', check: 'ban_ip', verdict: 'continue' })] });
  session.phase('helo', { ran: [entry({ phase: 'helo', check: 'helo', verdict: 'tag', score: 3 })] });
  const tx = session.begin('a@src.test', 'client.test');
  tx.phase({ ran: [entry({ phase: 'mail', check: 'ban_mailfrom', verdict: 'continue' })] });
  tx.phase({ ran: [entry({ check: 'local_domains', verdict: 'accept', ms: 3.4 })] });
  tx.rcpt('u@example.test');
  tx.rcpt('u@example.test');
  const t = tx.end('250 2.0.0 Ok: queued as Q1', 'Q1');
  assert.ok(t);
  assert.equal(tx.end(), undefined, 'only the first end counts');
  assert.deepEqual(emitted, [t]);
  assert.deepEqual(
    t.entries.map((e) => `${e.phase}/${e.check}`),
    ['connect/ban_ip', 'helo/helo', 'mail/ban_mailfrom', 'rcpt/local_domains'],
  );
  assert.equal(t.outcome, 'accepted');
  assert.equal(t.id, 'Q1');
  assert.equal(t.score, 3);
  assert.deepEqual(t.rcpts, ['u@example.test']);
  assert.equal(t.helo, 'client.test');
  assert.equal(t.sid, 'sid1');
  // A second transaction starts from the session's entries again.
  const second = session.begin('b@src.test', 'client.test').end();
  assert.deepEqual(
    second?.entries.map((e) => e.check),
    ['ban_ip', 'helo'],
  );
  assert.equal(second?.outcome, 'aborted');
  assert.equal(second?.reply, undefined);
});

test('outcomes: refused and tempfailed from the reply or the last refusal, discarded when told, aborted otherwise', () => {
  const { session } = recorder();
  const refusedRcpt = session.begin('a@src.test', undefined);
  refusedRcpt.phase({ ran: [entry({ check: 'relay', verdict: 'reject', reply: '554 5.7.1 Relay access denied' })] });
  assert.deepEqual(
    (({ outcome, reply }) => ({ outcome, reply }))(refusedRcpt.end() as TransactionTrace),
    { outcome: 'refused', reply: '554 5.7.1 Relay access denied' },
    'every recipient refused, then QUIT',
  );
  const delayed = session.begin('a@src.test', undefined);
  delayed.refused('450 4.7.1 Client host rejected');
  assert.equal(delayed.end()?.outcome, 'tempfailed');
  const partly = session.begin('a@src.test', undefined);
  partly.phase({ ran: [entry({ check: 'relay', verdict: 'reject', reply: '554 5.7.1 Relay access denied' })] });
  partly.rcpt('u@example.test');
  const aborted = partly.end();
  assert.equal(aborted?.outcome, 'aborted', 'RSET after an accepted recipient');
  assert.equal(aborted?.reply, undefined);
  assert.equal(session.begin('a@src.test', undefined).end('552 5.3.4 Error: message size exceeds fixed maximum message size', 'Q2')?.outcome, 'refused');
  assert.equal(session.begin('a@src.test', undefined).end('451 4.3.0 Error: queue file write error', 'Q3')?.outcome, 'tempfailed');
  assert.equal(session.begin('a@src.test', undefined).end('250 2.0.0 Ok: queued as Q4', 'Q4', 'discarded')?.outcome, 'discarded');
});

test('the compact checks field and the log fields', () => {
  const entries = [
    entry({ check: 'ban_ip', verdict: 'continue', ms: 0.3 }),
    entry({ check: 'dnsbl', verdict: 'tag', score: 2, ms: 3.2 }),
    entry({ check: 'helo', verdict: 'tag', score: -1.5, ms: 0 }),
    entry({ check: 'relay', verdict: 'reject', reply: '554 5.7.1 Relay access denied', ms: 12.7 }),
  ];
  assert.equal(formatEntries(entries), 'ban_ip:continue,dnsbl:tag+2(3ms),helo:tag-1.5,relay:reject(13ms)');
  const { session } = recorder();
  const tx = session.begin('a@src.test', 'h.test');
  tx.phase({ ran: entries });
  const fields = traceLogFields(tx.end() as TransactionTrace);
  assert.deepEqual(
    (({ ms: _ms, ...f }) => f)(fields),
    { from: 'a@src.test', rcpts: [], checks: 'ban_ip:continue,dnsbl:tag+2(3ms),helo:tag-1.5,relay:reject(13ms)', score: 0.5, reply: '554 5.7.1 Relay access denied', outcome: 'refused' },
  );
  assert.equal(typeof fields.ms, 'number');
});

test('the trace buffer keeps the latest traces, oldest first', () => {
  const trace = (n: number): TransactionTrace => ({ sid: `s${n}`, ip: '192.0.2.1', mailFrom: '', rcpts: [], startedAt: n, entries: [], score: 0, outcome: 'aborted' });
  const buf = new TraceBuffer(3);
  assert.deepEqual(buf.list(), []);
  buf.add(trace(1));
  buf.add(trace(2));
  assert.deepEqual(
    buf.list().map((t) => t.sid),
    ['s1', 's2'],
  );
  for (const n of [3, 4, 5]) buf.add(trace(n));
  assert.equal(buf.length, 3);
  assert.deepEqual(
    buf.list().map((t) => t.sid),
    ['s3', 's4', 's5'],
  );
  assert.throws(() => new TraceBuffer(0), RangeError);
});
