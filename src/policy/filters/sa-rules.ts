// The core of SpamAssassin's rule syntax (Mail::SpamAssassin::Conf, "RULE DEFINITIONS"):
// header / body / rawbody / uri / full / meta rules, score, describe, tflags, if / ifplugin.
//
// Patterns come from the admin, messages from anyone: every regex runs on RE2 (re2js, linear
// time, no backtracking), so `^(a+)+$` cannot freeze the process. re2js costs ~7 µs on a 1 KiB
// text for a case-insensitive pattern, too much for 100 rules, so each pattern gets a literal
// prefilter (as SA and rspamd do): the strings one of which any match must contain; when the
// text has none of them the regex is not run (an indexOf on the lower-cased text). bench/mime.ts
// measures this against V8's linear engine (`/l`: ~55 µs a rule, refuses /i) and plain RegExp.
//
// Choices where SpamAssassin leaves room:
// - body rules are matched against each paragraph of the rendered text (mime-text.ts), the
//   Subject being the first, as SA does; rawbody and full against the whole text (SA cuts it
//   into ~2 KiB chunks for speed; a whole text only finds more); uri against each URI.
// - CRLF is read as LF (SA reads a message with LF lines), and header values lose their final
//   newline, so Perl's `$` ("at the end or before a final newline") and RE2's agree.
// - A rule whose regex RE2 refuses (lookaround, backreferences, possessive, \G…) is an error
//   naming the line: SA's lint would disable the rule too, and silence would hide it.
// - Unknown directives are errors; SA settings this gateway does not use (required_score,
//   report, add_header, loadplugin…) and eval: rules are accepted with a warning (`warnings`),
//   eval: rules never hit; lang, priority and reuse lines are accepted silently. tflags are
//   kept but only `nice` means something: a negative score without it is warned about. We have none of SA's plugins: every `ifplugin` block is skipped, and
//   `if` sees plugin(…) and can(…) as false and `version` as 3.004006 (SA 3.4.6's syntax).
// - A meta naming a rule defined nowhere is an error (a typo would make it silently 0); a rule
//   skipped with its ifplugin block, or an eval: rule, counts as 0.
import type { RE2JS } from 're2js';
import { re2 } from '../../util/regex.ts';
import { flatRegex } from './flat-regex.ts';
import { decodedText, decodeMimeWords } from './mime-text.ts';
import { FilterSyntaxError, type FilterEnvelope, type FilterHit, type FilterResult, type ScanMessage } from './types.ts';

export interface RuleSet {
  readonly files: string[];
  /** Rules defined (including __ sub-rules and metas). */
  readonly rules: number;
  /** Lines SpamAssassin would accept but that do nothing here ("file:line: …"). */
  readonly warnings: readonly string[];
  run(msg: ScanMessage, env: FilterEnvelope): FilterResult;
}

/** The SpamAssassin version `if (version >= …)` compares with: the syntax we follow. */
export const SA_COMPAT_VERSION = 3.004006;
const MAX_META_DEPTH = 100;


// ---------------------------------------------------------------------------------------------
// Patterns

/** A compiled rule pattern: RE2 behind a literal prefilter. */
export interface Pattern {
  readonly source: string;
  /** One of these occurs in every match (lower-cased when `foldCase`); null: no prefilter. */
  readonly literals: readonly string[] | null;
  readonly foldCase: boolean;
  /** Does it match `text`? `lower` is text.toLowerCase() (with ſ → s), given when already known. */
  test(text: string, lower?: string): boolean;
  /**
   * Could it match any line of `text` (lines joined by \n)? One run over the whole text with ^ and
   * $ at line ends: a match in a line is a match in the text, so false means no line matches.
   * Absent when the pattern anchors to the text itself (\A, \z) or switches flags inline.
   */
  anyLine?(text: string): boolean;
}

const NON_ASCII = /[^\x00-\x7f]/;
function isAscii(text: string): boolean {
  return !NON_ASCII.test(text);
}

/** Text lower-cased for the prefilter: ſ folds to s in RE2 but toLowerCase keeps it. */
export function foldForPrefilter(text: string): string {
  const lower = text.toLowerCase();
  return lower.includes('ſ') ? lower.replaceAll('ſ', 's') : lower;
}

/** Might `text` match, by the prefilter alone? */
function mayMatch(p: Pattern, text: string, lower: string | undefined): boolean {
  if (p.literals === null) return true;
  const hay = p.foldCase ? (lower ?? foldForPrefilter(text)) : text;
  for (const lit of p.literals) if (hay.includes(lit)) return true;
  return false;
}

/** Compiles a Perl pattern with SA's modifiers (i, m, s, x); throws an Error saying what RE2 refuses. */
export function compilePattern(perl: string, modifiers: string): Pattern {
  for (const m of modifiers) if (!'imsx'.includes(m)) throw new Error(`unsupported regex modifier "${m}" (i, m, s and x are)`);
  const source = perlToRe2(perl, modifiers.includes('x'));
  const RE2 = re2();
  let flags = 0;
  if (modifiers.includes('i')) flags |= RE2.CASE_INSENSITIVE;
  if (modifiers.includes('m')) flags |= RE2.MULTILINE;
  if (modifiers.includes('s')) flags |= RE2.DOTALL;
  let re: RE2JS;
  try {
    re = RE2.compile(source, flags);
  } catch (err) {
    const why = (err as Error).message.replace(/^error parsing regexp: /, '');
    throw new Error(`${why} (RE2 syntax: no lookaround, backreferences or possessive quantifiers)`, { cause: err });
  }
  // Any (?i…) inline switch: prefilter case-folded (a superset, so never wrong).
  const foldCase = modifiers.includes('i') || /\(\?[a-zA-Z-]*i/.test(source);
  const literals = requiredLiterals(source, foldCase);
  // A flat pattern (flat-regex.ts: no backtracking to speak of) runs on V8's engine, ten times
  // faster, on ASCII text, where the two engines agree (RE2 folds ſ to s and K to k; V8 without
  // the u flag does not). Other text goes to RE2.
  const jsFlags = ['i', 'm', 's'].filter((f) => modifiers.includes(f)).join('');
  const native = flatRegex(source, jsFlags);
  const p: Pattern = {
    source,
    literals,
    foldCase,
    test: native ? (text, lower) => mayMatch(p, text, lower) && (isAscii(text) ? native.test(text) : re.test(text)) : (text, lower) => mayMatch(p, text, lower) && re.test(text),
  };
  // \A and \z anchor to the text (for a body rule: a line); an inline flag could turn ^ $ back.
  if (native) {
    const whole = jsFlags.includes('m') ? native : new RegExp(source, jsFlags + 'm');
    let wholeRe2: RE2JS | undefined;
    p.anyLine = (text) => (isAscii(text) ? whole.test(text) : (wholeRe2 ??= RE2.compile(source, flags | RE2.MULTILINE)).test(text));
  } else if (!/\\[AzZ]|\(\?/.test(source)) {
    let whole: RE2JS | undefined; // compiled on first use: only body rules ask
    p.anyLine = (text) => (whole ??= RE2.compile(source, flags | RE2.MULTILINE)).test(text);
  }
  return p;
}

/**
 * Perl → RE2: /x white space and comments removed; `\Z` → `(?:\n?\z)`, `\h` → `[\t ]`,
 * `\ ` → space. Everything else is the same syntax or refused by RE2 at compile time.
 */
function perlToRe2(src: string, extended: boolean): string {
  let out = '';
  let inClass = false;
  for (let i = 0; i < src.length; i++) {
    const c = src[i] as string;
    if (c === '\\') {
      const e = src[i + 1] ?? '';
      i++;
      if (e === ' ') out += ' ';
      else if (e === 'Z' && !inClass) out += '(?:\\n?\\z)';
      else if (e === 'h') out += inClass ? '\\t ' : '[\\t ]';
      else out += `\\${e}`;
      continue;
    }
    if (inClass) {
      if (c === ']') inClass = false;
      out += c;
      continue;
    }
    if (c === '[') {
      inClass = true;
      out += c;
      // A ']' (or '^]') right after '[' is a member, not the end.
      if (src[i + 1] === '^') out += src[++i];
      if (src[i + 1] === ']') out += src[++i];
      continue;
    }
    if (extended) {
      if (c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\f') continue;
      if (c === '#') {
        while (i < src.length && src[i] !== '\n') i++;
        continue;
      }
    }
    out += c;
  }
  return out;
}

// Literal extraction: what a match must contain. `exact`: all the strings the node can match
// (when few); `any`: a match contains one of these. Conservative: unknown → no constraint.
interface Lits {
  readonly exact: string[] | null;
  readonly any: string[] | null;
}
const NONE: Lits = { exact: null, any: null };
const EMPTY: Lits = { exact: [''], any: null };
const MAX_SET = 16;

function usable(l: Lits): string[] | null {
  if (l.exact) return l.exact.includes('') ? null : l.exact;
  return l.any;
}

/** The better of two alternative sets: the longer shortest string, then fewer strings. */
function better(a: string[] | null, b: string[] | null): string[] | null {
  if (!a) return b;
  if (!b) return a;
  const ma = Math.min(...a.map((s) => s.length));
  const mb = Math.min(...b.map((s) => s.length));
  if (ma !== mb) return ma > mb ? a : b;
  return a.length <= b.length ? a : b;
}

function concat(a: Lits, b: Lits): Lits {
  if (a.exact && b.exact && a.exact.length * b.exact.length <= MAX_SET) {
    const exact = new Set<string>();
    for (const x of a.exact) for (const y of b.exact) exact.add(x + y);
    return { exact: [...exact], any: null };
  }
  return { exact: null, any: better(usable(a), usable(b)) };
}

function alternate(a: Lits, b: Lits): Lits {
  const exact = a.exact && b.exact && a.exact.length + b.exact.length <= MAX_SET ? [...new Set([...a.exact, ...b.exact])] : null;
  const ua = usable(a);
  const ub = usable(b);
  const any = ua && ub && ua.length + ub.length <= MAX_SET ? [...new Set([...ua, ...ub])] : null;
  return { exact, any };
}

/** The strings one of which occurs in every match of RE2 `source`, or null when none is known. */
export function requiredLiterals(source: string, foldCase: boolean): string[] | null {
  let pos = 0;
  const n = source.length;
  const lit = (ch: string): Lits => {
    if (foldCase && ch.charCodeAt(0) > 0x7f) return NONE; // Unicode folding is RE2's to do
    return { exact: [foldCase ? ch.toLowerCase() : ch], any: null };
  };

  function parseAlt(depth: number): Lits {
    let acc = parseSeq(depth);
    while (pos < n && source[pos] === '|') {
      pos++;
      acc = alternate(acc, parseSeq(depth));
    }
    return acc;
  }

  // A sequence: runs of exact items multiply out (a run "click" grows char by char); an
  // inexact item ends the run, and the best of the runs and of the items' own sets is kept.
  function parseSeq(depth: number): Lits {
    let run: Lits = EMPTY;
    let best: string[] | null = null;
    let broken = false;
    while (pos < n && source[pos] !== '|' && source[pos] !== ')') {
      const item = parseRepeat(depth);
      const joined = item.exact ? concat(run, item) : null;
      if (joined?.exact) {
        run = joined;
        continue;
      }
      broken = true;
      best = better(best, better(usable(run), usable(item)));
      run = item.exact ? item : EMPTY;
    }
    if (!broken) return run;
    return { exact: null, any: better(best, usable(run)) };
  }

  function parseRepeat(depth: number): Lits {
    let atom = parseAtom(depth);
    for (;;) {
      const c = source[pos];
      let min: number;
      if (c === '*' || c === '?') min = 0;
      else if (c === '+') min = 1;
      else if (c === '{') {
        const m = /^\{(\d+)(?:,(\d*))?\}/.exec(source.slice(pos, pos + 24));
        if (!m) return atom; // a literal '{', read by parseAtom next
        min = Number(m[1]);
        pos += m[0].length - 1;
      } else return atom;
      pos++;
      if (source[pos] === '?') pos++; // lazy
      atom = min === 0 ? NONE : { exact: null, any: usable(atom) };
    }
  }

  function parseAtom(depth: number): Lits {
    const c = source[pos++] as string;
    if (c === '(') {
      if (depth > MAX_META_DEPTH) throw new Error('nesting too deep');
      if (source[pos] === '?') {
        // (?flags) alone changes flags: no text. (?flags:…) (?P<n>…) (?<n>…) are groups.
        const m = /^\?(?:[a-zA-Z-]*:|P?<[^>]*>)/.exec(source.slice(pos, pos + 64));
        if (m) pos += m[0].length;
        else {
          const close = source.indexOf(')', pos);
          pos = close === -1 ? n : close + 1;
          return EMPTY;
        }
      }
      const inner = parseAlt(depth + 1);
      if (source[pos] === ')') pos++;
      return inner;
    }
    if (c === '^' || c === '$') return EMPTY;
    if (c === '.') return NONE;
    if (c === '[') return parseClass();
    if (c === '\\') return parseEscape();
    return lit(c);
  }

  function parseEscape(): Lits {
    const e = source[pos++] ?? '';
    if ('bBAz'.includes(e)) return EMPTY;
    if (e === 'Q') {
      const end = source.indexOf('\\E', pos);
      const text = source.slice(pos, end === -1 ? n : end);
      pos = end === -1 ? n : end + 2;
      let acc: Lits = EMPTY;
      for (const ch of text) acc = concat(acc, lit(ch));
      return acc;
    }
    if (e === 'x') {
      const m = /^(?:\{([0-9a-fA-F]{1,6})\}|([0-9a-fA-F]{2}))/.exec(source.slice(pos, pos + 10));
      if (!m) return NONE;
      pos += m[0].length;
      return lit(String.fromCodePoint(parseInt((m[1] ?? m[2]) as string, 16)));
    }
    const ctl: Record<string, string> = { n: '\n', t: '\t', r: '\r', f: '\f', v: '\v', a: '\x07' };
    if (ctl[e] !== undefined) return lit(ctl[e]);
    if (/[A-Za-z0-9]/.test(e)) {
      if ((e === 'p' || e === 'P') && source[pos] === '{') pos = Math.max(pos, source.indexOf('}', pos) + 1);
      else if (e === 'p' || e === 'P') pos++;
      return NONE; // \d \w \s \pL, octal…
    }
    return lit(e); // escaped punctuation
  }

  function parseClass(): Lits {
    // A class of at most a few single characters ([.] [@] [aA]) is a literal; others constrain nothing.
    const chars = new Set<string>();
    let simple = source[pos] !== '^';
    if (!simple) pos++;
    let first = true;
    while (pos < n && (source[pos] !== ']' || first)) {
      first = false;
      let ch = source[pos++] as string;
      if (ch === '[' && source[pos] === ':') {
        const end = source.indexOf(':]', pos);
        pos = end === -1 ? n : end + 2;
        simple = false;
        continue;
      }
      if (ch === '\\') {
        const e = source[pos++] ?? '';
        if (/[A-Za-z0-9]/.test(e)) simple = false;
        ch = e;
      }
      if (source[pos] === '-' && source[pos + 1] !== ']') simple = false;
      chars.add(foldCase ? ch.toLowerCase() : ch);
      if (foldCase && ch.charCodeAt(0) > 0x7f) simple = false;
    }
    pos++; // ']'
    if (!simple || chars.size === 0 || chars.size > 3) return NONE;
    return { exact: [...chars], any: null };
  }

  try {
    const root = parseAlt(0);
    if (pos < n) return null; // an unbalanced ')' — RE2 would have refused it anyway
    const best = usable(root);
    return best && best.length > 0 && !best.includes('') ? best : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Meta expressions (and `if` conditions): && || ! ( ) + - * / comparisons over names and numbers

type Expr = (values: Float64Array) => number;

interface ExprParse {
  readonly names: string[];
  compile(index: (name: string) => number): Expr;
}

type Node = { k: 'num'; v: number } | { k: 'name'; v: string } | { k: 'not' | 'neg'; a: Node } | { k: 'bin'; op: string; a: Node; b: Node };

const TOKEN = /\s*(?:(\d+(?:\.\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(&&|\|\||[<>=!]=|[-+*/()<>!]))/y;

/** Parses a meta expression; throws an Error with the 1-based column of what is wrong. */
export function parseExpression(text: string): ExprParse {
  const toks: { t: string; kind: 'num' | 'name' | 'op'; col: number }[] = [];
  TOKEN.lastIndex = 0;
  let at = 0;
  while (at < text.length) {
    if (/^\s*$/.test(text.slice(at))) break;
    TOKEN.lastIndex = at;
    const m = TOKEN.exec(text);
    if (!m) throw Object.assign(new Error(`unexpected "${text.slice(at).trim().slice(0, 10)}"`), { col: at + 1 + (text.slice(at).length - text.slice(at).trimStart().length) });
    const kind = m[1] !== undefined ? 'num' : m[2] !== undefined ? 'name' : 'op';
    toks.push({ t: (m[1] ?? m[2] ?? m[3]) as string, kind, col: m.index + m[0].length - (m[1] ?? m[2] ?? m[3] ?? '').length + 1 });
    at = TOKEN.lastIndex;
  }
  let i = 0;
  const fail = (why: string): never => {
    const tok = toks[i];
    throw Object.assign(new Error(tok ? `${why} at "${tok.t}"` : `${why} at the end`), { col: tok ? tok.col : text.length + 1 });
  };
  const peek = (): string | undefined => (toks[i]?.kind === 'op' ? toks[i]?.t : undefined);
  const binary = (next: (d: number) => Node, ops: string[]) => (d: number): Node => {
    let a = next(d);
    for (let op = peek(); op !== undefined && ops.includes(op); op = peek()) {
      i++;
      a = { k: 'bin', op, a, b: next(d) };
    }
    return a;
  };
  const unary = (d: number): Node => {
    if (d > MAX_META_DEPTH) fail('expression nested too deep');
    const tok = toks[i];
    if (!tok) return fail('expression incomplete');
    i++;
    if (tok.kind === 'num') return { k: 'num', v: Number(tok.t) };
    if (tok.kind === 'name') return { k: 'name', v: tok.t };
    if (tok.t === '!') return { k: 'not', a: unary(d + 1) };
    if (tok.t === '-') return { k: 'neg', a: unary(d + 1) };
    if (tok.t === '(') {
      const inner = or(d + 1);
      if (peek() !== ')') fail('missing ")"');
      i++;
      return inner;
    }
    i--;
    return fail('unexpected operator');
  };
  const mul = binary(unary, ['*', '/']);
  const add = binary(mul, ['+', '-']);
  const cmp = binary(add, ['<', '>', '<=', '>=', '==', '!=']);
  const and = binary(cmp, ['&&']);
  const or: (d: number) => Node = binary(and, ['||']);
  const root = or(0);
  if (i < toks.length) fail('unexpected');
  const names = [...new Set(toks.filter((t) => t.kind === 'name').map((t) => t.t))];
  return {
    names,
    compile(index) {
      const build = (node: Node): Expr => {
        switch (node.k) {
          case 'num': {
            const v = node.v;
            return () => v;
          }
          case 'name': {
            const at = index(node.v);
            return (vals) => vals[at] as number;
          }
          case 'not': {
            const a = build(node.a);
            return (vals) => (a(vals) ? 0 : 1);
          }
          case 'neg': {
            const a = build(node.a);
            return (vals) => -a(vals);
          }
          case 'bin': {
            const a = build(node.a);
            const b = build(node.b);
            const ops: Record<string, Expr> = {
              '&&': (v) => (a(v) && b(v) ? 1 : 0),
              '||': (v) => (a(v) || b(v) ? 1 : 0),
              '+': (v) => a(v) + b(v),
              '-': (v) => a(v) - b(v),
              '*': (v) => a(v) * b(v),
              '/': (v) => {
                const d = b(v);
                return d === 0 ? 0 : a(v) / d;
              },
              '<': (v) => (a(v) < b(v) ? 1 : 0),
              '>': (v) => (a(v) > b(v) ? 1 : 0),
              '<=': (v) => (a(v) <= b(v) ? 1 : 0),
              '>=': (v) => (a(v) >= b(v) ? 1 : 0),
              '==': (v) => (a(v) === b(v) ? 1 : 0),
              '!=': (v) => (a(v) !== b(v) ? 1 : 0),
            };
            return ops[node.op] as Expr;
          }
        }
      };
      return build(root);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Rules

type HeaderMod = 'raw' | 'addr' | 'name';

type Test =
  | { kind: 'header'; header: string; mods: HeaderMod[]; negate: boolean; pattern: Pattern; ifUnset: string | undefined }
  | { kind: 'exists'; header: string }
  | { kind: 'body' | 'rawbody' | 'uri' | 'full'; pattern: Pattern }
  | { kind: 'meta'; expr: ExprParse }
  /** eval: rules, and rules skipped with their ifplugin block: known names that never hit. */
  | { kind: 'never' };

interface Rule {
  readonly name: string;
  test: Test;
  file: string;
  line: number;
  score?: number;
  describe?: string;
  tflags?: string;
}

// SA settings that mean something to SA but nothing to a rule set here: accepted, warned about.
const IGNORED_SETTINGS = new Set([
  'required_score', 'required_hits', 'report', 'clear_report_template', 'report_contact', 'report_safe', 'add_header',
  'remove_header', 'clear_headers', 'rewrite_header', 'use_bayes', 'bayes_auto_learn', 'use_auto_whitelist', 'loadplugin',
  'tryplugin', 'whitelist_from', 'blacklist_from', 'whitelist_to', 'blacklist_to',
  'welcomelist_from', 'blocklist_from', 'trusted_networks', 'internal_networks', 'skip_rbl_checks', 'dns_available',
  'ok_locales', 'ok_languages', 'util_rb_tld', 'util_rb_2tld', 'util_rb_3tld', 'redirector_pattern', 'test',
  'uridnsbl_skip_domain', 'unwhitelist_from', 'envelope_sender_header', 'normalize_charset', 'body_part_scan_size',
  'rawbody_part_scan_size', 'version_tag',
]);
// Per-rule details SA files are full of that change nothing here: accepted silently.
const SILENT_SETTINGS = new Set(['lang', 'priority', 'reuse']);
const RULE_TYPES = new Set(['header', 'body', 'rawbody', 'uri', 'full', 'meta']);
const RULE_SETTINGS = new Set(['score', 'describe', 'tflags', 'priority', 'lang', 'reuse', 'loadplugin', 'tryplugin']);
const RULE_NAME = /^[A-Za-z0-9_]+$/;

interface Cursor {
  readonly file: string;
  readonly line: number;
}

/** A regex token `/re/flags` or `m{re}flags` / `m!re!flags` at the start of `s`; the rest after it. */
function readRegex(s: string, where: Cursor): { pattern: Pattern; rest: string } {
  let open: string;
  let i: number;
  if (s[0] === '/') {
    open = '/';
    i = 1;
  } else if (s[0] === 'm' && s.length > 1 && !/[\sA-Za-z0-9_]/.test(s[1] as string)) {
    open = s[1] as string;
    i = 2;
  } else throw new FilterSyntaxError(where.file, where.line, `expected a regex (/…/ or m{…}), got "${s.slice(0, 20)}"`);
  const close = ({ '{': '}', '(': ')', '[': ']', '<': '>' } as Record<string, string>)[open] ?? open;
  let depth = 0;
  let body = '';
  for (; i < s.length; i++) {
    const c = s[i] as string;
    if (c === '\\' && i + 1 < s.length) {
      // Escapes pass to RE2 as written (\/ and \} are valid there too).
      body += c + s[i + 1];
      i++;
      continue;
    }
    if (c === close && depth === 0) break;
    if (open !== close) {
      if (c === open) depth++;
      else if (c === close) depth--;
    }
    body += c;
  }
  if (i >= s.length) throw new FilterSyntaxError(where.file, where.line, `regex not terminated (missing "${close}")`);
  const mods = /^[A-Za-z]*/.exec(s.slice(i + 1))?.[0] ?? '';
  try {
    return { pattern: compilePattern(body, mods), rest: s.slice(i + 1 + mods.length).trim() };
  } catch (err) {
    if (err instanceof FilterSyntaxError) throw err;
    throw new FilterSyntaxError(where.file, where.line, `bad regex /${body}/${mods}: ${(err as Error).message}`);
  }
}

/** `header NAME …` after the name. */
function parseHeaderTest(spec: string, where: Cursor): Test {
  const exists = /^exists:\s*(\S+)$/.exec(spec);
  if (exists) return { kind: 'exists', header: (exists[1] as string).toLowerCase() };
  const m = /^([^\s=!]+)\s*(=~|!~)\s*(.*)$/.exec(spec);
  if (!m) throw new FilterSyntaxError(where.file, where.line, 'expected "Header =~ /regex/", "Header !~ /regex/" or "exists:Header"');
  const [name, ...modList] = (m[1] as string).split(':');
  const mods: HeaderMod[] = [];
  for (const mod of modList) {
    if (mod !== 'raw' && mod !== 'addr' && mod !== 'name') throw new FilterSyntaxError(where.file, where.line, `unsupported header modifier ":${mod}" (:raw, :addr and :name are)`);
    mods.push(mod);
  }
  const { pattern, rest } = readRegex(m[3] as string, where);
  let ifUnset: string | undefined;
  if (rest !== '') {
    const u = /^\[\s*if-unset:\s*(.*?)\s*\]$/.exec(rest);
    if (!u) throw new FilterSyntaxError(where.file, where.line, `unexpected "${rest}" after the regex`);
    ifUnset = u[1];
  }
  return { kind: 'header', header: (name as string).toLowerCase(), mods, negate: m[2] === '!~', pattern, ifUnset };
}

/** Strips a comment: SA reads an unescaped # anywhere as its start (write \# in a regex). */
function stripComment(line: string): string {
  for (let i = 0; i < line.length; i++) {
    if (line[i] === '\\') i++;
    else if (line[i] === '#') return line.slice(0, i);
  }
  return line;
}

/** The value of an `if (…)` condition: plugin(…) and can(…) false, version our SA level. */
function ifCondition(expr: string, where: Cursor, warnings: string[]): boolean {
  const text = expr
    .replace(/\b(?:plugin|can|has)\s*\(\s*[^)]*\)/g, '0')
    .replace(/\bperl_version\b/g, '5.036')
    .replace(/\bversion\b/g, String(SA_COMPAT_VERSION));
  try {
    const parsed = parseExpression(text);
    if (parsed.names.length > 0) throw new Error(`unknown name ${parsed.names[0]}`);
    return parsed.compile(() => 0)(new Float64Array(0)) !== 0;
  } catch (err) {
    warnings.push(`${where.file}:${where.line}: if ${expr}: ${(err as Error).message}; block skipped`);
    return false;
  }
}

/** Throws FilterSyntaxError naming file and line. */
export function compileRules(files: { file: string; text: string }[]): RuleSet {
  const rules = new Map<string, Rule>();
  const scores = new Map<string, { value: number; where: Cursor }>();
  const describes = new Map<string, string>();
  const tflags = new Map<string, string>();
  const warnings: string[] = [];

  for (const { file, text } of files) {
    // Each block: is it being read? (an inactive parent makes every child inactive)
    const blocks: { active: boolean; taken: boolean; line: number }[] = [];
    const active = (): boolean => blocks.every((b) => b.active);
    const lines = text.split(/\r?\n/);
    for (let n = 0; n < lines.length; n++) {
      const where = { file, line: n + 1 };
      const line = stripComment(lines[n] as string).trim();
      if (line === '') continue;
      const sp = line.search(/\s/);
      const directive = (sp === -1 ? line : line.slice(0, sp)).toLowerCase();
      const args = sp === -1 ? '' : line.slice(sp + 1).trim();

      if (directive === 'ifplugin') {
        blocks.push({ active: false, taken: false, line: n + 1 }); // we have none of SA's plugins
        continue;
      }
      if (directive === 'if') {
        const on = active() && ifCondition(args, where, warnings);
        blocks.push({ active: on, taken: on, line: n + 1 });
        continue;
      }
      if (directive === 'else') {
        const b = blocks.at(-1);
        if (!b) throw new FilterSyntaxError(file, n + 1, 'else without if/ifplugin');
        b.active = !b.taken && blocksParentActive(blocks);
        b.taken = true;
        continue;
      }
      if (directive === 'endif') {
        if (!blocks.pop()) throw new FilterSyntaxError(file, n + 1, 'endif without if/ifplugin');
        continue;
      }
      if (!active()) {
        // Skipped, but its rule names stay known, so that a meta outside may name them.
        // (uridnsbl, askdns, mimeheader… define rules too: any directive but the per-rule settings.)
        const m = /^(\S+)\s+([A-Za-z0-9_]+)(?:\s|$)/.exec(line);
        if (m && !RULE_SETTINGS.has(directive) && !rules.has(m[2] as string)) rules.set(m[2] as string, { name: m[2] as string, test: { kind: 'never' }, file, line: n + 1 });
        continue;
      }

      if (RULE_TYPES.has(directive)) {
        const m = /^(\S+)(?:\s+(.*))?$/.exec(args);
        const name = m?.[1] ?? '';
        const spec = (m?.[2] ?? '').trim();
        if (!RULE_NAME.test(name)) throw new FilterSyntaxError(file, n + 1, `${directive}: bad rule name "${name}" (letters, digits, _)`);
        if (spec === '') throw new FilterSyntaxError(file, n + 1, `${directive} ${name}: nothing to test`);
        let test: Test;
        if (/^eval:/.test(spec)) {
          warnings.push(`${file}:${n + 1}: ${directive} ${name}: eval: tests are not supported; the rule never hits`);
          test = { kind: 'never' };
        } else if (directive === 'header') test = parseHeaderTest(spec, where);
        else if (directive === 'meta') {
          try {
            test = { kind: 'meta', expr: parseExpression(spec) };
          } catch (err) {
            const col = (err as { col?: number }).col;
            throw new FilterSyntaxError(file, n + 1, `meta ${name}: ${(err as Error).message}`, col === undefined ? undefined : line.indexOf(spec) + col);
          }
        } else {
          const { pattern, rest } = readRegex(spec, where);
          if (rest !== '') throw new FilterSyntaxError(file, n + 1, `unexpected "${rest}" after the regex`);
          test = { kind: directive as 'body' | 'rawbody' | 'uri' | 'full', pattern };
        }
        // SA: a later definition replaces an earlier one.
        rules.set(name, { name, test, file, line: n + 1 });
        continue;
      }
      if (directive === 'score') {
        const m = /^([A-Za-z0-9_]+)\s+(.+)$/.exec(args);
        const values = m ? (m[2] as string).replace(/[()]/g, ' ').trim().split(/\s+/) : [];
        if (!m || values.length > 4 || !values.every((v) => /^[-+]?(?:\d+\.?\d*|\.\d+)$/.test(v))) {
          throw new FilterSyntaxError(file, n + 1, 'expected "score NAME n" or "score NAME n n n n"');
        }
        // The first of the four is SA's score set 0: no Bayes, no network tests — as here.
        scores.set(m[1] as string, { value: Number(values[0]), where });
        continue;
      }
      if (directive === 'describe' || directive === 'tflags') {
        const m = /^([A-Za-z0-9_]+)(?:\s+(.*))?$/.exec(args);
        if (!m) throw new FilterSyntaxError(file, n + 1, `expected "${directive} NAME text"`);
        (directive === 'describe' ? describes : tflags).set(m[1] as string, (m[2] ?? '').trim());
        continue;
      }
      if (SILENT_SETTINGS.has(directive)) continue;
      if (IGNORED_SETTINGS.has(directive) || directive.startsWith('bayes_')) {
        warnings.push(`${file}:${n + 1}: "${directive}" is a SpamAssassin setting this gateway does not use; ignored`);
        continue;
      }
      throw new FilterSyntaxError(file, n + 1, `unknown directive "${directive}"`);
    }
    const open = blocks.at(-1);
    if (open) throw new FilterSyntaxError(file, open.line, 'if/ifplugin without endif');
  }

  for (const [name, s] of scores) {
    const rule = rules.get(name);
    if (rule) rule.score = s.value;
    else warnings.push(`${s.where.file}:${s.where.line}: score for ${name}, which no rule defines; ignored`);
  }
  for (const [name, d] of describes) {
    const rule = rules.get(name);
    if (rule) rule.describe = d;
  }
  for (const [name, t] of tflags) {
    const rule = rules.get(name);
    if (rule) rule.tflags = t;
  }
  // SA's `nice` marks a rule meant to lower the score; a negative score without it is often a typo.
  for (const rule of rules.values()) {
    if (rule.score !== undefined && rule.score < 0 && !/(?:^|\s)nice(?:\s|$)/.test(rule.tflags ?? '')) {
      warnings.push(`${rule.file}:${rule.line}: ${rule.name} has a negative score but not "tflags ${rule.name} nice"`);
    }
  }
  return buildRuleSet(files.map((f) => f.file), [...rules.values()], warnings);
}

function blocksParentActive(blocks: { active: boolean }[]): boolean {
  return blocks.slice(0, -1).every((b) => b.active);
}

/** SA's default scores: 1 for a rule, 0 for a __sub-rule, 0.01 for a T_ test rule. */
function scoreOf(rule: Rule): number {
  if (rule.score !== undefined) return rule.score;
  if (rule.name.startsWith('__')) return 0;
  if (rule.name.startsWith('T_')) return 0.01;
  return 1;
}

function buildRuleSet(files: string[], all: Rule[], warnings: string[]): RuleSet {
  const index = new Map(all.map((r, i) => [r.name, i]));
  // Metas: their names must exist; order them so each runs after what it reads.
  const metaOrder: number[] = [];
  const state = new Uint8Array(all.length); // 0 new, 1 visiting, 2 done
  const visit = (i: number, from: Rule): void => {
    if (state[i] === 2) return;
    const rule = all[i] as Rule;
    if (state[i] === 1) throw new FilterSyntaxError(rule.file, rule.line, `meta ${rule.name}: depends on itself (through ${from.name})`);
    state[i] = 1;
    if (rule.test.kind === 'meta') {
      for (const name of rule.test.expr.names) {
        const j = index.get(name);
        if (j === undefined) throw new FilterSyntaxError(rule.file, rule.line, `meta ${rule.name}: no rule is called ${name}`);
        visit(j, rule);
      }
      metaOrder.push(i);
    }
    state[i] = 2;
  };
  all.forEach((r, i) => visit(i, r));

  // Rules worth running: those that score, and what the metas among them read.
  const needed = new Uint8Array(all.length);
  const need = (i: number): void => {
    if (needed[i]) return;
    needed[i] = 1;
    const t = (all[i] as Rule).test;
    if (t.kind === 'meta') for (const name of t.expr.names) need(index.get(name) as number);
  };
  all.forEach((r, i) => {
    if (scoreOf(r) !== 0 && !r.name.startsWith('__')) need(i);
  });

  const metas = metaOrder
    .filter((i) => needed[i])
    .map((i) => ({ i, expr: ((all[i] as Rule).test as { kind: 'meta'; expr: ExprParse }).expr.compile((name) => index.get(name) as number) }));
  const plain = all.map((r, i) => ({ r, i })).filter(({ r, i }) => needed[i] && r.test.kind !== 'meta' && r.test.kind !== 'never');

  return {
    files,
    rules: all.length,
    warnings,
    run(msg, env) {
      const values = new Float64Array(all.length);
      const ctx = new MessageContext(msg, env);
      const matched: number[] = [];
      for (const { r, i } of plain) {
        if (ctx.test(r.test)) {
          values[i] = 1;
          matched.push(i);
        }
      }
      for (const { i, expr } of metas) {
        if (expr(values) !== 0) {
          values[i] = 1;
          matched.push(i);
        }
      }
      const hits: FilterHit[] = [];
      for (const i of matched) {
        const rule = all[i] as Rule;
        const score = scoreOf(rule);
        if (rule.name.startsWith('__') || score === 0) continue;
        hits.push(rule.describe !== undefined ? { name: rule.name, score, describe: rule.describe } : { name: rule.name, score });
      }
      return { hits, headers: [] };
    },
  };
}

/** One message's texts, each built (and lower-cased) once, on first use. */
class MessageContext {
  private readonly headerTexts = new Map<string, string | null>();
  private readonly lowers = new Map<string, string>();
  private byName?: Map<string, ScanMessage['headers'][number][]>;
  private bodyLines?: string[];
  private bodyLower?: string[];
  private fullText?: string;
  private rawbodyText?: string;
  private urisJoined?: string;
  private readonly msg: ScanMessage;
  private readonly env: FilterEnvelope;

  constructor(msg: ScanMessage, env: FilterEnvelope) {
    this.msg = msg;
    this.env = env;
  }

  private lower(text: string): string {
    let l = this.lowers.get(text);
    if (l === undefined) {
      // Cached whatever its length: one header value is read by many rules (Subject by dozens).
      l = foldForPrefilter(text);
      this.lowers.set(text, l);
    }
    return l;
  }

  test(t: Test): boolean {
    switch (t.kind) {
      case 'exists':
        return this.msg.headers.some((f) => f.key === t.header);
      case 'header': {
        const value = this.header(t.header, t.mods) ?? t.ifUnset ?? '';
        const hit = t.pattern.test(value, t.pattern.foldCase && t.pattern.literals ? this.lower(value) : undefined);
        return t.negate ? !hit : hit;
      }
      case 'body': {
        const d = decodedText(this.msg);
        const p = t.pattern;
        // The whole text first: the prefilter rejects most rules in one indexOf.
        if (p.literals && !mayMatchText(p, p.foldCase ? this.lower(d.body) : d.body)) return false;
        // One run over the whole text before one per line (most rules match no line at all).
        if (p.anyLine && !p.anyLine(d.body)) return false;
        this.bodyLines ??= d.body.split('\n');
        if (p.foldCase && p.literals) this.bodyLower ??= this.lower(d.body).split('\n');
        const lines = this.bodyLines;
        for (let i = 0; i < lines.length; i++) if (p.test(lines[i] as string, this.bodyLower?.[i])) return true;
        return false;
      }
      case 'rawbody': {
        this.rawbodyText ??= decodedText(this.msg).rawbody.replaceAll('\r\n', '\n');
        const text = this.rawbodyText;
        return t.pattern.test(text, t.pattern.foldCase && t.pattern.literals ? this.lower(text) : undefined);
      }
      case 'uri': {
        const uris = decodedText(this.msg).uris;
        if (uris.length === 0) return false;
        if (t.pattern.literals) {
          this.urisJoined ??= uris.join('\n');
          const joined = this.urisJoined;
          if (!mayMatchText(t.pattern, t.pattern.foldCase ? this.lower(joined) : joined)) return false;
        }
        return uris.some((u) => t.pattern.test(u));
      }
      case 'full': {
        this.fullText ??= (this.msg.headers.map((f) => f.raw).join('') + '\r\n' + this.msg.rawBody.toString('utf8')).replaceAll('\r\n', '\n');
        const text = this.fullText;
        return t.pattern.test(text, t.pattern.foldCase && t.pattern.literals ? this.lower(text) : undefined);
      }
      default:
        return false;
    }
  }

  /** What SA's header tests read: the fields' values joined by newlines, or null when there are none. */
  private header(name: string, mods: HeaderMod[]): string | null {
    const key = mods.length === 0 ? name : `${name}:${mods.join(':')}`;
    let v = this.headerTexts.get(key);
    if (v === undefined) {
      v = this.computeHeader(name, mods);
      this.headerTexts.set(key, v);
    }
    return v;
  }

  private computeHeader(name: string, mods: HeaderMod[]): string | null {
    const raw = mods.includes('raw');
    const fields = this.msg.headers;
    const valueOf = (f: { value: string; raw: string }): string => (raw ? rawValue(f.raw) : decodeMimeWords(f.value));
    let values: string[];
    if (name === 'all') values = fields.map((f) => `${f.name}: ${valueOf(f)}`);
    else if (name === 'tocc') {
      const to = fields.filter((f) => f.key === 'to').map(valueOf).join('\n');
      const cc = fields.filter((f) => f.key === 'cc').map(valueOf).join('\n');
      values = to === '' && cc === '' ? [] : [to !== '' && cc !== '' ? `${to}, ${cc}` : to + cc];
    } else if (name === 'envelopefrom') values = this.env.mailFrom === '' ? [] : [this.env.mailFrom];
    else if (name === 'messageid') values = fields.filter((f) => /^(?:resent-|x-)?message-id$/.test(f.key)).map(valueOf);
    else values = (this.fieldsNamed().get(name) ?? NO_FIELDS).map(valueOf);
    if (mods.includes('addr')) values = values.map(firstAddress);
    if (mods.includes('name')) values = values.map(displayName);
    return values.length === 0 ? null : values.length === 1 ? (values[0] as string) : values.join('\n');
  }

  /** The header fields by lower-case name, grouped once per message (rules ask by name). */
  private fieldsNamed(): Map<string, ScanMessage['headers'][number][]> {
    if (this.byName) return this.byName;
    const m = new Map<string, ScanMessage['headers'][number][]>();
    for (const f of this.msg.headers) {
      const list = m.get(f.key);
      if (list) list.push(f);
      else m.set(f.key, [f]);
    }
    this.byName = m;
    return m;
  }
}

const NO_FIELDS: readonly ScanMessage['headers'][number][] = [];

/** Does `hay` (lower-cased when the pattern folds case) hold one of the pattern's literals? */
function mayMatchText(p: Pattern, hay: string): boolean {
  if (p.literals === null) return true;
  for (const lit of p.literals) if (hay.includes(lit)) return true;
  return false;
}

/** The raw value after "Name:": folding kept (as LF), the final newline dropped. */
function rawValue(raw: string): string {
  const colon = raw.indexOf(':');
  return raw
    .slice(colon + 1)
    .replace(/^[ \t]+/, '')
    .replace(/\r?\n$/, '')
    .replaceAll('\r\n', '\n');
}

/** Text with (comments) removed, by a scan (nesting counted, no regex to backtrack). */
function withoutComments(s: string): { text: string; comments: string[] } {
  let text = '';
  const comments: string[] = [];
  let depth = 0;
  let cur = '';
  let quoted = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i] as string;
    if (c === '\\' && i + 1 < s.length) {
      if (depth > 0) cur += s[i + 1];
      else text += c + s[i + 1];
      i++;
    } else if (c === '"' && depth === 0) {
      quoted = !quoted;
      text += c;
    } else if (c === '(' && !quoted) {
      depth++;
    } else if (c === ')' && depth > 0) {
      if (--depth === 0) {
        comments.push(cur.trim());
        cur = '';
      }
    } else if (depth > 0) cur += c;
    else text += c;
  }
  return { text, comments };
}

/** `:addr` — the first address of the field ("Foo <a@b>" → "a@b"). */
export function firstAddress(value: string): string {
  const lt = value.indexOf('<');
  if (lt !== -1) {
    const gt = value.indexOf('>', lt);
    return value.slice(lt + 1, gt === -1 ? undefined : gt).trim();
  }
  const { text } = withoutComments(value);
  const first = text.split(',')[0] ?? '';
  return first.trim().replace(/^"|"$/g, '');
}

/** `:name` — the display name of the first address ("Foo" <a@b>, a@b (Foo)). */
export function displayName(value: string): string {
  const lt = value.indexOf('<');
  if (lt !== -1) return value.slice(0, lt).trim().replace(/^"(.*)"$/s, '$1').replace(/\\(.)/g, '$1');
  return withoutComments(value.split(',')[0] ?? '').comments[0] ?? '';
}
