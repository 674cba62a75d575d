import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Journal, listSegments, readSegment, segmentPath } from './journal.ts';
import { IncompleteSpoolFile, Spool, listQueue, newQueueId, readQueueFile } from './spool.ts';
import type { Envelope } from './envelope.ts';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-journal-'));
}

function envelope(id = newQueueId()): Envelope {
  return { id, mailFrom: 'a@b.test', rcpts: ['c@d.test'], receivedAt: Date.now(), client: { ip: '127.0.0.1', tls: false } };
}

test('appended records read back; done ones are left out', async () => {
  const dir = tmp();
  const j = new Journal(dir);
  const envs = [envelope(), envelope(), envelope()];
  const refs = [];
  for (const [i, env] of envs.entries()) refs.push(await j.append(env, [Buffer.from(`message ${i}\r\n`)], `message ${i}\r\n`.length));
  const seq = (refs[0] as { seq: number }).seq;
  assert.deepEqual(readSegment(dir, seq).map((r) => r.envelope.id), envs.map((e) => e.id));
  const data = fs.readFileSync(segmentPath(dir, seq, 'log'));
  const r1 = refs[1] as { offset: number; size: number };
  assert.equal(data.toString('utf8', r1.offset, r1.offset + r1.size), 'message 1\r\n');
  j.done(refs[1] as { seq: number; offset: number; size: number }, (envs[1] as Envelope).id);
  assert.deepEqual(readSegment(dir, seq).map((r) => r.envelope.id), [(envs[0] as Envelope).id, (envs[2] as Envelope).id]);
  j.close();
  fs.rmSync(dir, { recursive: true });
});

test('a torn tail is ignored, whatever the cut', async () => {
  const dir = tmp();
  const j = new Journal(dir);
  const a = envelope();
  const b = envelope();
  const ra = await j.append(a, [Buffer.from('first\r\n')], 7);
  await j.append(b, [Buffer.from('second\r\n')], 8);
  j.close();
  const file = segmentPath(dir, ra.seq, 'log');
  const full = fs.readFileSync(file);
  const firstEnd = ra.offset + ra.size + 1;
  for (let cut = firstEnd; cut < full.length; cut++) {
    fs.writeFileSync(file, Buffer.concat([full.subarray(0, cut), Buffer.alloc(cut % 7)])); // torn, maybe zero-filled
    assert.deepEqual(readSegment(dir, ra.seq).map((r) => r.envelope.id), [a.id], `cut at ${cut}`);
  }
  fs.rmSync(dir, { recursive: true });
});

test('a full, closed segment whose records are all done is deleted', async () => {
  const dir = tmp();
  const j = new Journal(dir);
  const big = Buffer.alloc(9 * 1024 * 1024, 97);
  const env1 = envelope();
  const r1 = await j.append(env1, [big], big.length);
  const env2 = envelope();
  const r2 = await j.append(env2, [big], big.length); // the segment is now past its limit
  const env3 = envelope();
  const r3 = await j.append(env3, [Buffer.from('x')], 1); // goes to a new segment
  assert.notEqual(r3.seq, r1.seq);
  j.done(r1, env1.id);
  assert.ok(fs.existsSync(segmentPath(dir, r1.seq, 'log')));
  j.done(r2, env2.id);
  assert.ok(!fs.existsSync(segmentPath(dir, r1.seq, 'log')), 'segment removed');
  assert.deepEqual(listSegments(dir), [r3.seq]);
  j.close();
  fs.rmSync(dir, { recursive: true });
});

test('Spool.open moves what the journal held into queue files; incomplete files are recognised', async () => {
  const dir = tmp();
  let spool = await Spool.open(dir);
  const w = spool.begin(newQueueId(), Buffer.from('Received: x\r\n'));
  w.add([Buffer.from('Subject: kept\r\n\r\nbody\r\n')]);
  const env = envelope(w.id);
  const committed = await w.commit(env);
  assert.ok(committed.journal, 'a small message goes to the journal');
  spool.close(); // as after a crash: nothing marked done
  spool = await Spool.open(dir);
  assert.deepEqual(await listQueue(spool.paths), [w.id]);
  const q = await readQueueFile(spool.paths, w.id);
  assert.equal(q.envelope.id, w.id);
  const text = fs.readFileSync(spool.queuePath(w.id), 'utf8').slice(0, q.size);
  assert.equal(text, 'Received: x\r\nSubject: kept\r\n\r\nbody\r\n');
  assert.deepEqual(listSegments(spool.paths.journal).filter((s) => readSegment(spool.paths.journal, s).length > 0), []);
  // A queue file cut short (crash in mid-DATA of a large message) has no trailer.
  fs.writeFileSync(spool.queuePath('MWR9ZZZZZZZZZZ'), 'Subject: torn\r\n');
  await assert.rejects(readQueueFile(spool.paths, 'MWR9ZZZZZZZZZZ'), IncompleteSpoolFile);
  spool.close();
  fs.rmSync(dir, { recursive: true });
});

test('large messages stream to a queue file of their own', async () => {
  const dir = tmp();
  const spool = await Spool.open(dir);
  const w = spool.begin(newQueueId(), Buffer.from('Received: x\r\n'));
  const line = Buffer.from('y'.repeat(998) + '\r\n');
  for (let i = 0; i < 400; i++) await w.add([line]);
  const committed = await w.commit(envelope(w.id));
  assert.equal(committed.journal, undefined);
  assert.equal(committed.cached, undefined);
  const q = await readQueueFile(spool.paths, w.id);
  assert.equal(q.size, 13 + 400 * 1000);
  spool.close();
  fs.rmSync(dir, { recursive: true });
});

test('an idle journal whose messages are all done keeps no segment file', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const dir = tmp();
  const j = new Journal(dir);
  assert.deepEqual(listSegments(dir), [], 'no segment before the first message');
  const env = envelope();
  const ref = await j.append(env, [Buffer.from('x')], 1);
  j.done(ref, env.id);
  assert.deepEqual(listSegments(dir), [ref.seq], 'kept for a moment, in case more mail comes');
  t.mock.timers.tick(2500);
  assert.deepEqual(listSegments(dir), [], 'deleted once idle');
  const env2 = envelope();
  const ref2 = await j.append(env2, [Buffer.from('y')], 1);
  assert.equal(ref2.seq, ref.seq + 1, 'a new segment on demand');
  j.close();
  fs.rmSync(dir, { recursive: true });
});

test('the same ID reported done twice counts once: the segment is not deleted early', async () => {
  const dir = tmp();
  const j = new Journal(dir);
  const big = Buffer.alloc(9 * 1024 * 1024, 98);
  const e1 = envelope();
  const r1 = await j.append(e1, [big], big.length);
  const e2 = envelope();
  const r2 = await j.append(e2, [big], big.length);
  assert.equal(r2.seq, r1.seq, 'both fit before the 16 MiB limit is reached');
  const e3 = envelope();
  await j.append(e3, [Buffer.from('w')], 1); // rotates: r1's segment is now closed
  j.done(r1, e1.id);
  j.done(r1, e1.id); // e.g. deleted by the CLI while its delivery was in flight
  assert.ok(fs.existsSync(segmentPath(dir, r1.seq, 'log')), 'e2 is still pending in it');
  assert.deepEqual(readSegment(dir, r1.seq).map((r) => r.envelope.id), [e2.id]);
  j.done(r2, e2.id);
  assert.ok(!fs.existsSync(segmentPath(dir, r1.seq, 'log')));
  j.close();
  fs.rmSync(dir, { recursive: true });
});
