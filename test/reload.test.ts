// Issue 14: every setting either reloads on SIGHUP or the reload says, by name, that it needs a
// restart and keeps the running value (src/config/reload.ts places every key).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { startMxguard } from './harness/mxguard-process.ts';
import { startTestApp } from './harness/app.ts';
import { freePort, probeFirstLine, waitUntil } from './harness/peers.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');
const read = (file: string, from: number): string => fs.readFileSync(file, 'utf8').slice(from);

test('SIGHUP: hostname applies to the next session; listen and data_dir changes are named as restart-only and the running ones stay', { timeout: 60_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-reload-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const config = { data_dir: path.join(dir, 'var'), hostname: 'before.example', local_domains: ['example.test'] };
  const mx = await startMxguard(dir, config, port);
  t.after(() => mx.stop());
  assert.ok(await probeFirstLine(port, (l) => l.startsWith('220 before.example ')));

  const other = await freePort();
  const from = fs.statSync(mx.logFile).size;
  fs.writeFileSync(path.join(dir, 'mxguard.yaml'), stringify({ ...config, listen: [`127.0.0.1:${other}`], hostname: 'after.example', data_dir: path.join(dir, 'elsewhere') }));
  mx.signal('SIGHUP');
  assert.ok(await waitUntil(() => read(mx.logFile, from).includes('"msg":"configuration reloaded"'), 10_000), read(mx.logFile, from));
  const lines = read(mx.logFile, from).split('\n').filter((l) => l.includes('setting changes on restart only')).map((l) => (JSON.parse(l) as { key: string }).key);
  // store too: its SQLite file is under data_dir by default.
  assert.deepEqual(lines.sort(), ['data_dir', 'listen', 'store']);
  assert.ok(await probeFirstLine(port, (l) => l.startsWith('220 after.example ')), 'the new hostname, on the running listener');
  assert.equal(await probeFirstLine(other, () => true, undefined, 300), false, 'the new listen address is not bound before a restart');
  assert.equal(fs.existsSync(path.join(dir, 'elsewhere')), false, 'the running data_dir stays');
  assert.equal(await mx.stop(), 0);
  assert.equal(fs.existsSync(path.join(dir, 'var', 'mxguard.pid')), false, 'the PID file of the running data_dir is removed at stop');
});

test('SIGHUP with a new admin.token: the old token is refused and the new one works, without a restart', { timeout: 60_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-reload-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const adminPort = await freePort();
  const config = { data_dir: path.join(dir, 'var'), admin: { listen: `127.0.0.1:${adminPort}`, token: 'the-first-token-0123' } };
  const mx = await startMxguard(dir, config, port);
  t.after(() => mx.stop());
  const status = async (token: string): Promise<number> => {
    try {
      return (await fetch(`http://127.0.0.1:${adminPort}/api/relayers`, { headers: { authorization: `Bearer ${token}` } })).status;
    } catch {
      return 0; // not listening (yet)
    }
  };
  assert.ok(await waitUntil(async () => (await status('the-first-token-0123')) === 200, 10_000));
  const from = fs.statSync(mx.logFile).size;
  fs.writeFileSync(path.join(dir, 'mxguard.yaml'), stringify({ listen: [`127.0.0.1:${port}`], ...config, admin: { ...config.admin, token: 'the-second-token-456' } }));
  mx.signal('SIGHUP');
  assert.ok(await waitUntil(async () => (await status('the-second-token-456')) === 200, 10_000), read(mx.logFile, from));
  assert.equal(await status('the-first-token-0123'), 401);
  assert.doesNotMatch(read(mx.logFile, from), /setting changes on restart only/);
  assert.match(read(mx.logFile, from), /"msg":"admin API restarted with the new settings"/);
});

test('a SIGHUP and a SIGUSR1 during start-up neither end mxguard nor are lost: the reload follows once it is started', { timeout: 60_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-reload-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  // A "Redis" that takes connections and never answers: start-up waits for it (2 s) — the window.
  let asked = false;
  const silent = net.createServer((s) => {
    asked = true;
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  t.after(() => silent.close());
  const port = await freePort();
  const file = path.join(dir, 'mxguard.yaml');
  fs.writeFileSync(file, stringify({ listen: [`127.0.0.1:${port}`], data_dir: path.join(dir, 'var'), store: { backend: 'redis', redis_url: `redis://127.0.0.1:${(silent.address() as net.AddressInfo).port}` } }));
  const logFile = path.join(dir, 'out.log');
  const out = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [MAIN, 'start', '-c', file], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
  t.after(async () => {
    child.kill('SIGKILL');
    await exited;
  });
  assert.ok(await waitUntil(() => asked, 15_000), 'start-up reached the store');
  child.kill('SIGHUP');
  child.kill('SIGUSR1');
  assert.ok(await waitUntil(() => probeFirstLine(port, (l) => l.startsWith('220')), 15_000), fs.readFileSync(logFile, 'utf8'));
  assert.ok(await waitUntil(() => fs.readFileSync(logFile, 'utf8').includes('"msg":"configuration reloaded"'), 10_000), fs.readFileSync(logFile, 'utf8'));
  assert.match(fs.readFileSync(logFile, 'utf8'), /"msg":"SIGHUP during start-up: the configuration is read again once started"/);
  assert.equal(child.exitCode, null, 'still running');
  child.kill('SIGTERM');
  assert.deepEqual(await exited, { code: 0, signal: null });
});

test('two reloads back to back that each move the admin listener: the last one wins, nothing is left listening on the other', { timeout: 60_000 }, async (t) => {
  const [a, b, c] = [await freePort(), await freePort(), await freePort()];
  const token = 'admin-token-0123456789';
  const app = await startTestApp({ admin: { listen: `127.0.0.1:${a}`, token } });
  let stopped = false;
  t.after(() => (stopped ? undefined : app.stop()));
  const up = async (p: number): Promise<boolean> => {
    try {
      return (await fetch(`http://127.0.0.1:${p}/healthz`)).ok;
    } catch {
      return false;
    }
  };
  assert.ok(await up(a));
  // The second comes while the first is still closing the old listener (found in review: both
  // restarts ran at once, the slower one won and the other's listener was never closed).
  app.app.reload({ ...app.config, admin: { listen: `127.0.0.1:${b}`, token } });
  app.app.reload({ ...app.config, admin: { listen: `127.0.0.1:${c}`, token } });
  assert.ok(await waitUntil(() => up(c), 10_000));
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual([await up(a), await up(b), await up(c)], [false, false, true]);
  assert.equal(app.app.adminPort, c);
  stopped = true;
  await app.stop();
  assert.equal(await up(c), false, 'closed at stop');
});

test('a client that keeps its connection to the admin API busy does not hold up the restart of the admin listener, nor the stop', { timeout: 60_000 }, async (t) => {
  const port = await freePort();
  const app = await startTestApp({ admin: { listen: `127.0.0.1:${port}`, token: 'the-first-token-0123' } });
  let stopped = false;
  t.after(() => (stopped ? undefined : app.stop()));
  // A dashboard polling faster than the server's keep-alive timeout (fetch keeps its connections
  // alive): one of its connections is nearly always in the middle of a request.
  let polling = true;
  const poll = (async () => {
    while (polling) {
      await Promise.all([0, 1, 2].map(() => fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.text(), () => '')));
    }
  })();
  t.after(async () => {
    polling = false;
    await poll;
  });
  await new Promise((r) => setTimeout(r, 200));
  app.app.reload({ ...app.config, admin: { listen: `127.0.0.1:${port}`, token: 'the-second-token-456' } });
  const status = async (token: string): Promise<number> => {
    try {
      return (await fetch(`http://127.0.0.1:${port}/api/relayers`, { headers: { authorization: `Bearer ${token}`, connection: 'close' } })).status;
    } catch {
      return 0;
    }
  };
  assert.ok(await waitUntil(async () => (await status('the-second-token-456')) === 200, 5000), 'the new token works within 5 s');
  const t0 = Date.now();
  stopped = true;
  await app.stop();
  assert.ok(Date.now() - t0 < 5000, `stopped in ${Date.now() - t0} ms`);
});
