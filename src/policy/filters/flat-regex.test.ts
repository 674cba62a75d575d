import { test } from 'node:test';
import assert from 'node:assert/strict';
import { flatRegex } from './flat-regex.ts';

test('flat patterns get a native RegExp; anything that could backtrack does not', () => {
  for (const ok of ['[A-Z]{15,}', '\\d{3}[-.\\s]\\d{3}[-.\\s]\\d{4}', '!{4,}', '\\b[0-9]{16}\\b', 'viagra', 'v[i1!][a@4]gr[a@4]', '^Subject: hi$', 'a.c', 'x?y{2,4}z', '\\$\\d{3,}'])
    assert.ok(flatRegex(ok, 'i'), ok);
  for (const no of ['[a-z]+@x', '(a|b)c', 'a+b+', '\\d+\\b', '[A-Z]+$', 'a{1,20}b', 'a*?', '\\x41', '\\p{L}', '(?i)x', '\\1', '[[:alpha:]]', 'a{2,5}b{2,5}c{2,5}d{2,5}', 'a\\Ab', '.*foo'])
    assert.equal(flatRegex(no, ''), undefined, no);
});

test('a flat pattern against hostile text stays linear', () => {
  const hostile = 'A'.repeat(14) + '!';
  const text = hostile.repeat(20_000); // 300 KB of near misses
  for (const src of ['[A-Z]{15,}', 'A{3}A?A?A?B', '\\d{3}[-.\\s]\\d{3}[-.\\s]\\d{4}']) {
    const re = flatRegex(src, 'i') as RegExp;
    const t0 = performance.now();
    assert.equal(re.test(text), false);
    const ms = performance.now() - t0;
    assert.ok(ms < 500, `${src}: ${ms.toFixed(0)} ms on 300 KB`);
  }
});

test('it matches what RE2 matches on ordinary text', () => {
  assert.equal(flatRegex('[A-Z]{15,}', '')?.test('this is SHOUTINGGGGGGGGGGGG here'), true);
  assert.equal(flatRegex('\\b[0-9]{16}\\b', '')?.test('card 1234567812345678 ok'), true);
  assert.equal(flatRegex('^claim your prize now$', 'im')?.test('x\nClaim your prize now\ny'), true);
});
