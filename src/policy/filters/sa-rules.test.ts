import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parseHeaderBlock } from '../../mail/header-block.ts';
import { compilePattern, compileRules, displayName, firstAddress, requiredLiterals } from './sa-rules.ts';
import { FilterSyntaxError, type FilterEnvelope, type ScanMessage } from './types.ts';

function scan(message: string): ScanMessage {
  const buf = Buffer.from(message.replace(/\r?\n/g, '\r\n'), 'utf8');
  const h = parseHeaderBlock(buf);
  return { headers: h.fields, headersTruncated: h.truncated, rawBody: buf.subarray(h.bodyOffset), bodyTruncated: false, size: buf.length, lines: 0 };
}

const env: FilterEnvelope = { mailFrom: 'bounce@sender.example', rcpts: ['bob@example.net'], clientIp: '192.0.2.7' };
const exampleFile = new URL('../../../test/fixtures/filters/sa-example.cf', import.meta.url);

const spam = scan(`Received: from [192.0.2.7] (helo=x) by mx.test
Subject: =?utf-8?Q?Caf=C3=A9?= free money
From: "Your Bank" <winner@freemail.example>
To: undisclosed-recipients:;
X-Mailer: spamtool
Precedence: bulk
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: multipart/alternative; boundary="a"

--a
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Cheap V1agra and caf=E9 cr=E8me at www.cheap-pills.example today.

first paragraph

second
--a
Content-Type: text/html; charset=utf-8

<p>Claim your <b>prize</b> now</p><a href="https://bit.ly/xyz">here</a>
--a--
--b
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

${Buffer.from('You are a lottery winner!').toString('base64')}
--b--
`);

const ham = scan(`Received: from mail.example.org (mail.example.org [198.51.100.1]) by mx.test
Subject: Re: meeting notes
From: Alice <alice@example.org>
To: bob@example.net
Date: Mon, 1 Dec 2026 10:00:00 +0000
Message-Id: <1@example.org>
List-Id: Announcements <announce.example.org>

Hi Bob, version ok.

first paragraph
second
`);

test('the example rules file: every rule on a spam and a ham message', () => {
  const rules = compileRules([{ file: 'sa-example.cf', text: readFileSync(exampleFile, 'utf8') }]);
  assert.deepEqual(rules.files, ['sa-example.cf']);
  assert.ok(rules.rules >= 30);

  const s = rules.run(spam, env);
  assert.deepEqual(Object.fromEntries(s.hits.map((h) => [h.name, h.score])), {
    SUBJ_FREE_MONEY: 2.5,
    SUBJ_CAFE: 1,
    SUBJ_RAW_QENC: 0.5,
    FROM_NAME_BANK: 1,
    FROM_ADDR_FREE: 1,
    NO_DATE: 1,
    MSGID_MISSING: 1,
    HAS_X_MAILER: 0.1,
    TOCC_UNDISCLOSED: 1,
    ALL_BULK: 1,
    RCVD_HELO_IP: 1,
    BODY_VIAGRA: 3,
    BODY_CAFE_QP: 1,
    BODY_B64_WORDS: 1,
    BODY_HTML_TEXT: 1,
    RAW_HTML_BOLD: 1,
    URI_BIT_LY: 1.5,
    URI_WWW_BARE: 1,
    FULL_B64_MARKER: 1,
    META_FREE_PRIZE: 4,
    META_TWO_OF: 1,
  });
  const byName = new Map(s.hits.map((h) => [h.name, h]));
  assert.equal(byName.get('SUBJ_FREE_MONEY')?.describe, 'Subject offers free money');
  assert.equal(byName.get('META_FREE_PRIZE')?.describe, 'Prize from a free mail sender');
  assert.equal(byName.get('BODY_VIAGRA')?.describe, undefined);
  // Metas after the rules they read, in evaluation order.
  assert.deepEqual(s.hits.slice(-2).map((h) => h.name), ['META_FREE_PRIZE', 'META_TWO_OF']);
  assert.deepEqual(s.headers, []);
  assert.equal(s.action, undefined);

  const h = rules.run(ham, env);
  assert.deepEqual(Object.fromEntries(h.hits.map((x) => [x.name, x.score])), {
    BODY_SUBJECT_LINE: 1,
    BODY_CROSS_PARA: 1,
    KNOWN_LIST: -2,
    VERSIONED_RULE: 1,
  });
});

test('the example file warns about the eval: rule skipped in its ifplugin block only', () => {
  const rules = compileRules([{ file: 'sa-example.cf', text: readFileSync(exampleFile, 'utf8') }]);
  assert.deepEqual(rules.warnings, []); // the eval: rule is inside the skipped block
});

test('__ rules never appear in hits; default scores 1, __ 0, T_ 0.01; a later definition wins', () => {
  const rules = compileRules([
    {
      file: 'a.cf',
      text: 'body __SUB /money/\nbody PLAIN /money/\nbody T_TESTING /money/\nbody LATER /nothing/\nbody LATER /money/\nmeta BOTH __SUB && PLAIN\n',
    },
  ]);
  const r = rules.run(scan('Subject: x\n\nsend money\n'), env);
  assert.deepEqual(r.hits.map((h) => [h.name, h.score]), [['PLAIN', 1], ['T_TESTING', 0.01], ['LATER', 1], ['BOTH', 1]]);
});

test('header targets: EnvelopeFrom, MESSAGEID, :addr and :name forms, missing header with !~ and if-unset', () => {
  const rules = compileRules([
    {
      file: 'h.cf',
      text: [
        'header ENV_FROM EnvelopeFrom =~ /\\@sender\\.example$/',
        'header MSGID MESSAGEID =~ /\\@resent\\.example/',
        'header NO_CC Cc !~ /./',
        'header CC_UNSET Cc =~ /^none$/ [if-unset: none]',
        'header SENDER_ADDR Reply-To:addr =~ /^x\\@y\\.example$/',
        'header SENDER_NAME Reply-To:name =~ /^Comment Name$/',
      ].join('\n'),
    },
  ]);
  const r = rules.run(scan('Resent-Message-Id: <2@resent.example>\nReply-To: x@y.example (Comment Name)\n\nbody\n'), env);
  assert.deepEqual(r.hits.map((h) => h.name), ['ENV_FROM', 'MSGID', 'NO_CC', 'CC_UNSET', 'SENDER_ADDR', 'SENDER_NAME']);
  assert.equal(firstAddress('"Doe, J" <j@d.example>, other@x'), 'j@d.example');
  assert.equal(firstAddress('a@b.example (A), c@d'), 'a@b.example');
  assert.equal(displayName('"Doe, J" <j@d.example>'), 'Doe, J');
});

test('a catastrophic pattern cannot freeze the process (RE2: linear time)', () => {
  const rules = compileRules([{ file: 'redos.cf', text: 'body REDOS /^(a+)+$/\nheader REDOS_H Subject =~ /^(\\w+\\s?)*$/\nrawbody REDOS_R /(x+x+)+y/' }]);
  const evil = 'a'.repeat(30) + '!';
  const t = performance.now();
  const r = rules.run(scan(`Subject: ${'word '.repeat(5000)}!\n\n${evil}\n${'x'.repeat(50_000)}\n`), env);
  assert.ok(performance.now() - t < 500, `took ${performance.now() - t} ms`);
  assert.deepEqual(r.hits, []);
});

test('syntax errors name the file and the line (and the column in a meta)', () => {
  const cases: [string, number, RegExp][] = [
    ['# ok\nbody X /x/\nfrobnicate X /y/\n', 3, /unknown directive "frobnicate"/],
    ['body X /(?=look)ahead/', 1, /bad regex.*RE2 syntax/],
    ['body X /unterminated', 1, /not terminated/],
    ['body X /x/q', 1, /unsupported regex modifier "q"/],
    ['header X Subject =~ /x/ trailing', 1, /unexpected "trailing"/],
    ['header X Subject:host =~ /x/', 1, /unsupported header modifier ":host"/],
    ['header X Subject /x/', 1, /expected "Header =~/],
    ['body X-Y /x/', 1, /bad rule name "X-Y"/],
    ['\n\nmeta M A && NOPE\nbody A /a/', 3, /no rule is called NOPE/],
    ['meta M1 M2\nmeta M2 M1', 1, /depends on itself/],
    ['meta M (A &&', 1, /expression incomplete/],
    ['score X one', 1, /expected "score NAME n"/],
    ['endif', 1, /endif without/],
    ['\nifplugin Foo\nbody X /x/', 2, /without endif/],
  ];
  for (const [text, line, why] of cases) {
    assert.throws(
      () => compileRules([{ file: 'bad.cf', text }]),
      (err: unknown) => err instanceof FilterSyntaxError && err.file === 'bad.cf' && err.line === line && why.test(err.message),
      `${JSON.stringify(text)} → line ${line} ${why}`,
    );
  }
  try {
    compileRules([{ file: 'bad.cf', text: 'body A /a/\nmeta M A && & A' }]);
    assert.fail('no error');
  } catch (err) {
    assert.ok(err instanceof FilterSyntaxError);
    assert.equal(err.col, 13); // the lone &
  }
});

test('SA settings we do not use and eval: rules are warnings, not errors', () => {
  const rules = compileRules([
    {
      file: 'w.cf',
      text: 'required_score 5\nloadplugin Mail::SpamAssassin::Plugin::Foo\nheader EV eval:check_for_forged_received()\nscore NOT_DEFINED 1\nmeta M EV || 0\nlang de describe M Etwas\nbody NEG /x/\nscore NEG -1\nbody NICE /x/\nscore NICE -1\ntflags NICE nice',
    },
  ]);
  assert.deepEqual(rules.warnings, [
    'w.cf:1: "required_score" is a SpamAssassin setting this gateway does not use; ignored',
    'w.cf:2: "loadplugin" is a SpamAssassin setting this gateway does not use; ignored',
    'w.cf:3: header EV: eval: tests are not supported; the rule never hits',
    'w.cf:4: score for NOT_DEFINED, which no rule defines; ignored',
    'w.cf:7: NEG has a negative score but not "tflags NEG nice"',
  ]);
  // Negative scores count either way; the eval: rule (and so M) never hits.
  assert.deepEqual(rules.run(scan('\nx\n'), env).hits, [{ name: 'NEG', score: -1 }, { name: 'NICE', score: -1 }]);
});

test('if / else / endif: version and can(); nested blocks', () => {
  const rules = compileRules([
    {
      file: 'if.cf',
      text: [
        'if (version >= 4.000000)',
        '  body V4 /x/',
        'else',
        '  body V3 /x/',
        'endif',
        'ifplugin Mail::SpamAssassin::Plugin::DKIM',
        '  if (version >= 3.000000)',
        '    body NESTED /x/',
        '  endif',
        'else',
        '  body NO_DKIM /x/',
        'endif',
        'if !can(Mail::SpamAssassin::Conf::feature_x) && version > 3',
        '  body NO_FEATURE /x/',
        'endif',
      ].join('\n'),
    },
  ]);
  assert.deepEqual(rules.run(scan('\nx\n'), env).hits.map((h) => h.name), ['V3', 'NO_DKIM', 'NO_FEATURE']);
});

test('regex forms: m{} with nested braces, m!!, \\/ in //, \\# (a bare # starts a comment), x modifier with an escaped space', () => {
  const rules = compileRules([
    {
      file: 'r.cf',
      text: [
        'body BRACES m{^a{2}b$}',
        'body BANG m!a/b!',
        'body SLASH /c\\/d/ # a comment',
        'body HASH /\\#1/',
        'body EXT / e \\  f /x',
      ].join('\n'),
    },
  ]);
  const hits = (text: string): string[] => rules.run(scan(`\n${text}\n`), env).hits.map((h) => h.name);
  assert.deepEqual(hits('aab'), ['BRACES']);
  assert.deepEqual(hits('a/b c/d #1 e f'), ['BANG', 'SLASH', 'HASH', 'EXT']);
});

test('literal prefilter: what a match must contain', () => {
  assert.deepEqual(requiredLiterals('\\bcheap\\s+(?:meds|pills)\\b', true), ['cheap']);
  assert.deepEqual(requiredLiterals('[a-z]+@[a-z]+\\.com', false), ['.com']);
  assert.deepEqual(requiredLiterals('(ab|cd)e', false), ['abe', 'cde']);
  assert.deepEqual(requiredLiterals('colou?r', false), ['colo']);
  assert.equal(requiredLiterals('\\d+|x', false), null);
  assert.equal(requiredLiterals('a*', false), null);
  // Case folding: the prefilter lower-cases, RE2 folds Unicode (ſ is s, K is k).
  const p = compilePattern('stark', 'i');
  assert.deepEqual(p.literals, ['stark']);
  assert.equal(p.test('ſtar\u212a'), true);
  assert.equal(compilePattern('(?i)Hello', '').test('HELLO'), true);
});
