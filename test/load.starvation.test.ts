// Issue 9, Must show 2: no client starves the others. mxguard runs as its own process (its
// descriptors and RSS are its own), with its descriptor limit lowered to 1,024 as in the issue's
// measurement, and max_connections 250 (stress mode from 200). Three hostile loads, each run
// from a process of their own (test/harness/starvation-clients.ts) while a legitimate client on
// another address (127.0.9.9) sends one message a second; it must be greeted and get its 250
// within 2 s every time:
//   (a) one address opening connections as fast as it can for 30 s, closing none itself (it lets
//       go of the oldest past 10,000 held, so loopback's ephemeral ports do not run out);
//   (b) 200 sessions from 200 addresses trickling one octet every 300 ms, reconnecting when cut;
//   (c) 300 wrong AUTHs from 300 addresses within 3 s.
// Descriptors (/proc/PID/fd) and RSS (VmRSS) of mxguard before and after each are printed.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { startMxguard, type MxguardProcess } from './harness/mxguard-process.ts';
import { freePort, makeTempDir } from './harness/peers.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');
const CLIENTS = path.resolve(import.meta.dirname, 'harness/starvation-clients.ts');
const BOUND_MS = 2000;

let dir = '';
let mx: MxguardProcess;

before(async () => {
  dir = await makeTempDir('mxguard-load');
  const usersFile = path.join(dir, 'users');
  const cli = path.join(dir, 'cli.yaml');
  fs.writeFileSync(cli, `data_dir: ${dir}\nauth:\n  users_file: ${usersFile}\n`);
  const r = spawnSync(process.execPath, [MAIN, 'user', '-c', cli, 'add', 'alice'], { input: 'wonderland\n', encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  mx = await startMxguard(
    dir,
    {
      hostname: 'mx.example.test',
      data_dir: dir,
      local_domains: ['example.test'],
      deliver: `maildir:${path.join(dir, 'maildir')}`,
      mail_from: { require_domain: false },
      limits: { max_connections: 250 },
      auth: { users_file: usersFile },
      log: { level: 'warn' },
    },
    await freePort(),
  );
  execFileSync('prlimit', [`--pid=${mx.pid}`, '--nofile=1024:1024']);
});

after(async () => {
  await mx?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

function usage(): { fds: number; rssMb: number } {
  const fds = fs.readdirSync(`/proc/${mx.pid}/fd`).length;
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${mx.pid}/status`, 'utf8'));
  return { fds, rssMb: Math.round(Number(m?.[1] ?? 0) / 1024) };
}

/** Runs starvation-clients.ts with `args`; resolves with the counts it prints. */
function attack(args: Record<string, unknown>): Promise<Record<string, number>> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLIENTS, JSON.stringify({ port: mx.port, ...args })], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const kill = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(kill);
      if (code !== 0) reject(new Error(`attack ${JSON.stringify(args)} exited ${code}: ${err.slice(0, 1000)}`));
      else resolve(JSON.parse(out.trim()) as Record<string, number>);
    });
  });
}

interface Round {
  greetMs: number;
  ackMs: number;
  error?: string;
}

/** One message from 127.0.9.9: connect → 220, EHLO, MAIL, RCPT, DATA, "." → 250, QUIT. */
async function legitimateMessage(n: number): Promise<Round> {
  const t0 = Date.now();
  const s = net.connect({ port: mx.port, host: '127.0.0.1', localAddress: '127.0.9.9', noDelay: true });
  let text = '';
  let closed = false;
  s.setEncoding('latin1');
  s.on('data', (d: string) => (text += d));
  s.on('error', () => undefined);
  s.on('close', () => (closed = true));
  const next = async (): Promise<string> => {
    const until = Date.now() + 10_000;
    for (;;) {
      const m = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\r?\n/.exec(text);
      if (m) {
        text = text.slice(m[0].length);
        return m[0].trimEnd();
      }
      if (closed) return 'connection closed';
      if (Date.now() > until) return 'no reply in 10 s';
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  try {
    const banner = await next();
    const greetMs = Date.now() - t0;
    if (!banner.startsWith('220 ')) return { greetMs, ackMs: -1, error: `banner: ${banner}` };
    for (const [cmd, want] of [
      ['EHLO legit.test', '250'],
      ['MAIL FROM:<legit@legit.test>', '250'],
      ['RCPT TO:<alice@example.test>', '250'],
      ['DATA', '354'],
    ] as const) {
      s.write(`${cmd}\r\n`);
      const r = await next();
      if (!r.startsWith(want)) return { greetMs, ackMs: -1, error: `${cmd}: ${r}` };
    }
    const t1 = Date.now();
    s.write(`Subject: legit ${n}\r\n\r\nmessage ${n}\r\n.\r\n`);
    const ack = await next();
    const ackMs = Date.now() - t1;
    if (!ack.startsWith('250 ')) return { greetMs, ackMs, error: `end of data: ${ack}` };
    s.write('QUIT\r\n');
    return { greetMs, ackMs };
  } finally {
    setTimeout(() => s.destroy(), 200);
  }
}

/** The legitimate client: one message a second until `done` settles (8 at least); every round's timings. */
async function legitimateClient(done: Promise<unknown>): Promise<Round[]> {
  let finished = false;
  void done.finally(() => (finished = true));
  const rounds: Round[] = [];
  while (!finished || rounds.length < 8) {
    const start = Date.now();
    rounds.push(await legitimateMessage(rounds.length));
    await new Promise((r) => setTimeout(r, Math.max(0, 1000 - (Date.now() - start))));
  }
  return rounds;
}

async function scenario(name: string, args: Record<string, unknown>, sample?: (u: { fds: number; rssMb: number }) => void): Promise<{ counts: Record<string, number>; rounds: Round[] }> {
  const before = usage();
  const attacking = attack(args);
  const sampler = sample ? setInterval(() => sample(usage()), 250) : undefined;
  const [counts, rounds] = await Promise.all([attacking, legitimateClient(attacking.catch(() => undefined))]);
  clearInterval(sampler);
  const afterNow = usage();
  await new Promise((r) => setTimeout(r, 2000));
  const settled = usage();
  const worstGreet = Math.max(...rounds.map((r) => r.greetMs));
  const worstAck = Math.max(...rounds.map((r) => r.ackMs));
  console.log(
    `${name}: attacker ${JSON.stringify(counts)}; legitimate client ${rounds.length} messages, worst greeting ${worstGreet} ms, worst 250 ${worstAck} ms; ` +
      `mxguard descriptors ${before.fds} before, ${afterNow.fds} at the end, ${settled.fds} 2 s later; RSS ${before.rssMb} MB before, ${afterNow.rssMb} MB at the end, ${settled.rssMb} MB 2 s later`,
  );
  return { counts, rounds };
}

function assertServed(rounds: Round[]): void {
  assert.ok(rounds.length >= 5, `only ${rounds.length} rounds`);
  for (const [i, r] of rounds.entries()) {
    assert.equal(r.error, undefined, `message ${i}: ${r.error}`);
    assert.ok(r.greetMs <= BOUND_MS, `message ${i}: greeted after ${r.greetMs} ms`);
    assert.ok(r.ackMs <= BOUND_MS, `message ${i}: 250 after ${r.ackMs} ms`);
  }
}

test('(a) one address opening connections as fast as it can, never closing them: descriptors stay at their baseline, the legitimate client is served every second', { timeout: 150_000 }, async () => {
  const base = usage().fds;
  let maxFds = 0;
  const { counts, rounds } = await scenario('(a) flood from 127.0.0.2, 30 s', { kind: 'flood', seconds: 30 }, (u) => (maxFds = Math.max(maxFds, u.fds)));
  console.log(`(a) most mxguard descriptors seen during the flood: ${maxFds} (limit 1024)`);
  assert.ok((counts.refused421 ?? 0) > 1000, `the flood was refused ${counts.refused421} times`);
  assert.ok(maxFds < base + 100, `descriptors peaked at ${maxFds}, baseline ${base}`);
  assertServed(rounds);
});

test('(b) 200 sessions trickling one octet every 300 ms from 200 addresses: the legitimate client is served every second', { timeout: 150_000 }, async () => {
  const { counts, rounds } = await scenario('(b) 200 tricklers, 15 s', { kind: 'trickle', seconds: 15, clients: 200 });
  assert.ok((counts.sessions ?? 0) >= 200, JSON.stringify(counts));
  // 200 of 250 is stress mode: the tricklers are cut at stress_command_deadline (10 s).
  assert.ok((counts.cutOff421 ?? 0) >= 100, `tricklers cut off: ${JSON.stringify(counts)}`);
  assertServed(rounds);
});

test('(c) 300 wrong AUTHs from 300 addresses within 3 s: the legitimate client is served every second', { timeout: 150_000 }, async () => {
  const { counts, rounds } = await scenario('(c) 300 AUTH failures', { kind: 'auth', clients: 300 });
  assert.equal(counts.connected, 300, JSON.stringify(counts));
  assert.equal((counts['535'] ?? 0) + (counts['454'] ?? 0), 300, JSON.stringify(counts));
  assertServed(rounds);
});
