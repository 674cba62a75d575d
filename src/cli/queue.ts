// `mxguard queue list|show|flush|delete`: works on the spool files directly, then tells a
// running mxguard (by the PID file in data_dir) to rescan with SIGUSR1.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Config } from '../config/schema.ts';
import { listCorrupt, listQueue, readQueueFile, Spool, writeStateFile, type QueuedMessage, type SpoolPaths } from '../queue/spool.ts';
import { signalDaemon } from '../queue/daemon-signal.ts';
import { listSegments, markDoneExternally, readSegment, segmentPath, type JournalRecord } from '../queue/journal.ts';

function spoolPaths(config: Config): SpoolPaths {
  return Spool.at(path.join(config.data_dir, 'spool'));
}

async function signalServer(config: Config): Promise<string> {
  const pid = await signalDaemon(config.data_dir, 'SIGUSR1');
  return pid === undefined ? 'no running mxguard found; it will pick this up when it starts' : `told mxguard (pid ${pid})`;
}

/** Messages still in the journal (on their first delivery attempt). */
function journalRecords(paths: SpoolPaths): JournalRecord[] {
  return listSegments(paths.journal).flatMap((seq) => {
    try {
      return readSegment(paths.journal, seq);
    } catch {
      return []; // removed while we looked
    }
  });
}

/** Every queued message's ID with a way to read it: queue files and journal records. */
async function allMessages(paths: SpoolPaths): Promise<Array<{ id: string; read: () => Promise<QueuedMessage>; record?: JournalRecord }>> {
  const files = (await listQueue(paths)).map((id) => ({ id, read: () => readQueueFile(paths, id) }));
  const journaled = journalRecords(paths).map((record) => ({
    id: record.envelope.id,
    record,
    read: async (): Promise<QueuedMessage> => ({ envelope: record.envelope, size: record.ref.size, crc: record.ref.crc }),
  }));
  return [...files, ...journaled].sort((a, b) => (a.id < b.id ? -1 : 1));
}

export async function queueList(config: Config): Promise<string> {
  const paths = spoolPaths(config);
  const messages = await allMessages(paths);
  const ids = messages.map((m) => m.id);
  const lines = [`${'ID'.padEnd(14)}  ${'Size'.padStart(8)}  ${'Arrived'.padEnd(20)}  Tries  Sender → recipients`];
  let total = 0;
  for (const { id, read } of messages) {
    try {
      const q = await read();
      total += q.size;
      const rcpts = q.state?.rcpts ?? q.envelope.rcpts;
      const arrived = new Date(q.envelope.receivedAt).toISOString().slice(0, 19).replace('T', ' ');
      lines.push(`${id}  ${String(q.size).padStart(8)}  ${arrived.padEnd(20)}  ${String(q.state?.attempts ?? 0).padStart(5)}  <${q.envelope.mailFrom}> → ${rcpts.join(', ')}`);
      if (q.state?.lastError) lines.push(`${''.padEnd(16)}(${q.state.lastError}; next try ${new Date(q.state.nextAt).toISOString()})`);
    } catch (err) {
      lines.push(`${id}  unreadable: ${(err as Error).message}`);
    }
  }
  lines.push(`-- ${ids.length} message${ids.length === 1 ? '' : 's'}, ${total} octets`);
  const corrupt = await listCorrupt(paths);
  if (corrupt.length > 0) {
    lines.push('', `Damaged spool files set aside in ${paths.corrupt} (not delivered; see the error lines in the log):`);
    for (const name of corrupt) lines.push(`  ${name}`);
  }
  return lines.join('\n');
}

export async function queueShow(config: Config, id: string): Promise<string> {
  const paths = spoolPaths(config);
  const found = (await allMessages(paths)).find((m) => m.id === id);
  if (!found) throw new Error(`${id}: no such message in the queue`);
  const q = await found.read();
  const file = found.record ? segmentPath(paths.journal, found.record.ref.seq, 'log') : path.join(paths.queue, id);
  const start = found.record?.ref.offset ?? 0;
  const fh = await fsp.open(file, 'r');
  try {
    const head = Buffer.alloc(Math.min(q.size, 64 * 1024));
    await fh.read(head, 0, head.length, start);
    const text = head.toString('utf8');
    const end = text.indexOf('\r\n\r\n');
    return [
      `envelope: ${JSON.stringify(q.envelope, null, 2)}`,
      `delivery: ${q.state ? JSON.stringify(q.state, null, 2) : 'not tried yet'}`,
      `size: ${q.size}`,
      '',
      (end === -1 ? text : text.slice(0, end)).replace(/\r\n/g, '\n'),
    ].join('\n');
  } finally {
    await fh.close();
  }
}

export async function queueFlush(config: Config): Promise<string> {
  const paths = spoolPaths(config);
  const ids = await listQueue(paths);
  for (const id of ids) {
    const q = await readQueueFile(paths, id).catch(() => undefined);
    if (!q) continue;
    const state = q.state ?? { attempts: 0, nextAt: 0, rcpts: [...q.envelope.rcpts] };
    await writeStateFile(paths, id, { ...state, nextAt: 0 });
  }
  return `${ids.length} message${ids.length === 1 ? '' : 's'} due now; ${await signalServer(config)}`;
}

export async function queueDelete(config: Config, id: string): Promise<string> {
  const paths = spoolPaths(config);
  const found = (await allMessages(paths)).find((m) => m.id === id);
  if (!found) throw new Error(`${id}: no such message in the queue`);
  if (found.record) {
    markDoneExternally(paths.journal, found.record.ref.seq, id);
    return `${id} deleted; ${await signalServer(config)}`;
  }
  await fsp.rm(path.join(paths.queue, id), { force: true });
  await fsp.rm(path.join(paths.queue, id + '.state'), { force: true });
  return `${id} deleted; ${await signalServer(config)}`;
}
