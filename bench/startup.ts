// The start-up cost of `mxguard stdio` (one process per connection, under inetd, systemd or
// tcpserver): from spawning `bin/mxguard.js stdio -c FILE` on two pipes (TCPREMOTEIP set, as
// tcpserver does) to the 220 banner, and the CPU time (user + system) the process used until
// then. Medians of `runs` after two warm-up runs (the first fills Node's compile cache).
// `npm run bench` includes it; BENCH_STARTUP_ONLY=1 runs only this part (BENCH_STARTUP_RUNS=N).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { cpuMs, median } from './stats.ts';

const BIN = path.resolve(import.meta.dirname, '../bin/mxguard.js');

export interface StartupResult {
  runs: number;
  /** Median milliseconds from spawn to the 220 banner. */
  bannerMs: number;
  /** Median CPU milliseconds (user + system) of the process by the time of its banner. */
  cpuMs: number;
  /** Every run's figures, in order. */
  samples: Array<{ bannerMs: number; cpuMs: number }>;
}

/** One session: spawn, wait for the banner (bounded), QUIT, wait for the exit. */
function once(configFile: string): Promise<{ bannerMs: number; cpuMs: number }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(process.execPath, [BIN, 'stdio', '-c', configFile], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, TCPREMOTEIP: '127.0.0.1', TCPREMOTEPORT: '40000', TCPLOCALIP: '127.0.0.1', TCPLOCALPORT: '25' },
    });
    let out = '';
    let err = '';
    let result: { bannerMs: number; cpuMs: number } | undefined;
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString('latin1');
      if (result === undefined && /^220 .*\r\n/m.test(out)) {
        const bannerMs = Number(process.hrtime.bigint() - t0) / 1e6;
        result = { bannerMs, cpuMs: cpuMs(child.pid as number) };
        child.stdin.end('QUIT\r\n');
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (result && code === 0) resolve(result);
      else reject(new Error(`mxguard stdio exited ${code} ${result ? 'after' : 'before'} its banner: ${JSON.stringify(out.slice(0, 300))} ${err.slice(0, 500)}`));
    });
  });
}

/** Measures `runs` sessions on a fresh data_dir with the default (SQLite) store and no DNS servers. */
export async function measureStdioStartup(runs: number): Promise<StartupResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-bench-startup-'));
  try {
    const configFile = path.join(dir, 'mxguard.yaml');
    fs.writeFileSync(configFile, stringify({ hostname: 'mx.example.test', local_domains: ['example.test'], data_dir: path.join(dir, 'var'), log: { level: 'warn', file: path.join(dir, 'stdio.log') } }));
    for (let i = 0; i < 2; i++) await once(configFile);
    const samples: Array<{ bannerMs: number; cpuMs: number }> = [];
    for (let i = 0; i < runs; i++) samples.push(await once(configFile));
    return { runs, bannerMs: median(samples.map((s) => s.bannerMs)), cpuMs: median(samples.map((s) => s.cpuMs)), samples };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export function describeStartup(r: StartupResult): string {
  return `mxguard stdio start-up (median of ${r.runs}): ${r.bannerMs.toFixed(0)} ms from spawn to the 220 banner, ${r.cpuMs.toFixed(0)} ms of CPU by then`;
}
