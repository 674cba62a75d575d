// The transaction trace over real SMTP (issue 10): one `transaction` log line per transaction,
// with the checks that ran, their verdicts and points, the final reply and the outcome; and the
// same record, structured, in the App's trace buffer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { withTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { formatEntries } from '../src/policy/trace.ts';

/** Loopback may not relay: the HELO checks and the relay check do their work. */
const CLOSED = { forward_from_ip: ['192.0.2.0/24'] };

/** The `transaction` lines, once there are `count` of them (bounded wait). */
async function transactions(app: TestApp, count: number): Promise<Array<Record<string, unknown>>> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const lines = app.logs().filter((l) => l.msg === 'transaction');
    if (lines.length >= count || Date.now() > deadline) return lines;
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function talk(app: TestApp, commands: string[], message?: string): Promise<string[]> {
  const c = await RawClient.connect(app.port);
  try {
    await c.reply();
    const replies: string[] = [];
    for (const cmd of commands) {
      c.send(cmd + '\r\n');
      replies.push(((await c.reply()).split('\n')[0] as string));
      if (cmd === 'DATA' && message !== undefined) {
        c.send(message);
        replies.push(await c.reply());
      }
    }
    return replies;
  } finally {
    c.close();
  }
}

test('an accepted message leaves one transaction line with its queue ID, the checks in order and the 250', async () => {
  await withTestApp({}, async (app) => {
    const r = await talk(app, ['EHLO client.test', 'MAIL FROM:<a@src.test>', 'RCPT TO:<u@example.test>', 'DATA', 'QUIT'], 'Subject: t\r\n\r\nhi\r\n.\r\n');
    const queued = r[4] as string;
    const id = /^250 2\.0\.0 Ok: queued as (\S+)$/.exec(queued)?.[1];
    assert.ok(id, queued);
    const lines = await transactions(app, 1);
    await new Promise((res) => setTimeout(res, 50));
    assert.equal(app.logs().filter((l) => l.msg === 'transaction').length, 1, 'exactly one line');
    const line = lines[0] as Record<string, unknown>;
    assert.equal(line.level, 30, 'info');
    assert.equal(line.id, id);
    assert.equal(line.reply, queued);
    assert.equal(line.outcome, 'accepted');
    assert.equal(line.from, 'a@src.test');
    assert.deepEqual(line.rcpts, ['u@example.test']);
    assert.equal(line.score, 0);
    assert.equal(typeof line.sid, 'string');
    const [trace] = app.app.traces.list();
    assert.ok(trace, 'the structured record is kept');
    assert.equal(trace.id, id);
    assert.equal(trace.outcome, 'accepted');
    assert.equal(trace.helo, 'client.test');
    assert.equal(line.checks, formatEntries(trace.entries));
    // The checks of each phase in registry order, the RCPT phase ending with local_domains' accept.
    const phases = trace.entries.map((e) => e.phase);
    assert.deepEqual(phases, [...phases].sort((x, y) => ORDER.indexOf(x) - ORDER.indexOf(y)));
    assert.ok(phases.includes('helo') && phases.includes('rcpt'), phases.join()); // no connect check is on here
    const rcptChecks = trace.entries.filter((e) => e.phase === 'rcpt').map((e) => `${e.check}:${e.verdict}`);
    assert.equal(rcptChecks.at(-1), 'local_domains:accept', rcptChecks.join());
    assert.equal(
      (line.checks as string).replace(/\(\d+ms\)/g, ''),
      'helo:continue,rblsmtpd:continue,max_rcpts:continue,null_sender:continue,relay_probe:continue,local_domains:accept',
    );
    for (const e of trace.entries) assert.ok(e.ms >= 0);
  });
});

const ORDER = ['connect', 'helo', 'mail', 'rcpt', 'data'];

test('a relay refusal then QUIT: one line, outcome refused, the 554 reply', async () => {
  await withTestApp({ relay: CLOSED }, async (app) => {
    const r = await talk(app, ['EHLO client.example', 'MAIL FROM:<a@src.test>', 'RCPT TO:<u@elsewhere.test>', 'QUIT']);
    assert.match(r[2] as string, /^554 5\.7\.1 /);
    const lines = await transactions(app, 1);
    await new Promise((res) => setTimeout(res, 50));
    assert.equal(app.logs().filter((l) => l.msg === 'transaction').length, 1);
    const line = lines[0] as Record<string, unknown>;
    assert.equal(line.outcome, 'refused');
    assert.equal(line.reply, r[2]);
    assert.equal(line.id, undefined, 'no queue ID without DATA');
    assert.deepEqual(line.rcpts, []);
    assert.match(line.checks as string, /,relay:reject(\(\d+ms\))?$/);
    const [trace] = app.app.traces.list();
    assert.equal(trace?.entries.at(-1)?.reply, r[2]);
  });
});

test("a check set to score: its points in the line, the record and the message's score", async () => {
  await withTestApp({ relay: CLOSED, helo: { action: 'score', score: 2.5 } }, async (app) => {
    const r = await talk(app, ['EHLO localhost', 'MAIL FROM:<a@src.test>', 'RCPT TO:<tagged@example.test>', 'DATA', 'QUIT'], 'Subject: t\r\n\r\nhi\r\n.\r\n');
    assert.match(r[4] as string, /^250 2\.0\.0 Ok: queued as /);
    const [line] = await transactions(app, 1);
    assert.match(line?.checks as string, /(^|,)helo:tag\+2\.5(\(\d+ms\))?,/);
    assert.equal(line?.score, 2.5);
    assert.equal(line?.outcome, 'accepted');
    const helo = app.app.traces.list()[0]?.entries.find((e) => e.check === 'helo');
    assert.deepEqual(helo && { phase: helo.phase, verdict: helo.verdict, score: helo.score }, { phase: 'helo', verdict: 'tag', score: 2.5 });
  });
});

test('RSET mid-transaction ends it as aborted; the next transaction has its own line', async () => {
  await withTestApp({}, async (app) => {
    const r = await talk(app, ['EHLO client.test', 'MAIL FROM:<a@src.test>', 'RCPT TO:<u@example.test>', 'RSET', 'MAIL FROM:<b@src.test>', 'QUIT']);
    assert.deepEqual(r.slice(3, 5), ['250 2.0.0 Ok', '250 2.1.0 Ok']);
    const lines = await transactions(app, 2);
    assert.deepEqual(
      lines.map((l) => [l.from, l.outcome, l.reply]),
      [
        ['a@src.test', 'aborted', undefined],
        ['b@src.test', 'aborted', undefined],
      ],
    );
    assert.deepEqual(lines[0]?.rcpts, ['u@example.test']);
    assert.deepEqual(
      app.app.traces.list().map((t) => [t.mailFrom, t.outcome]),
      [
        ['a@src.test', 'aborted'],
        ['b@src.test', 'aborted'],
      ],
    );
  });
});
