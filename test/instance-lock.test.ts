// Issue 14, first step: one mxguard daemon per data_dir (a second start refuses, naming the
// first; a lock left by a process that died is taken over) and `mxguard --version`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { startMxguard } from './harness/mxguard-process.ts';
import { freePort } from './harness/peers.ts';
import { acquireInstanceLock, InstanceLocked, lockPath } from '../src/util/instance-lock.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');

test('a second mxguard on the same data_dir refuses to start and names the first; once it stops, it may', { timeout: 60_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-lock-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const config = { data_dir: path.join(dir, 'var'), local_domains: ['example.test'] };
  const first = await startMxguard(dir, config, await freePort());
  t.after(() => first.stop());
  assert.equal(fs.readFileSync(lockPath(config.data_dir), 'utf8').trim(), String(first.pid));
  // The same data_dir, another port: it must not start.
  const second = path.join(dir, 'second.yaml');
  fs.writeFileSync(second, stringify({ listen: [`127.0.0.1:${await freePort()}`], ...config }));
  const r = spawnSync(process.execPath, [MAIN, 'start', '-c', second], { encoding: 'utf8', timeout: 30_000 });
  assert.notEqual(r.status, 0);
  assert.match(r.stdout + r.stderr, new RegExp(`another mxguard \\(PID ${first.pid}\\) is running on data_dir ${config.data_dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  assert.equal(fs.readFileSync(lockPath(config.data_dir), 'utf8').trim(), String(first.pid), 'the lock is still the first one\'s');
  assert.equal(await first.stop(), 0);
  assert.equal(fs.existsSync(lockPath(config.data_dir)), false, 'released at stop');
  const again = await startMxguard(dir, config, await freePort());
  await again.stop();
});

test('a lock left by a process that is gone (kill -9) is taken over; one held by a live mxguard is not', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-lock-'));
  try {
    const gone = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' });
    fs.writeFileSync(lockPath(dir), `${gone.stdout.trim()}\n`);
    const lock = acquireInstanceLock(dir);
    assert.equal(fs.readFileSync(lockPath(dir), 'utf8').trim(), String(process.pid));
    lock.release();
    assert.equal(fs.existsSync(lockPath(dir)), false);
    // A live node process (our parent test runner counts as one) holds it.
    fs.writeFileSync(lockPath(dir), `${process.ppid}\n`);
    assert.throws(() => acquireInstanceLock(dir), InstanceLocked);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('mxguard --version prints the package version', () => {
  const pkg = JSON.parse(fs.readFileSync(path.resolve(import.meta.dirname, '../package.json'), 'utf8')) as { version: string };
  assert.equal(execFileSync(process.execPath, [MAIN, '--version'], { encoding: 'utf8' }).trim(), `mxguard ${pkg.version}`);
});

test('without -c every command reads $MXGUARD_CONFIG: the state goes to that data_dir, not ./var', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-envconf-'));
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-cwd-'));
  try {
    const file = path.join(dir, 'mxguard.yaml');
    fs.writeFileSync(file, stringify({ data_dir: path.join(dir, 'var'), greylist: {} }));
    const env = { ...process.env, MXGUARD_CONFIG: file };
    execFileSync(process.execPath, [MAIN, 'greylist', 'allow', '192.0.2.7'], { cwd, env, encoding: 'utf8' });
    assert.ok(fs.existsSync(path.join(dir, 'var', 'state.db')), 'the configured data_dir');
    assert.equal(fs.existsSync(path.join(cwd, 'var')), false, 'nothing in ./var');
    assert.match(execFileSync(process.execPath, [MAIN, 'check'], { cwd, env, encoding: 'utf8' }), new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: OK`));
    const missing = spawnSync(process.execPath, [MAIN, 'queue', 'list'], { cwd, env: { ...process.env, MXGUARD_CONFIG: path.join(dir, 'nope.yaml') }, encoding: 'utf8' });
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /nope\.yaml: cannot read the config file: no such file/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(cwd, { recursive: true, force: true });
  }
});
