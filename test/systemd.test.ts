// Issue 14: the systemd units in docs/systemd (the service, and socket activation of
// `mxguard stdio`) are what systemd accepts: `systemd-analyze verify` finds nothing to say about
// them, with their paths pointed at this checkout (it checks that ExecStart's program exists).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '..');
const UNITS = ['mxguard.service', 'mxguard-stdio.socket', 'mxguard-stdio@.service'];

/** The units, with /opt/mxguard (where the docs install mxguard) replaced by this checkout, in a temp dir. */
function unitsHere(dir: string, edit: (name: string, text: string) => string = (_n, t) => t): string[] {
  return UNITS.map((name) => {
    const text = fs.readFileSync(path.join(ROOT, 'docs', 'systemd', name), 'utf8').replaceAll('/opt/mxguard', ROOT);
    fs.writeFileSync(path.join(dir, name), edit(name, text));
    return path.join(dir, name);
  });
}

function verify(files: readonly string[]): { status: number | null; output: string } {
  const r = spawnSync('systemd-analyze', ['verify', ...files], { encoding: 'utf8', timeout: 60_000, cwd: path.dirname(files[0] as string) });
  return { status: r.status, output: (r.stdout + r.stderr).trim() };
}

test('systemd-analyze verify accepts the units in docs/systemd without a word; a broken one it does not', { timeout: 120_000 }, (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-systemd-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ok = verify(unitsHere(dir));
  assert.equal(ok.output, '', 'no warning');
  assert.equal(ok.status, 0);
  // The check can fail: a misspelt directive and a missing program are both reported.
  const bad = verify(unitsHere(dir, (name, text) => (name === 'mxguard.service' ? text.replace('ProtectSystem=strict', 'ProtectSystem=strictly').replace('/.bin/node ', '/.bin/node-missing ') : text)));
  assert.match(bad.output, /protect system value.*strictly/i);
  assert.match(bad.output, /node-missing/);
  // What systemd makes of the hardening (lower is better; 10 is no hardening at all).
  for (const unit of ['mxguard.service', 'mxguard-stdio@.service']) {
    const sec = spawnSync('systemd-analyze', ['security', '--offline=yes', path.join(dir, unit)], { encoding: 'utf8', cwd: dir, timeout: 60_000 });
    const level = /Overall exposure level for \S+: ([\d.]+)/.exec(sec.stdout)?.[1];
    t.diagnostic(`${unit}: systemd-analyze security exposure ${level ?? '?'}`);
  }
  unitsHere(dir);
  const units = Object.fromEntries(UNITS.map((u) => [u, fs.readFileSync(path.join(dir, u), 'utf8')]));
  // The socket hands each connection to one stdio process, on its standard input and output.
  assert.match(units['mxguard-stdio.socket'] as string, /^Accept=yes$/m);
  assert.match(units['mxguard-stdio@.service'] as string, /^ExecStart=\S+node \S+bin\/mxguard\.js stdio$/m);
  assert.match(units['mxguard-stdio@.service'] as string, /^StandardInput=socket$/m);
  assert.match(units['mxguard.service'] as string, /^AmbientCapabilities=CAP_NET_BIND_SERVICE$/m);
});
