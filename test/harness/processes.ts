// Processes the test harness starts (daemons in their own process groups): every one is
// tracked, so an 'exit' or signal handler kills whatever is left when a test run dies.
import { spawn, type ChildProcess } from 'node:child_process';
import os from 'node:os';

export const STOP_TIMEOUT_MS = 10_000;


/** Last-resort killers for everything still running, keyed by a unique token. */
const live = new Map<number, () => void>();
let liveSeq = 0;
let handlersInstalled = false;

export function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

/** Kills a detached child's whole process group (it leads one), then the PID itself. */
export function killGroup(pid: number, signal: NodeJS.Signals): void {
  killQuietly(-pid, signal);
  killQuietly(pid, signal);
}

function killAllLive(): void {
  for (const kill of live.values()) kill();
  live.clear();
}

export function track(kill: () => void): number {
  if (!handlersInstalled) {
    handlersInstalled = true;
    process.on('exit', killAllLive);
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      process.once(sig, () => {
        killAllLive();
        process.exit(128 + (os.constants.signals[sig] ?? 1));
      });
    }
  }
  liveSeq += 1;
  live.set(liveSeq, kill);
  return liveSeq;
}

export function untrack(token: number): void {
  live.delete(token);
}


export function deadline(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

export interface Spawned {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly output: () => string;
  readonly exited: Promise<void>;
  hasExited(): boolean;
}

/** Spawns a daemon in its own process group, capturing stdout+stderr (bounded). */
export function spawnDaemon(cmd: string, args: readonly string[], opts: { cwd?: string } = {}): Spawned {
  const child = spawn(cmd, args, { cwd: opts.cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const collect = (d: Buffer): void => {
    out += d.toString('utf8');
    if (out.length > 64_000) out = out.slice(-32_000);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  let exited = false;
  const exitedP = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      resolve();
    });
    child.once('error', (err) => {
      out += `\nspawn error: ${err.message}`;
      exited = true;
      resolve();
    });
  });
  if (child.pid === undefined) {
    // spawn failed synchronously-ish (ENOENT arrives as 'error'); keep a sentinel PID.
    return { child, pid: -1, output: () => out, exited: exitedP, hasExited: () => true };
  }
  return { child, pid: child.pid, output: () => out, exited: exitedP, hasExited: () => exited };
}


/** Stops a spawned daemon: polite signal, bounded wait, then SIGKILL to its group. */
export async function stopDaemon(sp: Spawned, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (sp.pid <= 0) return;
  if (!sp.hasExited()) {
    killQuietly(sp.pid, signal);
    await Promise.race([sp.exited, deadline(STOP_TIMEOUT_MS)]);
  }
  // Children of the daemon may linger in its group; the group is ours alone.
  killGroup(sp.pid, 'SIGKILL');
  await Promise.race([sp.exited, deadline(2000)]);
}


/**
 * Tracks a spawned daemon for the exit handler and returns its stop(), which runs once: `halt`
 * (default: SIGTERM, then SIGKILL to its group), then `cleanup`. When `ready` fails, the daemon
 * is stopped and the error rethrown, so a peer that never came up leaves nothing behind.
 */
export async function supervise(
  sp: Spawned,
  opts: { ready: () => Promise<void>; halt?: () => Promise<void>; cleanup?: () => Promise<void>; lastResort?: () => void },
): Promise<() => Promise<void>> {
  const token = track(opts.lastResort ?? (() => killGroup(sp.pid, 'SIGKILL')));
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await (opts.halt ? opts.halt() : stopDaemon(sp, 'SIGTERM'));
    untrack(token);
    await opts.cleanup?.();
  };
  try {
    await opts.ready();
  } catch (err) {
    await stop();
    throw err;
  }
  return stop;
}
