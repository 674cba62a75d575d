// Regular expressions that come from configuration (ban.mailfrom_regex, relay.pop_log_pattern)
// run on RE2JS, a linear-time engine (no backtracking): a pattern like `^(a+)+$` cannot freeze
// the event loop, whatever the input. RE2 syntax is Perl's without lookaround and
// backreferences; JavaScript's named groups `(?<name>…)` are accepted.
import { createRequire } from 'node:module';
import type { RE2JS } from 're2js';

// Loaded on first use (synchronously, for the config schema's checks): a config without
// patterns, such as most `mxguard stdio` runs, does not pay for it.
let engine: typeof RE2JS | undefined;
/** The RE2JS engine, loaded on first use (the SpamAssassin rules compile with it directly). */
export function re2(): typeof RE2JS {
  engine ??= (createRequire(import.meta.url)('re2js') as { RE2JS: typeof RE2JS }).RE2JS;
  return engine;
}

export interface LinearRegex {
  /** The pattern as written in the configuration. */
  readonly source: string;
  /** Does the pattern match anywhere in `text` (like RegExp.prototype.test)? */
  test(text: string): boolean;
  /** The named groups of the first match, or undefined when there is none. */
  groups(text: string): Record<string, string | undefined> | undefined;
}

/** Compiles `source` for the linear-time engine; throws an Error naming what RE2 refuses. */
export function linearRegex(source: string, opts: { ignoreCase?: boolean } = {}): LinearRegex {
  let re: RE2JS;
  try {
    const RE2 = re2();
    re = RE2.compile(source, opts.ignoreCase ? RE2.CASE_INSENSITIVE : 0);
  } catch (err) {
    // "error parsing regexp: invalid or unsupported Perl syntax: `(?=`"
    throw new Error(`${(err as Error).message.replace(/^error parsing regexp: /, '')} (RE2 syntax: no lookaround or backreferences)`, { cause: err });
  }
  return {
    source,
    test: (text) => re.test(text),
    groups(text) {
      const m = re.exec(text) as (string[] & { groups?: Record<string, string | undefined> }) | null;
      if (!m) return undefined;
      return { ...(m.groups ?? {}) };
    },
  };
}

/** Why `source` is not a usable pattern, or undefined when it is. */
export function linearRegexError(source: string): string | undefined {
  try {
    linearRegex(source);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}
