// Runs mxguard as a separate process (`node src/cli/main.ts start -c FILE`), the way an
// administrator does, for tests that kill it, signal it or load it with real clients.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { stringify } from 'yaml';
import { whenGone } from './processes.ts';

const MAIN = path.resolve(import.meta.dirname, '../../src/cli/main.ts');
const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export interface MxguardProcess {
  readonly pid: number;
  readonly port: number;
  readonly logFile: string;
  /** Graceful stop (SIGTERM); resolves with the exit code. */
  stop(): Promise<number | null>;
  /** kill -9. */
  crash(): Promise<void>;
  signal(sig: NodeJS.Signals): void;
  exited: Promise<number | null>;
}

/**
 * Writes `config` (a plain object) as YAML into dir/mxguard.yaml and starts mxguard on it;
 * `main`: another checkout's src/cli/main.ts (the benchmark's code-before runs).
 */
export async function startMxguard(dir: string, config: Record<string, unknown>, port: number, opts: { main?: string } = {}): Promise<MxguardProcess> {
  const file = path.join(dir, 'mxguard.yaml');
  fs.writeFileSync(file, stringify({ listen: [`127.0.0.1:${port}`], ...config }));
  const logFile = path.join(dir, 'mxguard.log');
  const out = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [opts.main ?? MAIN, 'start', '-c', file], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  running.add(child);
  // Resolves on 'exit', or at once when the spawn failed (then only 'error' comes).
  let spawnError: Error | undefined;
  const exited = whenGone(child).then((g) => {
    running.delete(child);
    spawnError = g.spawnError;
    return g.code;
  });
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (spawnError) throw new Error(`mxguard could not be started: ${spawnError.message}`);
    if (child.exitCode !== null) throw new Error(`mxguard exited at start-up:\n${fs.readFileSync(logFile, 'utf8')}`);
    if (await canConnect(port)) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`mxguard did not listen on ${port}:\n${fs.readFileSync(logFile, 'utf8')}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    pid: child.pid as number,
    port,
    logFile,
    exited,
    signal: (sig) => child.kill(sig),
    async stop() {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      const code = await Promise.race([exited, bound(25_000, `mxguard (PID ${String(child.pid)}) did not exit 25 s after SIGTERM`)]);
      clearTimeout(timer);
      return code;
    },
    async crash() {
      child.kill('SIGKILL');
      await Promise.race([exited, bound(5000, `mxguard (PID ${String(child.pid)}) did not exit 5 s after SIGKILL`)]);
    },
  };
}

/** Rejects after ms (a stop that can never hang the test); does not keep the process alive. */
function bound(ms: number, why: string): Promise<never> {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(why)), ms).unref());
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}
