// `mxguard check` and the message filters (issue 10, "Must show 4"): `--sample DIR` runs the
// filters over a folder of known-good mail (test/fixtures/good-mail, a Maildir) and lists every
// message a rule would reject, drop or tag, and by which rule; a rule that matches an empty
// message is flagged; a malformed line is reported with its number.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');
const SAMPLE = path.resolve(import.meta.dirname, 'fixtures/good-mail');
const SAMPLE_COUNT = 7;

function check(args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, 'check', ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr });
    });
  });
}

function setup(files: Record<string, string>, filters: Record<string, unknown>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-check-filters-'));
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  const cfg = path.join(dir, 'mxguard.yaml');
  fs.writeFileSync(cfg, `hostname: mx.example.test\nlisten: ["127.0.0.1:0"]\nlocal_domains: [example.test]\ndata_dir: ${path.join(dir, 'var')}\nfilters: ${JSON.stringify(filters)}\n`);
  return cfg;
}

test('--sample: a reject-everything rule is listed with every message it would hit; the empty message is flagged', async () => {
  const cfg = setup(
    {
      'mfilter.rul': ['# a careful rule, then a careless one', 'if (isin("Subject","viagra")) spamdetect(10, "pills")', 'if (!exists("X-Approved-By-Nobody")) reject "no mail today"', ''].join('\n'),
    },
    { mfilter: 'mfilter.rul' },
  );
  const r = await check(['-c', cfg, '--sample', SAMPLE]);
  assert.equal(r.code, 1, r.out);
  const rul = path.join(path.dirname(cfg), 'mfilter.rul');
  assert.match(r.out, new RegExp(`${rul.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:3:1: warning: mfilter: this rule rejects an empty message`));
  const rejected = r.out.split('\n').filter((l) => l.startsWith('REJECT '));
  assert.equal(rejected.length, SAMPLE_COUNT, r.out);
  for (const l of rejected) assert.match(l, new RegExp(`^REJECT (cur|new)/\\S+: by mfilter ${rul.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:3 "no mail today"$`));
  assert.ok(rejected.some((l) => l.startsWith('REJECT cur/1700000003.M3P1.mx:2,S: ')), 'names each message file');
  assert.match(r.out, new RegExp(`${SAMPLE.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: 7 messages: 7 would be refused, 0 scored, 0 untouched`));
});

test('--sample: careful rules leave good mail through; a rule that scores names the messages and the rule', async () => {
  const cfg = setup(
    {
      'mfilter.rul': 'if (isin("Subject","viagra")) spamdetect(10, "pills")\nif (isin("Subject","invoice")) spamdetect(2, "an invoice")\n',
      'local.cf': 'body INVOICE_WORDS /payment terms/i\nscore INVOICE_WORDS 1.5\ndescribe INVOICE_WORDS talks about payment\nheader SHOUTING Subject =~ /^[A-Z !]{20,}$/\nscore SHOUTING 3\n',
    },
    { mfilter: 'mfilter.rul', rules: ['local.cf'] },
  );
  const r = await check(['-c', cfg, '--sample', SAMPLE]);
  assert.equal(r.code, 0, r.out);
  const tagged = r.out.split('\n').filter((l) => l.startsWith('TAG '));
  assert.deepEqual(tagged, ['TAG cur/1700000003.M3P1.mx:2,S: 3.5 points (MFILTER_2=2.0 INVOICE_WORDS=1.5)'], r.out);
  assert.doesNotMatch(r.out, /warning/);
  assert.match(r.out, /: 7 messages: 0 would be refused, 1 scored, 6 untouched/);
});

test('a malformed filter line is reported with its file and line number; start refuses it too', async () => {
  const cfg = setup({ 'mfilter.rul': 'if (exists("Subject")) spamdetect(1, "ok")\n\n# fine so far\nif (frobnicate("x")) accept\n' }, { mfilter: 'mfilter.rul' });
  const r = await check(['-c', cfg]);
  assert.equal(r.code, 1, r.out);
  const rul = path.join(path.dirname(cfg), 'mfilter.rul');
  assert.match(r.out, new RegExp(`^${rul.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:4:\\d+: filters\\.mfilter: .*frobnicate`, 'm'));
  const started = await new Promise<{ code: number | null; out: string }>((resolve) => {
    execFile(process.execPath, [MAIN, 'start', '-c', cfg], { timeout: 30_000 }, (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, out: stdout + stderr }));
  });
  assert.equal(started.code, 1, started.out);
  assert.match(started.out, /start-up failed: .*mfilter\.rul:4/);
  const bad = setup({ 'local.cf': 'header OK Subject =~ /x/\nbody BROKEN /unterminated\n' }, { rules: ['local.cf'] });
  const b = await check(['-c', bad]);
  assert.equal(b.code, 1, b.out);
  assert.match(b.out, /local\.cf:2:\d+: filters\.rules: /);
});

test('a scanner without on_error written out is warned about, at its own line; one with it is not', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-check-scanners-'));
  const cfg = path.join(dir, 'mxguard.yaml');
  fs.writeFileSync(
    cfg,
    [
      'hostname: mx.example.test', // 1
      'listen: ["127.0.0.1:0"]',
      'local_domains: [example.test]',
      `data_dir: ${path.join(dir, 'var')}`,
      'filters:', // 5
      '  scanners:',
      '    - type: exec', // 7
      '      command: [/usr/local/bin/hook]',
      '    - type: exec', // 9
      '      name: written',
      '      command: [/usr/local/bin/hook2]',
      '      on_error: accept',
      '    - type: clamd', // 13
      '      name: av',
      '      address: 127.0.0.1:3310',
      '',
    ].join('\n'),
  );
  const r = await check(['-c', cfg]);
  assert.equal(r.code, 0, r.out);
  const warnings = r.out.split('\n').filter((l) => l.includes('on_error not set'));
  const file = cfg.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  assert.equal(warnings.length, 2, r.out);
  assert.match(warnings[0] ?? '', new RegExp(`^${file}:7:\\d+: warning: filters\\.scanners\\[0\\] \\(exec\\): on_error not set: a failure of this scanner will refuse mail for now \\(tempfail\\); write on_error: tempfail or accept$`));
  assert.match(warnings[1] ?? '', new RegExp(`^${file}:13:\\d+: warning: filters\\.scanners\\[2\\] \\(av\\): on_error not set`));
  assert.doesNotMatch(r.out, /written/);
  fs.rmSync(dir, { recursive: true, force: true });
});
