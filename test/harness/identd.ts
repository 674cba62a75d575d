// A real RFC 1413 identd for the IDENT client's tests: oidentd (Debian package, 2.5) in the
// foreground on 127.0.0.1 and a free port, with a private config, started and stopped through
// processes.ts like the other peers (peers.ts), so a failed or crashed test leaves nothing behind.
//
// The command line: `oidentd -i -S -a 127.0.0.1 -p PORT -C DIR/oidentd.conf -u 65534 -g 65534`:
// -i stays in the foreground (our child, stopped by PID), -S logs to stderr (captured, shown
// when it fails to come up), -a/-p bind the loopback port, -C the private config, -u/-g drop to
// nobody/nogroup after binding (its fallback anyway; Linux lookups need no root: oidentd reads
// the owner's UID from netlink / /proc/net/tcp). The private config denies every capability to
// every user, so no user config (~/.config/oidentd.conf) and no system config
// (/etc/oidentd.conf suggests `force hide` for root) can hide, randomise or spoof: oidentd
// answers with the real name of the socket's owner — root's connections as "root" — and
// "ERROR : NO-USER" for a port pair with no connection.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { makeTempDir, probeFirstLine, waitReady, withPortRetry } from './peers.ts';
import { spawnDaemon, supervise } from './processes.ts';

export const OIDENTD = '/usr/sbin/oidentd';
const NOBODY_UID = 65534;
const NOGROUP_GID = 65534;

export interface IdentdPeer {
  readonly name: string;
  readonly port: number;
  readonly pid: number;
  /** oidentd's stderr/stdout so far (one line per connection and answer). */
  log(): string;
  /** Ends oidentd (by PID, then its process group) and removes its temp dir; safe to call twice. */
  stop(): Promise<void>;
}

/** Every capability denied to everyone: the real user name is the only possible answer. */
const CONFIG = `default {
\tdefault {
\t\tdeny spoof
\t\tdeny spoof_all
\t\tdeny spoof_privport
\t\tdeny random
\t\tdeny random_numeric
\t\tdeny numeric
\t\tdeny hide
\t\tdeny forward
\t}
}
`;

/** Ready when a query for a port pair nobody uses gets its "1 , 1 : ERROR : NO-USER" back. */
function probeIdentd(port: number): Promise<boolean> {
  return probeFirstLine(port, (l) => /^\s*1\s*,\s*1\s*:/.test(l), '1 , 1\r\n');
}

async function startOn(port: number): Promise<IdentdPeer> {
  const dir = await makeTempDir('oidentd');
  const conf = path.join(dir, 'oidentd.conf');
  await fsp.writeFile(conf, CONFIG, { mode: 0o644 });
  const args = ['-i', '-S', '-a', '127.0.0.1', '-p', String(port), '-C', conf, '-u', String(NOBODY_UID), '-g', String(NOGROUP_GID)];
  const sp = spawnDaemon(OIDENTD, args, { cwd: dir });
  const stop = await supervise(sp, { ready: () => waitReady('oidentd', port, sp, () => '', probeIdentd), cleanup: () => fsp.rm(dir, { recursive: true, force: true }) });
  return { name: 'oidentd', port, pid: sp.pid, log: () => sp.output(), stop };
}

/** oidentd on 127.0.0.1 and a free port; retried on a fresh port when another process took it first. */
export function startOidentd(): Promise<IdentdPeer> {
  return withPortRetry(startOn);
}
