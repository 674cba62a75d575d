// Real smtp-sinks on loopback addresses other than 127.0.0.1 (127.0.0.2, 127.0.0.3 …), all on
// one port: MX hosts for delivery by MX, whose port is one setting (queue.mx_port).
// startSmtpSink (peers.ts) binds 127.0.0.1 only.
import type { TestContext } from 'node:test';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { freePort, makeTempDir, parseSinkDump, waitReady, type SinkDump } from './peers.ts';
import { spawnDaemon, supervise } from './processes.ts';

/** Whether a TCP listener can bind host:port right now. */
function canListen(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

/** A port free on every one of `hosts` (MX hosts share one port: queue.mx_port). */
export async function sharedPort(hosts: readonly string[]): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const port = await freePort();
    let ok = true;
    for (const host of hosts) if (!(await canListen(host, port))) ok = false;
    if (ok) return port;
  }
  throw new Error('no port free on all test loopback addresses');
}

/** A 220 banner on host:port. */
function bannerAt(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 1000);
    sock.setEncoding('latin1');
    sock.on('error', () => done(false));
    sock.on('data', (d: string) => done(d.startsWith('220') || d.startsWith('421')));
  });
}

export interface Sink {
  /** Dump files, one per mail transaction (the newest may still be being written). */
  files(): string[];
  /** The transactions whose dump smtp-sink has written far enough to read (envelope and Received line). */
  dumps(): SinkDump[];
  /** The RCPT TO arguments of every transaction received. */
  rcpts(): string[];
  stop(): Promise<void>;
}

/**
 * A real smtp-sink on host:port, dumping each transaction (as startSmtpSink does, but on any
 * loopback address); stopped when the test ends.
 */
export async function sinkAt(t: TestContext, host: string, port: number, extraArgs: readonly string[] = []): Promise<Sink> {
  const dumpDir = await makeTempDir('mx-sink');
  await fsp.chown(dumpDir, 65534, 65534); // smtp-sink writes as nobody
  const sp = spawnDaemon('smtp-sink', ['-u', 'nobody', '-c', '-d', `${dumpDir}/%Y%m%d%H%M%S.`, ...extraArgs, `${host}:${port}`, '128']);
  const stop = await supervise(sp, {
    ready: () => waitReady(`smtp-sink ${host}`, port, sp, () => '', () => bannerAt(host, port)),
    cleanup: () => fsp.rm(dumpDir, { recursive: true, force: true }),
  });
  t.after(stop);
  const files = (): string[] => (fs.existsSync(dumpDir) ? fs.readdirSync(dumpDir).map((n) => path.join(dumpDir, n)).sort() : []);
  // smtp-sink writes a dump as the transaction goes: one without its Received line yet is not read.
  const dumps = (): SinkDump[] =>
    files().flatMap((f) => {
      try {
        return [parseSinkDump(f)];
      } catch {
        return [];
      }
    });
  return { files, dumps, rcpts: () => dumps().flatMap((d) => d.rcptArgs), stop };
}

