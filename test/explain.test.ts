// Issue 14, Must show 5: `mxguard explain`, the real CLI (bin/mxguard.js under Node 24), against
// a real DNS server on loopback (test/harness/dns-zone-server.ts) that lists the client in a
// DNSBL zone, and a real SQLite store with greylisting and rate limits configured: it shows the
// DNSBL verdict and the reply a client would get, greylisting's 451, and the store's rows are the
// same before and after.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { stringify } from 'yaml';
import { startDnsZoneServer, type DnsZoneServer } from './harness/dns-zone-server.ts';
import { makeTempDir } from './harness/peers.ts';
import { SqliteStore } from '../src/store/sqlite.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const NODE = path.join(ROOT, 'node_modules/.bin/node');
const BIN = path.join(ROOT, 'bin/mxguard.js');
const LIMIT = { timeout: 60_000 };
const LISTED = '192.0.2.55';
const REASON = 'Listed in bl.test, see http://bl.test/q?ip=192.0.2.55';

let dns: DnsZoneServer;
let dir: string;

before(async () => {
  dns = await startDnsZoneServer({
    '55.2.0.192.bl.test': [{ A: '127.0.0.2' }, { TXT: REASON }],
  });
  dir = await makeTempDir('explain');
});

after(async () => {
  await dns?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

function writeConfig(name: string, extra: Record<string, unknown>): string {
  const file = path.join(dir, `${name}.yaml`);
  fs.writeFileSync(
    file,
    stringify({ hostname: 'mx.example.test', local_domains: ['example.test'], data_dir: path.join(dir, name), dns: { servers: [dns.server], timeout: '3s' }, mail_from: { require_domain: false }, ...extra }),
  );
  return file;
}

function explain(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(NODE, [BIN, 'explain', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MXGUARD_CONFIG: '' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Every row of every table, in a fixed order: the store's content. */
function dump(file: string): string {
  const db = new DatabaseSync(file, { readOnly: true });
  try {
    const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as Array<{ name: string }>).map((t) => t.name);
    return JSON.stringify(tables.map((t) => [t, db.prepare(`SELECT * FROM "${t}" ORDER BY 1`).all()]));
  } finally {
    db.close();
  }
}

test('a listed client: explain shows the DNSBL verdict and the reply the client would get; exit 0', LIMIT, async () => {
  const config = writeConfig('dnsbl', { dnsbl: { zones: [{ zone: 'bl.test' }] } });
  const r = await explain(['-c', config, '--ip', LISTED, '--helo', 'mail.sender.example', '--from', 'a@sender.example', '--to', 'alice@example.test']);
  assert.equal(r.code, 0, r.stderr);
  const reply = `554 5.7.1 Service unavailable; client [${LISTED}] blocked using bl.test; ${REASON}`;
  assert.match(r.stdout, /^connect$/m);
  assert.match(r.stdout, new RegExp(`^  dnsbl +reject .* ms  ${escape(reply)}$`, 'm'), r.stdout);
  assert.match(r.stdout, /-> 220 mx\.example\.test ESMTP mxguard {3}\(the refusal is answered at RCPT: smtp\.delay_reject\)/);
  assert.match(r.stdout, new RegExp(`^RCPT TO:<alice@example\\.test>\\n  \\(no check\\)\\n  -> ${escape(reply)}$`, 'm'), r.stdout);
  assert.match(r.stdout, new RegExp(`^outcome: refused: ${escape(reply)}$`, 'm'));
  assert.ok(dns.queries.some((q) => q.name.toLowerCase() === '55.2.0.192.bl.test' && q.type === 'A'), 'asked the real DNS server');

  const json = await explain(['-c', config, '--json', '--ip', LISTED, '--helo', 'mail.sender.example', '--from', 'a@sender.example', '--to', 'alice@example.test']);
  assert.equal(json.code, 0, json.stderr);
  const report = JSON.parse(json.stdout) as { outcome: string; reply: string; steps: Array<{ phase: string; checks: Array<{ check: string; verdict: string }> }> };
  assert.equal(report.outcome, 'refused');
  assert.equal(report.reply, reply);
  assert.deepEqual(report.steps[0]?.checks.map((c) => [c.check, c.verdict]), [['dnsbl', 'reject']]);

  const clean = await explain(['-c', config, '--ip', '192.0.2.56', '--helo', 'mail.sender.example', '--from', 'a@sender.example', '--to', 'alice@example.test']);
  assert.match(clean.stdout, /^ {2}dnsbl +continue /m);
  assert.match(clean.stdout, /^outcome: the recipients are accepted; DATA checks not run \(no --message\)$/m);
});

test('greylisting and rate limits: explain says 451, and the store\'s rows are unchanged', LIMIT, async () => {
  const config = writeConfig('grey', {
    greylist: { when: 'always', allow_recipients: ['alice@example.test'] },
    limits: { rates: [{ name: 'rcpts', key: 'client_ip', count: 'recipients', max: 1, per: '1h', action: 'tempfail' }], tarpit_start: 1, tarpit_delay: '7s' },
    smtp: { greet_delay: '2s' },
  });
  // A store with history, as a running daemon leaves it.
  const file = path.join(dir, 'grey', 'state.db');
  const before = new SqliteStore(file);
  await before.cacheSet('grey:t:198.51.100.0/24|old@sender.example|bob@example.test', JSON.stringify({ first: 1, passed: 0, tries: 1 }), 3_600_000);
  await before.rateAdd('rate:rcpts:ip:198.51.100.1', 3, 3_600_000);
  await before.counterIncr('something', 3_600_000);
  await before.close();
  const rows = dump(file);
  const message = path.join(dir, 'message.eml');
  fs.writeFileSync(message, 'From: a@sender.example\nSubject: hello\n\nhi\n');
  const r = await explain(['-c', config, '--ip', '192.0.2.77', '--helo', 'mail.sender.example', '--from', 'a@sender.example', '--to', 'alice@example.test', '--to', 'bob@example.test', '--message', message]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^ {2}greet_delay +continue/m);
  assert.match(r.stdout, /^ {2}reply held 2\.0 s \(not waited here\)$/m);
  assert.match(r.stdout, /^RCPT TO:<alice@example\.test>\n(.*\n)*? {2}greylist +continue .*\n {2}local_domains +accept .*\n {2}-> 250 2\.1\.5 Ok$/m, r.stdout);
  // The second recipient: over the rate limit (the first was counted, in memory only), and tarpitted.
  assert.match(r.stdout, /^RCPT TO:<bob@example\.test>\n(.*\n)*? {2}rates_rcpt +tempfail .* 451 4\.7\.1 .*\n {2}reply held 7\.0 s \(not waited here\)\n {2}-> 451 4\.7\.1 /m, r.stdout);
  assert.match(r.stdout, /^end of DATA \(the message\)$/m);
  assert.match(r.stdout, /^outcome: accepted: 250 2\.0\.0 Ok: queued as EXPLAIN$/m);
  assert.match(r.stdout, /^ {2}X-Spam-Status: No, score=0\.0/m);
  assert.match(r.stdout, /store writes a real session would make \(not made\): 3\n {2}rateAdd rate:rcpts:192\.0\.2\.77 1\n/, r.stdout);
  assert.equal(dump(file), rows, 'the store\'s rows are unchanged');
  // Another explain sees the same store (the first one's count is not there): greylisting answers 451.
  const again = await explain(['-c', config, '--ip', '192.0.2.77', '--helo', 'mail.sender.example', '--from', 'a@sender.example', '--to', 'carol@example.test']);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /^ {2}greylist +tempfail .* 451 4\.7\.1 Greylisted, please try again in \d+ seconds\n {2}-> 451 4\.7\.1 Greylisted/m, again.stdout);
  assert.match(again.stdout, /^ {2}cacheSet grey:t:192\.0\.2\.0\/24\|a@sender\.example\|carol@example\.test /m);
  assert.equal(dump(file), rows);
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
