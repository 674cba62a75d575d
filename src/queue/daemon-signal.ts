// Tells the running mxguard daemon (by the PID file in data_dir) that the spool changed:
// SIGUSR1 after `mxguard queue flush|delete` (rescan everything), SIGUSR2 after `mxguard stdio`
// queued a message (adopt new files).
import fsp from 'node:fs/promises';
import path from 'node:path';

export function pidFile(dataDir: string): string {
  return path.join(dataDir, 'mxguard.pid');
}

/** Signals the daemon; resolves with its PID, or undefined when none runs (or it may not be signalled). */
export async function signalDaemon(dataDir: string, signal: 'SIGUSR1' | 'SIGUSR2'): Promise<number | undefined> {
  try {
    const pid = Number((await fsp.readFile(pidFile(dataDir), 'utf8')).trim());
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    process.kill(pid, signal);
    return pid;
  } catch {
    return undefined;
  }
}
