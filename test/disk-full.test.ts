// The spool on a really full file system (issue 8, defect 2): mxguard (a real process) keeps its
// data_dir on a small tmpfs that a filler file fills and frees while four clients send 220
// messages of mixed sizes (journal-sized and queue-file-sized) with the downstream down. Every
// refusal must be 452 4.3.1; then mxguard is killed (kill -9) and started again on the still
// full disk, space comes back, the downstream (a real smtp-sink) comes up, and every message
// that got a 250 must arrive once space is back, byte for byte (SHA-256), and a further restart
// must find nothing left. Needs root (it mounts the tmpfs); fails, never skips, without.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, sinkMessageHashes, startSmtpSink, waitUntil } from './harness/peers.ts';
import { startMxguard, type MxguardProcess } from './harness/mxguard-process.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { fill, mountTmpfs } from './harness/tmpfs.ts';
import { prng } from './harness/prng.ts';
import { atEnd } from './harness/cleanups.ts';


const MB = 1024 * 1024;

function sha(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

/** A message of about `size` octets: Message-ID first, printable lines of random length, no dot lines. */
function message(rand: () => number, tag: string, size: number): { id: string; text: Buffer } {
  const id = `${tag}@full.test`;
  const lines = [`Message-ID: <${id}>`, `Subject: disk full ${tag}`, ''];
  let len = 0;
  while (len < size) {
    let line = '';
    const n = Math.floor(rand() * 300);
    for (let i = 0; i < n; i++) line += String.fromCharCode(33 + Math.floor(rand() * 94));
    line = line.replace(/^\./, 'x');
    lines.push(line);
    len += line.length + 2;
  }
  lines.push(`END ${id}`); // a dump that has this line is complete
  return { id, text: Buffer.from(lines.join('\r\n') + '\r\n', 'latin1') };
}

/** Mixed sizes: mostly journal-sized, some past the 256 KiB in-memory limit (queue files). */
function sizeOf(rand: () => number): number {
  const r = rand();
  if (r < 0.7) return 1000 + Math.floor(rand() * 20_000);
  if (r < 0.9) return 50_000 + Math.floor(rand() * 150_000);
  return 300_000 + Math.floor(rand() * 600_000);
}

interface Outcome {
  acked: Map<string, string>; // Message-ID → SHA-256 of what was sent
  /** Any answer but 250 to the message. */
  refused: number;
  /** Answers that are neither 250 nor 452 4.3.1. */
  unexpected: string[];
}

/** One client: `count` messages over connections of up to 10 messages each. */
async function client(port: number, rand: () => number, tag: string, count: number, out: Outcome): Promise<void> {
  let sent = 0;
  while (sent < count) {
    const c = await RawClient.connect(port);
    try {
      await c.reply(5000);
      c.send('EHLO full.test\r\n');
      await c.reply(5000);
      for (let i = 0; i < 10 && sent < count; i++, sent++) {
        const m = message(rand, `${tag}-${sent}`, sizeOf(rand));
        c.send('MAIL FROM:<sender@full.test>\r\nRCPT TO:<sink@example.test>\r\nDATA\r\n');
        const r = await c.replies(3, 10_000);
        if (!(r[2] as string).startsWith('354')) {
          out.unexpected.push(`${m.id}: ${JSON.stringify(r)}`);
          continue;
        }
        c.send(Buffer.concat([m.text, Buffer.from('.\r\n')]));
        const final = await c.reply(20_000);
        if (final.startsWith('250 ')) out.acked.set(m.id, sha(m.text));
        else {
          out.refused++;
          if (!/^452 4\.3\.1 /.test(final)) out.unexpected.push(`${m.id}: ${final}`);
        }
      }
      c.send('QUIT\r\n');
      await c.reply(5000);
    } finally {
      c.close();
    }
  }
}

test('disk full: 220 messages of mixed sizes, every refusal 452 4.3.1, every 250 delivered intact after kill -9, a restart on the full disk and space coming back', { timeout: 240_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-diskfull-'));
  atEnd(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.chmodSync(dir, 0o755); // smtp-sink writes its dumps as nobody
  const spoolFs = path.join(dir, 'var');
  fs.mkdirSync(spoolFs);
  atEnd(mountTmpfs(spoolFs, '24m'));
  const filler = path.join(spoolFs, 'filler');
  const rand = prng(220);

  const sinkPort = await freePort(); // nothing listens there until the end: the downstream is down
  const port = await freePort();
  const config = {
    hostname: 'mx.example.test',
    local_domains: ['example.test'],
    data_dir: spoolFs,
    deliver: `smtp://127.0.0.1:${sinkPort}`,
    queue: { retry: ['1s'] },
    limits: { max_message_size: 2 * MB },
  };
  let mx: MxguardProcess = await startMxguard(dir, config, port);
  atEnd(() => mx.crash());

  const out: Outcome = { acked: new Map(), refused: 0, unexpected: [] };
  const round = (tag: string, perClient: number) => Promise.all([0, 1, 2, 3].map((c) => client(port, rand, `${tag}${c}`, perClient, out)));

  // 1. A few MB free: the spool fills up under the clients.
  const total = fill(filler);
  fs.truncateSync(filler, total - 4 * MB);
  await round('a', 20);
  const afterA = { acked: out.acked.size, refused: out.refused };
  assert.ok(afterA.refused > 0, `the disk filled up (${JSON.stringify(afterA)})`);
  // 2. Space comes back for a while, then the disk is full again, mid-round.
  fs.truncateSync(filler, total - 12 * MB);
  const b = round('b', 20);
  await new Promise((r) => setTimeout(r, 800));
  fill(filler);
  await b;
  await round('c', 10);
  // 3. kill -9 on the full disk, and a restart on the still full disk: it starts and answers.
  await mx.crash();
  mx = await startMxguard(dir, config, port);
  await round('d', 5);
  const sent = 4 * (20 + 20 + 10 + 5);
  assert.equal(sent, 220);
  assert.equal(out.acked.size + out.refused, sent);
  assert.ok(out.acked.size >= 40 && out.refused >= 40, `both kinds of answer (${out.acked.size} acked, ${out.refused} refused)`);

  // 4. Space returns and the downstream comes up: every acknowledged message arrives, intact.
  fs.rmSync(filler);
  const sink = await startSmtpSink({ dumpDir: path.join(dir, 'sink'), port: sinkPort });
  atEnd(() => sink.stop());
  await waitUntil(() => {
    const got = sinkMessageHashes(sink);
    return [...out.acked.keys()].every((id) => got.has(id));
  }, 60_000, 250);
  let got = sinkMessageHashes(sink);
  const missing = [...out.acked.keys()].filter((id) => !got.has(id));
  assert.deepEqual(missing, [], `acknowledged but not delivered; mxguard's output:\n${fs.readFileSync(mx.logFile, 'utf8').slice(-4000)}`);
  for (const [id, hash] of out.acked) for (const h of got.get(id) ?? []) assert.equal(h, hash, `${id} arrived damaged`);

  // 5. One more restart: nothing left to deliver, nothing damaged set aside.
  assert.equal(await mx.stop(), 0);
  mx = await startMxguard(dir, config, port);
  await new Promise((r) => setTimeout(r, 1500));
  got = sinkMessageHashes(sink);
  for (const [id, hash] of out.acked) assert.ok((got.get(id) ?? []).every((h) => h === hash), id);
  const queue = fs.readdirSync(path.join(spoolFs, 'spool', 'queue')).filter((f) => !f.endsWith('.new'));
  assert.deepEqual(queue, [], 'the queue is empty');
  assert.deepEqual(fs.existsSync(path.join(spoolFs, 'spool', 'corrupt')) ? fs.readdirSync(path.join(spoolFs, 'spool', 'corrupt')) : [], [], 'nothing was damaged');
  assert.deepEqual(out.unexpected.slice(0, 5), [], `every refusal is 452 4.3.1 (${out.unexpected.length} are not)`);
  const duplicates = [...got.values()].filter((c) => c.length > 1).length;
  console.log(`disk full: ${sent} sent, ${out.acked.size} acknowledged, ${out.refused} refused with 452 4.3.1, ${got.size} delivered (${duplicates} more than once)`);
});
