import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import {
  checkConfigFile,
  closest,
  ConfigError,
  defaultConfig,
  editDistance,
  formatConfigMessage,
  loadConfigFile,
  parseConfigText,
  schemaKeyPaths,
  type ConfigMessage,
  type LoadedConfig,
} from './load.ts';
import { prng } from '../../test/harness/prng.ts';

const EXAMPLE = fileURLToPath(new URL('../../docs/mxguard.example.yaml', import.meta.url));

/** YAML from lines, so that line N of the document is element N-1 of the array. */
function yaml(...lines: string[]): string {
  return lines.join('\n') + '\n';
}

function problems(text: string, baseDir = '/srv/mx'): ConfigMessage[] {
  try {
    parseConfigText(text, 'mx.yaml', baseDir);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    return err.problems;
  }
  assert.fail('expected the config to be refused');
}

/** "LINE:COL KEY" of each problem, for compact assertions. */
function where(list: ConfigMessage[]): string[] {
  return list.map((p) => `${p.line}:${p.column} ${p.key}`);
}

let tmp = '';
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-config-'));
});
after(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('defaults', () => {
  test('an empty file is all defaults, paths resolved against the base directory', () => {
    const { config, warnings } = parseConfigText('', 'mx.yaml', '/srv/mx');
    assert.deepEqual(warnings, []);
    assert.deepEqual(config.listen, [{ address: '127.0.0.1:2525', mode: 'mx' }]);
    assert.deepEqual(config.local_domains, ['localhost']);
    assert.equal(config.data_dir, '/srv/mx/var');
    assert.equal(config.deliver, 'maildir:/srv/mx/var/maildir');
    assert.equal(config.tls, undefined);
    assert.equal(config.limits.max_rcpts, 100);
    assert.equal(config.limits.max_message_size, 25 * 1024 * 1024);
    assert.equal(config.limits.command_timeout, 300_000);
    assert.deepEqual(config.relay.forward_from_ip, ['127.0.0.0/8', '::1']);
    assert.deepEqual(config, defaultConfig('/srv/mx'));
  });

  test('comments only, a bare ~ and an empty document are empty files too', () => {
    for (const text of ['# nothing here\n\n# at all\n', '~\n', '---\n', '\n\n']) {
      assert.deepEqual(parseConfigText(text, 'mx.yaml', '/srv/mx').config, defaultConfig('/srv/mx'), JSON.stringify(text));
    }
  });

  test('defaultConfig resolves against the cwd by default', () => {
    const config = defaultConfig();
    assert.equal(config.data_dir, path.resolve('var'));
    assert.equal(config.deliver, `maildir:${path.resolve('var', 'maildir')}`);
  });

  test('a section with nothing under it is the same as leaving it out', () => {
    const { config } = parseConfigText(yaml('smtp:', 'limits:', '  # max_rcpts: 5', 'tls:', 'log:'), 'mx.yaml', '/srv/mx');
    assert.deepEqual(config, defaultConfig('/srv/mx'));
  });

  test('values are converted: durations to ms, sizes to bytes, domains lowercased', () => {
    const { config } = parseConfigText(
      yaml('local_domains: [Example.COM.]', 'smtp:', '  greet_delay: 2s', 'limits:', '  max_message_size: 10MB', '  command_timeout: 90', 'queue:', '  retry: [30s, 1h]'),
      'mx.yaml',
      '/srv/mx',
    );
    assert.deepEqual(config.local_domains, ['example.com']);
    assert.equal(config.smtp.greet_delay, 2000);
    assert.equal(config.limits.max_message_size, 10 * 1024 * 1024);
    assert.equal(config.limits.command_timeout, 90_000);
    assert.deepEqual(config.queue.retry, [30_000, 3_600_000]);
  });

  test('IDN domains may be written in Unicode and are kept in their ASCII (xn--) form', () => {
    const { config } = parseConfigText(
      yaml('local_domains: [bücher.example, BÜCHER.example., xn--bcher-kva.test]', 'relay:', '  relay_to: [münchen.example]', '  forward_from: [пример.example]'),
      'mx.yaml',
      '/srv/mx',
    );
    assert.deepEqual(config.local_domains, ['xn--bcher-kva.example', 'xn--bcher-kva.example', 'xn--bcher-kva.test']);
    assert.deepEqual(config.relay.relay_to, ['xn--mnchen-3ya.example']);
    assert.deepEqual(config.relay.forward_from, ['xn--e1afmkfd.example']);
    // Still refused: what no IDNA mapping makes a host name.
    assert.deepEqual(where(problems(yaml('local_domains: [bücher.example, "bü cher.example", "-x.example"]'))), ['1:33 local_domains[1]', '1:52 local_domains[2]']);
  });

  test('limits.max_line_length: 0 (no limit) by default, or at least 80', () => {
    assert.equal(parseConfigText('', 'mx.yaml', '/srv/mx').config.limits.max_line_length, 0);
    assert.equal(parseConfigText(yaml('limits:', '  max_line_length: 1000'), 'mx.yaml', '/srv/mx').config.limits.max_line_length, 1000);
  });
});

describe('YAML syntax errors', () => {
  test('a tab used as indentation', () => {
    const list = problems(yaml('smtp:', '\tbanner: hello'));
    assert.deepEqual(where(list), ['2:1 ']);
    assert.match(list[0]?.message ?? '', /tabs are not allowed as indentation/);
  });

  test('an unclosed quote', () => {
    const list = problems(yaml('smtp:', '  banner: "ESMTP', 'limits: {}'));
    assert.equal(list[0]?.line, 4);
    assert.equal(list[0]?.column, 1);
    assert.match(list[0]?.message ?? '', /missing closing "quote/);
  });

  test('a mapping value where none may start', () => {
    const list = problems(yaml('limits:', '  max_rcpts: max_errors: 3'));
    assert.deepEqual(where(list), ['2:14 ']);
    assert.equal(list[0]?.message, 'YAML syntax error: nested mappings are not allowed in compact mappings');
  });

  test('an unquoted IPv6 listen address gets a hint', () => {
    const list = problems(yaml('listen:', '  - [::]:25'));
    assert.deepEqual(where(list), ['2:9 ']);
    assert.match(list[0]?.message ?? '', /put IPv6 addresses in quotes/);
  });

  test('two documents in one file', () => {
    const list = problems(yaml('limits:', '  max_rcpts: 5', '---', 'smtp: {}'));
    assert.deepEqual(where(list), ['3:1 ']);
    assert.match(list[0]?.message ?? '', /more than one YAML document/);
  });

  test('a duplicate key names the setting and the first occurrence', () => {
    const list = problems(yaml('smtp:', '  banner: one', '  greet_delay: 1s', '  banner: two'));
    assert.deepEqual(where(list), ['4:3 smtp.banner']);
    assert.equal(list[0]?.message, 'duplicate key (first set on line 2)');
  });

  test('a duplicate top-level section', () => {
    assert.deepEqual(where(problems(yaml('limits:', '  max_rcpts: 5', 'limits:', '  max_errors: 3'))), ['3:1 limits']);
  });

  test('an alias to no anchor, and a key that is a list', () => {
    assert.deepEqual(where(problems(yaml('limits:', '  max_rcpts: *many'))), ['2:14 limits.max_rcpts']);
    assert.deepEqual(where(problems(yaml('limits:', '  ? [a, b]', '  : 1'))), ['2:5 limits']);
  });

  test('aliases that resolve are followed', () => {
    const { config } = parseConfigText(yaml('local_domains: &doms [a.example, b.example]', 'limits:', '  max_rcpts: &n 7', '  max_errors: *n'), 'mx.yaml', '/srv/mx');
    assert.deepEqual(config.local_domains, ['a.example', 'b.example']);
    assert.equal(config.limits.max_errors, 7);
  });
});

describe('the top level must be a mapping', () => {
  for (const [name, text, what] of [
    ['a list', yaml('- listen', '- limits'), 'a list'],
    ['a string', yaml('hello'), 'the text "hello"'],
    ['a number after comments', yaml('# config', '', '42'), 'the text 42'],
  ] as const) {
    test(name, () => {
      const list = problems(text);
      assert.deepEqual(where(list), ['1:1 ']);
      assert.equal(list[0]?.message, `the config must be a mapping of settings (key: value lines), not ${what}`);
    });
  }
});

describe('schema problems at the exact node', () => {
  test('a value of the wrong type points at the value', () => {
    const list = problems(yaml('# limits', 'limits:', '  max_rcpts: lots'));
    assert.deepEqual(where(list), ['3:14 limits.max_rcpts']);
    assert.equal(list[0]?.message, 'expected a number, got "lots"');
  });

  test('an element of a list points at the element', () => {
    const list = problems(yaml('relay:', '  forward_from_ip:', '    - 10.0.0.0/8', '    - 10.1.2.300', '    - 2001:db8::/32'));
    assert.deepEqual(where(list), ['4:7 relay.forward_from_ip[1]']);
    assert.equal(list[0]?.message, '"10.1.2.300" is not an IP address or CIDR network');
  });

  test('flow lists point at the element too', () => {
    assert.deepEqual(where(problems(yaml('local_domains: [ok.example, "not a domain"]'))), ['1:29 local_domains[1]']);
  });

  test('an empty value points at its key', () => {
    const list = problems(yaml('limits:', '  max_rcpts:', '  max_errors: 3'));
    assert.deepEqual(where(list), ['2:3 limits.max_rcpts']);
    assert.equal(list[0]?.message, 'expected a number, got an empty value');
  });

  test('messages a mail administrator can read', () => {
    const cases: [string, string, string][] = [
      ['smtp:\n  delay_reject: yes\n', 'smtp.delay_reject', 'expected true or false, got "yes"'],
      ['smtp:\n  early_talker: drop\n', 'smtp.early_talker', 'expected one of ignore, reject, score, got "drop"'],
      ['smtp:\n  greet_delay: [1s]\n', 'smtp.greet_delay', 'expected a duration such as 30s, 2m, 1h or 5d, got a list'],
      ['smtp:\n  greet_delay: soon\n', 'smtp.greet_delay', '"soon" is not a duration (use e.g. 500ms, 30s, 2m, 1h, 5d)'],
      ['limits:\n  max_message_size: true\n', 'limits.max_message_size', 'expected a size such as 64KB, 25MB or 1GB, got true'],
      ['limits:\n  max_message_size: -5\n', 'limits.max_message_size', 'must be at least 0, got -5'],
      ['limits:\n  max_rcpts: 0\n', 'limits.max_rcpts', 'must be greater than 0, got 0'],
      ['limits:\n  max_rcpts: 2.5\n', 'limits.max_rcpts', 'expected a whole number, got 2.5'],
      ['limits:\n  max_line_length: 20\n', 'limits.max_line_length', 'must be 0 (no limit) or at least 80, got 20'],
      ['limits:\n  max_line_length: -1\n', 'limits.max_line_length', 'must be at least 0, got -1'],
      ['queue:\n  connections: 1000\n', 'queue.connections', 'must be at most 256, got 1000'],
      ['queue:\n  retry: []\n', 'queue.retry', 'must list at least 1 entry'],
      ['listen: 0.0.0.0:25\n', 'listen', 'expected a list, got "0.0.0.0:25"'],
      ['listen: ["0.0.0.0"]\n', 'listen[0]', '"0.0.0.0" is not host:port (e.g. 0.0.0.0:25, [::]:25)'],
      ['smtp: 5\n', 'smtp', 'expected a mapping (key: value lines), got 5'],
      ['deliver: postfix\n', 'deliver', '"postfix" is not smtp://host:port, lmtp://host:port or maildir:DIR'],
      ['data_dir: ""\n', 'data_dir', 'must not be empty'],
      ['log:\n  file: ""\n', 'log.file', 'must not be empty (leave it out to log to standard output)'],
    ];
    for (const [text, key, message] of cases) {
      const list = problems(text);
      assert.equal(list.length, 1, text);
      assert.equal(list[0]?.key, key, text);
      assert.equal(list[0]?.message, message, text);
    }
  });

  test('a missing required key points at the mapping that should hold it', () => {
    const cert = path.join(tmp, 'only-cert.pem');
    fs.writeFileSync(cert, 'x');
    const list = problems(yaml('listen: ["127.0.0.1:25"]', 'tls:', `  cert: ${cert}`));
    assert.deepEqual(where(list), ['3:3 tls.key']);
    assert.equal(list[0]?.message, 'required setting is missing');
  });
});

describe('unknown keys', () => {
  test('one problem per key, each at its own position, with suggestions', () => {
    const list = problems(yaml('limits:', '  max_rcpt: 5', '  max_errors: 3', '  bogus_thing: 1', '  max-connections: 9'));
    assert.deepEqual(where(list), ['2:3 limits.max_rcpt', '4:3 limits.bogus_thing', '5:3 limits.max-connections']);
    assert.equal(list[0]?.message, 'unknown key "max_rcpt", did you mean "max_rcpts"?');
    assert.match(list[1]?.message ?? '', /^unknown key "bogus_thing" \(known keys here: max_message_size, max_rcpts, /);
    assert.equal(list[2]?.message, 'unknown key "max-connections", did you mean "max_connections"?');
  });

  test('top-level typos and settings outside their section', () => {
    const list = problems(yaml('lsiten: ["127.0.0.1:25"]', 'max_rcpts: 5', 'smpt:', '  banner: x'));
    assert.deepEqual(where(list), ['1:1 lsiten', '2:1 max_rcpts', '3:1 smpt']);
    assert.equal(list[0]?.message, 'unknown key "lsiten", did you mean "listen"?');
    assert.equal(list[1]?.message, 'unknown key "max_rcpts": it belongs under "limits:"');
    assert.equal(list[2]?.message, 'unknown key "smpt", did you mean "smtp"?');
  });

  test('edit distance', () => {
    assert.equal(editDistance('max_rcpt', 'max_rcpts'), 1);
    assert.equal(editDistance('smpt', 'smtp'), 1);
    assert.equal(editDistance('kitten', 'sitting'), 3);
    assert.equal(closest('max_rcpt', ['max_errors', 'max_rcpts']), 'max_rcpts');
    assert.equal(closest('queue_size', ['max_rcpts', 'listen']), undefined);
  });
});

describe('several problems at once', () => {
  test('all are reported, sorted by position, one per line of the message', () => {
    const text = yaml(
      'listen: ["0.0.0.0:25", "nowhere"]', // 1
      'limits:', //                           2
      '  max_rcpts: x', //                    3
      '  max_rcpt: 5', //                     4
      'smtp:', //                             5
      '  early_talker: maybe', //             6
      'tls:', //                              7
      '  cert: missing/cert.pem', //          8
      '  key: missing/key.pem', //            9
    );
    let error: unknown;
    try {
      parseConfigText(text, 'mx.yaml', tmp);
    } catch (err) {
      error = err;
    }
    assert.ok(error instanceof ConfigError);
    assert.deepEqual(where(error.problems), [
      '1:24 listen[1]',
      '3:14 limits.max_rcpts',
      '4:3 limits.max_rcpt',
      '6:17 smtp.early_talker',
      '8:9 tls.cert',
      '9:8 tls.key',
    ]);
    const lines = error.message.split('\n');
    assert.equal(lines.length, 6);
    assert.equal(lines[1], 'mx.yaml:3:14: limits.max_rcpts: expected a number, got "x"');
    assert.equal(lines[4], `mx.yaml:8:9: tls.cert: file ${path.join(tmp, 'missing/cert.pem')} does not exist`);
    assert.equal(error.name, 'ConfigError');
  });

  test('control characters in a key do not break the one-problem-per-line format', () => {
    const list = problems(yaml('"bad\\nkey": 1'));
    const message = new ConfigError(list).message;
    assert.equal(message.split('\n').length, 1);
    assert.match(message, /bad\\u000akey/);
  });

  test('formatConfigMessage', () => {
    const m: ConfigMessage = { file: 'a.yaml', line: 3, column: 5, key: 'limits.max_rcpts', message: 'bad' };
    assert.equal(formatConfigMessage(m), 'a.yaml:3:5: limits.max_rcpts: bad');
    assert.equal(formatConfigMessage(m, 'warning'), 'a.yaml:3:5: warning: limits.max_rcpts: bad');
    assert.equal(formatConfigMessage({ ...m, line: 0, column: 0, key: '' }), 'a.yaml: bad');
  });
});

describe('tls files and listen warnings', () => {
  test('tls files that exist are fine, and then public listen addresses are too', () => {
    fs.writeFileSync(path.join(tmp, 'cert.pem'), 'x');
    fs.writeFileSync(path.join(tmp, 'key.pem'), 'x');
    const { config, warnings } = parseConfigText(yaml('listen: ["0.0.0.0:25", "[::]:25"]', 'tls:', '  cert: cert.pem', '  key: key.pem'), 'mx.yaml', tmp);
    assert.deepEqual(warnings, []);
    assert.deepEqual(config.tls, { cert: path.join(tmp, 'cert.pem'), key: path.join(tmp, 'key.pem') });
  });

  test('a tls file that is a directory is an error', () => {
    fs.writeFileSync(path.join(tmp, 'key2.pem'), 'x');
    assert.deepEqual(where(problems(yaml('tls:', '  cert: .', '  key: key2.pem'), tmp)), ['2:9 tls.cert']);
  });

  test('non-loopback listen without tls is a warning at the address', () => {
    const { warnings } = parseConfigText(yaml('listen:', '  - "127.0.0.1:25"', '  - "0.0.0.0:25"', '  - "[::1]:25"', '  - "localhost:25"', '  - "[::]:25"'), 'mx.yaml', '/srv/mx');
    assert.deepEqual(where(warnings), ['3:5 listen[1]', '6:5 listen[4]']);
    assert.equal(warnings[0]?.message, '0.0.0.0:25 is not a loopback address and tls is not configured: AUTH and STARTTLS unavailable');
  });
});

describe('relative paths', () => {
  test('are resolved against the config file directory, not the cwd', async () => {
    const dir = path.join(tmp, 'etc', 'mxguard');
    fs.mkdirSync(path.join(dir, 'tls'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'tls', 'cert.pem'), 'x');
    fs.writeFileSync(path.join(dir, 'tls', 'key.pem'), 'x');
    const file = path.join(dir, 'mxguard.yaml');
    fs.writeFileSync(file, yaml('data_dir: ../../state', 'deliver: maildir:mail', 'tls:', '  cert: tls/cert.pem', '  key: ./tls/key.pem', 'log:', '  file: log/mx.log'));
    const { config } = await loadConfigFile(path.relative(process.cwd(), file));
    assert.equal(config.data_dir, path.join(tmp, 'state'));
    assert.equal(config.deliver, `maildir:${path.join(dir, 'mail')}`);
    assert.deepEqual(config.tls, { cert: path.join(dir, 'tls', 'cert.pem'), key: path.join(dir, 'tls', 'key.pem') });
    assert.equal(config.log.file, path.join(dir, 'log', 'mx.log'));
  });

  test('the default Maildir follows data_dir; absolute paths and smtp targets stay as written', () => {
    const a = parseConfigText(yaml('data_dir: /var/lib/mxguard'), 'mx.yaml', '/etc/mxguard').config;
    assert.equal(a.deliver, 'maildir:/var/lib/mxguard/maildir');
    const b = parseConfigText(yaml('data_dir: spool', 'deliver: smtp://127.0.0.1:10025'), 'mx.yaml', '/etc/mxguard').config;
    assert.equal(b.data_dir, '/etc/mxguard/spool');
    assert.equal(b.deliver, 'smtp://127.0.0.1:10025');
    // routes' Maildirs and dkim.sign keys are relative to the config file too.
    const c = parseConfigText(yaml('routes:', '  "*.example.org": maildir:boxes/%d/%u', '  example.net: mx', 'dkim:', '  sign: [{ domain: example.com, selector: s1, key: keys/s1.pem }]'), 'mx.yaml', '/etc/mxguard').config;
    assert.deepEqual(c.routes, { '*.example.org': 'maildir:/etc/mxguard/boxes/%d/%u', 'example.net': 'mx' });
    assert.equal(c.dkim.sign[0]?.key, '/etc/mxguard/keys/s1.pem');
    const d = parseConfigText(yaml('queue:', '  mta_sts: { ca: lab-ca.pem }'), 'mx.yaml', '/etc/mxguard').config;
    assert.equal(d.queue.mta_sts.ca, '/etc/mxguard/lab-ca.pem');
  });
});

describe('loadConfigFile and checkConfigFile', () => {
  test('a missing file is a ConfigError naming the path', async () => {
    const file = path.join(tmp, 'nope.yaml');
    await assert.rejects(loadConfigFile(file), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.message, `${file}: cannot read the config file: no such file`);
      return true;
    });
  });

  test('check: OK summary with warnings', async () => {
    const file = path.join(tmp, 'ok.yaml');
    fs.writeFileSync(file, yaml('listen: ["0.0.0.0:25"]', 'local_domains: [example.com, example.net]', 'deliver: lmtp://127.0.0.1:24'));
    const r = await checkConfigFile(file);
    assert.equal(r.ok, true);
    assert.deepEqual(r.output.split('\n'), [
      `${file}: OK: listen 0.0.0.0:25; local domains example.com, example.net; deliver lmtp://127.0.0.1:24; routes: local domains → deliver, any other domain (relayed mail) → mx`,
      `${file}:1:10: warning: listen[0]: 0.0.0.0:25 is not a loopback address and tls is not configured: AUTH and STARTTLS unavailable`,
    ]);
  });

  test('check: where each kind of mail goes, and a Maildir that would put two domains\' postmasters in one mailbox', async () => {
    const file = path.join(tmp, 'routes.yaml');
    fs.writeFileSync(file, yaml('local_domains: [example.com, example.org]', 'deliver: maildir:/var/mail', 'routes:', '  example.net: lmtp://127.0.0.1:24', '  "*": maildir:/var/relayed/%u'));
    const r = await checkConfigFile(file);
    assert.equal(r.ok, true);
    const [summary, ...warnings] = r.output.split('\n');
    assert.match(summary ?? '', /; routes: example\.net → lmtp:\/\/127\.0\.0\.1:24, local domains → deliver, any other domain \(relayed mail\) → maildir:\/var\/relayed\/%u$/);
    assert.deepEqual(warnings, [
      `${file}:2:10: warning: deliver: maildir:/var/mail takes mail for 2 domains into one mailbox per local part (postmaster@ of each would share one): put %d in the path (maildir:/var/mail/%d/%u)`,
      `${file}:4:3: warning: routes.*: maildir:/var/relayed/%u takes mail for many domains into one mailbox per local part: put %d in the path`,
      `${file}:4:3: warning: routes.*: relayed mail for every other domain goes into maildir:/var/relayed/%u and never reaches its recipients; route it to mx or a smarthost (or refuse relaying)`,
    ]);
  });

  test('check: the problem list', async () => {
    const file = path.join(tmp, 'bad.yaml');
    fs.writeFileSync(file, yaml('limits:', '  max_rcpt: 5', '  max_errors: none'));
    const r = await checkConfigFile(file);
    assert.equal(r.ok, false);
    assert.deepEqual(r.output.split('\n'), [
      `${file}:2:3: limits.max_rcpt: unknown key "max_rcpt", did you mean "max_rcpts"?`,
      `${file}:3:15: limits.max_errors: expected a number, got "none"`,
      `${file}: 2 problems, config not usable`,
    ]);
  });

  test('check never throws: missing file, a directory', async () => {
    const missing = await checkConfigFile(path.join(tmp, 'absent.yaml'));
    assert.deepEqual(missing, { ok: false, output: `${path.join(tmp, 'absent.yaml')}: cannot read the config file: no such file` });
    const dir = await checkConfigFile(tmp);
    assert.equal(dir.ok, false);
    assert.match(dir.output, /it is a directory/);
  });
});

describe('docs/mxguard.example.yaml', () => {
  test('loads without problems or warnings, and gives exactly the defaults', async () => {
    const { config, warnings } = await loadConfigFile(EXAMPLE);
    assert.deepEqual(warnings, []);
    assert.deepEqual(config, defaultConfig(path.dirname(EXAMPLE)));
  });

  test('lists every key of the schema, each with a comment line above it', () => {
    const text = fs.readFileSync(EXAMPLE, 'utf8');
    // "# key: value" lines are settings commented out; uncomment them to see every key.
    const lines = text.split('\n');
    const uncommented = lines.map((l) => l.replace(/^(\s*)# ([a-z_]+:(?: .*)?)$/, '$1$2')).join('\n');
    const keys: string[] = [];
    const walk = (v: unknown, prefix: string): void => {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return;
      for (const [k, sub] of Object.entries(v)) {
        // An empty map ({}: routes) is a setting, not a section.
        if (typeof sub === 'object' && sub !== null && !Array.isArray(sub) && Object.keys(sub).length > 0) walk(sub, `${prefix}${k}.`);
        else keys.push(`${prefix}${k}`);
      }
    };
    walk(parseYaml(uncommented), '');
    assert.deepEqual([...keys].sort(), [...schemaKeyPaths()].sort());
    lines.forEach((line, i) => {
      if (!/^\s*(# )?[a-z_]+:/.test(line)) return;
      assert.match(lines[i - 1] ?? '', /^\s*# [A-Z]/, `line ${i + 1} (${line.trim()}) needs a comment line above it`);
    });
  });
});


const TOKENS = [
  '[', ']', '{', '}', ':', ': ', '- ', '\n', '\t', '  ', '#', ',', '&a ', '*a', '*b', '!!str ', '!!int ', '!!map ', '!!seq ', '!!binary ',
  '!foo ', '? ', '|', '>-\n', '"', "'", '---\n', '...\n', '%YAML 1.2\n', '<<: *a\n', '__proto__', 'constructor', 'toString', '~', 'null',
  'true', 'yes', '-1', '0', '1e400', '.nan', '-.inf', '0x1F', '1.5', '2m', '25MB', '::1', '[::]:25', '"0.0.0.0:25"', 'maildir:x',
  'smtp://h:25', '\u0000', '\uFEFF', '\u2028', 'é', 'max_rcpts', 'tls', 'limits', 'listen', 'cert', 'retry', '&x {smtp: *x}',
];

function mutate(text: string, rnd: () => number): string {
  const pick = <T>(list: readonly T[]): T => list[Math.floor(rnd() * list.length)] as T;
  const pos = (): number => Math.floor(rnd() * (text.length + 1));
  const lines = text.split('\n');
  const line = (): number => Math.floor(rnd() * lines.length);
  switch (Math.floor(rnd() * 8)) {
    case 0: {
      const p = pos();
      return text.slice(0, p) + pick(TOKENS) + text.slice(p);
    }
    case 1: {
      const p = pos();
      return text.slice(0, p) + text.slice(p + 1 + Math.floor(rnd() * 20));
    }
    case 2: {
      const i = line();
      lines.splice(i, 0, lines[i] ?? '');
      return lines.join('\n');
    }
    case 3: {
      const i = line();
      const j = line();
      [lines[i], lines[j]] = [lines[j] ?? '', lines[i] ?? ''];
      return lines.join('\n');
    }
    case 4: {
      const i = line();
      lines[i] = (lines[i] ?? '').replace(/:.*$/, `: ${pick(TOKENS)}${rnd() < 0.5 ? pick(TOKENS) : ''}`);
      return lines.join('\n');
    }
    case 5: {
      const i = line();
      lines[i] = rnd() < 0.5 ? `  ${lines[i] ?? ''}` : (lines[i] ?? '').replace(/^ {1,2}/, '');
      return lines.join('\n');
    }
    case 6:
      return text.slice(0, pos());
    default: {
      // Uncomment a line: the example's commented-out settings become live.
      const i = line();
      lines[i] = (lines[i] ?? '').replace(/# ?/, '');
      return lines.join('\n');
    }
  }
}

const KEYS = [...schemaKeyPaths().flatMap((k) => k.split('.')), 'bogus', 'max_rcpt', '__proto__'];
const SCALARS: unknown[] = [null, true, false, 0, -1, 1.5, 100, 1e300, '', 'x', '2m', '25MB', '0.0.0.0:25', '[::1]:25', '10.0.0.0/8', 'maildir:m', 'reject', 'example.com'];

/** A random value shaped like a config: mappings with known and unknown keys, lists, scalars. */
function randomValue(rnd: () => number, depth: number): unknown {
  const pick = <T>(list: readonly T[]): T => list[Math.floor(rnd() * list.length)] as T;
  const r = rnd();
  if (depth > 3 || r < 0.4) return pick(SCALARS);
  if (r < 0.6) return Array.from({ length: Math.floor(rnd() * 4) }, () => randomValue(rnd, depth + 1));
  const obj: Record<string, unknown> = {};
  for (let i = Math.floor(rnd() * 5); i > 0; i--) Object.defineProperty(obj, pick(KEYS), { value: randomValue(rnd, depth + 1), enumerable: true, configurable: true, writable: true });
  return obj;
}

describe('fuzz', () => {
  test('random and mutated documents give a config or a ConfigError, nothing else', { timeout: 120_000 }, () => {
    const rnd = prng(Number(process.env['MXGUARD_FUZZ_SEED'] ?? 0x6d78_6775));
    const iterations = Number(process.env['MXGUARD_FUZZ_ITERATIONS'] ?? 3000);
    const seeds = [
      fs.readFileSync(EXAMPLE, 'utf8'),
      yaml('listen: ["0.0.0.0:25"]', 'limits:', '  max_rcpts: 5', 'tls:', '  cert: c.pem', '  key: k.pem', 'relay:', '  forward_from_ip: [10.0.0.0/8, "::1"]'),
      yaml('a: &a {b: [1, 2]}', 'smtp: *a', 'queue: {retry: [1m, 2m], max_age: 3d}'),
      '',
    ];
    let configs = 0;
    let errors = 0;
    for (let i = 0; i < iterations; i++) {
      let text = i % 5 === 4 ? stringifyYaml(randomValue(rnd, 0)) : (seeds[i % 5] ?? '');
      const rounds = 1 + Math.floor(rnd() * 6);
      for (let r = 0; r < rounds; r++) text = mutate(text, rnd);
      if (text.length > 20_000) text = text.slice(0, 20_000);
      let result: LoadedConfig | undefined;
      try {
        result = parseConfigText(text, 'fuzz.yaml', tmp);
      } catch (err) {
        if (!(err instanceof ConfigError)) assert.fail(`case ${i} threw ${String(err)} for:\n${JSON.stringify(text)}`);
        assert.ok(err.problems.length > 0, `case ${i}: ConfigError without problems`);
        const lineCount = text.split(/\r\n|\r|\n/).length;
        for (const p of err.problems) {
          assert.ok(p.line >= 1 && p.line <= lineCount + 1 && p.column >= 1, `case ${i}: bad position ${p.line}:${p.column}`);
          assert.equal(p.file, 'fuzz.yaml');
        }
        assert.equal(err.message.split('\n').length, err.problems.length, `case ${i}: message is not one line per problem`);
        errors++;
        continue;
      }
      assert.equal(typeof result.config.limits.max_rcpts, 'number');
      assert.ok(path.isAbsolute(result.config.data_dir));
      configs++;
    }
    // Both outcomes must be exercised, or the fuzzer is not testing much.
    assert.ok(configs > 100, `only ${configs} documents loaded`);
    assert.ok(errors > 100, `only ${errors} documents were refused`);
  });
});

test('relay.forward_from is accepted with a warning that it is a relaying hole; admin.listen needs a token', () => {
  const { warnings } = parseConfigText('relay:\n  forward_from: [example.com]\n', 'f.yaml', os.tmpdir());
  assert.equal(warnings.length, 1);
  assert.equal(warnings[0]?.key, 'relay.forward_from');
  assert.equal(warnings[0]?.line, 2);
  assert.match(warnings[0]?.message ?? '', /relaying hole/);
  assert.throws(() => parseConfigText('admin:\n  listen: 127.0.0.1:8025\n', 'f.yaml', os.tmpdir()), (err: ConfigError) => err.problems.some((p) => p.key === 'admin.token'));
});

test('an unanchored relay.pop_log_pattern gets a warning: forged user names could match it', () => {
  const unanchored = parseConfigText("relay:\n  pop_log_pattern: 'Login: .*rip=(?<ip>[0-9.]+)'\n", 'f.yaml', os.tmpdir());
  assert.equal(unanchored.warnings[0]?.key, 'relay.pop_log_pattern');
  assert.equal(parseConfigText("relay:\n  pop_log_pattern: '^\\S+ \\S+ pop3-login: Info: Login: .*rip=(?<ip>[0-9.]+)'\n", 'f.yaml', os.tmpdir()).warnings.length, 0);
});

describe('check: files, directories and networks mxguard cannot use (issue 9)', () => {
  test('recipients.file missing or a directory; data_dir not a directory or under a file', async () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'usable-'));
    const file = path.join(dir, 'mx.yaml');
    const aFile = path.join(dir, 'plain-file');
    fs.writeFileSync(aFile, 'x\n');
    fs.mkdirSync(path.join(dir, 'recipients.d'));
    fs.writeFileSync(file, yaml('data_dir: plain-file', 'recipients:', '  file: recipients.d'));
    let r = await checkConfigFile(file);
    assert.equal(r.ok, false);
    assert.deepEqual(r.output.split('\n'), [
      `${file}:1:11: data_dir: ${aFile} is not a directory`,
      `${file}:3:9: recipients.file: ${path.join(dir, 'recipients.d')} is a directory, not a list of recipients`,
      `${file}: 2 problems, config not usable`,
    ]);
    fs.writeFileSync(file, yaml('recipients:', '  file: nobody.txt', 'data_dir: plain-file/var'));
    r = await checkConfigFile(file);
    assert.deepEqual(r.output.split('\n').slice(0, 2), [
      `${file}:2:9: recipients.file: ${path.join(dir, 'nobody.txt')} does not exist (every local recipient would get 451)`,
      `${file}:3:11: data_dir: cannot use ${path.join(aFile, 'var')}: a part of the path is not a directory`,
    ]);
    // A data_dir that does not exist yet but can be created, and a real recipients file: fine.
    fs.writeFileSync(path.join(dir, 'recipients.txt'), 'alice@example.test\n');
    fs.writeFileSync(file, yaml('recipients:', '  file: recipients.txt', 'data_dir: new/var'));
    r = await checkConfigFile(file);
    assert.equal(r.ok, true, r.output);
  });

  test('data_dir on a read-only file system is refused (even for root)', { skip: process.getuid?.() !== 0 && 'needs root to mount' }, async () => {
    const { spawnSync } = await import('node:child_process');
    const dir = fs.mkdtempSync(path.join(tmp, 'ro-'));
    const mnt = path.join(dir, 'ro');
    fs.mkdirSync(mnt);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,ro', 'tmpfs', mnt], { encoding: 'utf8' });
    assert.equal(m.status, 0, `mount: ${m.stderr}`);
    try {
      const file = path.join(dir, 'mx.yaml');
      fs.writeFileSync(file, yaml(`data_dir: ${mnt}`));
      const r = await checkConfigFile(file);
      assert.match(r.output, new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:1:11: data_dir: ${mnt.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is on a read-only file system$`, 'm'));
      fs.writeFileSync(file, yaml(`data_dir: ${mnt}/sub/var`));
      assert.match((await checkConfigFile(file)).output, /:1:11: data_dir: cannot create .*\/ro\/sub\/var: .*\/ro is on a read-only file system$/m);
    } finally {
      if (spawnSync('umount', [mnt]).status !== 0) spawnSync('umount', ['-l', mnt]);
    }
  });

  test('relay.forward_from_ip refuses an open relay (0.0.0.0/0, ::/0, ::ffff:0:0/96); every CIDR setting refuses host bits', () => {
    const p = problems(yaml('relay:', '  forward_from_ip:', '    - 192.0.2.0/24', '    - 0.0.0.0/0', '    - "::/0"', '    - "::ffff:0:0/96"', 'ban:', '  ip: [10.1.2.3/8, "2001:db8::1/32", 10.0.0.0/8]', 'limits:', '  tarpit_except: [192.0.2.1/32, 192.0.2.128/25]'));
    assert.deepEqual(
      p.map((m) => `${m.line}:${m.column} ${m.key}: ${m.message}`),
      [
        '4:7 relay.forward_from_ip[1]: "0.0.0.0/0" takes in every IPv4 address: every client could relay (an open relay); list your own networks',
        '5:7 relay.forward_from_ip[2]: "::/0" takes in every address: every client could relay (an open relay); list your own networks',
        '6:7 relay.forward_from_ip[3]: "::ffff:0:0/96" takes in every IPv4 address: every client could relay (an open relay); list your own networks',
        '8:8 ban.ip[0]: "10.1.2.3/8" has host bits set past the /8 prefix: write the network 10.0.0.0/8, or the single address 10.1.2.3',
        '8:20 ban.ip[1]: "2001:db8::1/32" has host bits set past the /32 prefix: write the network 2001:db8::/32, or the single address 2001:db8::1',
      ],
    );
    assert.deepEqual(problems(yaml('relay:', '  forward_from_ip: [10.1.2.3/8]')).map((m) => `${m.line}:${m.column} ${m.key}`), ['2:21 relay.forward_from_ip[0]']);
  });
});
