// Issue 14, Must show 1: started as root on a privileged port, mxguard binds, gives data_dir to the
// configured user and runs as that user from then on (shown by /proc); mail still flows and all it
// writes belongs to that user; a second start on the same data_dir refuses; --version prints.
// These tests need root (the CI machine runs them as root: install-peers.sh does too).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { startMxguard } from './harness/mxguard-process.ts';
import { freePort, maildirFiles, runSwaks, waitUntil } from './harness/peers.ts';
import { chownTree, resolveRunAs } from '../src/util/privileges.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');
const NOBODY = resolveRunAs('nobody', 'nogroup');

const ROOT = path.resolve(import.meta.dirname, '..');

/**
 * The daemon loads code lazily after it gave root up (workers, the store, the transports), so its
 * files must be readable by the user, as /opt/mxguard is on a server. A checkout in a directory
 * closed to others (/root, mktemp -d) is copied, node_modules (and Node) and all, to one that is not.
 */
function codeReadableBy(uid: number, gid: number, dir: string): { node: string; main: string } {
  if (spawnSync(process.execPath, ['--version'], { uid, gid, stdio: 'ignore' }).status === 0 && spawnSync('cat', [path.join(ROOT, 'src', 'app.ts')], { uid, gid, stdio: 'ignore' }).status === 0) {
    return { node: process.execPath, main: MAIN };
  }
  const copy = path.join(dir, 'code');
  for (const part of ['src', 'bin', 'package.json', 'node_modules']) fs.cpSync(path.join(ROOT, part), path.join(copy, part), { recursive: true });
  return { node: path.join(copy, path.relative(ROOT, process.execPath)), main: path.join(copy, 'src', 'cli', 'main.ts') };
}

/** A port under 1024 that nothing listens on (only root may bind it). */
async function freePrivilegedPort(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = 600 + Math.floor(Math.random() * 400);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error('no free port under 1024');
}

/** Real, effective, saved and file-system uid (or gid) of a process, from /proc. */
function ids(pid: number, field: 'Uid' | 'Gid'): number[] {
  const line = fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith(`${field}:`)) ?? '';
  return line.split(/\s+/).slice(1).map(Number);
}

/** Paths under dir not owned by uid:gid. */
function notOwnedBy(dir: string, uid: number, gid: number): string[] {
  const out: string[] = [];
  const visit = (p: string): void => {
    const st = fs.lstatSync(p);
    if (st.uid !== uid || st.gid !== gid) out.push(`${p} (${st.uid}:${st.gid})`);
    if (st.isDirectory()) for (const n of fs.readdirSync(p)) visit(path.join(p, n));
  };
  visit(dir);
  return out;
}

test('started as root on a privileged port, mxguard runs as the configured user; mail flows; a second start refuses', { timeout: 90_000 }, async (t) => {
  assert.equal(process.getuid?.(), 0, 'this test runs as root (as npm test does on the CI machine)');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-privs-'));
  fs.chmodSync(dir, 0o755); // the unprivileged user must reach data_dir through it
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const dataDir = path.join(dir, 'var');
  // What an earlier run as root left behind: given to the user at start.
  fs.mkdirSync(path.join(dataDir, 'spool'), { recursive: true });
  fs.writeFileSync(path.join(dataDir, 'left-by-root'), 'x');
  const logFile = path.join(dir, 'log', 'mxguard.log');
  const port = await freePrivilegedPort();
  const config = { data_dir: dataDir, local_domains: ['example.test'], user: 'nobody', group: 'nogroup', log: { file: logFile } };
  const { main } = codeReadableBy(NOBODY.uid, NOBODY.gid, dir);
  const mx = await startMxguard(dir, config, port, { main });
  t.after(() => mx.stop());
  await waitUntil(() => fs.existsSync(logFile) && fs.readFileSync(logFile, 'utf8').includes('"msg":"listening"'), 10_000);

  // /proc: every uid and gid of the daemon is nobody's, and its only group is nogroup.
  assert.deepEqual(ids(mx.pid, 'Uid'), [NOBODY.uid, NOBODY.uid, NOBODY.uid, NOBODY.uid]);
  assert.deepEqual(ids(mx.pid, 'Gid'), [NOBODY.gid, NOBODY.gid, NOBODY.gid, NOBODY.gid]);
  const log = fs.readFileSync(logFile, 'utf8');
  assert.match(log, /"msg":"running as an unprivileged user"/);
  assert.match(log, new RegExp(`"listen":"127\\.0\\.0\\.1:${port}"`), 'it listens on the privileged port');

  // Mail through the privileged port is spooled and delivered by the unprivileged daemon.
  const sent = await runSwaks(['--server', '127.0.0.1', '--port', String(port), '--from', 'a@sender.test', '--to', 'alice@example.test', '--body', 'as nobody']);
  assert.equal(sent.code, 0, sent.stdout + sent.stderr);
  const box = path.join(dataDir, 'maildir', 'alice');
  assert.ok(await waitUntil(() => maildirFiles(box).length === 1, 15_000), 'delivered into the Maildir');
  assert.deepEqual(notOwnedBy(dataDir, NOBODY.uid, NOBODY.gid), [], 'everything in data_dir is the user\'s');
  const logSt = fs.statSync(logFile);
  assert.deepEqual([logSt.uid, logSt.gid], [NOBODY.uid, NOBODY.gid], 'the log file too (reopened after rotation as that user)');

  // SIGHUP as the unprivileged user: the config is read again and applied.
  mx.signal('SIGHUP');
  assert.ok(await waitUntil(() => fs.readFileSync(logFile, 'utf8').includes('"msg":"configuration reloaded"'), 10_000), 'reload works after root was given up');

  // A second start on the same data_dir (as root, on another port) refuses, naming the first.
  const second = path.join(dir, 'second.yaml');
  fs.writeFileSync(second, stringify({ ...config, listen: [`127.0.0.1:${await freePort()}`], log: { file: path.join(dir, 'second.log') } }));
  const r = spawnSync(process.execPath, [main, 'start', '-c', second], { encoding: 'utf8', timeout: 30_000 });
  assert.notEqual(r.status, 0);
  assert.match(r.stdout + r.stderr, new RegExp(`another mxguard \\(PID ${mx.pid}\\) is running on data_dir`));

  // An administrator's command as root on that data_dir becomes the user too: nothing turns root's.
  const q = spawnSync(process.execPath, [main, 'greylist', '-c', path.join(dir, 'mxguard.yaml'), 'stats'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(q.status, 0, q.stderr);
  assert.deepEqual(notOwnedBy(dataDir, NOBODY.uid, NOBODY.gid), [], 'after mxguard greylist as root');

  assert.equal(await mx.stop(), 0);
  assert.match(execFileSync(process.execPath, [MAIN, '--version'], { encoding: 'utf8' }), /^mxguard \d+\.\d+\.\d+\n$/);
});

test('a user that does not exist, or root as the user, is a clear start-up error; not root and another user is refused', { timeout: 60_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-privs-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.chmodSync(dir, 0o755);
  const code = codeReadableBy(NOBODY.uid, NOBODY.gid, dir);
  const run = (extra: Record<string, unknown>, asUid?: number) => {
    const file = path.join(dir, 'c.yaml');
    fs.writeFileSync(file, stringify({ listen: ['127.0.0.1:0'], data_dir: path.join(dir, 'var'), ...extra }));
    fs.chmodSync(dir, 0o755);
    return spawnSync(code.node, [code.main, 'start', '-c', file], { encoding: 'utf8', timeout: 30_000, ...(asUid !== undefined ? { uid: asUid, gid: asUid } : {}) });
  };
  const noUser = run({ user: 'no-such-user-mxg' });
  assert.notEqual(noUser.status, 0);
  assert.match(noUser.stderr, /user: no such user "no-such-user-mxg"/);
  const rootUser = run({ user: 'root' });
  assert.notEqual(rootUser.status, 0);
  assert.match(rootUser.stderr, /"root" is root; name an unprivileged user/);
  const noGroup = run({ user: 'nobody', group: 'no-such-group-mxg' });
  assert.match(noGroup.stderr, /group: no such group "no-such-group-mxg"/);
  // Started as nobody, configured as daemon: it cannot switch, and says so.
  const daemon = resolveRunAs('daemon', undefined);
  fs.mkdirSync(path.join(dir, 'var'), { recursive: true });
  chownTree(path.join(dir, 'var'), NOBODY.uid, NOBODY.gid); // the config's own data_dir check passes
  const notRoot = run({ user: 'daemon' }, NOBODY.uid);
  assert.notEqual(notRoot.status, 0);
  assert.match(notRoot.stderr, new RegExp(`configured to run as daemon \\(uid ${daemon.uid}\\), but started as uid ${NOBODY.uid}`));
});

test('chownTree gives a tree to a user without following symbolic links or touching hard-linked files', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-chown-'));
  const outside = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-outside-'));
  try {
    fs.mkdirSync(path.join(dir, 'a', 'b'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'a', 'b', 'f'), 'x');
    fs.writeFileSync(path.join(outside, 'secret'), 'y');
    fs.symlinkSync(path.join(outside, 'secret'), path.join(dir, 'link'));
    // What a hostile owner of the tree could plant: a directory that is a link out, and a hard
    // link to a file of someone else's (made here by root; the user could not, protected_hardlinks).
    fs.mkdirSync(path.join(outside, 'etc'));
    fs.writeFileSync(path.join(outside, 'etc', 'shadow'), 'z');
    fs.symlinkSync(path.join(outside, 'etc'), path.join(dir, 'a', 'etc'));
    fs.linkSync(path.join(outside, 'secret'), path.join(dir, 'a', 'hard'));
    execFileSync('mkfifo', [path.join(dir, 'a', 'fifo')]); // opened without blocking, and left alone: not a file
    assert.equal(chownTree(dir, NOBODY.uid, NOBODY.gid), 6, 'dir, a, a/b, a/b/f and the two links themselves');
    assert.deepEqual(notOwnedBy(dir, NOBODY.uid, NOBODY.gid).sort(), [`${path.join(dir, 'a', 'fifo')} (0:0)`, `${path.join(dir, 'a', 'hard')} (0:0)`]);
    assert.equal(fs.statSync(path.join(outside, 'secret')).uid, 0, 'the link\'s target is not touched');
    assert.equal(fs.statSync(path.join(outside, 'etc', 'shadow')).uid, 0, 'a linked directory is not walked');
    assert.equal(fs.statSync(path.join(outside, 'etc')).uid, 0);
    assert.equal(chownTree(dir, NOBODY.uid, NOBODY.gid), 0, 'nothing left to change');
    // data_dir itself may be a link the administrator made (moved to another disk): what it names is walked.
    const moved = path.join(outside, 'moved');
    fs.mkdirSync(path.join(moved, 'spool'), { recursive: true });
    fs.symlinkSync(moved, path.join(outside, 'data'));
    assert.equal(chownTree(path.join(outside, 'data'), NOBODY.uid, NOBODY.gid), 2);
    assert.equal(fs.statSync(path.join(moved, 'spool')).uid, NOBODY.uid);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(outside, { recursive: true, force: true });
  }
});

test('a connection that comes between binding and serving waits, unread, and is served once the daemon is ready', async () => {
  const { bindListeners } = await import('../src/smtp/server.ts');
  const { defaultConfig } = await import('../src/config/load.ts');
  const [l] = await bindListeners({ ...defaultConfig(), listen: [{ address: '127.0.0.1:0', mode: 'mx' }] });
  assert.ok(l);
  try {
    const port = (l.server.address() as net.AddressInfo).port;
    const client = net.connect(port, '127.0.0.1');
    let got = '';
    client.on('data', (d) => (got += d.toString()));
    await new Promise((r) => client.once('connect', r));
    client.write('EHLO early\r\n'); // sent before anyone reads: kept for the session
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(got, '', 'nothing answers before serve()');
    l.serve((socket) => {
      socket.once('data', (d) => socket.end(`220 served, read ${JSON.stringify(d.toString())}\r\n`));
    });
    await new Promise((r) => client.once('end', r));
    assert.equal(got, '220 served, read "EHLO early\\r\\n"\r\n');
    client.destroy();
  } finally {
    l.close();
  }
});

test('started as root, a log.file that is a symbolic link is refused, and what it points at is not handed to the user', { timeout: 60_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-privs-'));
  fs.chmodSync(dir, 0o755);
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const target = path.join(dir, 'shadow');
  fs.writeFileSync(target, 'root:x:0:0\n', { mode: 0o600 });
  const logDir = path.join(dir, 'log');
  fs.mkdirSync(logDir);
  fs.symlinkSync(target, path.join(logDir, 'mxguard.log')); // planted by the user who owns the log directory
  const file = path.join(dir, 'c.yaml');
  fs.writeFileSync(file, stringify({ listen: [`127.0.0.1:${await freePort()}`], data_dir: path.join(dir, 'var'), user: 'nobody', log: { file: path.join(logDir, 'mxguard.log') } }));
  const r = spawnSync(process.execPath, [MAIN, 'start', '-c', file], { encoding: 'utf8', timeout: 30_000 });
  assert.notEqual(r.status, 0);
  assert.match(r.stdout + r.stderr, /cannot open the log file .*mxguard\.log: it is a symbolic link/);
  const st = fs.statSync(target);
  assert.deepEqual([st.uid, st.gid, fs.readFileSync(target, 'utf8')], [0, 0, 'root:x:0:0\n'], 'the file it points at is untouched');
});

test('mxguard user add as root: a users_file under data_dir is written as the user; one elsewhere by root and given to the user to read', { timeout: 60_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-privs-'));
  fs.chmodSync(dir, 0o755);
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const code = codeReadableBy(NOBODY.uid, NOBODY.gid, dir);
  const etc = path.join(dir, 'etc');
  fs.mkdirSync(etc, { mode: 0o755 }); // root's, as /etc/mxguard is: the user could not write there
  const addUser = (usersFile: string | undefined) => {
    const file = path.join(dir, 'c.yaml');
    fs.writeFileSync(file, stringify({ data_dir: path.join(dir, 'var'), user: 'nobody', group: 'nogroup', auth: { enabled: true, ...(usersFile ? { users_file: usersFile } : {}) } }));
    return spawnSync(code.node, [code.main, 'user', '-c', file, 'add', 'alice'], { encoding: 'utf8', input: 'a-long-password-1\n', timeout: 30_000 });
  };
  const outside = addUser(path.join(etc, 'users'));
  assert.equal(outside.status, 0, outside.stderr);
  const st = fs.statSync(path.join(etc, 'users'));
  assert.deepEqual([st.uid, st.gid, st.mode & 0o777], [NOBODY.uid, NOBODY.gid, 0o600], 'the daemon (nobody) can read it');
  assert.match(fs.readFileSync(path.join(etc, 'users'), 'utf8'), /^alice:/);
  const inside = addUser(undefined);
  assert.equal(inside.status, 0, inside.stderr);
  assert.deepEqual(notOwnedBy(path.join(dir, 'var'), NOBODY.uid, NOBODY.gid), [], 'data_dir/users and data_dir are the user\'s');
});

test('connections waiting for the start are bounded by limits.max_connections: more are told 421 at once', async () => {
  const { bindListeners } = await import('../src/smtp/server.ts');
  const { defaultConfig } = await import('../src/config/load.ts');
  const base = defaultConfig();
  const [l] = await bindListeners({ ...base, listen: [{ address: '127.0.0.1:0', mode: 'mx' }], limits: { ...base.limits, max_connections: 2 } });
  assert.ok(l);
  const clients: net.Socket[] = [];
  try {
    const port = (l.server.address() as net.AddressInfo).port;
    const heard: string[] = ['', '', ''];
    for (let i = 0; i < 3; i++) {
      const c = net.connect(port, '127.0.0.1');
      c.on('data', (d) => (heard[i] += d.toString()));
      c.on('error', () => undefined);
      clients.push(c);
      await new Promise((r) => c.once('connect', r));
      await new Promise((r) => setTimeout(r, 50)); // accepted in this order
    }
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(heard, ['', '', '421 4.3.2 Service not yet available, try again later\r\n']);
    const served: number[] = [];
    l.serve((socket) => {
      served.push(socket.remotePort ?? 0);
      socket.end('220 ready\r\n');
    });
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(served.length, 2, 'the two that waited are served');
    assert.deepEqual(heard.slice(0, 2), ['220 ready\r\n', '220 ready\r\n']);
  } finally {
    for (const c of clients) c.destroy();
    l.close();
  }
});
