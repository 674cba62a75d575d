// Issue 11, "Must show 5": the selective greet delay and the protocol findings through real SMTP
// sessions, with the reverse DNS from a real dnsmasq on loopback. Every 127.x.y.z is this
// machine: 127.0.0.1 has a forward-confirmed name (client.example.test), the others have no PTR.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { startDnsmasq } from './harness/dns.ts';
import type { ConfigInput } from '../src/config/schema.ts';

const DELAY = 600;
let dns: Awaited<ReturnType<typeof startDnsmasq>>;

before(async () => {
  dns = await startDnsmasq({ records: { a: { 'client.example.test': ['127.0.0.1'] }, ptr: { '127.0.0.1': ['client.example.test'] } } });
});
after(async () => {
  await dns?.stop();
});

async function app(t: { after(fn: () => Promise<void>): void }, smtp: NonNullable<ConfigInput['smtp']> = {}, extra: Partial<ConfigInput> = {}): Promise<TestApp> {
  const a = await startTestApp({
    relay: { forward_from_ip: ['192.0.2.0/24'] }, // loopback is not a relay client here
    dns: { servers: [`127.0.0.1:${dns.port}`], timeout: '1s' },
    smtp: { greet_delay: `${DELAY}ms`, greet_delay_for: 'suspicious', ...smtp },
    ...extra,
  });
  t.after(() => a.stop());
  return a;
}

/** Connects from `from` and reads the banner: the client and how long the banner took. */
async function connect(a: TestApp, from: string, early?: string): Promise<{ c: RawClient; banner: string; ms: number }> {
  const t0 = performance.now();
  const c = await RawClient.connect(a.port, '127.0.0.1', from);
  if (early !== undefined) c.send(early);
  const banner = await c.reply(5000);
  return { c, banner, ms: performance.now() - t0 };
}

/** One message from a connected client (EHLO already sent or not); the replies to MAIL, RCPT, DATA and the dot. */
async function send(c: RawClient, subject: string): Promise<string[]> {
  c.send('MAIL FROM:<a@src.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n');
  const r = await c.replies(3);
  if (!r[2]?.startsWith('354')) return r;
  c.send(`Subject: ${subject}\r\n\r\nbody\r\n.\r\n`);
  return [...r, ...(await c.replies(1))];
}

/** The X-Spam-Status of the delivered message with this subject. */
async function spamStatus(a: TestApp, subject: string): Promise<string> {
  const files = await a.waitMaildir('u', 1);
  const file = files.find((f) => fs.readFileSync(f, 'latin1').includes(`Subject: ${subject}`));
  assert.ok(file, `${subject} delivered`);
  const text = fs.readFileSync(file, 'latin1').replace(/\r?\n[ \t]+/g, ' ');
  return /^X-Spam-Status: (.*)$/m.exec(text)?.[1] ?? '';
}

test('greet_delay_for suspicious: confirmed reverse DNS gets the banner at once, none waits; a client that waited is remembered', async (t) => {
  const a = await app(t);
  const good = await connect(a, '127.0.0.1');
  const bare = await connect(a, '127.0.0.2');
  assert.match(good.banner, /^220 /);
  assert.match(bare.banner, /^220 /);
  assert.ok(good.ms < DELAY / 2, `forward-confirmed: banner in ${good.ms.toFixed(0)} ms`);
  assert.ok(bare.ms >= DELAY - 50, `no PTR: banner after ${bare.ms.toFixed(0)} ms`);
  bare.c.send('QUIT\r\n');
  assert.match(await bare.c.reply(), /^221 /);
  good.c.close();
  // It waited without talking: remembered in the Store, its next connection is not held.
  const again = await connect(a, '127.0.0.2');
  assert.ok(again.ms < DELAY / 2, `remembered: banner in ${again.ms.toFixed(0)} ms`);
  again.c.close();
  const third = await connect(a, '127.0.0.3');
  assert.ok(third.ms >= DELAY - 50, `another client still waits (${third.ms.toFixed(0)} ms)`);
  third.c.close();
});

test('a confirmed client with points from the connect checks waits; relay clients never do', async (t) => {
  const a = await app(t, {}, { ban: { ip: ['127.0.0.1/32'], action: 'score', score: 1 }, relay: { forward_from_ip: ['127.0.0.7/32'] } });
  const listed = await connect(a, '127.0.0.1');
  assert.ok(listed.ms >= DELAY - 50, `ban_ip scored it: banner after ${listed.ms.toFixed(0)} ms`);
  listed.c.close();
  const relay = await connect(a, '127.0.0.7');
  assert.ok(relay.ms < DELAY / 2, `relay client, no PTR: banner in ${relay.ms.toFixed(0)} ms`);
  relay.c.close();
  const all = await app(t, { greet_delay_for: 'all' }, { relay: { forward_from_ip: ['127.0.0.0/8'] } });
  const old = await connect(all, '127.0.0.1');
  assert.ok(old.ms >= DELAY - 50, `greet_delay_for all (the default) holds everyone, relay clients too: ${old.ms.toFixed(0)} ms`);
  old.c.close();
});

test('an early talker without reverse DNS is refused at RCPT and not remembered; one with a confirmed name is not tested', async (t) => {
  const a = await app(t);
  const rude = await connect(a, '127.0.0.4', 'EHLO rude.test\r\n');
  assert.ok(rude.ms >= DELAY - 50, 'it was made to wait');
  assert.match(await rude.c.reply(), /^250-/, 'its EHLO is answered');
  const r = await send(rude.c, 'rude');
  assert.equal(r[0], '250 2.1.0 Ok');
  assert.equal(r[1], '554 5.5.1 Error: protocol error: talked before greeting');
  rude.c.close();
  const back = await connect(a, '127.0.0.4');
  assert.ok(back.ms >= DELAY - 50, `a failed test is not remembered (${back.ms.toFixed(0)} ms)`);
  back.c.close();
  // Not made to wait, so nothing to judge: the banner does not wait for it.
  const hasty = await connect(a, '127.0.0.1', 'EHLO client.example.test\r\n');
  await hasty.c.reply();
  const ok = await send(hasty.c, 'hasty');
  assert.equal(ok[1], '250 2.1.5 Ok');
  hasty.c.close();
  assert.ok(a.logs().some((l) => l.check === 'early_talker' && l.reply === '554 5.5.1 Error: protocol error: talked before greeting'), 'the refusal is logged with its check');
});

test('early_talker: score adds its points to the delivered message (X-Spam-Status tests=early_talker)', async (t) => {
  const a = await app(t, { early_talker: 'score', early_talker_score: 2.5 });
  const rude = await connect(a, '127.0.0.5', 'EHLO rude.test\r\n');
  assert.equal((await rude.c.reply()).split('\n')[0], '250-mx.example.test');
  const r = await send(rude.c, 'scored-early');
  assert.match(r[3] ?? '', /^250 2\.0\.0 Ok: queued/, r.join(' | '));
  rude.c.close();
  assert.match(await spamStatus(a, 'scored-early'), /^No, score=2\.5 required=5\.0 tests=early_talker$/);
});

test('a non-SMTP command: GET closes the session with 521 (reject), or scores and goes on (score)', async (t) => {
  const a = await app(t, { greet_delay: 0 });
  const web = await connect(a, '127.0.0.1');
  web.c.send('GET / HTTP/1.1\r\nHost: mx.example.test\r\n\r\n');
  assert.equal(await web.c.reply(), '521 5.5.1 Error: non-SMTP command, closing connection');
  assert.ok(await web.c.closed(), 'the connection is closed');
  const b = await app(t, { greet_delay: 0, non_smtp_command: 'score', non_smtp_command_score: 4 });
  const odd = await connect(b, '127.0.0.1');
  odd.c.send('CONNECT mx.example.test:25 HTTP/1.0\r\n');
  assert.equal(await odd.c.reply(), '500 5.5.2 Error: command not recognized');
  odd.c.send('EHLO odd.test\r\n');
  await odd.c.reply();
  const r = await send(odd.c, 'scored-web');
  assert.match(r[3] ?? '', /^250 2\.0\.0 Ok: queued/, r.join(' | '));
  odd.c.close();
  assert.match(await spamStatus(b, 'scored-web'), /^No, score=4\.0 required=5\.0 tests=non_smtp_command$/);
});

test('bare pipelining after HELO: scored into the message (score), 521 and closed (reject); pipelining after EHLO is fine', async (t) => {
  const a = await app(t, { greet_delay: 0, bare_pipelining: 'score', bare_pipelining_score: 3 });
  const old = await connect(a, '127.0.0.1');
  old.c.send('HELO old.test\r\n');
  assert.equal(await old.c.reply(), '250 mx.example.test');
  const r = await send(old.c, 'scored-pipe');
  assert.match(r[3] ?? '', /^250 2\.0\.0 Ok: queued/, r.join(' | '));
  old.c.close();
  assert.match(await spamStatus(a, 'scored-pipe'), /^No, score=3\.0 required=5\.0 tests=bare_pipelining$/);
  const modern = await connect(a, '127.0.0.1');
  modern.c.send('EHLO modern.test\r\n');
  await modern.c.reply();
  const fine = await send(modern.c, 'clean-pipe');
  assert.match(fine[3] ?? '', /^250 2\.0\.0 Ok: queued/);
  modern.c.close();
  const files = await a.waitMaildir('u', 2);
  const clean = files.map((f) => fs.readFileSync(f, 'latin1')).find((m) => m.includes('Subject: clean-pipe')) ?? '';
  assert.match(clean, /X-Spam-Status: No, score=0\.0 required=5\.0 tests=none/, 'MAIL, RCPT, DATA grouped after EHLO (RFC 2920)');

  const b = await app(t, { greet_delay: 0, bare_pipelining: 'reject' });
  const rude = await connect(b, '127.0.0.1');
  rude.c.send('HELO rude.test\r\nMAIL FROM:<a@src.test>\r\n');
  assert.deepEqual(await rude.c.replies(2), ['250 mx.example.test', '521 5.5.1 Error: SMTP protocol synchronization, closing connection']);
  assert.ok(await rude.c.closed());
});
