// The shared spool of `mxguard stdio` processes (see spool.ts): a message appears under its ID
// only when complete, never replaces another, and a dead writer's leftovers are cleaned up.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Spool, listQueue, messageBody, newQueueId, readQueueFile } from './spool.ts';
import { listSegments } from './journal.ts';
import type { Envelope } from '../mail/envelope.ts';

function envelope(id: string): Envelope {
  return { id, mailFrom: 'a@b.test', rcpts: ['c@d.test'], receivedAt: Date.now(), client: { ip: '192.0.2.1', tls: false } };
}

async function sharedSpool(): Promise<{ dir: string; spool: Spool }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-spool-'));
  return { dir, spool: await Spool.open(dir, { shared: true }) };
}

test('shared spool: small and large messages get queue files, invisible until committed, and no journal', async () => {
  const { dir, spool } = await sharedSpool();
  const small = spool.begin(newQueueId(), Buffer.from('Received: x\r\n'));
  small.add([Buffer.from('Subject: small\r\n\r\nhi\r\n')]);
  const bigId = newQueueId();
  const big = spool.begin(bigId, Buffer.from('Received: x\r\n'));
  await big.add([Buffer.alloc(300 * 1024, 'a')]); // past the in-memory limit: streams to <id>.new
  assert.deepEqual(await listQueue(spool.paths), [], 'nothing visible mid-DATA');
  assert.ok(fs.existsSync(spool.queuePath(bigId) + '.new'));
  const committed = await Promise.all([small.commit(envelope(small.id)), big.commit(envelope(bigId))]);
  assert.ok(committed.every((c) => c.journal === undefined && c.cached === undefined), 'no journal refs');
  assert.deepEqual((await listQueue(spool.paths)).sort(), [small.id, bigId].sort());
  assert.deepEqual(fs.readdirSync(spool.paths.queue).filter((n) => n.endsWith('.new')), []);
  assert.equal((await readQueueFile(spool.paths, small.id)).size, 'Received: x\r\nSubject: small\r\n\r\nhi\r\n'.length);
  assert.deepEqual(listSegments(spool.paths.journal), []);
  spool.close();
  fs.rmSync(dir, { recursive: true });
});

test('shared spool: a message never replaces a queue file of the same ID (commit fails → 451)', async () => {
  const { dir, spool } = await sharedSpool();
  const id = newQueueId();
  fs.writeFileSync(spool.queuePath(id), 'the other message');
  const w = spool.begin(id, Buffer.from('mine\r\n'));
  await assert.rejects(w.commit(envelope(id)), /EEXIST/);
  await w.abort();
  assert.equal(fs.readFileSync(spool.queuePath(id), 'utf8'), 'the other message');
  assert.ok(!fs.existsSync(spool.queuePath(id) + '.new'), 'its .new file is gone');
  spool.close();
  fs.rmSync(dir, { recursive: true });
});

test('opening a shared spool leaves the daemon\'s journal alone; removeStaleNew takes only old .new files', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-spool-'));
  const daemon = await Spool.open(dir);
  const id = newQueueId();
  await daemon.begin(id, Buffer.from('x\r\n')).commit(envelope(id));
  const segments = listSegments(daemon.paths.journal);
  assert.equal(segments.length, 1);
  const stdio = await Spool.open(dir, { shared: true });
  assert.deepEqual(listSegments(daemon.paths.journal), segments, 'no recovery by the sharing process');
  const old = path.join(daemon.paths.queue, `${newQueueId()}.new`);
  const fresh = path.join(daemon.paths.queue, `${newQueueId()}.new`);
  fs.writeFileSync(old, 'dead writer');
  fs.writeFileSync(fresh, 'writing now');
  const twoDaysAgo = (Date.now() - 2 * 86_400_000) / 1000;
  fs.utimesSync(old, twoDaysAgo, twoDaysAgo);
  daemon.removeStaleNew();
  assert.equal(fs.existsSync(old), false);
  assert.equal(fs.existsSync(fresh), true);
  stdio.close();
  daemon.close();
  fs.rmSync(dir, { recursive: true });
});

async function collect(it: AsyncIterable<Buffer>): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(c);
  return Buffer.concat(parts).toString('latin1');
}

test('the DATA checks read the message back before it is committed: from memory, or from <id>.new', async () => {
  const { spool } = await sharedSpool();
  const small = spool.begin(newQueueId(), Buffer.from('Received: x\r\n'));
  small.add([Buffer.from('Subject: s\r\n\r\n'), Buffer.from('hi\r\n')]);
  assert.equal(await collect(small.read()), 'Received: x\r\nSubject: s\r\n\r\nhi\r\n');
  assert.equal(await collect(small.read(14)), 'ubject: s\r\n\r\nhi\r\n', 'from an offset inside a chunk');
  assert.equal(await collect(small.read(14)), await collect(small.read(14)), 'read again, the same');
  const big = spool.begin(newQueueId(), Buffer.from('R: x\r\n'));
  await big.add([Buffer.alloc(300 * 1024, 'a')]);
  const tail = await collect(big.read(300 * 1024));
  assert.equal(tail, 'a'.repeat(6));
  assert.equal(big.length, 6 + 300 * 1024);
  await small.abort();
  await big.abort();
});

test('messageBody leaves the cut ranges out, across chunk boundaries, and counts its size without them', async () => {
  const text = 'Received: x\r\nX-Spam-Flag: YES\r\nSubject: s\r\nX-Spam-Score: 99\r\n\r\nbody\r\n';
  const flag = text.indexOf('X-Spam-Flag');
  const score = text.indexOf('X-Spam-Score');
  const cut = [
    [flag, flag + 'X-Spam-Flag: YES\r\n'.length],
    [score, score + 'X-Spam-Score: 99\r\n'.length],
  ] as const;
  const want = 'X-Added: 1\r\nReceived: x\r\nSubject: s\r\n\r\nbody\r\n';
  for (let size = 1; size <= text.length; size++) {
    const chunks: Buffer[] = [];
    for (let i = 0; i < text.length; i += size) chunks.push(Buffer.from(text.slice(i, i + size)));
    const body = messageBody('', 0, text.length, ['X-Added: 1\r\n'], { cached: chunks, cut });
    assert.equal(await collect(body.chunks()), want, `chunks of ${size}`);
    assert.equal(body.size, want.length);
    const after = messageBody('', 0, text.length, ['X-Added: 1\r\n'], { cached: chunks, cut, at: 'Received: x\r\n'.length });
    assert.equal(await collect(after.chunks()), 'Received: x\r\nX-Added: 1\r\nSubject: s\r\n\r\nbody\r\n', `after Received, chunks of ${size}`);
    assert.equal(after.size, want.length);
    const end = messageBody('', 0, 13, ['X-Added: 1\r\n'], { cached: chunks.length === 1 ? [Buffer.from(text.slice(0, 13))] : [Buffer.from('Received: x\r\n')], at: 13 });
    assert.equal(await collect(end.chunks()), 'Received: x\r\nX-Added: 1\r\n');
  }
});
