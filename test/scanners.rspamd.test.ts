// Issue 12, "Must show 1" for rspamd: a real rspamd 3.4 (test/harness/rspamd.ts) behind mxguard,
// driven through real SMTP with swaks. GTUBE is refused by rspamd (550 5.7.1 with its message); a
// clean message is delivered with rspamd's points in X-Spam-Status and its milter header changes
// applied; the envelope reaches rspamd (its log line, and multimap rules on the envelope sender,
// recipient and HELO that make it answer soft reject, greylist, reject, add header and rewrite
// subject, each mapped exactly); rspamd stopped in mid-test gives the configured on_error.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { startTestApp, type TestApp } from './harness/app.ts';
import { runSwaks, waitUntil } from './harness/peers.ts';
import { startDnsmasq, type DnsmasqPeer } from './harness/dns.ts';
import { startRspamd, type RspamdPeer } from './harness/rspamd.ts';

// GTUBE, put together here so that no file of the repository is itself the test pattern.
const GTUBE = ['XJS*C4JDBQADN1.NSBN3*2IDNEN*', 'GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X'].join('');

/** multimap rules on the envelope: each makes rspamd answer one action for one sender, recipient or HELO. */
const MULTIMAP = `
MXG_DEFER_FROM { type = "from"; filter = "email:addr"; map = "\${LOCAL_CONFDIR}/defer-from.map"; action = "soft reject"; message = "Sender held by an rspamd rule"; }
MXG_TAG_FROM { type = "from"; filter = "email:addr"; map = "\${LOCAL_CONFDIR}/tag-from.map"; action = "add header"; }
MXG_SUBJECT_FROM { type = "from"; filter = "email:addr"; map = "\${LOCAL_CONFDIR}/subject-from.map"; action = "rewrite subject"; }
MXG_GREY_RCPT { type = "rcpt"; filter = "email:addr"; map = "\${LOCAL_CONFDIR}/grey-rcpt.map"; action = "greylist"; }
MXG_REJECT_HELO { type = "helo"; map = "\${LOCAL_CONFDIR}/reject-helo.map"; action = "reject"; message = "HELO refused by an rspamd rule"; }
`;

let dns: DnsmasqPeer;
let rspamd: RspamdPeer;
let startMs = 0;

before(async () => {
  dns = await startDnsmasq();
  const t0 = Date.now();
  rspamd = await startRspamd({
    dns: dns.server,
    localD: {
      'multimap.conf': MULTIMAP,
      'actions.conf': 'subject = "[SPAM] %s";\n',
      // X-Rspamd-Queue-Id shows the Queue-Id rspamd was given; loopback and AUTH users are scanned like any other.
      'milter_headers.conf': 'use = ["x-rspamd-queue-id"];\nskip_local = false;\nskip_authenticated = false;\n',
    },
    files: {
      'defer-from.map': 'defer@src.test\n',
      'tag-from.map': 'tagme@src.test\n',
      'subject-from.map': 'subject@src.test\n',
      'grey-rcpt.map': 'grey@example.test\n',
      'reject-helo.map': 'bad-helo.src.test\n',
    },
  });
  startMs = Date.now() - t0;
  console.log(`rspamd ready in ${startMs} ms`);
});
after(async () => {
  await rspamd?.stop();
  await dns?.stop();
});

async function app(t: { after(fn: () => Promise<void>): void }, url: string, onError: 'tempfail' | 'accept' = 'tempfail', timeout = '5s'): Promise<TestApp> {
  const a = await startTestApp({
    relay: { forward_from_ip: [] }, // loopback is our test client: judge it like any other
    filters: { scanners: [{ type: 'rspamd', url, timeout, on_error: onError }] },
  });
  t.after(() => a.stop());
  return a;
}

interface Send {
  from?: string;
  to?: string;
  helo?: string;
  subject?: string;
  body?: string;
  headers?: string[];
}

function swaks(port: number, s: Send = {}): ReturnType<typeof runSwaks> {
  const args = ['--server', `127.0.0.1:${port}`, '--ehlo', s.helo ?? 'client.src.test', '--from', s.from ?? 'alice@src.test', '--to', s.to ?? 'bob@example.test'];
  args.push('--header', `Subject: ${s.subject ?? 'a note'}`, '--body', s.body ?? 'Hello Bob,\nthe minutes of the meeting are below.\n');
  for (const h of s.headers ?? []) args.push('--add-header', h);
  return runSwaks(args);
}

/** The last reply swaks got (to the final dot when DATA was reached). */
function lastReply(out: string): string {
  const lines = out.split('\n').filter((l) => /^<\*?\*? \d{3}[ -]/.test(l));
  return (lines[lines.length - 1] ?? '').replace(/^<\*?\*? /, '');
}

/** rspamd's log line for the message it was given as Queue-Id `qid` (rspamd_task_write_log), waited for (bounded). */
async function taskLog(qid: string | undefined): Promise<string | undefined> {
  const find = (): string | undefined => rspamd.log().split('\n').find((l) => l.includes('rspamd_task_write_log') && l.includes(`qid: <${qid}>`));
  await waitUntil(() => find() !== undefined, 5000);
  return find();
}

function headerOf(file: string): string {
  const text = fs.readFileSync(file, 'latin1');
  return text.slice(0, text.indexOf('\r\n\r\n') + 2);
}

test('GTUBE: refused by rspamd with 550 5.7.1 and its message; nothing delivered', async (t) => {
  const a = await app(t, rspamd.url);
  const r = await swaks(a.port, { body: `Hello,\n${GTUBE}\n` });
  assert.notEqual(r.code, 0);
  assert.equal(lastReply(r.stdout), '550 5.7.1 Gtube pattern', r.stdout);
  assert.match(r.stdout, / -> \.\n<\*\* 550 /, 'the refusal answers the final dot');
  assert.deepEqual(a.maildir('bob'), []);
  assert.ok(a.logs().some((l) => l.check === 'rspamd' && l.verdict === 'reject'), 'logged, naming the scanner');
});

test('clean message: delivered with rspamd points in X-Spam-Status, X-Spam-Rspamd, its milter header changes (a forged X-Rspamd-Queue-Id replaced)', async (t) => {
  const a = await app(t, rspamd.url);
  const r = await swaks(a.port, { headers: ['X-Rspamd-Queue-Id: FORGED'] });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const [file] = await a.waitMaildir('bob', 1);
  assert.ok(file, 'delivered');
  const head = headerOf(file);
  const rs = /^X-Spam-Rspamd: (no action), score=(-?\d+\.\d\d) required=15\.00 symbols=(.*(?:\r\n[ \t].*)*)\r\n/m.exec(head);
  assert.ok(rs, head);
  const score = Number(rs[2]);
  // rspamd's points are in tests= (each symbol with points, the rest under "rspamd") and in score=.
  const flat = head.replace(/\r\n(?=[ \t])/g, ''); // unfolded
  const status = /^X-Spam-Status: No, score=(-?\d+\.\d) required=5\.0 tests=([^\r]*)/m.exec(flat);
  assert.ok(status, head);
  assert.equal(Number(status[1]), Math.round(score * 10) / 10);
  const symbolsWithPoints = [...(rs[3] ?? '').replace(/\r\n[ \t]/g, '').matchAll(/([A-Z0-9_]+)\((-?\d+\.\d\d)\)/g)].filter((m) => Number(m[2]) !== 0).map((m) => m[1]);
  assert.ok(symbolsWithPoints.length > 0 || score === 0, 'rspamd gave points to this message');
  for (const s of symbolsWithPoints) assert.ok(status[2]?.split(/[\s,]+/).includes(s as string), `${s} in tests=${status[2]}`);
  // The Queue-Id rspamd was given is ours (our Received names it).
  const qid = /^Received: from [^\r]*\r\n\tby mx\.example\.test \(mxguard\) with E?SMTP id (\S+?)[;\s]/m.exec(head)?.[1];
  assert.ok(qid, head);
  // rspamd asks to remove the incoming X-Rspamd-Queue-Id (remove_headers) and adds its own (add_headers).
  assert.deepEqual(head.match(/^X-Rspamd-Queue-Id: .*$/gm), [`X-Rspamd-Queue-Id: ${qid}`]);
  assert.doesNotMatch(head, /^X-Spam: /m, 'not tagged');
  // rspamd's own log line for the message: the envelope as it read it.
  const line = await taskLog(qid);
  assert.ok(line, rspamd.log().slice(-3000));
  assert.match(line, /ip: 127\.0\.0\.1,/);
  assert.match(line, /from: <alice@src\.test>/);
  assert.match(line, /rcpts: <bob@example\.test>/);
  assert.match(line, /\(no action\)/);
});

test('AUTH user: the User header reaches rspamd (its log line names the user)', async (t) => {
  // The user goes in through the real CLI (as in test/auth.test.ts), password on standard input.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-rspamd-auth-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const usersFile = path.join(dir, 'users');
  const cfg = path.join(dir, 'cli.yaml');
  fs.writeFileSync(cfg, stringify({ data_dir: dir, auth: { users_file: usersFile } }));
  const add = spawnSync(process.execPath, [path.resolve(import.meta.dirname, '../src/cli/main.ts'), 'user', '-c', cfg, 'add', 'carol'], { input: 'seashells\n', encoding: 'utf8' });
  assert.equal(add.status, 0, add.stderr);
  const a = await startTestApp({ relay: { forward_from_ip: [] }, auth: { users_file: usersFile }, filters: { scanners: [{ type: 'rspamd', url: rspamd.url, timeout: '5s', on_error: 'tempfail' }] } });
  t.after(() => a.stop());
  const r = await runSwaks(['--server', `127.0.0.1:${a.port}`, '--from', 'carol@example.test', '--to', 'bob@example.test', '--auth', 'PLAIN', '--auth-user', 'carol', '--auth-password', 'seashells', '--header', 'Subject: from carol']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const [file] = await a.waitMaildir('bob', 1);
  assert.ok(file);
  const qid = /^X-Rspamd-Queue-Id: (\S+)\r$/m.exec(headerOf(file))?.[1];
  const line = await taskLog(qid);
  assert.ok(line, rspamd.log().slice(-3000));
  assert.match(line, /user: carol,/);
  assert.match(line, /from: <carol@example\.test>/);
});

test('envelope sender on a soft-reject rule: 451 4.7.1 with rspamd message (never a 5xx)', async (t) => {
  const a = await app(t, rspamd.url);
  const r = await swaks(a.port, { from: 'defer@src.test' });
  assert.equal(lastReply(r.stdout), '451 4.7.1 Sender held by an rspamd rule', r.stdout);
  assert.deepEqual(a.maildir('bob'), []);
});

test('envelope recipient on a greylist rule: 451 4.7.1', async (t) => {
  const a = await app(t, rspamd.url);
  const r = await swaks(a.port, { to: 'grey@example.test' });
  assert.match(lastReply(r.stdout), /^451 4\.7\.1 /, r.stdout);
  assert.deepEqual(a.maildir('grey'), []);
});

test('HELO on a reject rule: 550 5.7.1 with rspamd message (the Helo header reached it)', async (t) => {
  const a = await app(t, rspamd.url);
  const r = await swaks(a.port, { helo: 'bad-helo.src.test' });
  assert.equal(lastReply(r.stdout), '550 5.7.1 HELO refused by an rspamd rule', r.stdout);
  // The same message from another HELO goes through.
  const ok = await swaks(a.port, {});
  assert.equal(ok.code, 0, ok.stdout);
});

test('add header: delivered, tagged X-Spam: Yes', async (t) => {
  const a = await app(t, rspamd.url);
  const r = await swaks(a.port, { from: 'tagme@src.test' });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const [file] = await a.waitMaildir('bob', 1);
  assert.ok(file);
  const head = headerOf(file);
  assert.match(head, /^X-Spam: Yes\r$/m);
  assert.match(head, /^X-Spam-Rspamd: add header, /m);
});

test('rewrite subject: delivered with the Subject rspamd wrote, only that one', async (t) => {
  const a = await app(t, rspamd.url);
  const r = await swaks(a.port, { from: 'subject@src.test', subject: 'quarterly figures' });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const [file] = await a.waitMaildir('bob', 1);
  assert.ok(file);
  const head = headerOf(file);
  assert.deepEqual(head.match(/^Subject: .*$/gm), ['Subject: [SPAM] quarterly figures']);
  assert.match(head, /^X-Spam: Yes\r$/m);
});

test('rspamd stopped in mid-test: on_error tempfail gives 451 within the timeout (hung), on_error accept delivers (gone)', async (t) => {
  const own = await startRspamd({ dns: dns.server });
  t.after(() => own.stop());
  const strict = await app(t, own.url, 'tempfail', '2s');
  const lenient = await startTestApp({ relay: { forward_from_ip: [] }, filters: { scanners: [{ type: 'rspamd', url: own.url, timeout: '2s', on_error: 'accept' }] } });
  t.after(() => lenient.stop());
  const first = await swaks(strict.port, {});
  assert.equal(first.code, 0, `up: ${first.stdout}`);

  // Hung: every rspamd process stopped (the kernel still takes the connection): the timeout ends it.
  process.kill(-own.pid, 'SIGSTOP');
  try {
    const t0 = Date.now();
    const hung = await swaks(strict.port, { to: 'carol@example.test' });
    const ms = Date.now() - t0;
    assert.equal(lastReply(hung.stdout), '451 4.7.1 Message could not be scanned (rspamd), try again later', hung.stdout);
    assert.ok(ms >= 1900 && ms < 2000 + 3000, `answered after ${ms} ms (timeout 2 s)`);
    assert.ok(strict.logs().some((l) => l.scanner === 'rspamd' && /timeout/.test(String(l.err))), 'the timeout logged');
  } finally {
    process.kill(-own.pid, 'SIGCONT');
  }

  // Gone: rspamd stopped for good; on_error accept lets the message through, logged at warn.
  await own.stop();
  const t1 = Date.now();
  const gone = await swaks(lenient.port, { to: 'dave@example.test' });
  assert.equal(gone.code, 0, gone.stdout);
  assert.ok(Date.now() - t1 < 2000 + 3000);
  assert.equal((await lenient.waitMaildir('dave', 1)).length, 1, 'delivered unscanned');
  assert.ok(lenient.logs().some((l) => l.scanner === 'rspamd' && l.onError === 'accept'), 'logged at warn');
  const refused = await swaks(strict.port, { to: 'erin@example.test' });
  assert.equal(lastReply(refused.stdout), '451 4.7.1 Message could not be scanned (rspamd), try again later', refused.stdout);
  assert.deepEqual(strict.maildir('erin'), []);
});

test('rspamd answering an HTTP error (a wrong url path) is a failure too: on_error tempfail', async (t) => {
  const a = await app(t, `${rspamd.url}/no/such/path`);
  const r = await swaks(a.port, {});
  assert.equal(lastReply(r.stdout), '451 4.7.1 Message could not be scanned (rspamd), try again later', r.stdout);
  assert.ok(a.logs().some((l) => l.scanner === 'rspamd' && /HTTP \d{3}/.test(String(l.err))), JSON.stringify(a.logs().filter((l) => l.scanner === 'rspamd')));
});
