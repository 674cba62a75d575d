// The pure parts of recipient_callout and its caching / coalescing, with a scripted prober and a
// real SQLite store; the probes against a real Postfix, Dovecot LMTP and smtp-sink are in
// test/recipient-callout.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { calloutKey, calloutRefusal, calloutTarget, decodeAnswer, encodeAnswer, probeAnswer, recipientCalloutCheck } from './recipient_callout.ts';
import { configSchema, type ConfigInput } from '../../config/schema.ts';
import type { ProbeResult, RecipientProber } from '../../smtp-client/client.ts';
import type { RcptContext } from '../context.ts';
import type { Verdict } from '../verdict.ts';
import { parseMailbox } from '../../mail/address.ts';
import { SqliteStore } from '../../store/sqlite.ts';
import type { Store } from '../../store/store.ts';
import { advanceClock, resetClock } from '../../util/clock.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function config(callout: NonNullable<NonNullable<ConfigInput['recipients']>['callout']>, deliver = 'smtp://127.0.0.1:25') {
  return configSchema.parse({ hostname: 'mx.example.test', local_domains: ['example.test'], deliver, recipients: { callout } });
}

function ctx(rcpt: string): RcptContext {
  const a = parseMailbox(rcpt, true);
  if (typeof a === 'string') throw new Error(a);
  return {
    session: { sid: 's', remoteIp: '203.0.113.5', remotePort: 1, localIp: '192.0.2.25', localPort: 25, tls: false, esmtp: true, earlyTalker: false, rcptCount: 0 },
    tx: { mailFrom: { address: 'someone@src.test', local: 'someone', domain: 'src.test', utf8: false }, params: {}, rcpts: [] },
    rcpt: a,
    score: 0,
  };
}

/** A prober that answers from a script after `delayMs`, and counts what it was asked. */
function scripted(answer: (rcpt: string) => ProbeResult, delayMs = 0): RecipientProber & { asked: string[]; senders: string[] } {
  const asked: string[] = [];
  const senders: string[] = [];
  return {
    name: 'smtp://downstream.test:25',
    asked,
    senders,
    async probe(sender, rcpt) {
      asked.push(rcpt);
      senders.push(sender);
      if (delayMs > 0) await sleep(delayMs);
      return answer(rcpt);
    },
    async close() {},
  };
}

const users = new Set(['alice@example.test']);
const mailStore = (rcpt: string): ProbeResult =>
  users.has(rcpt.toLowerCase()) ? { step: 'rcpt', code: 250, text: '2.1.5 Ok' } : { step: 'rcpt', code: 550, text: `5.1.1 <${rcpt}>: Recipient address rejected: User unknown in virtual mailbox table` };

async function withStore(fn: (store: Store) => Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-callout-'));
  const store = new SqliteStore(path.join(dir, 'state.db'));
  try {
    await fn(store);
  } finally {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const run = async (check: ReturnType<typeof recipientCalloutCheck>, rcpt: string): Promise<Verdict> => check.run(ctx(rcpt));
const reply = (v: Verdict): string => (v.kind === 'reject' || v.kind === 'tempfail' ? `${v.code} ${v.enhanced} ${v.text}` : v.kind);

test('calloutTarget: target, else deliver when it is SMTP or LMTP; the schema refuses a callout nobody can answer', () => {
  assert.equal(calloutTarget(config({ target: 'lmtp://127.0.0.1:24' })), 'lmtp://127.0.0.1:24');
  assert.equal(calloutTarget(config({})), 'smtp://127.0.0.1:25');
  assert.equal(calloutTarget(config({}, 'lmtp://[::1]:24')), 'lmtp://[::1]:24');
  assert.equal(calloutTarget(config({ target: 'smtp://10.0.0.1:25' }, 'maildir:/var/mail')), 'smtp://10.0.0.1:25');
  assert.throws(() => config({}, 'maildir:/var/mail'), /needs a target/);
  assert.throws(() => configSchema.parse({ recipients: { callout: {} } }), /needs a target/, 'the default deliver is a Maildir');
});

test('defaults, and the sender: <> is the null sender, brackets are optional', () => {
  const c = config({}).recipients.callout;
  assert.deepEqual(c, { positive_ttl: 86_400_000, negative_ttl: 3_600_000, timeout: 30_000, sender: '' });
  assert.equal(config({ sender: '<>' }).recipients.callout?.sender, '');
  assert.equal(config({ sender: '<verify@mx.example.test>' }).recipients.callout?.sender, 'verify@mx.example.test');
  assert.equal(config({ sender: 'verify@mx.example.test' }).recipients.callout?.sender, 'verify@mx.example.test');
  for (const bad of ['verify', 'a b@c', '<a@b', 'a@b>\r\nDATA']) assert.throws(() => config({ sender: bad }), /not an address/, bad);
  assert.throws(() => config({ timeout: 0 }), /longer than 0/);
});

test('probeAnswer: only a 2xx or 5xx to RCPT is an answer', () => {
  assert.deepEqual(probeAnswer({ step: 'rcpt', code: 250, text: '2.1.5 Ok' }), { code: 250, text: '2.1.5 Ok' });
  assert.deepEqual(probeAnswer({ step: 'rcpt', code: 550, text: '5.1.1 no' }), { code: 550, text: '5.1.1 no' });
  assert.equal(probeAnswer({ step: 'rcpt', code: 450, text: '4.2.0 greylisted' }), undefined);
  assert.equal(probeAnswer({ step: 'rcpt', code: 421, text: '4.3.2 shutting down' }), undefined);
  assert.equal(probeAnswer({ step: 'mail', code: 553, text: '5.7.1 <> not welcome' }), undefined, 'a refused MAIL FROM says nothing about the user');
  assert.equal(probeAnswer({ step: 'session', code: 554, text: '5.7.1 no service' }), undefined);
  assert.equal(probeAnswer({ step: 'session', code: 421, text: '4.4.1 connect failed' }), undefined);
});

test('cache values round-trip; anything else is a miss', () => {
  const a = { code: 550, text: '5.1.1 <ü@example.test>: "quoted" \\ text' };
  assert.deepEqual(decodeAnswer(encodeAnswer(a)), a);
  for (const raw of ['', 'ok', '{}', '[]', 'null', '{"code":"550","text":"x"}', '{"code":450,"text":"x"}', '{"code":250.5,"text":"x"}', '{"code":250}']) assert.equal(decodeAnswer(raw), undefined, raw);
  assert.equal(calloutKey('Alice@example.test'), calloutKey('alice@example.test'));
});

test('calloutRefusal: unknown users get 550 5.1.1; another permanent reason is passed on', () => {
  const r = (code: number, text: string) => reply(calloutRefusal('x@example.test', { code, text }));
  const unknown = '550 5.1.1 <x@example.test>: Recipient address rejected: User unknown';
  assert.equal(r(550, '5.1.1 <x@example.test>: Recipient address rejected: User unknown in virtual mailbox table'), unknown);
  assert.equal(r(550, 'No such user here'), unknown, 'no enhanced code');
  assert.equal(r(553, '5.1.3 bad address'), unknown);
  assert.equal(r(552, '5.2.2 <x@example.test>: Mailbox is full'), '552 5.2.2 <x@example.test>: Recipient address rejected: Mailbox is full');
  assert.equal(r(554, '5.7.1 <x@example.test>: Recipient address rejected: Access denied'), '554 5.7.1 <x@example.test>: Recipient address rejected: Access denied');
  assert.equal(r(500, '5.3.0 Error: command failed'), '550 5.3.0 <x@example.test>: Recipient address rejected: Error: command failed', '500 is not a RCPT refusal code');
  assert.equal(r(550, '5.7.1'), '550 5.7.1 <x@example.test>: Recipient address rejected: Mailbox unavailable');
  assert.match(r(550, `5.7.1 ${'x'.repeat(1000)}`), /^550 5\.7\.1 .{1,260}$/);
});

test('answers are cached with their TTLs; local domains only; postmaster is never asked', async () => {
  await withStore(async (store) => {
    const prober = scripted(mailStore);
    const check = recipientCalloutCheck(config({ positive_ttl: '1h', negative_ttl: '10m', sender: 'verify@mx.example.test' }), { store, prober });
    assert.equal((await run(check, 'alice@example.test')).kind, 'continue');
    assert.equal(reply(await run(check, 'nobody@example.test')), '550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown');
    assert.equal((await run(check, 'Alice@Example.test')).kind, 'continue');
    assert.equal((await run(check, 'NOBODY@example.test')).kind, 'reject');
    assert.equal((await run(check, 'postmaster@example.test')).kind, 'continue');
    assert.equal((await run(check, 'postmaster')).kind, 'continue', 'a bare <postmaster>');
    assert.equal((await run(check, 'someone@elsewhere.test')).kind, 'continue');
    assert.deepEqual(prober.asked, ['alice@example.test', 'nobody@example.test'], 'one probe per address; none for postmaster or other domains');
    assert.deepEqual(prober.senders, ['verify@mx.example.test', 'verify@mx.example.test']);
    const v = await run(check, 'alice@example.test');
    assert.match(v.kind === 'continue' ? (v.log ?? '') : '', /cached answer 250/);
    users.add('nobody@example.test');
    try {
      assert.equal((await run(check, 'nobody@example.test')).kind, 'reject', 'within negative_ttl the cached answer stands, though the user exists now');
      advanceClock(10 * 60_000 + 1000); // the store's clock (util/clock.ts): past negative_ttl, within positive_ttl
      assert.equal((await run(check, 'nobody@example.test')).kind, 'continue', 'the negative answer expired; the user exists now');
      assert.equal((await run(check, 'alice@example.test')).kind, 'continue');
      assert.deepEqual(prober.asked, ['alice@example.test', 'nobody@example.test', 'nobody@example.test'], 'alice still from the cache');
    } finally {
      users.delete('nobody@example.test');
      resetClock();
    }
  });
});

test('trouble is 451 4.4.3 and never cached; a TTL of 0 caches nothing', async () => {
  await withStore(async (store) => {
    let next: ProbeResult = { step: 'session', code: 421, text: '4.4.1 connect to downstream.test:25 failed: connect ECONNREFUSED' };
    const prober = scripted(() => next);
    const check = recipientCalloutCheck(config({ positive_ttl: 0 }), { store, prober });
    const v = await run(check, 'alice@example.test');
    assert.equal(reply(v), '451 4.4.3 <alice@example.test>: Recipient address rejected: unverified address, try again later');
    assert.match(v.kind === 'tempfail' ? (v.log ?? '') : '', /ECONNREFUSED/);
    for (const r of [
      { step: 'rcpt', code: 450, text: '4.2.0 try later' },
      { step: 'mail', code: 550, text: '5.7.1 null sender refused' },
      { step: 'session', code: 554, text: '5.7.1 go away' },
    ] as const) {
      next = r;
      assert.equal((await run(check, 'alice@example.test')).kind, 'tempfail', JSON.stringify(r));
    }
    next = { step: 'rcpt', code: 250, text: '2.1.5 Ok' };
    assert.equal((await run(check, 'alice@example.test')).kind, 'continue');
    assert.equal((await run(check, 'alice@example.test')).kind, 'continue');
    assert.equal(prober.asked.length, 6, 'nothing was cached: trouble never, positives not with positive_ttl 0');
    assert.equal(await store.cacheGet(calloutKey('alice@example.test')), undefined);
  });
});

test('sessions asking about one address at once share one probe', async () => {
  await withStore(async (store) => {
    const prober = scripted(mailStore, 100);
    const check = recipientCalloutCheck(config({}), { store, prober });
    const verdicts = await Promise.all([
      ...Array.from({ length: 5 }, () => run(check, 'alice@example.test')),
      ...Array.from({ length: 5 }, () => run(check, 'Nobody@example.test')),
    ]);
    assert.deepEqual(
      verdicts.map((v) => v.kind),
      [...Array<string>(5).fill('continue'), ...Array<string>(5).fill('reject')],
    );
    assert.deepEqual(prober.asked, ['alice@example.test', 'Nobody@example.test']);
  });
});

test('the client waits at most `timeout`; the probe goes on and its answer is cached', async () => {
  await withStore(async (store) => {
    const prober = scripted(mailStore, 300);
    const check = recipientCalloutCheck(config({ timeout: '100ms' }), { store, prober });
    const t0 = Date.now();
    assert.equal(reply(await run(check, 'nobody@example.test')), '451 4.4.3 <nobody@example.test>: Recipient address rejected: unverified address, try again later');
    assert.ok(Date.now() - t0 < 250);
    await sleep(300);
    assert.equal((await run(check, 'nobody@example.test')).kind, 'reject', 'answered from the cache');
    assert.equal(prober.asked.length, 1);
  });
});

test('an unreachable store: every RCPT is asked, nothing is refused for it', async () => {
  const down = async (): Promise<never> => {
    throw new Error('redis: The client is closed');
  };
  const store = { cacheGet: down, cacheSet: down } as unknown as Store;
  const prober = scripted(mailStore);
  const check = recipientCalloutCheck(config({}), { store, prober });
  assert.equal((await run(check, 'alice@example.test')).kind, 'continue');
  assert.equal((await run(check, 'alice@example.test')).kind, 'continue');
  assert.equal((await run(check, 'nobody@example.test')).kind, 'reject');
  assert.equal(prober.asked.length, 3);
});
