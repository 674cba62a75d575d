// The Store contract: one suite that every backend must pass (sqlite.test.ts runs it on SQLite,
// test/store.redis.test.ts on a real redis-server). Expiry is seen by letting time pass: SQLite
// follows util/clock.ts, so its run moves the clock on (no sleeping); Redis expires keys on its
// own clock, so its run sleeps (the default), and the times here stay short for it. Rates are
// reckoned on util/clock.ts by both backends (Redis is given "now"), so their tests move it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Store } from './store.ts';
import { advanceClock, clock, resetClock } from '../util/clock.ts';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function storeContract(name: string, open: () => Promise<Store>, pass: (ms: number) => Promise<void> = sleep): void {
  const withStore = (title: string, fn: (store: Store) => Promise<void>) =>
    test(`${name}: ${title}`, async () => {
      const store = await open();
      try {
        await fn(store);
      } finally {
        await store.close();
      }
    });

  withStore('relayers: add, get, overwrite, delete', async (s) => {
    await s.relayerAdd('192.0.2.1', 1000, 60_000);
    await s.relayerAdd('2001:db8::1', 2000, 60_000);
    assert.equal(await s.relayerGet('192.0.2.1'), 1000);
    assert.equal(await s.relayerGet('2001:db8::1'), 2000);
    assert.equal(await s.relayerGet('192.0.2.2'), undefined);
    await s.relayerAdd('192.0.2.1', 1500, 60_000);
    assert.equal(await s.relayerGet('192.0.2.1'), 1500, 'a new login replaces the old time');
    assert.equal(await s.relayerDelete(['192.0.2.1', '192.0.2.99']), 1);
    assert.equal(await s.relayerGet('192.0.2.1'), undefined);
  });

  withStore('relayers: list is sorted and includes future-dated entries; expire keeps them', async (s) => {
    const now = Math.floor(Date.now() / 1000);
    await s.relayerAdd('198.51.100.9', now - 7200, 3_600_000);
    await s.relayerAdd('198.51.100.10', now, 3_600_000);
    await s.relayerAdd('198.51.100.11', now + 86_400, 3_600_000);
    assert.deepEqual(await s.relayerList(), [
      { ip: '198.51.100.10', at: now },
      { ip: '198.51.100.11', at: now + 86_400 },
      { ip: '198.51.100.9', at: now - 7200 },
    ]);
    assert.equal(await s.relayerExpire(now - 60), 1, 'only the one older than the cut-off');
    assert.deepEqual((await s.relayerList()).map((r) => r.ip), ['198.51.100.10', '198.51.100.11']);
  });

  withStore('relayers expire by themselves after keepMs', async (s) => {
    await s.relayerAdd('203.0.113.5', 1, 150);
    assert.equal(await s.relayerGet('203.0.113.5'), 1);
    await pass(300);
    assert.equal(await s.relayerGet('203.0.113.5'), undefined);
    assert.deepEqual(await s.relayerList(), []);
  });

  withStore('counters count within their window, then start again', async (s) => {
    assert.equal(await s.counterGet('auth:192.0.2.7'), 0);
    assert.equal(await s.counterIncr('auth:192.0.2.7', 300), 1);
    assert.equal(await s.counterIncr('auth:192.0.2.7', 300), 2);
    assert.equal(await s.counterIncr('auth:192.0.2.8', 300), 1, 'keys are separate');
    assert.equal(await s.counterGet('auth:192.0.2.7'), 2);
    await pass(450);
    assert.equal(await s.counterGet('auth:192.0.2.7'), 0, 'expired');
    assert.equal(await s.counterIncr('auth:192.0.2.7', 300), 1, 'a new window');
    await s.counterReset('auth:192.0.2.7');
    assert.equal(await s.counterGet('auth:192.0.2.7'), 0);
  });

  withStore('counterDecr takes one back within the window, never below 0, and keeps the window', async (s) => {
    await s.counterDecr('auth:gone');
    assert.equal(await s.counterGet('auth:gone'), 0, 'no counter: nothing to take back');
    assert.equal(await s.counterIncr('auth:gone', 300), 1, 'and no negative count was left behind');
    await s.counterIncr('auth:d', 400);
    await s.counterIncr('auth:d', 400);
    await s.counterDecr('auth:d');
    assert.equal(await s.counterGet('auth:d'), 1);
    await s.counterDecr('auth:d');
    await s.counterDecr('auth:d');
    assert.equal(await s.counterGet('auth:d'), 0);
    assert.equal(await s.counterIncr('auth:d', 400), 1, 'counts on from 0');
    await pass(450); // the window started at the first increment
    assert.equal(await s.counterGet('auth:d'), 0);
  });

  withStore('the window is fixed from the first hit, not extended by later ones', async (s) => {
    await s.counterIncr('rate:x', 400);
    await pass(250);
    assert.equal(await s.counterIncr('rate:x', 400), 2);
    await pass(250); // 500 ms after the first hit: the window is over
    assert.equal(await s.counterGet('rate:x'), 0);
  });

  withStore('cache: set, get, replace, delete; keys are separate from counters', async (s) => {
    assert.equal(await s.cacheGet('callout:alice@example.test'), undefined);
    await s.cacheSet('callout:alice@example.test', 'ok', 60_000);
    await s.cacheSet('callout:bob@example.test', '{"code":550,"text":"5.1.1 no such user: ünïcode"}', 60_000);
    assert.equal(await s.cacheGet('callout:alice@example.test'), 'ok');
    assert.equal(await s.cacheGet('callout:bob@example.test'), '{"code":550,"text":"5.1.1 no such user: ünïcode"}', 'any string, verbatim');
    await s.cacheSet('callout:alice@example.test', 'no', 60_000);
    assert.equal(await s.cacheGet('callout:alice@example.test'), 'no', 'a new value replaces the old one');
    await s.cacheSet('same', '', 60_000);
    assert.equal(await s.cacheGet('same'), '', 'the empty string is a value, not a miss');
    assert.equal(await s.counterGet('same'), 0, 'a counter of the same name is another thing');
    assert.equal(await s.cacheDelete('callout:alice@example.test'), true);
    assert.equal(await s.cacheDelete('callout:alice@example.test'), false, 'already gone');
    assert.equal(await s.cacheGet('callout:alice@example.test'), undefined);
    assert.equal(await s.cacheGet('callout:bob@example.test'), '{"code":550,"text":"5.1.1 no such user: ünïcode"}');
  });

  withStore('cache entries expire after their TTL; setting again starts the time again', async (s) => {
    await s.cacheSet('short', 'a', 150);
    await s.cacheSet('long', 'b', 60_000);
    await s.cacheSet('renewed', 'c', 300);
    await pass(200);
    await s.cacheSet('renewed', 'd', 300);
    assert.equal(await s.cacheGet('short'), undefined, 'expired');
    assert.equal(await s.cacheDelete('short'), false, 'an expired key is not there');
    assert.equal(await s.cacheGet('long'), 'b');
    await pass(200); // 400 ms after the first set, 200 ms after the second
    assert.equal(await s.cacheGet('renewed'), 'd', 'the second set started a new TTL');
    await pass(200);
    assert.equal(await s.cacheGet('renewed'), undefined);
  });

  withStore('cacheList: the live entries under a literal prefix, sorted, with their expiry', async (s) => {
    const t0 = clock.now();
    await s.cacheSet('grey:b', '2', 60_000);
    await s.cacheSet('grey:a', '1', 120_000);
    await s.cacheSet('grey:a:ü', '3', 60_000);
    await s.cacheSet('grey', 'not under grey:', 60_000);
    await s.cacheSet('greylist', 'nor this', 60_000);
    await s.cacheSet('grez:a', 'nor this', 60_000);
    await s.cacheSet('grey:gone', 'x', 100);
    await s.counterIncr('grey:counter', 60_000);
    await s.rateAdd('grey:rate', 1, 60_000);
    await pass(250);
    const list = await s.cacheList('grey:');
    assert.deepEqual(
      list.map((e) => [e.key, e.value]),
      [
        ['grey:a', '1'],
        ['grey:a:ü', '3'],
        ['grey:b', '2'],
      ],
      'sorted; expired entries, other prefixes, counters and rates left out',
    );
    const at = list[0]?.expiresAt ?? 0;
    assert.ok(at >= t0 + 120_000 - 1000 && at <= clock.now() + 120_000 + 1000, `expiresAt ${at - t0} ms after the set`);
    assert.deepEqual((await s.cacheList('')).map((e) => e.key), ['grey', 'grey:a', 'grey:a:ü', 'grey:b', 'greylist', 'grez:a'], 'the empty prefix lists everything');
    assert.deepEqual(await s.cacheList('nothing:'), []);
  });

  withStore('cacheList takes wildcard characters in the prefix literally', async (s) => {
    for (const k of ['a*b:1', 'axb:1', 'a?b:1', 'a[b]:1', 'ab:1', 'a%b:1', 'a_b:1', 'a\\b:1', 'a^b:1']) await s.cacheSet(k, k, 60_000);
    for (const prefix of ['a*b:', 'a?b:', 'a[b]:', 'a%b:', 'a_b:', 'a\\b:', 'a^b:']) {
      assert.deepEqual((await s.cacheList(prefix)).map((e) => e.key), [`${prefix}1`], prefix);
    }
  });

  // Rates: both stores reckon on util/clock.ts, so these move it (hours are cheap) and put it back.
  const withClock = (title: string, fn: (store: Store, win: number, toWindowStart: () => void) => Promise<void>) =>
    withStore(title, async (s) => {
      const win = 3_600_000; // long, so the real milliseconds that pass meanwhile do not matter
      try {
        await fn(s, win, () => advanceClock(win - (clock.now() % win)));
      } finally {
        resetClock();
      }
    });
  const near = (actual: number, expected: number, what: string) => assert.ok(Math.abs(actual - expected) < 0.01, `${what}: ${actual}, expected ${expected}`);

  withClock('rates add up within a window; keys and amounts', async (s, win, toWindowStart) => {
    toWindowStart();
    assert.equal(await s.rateGet('r:a', win), 0, 'an unknown key counts 0');
    assert.equal(await s.rateAdd('r:a', 1, win), 1);
    assert.equal(await s.rateAdd('r:a', 1, win), 2);
    assert.equal(await s.rateAdd('r:b', 1500, win), 1500, 'keys are separate; any amount (octets)');
    assert.equal(await s.rateAdd('r:a', 0.5, win), 2.5);
    assert.equal(await s.rateGet('r:a', win), 2.5, 'rateGet does not add');
    assert.equal(await s.rateGet('r:a', win), 2.5);
    assert.equal(await s.counterGet('r:a'), 0, 'a counter of the same name is another thing');
  });

  withClock('a rate is a sliding-window estimate: the previous window fades out as time passes', async (s, win, toWindowStart) => {
    toWindowStart();
    assert.equal(await s.rateAdd('r:s', 10, win), 10);
    advanceClock(win); // the next window has just begun: the last one still counts in full
    near(await s.rateGet('r:s', win), 10, 'one window later');
    advanceClock(win / 2);
    near(await s.rateGet('r:s', win), 5, 'half of the previous window still inside');
    near(await s.rateAdd('r:s', 2, win), 7, 'plus what is added now');
    advanceClock(win / 4);
    near(await s.rateGet('r:s', win), 4.5, 'a quarter left');
    advanceClock(win / 4); // a new window: 10 is two windows back, the 2 now the previous one
    near(await s.rateGet('r:s', win), 2, 'the old window is gone');
    near(await s.rateAdd('r:s', 1, win), 3, 'counting on');
    advanceClock(2 * win);
    assert.equal(await s.rateGet('r:s', win), 0, 'two windows of silence: nothing left');
    assert.equal(await s.rateAdd('r:s', 1, win), 1, 'a fresh start');
  });

  withClock('a negative amount takes back, never below 0', async (s, win, toWindowStart) => {
    toWindowStart();
    await s.rateAdd('r:n', 3, win);
    assert.equal(await s.rateAdd('r:n', -1, win), 2);
    assert.equal(await s.rateGet('r:n', win), 2);
    assert.equal(await s.rateAdd('r:n', -5, win), 0);
    assert.equal(await s.rateAdd('r:n', 1, win), 1);
    assert.equal(await s.rateAdd('r:none', -1, win), 0, 'nothing to take back');
    assert.equal(await s.rateAdd('r:none', 1, win), 1);
  });

  withClock('a rate asked with another window length starts again', async (s, win, toWindowStart) => {
    toWindowStart();
    await s.rateAdd('r:w', 5, win);
    assert.equal(await s.rateGet('r:w', win / 2), 0);
    assert.equal(await s.rateAdd('r:w', 1, win / 2), 1);
    assert.equal(await s.rateGet('r:w', win), 0, 'the old one is replaced');
  });

  withClock('concurrent rate additions are all counted', async (s, win, toWindowStart) => {
    toWindowStart();
    const values = await Promise.all(Array.from({ length: 50 }, () => s.rateAdd('r:race', 1, win)));
    assert.deepEqual([...values].sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i + 1));
    assert.equal(await s.rateGet('r:race', win), 50);
  });

  withStore('concurrent increments are all counted', async (s) => {
    const values = await Promise.all(Array.from({ length: 50 }, () => s.counterIncr('race', 10_000)));
    assert.deepEqual([...values].sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i + 1));
  });
}
