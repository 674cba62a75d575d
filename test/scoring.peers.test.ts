// Issue 10, "Must show 2": the transaction score through real SMTP — swaks → mxguard (in this
// process) → smtp-sink. A message above scoring.tag_at arrives with SpamAssassin's X-Spam-Flag,
// X-Spam-Score and X-Spam-Status naming the checks in tests=; one above reject_at gets 550 at the
// end of DATA and nothing of it reaches the sink or stays in the spool; a forged incoming
// X-Spam-Flag is removed; a DATA check slower than scoring.data_timeout cannot hold the reply.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startTestApp, type TestApp } from './harness/app.ts';
import { makeTempDir, parseSinkDump, runSwaks, sleep, startSmtpSink, waitUntil, type SmtpSinkPeer } from './harness/peers.ts';
import type { AnyCheck } from '../src/policy/check.ts';
import type { Verdict } from '../src/policy/verdict.ts';

let sink: SmtpSinkPeer;
let dir: string;

before(async () => {
  dir = await makeTempDir('mxguard-scoring-');
  sink = await startSmtpSink({ dumpDir: path.join(dir, 'sink') });
});
after(async () => {
  await sink.stop();
});

/** mfilter rules keyed on the Subject; HELO localhost scores 3 (helo.action: score). */
const MFILTER = ['if (isin("Subject", "tagme")) spamdetect(3, "asked to be tagged")', 'if (isin("Subject", "rejectme")) spamdetect(20, "asked to be refused")', ''].join('\n');

async function app(t: { after(fn: () => Promise<void>): void }, extra: Record<string, unknown> = {}, extraChecks: AnyCheck[] = []): Promise<TestApp> {
  const rules = path.join(dir, `mfilter-${Date.now()}-${Math.random().toString(36).slice(2)}.rul`);
  fs.writeFileSync(rules, MFILTER);
  const a = await startTestApp(
    {
      deliver: `smtp://127.0.0.1:${sink.port}`,
      relay: { forward_from_ip: [] }, // loopback is our test client: judge it like any other
      helo: { action: 'score', score: 3 },
      filters: { mfilter: rules },
      ...extra,
    },
    { extraChecks },
  );
  t.after(() => a.stop());
  return a;
}

function dumpsWith(token: string): string[] {
  return sink.files().filter((f) => fs.readFileSync(f, 'latin1').includes(token));
}

function swaks(port: number, token: string, subject: string, extraHeaders: string[] = []): ReturnType<typeof runSwaks> {
  const args = ['--server', `127.0.0.1:${port}`, '--ehlo', 'localhost', '--from', 'sender@src.test', '--to', 'bob@example.test', '--header', `Subject: ${subject}`, '--header', `X-Token: ${token}`];
  for (const h of extraHeaders) args.push('--add-header', h);
  return runSwaks(args);
}

/** The header block of the delivered message (LF line ends, folds kept). */
function headerOf(file: string): string {
  const body = parseSinkDump(file).body.toString('latin1');
  return body.slice(0, body.indexOf('\n\n') + 1);
}

test('above tag_at: the three X-Spam headers, tests= naming the checks; a forged incoming X-Spam-Flag is removed', async (t) => {
  const a = await app(t);
  const token = `tag-${Date.now()}`;
  const r = await swaks(a.port, token, 'please tagme', ['X-Spam-Flag: NO', 'X-Spam-Status: No, score=-100 required=5.0 tests=FORGED']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.ok(await waitUntil(() => dumpsWith(token).length === 1, 10_000), 'delivered');
  const head = headerOf(dumpsWith(token)[0] as string);
  assert.match(head, /^Received: from localhost \(/, 'our Received stays on top');
  assert.match(head, /\nX-Spam-Flag: YES\n/);
  assert.match(head, /\nX-Spam-Score: 6\.0\n/);
  assert.match(head, /\nX-Spam-Status: Yes, score=6\.0 required=5\.0 tests=MFILTER_1,helo\n/);
  assert.match(head, /\nX-Mfilter-Spam: asked to be tagged\n/, "spamdetect's reason header");
  assert.doesNotMatch(head, /X-Spam-Flag: NO|FORGED|score=-100/, 'the forged fields are gone');
  assert.equal(head.match(/^X-Spam-Flag:/gm)?.length, 1);
  assert.equal(head.match(/^X-Spam-Status:/gm)?.length, 1);
  const line = a.logs().find((l) => l.msg === 'transaction' && l.outcome === 'accepted');
  assert.match(String(line?.checks), /helo:tag\+3/);
  assert.match(String(line?.checks), /mfilter:tag\+3/);
});

test('below tag_at: X-Spam-Status No, and no X-Spam-Flag', async (t) => {
  const a = await app(t);
  const token = `low-${Date.now()}`;
  const r = await swaks(a.port, token, 'an ordinary subject', ['X-Spam-Flag: YES']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.ok(await waitUntil(() => dumpsWith(token).length === 1, 10_000));
  const head = headerOf(dumpsWith(token)[0] as string);
  assert.match(head, /\nX-Spam-Status: No, score=3\.0 required=5\.0 tests=helo\n/);
  assert.doesNotMatch(head, /X-Spam-Flag/, 'the forged YES is removed and ours is not there below tag_at');
});

test('above reject_at: 550 5.7.1 at the end of DATA naming the contributors; nothing reaches the sink or stays in the spool', async (t) => {
  const a = await app(t);
  const token = `rej-${Date.now()}`;
  const r = await swaks(a.port, token, 'rejectme now');
  assert.notEqual(r.code, 0);
  assert.match(r.stdout, /<\*\* 550 5\.7\.1 Message refused as spam \(score 23\.0, limit 15\.0\): MFILTER_2=20\.0 helo=3\.0\n/, r.stdout);
  assert.match(r.stdout, / -> \.\n<\*\* 550 /, 'the refusal is the answer to the final dot');
  await sleep(1000);
  assert.deepEqual(dumpsWith(token), [], 'nothing delivered');
  const spoolFiles: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else spoolFiles.push(p);
    }
  };
  walk(path.join(a.dir, 'spool'));
  for (const f of spoolFiles) assert.ok(!fs.readFileSync(f, 'latin1').includes(token), `${f} holds the refused message`);
  assert.ok(a.logs().some((l) => l.check === 'scoring' && l.setting === 'scoring.reject_at'));
});

test('a DATA check slower than scoring.data_timeout cannot hold the reply past it (on_error tempfail, then accept)', async (t) => {
  const never = (onError: 'tempfail' | 'accept'): AnyCheck => ({ name: `never_${onError}`, phase: 'data', onError, run: () => new Promise<Verdict>(() => undefined) }) as AnyCheck;
  const a = await app(t, { scoring: { data_timeout: '1s' } }, [never('tempfail')]);
  const token = `slow-${Date.now()}`;
  const t0 = Date.now();
  const r = await swaks(a.port, token, 'slow');
  const ms = Date.now() - t0;
  assert.match(r.stdout, /<\*\* 451 4\.3\.0 /, r.stdout);
  assert.ok(ms < 6000, `the reply came after ${ms} ms; data_timeout is 1 s`);
  assert.ok(a.logs().some((l) => l.check === 'never_tempfail' && l.onError === 'tempfail'));
  await sleep(500);
  assert.deepEqual(dumpsWith(token), []);

  const b = await app(t, { scoring: { data_timeout: '1s' } }, [never('accept')]);
  const token2 = `slow-ok-${Date.now()}`;
  const r2 = await swaks(b.port, token2, 'slow but accepted');
  assert.equal(r2.code, 0, r2.stdout);
  assert.ok(await waitUntil(() => dumpsWith(token2).length === 1, 10_000), 'on_error accept: delivered without that verdict');
  assert.ok(b.logs().some((l) => l.check === 'never_accept' && l.onError === 'accept'));
});

test('a reload (SIGHUP) with a filter file that no longer parses fails, naming the line, and the old rules stay', async (t) => {
  const a = await app(t);
  const file = a.config.filters.mfilter as string;
  fs.writeFileSync(file, MFILTER + 'if (isin("Subject", "x") reject "unbalanced"\n');
  assert.throws(() => a.app.reload(a.config), new RegExp(`${path.basename(file).replace(/\./g, '\\.')}:3`));
  const token = `hup-${Date.now()}`;
  const r = await swaks(a.port, token, 'please tagme');
  assert.equal(r.code, 0, r.stdout);
  assert.ok(await waitUntil(() => dumpsWith(token).length === 1, 10_000));
  assert.match(headerOf(dumpsWith(token)[0] as string), /tests=MFILTER_1,helo\n/, 'the rules loaded at start still run');
});

test('SpamAssassin-syntax rules (filters.rules) score through SMTP under their own names, body rules on decoded text', async (t) => {
  const cf = path.resolve(import.meta.dirname, 'fixtures/filters/sa-example.cf');
  const a = await app(t, { filters: { rules: [cf] } });
  const token = `sa-${Date.now()}`;
  // The body is quoted-printable: "viagra" is split by a soft line break, found only once decoded.
  const body = 'Cheap vi=\r\nagra at https://bit.ly/abc today\r\n';
  const r = await runSwaks([
    '--server', `127.0.0.1:${a.port}`, '--ehlo', 'localhost', '--from', 'sender@src.test', '--to', 'bob@example.test',
    '--header', 'Subject: free money inside', '--header', `X-Token: ${token}`,
    '--add-header', 'MIME-Version: 1.0', '--add-header', 'Content-Type: text/plain; charset=us-ascii', '--add-header', 'Content-Transfer-Encoding: quoted-printable',
    '--body', body,
  ]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.ok(await waitUntil(() => dumpsWith(token).length === 1, 10_000));
  const status = /\nX-Spam-Status: ([^\n]*(?:\n\t[^\n]*)*)\n/.exec(headerOf(dumpsWith(token)[0] as string))?.[1]?.replace(/\n\t/g, '') ?? '';
  assert.match(status, /^Yes, score=/);
  const tests = /tests=(\S+)/.exec(status)?.[1]?.split(',') ?? [];
  for (const name of ['BODY_VIAGRA', 'SUBJ_FREE_MONEY', 'URI_BIT_LY', 'META_TWO_OF', 'helo']) assert.ok(tests.includes(name), `${name} in ${status}`);
  assert.ok(!tests.some((n) => n.startsWith('__')), 'sub-rules (__) are not listed');
});
