// One mxguard daemon per data_dir (Postfix's master.lock): two on one spool would deliver each
// message twice and trample each other's journal. The lock is a file holding the owner's PID,
// made with O_EXCL; a lock whose process is gone (kill -9, a crash) is stale and taken over.
// `mxguard stdio` processes share the data_dir with the daemon by design and take no lock.
import fs from 'node:fs';
import path from 'node:path';

export class InstanceLocked extends Error {
  override readonly name = 'InstanceLocked';
}

export function lockPath(dataDir: string): string {
  return path.join(dataDir, 'mxguard.lock');
}

/** Whether `pid` is a running process that may be an mxguard (its command line, when /proc shows it). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false; // ESRCH: gone
  }
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1');
    return /mxguard|cli\/main\.ts|node/.test(cmd); // a PID reused by something else is not ours
  } catch {
    return true; // no /proc here: believe it
  }
}

/**
 * Takes the lock of `dataDir` for this process; throws InstanceLocked, naming the other process,
 * when another mxguard holds it. release() removes the lock file if it is still ours.
 */
export function acquireInstanceLock(dataDir: string): { release(): void } {
  const file = lockPath(dataDir);
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = fs.openSync(file, 'wx', 0o644);
      try {
        const text = `${process.pid}\n`;
        if (fs.writeSync(fd, text) !== Buffer.byteLength(text)) throw new Error(`short write to ${file}`);
      } finally {
        fs.closeSync(fd);
      }
      return {
        release() {
          try {
            if (fs.readFileSync(file, 'utf8').trim() === String(process.pid)) fs.unlinkSync(file);
          } catch {
            // Already gone.
          }
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err;
    }
    let owner = NaN;
    try {
      owner = Number(fs.readFileSync(file, 'utf8').trim());
    } catch {
      // Removed meanwhile: try again.
    }
    // This very process (an App started again after one that was never stopped) or a process gone: stale.
    if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && alive(owner)) {
      throw new InstanceLocked(`another mxguard (PID ${owner}) is running on data_dir ${dataDir} (lock ${file}): stop it first, or give this one its own data_dir`);
    }
    fs.rmSync(file, { force: true });
  }
}
