// A full log disk must not stop the mail (issue 8, defect 5): mxguard (a real process) logs into
// a file on a tiny tmpfs that a filler file has filled up. Every message must still be answered
// 250 and delivered to a real smtp-sink; when space comes back, one warning line says how many
// log lines were dropped and logging goes on; with the disk full again, SIGTERM ends the process
// with its usual graceful stop. Needs root (it mounts the tmpfs); fails, never skips, without.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, startSmtpSink, waitUntil, type SmtpSinkPeer } from './harness/peers.ts';
import { startMxguard, type MxguardProcess } from './harness/mxguard-process.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { fill, mountTmpfs } from './harness/tmpfs.ts';
import { atEnd } from './harness/cleanups.ts';


interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

/** The log file's complete JSON lines (a line cut short by the full disk is skipped). */
function logLines(file: string): LogLine[] {
  const out: LogLine[] = [];
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    try {
      out.push(JSON.parse(line) as LogLine);
    } catch {
      // a partial line, or the empty string after the last newline
    }
  }
  return out;
}

/** Sends `count` messages over one connection; returns the Message-IDs answered with 250. */
async function send(port: number, tag: string, count: number): Promise<{ acked: string[]; replies: string[] }> {
  const acked: string[] = [];
  const replies: string[] = [];
  const c = await RawClient.connect(port);
  try {
    replies.push(await c.reply(5000));
    c.send('EHLO log.test\r\n');
    replies.push(await c.reply(5000));
    for (let i = 0; i < count; i++) {
      const id = `${tag}-${i}@log.test`;
      c.send('MAIL FROM:<sender@log.test>\r\nRCPT TO:<sink@example.test>\r\nDATA\r\n');
      const r = await c.replies(3, 5000);
      replies.push(...r);
      if (!(r[2] as string).startsWith('354')) continue;
      c.send(`Message-ID: <${id}>\r\nSubject: log disk full\r\n\r\n${'a line of text\r\n'.repeat(10)}.\r\n`);
      const final = await c.reply(10_000);
      replies.push(final);
      if (/^250 /.test(final)) acked.push(id);
    }
    c.send('QUIT\r\n');
    replies.push(await c.reply(5000));
  } finally {
    c.close();
  }
  return { acked, replies };
}

function deliveredIds(sink: SmtpSinkPeer): Set<string> {
  const ids = new Set<string>();
  for (const f of sink.files()) {
    for (const m of fs.readFileSync(f, 'latin1').matchAll(/^Message-ID: <([^>]+)>/gm)) ids.add(m[1] as string);
  }
  return ids;
}

async function assertDelivered(sink: SmtpSinkPeer, ids: readonly string[], what: string): Promise<void> {
  await waitUntil(() => {
    const got = deliveredIds(sink);
    return ids.every((id) => got.has(id));
  }, 30_000);
  const got = deliveredIds(sink);
  assert.deepEqual(
    ids.filter((id) => !got.has(id)),
    [],
    `${what}: acknowledged but not delivered`,
  );
}

test('log file on a full file system: mail keeps flowing, dropped lines are counted, SIGTERM stops the process', { timeout: 180_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-logfull-'));
  atEnd(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.chmodSync(dir, 0o755); // smtp-sink writes its dumps as nobody
  const logDir = path.join(dir, 'logfs');
  fs.mkdirSync(logDir);
  atEnd(mountTmpfs(logDir, '256k'));
  const logFile = path.join(logDir, 'mxguard.log');
  const filler = path.join(logDir, 'filler');

  const sink = await startSmtpSink({ dumpDir: path.join(dir, 'sink') });
  atEnd(() => sink.stop());
  const port = await freePort();
  const config = {
    hostname: 'mx.example.test',
    local_domains: ['example.test'],
    data_dir: path.join(dir, 'var'),
    deliver: `smtp://127.0.0.1:${sink.port}`,
    queue: { retry: ['500ms'] },
    log: { level: 'info', file: logFile },
  };
  const mx: MxguardProcess = await startMxguard(dir, config, port);
  // Pushed after the unmount, so it runs first: nothing may hold the tmpfs open then.
  atEnd(() => mx.crash());
  const processLog = () => fs.readFileSync(mx.logFile, 'utf8');
  let exitCode: number | null | undefined;
  void mx.exited.then((c) => (exitCode = c));
  const talk = async (tag: string, count: number) => {
    try {
      return await send(port, tag, count);
    } catch (err) {
      throw new Error(`${tag}: ${(err as Error).message}; mxguard ${exitCode === undefined ? 'still runs' : `exited (${exitCode})`}, its output:\n${processLog()}`, { cause: err });
    }
  };

  // 1. Healthy disk: mail flows and is logged.
  const before = await talk('before', 3);
  assert.equal(before.acked.length, 3, `healthy disk: ${JSON.stringify(before.replies)}`);
  await assertDelivered(sink, before.acked, 'healthy disk');
  assert.ok(await waitUntil(() => logLines(logFile).some((l) => l.msg === 'delivered'), 5000), 'the log file gets the delivery lines');

  // 2. Disk full: every message is still acknowledged and delivered; the process lives on.
  const filled = fill(filler);
  const sizeWhenFull = fs.statSync(logFile).size;
  const during: string[] = [];
  for (let round = 0; round < 4; round++) {
    const r = await talk(`full${round}`, 10);
    assert.equal(r.acked.length, 10, `disk full, connection ${round + 1}: every message gets 250; replies ${JSON.stringify(r.replies)}\nprocess output:\n${processLog()}`);
    during.push(...r.acked);
  }
  await assertDelivered(sink, during, 'disk full');
  assert.equal(exitCode, undefined, `mxguard died on a full log disk:\n${processLog()}`);
  assert.ok(fs.statSync(logFile).size - sizeWhenFull < 8192, 'the file system really was full');

  // 3. Space comes back: the next successful write is followed by one warning with the count.
  fs.rmSync(filler);
  const afterFree = await talk('after', 2);
  assert.equal(afterFree.acked.length, 2, `after space came back: ${JSON.stringify(afterFree.replies)}`);
  await assertDelivered(sink, afterFree.acked, 'after space came back');
  const warned = await waitUntil(() => logLines(logFile).some((l) => typeof l.dropped === 'number'), 5000);
  const lines = logLines(logFile);
  const warnings = lines.filter((l) => typeof l.dropped === 'number');
  assert.ok(warned && warnings.length === 1, `one warning line with the number of dropped lines; log:\n${fs.readFileSync(logFile, 'utf8').slice(-3000)}`);
  const warning = warnings[0] as LogLine;
  assert.equal(warning.level, 40, 'the warning is logged at level warn');
  const dropped = warning.dropped as number;
  // Each of the 40 messages logs at least "transaction" and "delivered", each connection "connect" and "disconnect".
  assert.ok(dropped >= 2 * during.length, `at least ${2 * during.length} lines were dropped, the warning says ${dropped}`);
  const idx = lines.indexOf(warning);
  assert.ok(
    lines.slice(idx + 1).some((l) => l.msg === 'delivered' || l.msg === 'disconnect' || l.msg === 'transaction'),
    `lines are logged after the warning:\n${fs.readFileSync(logFile, 'utf8').slice(-3000)}`,
  );

  // 4. Disk full again, mail in flight in the log: SIGTERM ends the process within its usual time.
  fill(filler);
  const last = await talk('last', 5);
  assert.equal(last.acked.length, 5, `disk full again: ${JSON.stringify(last.replies)}`);
  await assertDelivered(sink, last.acked, 'disk full again');
  const t0 = Date.now();
  mx.signal('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([mx.exited, new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), 10_000)))]);
  const stopMs = Date.now() - t0;
  clearTimeout(timer);
  assert.notEqual(code, 'hung', `SIGTERM did not stop mxguard within 10 s on a full log disk:\n${processLog()}`);
  assert.equal(code, 0, `graceful stop exits 0:\n${processLog()}`);
  assert.ok(stopMs < 5000, `the graceful stop took ${stopMs} ms`);
  console.log(
    `log disk full: filler ${filled} bytes; ${during.length} messages sent on a full disk, ${during.length} acknowledged and delivered; ` +
      `${dropped} log lines dropped (warning logged after space came back); SIGTERM on a full disk: exit ${code} after ${stopMs} ms`,
  );
});
