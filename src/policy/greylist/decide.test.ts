import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decide, type GreyRecord } from './decide.ts';

const s = { delay: 300, retryWindow: 2 * 86_400, expire: 35 * 86_400 };
const T0 = 1_800_000_000;

test('first attempt: defer for the whole delay; a retry before it: defer for the rest', () => {
  const first = decide(undefined, T0, s);
  assert.deepEqual(first, { kind: 'defer', record: { first: T0 }, retryIn: 300 });
  const early = decide(first.record, T0 + 120, s);
  assert.deepEqual(early, { kind: 'defer', record: { first: T0 }, retryIn: 180 }, 'the record is not reset by an early retry');
});

test('a retry within the window passes and says how long it was held; the triplet is then white', () => {
  const grey: GreyRecord = { first: T0 };
  const pass = decide(grey, T0 + 301, s);
  assert.deepEqual(pass, { kind: 'pass', record: { first: T0, passed: T0 + 301 }, delayed: 301 });
  const later = decide(pass.record, T0 + 10 * 86_400, s);
  assert.deepEqual(later, { kind: 'pass', record: { first: T0, passed: T0 + 10 * 86_400 }, delayed: 0 }, 'white: no delay, last use refreshed');
});

test('an expired grey record starts over and never passes (qpsmtpd#172); an expired white one too', () => {
  const stale = decide({ first: T0 }, T0 + 2 * 86_400 + 1, s);
  assert.deepEqual(stale, { kind: 'defer', record: { first: T0 + 2 * 86_400 + 1 }, retryIn: 300 });
  const white: GreyRecord = { first: T0, passed: T0 + 400 };
  assert.equal(decide(white, T0 + 400 + 35 * 86_400, s).kind, 'pass', 'on the last day of expire');
  const gone = decide(white, T0 + 401 + 35 * 86_400, s);
  assert.deepEqual(gone, { kind: 'defer', record: { first: T0 + 401 + 35 * 86_400 }, retryIn: 300 });
});

test('Greylite: a suspicious client must retry more than once, each retry a delay after the last', () => {
  const first = decide(undefined, T0, s, 3);
  const r1 = decide(first.record, T0 + 301, s, 3);
  assert.deepEqual(r1, { kind: 'defer', record: { first: T0, tries: 1 }, retryIn: 300 });
  const tooSoon = decide(r1.record, T0 + 400, s, 3);
  assert.deepEqual(tooSoon, { kind: 'defer', record: { first: T0, tries: 1 }, retryIn: 200 }, 'the second retry is due two delays after the first attempt');
  const r2 = decide(r1.record, T0 + 601, s, 3);
  assert.deepEqual(r2, { kind: 'defer', record: { first: T0, tries: 2 }, retryIn: 300 });
  const pass = decide(r2.record, T0 + 901, s, 3);
  assert.deepEqual(pass, { kind: 'pass', record: { first: T0, passed: T0 + 901 }, delayed: 901 });
});
