// The launchers `mxguard stdio` runs under, for real: ucspi-tcp's tcpserver (with a tcprules
// CDB, seed 002) and systemd-socket-activate in inetd mode (systemd's Accept=yes). Each accepts
// on 127.0.0.1 and starts one `mxguard stdio` per connection; supervised like every other peer
// (processes.ts), so a failing test leaves none behind.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { makeTempDir, probeBanner, waitReady, waitUntil, withPortRetry } from './peers.ts';
import { spawnDaemon, supervise } from './processes.ts';

export interface LauncherPeer {
  readonly name: string;
  readonly port: number;
  readonly pid: number;
  /** The launcher's output, with the stderr of every program it ran (mxguard stdio logs there). */
  log(): string;
  stop(): Promise<void>;
}

/**
 * `tcpserver -1 -v -H -R -l 0 -x rules.cdb 127.0.0.1 0 COMMAND…` with `rules` compiled by
 * tcprules. -1 prints the port it bound (port 0: the kernel picks a free one); -H and -R skip
 * the reverse-DNS and IDENT lookups, so TCPREMOTEHOST stays unset and `=` rules never match,
 * as for a client without reverse DNS under tcpserver -p.
 */
export async function startTcpserver(rules: readonly string[], command: readonly string[]): Promise<LauncherPeer> {
  const dir = await makeTempDir('tcpserver');
  const cdb = path.join(dir, 'rules.cdb');
  await new Promise<void>((resolve, reject) => {
    const child = execFile('tcprules', [cdb, path.join(dir, 'rules.tmp')], (err) => (err ? reject(err) : resolve()));
    child.stdin?.end(rules.join('\n') + '\n');
  });
  const sp = spawnDaemon('tcpserver', ['-1', '-v', '-H', '-R', '-l', '0', '-x', cdb, '127.0.0.1', '0', ...command], { cwd: dir });
  let port = 0;
  const stop = await supervise(sp, {
    ready: async () => {
      const bound = await waitUntil(() => /^\d+$/m.test(sp.output()) || sp.hasExited(), 10_000);
      const m = /^(\d+)$/m.exec(sp.output());
      if (!bound || !m) throw new Error(`tcpserver did not start: ${sp.output()}`);
      port = Number(m[1]);
    },
    cleanup: () => fsp.rm(dir, { recursive: true, force: true }),
  });
  return { name: 'tcpserver', port, pid: sp.pid, log: () => sp.output(), stop };
}

/** `systemd-socket-activate -l 127.0.0.1:PORT -a --inetd [-E VAR=VALUE…] COMMAND…`. */
export function startSocketActivate(env: Readonly<Record<string, string>>, command: readonly string[]): Promise<LauncherPeer> {
  return withPortRetry(async (port) => {
    const envArgs = Object.entries(env).flatMap(([k, v]) => ['-E', `${k}=${v}`]);
    const sp = spawnDaemon('systemd-socket-activate', ['-l', `127.0.0.1:${port}`, '-a', '--inetd', ...envArgs, ...command]);
    // Ready once it listens; the probe's connection starts one mxguard (a second or so), whose banner proves it.
    const stop = await supervise(sp, { ready: () => waitReady('systemd-socket-activate', port, sp, () => '', (p) => probeBanner(p, 10_000)) });
    return { name: 'systemd-socket-activate', port, pid: sp.pid, log: () => sp.output(), stop };
  });
}
