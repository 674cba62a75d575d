import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { formatRulesProblem, parseRulesFile, RulesError, type Rule, type RulesProblem } from './rules-file.ts';
import { matchRules, type RuleLookups } from '../policy/rules/match.ts';
import { prng } from '../../test/harness/prng.ts';

const FIXTURE = new URL('../../test/fixtures/obtuse-example.rules', import.meta.url);

function one(line: string): Rule {
  const { rules } = parseRulesFile(line, 'rules');
  assert.equal(rules.length, 1, line);
  return rules[0] as Rule;
}

function problems(text: string): RulesProblem[] {
  try {
    parseRulesFile(text, 'rules');
  } catch (err) {
    assert.ok(err instanceof RulesError, String(err));
    return err.problems;
  }
  assert.fail(`no problem reported for ${JSON.stringify(text)}`);
}

test('the four fields, the actions and the optional message', () => {
  const r = one('deny:10.0.0.0/8:ALL:ALL:550 Go away');
  assert.equal(r.line, 1);
  assert.equal(r.action, 'deny');
  assert.equal(r.spelled, 'deny');
  assert.deepEqual(r.source, { items: [{ kind: 'cidr', network: '10.0.0.0', bits: 8 }] });
  assert.deepEqual(r.from, { items: [{ kind: 'all' }] });
  assert.deepEqual(r.to, { items: [{ kind: 'all' }] });
  assert.deepEqual(r.message, { code: 550, parts: [{ kind: 'text', text: 'Go away' }] });
  assert.equal(r.text, 'deny:10.0.0.0/8:ALL:ALL:550 Go away');

  assert.equal(one('allow:ALL:ALL:ALL').action, 'allow');
  assert.equal(one('allow:ALL:ALL:ALL').message, undefined);
  assert.equal(one('noto:ALL:ALL:ALL').action, 'noto');
  // smtpd's own spellings of the delayed actions.
  assert.deepEqual([one('noto_delay:ALL:ALL:ALL').action, one('noto_delay:ALL:ALL:ALL').spelled], ['noto', 'noto_delay']);
  assert.deepEqual([one('deny_delay:ALL:ALL:ALL').action, one('deny_delay:ALL:ALL:ALL').spelled], ['deny', 'deny_delay']);
});

test('comments, blank lines, CRLF, a BOM and trailing comments; line numbers count every line', () => {
  const text = '\uFEFF# smtpd_check_rules\r\n\r\n   \r\n  # indented comment\r\nallow:ALL:ALL:ALL:# everyone\r\n\tdeny:ALL:ALL:ALL:550 No:# but not really\r\nnoto:ALL:ALL:ALL  # ToList ends at the #\n';
  const { rules } = parseRulesFile(text, 'rules');
  assert.deepEqual(
    rules.map((r) => [r.line, r.action, r.message?.code]),
    [
      [5, 'allow', undefined],
      [6, 'deny', 550],
      [7, 'noto', undefined],
    ],
  );
  assert.deepEqual(rules[2]?.to, { items: [{ kind: 'all' }] });
  assert.deepEqual(parseRulesFile('', 'rules').rules, []);
  assert.deepEqual(parseRulesFile('# only comments\n\n', 'rules').rules, []);
});

test('SourceList: addresses, networks, IPv6 in brackets, globs, specials, NS=, RBL., IDENT users', () => {
  const r = one(
    'deny:192.0.2.1 198.51.100.0/24,0/0 [2001:db8::/32] [::1] [192.0.2.9] 192.168.* * *.Example.COM. mail*.example.org ALL KNOWN UNKNOWN NS=*.dns.example NS=192.0.2.0/24 NS=KNOWN RBL.bl.example.org root@gw.example.com KNOWN@ALL ALL@10.0.0.1:ALL:ALL',
  );
  assert.deepEqual(r.source.items, [
    { kind: 'ip', address: '192.0.2.1' },
    { kind: 'cidr', network: '198.51.100.0', bits: 24 },
    { kind: 'cidr', network: '0.0.0.0', bits: 0 },
    { kind: 'cidr', network: '2001:db8::', bits: 32 },
    { kind: 'ip', address: '::1' },
    { kind: 'ip', address: '192.0.2.9' },
    { kind: 'ip-pattern', pattern: '192.168.*' },
    { kind: 'ip-pattern', pattern: '*' },
    { kind: 'host', pattern: '*.example.com' },
    { kind: 'host', pattern: 'mail*.example.org' },
    { kind: 'all' },
    { kind: 'known' },
    { kind: 'unknown' },
    { kind: 'ns', match: { kind: 'host', pattern: '*.dns.example' } },
    { kind: 'ns', match: { kind: 'cidr', network: '192.0.2.0', bits: 24 } },
    { kind: 'ns', match: { kind: 'known' } },
    { kind: 'rbl', zone: 'bl.example.org' },
    { kind: 'ident', user: { kind: 'pattern', pattern: 'root' }, host: { kind: 'host', pattern: 'gw.example.com' } },
    { kind: 'ident', user: { kind: 'known' }, host: { kind: 'all' } },
    { kind: 'ident', user: { kind: 'all' }, host: { kind: 'ip', address: '10.0.0.1' } },
  ]);
  // Specials are upper case, as in smtpd: "all" is a host name.
  assert.deepEqual(one('deny:all:ALL:ALL').source.items, [{ kind: 'host', pattern: 'all' }]);
});

test('EXCEPT splits a list, any case, and nests', () => {
  assert.deepEqual(one('noto:ALL EXCEPT 192.168.1.0/24:ALL:ALL').source, {
    items: [{ kind: 'all' }],
    except: { items: [{ kind: 'cidr', network: '192.168.1.0', bits: 24 }] },
  });
  assert.deepEqual(one('noto:ALL:ALL:*@example.com, *@example.org except postmaster@* EXCEPT postmaster@example.com').to, {
    items: [
      { kind: 'address', local: { kind: 'pattern', pattern: '*' }, domain: { kind: 'pattern', pattern: 'example.com' } },
      { kind: 'address', local: { kind: 'pattern', pattern: '*' }, domain: { kind: 'pattern', pattern: 'example.org' } },
    ],
    except: {
      items: [{ kind: 'address', local: { kind: 'pattern', pattern: 'postmaster' }, domain: { kind: 'pattern', pattern: '*' } }],
      except: { items: [{ kind: 'address', local: { kind: 'pattern', pattern: 'postmaster' }, domain: { kind: 'pattern', pattern: 'example.com' } }] },
    },
  });
});

test('FromList and ToList: user@host globs, ALL on either side, USER, NS=, whole-address patterns, address literals', () => {
  const r = one('deny:ALL:Spam*@*.Example.NET ALL@aol.com postmaster@ALL USER@example.com *@NS=*.badns.example NS=UNKNOWN *spam* *@[192.0.2.1] *@[IPv6:2001:db8::1]:ALL');
  assert.deepEqual(r.from.items, [
    { kind: 'address', local: { kind: 'pattern', pattern: 'spam*' }, domain: { kind: 'pattern', pattern: '*.example.net' } },
    { kind: 'address', local: { kind: 'all' }, domain: { kind: 'pattern', pattern: 'aol.com' } },
    { kind: 'address', local: { kind: 'pattern', pattern: 'postmaster' }, domain: { kind: 'all' } },
    { kind: 'address', local: { kind: 'ident-user' }, domain: { kind: 'pattern', pattern: 'example.com' } },
    { kind: 'address', local: { kind: 'pattern', pattern: '*' }, domain: { kind: 'ns', match: { kind: 'host', pattern: '*.badns.example' } } },
    { kind: 'ns', match: { kind: 'unknown' } },
    { kind: 'pattern', pattern: '*spam*' },
    { kind: 'address', local: { kind: 'pattern', pattern: '*' }, domain: { kind: 'pattern', pattern: '[192.0.2.1]' } },
    { kind: 'address', local: { kind: 'pattern', pattern: '*' }, domain: { kind: 'pattern', pattern: '[ipv6:2001:db8::1]' } },
  ]);
});

test('the message: code, enhanced code, %F %T %H %I %U, %C and %%', () => {
  assert.deepEqual(one('noto:ALL:ALL:ALL:551 5.7.1 Sorry %H (%I), no relaying to %T for %F by %U%C 100%% sure').message, {
    code: 551,
    enhanced: '5.7.1',
    parts: [
      { kind: 'text', text: 'Sorry ' },
      { kind: 'var', name: 'H' },
      { kind: 'text', text: ' (' },
      { kind: 'var', name: 'I' },
      { kind: 'text', text: '), no relaying to ' },
      { kind: 'var', name: 'T' },
      { kind: 'text', text: ' for ' },
      { kind: 'var', name: 'F' },
      { kind: 'text', text: ' by ' },
      { kind: 'var', name: 'U' },
      { kind: 'text', text: ': 100% sure' },
    ],
  });
  assert.deepEqual(one('deny:ALL:ALL:ALL:   450   ').message, { code: 450, parts: [] });
  assert.deepEqual(one('deny:ALL:ALL:ALL:421 4.7.0 Later').message, { code: 421, enhanced: '4.7.0', parts: [{ kind: 'text', text: 'Later' }] });
  // smtpd never used an allow line's message: any code is accepted there.
  assert.equal(one('allow:ALL:ALL:ALL:250 welcome').message?.code, 250);
});

test("the OpenBSD smtpd examples (O'Reilly 2000 slides) parse as smtpd read them", () => {
  const { rules } = parseRulesFile(
    [
      'deny:*.spamhaus.com *.junkmail.com:ALL:ALL',
      'noto:ALL:ALL:*%*@*:551 Sorry %H (%I), I don\'t allow relaying to %T',
      'noto:RBL.rbl.maps.vix.com:ALL:ALL:550 Mail from %I in MAPS RBL being blocked, see http%C//maps.vix.com/rbl/',
    ].join('\n'),
    'rules',
  );
  assert.deepEqual(rules[0]?.source.items, [
    { kind: 'host', pattern: '*.spamhaus.com' },
    { kind: 'host', pattern: '*.junkmail.com' },
  ]);
  assert.deepEqual(rules[1]?.to.items, [{ kind: 'address', local: { kind: 'pattern', pattern: '*%*' }, domain: { kind: 'pattern', pattern: '*' } }]);
  assert.deepEqual(rules[2]?.source.items, [{ kind: 'rbl', zone: 'rbl.maps.vix.com' }]);
  assert.deepEqual(rules[2]?.message?.parts.at(-1), { kind: 'text', text: ' in MAPS RBL being blocked, see http://maps.vix.com/rbl/' });
  // The slide's typo (smtpd's strtok collapsed "::" and read FromList "AL") is an error here.
  assert.deepEqual(
    problems('deny:UNKNOWN:AL::ALL').map((p) => [p.line, p.column, p.message]),
    [
      [1, 17, 'empty ToList: write ALL to match everything'],
      [1, 18, 'the message must start with a 3-digit SMTP reply code and a space ("550 text"), not "ALL"'],
    ],
  );
});

test('the seed 004 example rule set (test/fixtures/obtuse-example.rules) parses verbatim', () => {
  const text = readFileSync(FIXTURE, 'utf8');
  const { rules } = parseRulesFile(text, 'obtuse-example.rules');
  assert.deepEqual(
    rules.map((r) => [r.line, r.action]),
    [
      [7, 'allow'],
      [8, 'allow'],
      [11, 'deny'],
      [14, 'allow'],
      [17, 'noto'],
    ],
  );
  const noto = rules[4];
  assert.ok(noto?.message?.parts.some((p) => p.kind === 'var' && p.name === 'I'), 'the relay denial names the client IP (%I)');
});

// Each bad line alone: [line, column, message].
const BAD: Array<[string, number, RegExp]> = [
  ['deny:ALL:ALL', 1, /expected action:SourceList:FromList:ToList\[:XXX message\], found 3 fields/],
  ['deny', 1, /found 1 field$/],
  ['reject:ALL:ALL:ALL', 1, /unknown action "reject": allow, deny or noto$/],
  ['Deny:ALL:ALL:ALL', 1, /unknown action "Deny".*lower case/],
  [':ALL:ALL:ALL', 1, /missing action/],
  ['deny::ALL:ALL', 6, /empty SourceList/],
  ['deny:ALL: , :ALL', 11, /empty FromList/],
  ['deny:ALL:ALL: # nothing', 15, /empty ToList/],
  ['deny:EXCEPT 10.0.0.1:ALL:ALL', 6, /SourceList: EXCEPT needs a pattern before it/],
  ['deny:ALL EXCEPT:ALL:ALL', 10, /SourceList: EXCEPT needs a pattern after it/],
  ['deny:ALL:ALL EXCEPT EXCEPT x@y:ALL', 14, /FromList: EXCEPT needs a pattern after it/],
  ['deny:192.168.:ALL:ALL', 6, /"192\.168\." is not an IPv4 address.*192\.168\.0\.0\/16.*192\.168\.\*/],
  ['deny:10/8:ALL:ALL', 6, /"10\/8" is not an IPv4 address/],
  ['deny:256.1.1.1:ALL:ALL', 6, /"256\.1\.1\.1" is not an IPv4 address/],
  ['deny:10.0.0.0/33:ALL:ALL', 6, /prefix longer than 32 bits/],
  ['deny:10.0.0.0/x:ALL:ALL', 6, /bad prefix length/],
  ['deny:[2001:db8::/129]:ALL:ALL', 6, /prefix longer than 128 bits/],
  ['deny:[example.com]:ALL:ALL', 6, /not an IP address or CIDR network \(inside \[\.\.\.\]/],
  ['deny:[2001:db8::1:ALL:ALL', 6, /"\[" is not closed by "\]"/],
  ['deny:[::1]x:ALL:ALL', 6, /text after the closing "\]"/],
  ['deny:2001:db8::1:ALL:ALL', 6, /an IPv6 address is written in brackets/],
  ['deny:fe80::1:ALL:ALL', 6, /an IPv6 address is written in brackets/],
  ['deny:/spam.*/:ALL:ALL', 6, /\/regex\/ patterns .* not supported/],
  ['deny:host!name:ALL:ALL', 6, /"host!name" is not an IP address.*host name pattern/],
  ['deny:NS=:ALL:ALL', 9, /"NS=" needs a pattern after NS=/],
  ['deny:RBL.:ALL:ALL', 10, /"RBL\." needs a DNS blocklist zone/],
  ['deny:@gw.example.com:ALL:ALL', 6, /has no IDENT user before the @/],
  ['deny:root@:ALL:ALL', 10, /has no host after the @/],
  ['deny:ALL:<spam@example.com>:ALL', 10, /without angle brackets/],
  ['deny:ALL:<>:ALL', 10, /null sender <> is matched by ALL or \*/],
  ['deny:ALL:@example.com:ALL', 10, /nothing before the @ \(write \*@example\.com/],
  ['deny:ALL:ALL:spam@', 18, /nothing after the @ \(write spam@\*/],
  ['deny:ALL:ALL:*@NS=', 19, /"NS=" needs a pattern/],
  ['deny:ALL:ALL:/x/', 14, /\/regex\//],
  ['deny:ALL:ALL:ALL:Go away', 18, /must start with a 3-digit SMTP reply code/],
  ['deny:ALL:ALL:ALL:550Go away', 18, /must start with a 3-digit SMTP reply code/],
  ['deny:ALL:ALL:ALL:250 Ok', 18, /reply code 250: a deny or noto reply is 4xx .* or 5xx/],
  ['deny:ALL:ALL:ALL:550 4.7.1 No', 22, /enhanced status code 4\.7\.1 does not go with reply code 550/],
  ['deny:ALL:ALL:ALL:550 No %X here', 25, /unknown "%X" in the message: known are %F %T %H %I %U, %C \(a colon\) and %% \(a percent sign\)/],
  ['deny:ALL:ALL:ALL:550 100%', 25, /"%" at the end of the message/],
  ['deny:ALL:ALL:ALL:550 see http://example.com/', 30, /text after the message: ":\/\/example\.com\/" \(a colon in a message is written %C/],
  ['deny:ALL:ALL:ALL\u0000', 17, /control character U\+0000/],
];

test('every malformed line is an error with its line and column', () => {
  for (const [line, column, message] of BAD) {
    const found = problems(`# header\n${line}\n`);
    assert.ok(found.length >= 1, line);
    const p = found[0] as RulesProblem;
    assert.equal(p.file, 'rules', line);
    assert.equal(p.line, 2, line);
    assert.match(p.message, message, line);
    assert.equal(p.column, column, `${line}: ${p.message}`);
  }
});

test('every bad line of a file is reported, in order, as FILE:LINE:COL: message; good lines do not hide them', () => {
  const text = ['allow:ALL:ALL:ALL', 'deny:192.168.:ALL:ALL', '# fine', 'noto:ALL:ALL:ALL:550 ok', 'nope:ALL:ALL:ALL', 'deny:ALL:ALL:ALL:550 %Q and 10.0.0.0/99'].join('\n');
  let error: unknown;
  try {
    parseRulesFile(text, '/etc/mxguard/smtpd_check_rules');
  } catch (err) {
    error = err;
  }
  assert.ok(error instanceof RulesError);
  assert.deepEqual(
    error.problems.map((p) => p.line),
    [2, 5, 6],
  );
  const lines = error.message.split('\n');
  assert.equal(lines.length, 3);
  assert.match(lines[0] ?? '', /^\/etc\/mxguard\/smtpd_check_rules:2:6: "192\.168\." is not an IPv4 address/);
  assert.match(lines[1] ?? '', /^\/etc\/mxguard\/smtpd_check_rules:5:1: unknown action "nope"/);
  assert.match(lines[2] ?? '', /^\/etc\/mxguard\/smtpd_check_rules:6:22: unknown "%Q"/);
  assert.equal(formatRulesProblem({ file: 'f', line: 3, column: 7, message: 'a\tb' }), 'f:3:7: a\\u0009b');
});

test('several problems on one line are all reported', () => {
  const found = problems('dney:192.168.:<x@y>:ALL:200 no');
  assert.deepEqual(
    found.map((p) => p.column),
    [1, 6, 15, 25],
  );
});

// Fuzz: lines assembled from the grammar's pieces and from random bytes. The parser must either
// return rules or throw a RulesError whose problems name real, non-comment lines with sane
// columns; it must never throw anything else, and it must give the same answer twice.
const PIECES = [
  'allow', 'deny', 'noto', 'noto_delay', 'deny_delay', 'reject', ':', ':', ':', ':', ' ', ',', '\t', 'ALL', 'KNOWN', 'UNKNOWN', 'EXCEPT',
  'except', '10.0.0.0/8', '192.168.', '192.168.*', '*', '*.example.com', '[2001:db8::/32]', '[', ']', 'NS=', 'NS=*.ns.example', 'RBL.bl.example',
  'USER@', 'user@', '@', 'a@b', '*@example.com', '<>', '/x/', '550 ', '451 4.7.1 ', '%F', '%T', '%H', '%I', '%U', '%C', '%%', '%', '%Z', '#',
  'text', '0/0', '999.1.1.1', '\u00e9', '\r',
];

const SOURCES = ['ALL', 'KNOWN', 'UNKNOWN', 'EXCEPT', '192.0.2.0/24', '10.0.0.3', '[2001:db8::/32]', '192.168.*', '*.example.com', 'NS=*.example.net', 'NS=192.0.2.0/24', 'RBL.bl.example', 'joe@ALL', 'KNOWN@10.0.0.0/8', '192.168.', '[x]'];
const ADDRESSES = ['ALL', 'EXCEPT', '*@example.com', 'ALL@b.test', 'USER@*', '*%*@*', '*', 'a@b.test', '*@NS=KNOWN', 'NS=UNKNOWN', '*@[192.0.2.1]', '<>', '@x'];

const FUZZ_DNS: RuleLookups = {
  hostname: async (ip) => (ip.endsWith('1') ? 'mx.example.com' : undefined),
  nameservers: async (domain) => (domain.length % 2 === 0 ? ['ns1.example.net', '192.0.2.53'] : []),
  rbl: async (ip) => ip.endsWith('2'),
};

test('fuzz: parseRulesFile never throws anything but RulesError, its problems are well-formed, and what it returns can be matched', async () => {
  const rand = prng(0x5eed004);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
  for (let round = 0; round < 3000; round++) {
    const lines: string[] = [];
    const n = 1 + Math.floor(rand() * 6);
    for (let i = 0; i < n; i++) {
      let line = '';
      if (rand() < 0.4) {
        // Shaped like a rule, from pieces that are mostly valid.
        const list = (xs: readonly string[]): string => Array.from({ length: 1 + Math.floor(rand() * 3) }, () => pick(xs)).join(pick([' ', ',', ' , ', '\t']));
        line = `${pick(['allow', 'deny', 'noto', 'noto_delay', 'dney'])}:${list(SOURCES)}:${list(ADDRESSES)}:${list(ADDRESSES)}`;
        if (rand() < 0.5) line += `:${pick(['550', '451 4.7.1', '553 5.7.1', '99'])} ${list(['text', '%F', '%T', '%H', '%I', '%U', '%C', '%%', '%Q'])}`;
        if (rand() < 0.2) line += pick([':# comment', ':junk', ' # c']);
      } else if (rand() < 0.15) {
        const len = Math.floor(rand() * 40);
        for (let j = 0; j < len; j++) line += String.fromCharCode(Math.floor(rand() * 128));
      } else {
        const len = Math.floor(rand() * 14);
        for (let j = 0; j < len; j++) line += pick(PIECES);
      }
      lines.push(line);
    }
    const text = lines.join('\n');
    lines.splice(0, lines.length, ...text.split('\n').map((l) => l.replace(/\r$/, ''))); // random bytes may hold newlines
    const run = (): string => {
      try {
        const { rules } = parseRulesFile(text, 'fuzz');
        for (const r of rules) {
          assert.ok(['allow', 'deny', 'noto'].includes(r.action));
          assert.ok(r.line >= 1 && r.line <= lines.length);
          if (r.message) assert.ok(r.message.code >= 400 && r.message.code <= 599);
        }
        return JSON.stringify(rules);
      } catch (err) {
        assert.ok(err instanceof RulesError, `${JSON.stringify(text)}: ${String(err)}`);
        assert.ok(err.problems.length > 0);
        for (const p of err.problems) {
          const source = lines[p.line - 1];
          assert.ok(source !== undefined, `problem on line ${p.line} of ${lines.length}`);
          assert.ok(source.trim() !== '' && !source.trim().startsWith('#'), `problem reported on a blank or comment line: ${JSON.stringify(source)}`);
          assert.ok(p.column >= 1 && p.column <= source.length + 1, `column ${p.column} outside ${JSON.stringify(source)}`);
          assert.ok(!/[\r\n]/.test(formatRulesProblem(p)), 'one line per problem');
        }
        return err.message;
      }
    };
    assert.equal(run(), run());
    let parsed: Rule[];
    try {
      parsed = parseRulesFile(text, 'fuzz').rules;
    } catch {
      continue;
    }
    const ip = pick(['192.0.2.1', '192.0.2.2', '10.0.0.3', '2001:db8::1', '::ffff:192.168.1.1']);
    const decision = await matchRules(parsed, { ip, from: pick(['', 'a@b.test', 'x%y@example.com']), to: pick(['u@example.com', 'v@[192.0.2.1]']), ...(rand() < 0.5 ? { identUser: 'joe' } : {}) }, FUZZ_DNS);
    if (decision?.reply) assert.ok(Buffer.byteLength(`${decision.reply.code} ${decision.reply.enhanced} ${decision.reply.text}\r\n`) <= 512);
  }
});
