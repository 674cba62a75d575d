// DMail's MFilter rule language (filters.mfilter), compiled once into closures and run per
// message. The language as DMail documents it (netwinsite.com/dmail/mfilter.html, DMail 2.9):
//
//   $variable = "quoted string" [+ "quoted string" [+ $variable ...]]     (compile time only)
//   accept "reason" | bounce "reason" | reject "reason" | drop "reason" | then
//     | setflag("flag") | clearflag("flag") | spamdetect(score, "reason")
//   if (cond) [and (cond) ...] action
//   if (cond) [and (cond) ...] then  ...  [else  ...]  end if
//   cond: a predefined function, `function() > N` (no calculations), or `!cond`
//   a line ending in '\' continues on the next; strings in double quotes, \" escapes a quote.
//
// Where the documentation is silent, the choices are a mail admin's expectations and each is
// marked "DMail is silent" below. Everything that could cost per message (regex compile,
// lower-casing needles, header strings) happens in compileMfilter, not in run().
import { linearRegex, type LinearRegex } from '../../util/regex.ts';
import { globMatches } from '../../util/pattern.ts';
import { FilterSyntaxError, type FilterEnvelope, type FilterHit, type FilterResult, type ScanMessage } from './types.ts';

export interface MfilterProgram {
  readonly file: string;
  /** Number of rules (if-statements and top-level actions), for logs. */
  readonly rules: number;
  run(msg: ScanMessage, env: FilterEnvelope): FilterResult;
}

/** Header added by spamdetect: DMail names none in its docs, so ours says where it came from. */
export const SPAMDETECT_HEADER = 'X-Mfilter-Spam';

// ---------------------------------------------------------------------------------------------
// Run time: one Scan per message, with lazily computed facts shared by all rules.

interface MimePart {
  /** Lower-case media type ("text/html"), "" when the part says none. */
  readonly type: string;
  /** Lower-case Content-Transfer-Encoding, "" when none. */
  readonly encoding: string;
}

class Scan {
  readonly msg: ScanMessage;
  readonly flags: Uint8Array;
  readonly hits: FilterHit[] = [];
  readonly headers: string[] = [];
  action: FilterResult['action'];
  private readonly keyIndex: ReadonlyMap<string, number>;
  private values: (string[] | undefined)[] | undefined;
  private lowered: (string[] | undefined)[] | undefined;
  private bodyText: string | undefined;
  private mimeParts: MimePart[] | undefined;

  constructor(msg: ScanMessage, keyIndex: ReadonlyMap<string, number>, flagCount: number) {
    this.msg = msg;
    this.keyIndex = keyIndex;
    this.flags = new Uint8Array(flagCount);
  }

  /** The values of the header with key id `id` (all its fields), or undefined when absent. */
  header(id: number): string[] | undefined {
    if (this.values === undefined) {
      // One pass over the fields collects every header the program names.
      const values: (string[] | undefined)[] = new Array(this.keyIndex.size);
      for (const f of this.msg.headers) {
        const k = this.keyIndex.get(f.key);
        if (k !== undefined) (values[k] ??= []).push(f.value);
      }
      this.values = values;
    }
    return this.values[id];
  }

  headerLower(id: number): string[] | undefined {
    this.lowered ??= new Array(this.keyIndex.size);
    let low = this.lowered[id];
    if (low === undefined) {
      const v = this.header(id);
      if (v === undefined) return undefined;
      low = v.map((s) => s.toLowerCase());
      this.lowered[id] = low;
    }
    return low;
  }

  /** Lower-case values with RE2's extra fold (long s → s), for regex prefilters. */
  headerFolded(id: number): string[] | undefined {
    const low = this.headerLower(id);
    if (low === undefined || !low.some((v) => v.includes('\u017f'))) return low;
    return low.map((v) => v.replaceAll('\u017f', 's'));
  }

  /** The scanned body as text: latin1 keeps one char per octet, so NUL and 8-bit survive. */
  body(): string {
    this.bodyText ??= this.msg.rawBody.toString('latin1');
    return this.bodyText;
  }

  /** The message's own type and each MIME part's, found by their header lines in the body. */
  parts(): MimePart[] {
    this.mimeParts ??= findParts(this.msg, this.body());
    return this.mimeParts;
  }
}

/** Parses a field value "text/HTML; charset=x" into its lower-case first token. */
function firstToken(value: string): string {
  const semi = value.indexOf(';');
  return (semi === -1 ? value : value.slice(0, semi)).trim().toLowerCase();
}

/**
 * The top-level Content-Type/Content-Transfer-Encoding and those of every part. Not a full MIME
 * parser: a part header is the block of lines after a "--boundary" line, up to its empty line,
 * which is what the checks below need (types and encodings, not contents).
 */
function findParts(msg: ScanMessage, body: string): MimePart[] {
  let type = '';
  let encoding = '';
  for (const f of msg.headers) {
    if (f.key === 'content-type' && type === '') type = firstToken(f.value);
    else if (f.key === 'content-transfer-encoding' && encoding === '') encoding = firstToken(f.value);
  }
  const parts: MimePart[] = [{ type, encoding }];
  if (!type.startsWith('multipart/')) return parts;
  let pos = 0;
  while (pos < body.length) {
    const lineEnd = nextLineEnd(body, pos);
    if (body.startsWith('--', pos) && lineEnd - pos > 2) {
      // Part header lines follow, unfolded, until the empty line.
      let partType = '';
      let partEncoding = '';
      let at = lineEnd;
      let last = '';
      while (at < body.length) {
        const end = nextLineEnd(body, at);
        const line = body.slice(at, end).replace(/\r?\n$/, '');
        at = end;
        if (line === '') break;
        if ((line[0] === ' ' || line[0] === '\t') && last !== '') {
          if (last === 'content-type' && partType === '') partType = firstToken(line);
          continue;
        }
        const colon = line.indexOf(':');
        if (colon <= 0) break;
        last = line.slice(0, colon).trim().toLowerCase();
        const value = line.slice(colon + 1);
        if (last === 'content-type') partType = firstToken(value);
        else if (last === 'content-transfer-encoding') partEncoding = firstToken(value);
      }
      if (partType !== '' || partEncoding !== '') parts.push({ type: partType, encoding: partEncoding });
      pos = at;
    } else {
      pos = lineEnd;
    }
  }
  return parts;
}

function nextLineEnd(text: string, from: number): number {
  const lf = text.indexOf('\n', from);
  return lf === -1 ? text.length : lf + 1;
}

/** Not content a mail reader shows as text: the parts isbinary() counts as attachments. */
function isBinaryPart(p: MimePart): boolean {
  if (p.encoding !== 'base64' && p.encoding !== 'binary') return false;
  return !(p.type === '' || p.type.startsWith('text/') || p.type.startsWith('multipart/') || p.type.startsWith('message/'));
}

// A URL whose host is written with %-escapes: legitimate mail never hides its host that way.
const ENCODED_URL = /https?:\/\/[^/\s"'<>?#]*%[0-9a-f]{2}/i;

// ---------------------------------------------------------------------------------------------
// The language's functions. Each compiles its arguments once and returns the run-time test.

type BoolTest = (s: Scan) => boolean;
type NumTest = (s: Scan) => number;

interface CompileScope {
  /** Key id for a header name (any case), allocated on first use. */
  headerId(name: string): number;
  flagId(name: string): number;
  regex(source: string, at: Token): LinearRegex;
}

type FunctionDef =
  | { kind: 'bool'; args: number; compile(args: string[], scope: CompileScope, at: Token): BoolTest }
  | { kind: 'num'; args: number; compile(args: string[], scope: CompileScope, at: Token): NumTest };

/** A lower-case wildcard as a test; the common "*word*" becomes a plain substring test. */
function compileWildcard(pattern: string): (text: string) => boolean {
  const inner = pattern.slice(1, -1);
  if (pattern.length > 2 && pattern.startsWith('*') && pattern.endsWith('*') && !/[*?]/.test(inner)) return (t) => t.includes(inner);
  if (!/[*?]/.test(pattern)) return (t) => t === pattern;
  return (t) => globMatches(pattern, t); // linear two-pointer scan, never exponential
}

/**
 * A literal that every match of `source` must contain (lower-case ASCII), so most messages are
 * ruled out by String includes before RE2 runs. Conservative: only runs of plain characters at
 * the top level of a pattern without top-level alternation; undefined when unsure.
 */
export function requiredLiteral(source: string): string | undefined {
  if (/\\[xpPQC0-9]|\(\?/.test(source)) return undefined;
  let best = '';
  let run = '';
  let depth = 0;
  const flush = () => {
    if (run.length > best.length) best = run;
    run = '';
  };
  for (let i = 0; i < source.length; i++) {
    const ch = source[i]!;
    if (depth > 0) {
      if (ch === '\\') i++;
      else if (ch === '(') depth++;
      else if (ch === ')') depth--;
      else if (ch === '[') i = skipClass(source, i);
      continue;
    }
    if (ch === '|') return undefined;
    if (ch === '*' || ch === '?' || ch === '{') {
      // The atom before is optional: it leaves the run. '+' keeps it but ends the run.
      run = run.slice(0, -1);
      flush();
      if (ch === '{') i = Math.max(i, source.indexOf('}', i));
      if (source[i + 1] === '?') i++;
    } else if (ch === '+') {
      flush();
      if (source[i + 1] === '?') i++;
    } else if (ch === '\\') {
      const next = source[i + 1] ?? '';
      i++;
      if (/[!-/:-@[-`{-~]/.test(next)) run += next;
      else flush();
    } else if (ch === '(') {
      flush();
      depth = 1;
    } else if (ch === '[') {
      flush();
      i = skipClass(source, i);
    } else if (/[A-Za-z0-9 !"#%&',\-/:;<=>@_`~]/.test(ch)) {
      run += ch.toLowerCase();
    } else {
      flush();
    }
  }
  flush();
  return best.length >= 2 ? best : undefined;
}

/** The index of the ']' that closes the class opened at `open` ("[]a]" and "[^]a]" included). */
function skipClass(source: string, open: number): number {
  let i = open + 1;
  if (source[i] === '^') i++;
  if (source[i] === ']') i++;
  for (; i < source.length; i++) {
    if (source[i] === '\\') i++;
    else if (source[i] === ']') return i;
  }
  return source.length;
}

function anyValue(values: string[] | undefined, test: (v: string) => boolean): boolean {
  if (values === undefined) return false;
  for (const v of values) if (test(v)) return true;
  return false;
}

/** "a, b ,c" → ["a","b","c"]: DMail is silent on the list separator; a comma is what admins write. */
function wildcardList(list: string): string[] {
  return list.split(',').map((w) => w.trim()).filter((w) => w !== '');
}

const FUNCTIONS: Readonly<Record<string, FunctionDef>> = {
  // isin("header","string-not-case-sensitive"): a substring of any field of that name.
  isin: {
    kind: 'bool',
    args: 2,
    compile([name, text], scope) {
      const id = scope.headerId(name!);
      const needle = text!.toLowerCase();
      const has = (v: string): boolean => v.includes(needle); // made once, not per message
      return (s) => anyValue(s.headerLower(id), has);
    },
  },
  // exists("header")
  exists: {
    kind: 'bool',
    args: 1,
    compile([name], scope) {
      const id = scope.headerId(name!);
      return (s) => s.header(id) !== undefined;
    },
  },
  // match("header","wildcard"): the whole value matches (DMail is silent: anchored, any case).
  match: {
    kind: 'bool',
    args: 2,
    compile([name, wildcard], scope) {
      const id = scope.headerId(name!);
      const matches = compileWildcard(wildcard!.toLowerCase());
      return (s) => anyValue(s.headerLower(id), matches);
    },
  },
  // matchall("header","wildcardlist"): every wildcard of the list matches a field of that name.
  matchall: {
    kind: 'bool',
    args: 2,
    compile([name, list], scope) {
      const id = scope.headerId(name!);
      const tests = wildcardList(list!.toLowerCase()).map(compileWildcard);
      return (s) => {
        const values = s.headerLower(id);
        return values !== undefined && tests.every((matches) => values.some(matches));
      };
    },
  },
  // matchone("header","wildcardlist"): at least one wildcard of the list matches.
  matchone: {
    kind: 'bool',
    args: 2,
    compile([name, list], scope) {
      const id = scope.headerId(name!);
      const tests = wildcardList(list!.toLowerCase()).map(compileWildcard);
      const any = (v: string): boolean => tests.some((matches) => matches(v));
      return (s) => anyValue(s.headerLower(id), any);
    },
  },
  // regex("header","RE2 pattern"): an mxguard extension. DMail's design aims at regular
  // expression matching but its page names no function for it; this one runs on the
  // linear-time engine, case-insensitive like isin().
  regex: {
    kind: 'bool',
    args: 2,
    compile([name, pattern], scope, at) {
      const id = scope.headerId(name!);
      const re = scope.regex(pattern!, at);
      const literal = requiredLiteral(pattern!);
      const matches = (v: string): boolean => re.test(v);
      if (literal === undefined) return (s) => anyValue(s.header(id), matches);
      const hasLiteral = (v: string): boolean => v.includes(literal);
      return (s) => {
        const low = s.headerFolded(id);
        if (low === undefined || !low.some(hasLiteral)) return false;
        return anyValue(s.header(id), matches);
      };
    },
  },
  // ifflag("flag") (the DMail page) and isflag("flag") (the DMail 2.9 manual): the same test.
  ifflag: {
    kind: 'bool',
    args: 1,
    compile([flag], scope) {
      const id = scope.flagId(flag!);
      return (s) => s.flags[id] === 1;
    },
  },
  isflag: {
    kind: 'bool',
    args: 1,
    compile([flag], scope) {
      const id = scope.flagId(flag!);
      return (s) => s.flags[id] === 1;
    },
  },
  // isbinary(): DMail does not define it. Here: a NUL octet in the body, or a part (or the
  // message) sent base64/binary whose type is not text, multipart or message.
  isbinary: {
    kind: 'bool',
    args: 0,
    compile: () => (s) => s.msg.rawBody.includes(0) || s.parts().some(isBinaryPart),
  },
  // isbase64(): the message or one of its parts is base64-encoded.
  isbase64: { kind: 'bool', args: 0, compile: () => (s) => s.parts().some((p) => p.encoding === 'base64') },
  // ishtml(): the message or a part is text/html.
  ishtml: { kind: 'bool', args: 0, compile: () => (s) => s.parts().some((p) => p.type === 'text/html') },
  // isimage(): the message or a part is an image.
  isimage: { kind: 'bool', args: 0, compile: () => (s) => s.parts().some((p) => p.type.startsWith('image/')) },
  // isencodedhtml() / isencodedtext(): HTML or plain text hidden in base64 (a spammer's way
  // past word filters; DMail does not say which encodings count, quoted-printable is too common
  // in legitimate mail to count).
  isencodedhtml: {
    kind: 'bool',
    args: 0,
    compile: () => (s) => s.parts().some((p) => p.type === 'text/html' && p.encoding === 'base64'),
  },
  isencodedtext: {
    kind: 'bool',
    args: 0,
    compile: () => (s) => s.parts().some((p) => p.type === 'text/plain' && p.encoding === 'base64'),
  },
  // isencodedurl(): a URL in the body whose host is %-escaped (DMail is silent on the details).
  isencodedurl: { kind: 'bool', args: 0, compile: () => (s) => ENCODED_URL.test(s.body()) },
  // lines(): lines of the whole message.
  lines: { kind: 'num', args: 0, compile: () => (s) => s.msg.lines },
  // size(): octets of the whole message (an mxguard extension; DMail lists lines() only).
  size: { kind: 'num', args: 0, compile: () => (s) => s.msg.size },
  // head_len("header"): length of the first field of that name, unfolded; 0 when absent.
  head_len: {
    kind: 'num',
    args: 1,
    compile([name], scope) {
      const id = scope.headerId(name!);
      return (s) => s.header(id)?.[0]?.length ?? 0;
    },
  },
};

/** Listed by DMail but not run here, each with why (a FilterSyntaxError names it). */
const UNSUPPORTED: Readonly<Record<string, string>> = {
  forward: 'forward is not supported: mxguard has no per-message rerouting yet (use drop, reject or spamdetect)',
  forward_cc: 'forward_cc is not supported: mxguard has no per-message rerouting yet',
  report: 'report is not supported: mxguard sends no mail of its own from a filter',
  replace: 'replace is not supported: mxguard filters add header fields but never rewrite them',
  allmod: 'allmod() is not supported: DMail lists it without saying what it tests',
  call: "'call' is SurgeMail's, not DMail's MFilter",
  recipients: "'recipients' blocks are SurgeMail's, not DMail's MFilter",
};

// ---------------------------------------------------------------------------------------------
// Lexing: logical lines (continuations joined, comments dropped), then tokens.

type TokenKind = 'str' | 'num' | 'word' | 'var' | 'op';

interface Token {
  readonly kind: TokenKind;
  /** The string's value (escapes resolved), the number's text, the word, the operator. */
  readonly text: string;
  readonly line: number;
  readonly col: number;
}

interface LogicalLine {
  readonly line: number;
  readonly text: string;
}

/**
 * Splits the file into statements: a line ending in '\' continues on the next (the '\' becomes
 * a space). A '#' outside quotes starts a comment to the end of the line (DMail's examples
 * write comments that way).
 */
function logicalLines(text: string): LogicalLine[] {
  const raw = text.split(/\r?\n/);
  const out: LogicalLine[] = [];
  let pending: string | undefined;
  let start = 0;
  for (let i = 0; i < raw.length; i++) {
    let line = stripComment(raw[i]!);
    if (pending === undefined) start = i + 1;
    const trimmed = line.trimEnd();
    const continues = trimmed.endsWith('\\');
    if (continues) line = trimmed.slice(0, -1) + ' ';
    pending = (pending ?? '') + line;
    if (!continues) {
      out.push({ line: start, text: pending });
      pending = undefined;
    }
  }
  if (pending !== undefined) out.push({ line: start, text: pending });
  return out;
}

function stripComment(line: string): string {
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quoted && ch === '\\') i++;
    else if (ch === '"') quoted = !quoted;
    else if (ch === '#' && !quoted) return line.slice(0, i);
  }
  return line;
}

const TWO_CHAR_OPS = new Set(['>=', '<=', '==', '!=', '<>']);
const ONE_CHAR_OPS = '()!,+=<>';

function tokenize(file: string, l: LogicalLine): Token[] {
  const tokens: Token[] = [];
  const text = l.text;
  let i = 0;
  while (i < text.length) {
    const ch = text[i]!;
    const col = i + 1;
    if (ch === ' ' || ch === '\t' || ch === '\r') {
      i++;
    } else if (ch === '"') {
      // \" and \\ are escapes; any other backslash stays, so regex classes like \d need no doubling.
      let value = '';
      let j = i + 1;
      for (;;) {
        if (j >= text.length) throw new FilterSyntaxError(file, l.line, 'unbalanced quote: the string never ends', col);
        const c = text[j]!;
        if (c === '\\' && (text[j + 1] === '"' || text[j + 1] === '\\')) {
          value += text[j + 1];
          j += 2;
        } else if (c === '"') {
          j++;
          break;
        } else {
          value += c;
          j++;
        }
      }
      tokens.push({ kind: 'str', text: value, line: l.line, col });
      i = j;
    } else if (/[0-9]/.test(ch) || ((ch === '-' || ch === '.') && /[0-9]/.test(text[i + 1] ?? ''))) {
      const m = /^-?[0-9.]+[A-Za-z0-9_.]*/.exec(text.slice(i))![0];
      if (!/^-?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)$/.test(m)) throw new FilterSyntaxError(file, l.line, `bad number '${m}'`, col);
      tokens.push({ kind: 'num', text: m, line: l.line, col });
      i += m.length;
    } else if (ch === '$') {
      const m = /^\$[A-Za-z_][A-Za-z0-9_]*/.exec(text.slice(i));
      if (!m) throw new FilterSyntaxError(file, l.line, "'$' must start a variable name ($name)", col);
      tokens.push({ kind: 'var', text: m[0], line: l.line, col });
      i += m[0].length;
    } else if (/[A-Za-z_]/.test(ch)) {
      // Words: keywords, function names, and unquoted header names ("X-Mailer") that DMail
      // tolerates ("sometimes you may get away without" quotes).
      const m = /^[A-Za-z_][A-Za-z0-9_.\-@]*/.exec(text.slice(i))![0];
      tokens.push({ kind: 'word', text: m, line: l.line, col });
      i += m.length;
    } else if (TWO_CHAR_OPS.has(text.slice(i, i + 2))) {
      tokens.push({ kind: 'op', text: text.slice(i, i + 2), line: l.line, col });
      i += 2;
    } else if (ONE_CHAR_OPS.includes(ch)) {
      tokens.push({ kind: 'op', text: ch, line: l.line, col });
      i++;
    } else {
      throw new FilterSyntaxError(file, l.line, `unexpected character '${ch}'`, col);
    }
  }
  return tokens;
}

// ---------------------------------------------------------------------------------------------
// Parsing into statements.

type Exec = (s: Scan) => void;

type Stmt =
  | { readonly kind: 'if'; readonly line: number; readonly conds: BoolTest[]; readonly then: Stmt[]; readonly otherwise: Stmt[] }
  | { readonly kind: 'action'; readonly line: number; readonly exec: Exec; readonly stops: boolean };

/** An if … then block being filled, with the branch its lines go to. */
interface OpenBlock {
  readonly stmt: Extract<Stmt, { kind: 'if' }>;
  readonly line: number;
  inElse: boolean;
}

const COMPARE_OPS = new Set(['>', '<', '>=', '<=', '==', '=', '!=', '<>']);

function compare(op: string, a: number, b: number): boolean {
  switch (op) {
    case '>':
      return a > b;
    case '<':
      return a < b;
    case '>=':
      return a >= b;
    case '<=':
      return a <= b;
    case '!=':
    case '<>':
      return a !== b;
    default:
      return a === b; // '=' and '=='
  }
}

/** Header strings keep no CR, LF or other control character from the rule's reason. */
function headerSafe(text: string): string {
  return text.replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
}

class Parser {
  private readonly file: string;
  private readonly vars = new Map<string, string>();
  private readonly keyIndex = new Map<string, number>();
  private readonly flagIndex = new Map<string, number>();
  private tokens: Token[] = [];
  private pos = 0;
  private lineNo = 0;
  rules = 0;

  constructor(file: string) {
    this.file = file;
  }

  get headerKeys(): ReadonlyMap<string, number> {
    return this.keyIndex;
  }

  get flagCount(): number {
    return this.flagIndex.size;
  }

  private readonly scope: CompileScope = {
    headerId: (name) => {
      const key = name.toLowerCase();
      let id = this.keyIndex.get(key);
      if (id === undefined) {
        id = this.keyIndex.size;
        this.keyIndex.set(key, id);
      }
      return id;
    },
    flagId: (name) => this.flagSlot(name),
    regex: (source, at) => {
      try {
        return linearRegex(source, { ignoreCase: true });
      } catch (err) {
        throw this.error(`regular expression refused: ${(err as Error).message}`, at);
      }
    },
  };

  /** Flags are case-insensitive like everything else in a rule file (DMail is silent). */
  private flagSlot(name: string): number {
    const key = name.toLowerCase();
    let id = this.flagIndex.get(key);
    if (id === undefined) {
      id = this.flagIndex.size;
      this.flagIndex.set(key, id);
    }
    return id;
  }

  parse(text: string): Stmt[] {
    const top: Stmt[] = [];
    const open: OpenBlock[] = [];
    const target = (): Stmt[] => {
      const b = open.at(-1);
      return b === undefined ? top : b.inElse ? b.stmt.otherwise : b.stmt.then;
    };
    for (const l of logicalLines(text)) {
      this.tokens = tokenize(this.file, l);
      this.pos = 0;
      this.lineNo = l.line;
      const first = this.peek();
      if (first === undefined) continue;
      const word = first.kind === 'word' ? first.text.toLowerCase() : '';
      if (first.kind === 'var') {
        this.assignment();
      } else if (word === 'if') {
        this.next();
        this.rules++;
        const conds = this.conditions();
        const stmt: Extract<Stmt, { kind: 'if' }> = { kind: 'if', line: l.line, conds, then: [], otherwise: [] };
        target().push(stmt);
        const rest = this.peek();
        if (rest === undefined) throw this.error('missing action after the condition (an action, or then … end if)');
        if (rest.kind === 'word' && rest.text.toLowerCase() === 'then') {
          this.next();
          this.expectEnd();
          open.push({ stmt, line: l.line, inElse: false });
        } else {
          stmt.then.push(this.action());
          this.expectEnd();
        }
      } else if (word === 'else') {
        const b = open.at(-1);
        if (b === undefined) throw this.error("'else' without 'if … then'", first);
        if (b.inElse) throw this.error(`a second 'else' for the 'if' of line ${b.line}`, first);
        this.next();
        this.expectEnd();
        b.inElse = true;
      } else if (word === 'end' || word === 'endif') {
        this.next();
        // DMail writes "end if"; "endif" is accepted as the same (DMail is silent).
        if (word === 'end') {
          const w = this.next();
          if (w?.kind !== 'word' || w.text.toLowerCase() !== 'if') throw this.error("expected 'end if'", w ?? first);
        }
        this.expectEnd();
        if (open.pop() === undefined) throw this.error("'end if' without 'if … then'", first);
      } else {
        if (open.length === 0) this.rules++;
        target().push(this.action());
        this.expectEnd();
      }
    }
    const unclosed = open.at(-1);
    if (unclosed !== undefined) throw new FilterSyntaxError(this.file, unclosed.line, "'if … then' block never closed by 'end if'");
    return top;
  }

  // -- token helpers --

  private peek(): Token | undefined {
    return this.tokens[this.pos];
  }

  private next(): Token | undefined {
    return this.tokens[this.pos++];
  }

  private error(message: string, at?: Token): FilterSyntaxError {
    return new FilterSyntaxError(this.file, at?.line ?? this.lineNo, message, at?.col);
  }

  private expectOp(op: string, what: string): Token {
    const t = this.next();
    if (t?.kind !== 'op' || t.text !== op) {
      throw this.error(`${what}: expected '${op}'${t ? ` but found '${t.text}'` : ' at the end of the line'}`, t);
    }
    return t;
  }

  private expectEnd(): void {
    const t = this.peek();
    if (t === undefined) return;
    if (t.kind === 'op' && t.text === ')') throw this.error("unbalanced parenthesis: ')' without '('", t);
    throw this.error(`unexpected '${t.text}' after the end of the statement`, t);
  }

  // -- statements --

  /** $name = "str" [+ "str" | + $var ...], substituted at compile time. */
  private assignment(): void {
    const name = this.next()!;
    this.expectOp('=', `assignment to ${name.text}`);
    if (this.peek() === undefined) throw this.error(`assignment to ${name.text} has no value`, name);
    this.vars.set(name.text, this.stringExpr());
    this.expectEnd();
  }

  /** A string: quoted strings and defined $variables joined by '+'. */
  private stringExpr(): string {
    let out = this.stringTerm();
    while (this.peek()?.kind === 'op' && this.peek()!.text === '+') {
      this.next();
      out += this.stringTerm();
    }
    return out;
  }

  private stringTerm(): string {
    const t = this.next();
    if (t?.kind === 'str') return t.text;
    if (t?.kind === 'var') {
      const v = this.vars.get(t.text);
      if (v === undefined) throw this.error(`undefined variable ${t.text} (assign it on an earlier line)`, t);
      return v;
    }
    throw this.error(t ? `expected a quoted string, found '${t.text}'` : 'expected a quoted string', t);
  }

  /** A function argument: a string expression, or an unquoted word or number taken as text. */
  private argument(): string {
    const t = this.peek();
    if (t?.kind === 'word' || t?.kind === 'num') {
      this.next();
      return t.text;
    }
    return this.stringExpr();
  }

  private optionalReason(fallback: string): string {
    return this.peek() === undefined ? fallback : this.stringExpr();
  }

  private action(): Stmt {
    const t = this.next();
    const line = this.lineNo;
    if (t === undefined) throw this.error('missing action');
    if (t.kind === 'op' && t.text === ')') throw this.error("unbalanced parenthesis: ')' without '('", t);
    if (t.kind !== 'word') throw this.error(`expected an action, found '${t.text}'`, t);
    const name = t.text.toLowerCase();
    const rule = `${this.file}:${line}`;
    switch (name) {
      case 'accept': {
        // Reasons are optional (DMail is silent): a bare `accept` reads naturally.
        const reason = headerSafe(this.optionalReason('accepted by filter rule'));
        return { kind: 'action', line, stops: true, exec: (s) => (s.action = { kind: 'accept', reason, rule }) };
      }
      case 'bounce':
      case 'reject': {
        // Both refuse the message at the end of DATA: never a bounce message of our own.
        const reason = headerSafe(this.optionalReason('message refused by filter rule'));
        return { kind: 'action', line, stops: true, exec: (s) => (s.action = { kind: 'reject', reason, rule }) };
      }
      case 'drop': {
        const reason = headerSafe(this.optionalReason('dropped by filter rule'));
        return { kind: 'action', line, stops: true, exec: (s) => (s.action = { kind: 'discard', reason, rule }) };
      }
      case 'setflag':
      case 'clearflag': {
        this.expectOp('(', name);
        const id = this.flagSlot(this.argument());
        this.expectOp(')', name);
        const value = name === 'setflag' ? 1 : 0;
        return { kind: 'action', line, stops: false, exec: (s) => (s.flags[id] = value) };
      }
      case 'spamdetect': {
        this.expectOp('(', 'spamdetect(score, "reason")');
        const n = this.next();
        if (n?.kind !== 'num') throw this.error(`spamdetect needs a numeric score first${n ? `, found '${n.text}'` : ''}`, n ?? t);
        const score = Number(n.text);
        this.expectOp(',', 'spamdetect(score, "reason")');
        const reason = headerSafe(this.stringExpr());
        this.expectOp(')', 'spamdetect(score, "reason")');
        const hit: FilterHit = { name: `MFILTER_${line}`, score, describe: reason };
        const header = `${SPAMDETECT_HEADER}: ${reason}\r\n`;
        return {
          kind: 'action',
          line,
          stops: false,
          exec: (s) => {
            s.hits.push(hit);
            s.headers.push(header);
          },
        };
      }
      case 'then':
        throw this.error("'then' must follow an if condition on the same line", t);
      case 'else':
      case 'end':
      case 'endif':
        throw this.error(`'${t.text}' must be on a line of its own`, t);
      default: {
        const why = UNSUPPORTED[name];
        if (why !== undefined) {
          // forward "user@domain": its address is parsed (a malformed one is reported as
          // such), then the action is refused.
          if (name === 'forward' && this.peek() !== undefined) this.stringExpr();
          throw this.error(why, t);
        }
        if (FUNCTIONS[name] !== undefined) throw this.error(`${name}() is a condition, not an action: write if (${name}(…)) action`, t);
        throw this.error(`unknown action '${t.text}'`, t);
      }
    }
  }

  // -- conditions --

  /** (cond) [and (cond) ...] */
  private conditions(): BoolTest[] {
    const conds: BoolTest[] = [];
    for (;;) {
      const t = this.peek();
      if (t === undefined || !(t.kind === 'op' && (t.text === '(' || t.text === '!'))) {
        throw this.error(`expected '(' to open a condition${t ? `, found '${t.text}'` : ''}`, t);
      }
      conds.push(this.condition());
      const after = this.peek();
      if (after?.kind === 'word' && after.text.toLowerCase() === 'and') {
        this.next();
        continue;
      }
      if (after?.kind === 'word' && after.text.toLowerCase() === 'or') {
        throw this.error("DMail's MFilter has no 'or': write one rule per alternative, or set a flag in each", after);
      }
      return conds;
    }
  }

  /** !cond | (cond) | function(args) [op number] */
  private condition(): BoolTest {
    const t = this.next();
    if (t === undefined) throw this.error('missing condition');
    if (t.kind === 'op' && t.text === '!') {
      const inner = this.condition();
      return (s) => !inner(s);
    }
    if (t.kind === 'op' && t.text === '(') {
      const inner = this.condition();
      const close = this.next();
      if (close?.kind !== 'op' || close.text !== ')') {
        if (close?.kind === 'op' && close.text === '+') throw this.error('calculations are not permitted in a condition (lines()+10 would fail)', close);
        if (close?.kind === 'word' && close.text.toLowerCase() === 'and') throw this.error("'and' joins parenthesised conditions: (a) and (b)", close);
        throw this.error(`unbalanced parenthesis: expected ')'${close ? ` but found '${close.text}'` : ' before the end of the line'}`, close ?? t);
      }
      return inner;
    }
    if (t.kind !== 'word') throw this.error(`expected a function in the condition, found '${t.text}'`, t);
    const name = t.text.toLowerCase();
    const def = FUNCTIONS[name];
    if (def === undefined) {
      const why = UNSUPPORTED[name];
      throw this.error(why ?? `unknown function '${t.text}'`, t);
    }
    this.expectOp('(', `${name}()`);
    const args: string[] = [];
    if (!(this.peek()?.kind === 'op' && this.peek()!.text === ')')) {
      args.push(this.argument());
      while (this.peek()?.kind === 'op' && this.peek()!.text === ',') {
        this.next();
        args.push(this.argument());
      }
    }
    this.expectOp(')', `${name}()`);
    if (args.length !== def.args) throw this.error(`${name}() takes ${def.args} argument${def.args === 1 ? '' : 's'}, not ${args.length}`, t);
    const op = this.peek();
    const isCompare = op?.kind === 'op' && COMPARE_OPS.has(op.text);
    if (op?.kind === 'op' && op.text === '+') throw this.error('calculations are not permitted in a condition (lines()+10 would fail)', op);
    if (def.kind === 'bool') {
      if (isCompare) throw this.error(`${name}() is true or false, not a number to compare`, op);
      return def.compile(args, this.scope, t);
    }
    if (!isCompare) throw this.error(`${name}() is a number: compare it, e.g. ${name}() > 100`, t);
    this.next();
    const n = this.next();
    if (n?.kind !== 'num') throw this.error(`expected a number after '${op.text}'${n ? `, found '${n.text}'` : ''}`, n ?? op);
    const limit = Number(n.text);
    const value = def.compile(args, this.scope, t);
    const cmp = op.text;
    return (s) => compare(cmp, value(s), limit);
  }
}

// ---------------------------------------------------------------------------------------------
// Running.

/** Runs `stmts` in order; true when a final action stopped processing. */
function runStatements(stmts: readonly Stmt[], s: Scan): boolean {
  for (const stmt of stmts) {
    if (stmt.kind === 'action') {
      stmt.exec(s);
      if (stmt.stops) return true;
      continue;
    }
    let all = true;
    for (const cond of stmt.conds) {
      if (!cond(s)) {
        all = false;
        break;
      }
    }
    if (runStatements(all ? stmt.then : stmt.otherwise, s)) return true;
  }
  return false;
}

/** Throws FilterSyntaxError naming the (1-based) line of the first error. */
export function compileMfilter(text: string, file: string): MfilterProgram {
  const parser = new Parser(file);
  const program = parser.parse(text);
  const keyIndex = parser.headerKeys;
  const flagCount = parser.flagCount;
  return {
    file,
    rules: parser.rules,
    run(msg: ScanMessage, _env: FilterEnvelope): FilterResult {
      // Flags start clear for every message: they are per message, never shared.
      const s = new Scan(msg, keyIndex, flagCount);
      runStatements(program, s);
      const result: FilterResult = { hits: s.hits, headers: s.headers };
      if (s.action !== undefined) result.action = s.action;
      return result;
    },
  };
}
