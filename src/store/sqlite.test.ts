import { after, afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { storeContract } from './contract.ts';
import { SqliteStore } from './sqlite.ts';
import { advanceClock, clock, resetClock } from '../util/clock.ts';
import { rateBucket, rateEstimate } from './rate.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-sqlite-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
let n = 0;
// SQLite reckons expiry on util/clock.ts: the contract's waits move it on instead of sleeping.
afterEach(() => resetClock());
storeContract('sqlite', async () => new SqliteStore(path.join(dir, `state-${++n}.db`)), async (ms) => advanceClock(ms));
// The daemon's store batches its writes (commitEveryMs): the same contract holds.
storeContract('sqlite, batched commits', async () => new SqliteStore(path.join(dir, `state-${++n}.db`), { commitEveryMs: 10 }), async (ms) => advanceClock(ms));

test('batched commits: another connection sees a write once its batch commits, and close() commits the last batch', async () => {
  const file = path.join(dir, `batched-${++n}.db`);
  const daemon = new SqliteStore(file, { commitEveryMs: 50 });
  const cli = new SqliteStore(file);
  try {
    await daemon.cacheSet('grey:allow:192.0.2.0/24', 'x', 60_000);
    assert.equal(await daemon.cacheGet('grey:allow:192.0.2.0/24'), 'x', 'its own write, at once');
    assert.equal(await cli.cacheGet('grey:allow:192.0.2.0/24'), undefined, 'not yet committed');
    await new Promise((r) => setTimeout(r, 120));
    assert.equal(await cli.cacheGet('grey:allow:192.0.2.0/24'), 'x', 'committed after commitEveryMs');
    await cli.cacheSet('from-cli', 'y', 60_000); // the write lock is free between batches
    assert.equal(await daemon.rateAdd('r', 1, 60_000), 1);
    await daemon.close();
    assert.equal(await cli.rateGet('r', 60_000), 1, 'close() committed the open batch');
    assert.equal(await cli.cacheGet('from-cli'), 'y');
  } finally {
    await cli.close();
  }
});

test('batched commits: rate counts made in memory reach the file with the batch or within twice commitEveryMs, each in its own window', async () => {
  const file = path.join(dir, `rates-${++n}.db`);
  const daemon = new SqliteStore(file, { commitEveryMs: 50 });
  const cli = new SqliteStore(file);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  try {
    for (let i = 1; i <= 100; i++) assert.equal(await daemon.rateAdd('r', 1, 3_600_000), i);
    assert.equal(await daemon.rateAdd('r', -1, 3_600_000), 99, 'taken back');
    assert.equal(await daemon.rateGet('r', 3_600_000), 99, 'its own count, at once');
    await sleep(250);
    assert.equal(await cli.rateGet('r', 3_600_000), 99, 'in the file within twice commitEveryMs');
    // Another process adds; the daemon sees it once its row is older than commitEveryMs.
    assert.equal(await cli.rateAdd('r', 10, 3_600_000), 109);
    await sleep(120);
    assert.equal(await daemon.rateAdd('r', 1, 3_600_000), 110, 'the other process\'s ten, and its own one');
    // The window moves on (the injected clock): what is pending goes to its own window first.
    assert.equal(await daemon.rateAdd('w', 5, 60_000), 5);
    assert.equal(await daemon.rateAdd('w', 2, 60_000), 7, 'counted in memory');
    advanceClock(60_000);
    const now = clock.now();
    const expected = rateEstimate(now, 60_000, rateBucket(now, 60_000), 7, 1);
    assert.equal(await daemon.rateAdd('w', 1, 60_000), expected, 'the previous window\'s 7 weighted, and 1 in this one');
    await daemon.close();
    assert.equal(await cli.rateGet('r', 3_600_000), 110, 'close() wrote every count');
  } finally {
    await cli.close();
  }
});

test('batched commits: a rate row read, counted in memory and grown older than commitEveryMs before its count was written is written before it is read again', async () => {
  // The bad_rcpts rule once lost counts here: the stale row was read anew and its count dropped.
  const daemon = new SqliteStore(path.join(dir, `rates-${++n}.db`), { commitEveryMs: 200 });
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  try {
    const t0 = Date.now();
    assert.equal(await daemon.rateGet('g', 3_600_000), 0, 'read: no batch opened');
    await sleep(50);
    assert.equal(await daemon.rateAdd('g', 1, 3_600_000), 1, 'counted in memory; written at t0 + 250 ms at the latest');
    await sleep(175 - (Date.now() - t0 - 50));
    assert.equal(await daemon.rateGet('g', 3_600_000), 1, `read again ${Date.now() - t0} ms on: the count made in memory is still there`);
  } finally {
    await daemon.close();
  }
});

// Issue 9 item 16: several processes (mxguard stdio, one per connection) opening the same fresh
// state.db at once. Switching a new file to WAL needs its lock; without a busy timeout already in
// force, the losers failed at once with "database is locked" and their client got no banner.
test('several processes opening one fresh state.db at once all succeed', { timeout: 120_000 }, async () => {
  const SQLITE = path.resolve(import.meta.dirname, 'sqlite.ts');
  const child = `
    import { SqliteStore } from ${JSON.stringify(SQLITE)};
    const [file, at] = process.argv.slice(1);
    while (Date.now() < Number(at)) {}
    try {
      const s = new SqliteStore(file);
      await s.counterIncr('opens', 60_000);
      await s.close();
      console.log('ok');
    } catch (err) {
      console.log('failed: ' + err.message);
    }`;
  const ROUNDS = 6;
  const PROCS = 6;
  const failures: string[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const file = path.join(dir, `fresh-${round}`, 'state.db');
    const at = Date.now() + 1500; // every child has loaded by then, and they open together
    const outs = await Promise.all(
      Array.from({ length: PROCS }, () => new Promise<string>((resolve) => {
        execFile(process.execPath, ['--input-type=module', '-e', child, file, String(at)], { timeout: 60_000 }, (err, stdout, stderr) => resolve(err ? `exit: ${err.message} ${stderr}` : stdout.trim()));
      })),
    );
    failures.push(...outs.filter((o) => o !== 'ok'));
    const db = new SqliteStore(file);
    assert.equal(await db.counterGet('opens'), PROCS - outs.filter((o) => o !== 'ok').length);
    await db.close();
  }
  assert.deepEqual(failures, [], `${failures.length} of ${ROUNDS * PROCS} opens failed`);
});
