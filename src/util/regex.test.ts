// The linear-time engine for configured regular expressions, and the glob matcher of ban lists
// and helo.reject_names: patterns that make a backtracking engine take exponential or high
// polynomial time answer at once here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { linearRegex, linearRegexError } from './regex.ts';
import { globMatches, PatternList } from './pattern.ts';

/** Milliseconds `f` takes. */
function timed(f: () => void): number {
  const t0 = performance.now();
  f();
  return performance.now() - t0;
}

test('linearRegex: ^(a+)+$ against a long non-matching sender takes no time (V8: 2^n steps)', () => {
  const re = linearRegex('^(a+)+$', { ignoreCase: true });
  // V8's backtracking RegExp needs ~0.4 s for 26 a's here and doubles per character.
  const ms = timed(() => assert.equal(re.test(`${'a'.repeat(10_000)}@x.test`), false));
  assert.ok(ms < 1000, `took ${ms} ms`);
  assert.equal(re.test('AAAA'), true);
});

test('linearRegex: case-insensitive search, named groups, and RE2 refusals', () => {
  assert.equal(linearRegex('^[0-9]{6,}@', { ignoreCase: true }).test('1234567@spam.test'), true);
  assert.equal(linearRegex('^spam@EXAMPLE\\.test$', { ignoreCase: true }).test('Spam@example.TEST'), true);
  assert.equal(linearRegex('^spam@EXAMPLE\\.test$').test('Spam@example.TEST'), false);
  assert.deepEqual(linearRegex('rip=(?<ip>[0-9.]+)').groups('Login: rip=192.0.2.1, lip=x'), { ip: '192.0.2.1' });
  assert.deepEqual(linearRegex('rip=(?P<ip>[0-9.]+)').groups('rip=192.0.2.2'), { ip: '192.0.2.2' });
  assert.equal(linearRegex('rip=(?<ip>x)').groups('nothing'), undefined);
  assert.match(linearRegexError('(?=a)b') ?? '', /unsupported Perl syntax.*no lookaround or backreferences/);
  assert.match(linearRegexError('(a)\\1') ?? '', /invalid escape/);
  assert.match(linearRegexError('[a') ?? '', /missing closing \]/);
  assert.equal(linearRegexError('^(a+)+$'), undefined);
});

test('globMatches: * and ? whole and case-insensitive, everything else literal', () => {
  const yes: [string, string][] = [
    ['*@aol.com', 'X@AOL.com'],
    ['*', ''],
    ['spam?@*', 'spam1@x'],
    ['*.dynamic.example.net', 'a.b.dynamic.example.net'],
    ['a*b*c', 'abc'],
    ['a.b+c(d)', 'A.B+C(D)'],
    ['**x', 'x'],
  ];
  const no: [string, string][] = [
    ['*@aol.com', 'x@aol.com.evil'],
    ['spam?@*', 'spam@x'],
    ['a.b', 'axb'],
    ['abc', 'ab'],
    ['?', ''],
    ['a*b', 'ba'],
  ];
  for (const [p, s] of yes) assert.equal(globMatches(p, s), true, `${p} ~ ${s}`);
  for (const [p, s] of no) assert.equal(globMatches(p, s), false, `${p} !~ ${s}`);
  assert.equal(new PatternList(['*@a.test', 'b@*']).match('b@x'), 'b@*');
  assert.equal(new PatternList(['*@a.test']).match('b@x'), undefined);
});

test('globMatches: many stars against a long address stay fast (a RegExp ^.*a.*a… backtracks polynomially)', () => {
  const ms = timed(() => assert.equal(globMatches('*a*a*a*a*a*a*a*b', 'a'.repeat(2000)), false));
  assert.ok(ms < 1000, `took ${ms} ms`);
});
