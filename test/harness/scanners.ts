// Real content scanners for the issue 12 tests: SpamAssassin's spamd and ClamAV's clamd, each on a
// free loopback port with its own temp dir (see PEERS.md, "Content filters"). spamd runs its
// children as nobody (--username); clamd drops to nobody (User) and reads a database dir holding
// only an EICAR signature, so no freshclam and no download. pause()/resume() stop and continue a
// daemon's whole process group (a scanner that accepts connections and never answers); stop()
// ends it for good and removes its dir.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { killGroup, spawnDaemon, supervise, type Spawned } from './processes.ts';
import { makeTempDir, probeFirstLine, sleep, withPortRetry, type Peer } from './peers.ts';

export interface ScannerPeer extends Peer {
  /** host:port, as filters.scanners' address takes it. */
  readonly address: string;
  /** Milliseconds from spawn to its first answer. */
  readonly startMs: number;
  /** SIGSTOP to its process group: connections are accepted by the kernel, nothing answers. */
  pause(): void;
  /** SIGCONT to its process group. */
  resume(): void;
  /** The daemon's output so far. */
  log(): string;
}

const NOBODY_UID = 65534;
const NOBODY_GID = 65534;

/** Waits for `probe` while the daemon lives (spamd compiles its rules first: ~10 s, more on a busy machine). */
async function waitAnswer(name: string, port: number, sp: Spawned, probe: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until && !sp.hasExited()) {
    if (await probe()) return;
    await sleep(100);
  }
  const why = sp.hasExited() ? `exited with ${sp.child.exitCode ?? sp.child.signalCode}` : `not ready after ${timeoutMs} ms`;
  throw new Error(`${name} on 127.0.0.1:${port} ${why}: ${sp.output().slice(-1500)}`);
}

function peer(name: string, port: number, sp: Spawned, started: number, stop: () => Promise<void>): ScannerPeer {
  return {
    name,
    port,
    pid: sp.pid,
    address: `127.0.0.1:${port}`,
    startMs: Date.now() - started,
    pause: () => killGroup(sp.pid, 'SIGSTOP'),
    resume: () => killGroup(sp.pid, 'SIGCONT'),
    log: () => sp.output(),
    async stop() {
      killGroup(sp.pid, 'SIGCONT'); // a paused daemon cannot act on SIGTERM
      await stop();
    },
  };
}

/** spamd (SpamAssassin 4) without network tests or user configs; ready when it answers PING. */
export async function startSpamd(opts: { readyTimeoutMs?: number } = {}): Promise<ScannerPeer> {
  return withPortRetry(async (port) => {
    const dir = await makeTempDir('spamd');
    const home = path.join(dir, 'home');
    await fsp.mkdir(home);
    await fsp.chown(home, NOBODY_UID, NOBODY_GID);
    const started = Date.now();
    const sp = spawnDaemon(
      'spamd',
      [
        `--listen=127.0.0.1:${port}`,
        '--allowed-ips=127.0.0.1',
        '--local',
        '--nouser-config',
        '--username=nobody',
        '--groupname=nogroup',
        '--max-children=2',
        `--helper-home-dir=${home}`,
        `--pidfile=${path.join(dir, 'spamd.pid')}`,
        '--syslog=stderr',
      ],
      { cwd: dir },
    );
    const stop = await supervise(sp, {
      ready: () =>
        waitAnswer('spamd', port, sp, () => probeFirstLine(port, (l) => /^SPAMD\/\S+ 0 PONG/.test(l), 'PING SPAMC/1.5\r\n\r\n', 2000), opts.readyTimeoutMs ?? 60_000),
      cleanup: () => fsp.rm(dir, { recursive: true, force: true }),
    });
    return peer('spamd', port, sp, started, stop);
  });
}

/** clamd with a database of one signature: the EICAR test file by its MD5 (Test.EICAR.Local). */
export async function startClamd(opts: { streamMaxLength?: string; readyTimeoutMs?: number } = {}): Promise<ScannerPeer> {
  return withPortRetry(async (port) => {
    const dir = await makeTempDir('clamd');
    const db = path.join(dir, 'db');
    const tmp = path.join(dir, 'tmp');
    await fsp.mkdir(db, { mode: 0o755 });
    await fsp.mkdir(tmp, { mode: 0o700 });
    await fsp.chown(tmp, NOBODY_UID, NOBODY_GID);
    // md5:size:name of the 68-octet EICAR file.
    await fsp.writeFile(path.join(db, 'eicar.hdb'), '44d88612fea8a8f36de82e1278abb02f:68:Test.EICAR.Local\n', { mode: 0o644 });
    const conf = path.join(dir, 'clamd.conf');
    await fsp.writeFile(
      conf,
      [
        'Foreground yes',
        `TCPSocket ${port}`,
        'TCPAddr 127.0.0.1',
        `DatabaseDirectory ${db}`,
        `TemporaryDirectory ${tmp}`,
        'User nobody',
        'LogTime no',
        'LogVerbose no',
        'SelfCheck 0',
        'Bytecode no',
        `StreamMaxLength ${opts.streamMaxLength ?? '25M'}`,
        'MaxThreads 4',
        '',
      ].join('\n'),
    );
    const started = Date.now();
    const sp = spawnDaemon('clamd', ['--config-file', conf], { cwd: dir });
    const stop = await supervise(sp, {
      ready: () => waitAnswer('clamd', port, sp, () => probeFirstLine(port, (l) => l.startsWith('PONG'), 'nPING\n', 1000), opts.readyTimeoutMs ?? 30_000),
      cleanup: () => fsp.rm(dir, { recursive: true, force: true }),
    });
    return peer('clamd', port, sp, started, stop);
  });
}
