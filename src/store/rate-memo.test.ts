import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RateMemo } from './rate-memo.ts';

const row = { win: 1000, bucket: 5, prev: 2, cur: 3 };

test('a fresh row is counted in memory, never below 0, and what was added is drained once', () => {
  const m = new RateMemo(10);
  m.set('k', row, 100);
  assert.equal(m.add('k', 1000, 5, 2, 105)?.cur, 5);
  assert.equal(m.add('k', 1000, 5, -9, 106)?.cur, 0, 'never below 0');
  assert.equal(m.add('k', 1000, 5, 1, 107)?.cur, 1);
  // 3 → 5 → 0 → 1: the file gets -2 (its 3 becomes 1), not the sum of the requests (-6).
  assert.deepEqual(m.drain(), [{ key: 'k', win: 1000, bucket: 5, amount: -2 }]);
  assert.deepEqual(m.drain(), [], 'drained once');
  assert.equal(m.hasPending, false);
});

test('a stale row, another window length or a window that moved on go to the file', () => {
  const m = new RateMemo(10);
  m.set('k', row, 100);
  assert.equal(m.add('k', 1000, 5, 1, 110), undefined, 'commitEveryMs old');
  assert.equal(m.add('k', 2000, 5, 1, 101), undefined, 'another window length');
  assert.equal(m.add('k', 1000, 6, 1, 101), undefined, 'the next window');
  assert.equal(m.add('k', 1000, 4, 1, 101)?.cur, 4, 'a clock stepped back counts in the row\'s window');
  assert.equal(m.get('k', 1000, 99), undefined, 'real time stepped back: not trusted');
  assert.deepEqual(m.take('k'), { key: 'k', win: 1000, bucket: 5, amount: 1 });
  assert.equal(m.get('k', 1000, 101), undefined, 'taken: forgotten');
  assert.equal(m.add('other', 1000, 5, 1, 101), undefined, 'never read');
});

test('forgetSettled keeps only rows with something pending', () => {
  const m = new RateMemo(10);
  m.set('a', row, 100);
  m.set('b', row, 100);
  m.add('b', 1000, 5, 1, 101);
  m.forgetSettled();
  assert.equal(m.get('a', 1000, 101), undefined);
  assert.equal(m.get('b', 1000, 101)?.cur, 4);
});

test('forgetStale keeps fresh rows and rows with something pending', () => {
  const m = new RateMemo(10);
  m.set('old', row, 100);
  m.set('fresh', row, 108);
  m.set('busy', row, 100);
  m.add('busy', 1000, 5, 1, 105);
  m.forgetStale(112);
  assert.equal(m.get('fresh', 1000, 112)?.cur, 3);
  assert.equal(m.get('old', 1000, 105), undefined, 'forgotten');
  assert.deepEqual(m.drain(), [{ key: 'busy', win: 1000, bucket: 5, amount: 1 }]);
});
