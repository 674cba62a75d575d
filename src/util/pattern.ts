// Shell-style patterns as DMail writes them (`*@aol.com`, `*`, `spam?@*`): `*` any run of
// characters, `?` one character, everything else literal; matched whole and case-insensitively.

export function globToRegExp(pattern: string): RegExp {
  const body = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`, 'i');
}

export class PatternList {
  readonly patterns: readonly string[];
  private readonly res: readonly RegExp[];

  constructor(patterns: readonly string[]) {
    this.patterns = patterns;
    this.res = patterns.map(globToRegExp);
  }

  /** The first pattern that matches `text`, or undefined. */
  match(text: string): string | undefined {
    const i = this.res.findIndex((re) => re.test(text));
    return i === -1 ? undefined : this.patterns[i];
  }
}
