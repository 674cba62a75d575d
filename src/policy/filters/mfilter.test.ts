import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parseHeaderBlock } from '../../mail/header-block.ts';
import { compileMfilter, requiredLiteral, SPAMDETECT_HEADER } from './mfilter.ts';
import { FilterSyntaxError, type FilterEnvelope, type ScanMessage } from './types.ts';

const FIXTURE = new URL('../../../test/fixtures/filters/dmail-examples.rul', import.meta.url);
const ENV: FilterEnvelope = { mailFrom: 'a@example.net', rcpts: ['b@example.org'], clientIp: '192.0.2.1' };

/** A ScanMessage from header lines and body lines (CRLF-joined). */
function message(headers: string[], body: string[] = ['hello']): ScanMessage {
  const raw = Buffer.from([...headers, '', ...body].join('\r\n') + '\r\n', 'utf8');
  const parsed = parseHeaderBlock(raw);
  return {
    headers: parsed.fields,
    headersTruncated: parsed.truncated,
    rawBody: raw.subarray(parsed.bodyOffset),
    bodyTruncated: false,
    size: raw.length,
    lines: headers.length + 1 + body.length,
  };
}

function run(rules: string, msg: ScanMessage) {
  return compileMfilter(rules, 'test.rul').run(msg, ENV);
}

function syntaxError(rules: string, line: number, pattern: RegExp): void {
  assert.throws(
    () => compileMfilter(rules, 'bad.rul'),
    (err: unknown) => {
      assert.ok(err instanceof FilterSyntaxError, `not a FilterSyntaxError: ${String(err)}`);
      assert.equal(err.file, 'bad.rul');
      assert.equal(err.line, line, err.message);
      assert.match(err.message, pattern);
      return true;
    },
  );
}

// --- the DMail examples file ---

const examples = readFileSync(FIXTURE, 'utf8');
const program = compileMfilter(examples, 'dmail-examples.rul');
/** The 1-based line of the fixture that contains `marker`. */
function lineOf(marker: string): number {
  const i = examples.split('\n').findIndex((l) => l.includes(marker));
  assert.ok(i >= 0, marker);
  return i + 1;
}
const body = (n: number) => Array.from({ length: n }, (_, i) => `line ${i}`);

test('the examples file compiles; rules counts ifs and top-level actions', () => {
  assert.equal(program.file, 'dmail-examples.rul');
  assert.equal(program.rules, 13);
});

test('examples: a plain message matches nothing', () => {
  const r = program.run(message(['From: x@example.net', 'Subject: hello there'], body(10)), ENV);
  assert.deepEqual(r, { hits: [], headers: [] });
});

test('examples: accept stops processing (the free-pictures rule below it does not run)', () => {
  const r = program.run(message(['From: Friend <FRIEND@example.org>', 'Subject: free pictures'], body(10)), ENV);
  assert.deepEqual(r.action, { kind: 'accept', reason: 'friend of the postmaster', rule: `dmail-examples.rul:${lineOf('friend@example.org')}` });
  assert.deepEqual(r.hits, []);
});

test('examples: isin is case-insensitive on name and text; spamdetect adds a hit and a header', () => {
  const r = program.run(message(['SUBJECT: Free Pictures inside', 'From: x@example.net'], body(10)), ENV);
  const line = lineOf('spamdetect(50');
  assert.deepEqual(r.hits, [{ name: `MFILTER_${line}`, score: 50, describe: 'Free pictures offered' }]);
  assert.deepEqual(r.headers, [`${SPAMDETECT_HEADER}: Free pictures offered\r\n`]);
  assert.equal(r.action, undefined);
});

test('examples: exists() → drop is a discard', () => {
  const r = program.run(message(['supersedes: <1@x>', 'Subject: x'], body(10)), ENV);
  assert.deepEqual(r.action, { kind: 'discard', reason: 'Usenet article sent as mail', rule: `dmail-examples.rul:${lineOf('drop "Usenet')}` });
});

test('examples: (!isbinary()) and: reject text, let a binary attachment through', () => {
  const to = 'To: binaries@example.org';
  const text = program.run(message([to, 'Subject: x'], body(10)), ENV);
  assert.equal(text.action?.kind, 'reject');
  assert.equal(text.action?.reason, 'Only binaries allowed here mate!');
  const mime = [to, 'MIME-Version: 1.0', 'Content-Type: multipart/mixed; boundary="b"'];
  const parts = ['--b', 'Content-Type: text/plain', '', 'see attached', '--b', 'Content-Type: application/zip', 'Content-Transfer-Encoding: base64', '', 'UEsDBA==', '--b--'];
  assert.equal(program.run(message(mime, parts), ENV).action, undefined);
});

test('examples: escaped quotes in strings', () => {
  const r = program.run(message(['Subject: This "Word" has quotes around it'], body(10)), ENV);
  assert.deepEqual(r.hits.map((h) => h.describe), ['Quoted "Word" in subject']);
});

test('examples: flags from the then/else block, a continued line, and a concatenated reason', () => {
  // Over 100 lines: setflag("big") in the then-branch, so the List-Id rule bounces.
  const big = program.run(message(['List-Id: <announce.example.org>'], body(120)), ENV);
  assert.deepEqual(big.action, { kind: 'reject', reason: 'Too big message for this list', rule: `dmail-examples.rul:${lineOf('if (ifflag("big"))')}` });
  // Small: the else-branch set "small" and cleared "big".
  assert.equal(program.run(message(['List-Id: <announce.example.org>'], body(10)), ENV).action, undefined);
  const tiny = program.run(message(['Subject: x'], []), ENV);
  assert.deepEqual(tiny.hits.map((h) => [h.score, h.describe]), [[1, 'Almost empty: small message']]);
});

test('examples: flags start clear for every message', () => {
  program.run(message(['Subject: x'], body(120)), ENV);
  // The next, smaller message must not see "big" from the previous one.
  assert.equal(program.run(message(['List-Id: announce'], body(10)), ENV).action, undefined);
});

test('examples: wildcards, regex and encoded HTML, several hits in rule order', () => {
  const headers = [
    'Received: from a.b by relay7.SPAM.example with SMTP',
    'X-Mailer: Super Mass Mailer 3.0',
    'Subject: cheap V1AGRA',
    'MIME-Version: 1.0',
    'Content-Type: text/html',
    'Content-Transfer-Encoding: base64',
  ];
  const r = program.run(message(headers, ['PGh0bWw+']), ENV);
  assert.deepEqual(
    r.hits.map((h) => h.describe),
    ['Bulk mailer', 'Relayed by a spam network', 'Drug spam in subject', 'HTML hidden in base64'],
  );
  assert.equal(r.headers.length, 4);
});

test('examples: head_len() compares the header length', () => {
  const r = program.run(message([`Subject: ${'x'.repeat(201)}`], body(10)), ENV);
  assert.deepEqual(r.hits.map((h) => h.describe), ['Very long subject']);
});

// --- semantics beyond the examples ---

test('assignments are compile time: DMail\'s "big message" example always reads "big message"', () => {
  const rules = ['$fred = "small message"', 'if (lines()>100) then', '$fred = "big message"', 'end if', 'reject $fred'].join('\n');
  assert.equal(run(rules, message(['Subject: x'])).action?.reason, 'big message');
});

test('numeric comparisons: every operator', () => {
  const msg = message(['Subject: x'], body(7)); // 1 header + empty line + 7 = 9 lines
  const cases: [string, boolean][] = [
    ['lines() > 8', true],
    ['lines() > 9', false],
    ['lines() >= 9', true],
    ['lines() < 10', true],
    ['lines() <= 8', false],
    ['lines() == 9', true],
    ['lines() = 9', true],
    ['lines() != 9', false],
    ['lines() <> 8', true],
    ['size() > 10', true],
  ];
  for (const [cond, expected] of cases) {
    const r = run(`if (${cond}) spamdetect(1, "x")`, msg);
    assert.equal(r.hits.length === 1, expected, cond);
  }
});

test('nested blocks, else, endif and a top-level unconditional action', () => {
  const rules = [
    'if (exists("X-A")) then',
    '  if (exists("X-B")) then',
    '    spamdetect(1, "a and b")',
    '  else',
    '    spamdetect(2, "a not b")',
    '  endif',
    'else',
    '  spamdetect(3, "not a")',
    'end if',
    'spamdetect(0.5, "always")',
  ].join('\n');
  const describe = (h: string[]) => run(rules, message(h)).hits.map((x) => x.describe);
  assert.deepEqual(describe(['X-A: 1', 'X-B: 1']), ['a and b', 'always']);
  assert.deepEqual(describe(['X-A: 1']), ['a not b', 'always']);
  assert.deepEqual(describe(['X-C: 1']), ['not a', 'always']);
  assert.equal(compileMfilter(rules, 'x').rules, 3);
});

test('a final action inside a block stops the whole file', () => {
  const rules = ['if (exists("X-A")) then', '  drop "gone"', 'end if', 'spamdetect(1, "later")'].join('\n');
  const r = run(rules, message(['X-A: 1']));
  assert.deepEqual(r.action, { kind: 'discard', reason: 'gone', rule: 'test.rul:2' });
  assert.deepEqual(r.hits, []);
});

test('hits before an accept stay in the result', () => {
  const r = run('spamdetect(2, "first")\naccept "ok"\nspamdetect(9, "never")', message(['Subject: x']));
  assert.deepEqual(r.hits.map((h) => h.score), [2]);
  assert.equal(r.action?.kind, 'accept');
});

test('comments, blank lines, unquoted header names, multiple fields of one name', () => {
  const rules = ['# a comment', '', 'if (isin(Received, "evil.example")) spamdetect(1, "evil # not a comment") # trailing comment'].join('\n');
  const r = run(rules, message(['Received: from good.example', 'Received: from EVIL.example']));
  assert.deepEqual(r.hits.map((h) => h.describe), ['evil # not a comment']);
});

test('the spamdetect header carries no CR or other control character from the reason', () => {
  // A rule line cannot hold LF, but a lone CR or a control character can reach a string.
  const r = run('$r = "line one\rX-Injected:\x0b yes"\nspamdetect(1, $r)', message(['Subject: x']));
  assert.equal(r.headers.length, 1);
  assert.equal(r.headers[0], `${SPAMDETECT_HEADER}: line one X-Injected:  yes\r\n`);
  assert.equal(r.headers[0]!.indexOf('\r\n'), r.headers[0]!.length - 2);
});

test('isbinary: a NUL octet, a base64 image; not a base64 text part', () => {
  const rules = 'if (isbinary()) spamdetect(1, "bin")';
  assert.equal(run(rules, message(['Subject: x'], ['a\x00b'])).hits.length, 1);
  assert.equal(run(rules, message(['Content-Type: image/png', 'Content-Transfer-Encoding: base64'], ['iVBORw0KGgo='])).hits.length, 1);
  assert.equal(run(rules, message(['Content-Type: text/plain', 'Content-Transfer-Encoding: base64'], ['aGVsbG8='])).hits.length, 0);
});

test('ishtml, isimage, isbase64, isencodedtext, isencodedurl', () => {
  const mime = ['Content-Type: multipart/related;', ' boundary="zz"'];
  const parts = ['--zz', 'Content-Type: text/html; charset=utf-8', '', '<a href="http://%77%77%77.example.com/">x</a>', '--zz', 'Content-Type:', ' image/gif', 'Content-Transfer-Encoding: base64', '', 'R0lGOD==', '--zz--'];
  const msg = message(mime, parts);
  for (const [fn, expected] of [['ishtml', true], ['isimage', true], ['isbase64', true], ['isencodedtext', false], ['isencodedurl', true], ['isencodedhtml', false]] as const) {
    assert.equal(run(`if (${fn}()) spamdetect(1, "x")`, msg).hits.length === 1, expected, fn);
  }
  assert.equal(run('if (isencodedurl()) spamdetect(1, "x")', message(['Subject: x'], ['http://example.com/a%20b'])).hits.length, 0);
});

test('matchall needs every wildcard of the list', () => {
  const rules = 'if (matchall("Received", "*a.example*, *b.example*")) spamdetect(1, "both")';
  assert.equal(run(rules, message(['Received: from a.example', 'Received: from b.example'])).hits.length, 1);
  assert.equal(run(rules, message(['Received: from a.example'])).hits.length, 0);
});

test('match() is anchored and its wildcard treats regex characters literally', () => {
  assert.equal(run('if (match("Subject", "a.c")) spamdetect(1, "x")', message(['Subject: abc'])).hits.length, 0);
  assert.equal(run('if (match("Subject", "a?c")) spamdetect(1, "x")', message(['Subject: abc'])).hits.length, 1);
  assert.equal(run('if (match("Subject", "b")) spamdetect(1, "x")', message(['Subject: abc'])).hits.length, 0);
});

test('regex prefilter: the literal every match must contain, or none when unsure', () => {
  assert.equal(requiredLiteral('v[i1!]agra'), 'agra');
  assert.equal(requiredLiteral('Make\\.money fast'), 'make.money fast');
  assert.equal(requiredLiteral('abcd?ef'), 'abc');
  assert.equal(requiredLiteral('(free|cheap) pills+'), ' pills');
  assert.equal(requiredLiteral('a|bcdef'), undefined);
  assert.equal(requiredLiteral('(?i)abc'), undefined);
  assert.equal(requiredLiteral('\\x41bcd'), undefined);
  assert.equal(requiredLiteral('\\d+'), undefined);
  // Whatever the prefilter, the regex decides: these match (or not) exactly as RE2 says.
  const hit = (re: string, subject: string) => run(`if (regex("Subject", "${re}")) spamdetect(1, "x")`, message([`Subject: ${subject}`])).hits.length === 1;
  assert.equal(hit('v[i1!]agra', 'V1AGRA now'), true);
  assert.equal(hit('v[i1!]agra', 'viagr a'), false);
  assert.equal(hit('abcd?ef', 'xxABCEF'), true);
  assert.equal(hit('spam', 'buy \u017fpam'), true); // RE2 folds long s to s
  assert.equal(hit('^re: ', 'Re: hello'), true);
});

test('wildcards: generic * and ? positions, exact text', () => {
  const hit = (w: string, subject: string) => run(`if (match("Subject", "${w}")) spamdetect(1, "x")`, message([`Subject: ${subject}`])).hits.length === 1;
  assert.equal(hit('*win*prize*', 'You WIN a big prize today'), true);
  assert.equal(hit('*win*prize', 'You win a prize today'), false);
  assert.equal(hit('hello', 'HELLO'), true);
  assert.equal(hit('h*o', 'hello world'), false);
  assert.equal(hit('h*d', 'hello world'), true);
});

test('an absent header: isin false, !exists true, head_len 0', () => {
  const msg = message(['Subject: x']);
  assert.equal(run('if (isin("X-No", "")) spamdetect(1, "x")', msg).hits.length, 0);
  assert.equal(run('if (!exists("X-No")) spamdetect(1, "x")', msg).hits.length, 1);
  assert.equal(run('if (head_len("X-No") == 0) spamdetect(1, "x")', msg).hits.length, 1);
  assert.equal(run('if (!!exists("X-No")) spamdetect(1, "x")', msg).hits.length, 0);
});

// --- syntax errors, one per kind, each naming its line ---

test('error: unknown function', () => syntaxError('\nif (frobnicate("x")) drop "x"', 2, /unknown function 'frobnicate'/));
test('error: unknown action', () => syntaxError('if (exists("a")) explode "x"', 1, /unknown action 'explode'/));
test('error: unbalanced parenthesis (missing and extra)', () => {
  syntaxError('if (exists("a") drop "x"', 1, /unbalanced parenthesis/);
  syntaxError('if (exists("a"))) drop "x"', 1, /unbalanced parenthesis/);
});
test('error: unbalanced quote', () => syntaxError('$a = "x"\nif (isin("Subject", "oops)) drop "x"', 2, /unbalanced quote/));
test('error: missing action', () => syntaxError('# c\n\nif (exists("a"))', 3, /missing action/));
test('error: else without if, second else, end if without if', () => {
  syntaxError('accept "x"\nelse', 2, /'else' without 'if/);
  syntaxError('if (exists("a")) then\nelse\nelse\nend if', 3, /second 'else'/);
  syntaxError('end if', 1, /'end if' without 'if/);
});
test('error: unterminated block at end of file names the if', () => syntaxError('accept "x"\nif (exists("a")) then\n  drop "y"\n', 2, /never closed/));
test('error: bad number', () => {
  syntaxError('if (lines() > 10x) drop "x"', 1, /bad number '10x'/);
  syntaxError('spamdetect(five, "x")', 1, /numeric score/);
});
test('error: undefined variable', () => syntaxError('$a = "x"\nreject $b', 2, /undefined variable \$b/));
test('error: a regular expression RE2 refuses', () => syntaxError('\n\nif (regex("Subject", "(?=x)")) drop "x"', 3, /regular expression refused/));
test('error: calculations, or, comparisons of the wrong kind, arity', () => {
  syntaxError('if (lines()+10 > 5) drop "x"', 1, /calculations are not permitted/);
  syntaxError('if (exists("a")) or (exists("b")) drop "x"', 1, /no 'or'/);
  syntaxError('if (lines()) drop "x"', 1, /is a number/);
  syntaxError('if (isbinary() > 1) drop "x"', 1, /true or false/);
  syntaxError('if (isin("Subject")) drop "x"', 1, /takes 2 arguments/);
  syntaxError('if exists("a") drop "x"', 1, /expected '\('/);
});
test('error: forward and the other unsupported DMail actions', () => {
  syntaxError('if (exists("a")) forward "user@example.org"', 1, /forward is not supported: mxguard has no per-message rerouting/);
  syntaxError('forward_cc("x@example.org")', 1, /not supported/);
  syntaxError('if (allmod()) drop "x"', 1, /allmod\(\) is not supported/);
});
test('error: a continued statement is reported at its first line', () => syntaxError('if (exists("a")) \\\n  and (nope()) drop "x"', 1, /unknown function 'nope'/));
test('error: the message names the file, line and column', () => {
  assert.throws(() => compileMfilter('if (exists("a")) explode', 'f.rul'), { message: 'f.rul:1:18: unknown action \'explode\'' });
});
