// ReadOnlyStore (src/store/read-only.ts) over a real SQLite store: reads see the real store and
// this process's own writes; the real one is never written.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SqliteStore } from './sqlite.ts';
import { ReadOnlyStore } from './read-only.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-readonly-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
let n = 0;

test('ReadOnlyStore: reads see the real store and this process\'s own writes; the real one is untouched', async () => {
  const real = new SqliteStore(path.join(dir, `state-${++n}.db`));
  await real.counterIncr('c', 60_000);
  await real.rateAdd('r', 5, 60_000);
  await real.relayerAdd('192.0.2.1', 100, 60_000);
  await real.cacheSet('k', 'v', 60_000);
  const ro = new ReadOnlyStore(real);
  assert.equal(await ro.counterIncr('c', 60_000), 2);
  assert.equal(await ro.counterGet('c'), 2);
  await ro.counterDecr('c');
  await ro.counterDecr('c');
  await ro.counterDecr('c');
  assert.equal(await ro.counterGet('c'), 0);
  assert.equal(await ro.rateAdd('r', 2, 60_000), 7);
  assert.equal(await ro.rateAdd('r', -10, 60_000), 0);
  assert.equal(await ro.relayerDelete(['192.0.2.1', '192.0.2.2']), 1);
  assert.equal(await ro.relayerGet('192.0.2.1'), undefined);
  await ro.relayerAdd('192.0.2.3', 200, 60_000);
  assert.deepEqual(await ro.relayerList(), [{ ip: '192.0.2.3', at: 200 }]);
  assert.equal(await ro.cacheDelete('k'), true);
  await ro.cacheSet('k2', 'v2', 60_000);
  assert.deepEqual((await ro.cacheList('k')).map((e) => e.key), ['k2']);
  assert.equal(await real.counterGet('c'), 1);
  assert.equal(await real.rateGet('r', 60_000), 5);
  assert.equal(await real.relayerGet('192.0.2.1'), 100);
  assert.equal(await real.cacheGet('k'), 'v');
  assert.equal(await real.cacheGet('k2'), undefined);
  assert.equal(ro.writes.length, 11, 'each write listed (relayerDelete: one per address)');
  await ro.close();
});

