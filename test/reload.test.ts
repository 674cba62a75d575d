// Issue 14: every setting either reloads on SIGHUP or the reload says, by name, that it needs a
// restart and keeps the running value (src/config/reload.ts places every key).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { startMxguard } from './harness/mxguard-process.ts';
import { freePort, probeFirstLine, waitUntil } from './harness/peers.ts';

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
