// The log destination drops and counts what it cannot write, never throws into the caller, never
// keeps the process from exiting, and says how much it dropped once writing works again. Real
// failures only: /dev/full (every write fails with ENOSPC) and a tiny tmpfs filled to the brim
// (needs root to mount it; the test fails, never skips, without).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createLogger, logDropped, openLog, type Logger } from './log.ts';

const LOG_TS = path.join(import.meta.dirname, 'log.ts');
const cleanups: Array<() => void> = [];
after(() => {
  for (const c of cleanups.reverse()) c();
});

const flushed = (log: Logger): Promise<void> => new Promise((resolve) => log.flush(() => resolve()));

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-log-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function mountTmpfs(size: string): string {
  const uid = process.getuid?.();
  if (uid !== 0) throw new Error(`this test mounts a tmpfs to fill it up and must run as root (uid 0); it runs as uid ${uid}`);
  const dir = path.join(tempDir(), 'fs');
  fs.mkdirSync(dir);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cannot mount a tmpfs on ${dir} (mount exit ${r.status}): ${r.stderr || r.error?.message}`);
  cleanups.push(() => {
    if (spawnSync('umount', [dir]).status !== 0) spawnSync('umount', ['-l', dir]);
  });
  return dir;
}

/** Fills the file system holding `file` to the last byte. */
function fill(file: string): void {
  const fd = fs.openSync(file, 'a');
  try {
    for (const size of [65536, 4096, 64, 1]) {
      const chunk = Buffer.alloc(size, 0x78);
      for (;;) {
        try {
          fs.writeSync(fd, chunk);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
          break;
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Runs `code` (an ES module that may import LOG_TS) in a fresh Node; kills it after `timeoutMs`. */
function runChild(code: string, timeoutMs: number): Promise<{ code: number | null; signal: string | null; ms: number; stderr: string }> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (exit, signal) => {
      clearTimeout(timer);
      resolve({ code: exit, signal, ms: Date.now() - t0, stderr });
    });
  });
}

test('async logger on /dev/full: nothing thrown, every line counted as dropped', async () => {
  const errors: unknown[] = [];
  const onUncaught = (err: unknown) => errors.push(err);
  process.on('uncaughtException', onUncaught);
  try {
    const log = createLogger('info', '/dev/full');
    const before = logDropped();
    for (let i = 0; i < 500; i++) log.info({ i }, 'a line that cannot be written');
    await flushed(log);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(logDropped() - before, 500);
    assert.deepEqual(errors, []);
  } finally {
    process.off('uncaughtException', onUncaught);
  }
});

test('sync logger on /dev/full: log calls do not throw, every line counted as dropped', () => {
  const log = createLogger('info', '/dev/full', { sync: true });
  const before = logDropped();
  for (let i = 0; i < 50; i++) log.info({ i }, 'a line that cannot be written');
  assert.equal(logDropped() - before, 50);
});

test('a process logging to /dev/full exits at once on process.exit (the exit flush does not retry for ever)', async () => {
  const r = await runChild(
    `import { createLogger } from ${JSON.stringify(LOG_TS)};
     const log = createLogger('info', '/dev/full');
     log.info('first line');
     setTimeout(() => {
       for (let i = 0; i < 1000; i++) log.info({ i }, 'line');
       log.flush();
       process.exit(0);
     }, 200);`,
    10_000,
  );
  assert.equal(r.signal, null, `the process hung on exit and was killed after ${r.ms} ms`);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.ms < 5000, `exit took ${r.ms} ms`);
});

test('a process logging to a healthy file writes its last lines before it exits', async () => {
  const file = path.join(tempDir(), 'sub', 'exit.log');
  const r = await runChild(
    `import { createLogger } from ${JSON.stringify(LOG_TS)};
     const log = createLogger('info', ${JSON.stringify(file)});
     for (let i = 0; i < 2000; i++) log.info({ i }, 'line');
     process.exit(0);`,
    10_000,
  );
  assert.equal(r.code, 0, r.stderr);
  const lines = fs.readFileSync(file, 'utf8').trimEnd().split('\n');
  assert.equal(lines.length, 2000);
  assert.equal((JSON.parse(lines[1999] as string) as { i: number }).i, 1999);
});

for (const sync of [false, true]) {
  test(`${sync ? 'sync' : 'async'} logger on a full tmpfs: lines dropped and counted, one warning with the count once space is back, no line glued to a cut one`, async () => {
    const dir = mountTmpfs('64k');
    const file = path.join(dir, 'mxguard.log');
    const filler = path.join(dir, 'filler');
    fs.writeFileSync(filler, Buffer.alloc(40 * 1024, 0x78));
    const log = createLogger('info', file, { sync });
    const pad = 'p'.repeat(700); // long lines, so the first failure cuts one in the middle
    const before = logDropped();
    let i = 0;
    while (logDropped() === before && i < 200) {
      log.info({ i: i++, pad }, 'filling');
      await flushed(log);
    }
    assert.ok(logDropped() > before, 'the file system never filled up');
    fill(filler);
    for (let k = 0; k < 20; k++) log.info({ i: i++, pad }, 'disk full');
    await flushed(log);
    const dropped = logDropped() - before;
    assert.ok(dropped >= 20, `${dropped} lines counted as dropped`);
    const text = fs.readFileSync(file, 'utf8');
    assert.ok(!text.endsWith('\n'), 'the first failed write cut a line (the case under test)');

    fs.rmSync(filler);
    log.info({ i }, 'space is back');
    await flushed(log);
    await flushed(log);
    const lines = fs.readFileSync(file, 'utf8').split('\n');
    assert.equal(lines.pop(), '', 'the file ends with a whole line');
    const parsed = lines.map((l) => {
      try {
        return JSON.parse(l) as { level: number; msg: string; dropped?: number; error?: string };
      } catch {
        return undefined;
      }
    });
    assert.equal(parsed.filter((p) => p === undefined).length, 1, 'only the cut line is broken');
    assert.equal(parsed.indexOf(undefined), lines.length - 3, 'the cut line sits on a line of its own, before the two new lines');
    assert.equal(parsed.at(-2)?.msg, 'space is back');
    const warning = parsed.at(-1);
    assert.equal(warning?.level, 40);
    assert.equal(warning?.dropped, dropped, 'the warning gives the number dropped');
    assert.equal(warning?.error, 'ENOSPC');
    assert.match(warning?.msg ?? '', new RegExp(`${dropped} log lines dropped`));
  });
}

test('reopen (logrotate): lines before the move stay in the moved file, lines after go to the new one; none lost, none cut; the old descriptor is closed', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'mxguard.log');
  const out = openLog({ level: 'info', file, format: 'json' });
  const oldFd = out.destination.fd;
  for (let i = 0; i < 3000; i++) out.log.info({ i }, 'before');
  // Moved while writes are still in flight; what was logged but not yet written goes to the new file.
  fs.renameSync(file, `${file}.1`);
  out.reopen();
  assert.notEqual(out.destination.fd, oldFd);
  for (let i = 3000; i < 6000; i++) out.log.info({ i }, 'after');
  await flushed(out.log);
  await flushed(out.log);
  const read = (f: string) =>
    fs
      .readFileSync(f, 'utf8')
      .trimEnd()
      .split('\n')
      .map((l) => (JSON.parse(l) as { i: number; msg: string }));
  const moved = read(`${file}.1`);
  const fresh = read(file);
  assert.deepEqual([...moved, ...fresh].map((l) => l.i), Array.from({ length: 6000 }, (_, i) => i), 'every line once, in order');
  assert.ok(fresh.every((l) => l.i >= moved.length) && !fresh.some((l) => l.msg === 'before' && l.i < moved.length));
  assert.ok(moved.every((l) => l.msg === 'before'), 'nothing logged after the reopen went to the moved file');
  assert.throws(() => fs.fstatSync(oldFd), { code: 'EBADF' }, 'the moved file is closed once its last write ended');
});

test('a reopen that fails keeps the old file and says so there; apply() changes level, format and file', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'a.log');
  const out = openLog({ level: 'info', file, format: 'json' });
  fs.writeFileSync(path.join(dir, 'plain-file'), '');
  out.apply({ level: 'info', file: path.join(dir, 'plain-file', 'b.log'), format: 'json' });
  out.log.info('still here');
  await flushed(out.log);
  const lines = fs
    .readFileSync(file, 'utf8')
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as { level: number; msg: string; kept?: string });
  assert.equal(lines[0]?.level, 50);
  assert.match(lines[0]?.msg ?? '', /cannot open the log file/);
  assert.equal(lines[0]?.kept, file);
  assert.equal(lines[1]?.msg, 'still here');
  assert.equal(out.destination.file, file);

  const child = out.log.child({ sid: 's1', ip: '192.0.2.1' });
  const next = path.join(dir, 'sub', 'c.log');
  out.apply({ level: 'debug', file: next, format: 'text' });
  child.debug({ helo: 'x\r\ny' }, 'debug from a child made before the change');
  await flushed(out.log);
  const text = fs.readFileSync(next, 'utf8');
  assert.match(text, /mxguard\[\d+\]: logging to a new file file=\S+c\.log\n/);
  assert.match(text, /: sid=s1 debug: debug from a child made before the change ip=192\.0\.2\.1 helo="x\\r\\ny"\n$/);
  assert.equal(fs.readFileSync(file, 'utf8').split('\n').length, 3, 'the old file has nothing new');
});

test('text format on /dev/full: a queued transaction counts as the lines it would have been', () => {
  const out = openLog({ level: 'info', file: '/dev/full', format: 'text' }, { sync: true });
  const before = logDropped();
  out.log.info({ sid: 's', id: 'MX67AUIL01PBCY', checks: 'a:continue,b:accept', outcome: 'accepted', msgid: '<m@x>' }, 'transaction');
  assert.equal(logDropped() - before, 3, 'client, check b, queued');
});
