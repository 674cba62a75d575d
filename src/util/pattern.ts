// Shell-style patterns as DMail writes them (`*@aol.com`, `*`, `spam?@*`): `*` any run of
// characters, `?` one character, everything else literal; matched whole and case-insensitively.
// Matched by a two-pointer scan (at most pattern × text steps), not a backtracking RegExp: a
// pattern like `*a*a*a*a*a*b` costs a long address no more than a plain one.

/**
 * Does the whole of `text` match `pattern`, ignoring case? `*` is any run of characters; `?` is
 * one character unless `literalQuestion` (Obtuse smtpd's match_case_pattern knows only `*`).
 */
export function globMatches(pattern: string, text: string, literalQuestion = false): boolean {
  const p = pattern.toLowerCase();
  const s = text.toLowerCase();
  let pi = 0;
  let si = 0;
  let star = -1;
  let mark = 0;
  while (si < s.length) {
    const c = p[pi];
    if (c === '*') {
      star = pi++;
      mark = si;
    } else if (c !== undefined && ((c === '?' && !literalQuestion) || c === s[si])) {
      pi++;
      si++;
    } else if (star !== -1) {
      pi = star + 1;
      si = ++mark;
    } else return false;
  }
  while (p[pi] === '*') pi++;
  return pi === p.length;
}

export class PatternList {
  readonly patterns: readonly string[];

  constructor(patterns: readonly string[]) {
    this.patterns = patterns;
  }

  /** The first pattern that matches `text`, or undefined. */
  match(text: string): string | undefined {
    return this.patterns.find((p) => globMatches(p, text));
  }
}
