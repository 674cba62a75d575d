// The Store contract on a real redis-server, and what happens when Redis goes away mid-session:
// the RCPT that needs it gets 451 4.3.0, mxguard keeps running, and it recovers when Redis is back.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { storeContract } from '../src/store/contract.ts';
import { createClient } from '@redis/client';
import { RedisStore } from '../src/store/redis.ts';
import { StoreUnavailable } from '../src/store/store.ts';
import { startRedis, type RedisPeer } from './harness/peers.ts';

let redis: RedisPeer;
before(async () => {
  redis = await startRedis();
});
after(async () => {
  await redis.stop();
});

let n = 0;
// Each test gets its own key prefix, so they cannot see each other's keys.
storeContract('redis', async () => RedisStore.open(redis.url, `t${++n}:${Date.now()}:`));

test('redis: a Redis that goes away gives StoreUnavailable quickly, and the store recovers', async () => {
  const store = await RedisStore.open(redis.url, `down:${Date.now()}:`);
  try {
    await store.relayerAdd('192.0.2.44', 44, 60_000);
    const port = redis.port;
    await redis.stop();
    const t0 = Date.now();
    await assert.rejects(store.relayerGet('192.0.2.44'), StoreUnavailable);
    await assert.rejects(store.counterIncr('x', 1000), StoreUnavailable);
    assert.ok(Date.now() - t0 < 5000, 'fails fast, does not hang');
    redis = await startRedis({ port }); // back (empty: it saves nothing)
    const deadline = Date.now() + 10_000;
    let back = false;
    while (!back && Date.now() < deadline) {
      back = await store.relayerAdd('192.0.2.44', 45, 60_000).then(
        () => true,
        () => false,
      );
      if (!back) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(back, 'the store works again once Redis is back');
    assert.equal(await store.relayerGet('192.0.2.44'), 45);
  } finally {
    await store.close();
  }
});

test('redis: a rate key carries a TTL of two windows, so it cannot outlive a host that dies', async () => {
  const prefix = `ttl:${Date.now()}:`;
  const store = await RedisStore.open(redis.url, prefix);
  const raw = createClient({ url: redis.url });
  await raw.connect();
  try {
    await store.rateAdd('ip:192.0.2.9', 1, 60_000);
    const ttl = Number(await raw.sendCommand(['PTTL', `${prefix}rate:ip:192.0.2.9`]));
    assert.ok(ttl > 110_000 && ttl <= 120_000, `PTTL ${ttl}`);
    await store.rateGet('ip:192.0.2.10', 60_000);
    assert.equal(Number(await raw.sendCommand(['EXISTS', `${prefix}rate:ip:192.0.2.10`])), 0, 'reading creates nothing');
  } finally {
    await raw.close();
    await store.close();
  }
});
