// A fast path for the simplest rule patterns. re2js (linear time, pure JavaScript) costs some
// 5 µs to scan 1 KiB; V8's own engine is ten times faster but backtracks, so a hostile message
// could make a careless pattern take seconds. A "flat" pattern cannot backtrack much: a sequence
// of single atoms (a character, an escape like \d \w \s, a [class], `.`), each with at most a
// small bounded quantifier (`?`, `{n}`, `{n,m}` with a spread of 3 or less), and an unbounded one
// (`+`, `*`, `{n,}`) only on the very last atom, with nothing after it. Per start position V8
// then tries at most the product of the spreads (kept ≤ 64) times the pattern length: linear in
// the text. Everything else (groups, alternation, backreferences, lookaround…) stays on RE2.
//
// The two engines agree on such patterns except at the edges of Unicode: JavaScript's \s also
// takes \v and Unicode spaces, and `.` does not take \r; neither matters for a spam rule.

const ESCAPES = new Set(['d', 'D', 'w', 'W', 's', 'S']);
const ZERO_WIDTH = new Set(['b', 'B']);
const MAX_SPREAD = 3;
const MAX_BRANCHES = 64;

/**
 * The pattern as a native RegExp when it is flat (see above), else undefined. `flags`: any of
 * i, m, s (the SpamAssassin modifiers; x is applied before).
 */
export function flatRegex(source: string, flags: string): RegExp | undefined {
  let branches = 1;
  let i = 0;
  let unboundedSeen = false;
  while (i < source.length) {
    if (unboundedSeen) return undefined; // something after an unbounded run: it could backtrack
    const c = source[i] as string;
    let quantifiable = true;
    if (c === '\\') {
      const e = source[i + 1];
      if (e === undefined) return undefined;
      if (ZERO_WIDTH.has(e)) quantifiable = false;
      else if (!ESCAPES.has(e) && /[A-Za-z0-9]/.test(e)) return undefined; // \x \p \A \1 …: leave to RE2
      i += 2;
    } else if (c === '[') {
      const end = classEnd(source, i);
      if (end === -1) return undefined;
      i = end + 1;
    } else if (c === '^' || c === '$') {
      quantifiable = false;
      i++;
    } else if ('()|*+?{}]'.includes(c)) {
      return undefined;
    } else {
      i++; // a literal character or `.`
    }
    const q = quantifier(source, i);
    if (q === undefined) return undefined;
    if (q.length > 0) {
      if (!quantifiable) return undefined;
      if (source[i + q.length] === '?' || source[i + q.length] === '+') return undefined; // lazy, possessive
      if (q.unbounded) unboundedSeen = true;
      else {
        branches *= q.spread + 1;
        if (q.spread > MAX_SPREAD || branches > MAX_BRANCHES) return undefined;
      }
      i += q.length;
    }
  }
  try {
    return new RegExp(source, flags);
  } catch {
    return undefined;
  }
}

/** The index of the `]` closing the class at `start`, or -1 (also for POSIX classes and nesting). */
function classEnd(source: string, start: number): number {
  let i = start + 1;
  if (source[i] === '^') i++;
  if (source[i] === ']') i++; // a leading ] is a literal
  for (; i < source.length; i++) {
    const c = source[i];
    if (c === '\\') {
      const e = source[i + 1];
      if (e === undefined || (/[A-Za-z0-9]/.test(e) && !ESCAPES.has(e))) return -1;
      i++;
    } else if (c === '[') return -1;
    else if (c === ']') return i;
  }
  return -1;
}

/** The quantifier at `i`: its length (0: none), whether it is unbounded, its spread (max − min); undefined: not flat. */
function quantifier(source: string, i: number): { length: number; unbounded: boolean; spread: number } | undefined {
  const c = source[i];
  if (c === '?') return { length: 1, unbounded: false, spread: 1 };
  if (c === '*' || c === '+') return { length: 1, unbounded: true, spread: 0 };
  if (c !== '{') return { length: 0, unbounded: false, spread: 0 };
  const m = /^\{(\d{1,3})(,(\d{0,3}))?\}/.exec(source.slice(i, i + 10));
  if (!m) return undefined;
  const min = Number(m[1]);
  if (m[2] === undefined) return { length: m[0].length, unbounded: false, spread: 0 };
  if (m[3] === '') return { length: m[0].length, unbounded: true, spread: 0 };
  const max = Number(m[3]);
  if (max < min) return undefined;
  return { length: m[0].length, unbounded: false, spread: max - min };
}
