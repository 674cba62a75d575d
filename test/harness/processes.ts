// Processes the test harness starts (daemons in their own process groups): every one is
// tracked, so an 'exit' or signal handler kills whatever is left when a test run dies.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';

export const STOP_TIMEOUT_MS = 10_000;


/** Last-resort killers for everything still running, keyed by a unique token. */
const live = new Map<number, () => void>();
let liveSeq = 0;
let handlersInstalled = false;

/**
 * Signals a PID (or, negative, a process group). Never 0, 1, -1 (or not an integer): process.kill
 * would signal our own group, init, or every process we may signal — what a failed spawn's
 * missing PID (undefined, or a -1 sentinel) must never turn into.
 */
export function killQuietly(pid: number, signal: NodeJS.Signals): void {
  if (!Number.isInteger(pid) || Math.abs(pid) <= 1) return;
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

/** Kills a detached child's whole process group (it leads one), then the PID itself; no-op without a real PID. */
export function killGroup(pid: number, signal: NodeJS.Signals): void {
  if (!Number.isInteger(pid) || pid <= 1) return;
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

/** How a child ended: its exit code or signal, or the error that kept it from starting. */
export interface Gone {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** Set when the spawn itself failed (ENOENT, EACCES…): no process ever ran, and no 'exit' comes. */
  readonly spawnError?: Error;
}

/**
 * Resolves when `child` has exited — or at once when it never started: a failed spawn emits
 * 'error' (and 'close') but never 'exit', so waiting for 'exit' alone hangs forever. An 'error'
 * from a running child (a failed kill()) is not an end and is ignored here.
 */
export function whenGone(child: ChildProcess): Promise<Gone> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve({ code: child.exitCode, signal: child.signalCode });
      return;
    }
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.on('error', (err) => {
      if (child.pid === undefined) resolve({ code: null, signal: null, spawnError: err });
    });
  });
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
  const exitedP = whenGone(child).then((gone) => {
    if (gone.spawnError) out += `\nspawn error: ${gone.spawnError.message}`;
    exited = true;
  });
  child.on('error', (err) => {
    if (child.pid !== undefined) out += `\nchild process error: ${err.message}`;
  });
  if (child.pid === undefined) {
    // The spawn failed (the reason arrives as 'error' on the next tick): a sentinel PID, which
    // stopDaemon and killGroup ignore, and an `exited` that resolves with that 'error'.
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

/**
 * Runs a command to its end without blocking the event loop (an mxguard in the test process
 * must go on answering), its standard input a string or a file; killed after timeoutMs. Never
 * throws for an exit code: resolves with the code and the output (stdout then stderr, as they came).
 */
export function runWithInput(cmd: string, args: readonly string[], input: string | { file: string }, timeoutMs: number): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const fd = typeof input === 'string' ? undefined : fs.openSync(input.file, 'r');
    const child = spawn(cmd, args, { stdio: [fd ?? 'pipe', 'pipe', 'pipe'] });
    if (fd !== undefined) fs.closeSync(fd);
    let output = '';
    child.stdout?.on('data', (d: Buffer) => (output += d.toString('utf8')));
    child.stderr?.on('data', (d: Buffer) => (output += d.toString('utf8')));
    const token = child.pid === undefined ? 0 : track(() => killQuietly(child.pid as number, 'SIGKILL'));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err) => (output += `\nspawn error: ${err.message}`));
    child.once('close', (code) => {
      clearTimeout(timer);
      untrack(token);
      resolve({ code, output });
    });
    if (typeof input === 'string') child.stdin?.end(input);
  });
}
