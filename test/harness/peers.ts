// Real peers for integration tests and the benchmark: smtp-sink, a private Postfix, Dovecot LMTP,
// and swaks. Each runs on a free loopback port in its own temp dir, waits for its "220" banner
// (bounded), and is stopped by PID. A process 'exit' / signal handler kills whatever is still
// running, so a crashed test leaves nothing behind. See PEERS.md for how each peer is set up.
import crypto from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { STOP_TIMEOUT_MS, deadline, killGroup, killQuietly, spawnDaemon, stopDaemon, supervise, track, untrack, type Spawned } from './processes.ts';

/** A started peer: stop() ends it (by PID) and removes its own temp dir; safe to call twice. */
export interface Peer {
  readonly name: string;
  readonly port: number;
  readonly pid: number;
  stop(): Promise<void>;
}

export interface SmtpSinkPeer extends Peer {
  readonly dumpDir: string | undefined;
  /** Messages received so far (smtp-sink's own -c counter, "mesg=N"). */
  received(): number;
  /** Dump files written so far (one per mail transaction), sorted by name, full paths. */
  files(): string[];
}

export interface MailStorePeer extends Peer {
  /** The Maildir (holding new/ cur/ tmp/) where mail for addr lands. */
  maildirFor(addr: string): string;
  /** The peer's log so far (for assertions and failure messages). */
  log(): string;
  /** Its private directory (config, queue, mail). */
  readonly dir: string;
}

export interface SwaksResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

const READY_TIMEOUT_MS = 15_000;
const NOBODY_UID = 65534;
const NOBODY_GID = 65534;

/** The process still exists (signal 0). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// --- small helpers -------------------------------------------------------------------------

/** A port that was free a moment ago on 127.0.0.1 (the kernel picks it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => (port > 0 ? resolve(port) : reject(new Error('no port'))));
    });
  });
}

/** A fresh directory under the system temp dir, mode 0755 so unprivileged daemons can traverse it. */
export async function makeTempDir(prefix: string): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), `mxg-${prefix}-`));
  await fsp.chmod(dir, 0o755);
  return dir;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A bound for Promise.race that does not keep the process alive once the race is won. */
/** Polls cond until it is true or timeoutMs passes; returns whether it became true. */
export async function waitUntil(cond: () => boolean | Promise<boolean>, timeoutMs: number, intervalMs = 25): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(intervalMs);
  }
}

/** Files in a Maildir's new/ and cur/ (full paths, sorted); [] if it does not exist yet. */
export function maildirFiles(maildir: string): string[] {
  const out: string[] = [];
  for (const sub of ['new', 'cur']) {
    let names: string[];
    try {
      names = fs.readdirSync(path.join(maildir, sub));
    } catch {
      continue;
    }
    for (const n of names) out.push(path.join(maildir, sub, n));
  }
  return out.sort();
}

function readTail(file: string, max = 8000): string {
  try {
    const s = fs.readFileSync(file, 'utf8');
    return s.length > max ? s.slice(-max) : s;
  } catch {
    return '';
  }
}

/** Connects and reads the first reply line; true when it is a 220 banner. */
/**
 * Connects, optionally sends `send`, and resolves with whether the first line that comes back
 * passes `accept`; false on error, close or timeout.
 */
export function probeFirstLine(port: number, accept: (line: string) => boolean, send?: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let buf = '';
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      sock.removeAllListeners('data');
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.setEncoding('latin1');
    sock.on('error', () => done(false));
    if (send !== undefined) sock.on('connect', () => sock.write(send));
    sock.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl !== -1) done(accept(buf.slice(0, nl)));
    });
    sock.on('close', () => done(false));
  });
}

/** An SMTP/LMTP server is up: its first line is a 220 banner. */
export function probeBanner(port: number, timeoutMs = 1000): Promise<boolean> {
  return probeFirstLine(port, (l) => l.startsWith('220'), undefined, timeoutMs);
}

/** Waits for the 220 banner on port while the child lives; throws with the peer's log otherwise. */
export async function waitReady(name: string, port: number, sp: Spawned, logOf: () => string, probe: (port: number) => Promise<boolean> = probeBanner): Promise<void> {
  const until = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < until) {
    if (sp.hasExited()) break;
    if (await probe(port)) return;
    await sleep(50);
  }
  // A failed spawn (sentinel PID) reports its reason on the next tick: wait for it (bounded).
  if (sp.hasExited()) await Promise.race([sp.exited, deadline(1000)]);
  const why = sp.pid <= 0 ? 'could not be started' : sp.hasExited() ? `exited with ${sp.child.exitCode ?? sp.child.signalCode}` : `not ready after ${READY_TIMEOUT_MS} ms`;
  const log = `${sp.output()}\n${logOf()}`.trim();
  console.error(`--- ${name} on port ${port} ${why}; its log:\n${log}\n---`);
  throw new Error(`${name} on 127.0.0.1:${port} ${why}${log ? `: ${log.slice(-1500)}` : ''}`);
}

/** Starts with a fresh port, retrying when another process grabbed the port in between. */
export async function withPortRetry<T>(start: (port: number) => Promise<T>, fixedPort?: number): Promise<T> {
  if (fixedPort !== undefined) return start(fixedPort);
  let lastErr: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await start(await freePort());
    } catch (err) {
      lastErr = err;
      // oidentd says "Unable to set up listening socket"; the others name the bind.
      if (!/in use|EADDRINUSE|bind|listening socket/i.test(String(err))) throw err;
    }
  }
  throw lastErr;
}

function lookupId(file: string, name: string): number {
  const line = fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${name}:`));
  const id = line === undefined ? NaN : Number(line.split(':')[2]);
  if (!Number.isInteger(id)) throw new Error(`no ${name} in ${file}`);
  return id;
}

// --- smtp-sink -----------------------------------------------------------------------------

/**
 * smtp-sink on a free port: `smtp-sink -u nobody -c 127.0.0.1:PORT 128`, plus, with dumpDir,
 * `-d DIR/%Y%m%d%H%M%S.` (smtp-sink appends a random hex suffix: one file per transaction).
 * The readiness probe is one session: mind that with -n (terminate after count sessions).
 */
export async function startSmtpSink(opts: { dumpDir?: string; extraArgs?: readonly string[]; port?: number } = {}): Promise<SmtpSinkPeer> {
  const dumpDir = opts.dumpDir;
  if (dumpDir !== undefined) {
    await fsp.mkdir(dumpDir, { recursive: true });
    await fsp.chown(dumpDir, NOBODY_UID, NOBODY_GID); // smtp-sink writes as nobody
  }
  return withPortRetry(async (port) => {
    const args = ['-u', 'nobody', '-c'];
    if (dumpDir !== undefined) args.push('-d', `${dumpDir}/%Y%m%d%H%M%S.`);
    args.push(...(opts.extraArgs ?? []), `127.0.0.1:${port}`, '128');
    const sp = spawnDaemon('smtp-sink', args);
    const stop = await supervise(sp, { ready: () => waitReady('smtp-sink', port, sp, () => '') });
    return {
      name: 'smtp-sink',
      port,
      pid: sp.pid,
      dumpDir,
      received: () => {
        const out = sp.output();
        const at = out.lastIndexOf('mesg=');
        return at === -1 ? 0 : parseInt(out.slice(at + 5), 10);
      },
      files: () => {
        if (dumpDir === undefined) return [];
        return fs
          .readdirSync(dumpDir)
          .map((n) => path.join(dumpDir, n))
          .sort();
      },
      stop,
    };
  }, opts.port);
}

export interface SinkDump {
  readonly mailArgs: string;
  readonly rcptArgs: string[];
  readonly helo: string | undefined;
  /** The message as received, CRLF turned into LF by smtp-sink, dots already un-stuffed. */
  readonly body: Buffer;
}

/** Parses one smtp-sink dump file (see smtp-sink(1), "DUMP FILE FORMAT"). */
export function parseSinkDump(file: string): SinkDump {
  const raw = fs.readFileSync(file);
  const text = raw.toString('latin1');
  const rcptArgs: string[] = [];
  let mailArgs = '';
  let helo: string | undefined;
  let pos = 0;
  for (;;) {
    const nl = text.indexOf('\n', pos);
    if (nl === -1) throw new Error(`${file}: no Received: line`);
    const line = text.slice(pos, nl);
    pos = nl + 1;
    if (line.startsWith('X-Mail-Args: ')) mailArgs = line.slice(13);
    else if (line.startsWith('X-Rcpt-Args: ')) rcptArgs.push(line.slice(13));
    else if (line.startsWith('X-Helo-Args: ')) helo = line.slice(13);
    else if (line.startsWith('Received: ')) break;
  }
  // Received: is three lines (two continuations), then the message, then one empty line.
  for (let i = 0; i < 2; i++) pos = text.indexOf('\n', pos) + 1;
  let end = raw.length;
  if (end > pos && raw[end - 1] === 10) end -= 1;
  return { mailArgs, rcptArgs, helo, body: raw.subarray(pos, end) };
}

// --- Postfix -------------------------------------------------------------------------------

export interface PostfixOptions {
  /** virtual_mailbox_domains. */
  readonly domains: readonly string[];
  /** Local parts with a mailbox in every domain; default alice, bob, carol, dave, postmaster. */
  readonly users?: readonly string[];
  /** Extra main.cf lines ("name = value"). */
  readonly mainCf?: readonly string[];
}

const POSTFIX_SERVICES = [
  'pickup unix n - n 60 1 pickup',
  'cleanup unix n - n - 0 cleanup',
  'qmgr unix n - n 300 1 qmgr',
  'rewrite unix - - n - - trivial-rewrite',
  'bounce unix - - n - 0 bounce',
  'defer unix - - n - 0 bounce',
  'trace unix - - n - 0 bounce',
  'verify unix - - n - 1 verify',
  'flush unix n - n 1000? 0 flush',
  'proxymap unix - - n - - proxymap',
  'proxywrite unix - - n - 1 proxymap',
  'smtp unix - - n - - smtp',
  'relay unix - - n - - smtp',
  'showq unix n - n - - showq',
  'error unix - - n - - error',
  'retry unix - - n - - error',
  'discard unix - - n - - discard',
  'virtual unix - n n - - virtual',
  'anvil unix - - n - 1 anvil',
  'scache unix - - n - 1 scache',
  'postlog unix-dgram n - n - 1 postlogd',
];

/** Creates the queue tree as post-install would, so `start-fg` can skip its slow check (quick-start). */
async function makePostfixQueue(queue: string, data: string): Promise<void> {
  const postfixUid = lookupId('/etc/passwd', 'postfix');
  const postdropGid = lookupId('/etc/group', 'postdrop');
  await fsp.mkdir(queue, { mode: 0o755 });
  const dirs: [string, number, number][] = [
    ['active', 0o700, 0],
    ['bounce', 0o700, 0],
    ['corrupt', 0o700, 0],
    ['defer', 0o700, 0],
    ['deferred', 0o700, 0],
    ['flush', 0o700, 0],
    ['hold', 0o700, 0],
    ['incoming', 0o700, 0],
    ['private', 0o700, 0],
    ['saved', 0o700, 0],
    ['trace', 0o700, 0],
    ['maildrop', 0o730, postdropGid],
    ['public', 0o710, postdropGid],
  ];
  for (const [name, mode, gid] of dirs) {
    const d = path.join(queue, name);
    await fsp.mkdir(d);
    await fsp.chown(d, postfixUid, gid);
    await fsp.chmod(d, mode);
  }
  await fsp.mkdir(path.join(queue, 'pid'), { mode: 0o755 });
  await fsp.mkdir(data, { mode: 0o700 });
  await fsp.chown(data, postfixUid, 0);
  await fsp.writeFile(path.join(queue, 'quick-start'), '');
}

/**
 * A private Postfix that accepts mail for users@domains into Maildirs under its own dir and
 * rejects unknown users (550 5.1.1). Started with `postfix -c DIR start-fg`, stopped with
 * `postfix -c DIR stop` and, if needed, by killing the master's process group.
 */
export async function startPostfix(opts: PostfixOptions): Promise<MailStorePeer> {
  const users = opts.users ?? ['alice', 'bob', 'carol', 'dave', 'postmaster'];
  const domains = opts.domains.map((d) => d.toLowerCase());
  return withPortRetry(async (port) => {
    const dir = await makeTempDir('postfix');
    const etc = path.join(dir, 'etc');
    const queue = path.join(dir, 'queue');
    const logDir = path.join(dir, 'log');
    const vmail = path.join(dir, 'vmail');
    const maillog = path.join(logDir, 'maillog');
    await fsp.mkdir(etc);
    await fsp.mkdir(logDir);
    await fsp.mkdir(vmail);
    await fsp.chown(vmail, NOBODY_UID, NOBODY_GID);
    await makePostfixQueue(queue, path.join(dir, 'data'));
    const mapLines = domains.flatMap((d) => users.map((u) => `${u.toLowerCase()}@${d} ${d}/${u.toLowerCase()}/`));
    await fsp.writeFile(path.join(etc, 'vmailbox'), mapLines.join('\n') + '\n');
    const main = [
      'compatibility_level = 3.6',
      `queue_directory = ${queue}`,
      `data_directory = ${path.join(dir, 'data')}`,
      `maillog_file = ${maillog}`,
      `maillog_file_prefixes = ${logDir}`,
      'mail_owner = postfix',
      'setgid_group = postdrop',
      'myhostname = postfix.mxguard.test',
      'mydestination =',
      'inet_interfaces = 127.0.0.1',
      'inet_protocols = ipv4',
      'mynetworks = 127.0.0.0/8',
      `virtual_mailbox_domains = ${domains.join(', ')}`,
      `virtual_mailbox_maps = texthash:${path.join(etc, 'vmailbox')}`,
      `virtual_mailbox_base = ${vmail}`,
      `virtual_uid_maps = static:${NOBODY_UID}`,
      `virtual_gid_maps = static:${NOBODY_GID}`,
      'default_transport = error:nope',
      'smtputf8_enable = no',
      'alias_maps =',
      'alias_database =',
      'biff = no',
      'smtpd_banner = $myhostname ESMTP',
      ...(opts.mainCf ?? []),
    ];
    await fsp.writeFile(path.join(etc, 'main.cf'), main.join('\n') + '\n');
    const master = [`127.0.0.1:${port} inet n - n - - smtpd`, ...POSTFIX_SERVICES];
    await fsp.writeFile(path.join(etc, 'master.cf'), master.join('\n') + '\n');
    // Postfix re-reads a config file modified within the last second until it settles (~2 s):
    // date the files back so it starts at once.
    const past = new Date(Date.now() - 60_000);
    for (const f of ['main.cf', 'master.cf', 'vmailbox']) await fsp.utimes(path.join(etc, f), past, past);

    const sp = spawnDaemon('postfix', ['-c', etc, 'start-fg'], { cwd: dir });
    const masterPid = (): number | undefined => {
      try {
        const n = Number(fs.readFileSync(path.join(queue, 'pid', 'master.pid'), 'utf8').trim());
        return Number.isInteger(n) && n > 0 ? n : undefined;
      } catch {
        return undefined;
      }
    };
    const hardKill = (): void => {
      const m = masterPid();
      if (m !== undefined) killGroup(m, 'SIGKILL');
      killGroup(sp.pid, 'SIGKILL');
    };
    const stop = await supervise(sp, {
      ready: () => waitReady('postfix', port, sp, () => readTail(maillog)),
      lastResort: hardKill,
      halt: async () => {
        const m = masterPid();
        spawnSync('postfix', ['-c', etc, 'stop'], { timeout: STOP_TIMEOUT_MS, stdio: 'ignore' });
        await Promise.race([sp.exited, deadline(STOP_TIMEOUT_MS)]);
        if (m !== undefined) {
          await waitUntil(() => !isAlive(m), 5000);
          killGroup(m, 'SIGKILL');
        }
        await stopDaemon(sp, 'SIGTERM');
      },
      cleanup: () => fsp.rm(dir, { recursive: true, force: true }),
    });
    return {
      name: 'postfix',
      port,
      get pid(): number {
        return masterPid() ?? sp.pid;
      },
      dir,
      maildirFor: (addr: string) => {
        const at = addr.lastIndexOf('@');
        return path.join(vmail, addr.slice(at + 1).toLowerCase(), addr.slice(0, at).toLowerCase());
      },
      log: () => readTail(maillog, 1_000_000),
      stop,
    };
  });
}

// --- Dovecot LMTP --------------------------------------------------------------------------

export interface DovecotOptions {
  /**
   * Full addresses with a mailbox; unknown ones are refused at RCPT (550 5.1.1).
   * Default: a static userdb with allow_all_users=yes (every recipient accepted).
   */
  readonly users?: readonly string[];
}

/** Dovecot's LMTP service alone (`dovecot -c FILE -F`), delivering to <dir>/mail/<domain>/<user>/Maildir. */
/**
 * Writes dir/dovecot.conf (the common settings, `settings`, and an LMTP listener on `port`, which
 * also serves as the readiness probe), runs `dovecot -c FILE -F` and waits for its banner;
 * stop() ends it and removes `dir`.
 */
async function runDovecot(dir: string, settings: readonly string[], port: number, logFile: string): Promise<{ pid: number; stop(): Promise<void> }> {
  const conf = [
    'protocols = lmtp',
    'ssl = no',
    'listen = 127.0.0.1',
    `base_dir = ${path.join(dir, 'run')}`,
    `state_dir = ${path.join(dir, 'state')}`,
    `log_path = ${logFile}`,
    ...settings,
    `service lmtp {\n  inet_listener lmtp {\n    address = 127.0.0.1\n    port = ${port}\n  }\n}`,
  ];
  const confFile = path.join(dir, 'dovecot.conf');
  await fsp.writeFile(confFile, conf.join('\n') + '\n');
  const sp = spawnDaemon('dovecot', ['-c', confFile, '-F'], { cwd: dir });
  const stop = await supervise(sp, { ready: () => waitReady('dovecot', port, sp, () => readTail(logFile)), cleanup: () => fsp.rm(dir, { recursive: true, force: true }) });
  return { pid: sp.pid, stop };
}

export async function startDovecotLmtp(opts: DovecotOptions = {}): Promise<MailStorePeer> {
  return withPortRetry(async (port) => {
    const dir = await makeTempDir('dovecot');
    const mail = path.join(dir, 'mail');
    const logFile = path.join(dir, 'dovecot.log');
    for (const d of ['run', 'state']) await fsp.mkdir(path.join(dir, d));
    await fsp.mkdir(mail);
    await fsp.chown(mail, NOBODY_UID, NOBODY_GID);
    let userdb: string;
    if (opts.users === undefined) {
      userdb = `userdb {\n  driver = static\n  args = uid=${NOBODY_UID} gid=${NOBODY_GID} home=${mail}/%d/%n allow_all_users=yes\n}`;
    } else {
      const lines = opts.users.map((a) => {
        const addr = a.toLowerCase();
        const at = addr.lastIndexOf('@');
        return `${addr}::${NOBODY_UID}:${NOBODY_GID}::${mail}/${addr.slice(at + 1)}/${addr.slice(0, at)}::`;
      });
      await fsp.writeFile(path.join(dir, 'users'), lines.join('\n') + '\n');
      userdb = `userdb {\n  driver = passwd-file\n  args = ${path.join(dir, 'users')}\n}`;
    }
    const conf = [
      'mail_location = maildir:~/Maildir',
      'postmaster_address = postmaster@mxguard.test',
      'passdb {\n  driver = static\n  args = nopassword=y\n}',
      userdb,
    ];
    const { pid, stop } = await runDovecot(dir, conf, port, logFile);
    return {
      name: 'dovecot',
      port,
      pid,
      dir,
      maildirFor: (addr: string) => {
        const a = addr.toLowerCase();
        const at = a.lastIndexOf('@');
        return path.join(mail, a.slice(at + 1), a.slice(0, at), 'Maildir');
      },
      log: () => readTail(logFile, 1_000_000),
      stop,
    };
  });
}

// --- swaks ---------------------------------------------------------------------------------

/** Runs swaks with args; never throws for a non-zero exit; killed after timeoutMs (default 30 s). */
export function runSwaks(args: readonly string[], opts: { timeoutMs?: number; input?: string | Buffer } = {}): Promise<SwaksResult> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise((resolve) => {
    const child = spawn('swaks', args, { stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    const token = child.pid === undefined ? 0 : track(() => killQuietly(child.pid as number, 'SIGKILL'));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    const finish = (code: number | null, extra = ''): void => {
      clearTimeout(timer);
      untrack(token);
      resolve({ code, stdout, stderr: stderr + extra, timedOut });
    };
    child.once('error', (err) => finish(null, `\nspawn error: ${err.message}`));
    child.once('close', (code) => finish(code));
  });
}

// --- redis-server ---------------------------------------------------------------------------

export interface RedisPeer extends Peer {
  readonly url: string;
}

/** PING → +PONG: Redis is up and answering. */
function probeRedis(port: number): Promise<boolean> {
  return probeFirstLine(port, (l) => l.startsWith('+PONG'), 'PING\r\n');
}

/** A throwaway redis-server on loopback, nothing saved to disk (PEERS.md); `port` to reuse one. */
export async function startRedis(opts: { port?: number } = {}): Promise<RedisPeer> {
  return withPortRetry(async (port) => {
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--protected-mode', 'no'];
    const sp = spawnDaemon('redis-server', args);
    const stop = await supervise(sp, { ready: () => waitReady('redis-server', port, sp, () => '', probeRedis) });
    return {
      name: 'redis-server',
      port,
      pid: sp.pid,
      url: `redis://127.0.0.1:${port}`,
      stop,
    };
  }, opts.port);
}

// --- Dovecot's auth service -------------------------------------------------------------------

export interface DovecotAuthPeer extends Peer {
  /** The auth client socket (Dovecot's SASL protocol), for auth.dovecot_socket. */
  readonly socket: string;
  log(): string;
}

/**
 * A real Dovecot whose passdb is a passwd-file with these users and plain passwords, with its
 * auth client socket in its own directory. (Its LMTP listener only serves the readiness probe.)
 */
export async function startDovecotAuth(users: Readonly<Record<string, string>>): Promise<DovecotAuthPeer> {
  return withPortRetry(async (port) => {
    const dir = await makeTempDir('dovecot-auth');
    const logFile = path.join(dir, 'dovecot.log');
    for (const d of ['run', 'state', 'home']) await fsp.mkdir(path.join(dir, d), { mode: 0o755 });
    const passwd = path.join(dir, 'passwd');
    await fsp.writeFile(passwd, Object.entries(users).map(([u, p]) => `${u}:{PLAIN}${p}::::::`).join('\n') + '\n', { mode: 0o644 });
    const conf = [
      'auth_mechanisms = plain login',
      'auth_verbose = yes',
      `passdb {\n  driver = passwd-file\n  args = ${passwd}\n}`,
      `userdb {\n  driver = static\n  args = uid=${NOBODY_UID} gid=${NOBODY_GID} home=${path.join(dir, 'home')}/%u\n}`,
      'service auth {\n  unix_listener auth-client {\n    mode = 0666\n  }\n}',
    ];
    const { pid, stop } = await runDovecot(dir, conf, port, logFile);
    return { name: 'dovecot-auth', port, pid, socket: path.join(dir, 'run', 'auth-client'), log: () => readTail(logFile, 1_000_000), stop };
  });
}

/**
 * A Dovecot LMTP and a private Postfix (for `postfixDomains`), started together; if either
 * fails, the other is stopped and the failure thrown. `stop` stops both.
 */
export async function startDovecotAndPostfix(postfixDomains: readonly string[]): Promise<{ dovecot: MailStorePeer; postfix: MailStorePeer; stop: () => Promise<void> }> {
  const started = await Promise.allSettled([startDovecotLmtp(), startPostfix({ domains: postfixDomains })]);
  const running = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const stop = async (): Promise<void> => {
    for (const p of running.reverse()) await p.stop();
  };
  const failed = started.find((r) => r.status === 'rejected');
  if (failed) {
    await stop();
    throw failed.reason;
  }
  return { dovecot: running[0] as MailStorePeer, postfix: running[1] as MailStorePeer, stop };
}

/**
 * The complete messages smtp-sink has dumped, by Message-ID: the SHA-256 of each copy from its
 * "Message-ID:" line on, smtp-sink's LF turned back into CRLF. For test messages that start with
 * a Message-ID, end with a line `END <id>` (so a dump still being written is skipped) and have no
 * bare CR or LF.
 */
export function sinkMessageHashes(sink: SmtpSinkPeer): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const f of sink.files()) {
    let data: string;
    try {
      data = parseSinkDump(f).body.toString('latin1');
    } catch {
      continue; // still being written
    }
    const at = data.indexOf('Message-ID: <');
    if (at === -1) continue;
    const id = data.slice(at + 13, data.indexOf('>', at));
    if (!data.endsWith(`\nEND ${id}\n`)) continue;
    const hash = crypto.createHash('sha256').update(Buffer.from(data.slice(at).replaceAll('\n', '\r\n'), 'latin1')).digest('hex');
    out.set(id, [...(out.get(id) ?? []), hash]);
  }
  return out;
}
