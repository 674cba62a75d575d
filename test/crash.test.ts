// Nothing acknowledged is ever lost: mxguard (a real process) is killed with SIGKILL again and
// again while clients send to it; it forwards to a real smtp-sink. Every Message-ID that got
// "250 ... queued as" must arrive at the sink once mxguard has been restarted and drained the
// spool, byte for byte (SHA-256 of the message): a damaged copy counts as lost. Duplicates are
// allowed (a crash between delivery and unlink), losses are not.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, sinkMessageHashes, startSmtpSink } from './harness/peers.ts';
import { startMxguard, type MxguardProcess } from './harness/mxguard-process.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { prng } from './harness/prng.ts';

const CLIENTS = 8;
const KILLS = 6;

const cleanups: Array<() => Promise<unknown> | void> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

/** One client: sends messages over one connection at a time until `stop`, reconnecting after failures. */
async function client(n: number, port: number, acked: Map<string, string>, sent: { count: number }, stop: { now: boolean }): Promise<void> {
  let seq = 0;
  const rand = prng(1000 + n);
  while (!stop.now) {
    let c: RawClient | undefined;
    try {
      c = await RawClient.connect(port);
      await c.reply(2000);
      c.send('EHLO load.test\r\n');
      await c.reply(2000);
      for (let i = 0; i < 20 && !stop.now; i++) {
        const id = `crash-${n}-${seq++}@load.test`;
        sent.count++;
        c.send(`MAIL FROM:<load@load.test>\r\nRCPT TO:<sink@example.test>\r\nDATA\r\n`);
        const r = await c.replies(3, 2000);
        if (!(r[2] as string).startsWith('354')) throw new Error(`unexpected ${JSON.stringify(r)}`);
        const text = messageText(rand, id);
        c.send(Buffer.concat([text, Buffer.from('.\r\n')]));
        const final = await c.reply(5000);
        if (/^250 2\.0\.0 Ok: queued as /.test(final)) acked.set(id, sha(text));
      }
      c.send('QUIT\r\n');
    } catch {
      // mxguard died under us: whatever was not acknowledged may be lost, and that is allowed.
      await new Promise((r) => setTimeout(r, 20));
    } finally {
      c?.close();
    }
  }
}

/** Mostly journal-sized messages, one in twenty past the in-memory limit (a queue file). */
function messageText(rand: () => number, id: string): Buffer {
  const lines = [`Message-ID: <${id}>`, 'Subject: crash test', ''];
  const count = rand() < 0.05 ? 3000 : 5 + Math.floor(rand() * 40);
  for (let i = 0; i < count; i++) lines.push(`payload ${Math.floor(rand() * 1e12).toString(36)} `.repeat(1 + Math.floor(rand() * 8)));
  lines.push(`END ${id}`);
  return Buffer.from(lines.join('\r\n') + '\r\n', 'latin1');
}

function sha(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

test('kill -9 under load loses no acknowledged message', { timeout: 120_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-crash-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.chmodSync(dir, 0o755); // smtp-sink writes its dumps as nobody
  const dumpDir = path.join(dir, 'sink');
  const sink = await startSmtpSink({ dumpDir });
  cleanups.push(() => sink.stop());
  const port = await freePort();
  const config = {
    hostname: 'mx.example.test',
    local_domains: ['example.test'],
    data_dir: path.join(dir, 'var'),
    deliver: `smtp://127.0.0.1:${sink.port}`,
    queue: { retry: ['500ms'] },
    log: { level: 'warn' },
  };
  let mx: MxguardProcess = await startMxguard(dir, config, port);
  cleanups.push(() => mx.crash());

  const acked = new Map<string, string>(); // Message-ID → SHA-256 of the message sent
  const sent = { count: 0 };
  const stop = { now: false };
  const clients = Array.from({ length: CLIENTS }, (_, i) => client(i, port, acked, sent, stop));

  // A fixed pseudo-random kill schedule, so a failure can be replayed.
  const rand = prng(12345);
  for (let k = 0; k < KILLS; k++) {
    await new Promise((r) => setTimeout(r, 300 + rand() * 500));
    await mx.crash();
    mx = await startMxguard(dir, config, port);
  }
  await new Promise((r) => setTimeout(r, 500));
  stop.now = true;
  await Promise.all(clients);

  // Let the last instance drain its spool into the sink. A dump counts when it is complete and
  // its SHA-256 (smtp-sink's LF back to CRLF; the messages have no bare CR or LF) is the one sent.
  const intact = new Set<string>();
  const damaged = new Set<string>();
  let copies = 0;
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    intact.clear();
    damaged.clear();
    copies = 0;
    for (const [id, hashes] of sinkMessageHashes(sink)) {
      copies += hashes.length;
      const want = acked.get(id);
      if (want === undefined) continue;
      if (hashes.includes(want)) intact.add(id);
      if (hashes.some((h) => h !== want)) damaged.add(id);
    }
    if ([...acked.keys()].every((id) => intact.has(id))) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  const lost = [...acked.keys()].filter((id) => !intact.has(id));
  console.log(`crash test: ${KILLS} kills, ${sent.count} messages sent, ${acked.size} acknowledged, ${intact.size} delivered intact (${copies - intact.size} duplicate or other copies), ${damaged.size} damaged, ${lost.length} lost`);
  assert.ok(acked.size > 100, `the load was too light to mean anything (${acked.size} acknowledged)`);
  assert.deepEqual(lost, [], 'acknowledged messages never reached the downstream intact');
});
