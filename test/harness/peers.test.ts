// Smoke test of the peer harness: each peer comes up, takes one message, and goes away.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { freePort, isAlive, maildirFiles, makeTempDir, parseSinkDump, runSwaks, startDovecotLmtp, startPostfix, startSmtpSink, waitUntil, type Peer } from './peers.ts';


async function assertStops(peer: Peer): Promise<void> {
  const pid = peer.pid;
  await peer.stop();
  assert.ok(await waitUntil(() => !isAlive(pid), 5000), `${peer.name} pid ${pid} still alive after stop()`);
  await peer.stop(); // idempotent
}

test('freePort gives distinct usable ports', async () => {
  const a = await freePort();
  const b = await freePort();
  assert.ok(a > 1024 && b > 1024);
});

test('smtp-sink: up, dumps one file per message, stops', async (t) => {
  const dump = await makeTempDir('sinkdump');
  t.after(() => fsp.rm(dump, { recursive: true, force: true }));
  const sink = await startSmtpSink({ dumpDir: dump });
  t.after(() => sink.stop());
  for (let i = 0; i < 2; i++) {
    const r = await runSwaks(['--server', '127.0.0.1', '--port', String(sink.port), '--from', 'a@x.test', '--to', 'b@y.test,c@y.test', '--header', `Subject: n${i}`]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  }
  assert.ok(await waitUntil(() => sink.files().length === 2, 5000), `files: ${sink.files().join(', ')}`);
  const d = parseSinkDump(sink.files()[0] as string);
  assert.equal(d.mailArgs, '<a@x.test>');
  assert.deepEqual(d.rcptArgs, ['<b@y.test>', '<c@y.test>']);
  assert.match(d.body.toString(), /^Date: /m);
  await assertStops(sink);
});

test('postfix: up, delivers to a virtual maildir, rejects unknown users, stops', async (t) => {
  const pf = await startPostfix({ domains: ['example.test'] });
  t.after(() => pf.stop());
  const ok = await runSwaks(['--server', '127.0.0.1', '--port', String(pf.port), '--from', 'a@x.test', '--to', 'alice@example.test']);
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  const box = pf.maildirFor('Alice@Example.Test');
  assert.ok(await waitUntil(() => maildirFiles(box).length === 1, 10_000), `no mail in ${box}; log:\n${pf.log()}`);
  const bad = await runSwaks(['--server', '127.0.0.1', '--port', String(pf.port), '--from', 'a@x.test', '--to', 'zed@example.test']);
  assert.equal(bad.code, 24, 'no recipient accepted');
  assert.match(bad.stdout, /550 5\.1\.1/);
  const dir = pf.dir;
  await assertStops(pf);
  assert.equal(fs.existsSync(dir), false, 'temp dir removed');
});

test('dovecot lmtp: up, one reply per recipient, stops', async (t) => {
  const dv = await startDovecotLmtp();
  t.after(() => dv.stop());
  const r = await runSwaks(['--server', '127.0.0.1', '--port', String(dv.port), '--protocol', 'LMTP', '--from', 'a@x.test', '--to', 'alice@example.test,bob@example.test']);
  assert.equal(r.code, 0, r.stdout + r.stderr + dv.log());
  assert.equal((r.stdout.match(/<- {2}250 2\.0\.0 <[^>]+> .* Saved/g) ?? []).length, 2, r.stdout);
  for (const a of ['alice@example.test', 'bob@example.test']) assert.equal(maildirFiles(dv.maildirFor(a)).length, 1, a);
  await assertStops(dv);
});

test('dovecot lmtp with a user list refuses unknown users', async (t) => {
  const dv = await startDovecotLmtp({ users: ['alice@example.test'] });
  t.after(() => dv.stop());
  const r = await runSwaks(['--server', '127.0.0.1', '--port', String(dv.port), '--protocol', 'LMTP', '--from', 'a@x.test', '--to', 'zed@example.test']);
  assert.equal(r.code, 24, r.stdout);
  assert.match(r.stdout, /<\*\* 550 5\.1\.1/);
  assert.equal(path.isAbsolute(dv.maildirFor('alice@example.test')), true);
  await assertStops(dv);
});

test('runSwaks never throws and reports a timeout', async () => {
  const port = await freePort(); // nothing listens there
  const r = await runSwaks(['--server', '127.0.0.1', '--port', String(port), '--to', 'a@b.test'], { timeoutMs: 10_000 });
  assert.notEqual(r.code, 0);
  assert.equal(r.timedOut, false);
});
