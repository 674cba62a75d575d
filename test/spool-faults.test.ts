// Faults on the path to a 250, injected at every file-system call of a transaction through the
// spool's own layer (src/queue/spool-fs.ts), against a whole mxguard in this process, spoken to
// over real SMTP: ENOSPC at the k-th call, a short write followed by a full disk, an fsync that
// fails. For each: what the client was told, and, after the faults are gone and mxguard has
// restarted, that every acknowledged message was delivered byte for byte. Damaged queue files
// and journal segments are tried the same way. (A real full file system: test/disk-full.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { prng } from './harness/prng.ts';
import { spoolFs } from '../src/queue/spool-fs.ts';
import { queueList } from '../src/cli/queue.ts';
import { listSegments, segmentPath } from '../src/queue/journal.ts';

type Mode = 'enospc' | 'short-then-full' | 'sync-eio';
type Call = keyof typeof spoolFs;

const WRITES = new Set<Call>(['writev', 'writevSync']);
const SYNCS = new Set<Call>(['fdatasync', 'fsync']);

/** Wraps every spoolFs call; `arm(k, mode)` makes the k-th call from now fail as `mode` says. */
class FaultInjector {
  private readonly real = { ...spoolFs };
  private countdown = 0;
  private mode: Mode | undefined;
  /** Writes fail from now on (a full disk) until disarm(). */
  private full = false;
  fired = false;

  constructor() {
    for (const name of Object.keys(this.real) as Call[]) {
      const real = this.real[name] as (...args: unknown[]) => unknown;
      (spoolFs as Record<Call, unknown>)[name] = (...args: unknown[]) => this.call(name, real, args);
    }
  }

  arm(k: number, mode: Mode): void {
    this.countdown = k;
    this.mode = mode;
    this.full = false;
    this.fired = false;
  }

  disarm(): void {
    this.mode = undefined;
    this.full = false;
  }

  restore(): void {
    Object.assign(spoolFs, this.real);
  }

  private call(name: Call, real: (...args: unknown[]) => unknown, args: unknown[]): unknown {
    const mode = this.mode;
    if (mode !== undefined && this.full && WRITES.has(name)) return fail(name, 'ENOSPC');
    const counts = mode !== undefined && (mode !== 'sync-eio' || SYNCS.has(name));
    if (!counts || --this.countdown !== 0) return real(...args);
    this.fired = true;
    if (mode === 'sync-eio') return fail(name, 'EIO');
    if (mode === 'enospc') return fail(name, 'ENOSPC');
    // short-then-full: a write gets half its octets on disk and a short count, as Node reports
    // a partial write on a full file system; every later write fails.
    this.full = true;
    if (!WRITES.has(name)) return fail(name, 'ENOSPC');
    const [fd, bufs, position] = args as [number, Buffer[], number | null | undefined];
    const all = Buffer.concat(bufs);
    const half = all.subarray(0, Math.max(1, Math.floor(all.length / 2)));
    const n = name === 'writevSync' ? fs.writeSync(fd, half, 0, half.length, position ?? null) : fs.writeSync(fd, half);
    return name === 'writev' ? Promise.resolve(n) : n;
  }
}

function fail(name: Call, code: string): unknown {
  const err: NodeJS.ErrnoException = new Error(`${code}: injected fault in ${name}`);
  err.code = code;
  if (name === 'writev' || SYNCS.has(name)) return Promise.reject(err);
  throw err;
}

/** A message with a unique Message-ID first, so the delivered copy can be cut at the same place. */
function message(rand: () => number, n: number, size: number): { id: string; text: Buffer } {
  const id = `<fault-${n}-${Math.floor(rand() * 1e9)}@faults.test>`;
  const lines = [`Message-ID: ${id}`, `Subject: fault ${n}`, ''];
  let len = 0;
  while (len < size) {
    const line = (rand() < 0.05 ? '.' : '') + 'x'.repeat(Math.floor(rand() * 200)) + String(n);
    lines.push(line);
    len += line.length + 2;
  }
  return { id, text: Buffer.from(lines.join('\r\n') + '\r\n', 'latin1') };
}

function sha(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

/** Sends one message over a fresh connection; returns the final reply. */
async function send(port: number, text: Buffer): Promise<string> {
  const c = await RawClient.connect(port);
  try {
    await c.reply();
    c.send('EHLO faults.test\r\nMAIL FROM:<sender@faults.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n');
    const r = await c.replies(4);
    assert.match(r[3] as string, /^354/);
    const stuffed = Buffer.from(text.toString('latin1').replace(/^\./gm, '..'), 'latin1');
    c.send(Buffer.concat([stuffed, Buffer.from('.\r\n')]));
    const final = await c.reply(10_000);
    c.send('QUIT\r\n');
    return final;
  } finally {
    c.close();
  }
}

/** Delivered messages by Message-ID: the octets from "Message-ID:" on, each copy. */
function delivered(dir: string): Map<string, Buffer[]> {
  const out = new Map<string, Buffer[]>();
  const box = path.join(dir, 'maildir', 'rcpt', 'new');
  for (const f of fs.existsSync(box) ? fs.readdirSync(box) : []) {
    const data = fs.readFileSync(path.join(box, f));
    const at = data.indexOf('Message-ID: <');
    const id = data.toString('latin1', at + 12, data.indexOf('\r\n', at));
    out.set(id, [...(out.get(id) ?? []), data.subarray(at)]);
  }
  return out;
}

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
}

test('a fault at every file-system call of a transaction: never a 250 for a message not safely spooled, and every 250 is delivered intact after a restart', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-faults-'));
  const overrides = { data_dir: dir, deliver: `maildir:${path.join(dir, 'maildir')}`, limits: { max_message_size: 4 * 1024 * 1024 } };
  const faults = new FaultInjector();
  const rand = prng(11);
  const acked = new Map<string, string>(); // Message-ID → sha256 of what was sent
  const replies = new Map<string, number>();
  let app: TestApp | undefined = await startTestApp(overrides);
  let n = 0;
  try {
    // The journal path (small), the queue-file path (large: past the 256 KiB in-memory limit).
    for (const size of [2_000, 600_000]) {
      for (const mode of ['enospc', 'short-then-full', 'sync-eio'] as const) {
        for (let k = 1; ; k++) {
          const msg = message(rand, n++, size);
          faults.arm(k, mode);
          const reply = await send(app.port, msg.text);
          const fired = faults.fired;
          faults.disarm();
          const code = reply.slice(0, 9);
          replies.set(`${mode} ${code}`, (replies.get(`${mode} ${code}`) ?? 0) + 1);
          if (reply.startsWith('250 ')) acked.set(msg.id, sha(msg.text));
          else if (mode === 'sync-eio') assert.match(reply, /^451 4\.3\.0 /, `${mode} at call ${k} (${size} octets)`);
          else assert.match(reply, /^452 4\.3\.1 Insufficient system storage/, `${mode} at call ${k} (${size} octets)`);
          if (!fired) break; // past the transaction's last call
          assert.ok(k < 50, 'the transaction should take a handful of calls');
        }
      }
    }
    await app.app.stop(5000);
    // A restart: whatever is still in the journal or the queue is delivered now.
    app = await startTestApp(overrides);
    await until(() => [...acked.keys()].every((id) => delivered(dir).has(id)), 20_000);
    const got = delivered(dir);
    for (const [id, hash] of acked) {
      const copies = got.get(id) ?? [];
      assert.ok(copies.length >= 1, `acknowledged ${id} was not delivered`);
      for (const c of copies) assert.equal(sha(c), hash, `${id} was damaged`);
    }
    const failed = [...replies].filter(([k]) => !k.includes('250')).reduce((a, [, v]) => a + v, 0);
    assert.ok(failed >= 10, `the faults were felt (${JSON.stringify([...replies])})`);
    assert.ok(acked.size >= 6, `and some messages got through (${acked.size})`);
  } finally {
    faults.restore();
    await app?.app.stop(2000);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

/** Writes a valid message into the queue through a running app, then stops it. Returns the queue file. */
async function queuedFile(dir: string, text: Buffer): Promise<string> {
  // An unreachable downstream keeps the message queued (moved out of the journal into a queue file).
  const app = await startTestApp({ data_dir: dir, deliver: 'smtp://127.0.0.1:9', queue: { retry: ['1h'] } });
  try {
    assert.match(await send(app.port, text), /^250 /);
    await until(() => fs.readdirSync(path.join(dir, 'spool', 'queue')).some((f) => f.endsWith('.state')), 10_000);
  } finally {
    await app.app.stop(2000);
  }
  const file = fs.readdirSync(path.join(dir, 'spool', 'queue')).find((f) => /^[0-9A-Z]{14}$/.test(f));
  assert.ok(file, 'a queue file');
  fs.rmSync(path.join(dir, 'spool', 'queue', file + '.state')); // due now, not in an hour
  return path.join(dir, 'spool', 'queue', file);
}

test('damaged queue files are set aside in spool/corrupt with an error line and shown by `mxguard queue list`; intact ones are delivered', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-damaged-'));
  const rand = prng(5);
  try {
    const damages: Record<string, (b: Buffer) => Buffer> = {
      'truncated trailer': (b) => b.subarray(0, b.length - 7),
      'over-long trailer': (b) => Buffer.concat([b, Buffer.from('garbage\n')]),
      'flipped trailer digit': (b) => flip(b, b.length - 20),
      'unreadable envelope': (b) => flip(b, b.lastIndexOf('"mailFrom"') + 3),
      'flipped message octet': (b) => flip(b, 100),
    };
    const good = message(rand, 0, 3000);
    const goodFile = await queuedFile(dir, good.text);
    const goodCopy = fs.readFileSync(goodFile);
    const names = new Map<string, string>(); // queue ID → kind of damage
    for (const [kind, damage] of Object.entries(damages)) {
      const id = path.basename(goodFile).slice(0, 10) + String(names.size).padStart(4, '0');
      // The same message under another ID (the envelope names its ID, so rewrite it), then damaged.
      const text = goodCopy.toString('latin1').replace(`"id":"${path.basename(goodFile)}"`, `"id":"${id}"`);
      fs.writeFileSync(path.join(dir, 'spool', 'queue', id), damage(Buffer.from(text, 'latin1')));
      names.set(id, kind);
    }
    const app = await startTestApp({ data_dir: dir, deliver: `maildir:${path.join(dir, 'maildir')}` });
    try {
      await until(() => delivered(dir).has(good.id) && fs.readdirSync(path.join(dir, 'spool', 'corrupt')).length >= names.size, 10_000);
      assert.equal(sha((delivered(dir).get(good.id) ?? [])[0] as Buffer), sha(good.text), 'the intact message is delivered');
      const corrupt = fs.readdirSync(path.join(dir, 'spool', 'corrupt'));
      for (const [id, kind] of names) {
        assert.ok(corrupt.includes(id), `${kind}: ${id} is in spool/corrupt (${corrupt.join(', ')})`);
        assert.ok(app.logs().some((l) => l.level === 50 && l.id === id), `${kind}: an error line names ${id}`);
      }
      assert.equal((delivered(dir).get(good.id) ?? []).length, 1, 'nothing damaged was delivered: one copy only');
      const listing = await queueList(app.config);
      for (const id of names.keys()) assert.ok(listing.includes(id), `queue list shows ${id}:\n${listing}`);
    } finally {
      await app.app.stop(2000);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function flip(b: Buffer, at: number): Buffer {
  const c = Buffer.from(b);
  c[at] = (c[at] as number) ^ 0x04;
  return c;
}

test('a journal with a damaged record in the middle: after a crash, every other acknowledged message is delivered and the segment is kept', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-journal-'));
  const rand = prng(6);
  try {
    const sent: Array<{ id: string; text: Buffer }> = [];
    // A downstream that accepts the connection and never answers: the first delivery attempts
    // hang, so every record stays in the journal, not done, as a crash would leave them.
    const silent = net.createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const app = await startTestApp({ data_dir: dir, deliver: `smtp://127.0.0.1:${(silent.address() as net.AddressInfo).port}` });
    const journalDir = path.join(dir, 'spool', 'journal');
    const crashed = path.join(dir, 'crashed-journal');
    try {
      const c = await RawClient.connect(app.port);
      await c.reply();
      c.send('EHLO faults.test\r\n');
      await c.reply();
      for (let i = 0; i < 11; i++) {
        const m = message(rand, i, 1500);
        c.send('MAIL FROM:<s@faults.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n');
        await c.replies(3);
        c.send(Buffer.concat([Buffer.from(m.text.toString('latin1').replace(/^\./gm, '..'), 'latin1'), Buffer.from('.\r\n')]));
        assert.match(await c.reply(), /^250 /);
        sent.push(m);
      }
      c.close();
      // The crash, right after the last 250: the spool as it is now.
      assert.deepEqual(fs.readdirSync(path.join(dir, 'spool', 'queue')), [], 'all in the journal');
      fs.cpSync(journalDir, crashed, { recursive: true });
    } finally {
      await app.app.stop(500);
      silent.close();
    }
    fs.rmSync(path.join(dir, 'spool'), { recursive: true });
    fs.cpSync(crashed, journalDir, { recursive: true });
    // Then one flipped octet in the first record's header.
    const [seq] = listSegments(journalDir);
    const file = segmentPath(journalDir, seq as number, 'log');
    const data = fs.readFileSync(file);
    const first = data.indexOf('MXR2 ');
    data[first + 40] = (data[first + 40] as number) ^ 0x10;
    fs.writeFileSync(file, data);

    const again = await startTestApp({ data_dir: dir, deliver: `maildir:${path.join(dir, 'maildir')}` });
    try {
      await until(() => delivered(dir).size >= 10, 10_000);
      const got = delivered(dir);
      assert.equal(got.size, 10, 'the ten records behind the damaged one are delivered');
      for (const m of sent.slice(1)) assert.equal(sha((got.get(m.id) ?? [])[0] ?? Buffer.alloc(0)), sha(m.text), m.id);
      const corrupt = fs.readdirSync(path.join(dir, 'spool', 'corrupt'));
      assert.equal(corrupt.length, 1, 'the damaged segment is kept');
      assert.ok(fs.readFileSync(path.join(dir, 'spool', 'corrupt', corrupt[0] as string)).equals(data));
      const err = again.logs().find((l) => l.level === 50 && l.offset === first);
      assert.ok(err, 'an error line gives the byte offset');
    } finally {
      await again.app.stop(2000);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
