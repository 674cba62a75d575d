import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Journal, listSegments, parseSegment, readSegment, segmentPath, type JournalRef } from './journal.ts';
import { prng } from '../../test/harness/prng.ts';
import type { Logger } from '../util/log.ts';
import { DamagedSpoolFile, Spool, listQueue, newQueueId, readQueueFile } from './spool.ts';
import type { Envelope } from '../mail/envelope.ts';
import { crc32Of } from './spool-fs.ts';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-journal-'));
}

/** Appends one message given as text or octets. */
function append(j: Journal, env: Envelope, message: string | Buffer): Promise<JournalRef> {
  const b = typeof message === 'string' ? Buffer.from(message) : message;
  return j.append(env, [b], b.length, crc32Of([b]));
}

function envelope(id = newQueueId()): Envelope {
  return { id, mailFrom: 'a@b.test', rcpts: ['c@d.test'], receivedAt: Date.now(), client: { ip: '127.0.0.1', tls: false } };
}

test('appended records read back; done ones are left out', async () => {
  const dir = tmp();
  const j = new Journal(dir);
  const envs = [envelope(), envelope(), envelope()];
  const refs = [];
  for (const [i, env] of envs.entries()) refs.push(await append(j, env, `message ${i}\r\n`));
  const seq = (refs[0] as { seq: number }).seq;
  assert.deepEqual(readSegment(dir, seq).map((r) => r.envelope.id), envs.map((e) => e.id));
  const data = fs.readFileSync(segmentPath(dir, seq, 'log'));
  const r1 = refs[1] as { offset: number; size: number };
  assert.equal(data.toString('utf8', r1.offset, r1.offset + r1.size), 'message 1\r\n');
  j.done(refs[1] as JournalRef, (envs[1] as Envelope).id);
  assert.deepEqual(readSegment(dir, seq).map((r) => r.envelope.id), [(envs[0] as Envelope).id, (envs[2] as Envelope).id]);
  j.close();
  fs.rmSync(dir, { recursive: true });
});

test('a torn tail is ignored, whatever the cut', async () => {
  const dir = tmp();
  const j = new Journal(dir);
  const a = envelope();
  const b = envelope();
  const ra = await append(j, a, 'first\r\n');
  await append(j, b, 'second\r\n');
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
  const r1 = await append(j, env1, big);
  const env2 = envelope();
  const r2 = await append(j, env2, big); // the segment is now past its limit
  const env3 = envelope();
  const r3 = await append(j, env3, 'x'); // goes to a new segment
  assert.notEqual(r3.seq, r1.seq);
  j.done(r1, env1.id);
  assert.ok(fs.existsSync(segmentPath(dir, r1.seq, 'log')));
  j.done(r2, env2.id);
  assert.ok(!fs.existsSync(segmentPath(dir, r1.seq, 'log')), 'segment removed');
  assert.deepEqual(listSegments(dir), [r3.seq]);
  j.close();
  fs.rmSync(dir, { recursive: true });
});

test('Spool.open hands what the journal held to the forwarder, from the segment, and deletes it once done', async () => {
  const dir = tmp();
  let spool = await Spool.open(dir);
  const w = spool.begin(newQueueId(), Buffer.from('Received: x\r\n'));
  w.add([Buffer.from('Subject: kept\r\n\r\nbody\r\n')]);
  const env = envelope(w.id);
  const committed = await w.commit(env);
  assert.ok(committed.journal, 'a small message goes to the journal');
  spool.close(); // as after a crash: nothing marked done
  spool = await Spool.open(dir);
  const [rec, ...more] = spool.takeRecovered();
  assert.ok(rec && more.length === 0);
  assert.equal(rec.envelope.id, w.id);
  assert.deepEqual(await listQueue(spool.paths), [], 'start-up writes nothing: it also works on a full disk');
  const ref = rec.journal as JournalRef;
  const data = fs.readFileSync(segmentPath(spool.paths.journal, ref.seq, 'log'));
  assert.equal(data.toString('utf8', ref.offset, ref.offset + ref.size), 'Received: x\r\nSubject: kept\r\n\r\nbody\r\n');
  spool.journal.done(ref, w.id);
  assert.deepEqual(listSegments(spool.paths.journal), [], 'the old segment goes once its last record is done');
  // A queue file cut short has no trailer: damaged (a crash in mid-DATA leaves only <id>.new).
  fs.writeFileSync(spool.queuePath('MWR9ZZZZZZZZZZ'), 'Subject: torn\r\n');
  await assert.rejects(readQueueFile(spool.paths, 'MWR9ZZZZZZZZZZ'), DamagedSpoolFile);
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
  const ref = await append(j, env, 'x');
  j.done(ref, env.id);
  assert.deepEqual(listSegments(dir), [ref.seq], 'kept for a moment, in case more mail comes');
  t.mock.timers.tick(2500);
  assert.deepEqual(listSegments(dir), [], 'deleted once idle');
  const env2 = envelope();
  const ref2 = await append(j, env2, 'y');
  assert.equal(ref2.seq, ref.seq + 1, 'a new segment on demand');
  j.close();
  fs.rmSync(dir, { recursive: true });
});

test('the same ID reported done twice counts once: the segment is not deleted early', async () => {
  const dir = tmp();
  const j = new Journal(dir);
  const big = Buffer.alloc(9 * 1024 * 1024, 98);
  const e1 = envelope();
  const r1 = await append(j, e1, big);
  const e2 = envelope();
  const r2 = await append(j, e2, big);
  assert.equal(r2.seq, r1.seq, 'both fit before the 16 MiB limit is reached');
  const e3 = envelope();
  await append(j, e3, 'w'); // rotates: r1's segment is now closed
  j.done(r1, e1.id);
  j.done(r1, e1.id); // e.g. deleted by the CLI while its delivery was in flight
  assert.ok(fs.existsSync(segmentPath(dir, r1.seq, 'log')), 'e2 is still pending in it');
  assert.deepEqual(readSegment(dir, r1.seq).map((r) => r.envelope.id), [e2.id]);
  j.done(r2, e2.id);
  assert.ok(!fs.existsSync(segmentPath(dir, r1.seq, 'log')));
  j.close();
  fs.rmSync(dir, { recursive: true });
});

// --- damage (issue 8, defect 3) ------------------------------------------------------------

/** A closed segment of `n` messages; returns its bytes, the records' refs and bodies. */
async function segmentOf(n: number, body = (i: number) => `Subject: m${i}\r\n\r\nbody ${i}\r\n`): Promise<{ dir: string; seq: number; data: Buffer; refs: JournalRef[]; envs: Envelope[]; bodies: string[] }> {
  const dir = tmp();
  const j = new Journal(dir);
  const envs: Envelope[] = [];
  const refs: JournalRef[] = [];
  const bodies: string[] = [];
  for (let i = 0; i < n; i++) {
    envs.push(envelope());
    bodies.push(body(i));
    refs.push(await append(j, envs[i] as Envelope, bodies[i] as string));
  }
  j.close();
  const seq = (refs[0] as JournalRef).seq;
  return { dir, seq, data: fs.readFileSync(segmentPath(dir, seq, 'log')), refs, envs, bodies };
}

function flipAt(b: Buffer, at: number, bits: number): void {
  b[at] = (b[at] as number) ^ bits;
}

/** Where record i's header starts: just after record i-1's closing LF. */
function recordStart(data: Buffer, refs: JournalRef[], i: number): number {
  return i === 0 ? data.indexOf('MXR2 ') : (refs[i - 1] as JournalRef).offset + (refs[i - 1] as JournalRef).size + 1;
}

test('one damaged record header costs that record only: reading resynchronises on the next', async () => {
  const { dir, seq, data, refs, envs } = await segmentOf(12);
  const start = recordStart(data, refs, 2);
  const damaged = Buffer.from(data);
  flipAt(damaged, start + 1, 0x20); // "MXR2" → "MxR2"
  const parsed = parseSegment(damaged, seq);
  assert.deepEqual(parsed.records.map((r) => r.envelope.id), envs.filter((_, i) => i !== 2).map((e) => e.id));
  assert.equal(parsed.damage.length, 1);
  assert.equal(parsed.damage[0]?.offset, start, 'the byte offset of the damaged stretch');
  assert.equal(parsed.tornAt, undefined);
  fs.rmSync(dir, { recursive: true });
});

test('a flipped octet in a message body or an envelope fails its CRC; the ID is still named', async () => {
  const { dir, seq, data, refs, envs } = await segmentOf(5);
  for (const where of ['body', 'envelope'] as const) {
    const damaged = Buffer.from(data);
    const ref = refs[3] as JournalRef;
    const at = where === 'body' ? ref.offset + 3 : ref.offset - 5; // inside the message / the envelope's last octets
    flipAt(damaged, at, 0x01);
    const parsed = parseSegment(damaged, seq);
    assert.deepEqual(parsed.records.map((r) => r.envelope.id), envs.filter((_, i) => i !== 3).map((e) => e.id), where);
    assert.equal(parsed.damage.length, 1);
    assert.equal(parsed.damage[0]?.id, envs[3]?.id);
  }
  fs.rmSync(dir, { recursive: true });
});

test('a torn tail (cut anywhere in the last record, maybe zero-filled) is told apart from damage', async () => {
  const { dir, seq, data, refs } = await segmentOf(3);
  const lastStart = recordStart(data, refs, 2);
  for (let cut = lastStart; cut < data.length; cut++) {
    for (const zeros of [0, 5, 200]) {
      const parsed = parseSegment(Buffer.concat([data.subarray(0, cut), Buffer.alloc(zeros)]), seq);
      assert.equal(parsed.records.length, 2, `cut ${cut}+${zeros}`);
      assert.deepEqual(parsed.damage, [], `cut ${cut}+${zeros}`);
      assert.equal(parsed.tornAt, cut === lastStart && zeros === 0 ? undefined : lastStart, `cut ${cut}+${zeros}`);
    }
  }
  // The segment header itself cut short: no records, nothing damaged.
  for (let cut = 1; cut < 22; cut++) assert.deepEqual(parseSegment(data.subarray(0, cut), seq).damage, []);
  fs.rmSync(dir, { recursive: true });
});

test('a damaged segment header: the nonce is taken from the records, and all of them are read', async () => {
  const { dir, seq, data, envs } = await segmentOf(4);
  const damaged = Buffer.from(data);
  damaged[7] = 0x7a; // inside the header's nonce
  const parsed = parseSegment(damaged, seq);
  assert.deepEqual(parsed.records.map((r) => r.envelope.id), envs.map((e) => e.id));
  assert.equal(parsed.damage[0]?.offset, 0);
  fs.rmSync(dir, { recursive: true });
});

test('a record forged inside a message body is never taken for a real one when reading resynchronises', async () => {
  // The attacker's body holds a complete, valid-looking record (right CRCs, its own nonce).
  const forgedEnv = Buffer.from(JSON.stringify(envelope('FORGEDFORGED00')));
  const forgedMsg = Buffer.from('pwned\r\n');
  const forged = `MXR2 ${'0123456789abcdef'} FORGEDFORGED00 ${forgedEnv.length} ${forgedMsg.length} ${crc32Of([forgedMsg]).toString(16).padStart(8, '0')} ${crc32Of([forgedEnv]).toString(16).padStart(8, '0')}\n${forgedEnv.toString()}${forgedMsg.toString()}\n`;
  const { dir, seq, data, refs } = await segmentOf(3, (i) => (i === 1 ? `Subject: x\r\n\r\n${forged}\r\n` : `Subject: m${i}\r\n\r\nbody\r\n`));
  const damaged = Buffer.from(data);
  flipAt(damaged, recordStart(data, refs, 1) + 2, 0x40); // the forged record's carrier loses its header
  const ids = parseSegment(damaged, seq).records.map((r) => r.envelope.id);
  assert.ok(!ids.includes('FORGEDFORGED00'), 'the forged record was not read');
  assert.equal(ids.length, 2);
  fs.rmSync(dir, { recursive: true });
});

test('random damage never throws, and every record read back is one that was written, byte for byte', async () => {
  const { dir, seq, data, refs, envs, bodies } = await segmentOf(20);
  const rand = prng(3);
  const byId = new Map(envs.map((e, i) => [e.id, bodies[i] as string]));
  for (let round = 0; round < 2000; round++) {
    const damaged = Buffer.from(data);
    const flips = 1 + Math.floor(rand() * 4);
    for (let k = 0; k < flips; k++) flipAt(damaged, Math.floor(rand() * damaged.length), 1 << Math.floor(rand() * 8));
    const parsed = parseSegment(damaged, seq);
    for (const r of parsed.records) {
      assert.equal(damaged.toString('utf8', r.ref.offset, r.ref.offset + r.ref.size), byId.get(r.envelope.id), `round ${round}`);
    }
    // Records lost = at most one per flip (plus the header's), and the loss is reported.
    assert.ok(parsed.records.length >= refs.length - flips, `round ${round}: ${parsed.records.length} records`);
    if (parsed.records.length < refs.length) assert.ok(parsed.damage.length > 0 || parsed.tornAt !== undefined, `round ${round}: a loss without a report`);
  }
  fs.rmSync(dir, { recursive: true });
});

test('Spool.open recovers every readable record of a damaged segment, keeps a copy in spool/corrupt and logs the offset', async () => {
  const dir = tmp();
  let spool = await Spool.open(dir);
  const ids: string[] = [];
  for (let i = 0; i < 12; i++) {
    const w = spool.begin(newQueueId(), Buffer.from(`Subject: ${i}\r\n\r\n`));
    w.add([Buffer.from(`body ${i}\r\n`)]);
    ids.push((await w.commit(envelope(w.id))).envelope.id);
  }
  spool.close(); // a crash: nothing marked done
  const [seq] = listSegments(spool.paths.journal);
  const file = segmentPath(spool.paths.journal, seq as number, 'log');
  const data = fs.readFileSync(file);
  const second = data.indexOf('MXR2 ', data.indexOf('MXR2 ') + 1);
  flipAt(data, second + 30, 0xff); // inside the second record's header
  fs.writeFileSync(file, data);
  const lines: Array<{ obj: Record<string, unknown>; msg: string }> = [];
  const log = { error: (obj: Record<string, unknown>, msg: string) => lines.push({ obj, msg }), warn: () => undefined, info: () => undefined } as unknown as Logger;
  spool = await Spool.open(dir, { log });
  assert.deepEqual(spool.takeRecovered().map((m) => m.envelope.id).sort(), ids.filter((_, i) => i !== 1).sort(), 'the 11 others are recovered');
  const kept = fs.readdirSync(spool.paths.corrupt);
  assert.equal(kept.length, 1);
  assert.ok(fs.readFileSync(path.join(spool.paths.corrupt, kept[0] as string)).equals(data), 'the damaged segment is kept as it was');
  assert.equal(lines.length, 1);
  assert.equal(lines[0]?.obj.offset, second);
  spool.close();
  fs.rmSync(dir, { recursive: true });
});
