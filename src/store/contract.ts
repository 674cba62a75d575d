// The Store contract: one suite that every backend must pass (sqlite.test.ts runs it on SQLite,
// test/store.redis.test.ts on a real redis-server). Expiry is seen by letting time pass: SQLite
// follows util/clock.ts, so its run moves the clock on (no sleeping); Redis expires keys on its
// own clock, so its run sleeps (the default), and the times here stay short for it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Store } from './store.ts';

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

  withStore('concurrent increments are all counted', async (s) => {
    const values = await Promise.all(Array.from({ length: 50 }, () => s.counterIncr('race', 10_000)));
    assert.deepEqual([...values].sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i + 1));
  });
}
