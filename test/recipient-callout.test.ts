// recipients.callout through real SMTP sessions against real downstreams: a private Postfix
// (virtual mailboxes, 550 5.1.1 for unknown users), Dovecot LMTP, and smtp-sink scripted to
// refuse, defer or vanish. Known users are accepted and unknown ones refused at RCPT; answers
// are cached (a second session is answered with the downstream stopped), a negative answer
// expires after negative_ttl, trouble is 451 4.4.3 and never cached, and only local domains are
// probed — with MAIL FROM:<> and never DATA. Every peer started here is stopped in after().
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { withTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { freePort, sleep, startDovecotLmtp, startPostfix, startSmtpSink, waitUntil, type MailStorePeer, type Peer } from './harness/peers.ts';
import { advanceClock, resetClock } from '../src/util/clock.ts';

const UNKNOWN = (a: string) => `550 5.1.1 <${a}>: Recipient address rejected: User unknown`;
const UNVERIFIED = (a: string) => `451 4.4.3 <${a}>: Recipient address rejected: unverified address, try again later`;
const OK = '250 2.1.5 Ok';

let postfix: MailStorePeer;
let dovecot: MailStorePeer;
const peers: Peer[] = [];

before(async () => {
  const started = await Promise.allSettled([startPostfix({ domains: ['example.test'] }), startDovecotLmtp({ users: ['alice@example.test'] })]);
  for (const s of started) if (s.status === 'fulfilled') peers.push(s.value);
  for (const s of started) if (s.status === 'rejected') throw s.reason;
  [postfix, dovecot] = peers as [MailStorePeer, MailStorePeer];
});

after(async () => {
  for (const p of peers.splice(0)) await p.stop();
});

/** One session: EHLO, MAIL FROM, the RCPTs pipelined; returns the RCPT replies. */
async function rcpts(app: TestApp, to: readonly string[], from = 'sender@src.test'): Promise<string[]> {
  const c = await RawClient.connect(app.port);
  try {
    await c.reply();
    c.send(`EHLO client.example\r\nMAIL FROM:<${from}>\r\n${to.map((t) => `RCPT TO:<${t}>\r\n`).join('')}`);
    return (await c.replies(2 + to.length, 15_000)).slice(2);
  } finally {
    c.close();
  }
}

/** Postfix's smtpd sessions so far that have ended ("disconnect from …" lines). */
// Ended sessions that sent commands: the harness's readiness probe (connect, read the greeting,
// hang up) is logged as `commands=0/0`, sometimes late under load, and is not a callout.
const pfSessions = (): string[] => postfix.log().split('\n').filter((l) => / disconnect from /.test(l) && !/ commands=0\/0/.test(l));

/** Waits until Postfix has logged `n` more ended sessions than `before`, then a little more, and returns the new ones. */
async function newSessions(before: number, n: number): Promise<string[]> {
  await waitUntil(() => pfSessions().length >= before + n, 5000);
  await sleep(200); // nothing more may come
  return pfSessions().slice(before);
}

const calloutLogs = (app: TestApp) => app.logs().filter((l) => l.check === 'recipient_callout');

test('Postfix: known users pass, unknown ones get 550 5.1.1 at RCPT; answers are cached; other domains and postmaster are not asked', async () => {
  const target = `smtp://127.0.0.1:${postfix.port}`;
  await withTestApp({ deliver: target, recipients: { callout: {} } }, async (app) => {
    const before = pfSessions().length;
    const to = ['alice@example.test', 'nobody@example.test', 'postmaster@example.test', 'x@far.test', 'Bob@Example.test'];
    assert.deepEqual(await rcpts(app, to), [OK, UNKNOWN('nobody@example.test'), OK, OK, OK]);
    // Three probes: alice, nobody, Bob; each connect, EHLO, MAIL FROM:<>, RCPT, QUIT — no DATA.
    const sessions = await newSessions(before, 3);
    assert.equal(sessions.length, 3, sessions.join('\n'));
    for (const s of sessions) assert.match(s, /ehlo=1 mail=1 rcpt=[01](\/1)? quit=1 commands=/, s);
    assert.ok(!sessions.some((s) => /data=/.test(s)));
    assert.match(postfix.log(), /reject: RCPT from .*<nobody@example\.test>: Recipient address rejected: User unknown in virtual mailbox table; from=<> to=<nobody@example\.test> .*helo=<mx\.example\.test>/);
    assert.doesNotMatch(postfix.log(), /far\.test|postmaster@example\.test/);
    const refused = app.logs().find((l) => l.check === 'recipient_callout' && l.rcpt === 'nobody@example.test');
    assert.equal(refused?.setting, 'recipients.callout');
    assert.match(String(refused?.msg), new RegExp(`${target.replace(/[/.]/g, '\\$&')} said 550 5\\.1\\.1`));
    assert.ok(calloutLogs(app).some((l) => /<alice@example\.test>: recipient verified \(smtp:\/\/127\.0\.0\.1:\d+ said 250/.test(String(l.msg))));

    // Five sessions at once asking about one new address, and the old ones again: one probe in all.
    const before2 = pfSessions().length;
    const again = await Promise.all(Array.from({ length: 5 }, () => rcpts(app, ['carol@example.test', 'nobody@example.test', 'alice@example.test'])));
    for (const r of again) assert.deepEqual(r, [OK, UNKNOWN('nobody@example.test'), OK]);
    assert.equal((await newSessions(before2, 1)).length, 1, 'carol was probed once; the rest came from the cache');
    assert.ok(calloutLogs(app).some((l) => /<alice@example\.test>: recipient verified \(cached answer 250/.test(String(l.msg))));
  });
});

test('Postfix: callout.sender replaces the null sender', async () => {
  await withTestApp({ recipients: { callout: { target: `smtp://127.0.0.1:${postfix.port}`, sender: 'verify@mx.example.test' } } }, async (app) => {
    assert.deepEqual(await rcpts(app, ['nosuch@example.test']), [UNKNOWN('nosuch@example.test')]);
    await waitUntil(() => /from=<verify@mx\.example\.test> to=<nosuch@example\.test>/.test(postfix.log()), 5000);
    assert.match(postfix.log(), /from=<verify@mx\.example\.test> to=<nosuch@example\.test>/);
  });
});

test('Dovecot LMTP: LHLO, and the same answers', async () => {
  await withTestApp({ deliver: `lmtp://127.0.0.1:${dovecot.port}`, recipients: { callout: {} } }, async (app) => {
    assert.deepEqual(await rcpts(app, ['alice@example.test', 'nobody@example.test']), [OK, UNKNOWN('nobody@example.test')]);
    assert.ok(calloutLogs(app).some((l) => /lmtp:\/\/127\.0\.0\.1:\d+ said 550 5\.1\.1/.test(String(l.msg))));
  });
});

test('a cached answer needs no downstream; a negative one expires after negative_ttl; trouble is 451 4.4.3 and never cached', async () => {
  const port = await freePort();
  const sinks: Peer[] = [];
  const sink = async (...extraArgs: string[]): Promise<void> => {
    for (const s of sinks.splice(0)) await s.stop();
    sinks.push(await startSmtpSink({ port, extraArgs }));
  };
  const stopSink = async (): Promise<void> => {
    for (const s of sinks.splice(0)) await s.stop();
  };
  try {
    await withTestApp({ recipients: { callout: { target: `smtp://127.0.0.1:${port}`, negative_ttl: '10m', timeout: '5s' } } }, async (app) => {
      // Nobody listens: 451, and a warning line naming the downstream.
      assert.deepEqual(await rcpts(app, ['carol@example.test']), [UNVERIFIED('carol@example.test')]);
      assert.ok(calloutLogs(app).some((l) => l.rcpt === 'carol@example.test' && l.setting === 'recipients.callout' && /recipient callout failed: .*ECONNREFUSED/.test(String(l.msg))));

      // A downstream that refuses every RCPT with a 5xx: not cached before, so asked now.
      await sink('-f', 'RCPT', '-B', '550 5.1.1 Error: no such user');
      assert.deepEqual(await rcpts(app, ['carol@example.test']), [UNKNOWN('carol@example.test')]);

      // Downstream gone: the cached negative answer still stands.
      await stopSink();
      assert.deepEqual(await rcpts(app, ['carol@example.test']), [UNKNOWN('carol@example.test')]);

      // A downstream that takes everyone: late in negative_ttl carol is still refused from the
      // cache; once it is over, she is asked again. The cache's clock is util/clock.ts, which
      // mxguard in this process reads: moved on, not slept through.
      await sink();
      advanceClock(9 * 60_000);
      assert.deepEqual(await rcpts(app, ['carol@example.test']), [UNKNOWN('carol@example.test')]);
      advanceClock(60_000 + 1000);
      assert.deepEqual(await rcpts(app, ['carol@example.test']), [OK]);

      // A 4xx to RCPT, or a refused MAIL FROM (the probe is broken, not the user): 451, not cached.
      await sink('-r', 'RCPT');
      assert.deepEqual(await rcpts(app, ['dave@example.test']), [UNVERIFIED('dave@example.test')]);
      await sink('-f', 'MAIL');
      assert.deepEqual(await rcpts(app, ['dave@example.test']), [UNVERIFIED('dave@example.test')]);
      await sink();
      assert.deepEqual(await rcpts(app, ['dave@example.test']), [OK]);
    });
  } finally {
    resetClock();
    await stopSink();
  }
});
