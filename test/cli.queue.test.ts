// `mxguard queue list|show|flush|delete` and start-up refusal, through the real CLI against a
// real mxguard process whose downstream (a real smtp-sink) is down at first.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, runSwaks, startSmtpSink, waitUntil, type SmtpSinkPeer } from './harness/peers.ts';
import { startMxguard } from './harness/mxguard-process.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');
const cleanups: Array<() => Promise<unknown> | void> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

function cli(args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr });
    });
  });
}

test('queue list, show, flush and delete on deferred mail', { timeout: 60_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-cli-'));
  fs.chmodSync(dir, 0o755);
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  // The downstream port is taken by nothing yet: every attempt fails until smtp-sink starts there.
  const downPort = await freePort();
  const port = await freePort();
  const config = {
    hostname: 'mx.example.test',
    local_domains: ['example.test'],
    data_dir: path.join(dir, 'var'),
    deliver: `smtp://127.0.0.1:${downPort}`,
    queue: { retry: ['1h'] }, // no retry by itself during the test: only flush sends it
    log: { level: 'warn' },
  };
  const mx = await startMxguard(dir, config, port);
  cleanups.push(() => mx.stop());
  const cfg = path.join(dir, 'mxguard.yaml');

  const ids: string[] = [];
  for (const who of ['keep', 'drop']) {
    const r = await runSwaks(['--server', '127.0.0.1', '--port', String(port), '--from', 'sender@src.test', '--to', `${who}@example.test`, '--header', `Subject: ${who} me`]);
    const m = /queued as ([0-9A-Z]{14})/.exec(r.stdout);
    assert.ok(m, r.stdout);
    ids.push(m[1] as string);
  }
  const [keep, drop] = ids as [string, string];

  // Both are deferred (connection refused) after their first attempt.
  assert.ok(await waitUntil(async () => (await cli(['queue', '-c', cfg, 'list'])).out.includes('ECONNREFUSED'), 10_000));
  const list = (await cli(['queue', '-c', cfg, 'list'])).out;
  assert.match(list, new RegExp(`${keep} .* <sender@src\\.test> → keep@example\\.test`));
  assert.match(list, new RegExp(`${drop} .* <sender@src\\.test> → drop@example\\.test`));
  assert.match(list, /-- 2 messages/);

  const show = await cli(['queue', '-c', cfg, 'show', keep]);
  assert.equal(show.code, 0, show.out);
  assert.match(show.out, /"mailFrom": "sender@src\.test"/);
  assert.match(show.out, /"attempts": 1/);
  assert.match(show.out, /^Subject: keep me$/m);
  assert.notEqual((await cli(['queue', '-c', cfg, 'show', 'NOSUCHMESSAGE1'])).code, 0);

  const del = await cli(['queue', '-c', cfg, 'delete', drop]);
  assert.equal(del.code, 0, del.out);
  assert.match(del.out, /deleted; told mxguard/);

  // The downstream comes up; flush sends what is left right away instead of in an hour.
  let sink: SmtpSinkPeer | undefined;
  for (let i = 0; i < 20 && !sink; i++) {
    sink = await startSmtpSink({ dumpDir: path.join(dir, 'sink'), port: downPort }).catch(() => undefined);
  }
  assert.ok(sink, 'smtp-sink on the downstream port');
  cleanups.push(() => sink?.stop());
  const flush = await cli(['queue', '-c', cfg, 'flush']);
  assert.match(flush.out, /1 message due now; told mxguard/);
  assert.ok(await waitUntil(() => sink.received() >= 1, 10_000), 'the flushed message arrives');
  assert.ok(await waitUntil(async () => (await cli(['queue', '-c', cfg, 'list'])).out.includes('-- 0 messages'), 10_000));
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(sink.received(), 1, 'the deleted message was never sent');
  const got = sink.files().map((f) => fs.readFileSync(f, 'utf8')).join('\n');
  assert.match(got, /Subject: keep me/);
  assert.doesNotMatch(got, /Subject: drop me/);
});

test('an invalid config file: mxguard refuses to start and says where', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-cli-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'bad.yaml');
  fs.writeFileSync(file, 'listen: ["127.0.0.1:0"]\nlimits:\n  max_rcpts: lots\n');
  const r = await cli(['start', '-c', file]);
  assert.equal(r.code, 1);
  assert.match(r.out, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:3:\\d+: limits\\.max_rcpts: `));
});
