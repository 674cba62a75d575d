// Issue 14: a production install has no development dependencies. `npm ci --omit=dev` in a copy
// of the tracked files, then the README's run command (`npx mxguard start`) with the SYSTEM's npm
// (whose Node may be older): the node@24 dependency makes mxguard run on Node 24, and it takes mail.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { freePort, maildirFiles, runSwaks, waitUntil, probeBanner } from './harness/peers.ts';
import { whenGone } from './harness/processes.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
/** The system's npm and npx, not the ones beside the node@24 this test runs on. */
const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

test('npm ci --omit=dev, then npx mxguard start: Node 24 comes with it, no dev dependency is installed, mail is taken', { timeout: 300_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-prod-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  // What a release holds: the files git knows (tracked, or new and not ignored), without the tests.
  const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: ROOT, encoding: 'utf8' }).split('\0').filter((f) => f !== '' && !f.startsWith('test/') && fs.existsSync(path.join(ROOT, f)));
  for (const f of files) {
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.copyFileSync(path.join(ROOT, f), path.join(dir, f));
  }
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: SYSTEM_PATH, npm_config_cache: process.env.npm_config_cache ?? path.join(os.homedir(), '.npm') };
  delete env.npm_config_omit;
  execFileSync('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund', '--prefer-offline'], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'], timeout: 240_000 });
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { devDependencies: Record<string, string>; dependencies: Record<string, string> };
  for (const dev of Object.keys(pkg.devDependencies)) assert.equal(fs.existsSync(path.join(dir, 'node_modules', dev)), false, `${dev} (a devDependency) is not installed`);
  assert.ok(pkg.dependencies.node?.startsWith('24.'), 'node@24 is a dependency');
  const systemNode = execFileSync('node', ['--version'], { env, encoding: 'utf8' }).trim();
  t.diagnostic(`system node ${systemNode}`);
  assert.match(execFileSync('npx', ['mxguard', '--version'], { cwd: dir, env, encoding: 'utf8' }), /^mxguard \d+\.\d+\.\d+\n$/);

  // The README's run command, on a config for a free port.
  const port = await freePort();
  fs.writeFileSync(path.join(dir, 'mxguard.yaml'), stringify({ listen: [`127.0.0.1:${port}`], local_domains: ['example.test'] }));
  const out = fs.openSync(path.join(dir, 'out.log'), 'a');
  const child = spawn('npx', ['mxguard', 'start', '-c', 'mxguard.yaml'], { cwd: dir, env, stdio: ['ignore', out, out], detached: true });
  fs.closeSync(out);
  const gone = whenGone(child);
  t.after(async () => {
    try {
      process.kill(-(child.pid as number), 'SIGTERM'); // npx and the mxguard it started
    } catch {
      // already gone
    }
    await gone;
  });
  assert.ok(await waitUntil(() => probeBanner(port), 60_000), `mxguard answers on ${port}:\n${fs.readFileSync(path.join(dir, 'out.log'), 'utf8')}`);
  const log = fs.readFileSync(path.join(dir, 'out.log'), 'utf8');
  const started = log.split('\n').find((l) => l.includes('"msg":"queue loaded"'));
  assert.ok(started, log);
  const sent = await runSwaks(['--server', '127.0.0.1', '--port', String(port), '--to', 'alice@example.test', '--body', 'production install']);
  assert.equal(sent.code, 0, sent.stdout + sent.stderr);
  assert.ok(await waitUntil(() => maildirFiles(path.join(dir, 'var', 'maildir', 'alice')).length === 1, 15_000), 'delivered into ./var/maildir');
  // It ran on Node 24 although the system's is older: the PID file's process is node 24.
  const pid = Number(fs.readFileSync(path.join(dir, 'var', 'mxguard.pid'), 'utf8'));
  const exe = fs.readlinkSync(`/proc/${pid}/exe`);
  assert.match(execFileSync(exe, ['--version'], { encoding: 'utf8' }), /^v24\./);
});
