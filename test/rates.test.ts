// Issue 11, volume limits and the spam throttle, through real SMTP (Must show 3 and 4): DMail's
// fromip_max and fromip_nolimit, a recipients-per-hour-per-sender rule, a bad_rcpts rule against
// recipients.file, a connections rule, the throttle holding a fast client's replies and not a slow
// one's (nor anyone else's meanwhile), and fromip_max counting the messages of two mxguard
// instances that share one real redis-server. Windows move on the injected clock (util/clock.ts),
// which both stores follow for rates: no test sleeps through an hour.
import { test, after, afterEach, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTestApp, withTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { startRedis, type RedisPeer } from './harness/peers.ts';
import { advanceClock, clock, resetClock } from '../src/util/clock.ts';
import type { ConfigInput } from '../src/config/schema.ts';

afterEach(() => resetClock());

let redis: RedisPeer;
before(async () => {
  redis = await startRedis();
});
after(async () => {
  await redis.stop();
});

/** A session from `from` (any 127.x address is this machine), past the banner and EHLO. */
async function open(port: number, from: string): Promise<RawClient> {
  const c = await RawClient.connect(port, '127.0.0.1', from);
  assert.match(await c.reply(), /^220 /);
  c.send('EHLO client.example.test\r\n');
  assert.match(await c.reply(), /^250/);
  return c;
}

interface Sent {
  mail: string;
  rcpts: string[];
  /** The reply to the end of DATA, when a recipient was taken. */
  data?: string;
  /** Milliseconds from the final dot to that reply. */
  ms?: number;
}

/** One transaction, a command at a time; DATA only when a recipient was accepted. */
async function send(c: RawClient, sender: string, rcpts: string[]): Promise<Sent> {
  c.send(`MAIL FROM:<${sender}>\r\n`);
  const mail = await c.reply();
  const out: Sent = { mail, rcpts: [] };
  if (!mail.startsWith('250')) return out;
  for (const r of rcpts) {
    c.send(`RCPT TO:<${r}>\r\n`);
    out.rcpts.push(await c.reply());
  }
  if (!out.rcpts.some((r) => r.startsWith('250'))) {
    c.send('RSET\r\n');
    await c.reply();
    return out;
  }
  c.send('DATA\r\n');
  assert.match(await c.reply(), /^354 /);
  c.send(`From: <${sender}>\r\nSubject: rates\r\n\r\nhello\r\n`);
  const t0 = performance.now();
  c.send('.\r\n');
  out.data = await c.reply(10_000);
  out.ms = performance.now() - t0;
  return out;
}

const queued = (s: Sent) => s.data?.startsWith('250') === true;

/** Loopback is a relay client by default, and relay clients are never limited: only 127.0.0.1 is here. */
const relay = { forward_from_ip: ['127.0.0.1'] };

test('fromip_max counts a message at MAIL: sessions in parallel cannot pass the limit together, and a transaction that queues nothing is taken back', async () => {
  await withTestApp({ relay, limits: { fromip_max: 2, fromip_nolimit: [] } }, async (app) => {
    // Transactions that end without a message: RSET, every recipient refused, QUIT. None stays counted.
    const c = await open(app.port, '127.0.0.2');
    for (let i = 0; i < 3; i++) {
      c.send('MAIL FROM:<bob@sender.test>\r\n');
      assert.match(await c.reply(), /^250 /);
      c.send('RCPT TO:<alice@example.test>\r\n');
      assert.match(await c.reply(), /^250 /, `abandoned transaction ${i + 1} is not counted`);
      c.send('RSET\r\n');
      assert.match(await c.reply(), /^250 /);
    }
    const relayed = await send(c, 'bob@sender.test', ['someone@elsewhere.test']);
    assert.match(relayed.rcpts[0] ?? '', /^5/, 'relaying refused');
    const q = await open(app.port, '127.0.0.2');
    q.send('MAIL FROM:<bob@sender.test>\r\n');
    assert.match(await q.reply(), /^250 /);
    q.send('QUIT\r\n');
    assert.match(await q.reply(), /^221 /);
    q.close();
    // Three sessions of one client begin a message each before any is queued: the limit is two.
    const s = await Promise.all([0, 1, 2].map(() => open(app.port, '127.0.0.2')));
    const rcpts: string[] = [];
    for (const x of s) {
      x.send('MAIL FROM:<bob@sender.test>\r\n');
      assert.match(await x.reply(), /^250 /);
    }
    for (const x of s) {
      x.send('RCPT TO:<alice@example.test>\r\n');
      rcpts.push(await x.reply());
    }
    assert.deepEqual(rcpts.map((r) => r.slice(0, 3)), ['250', '250', '451'], rcpts.join(' | '));
    for (const x of s.slice(0, 2)) {
      x.send('DATA\r\n');
      assert.match(await x.reply(), /^354 /);
      x.send('Subject: parallel\r\n\r\nhello\r\n.\r\n');
      assert.match(await x.reply(10_000), /^250 /);
    }
    assert.equal((await app.waitMaildir('alice', 2)).length, 2);
    // Both queued, the refused one taken back: the client is at its limit, not past it.
    const next = await send(c, 'bob@sender.test', ['alice@example.test']);
    assert.match(next.rcpts[0] ?? '', /^451 4\.7\.1 Rate limit fromip_max/);
    for (const x of [c, ...s]) x.close();
  });
});

test('fromip_max: the messages per hour of one client IP; fromip_nolimit clients are not counted; an hour later it may send again', async () => {
  await withTestApp({ relay, limits: { fromip_max: 3, fromip_nolimit: ['127.0.0.3'] } }, async (app) => {
    const c = await open(app.port, '127.0.0.2');
    for (let i = 0; i < 3; i++) assert.ok(queued(await send(c, 'bob@sender.test', ['alice@example.test'])), `message ${i + 1}`);
    // The fourth: smtp.delay_reject (the default) answers MAIL-time refusals at RCPT.
    const fourth = await send(c, 'bob@sender.test', ['alice@example.test']);
    assert.match(fourth.mail, /^250 /);
    assert.deepEqual(fourth.rcpts, ['451 4.7.1 Rate limit fromip_max reached (3 messages per 1h per client address), try again in 3600 seconds']);
    assert.equal(fourth.data, undefined);
    const line = app.logs().find((l) => l.setting === 'limits.fromip_max' && l.phase === 'rcpt');
    assert.ok(line, 'the refusal is logged with the rule');
    assert.equal(line.check, 'rates_mail');
    assert.match(String(line.reply), /^451 4\.7\.1 Rate limit fromip_max/);

    const exempt = await open(app.port, '127.0.0.3');
    for (let i = 0; i < 5; i++) assert.ok(queued(await send(exempt, 'carol@sender.test', ['alice@example.test'])), `fromip_nolimit client, message ${i + 1}`);
    const other = await open(app.port, '127.0.0.4');
    assert.ok(queued(await send(other, 'dave@sender.test', ['alice@example.test'])), 'another address has its own count');

    advanceClock(2 * 3_600_000);
    assert.ok(queued(await send(c, 'bob@sender.test', ['alice@example.test'])), 'two hours on, the count has gone');
    assert.equal((await app.waitMaildir('alice', 10)).length, 10);
    for (const s of [c, exempt, other]) s.close();
  });
});

test('a recipients-per-hour-per-sender rule: counts the recipients taken, per sender, and refuses past the limit', async () => {
  const rule = { name: 'rcpts_per_sender', key: 'sender', count: 'recipients', max: 3, per: '1h' } as const;
  await withTestApp({ relay, limits: { rates: [rule] } }, async (app) => {
    advanceClock(3_600_000 - (clock.now() % 3_600_000)); // at the start of a fixed window: see the end
    const c = await open(app.port, '127.0.0.2');
    // Two taken; the relay refusal in between is not counted.
    const first = await send(c, 'bob@sender.test', ['alice@example.test', 'someone@elsewhere.test', 'bob@example.test']);
    assert.deepEqual(first.rcpts.map((r) => r.slice(0, 3)), ['250', '554', '250']);
    assert.ok(queued(first));
    const second = await send(c, 'BOB@sender.test', ['carol@example.test', 'dave@example.test']);
    assert.match(second.rcpts[0] ?? '', /^250 /, 'the third recipient of the hour');
    assert.equal(second.rcpts[1], '451 4.7.1 Rate limit rcpts_per_sender reached (3 recipients per 1h per sender), try again in 3600 seconds', 'the same sender in another case');
    assert.ok(queued(second), 'the message goes to the recipients taken');
    const line = app.logs().find((l) => l.setting === 'limits.rates.rcpts_per_sender');
    assert.ok(line && line.rcpt === 'dave@example.test' && line.from === 'BOB@sender.test', JSON.stringify(line));
    const other = await send(c, 'eve@sender.test', ['alice@example.test', 'bob@example.test', 'carol@example.test']);
    assert.deepEqual(other.rcpts.map((r) => r.slice(0, 3)), ['250', '250', '250'], 'another sender, from the same client, has its own count');
    // A sliding window: an hour on, the last hour's count has faded only by the part of it left
    // behind (the estimate counts the previous fixed window in proportion); two hours on, it is gone.
    advanceClock(3_600_000);
    assert.match((await send(c, 'bob@sender.test', ['dave@example.test'])).rcpts[0] ?? '', /^451 4\.7\.1 Rate limit rcpts_per_sender/);
    advanceClock(3_600_000);
    assert.match((await send(c, 'bob@sender.test', ['dave@example.test'])).rcpts[0] ?? '', /^250 /);
    c.close();
  });
});

test('a bad_rcpts rule: unknown recipients (550 5.1.1 from recipients.file) are counted; past the limit every RCPT is refused', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-rates-rcpts-'));
  const file = path.join(dir, 'recipients');
  fs.writeFileSync(file, 'alice@example.test\nbob@example.test\n');
  try {
    await withTestApp({ relay, recipients: { file }, limits: { rates: [{ name: 'dictionary', key: 'client_ip', count: 'bad_rcpts', max: 2, per: '10m', action: 'reject' }] } }, async (app) => {
      const c = await open(app.port, '127.0.0.2');
      const probe = await send(c, 'spammer@sender.test', ['nobody@example.test', 'alice@example.test', 'noone@example.test', 'bob@example.test', 'alice@example.test']);
      assert.match(probe.rcpts[0] ?? '', /^550 5\.1\.1 /);
      assert.match(probe.rcpts[1] ?? '', /^250 /, 'one unknown user is allowed');
      assert.match(probe.rcpts[2] ?? '', /^550 5\.1\.1 /);
      // Two unknown users: the limit; from now on not even a real user is taken (nor told apart).
      assert.equal(probe.rcpts[3], '550 5.7.1 Rate limit dictionary reached (2 bad rcpts per 10m per client address)');
      assert.equal(probe.rcpts[4], probe.rcpts[3]);
      assert.ok(queued(probe), 'the recipient taken before the limit gets its message');
      const again = await open(app.port, '127.0.0.2');
      assert.match((await send(again, 'x@sender.test', ['bob@example.test'])).rcpts[0] ?? '', /^550 5\.7\.1 Rate limit dictionary/, 'a new connection is no way round it');
      const other = await open(app.port, '127.0.0.3');
      assert.ok(queued(await send(other, 'y@sender.test', ['bob@example.test'])), 'another client is not affected');
      advanceClock(20 * 60_000);
      assert.ok(queued(await send(again, 'x@sender.test', ['bob@example.test'])), 'two windows later it may try again');
      for (const s of [c, again, other]) s.close();
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a connections rule refuses the connection over the limit at once (smtp.delay_reject off); relay clients are exempt', async () => {
  const rule = { name: 'conns', key: 'client_ip', count: 'connections', max: 2, per: '1m' } as const;
  await withTestApp({ smtp: { delay_reject: false }, relay: { forward_from_ip: ['127.0.0.9'] }, limits: { rates: [rule] } }, async (app) => {
    const ok = [await RawClient.connect(app.port, '127.0.0.1', '127.0.0.2'), await RawClient.connect(app.port, '127.0.0.1', '127.0.0.2')];
    for (const c of ok) assert.match(await c.reply(), /^220 /);
    const third = await RawClient.connect(app.port, '127.0.0.1', '127.0.0.2');
    assert.equal(await third.reply(), '451 4.7.1 Rate limit conns reached (2 connections per 1m per client address), try again in 60 seconds');
    assert.ok(await third.closed());
    for (let i = 0; i < 4; i++) {
      const relay = await RawClient.connect(app.port, '127.0.0.1', '127.0.0.9');
      assert.match(await relay.reply(), /^220 /, 'a relay client is never counted');
      relay.close();
    }
    advanceClock(2 * 60_000);
    const later = await RawClient.connect(app.port, '127.0.0.1', '127.0.0.2');
    assert.match(await later.reply(), /^220 /);
    for (const c of [...ok, third, later]) c.close();
  });
});

test('the throttle holds the reply after DATA longer for each message over the rate, never a slow client, and never anyone else', async () => {
  const step = 400;
  await withTestApp({ relay, throttle: { rate: 2, step: `${step}ms`, max: '1s', except: [] } }, async (app) => {
    const throttled = () => app.logs().filter((l) => l.check === 'throttle' && l.phase === 'data').map((l) => l.delayMs);
    // Slow: five messages, a minute apart (on the injected clock).
    const slow = await open(app.port, '127.0.0.5');
    const slowMs: number[] = [];
    for (let i = 0; i < 5; i++) {
      const s = await send(slow, 'slow@sender.test', ['alice@example.test']);
      assert.ok(queued(s));
      slowMs.push(s.ms ?? NaN);
      advanceClock(60_000);
    }
    assert.deepEqual(throttled(), [], 'a client at one message a minute is never held');
    // Fast: five messages at once from another address.
    const fast = await open(app.port, '127.0.0.4');
    const fastMs: number[] = [];
    for (let i = 0; i < 4; i++) {
      const s = await send(fast, 'fast@sender.test', ['alice@example.test']);
      assert.ok(queued(s));
      fastMs.push(s.ms ?? NaN);
    }
    assert.deepEqual(throttled(), [step, 2 * step], 'the third and fourth messages in a minute are held, each longer');
    // The fifth is held to the maximum; meanwhile another client's message goes through unheld.
    const fifth = send(fast, 'fast@sender.test', ['alice@example.test']);
    const other = await open(app.port, '127.0.0.6');
    const t0 = performance.now();
    const bystander = await send(other, 'other@sender.test', ['alice@example.test']);
    const bystanderDone = performance.now() - t0;
    const held = await fifth;
    assert.ok(queued(bystander) && queued(held));
    fastMs.push(held.ms ?? NaN);
    assert.deepEqual(throttled(), [step, 2 * step, 1000], 'capped at throttle.max');
    assert.ok(bystanderDone < (held.ms ?? 0), `the other session (${bystanderDone.toFixed(0)} ms) did not wait for the held one (${held.ms?.toFixed(0)} ms)`);
    // The holds are real: each held reply came that much later than the unheld ones.
    const unheld = Math.max(...slowMs, fastMs[0] ?? 0, fastMs[1] ?? 0);
    assert.ok((fastMs[2] ?? 0) >= step - 50 && (fastMs[3] ?? 0) >= 2 * step - 50 && (fastMs[4] ?? 0) >= 950, `fast: ${fastMs.map((m) => m.toFixed(0)).join(', ')} ms`);
    assert.ok(unheld < (fastMs[2] ?? 0), `unheld replies (${unheld.toFixed(0)} ms at most) came sooner than the first held one`);
    for (const s of [slow, fast, other]) s.close();
  });
});

test('two mxguard instances on one redis-server: fromip_max counts the messages of both, a recipients rule the recipients of both', async () => {
  const store = { backend: 'redis', redis_url: redis.url, redis_prefix: `rates-${Date.now()}:` } as const;
  // bob's client (127.0.0.2) is not held to the recipients rule: carol's is.
  const limits: ConfigInput['limits'] = { fromip_max: 4, fromip_nolimit: [], rates: [{ name: 'rcpts', key: 'sender', count: 'recipients', max: 2, per: '1h', except: ['127.0.0.2'] }] };
  const a = await startTestApp({ relay, store, limits });
  let b: TestApp | undefined;
  try {
    b = await startTestApp({ relay, store, limits });
    const ca = await open(a.port, '127.0.0.2');
    const cb = await open(b.port, '127.0.0.2');
    assert.ok(queued(await send(ca, 'bob@sender.test', ['alice@example.test'])));
    assert.ok(queued(await send(cb, 'bob@sender.test', ['alice@example.test'])));
    assert.ok(queued(await send(ca, 'bob@sender.test', ['alice@example.test'])));
    assert.ok(queued(await send(cb, 'bob@sender.test', ['alice@example.test'])), 'four in all: two on each');
    for (const c of [ca, cb]) {
      const refused = await send(c, 'bob@sender.test', ['alice@example.test']);
      assert.match(refused.rcpts[0] ?? '', /^451 4\.7\.1 Rate limit fromip_max reached \(4 messages per 1h/, 'neither instance takes a fifth');
    }
    const other = await open(a.port, '127.0.0.3');
    const carol = await send(other, 'carol@sender.test', ['x@elsewhere.test', 'alice@example.test', 'bob@example.test']);
    assert.deepEqual(carol.rcpts.map((r) => r.slice(0, 3)), ['554', '250', '250'], 'the relay refusal took its recipient count back (in Redis)');
    assert.ok(queued(carol), 'another address is counted apart');
    const otherOnB = await open(b.port, '127.0.0.3');
    assert.match((await send(otherOnB, 'carol@sender.test', ['dave@example.test'])).rcpts[0] ?? '', /^451 4\.7\.1 Rate limit rcpts reached/, "the other instance counted carol's two recipients");
    advanceClock(2 * 3_600_000); // the injected clock reaches Redis too: the script is given "now"
    assert.ok(queued(await send(ca, 'bob@sender.test', ['alice@example.test'])));
    for (const c of [ca, cb, other, otherOnB]) c.close();
  } finally {
    await b?.stop();
    await a.stop();
  }
});

// Found in review: the throttle holds the reply after the final dot, before the message is
// committed. A client that gives up and aborts the connection meanwhile was never answered, so it
// will send the message again: queuing this copy too would deliver it twice. Failed on the old
// code (the message was committed and queued after the client had gone). A client that only
// half-closes (FIN) may still read the reply (Exim's "." + QUIT ending): that one is queued.
test('a client that goes away while its reply is held gets no message queued (it will send it again)', async () => {
  await withTestApp({ relay, throttle: { rate: 1, step: '1500ms', max: '2s', except: [] } }, async (app) => {
    const c = await open(app.port, '127.0.0.7');
    for (let i = 0; i < 2; i++) assert.ok(queued(await send(c, 'gone@sender.test', ['alice@example.test'])), `message ${i + 1}`);
    // The second and third are held: the client aborts 200 ms into the third's hold.
    c.send('MAIL FROM:<gone@sender.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n');
    assert.deepEqual((await c.replies(3)).map((r) => r.slice(0, 3)), ['250', '250', '354']);
    c.send('Subject: never acknowledged\r\n\r\nhello\r\n.\r\n');
    const held = () => app.logs().filter((l) => l.check === 'throttle' && l.phase === 'data').length === 2;
    const t0 = Date.now();
    while (!held() && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 10));
    assert.ok(held(), 'the reply is being held');
    await new Promise((r) => setTimeout(r, 200));
    c.reset(); // an RST: a FIN alone would look like a half-close after the message, which is answered and queued
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal(app.maildir('alice').length, 2, `only the two acknowledged messages: ${JSON.stringify(app.logs().slice(-12).map((l) => l.msg))}`);
    assert.ok(app.logs().some((l) => l.msg === 'client gone before the reply to its message: not queued'));
  });
});
