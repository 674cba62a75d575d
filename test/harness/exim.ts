// A real Exim 4.96 (Debian's exim4-daemon-light) as a sending MTA, for what only Exim does: it
// writes the final "." and QUIT in one go and shuts its sending side (without TLS). The package
// is not installed (apt would remove Postfix): scripts/install-peers.sh unpacks it into
// /opt/mxguard-test-peers/exim (or $MXGUARD_EXIM_ROOT). The binary runs with a private
// configuration (-C) and spool: its daemon listens on a free loopback port (SMTP submission),
// every message goes by a manualroute router and an smtp transport, without TLS, to `relayTo`.
//
// The daemon runs in the foreground (-bdf) in its own process group and is supervised like the
// other peers (processes.ts): tracked from spawn, stopped by PID, its group killed at the end
// (delivery processes it forked included). Each command-line run (`send`, `flushQueue`, …) is
// tracked the same way and killed when it overruns or when the peer stops.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { makeTempDir, waitReady, withPortRetry } from './peers.ts';
import { killGroup, spawnDaemon, supervise, track, untrack } from './processes.ts';

export const EXIM_ROOT = process.env.MXGUARD_EXIM_ROOT ?? '/opt/mxguard-test-peers/exim';
export const EXIM = path.join(EXIM_ROOT, 'usr/sbin/exim4');
/** The user the Debian binary is built to run as (EXIM_USER=ref:Debian-exim). */
const EXIM_USER = 'Debian-exim';
const RUN_TIMEOUT_MS = 30_000;

export interface EximOptions {
  /** Where every message goes (manualroute; the smtp transport, never TLS). */
  readonly relayTo: { readonly host: string; readonly port: number };
  /** primary_hostname, also Exim's EHLO name; default exim.test. */
  readonly hostname?: string;
  /** The retry rule for every host and error; default F,1m,10s (queue runs retry after 10 s). */
  readonly retry?: string;
}

export interface EximRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

export interface EximPeer {
  readonly name: 'exim';
  /** Exim's own SMTP listener on 127.0.0.1 (its daemon takes submissions here). */
  readonly port: number;
  readonly pid: number;
  /** Its private directory: exim.conf, spool/, log/. */
  readonly dir: string;
  readonly configFile: string;
  /** Runs `exim4 -C exim.conf ARGS` with `input` on standard input. */
  run(args: readonly string[], input?: string, timeoutMs?: number): Promise<EximRun>;
  /**
   * Submits a message on the command line and delivers it at once in the foreground (-odi),
   * with -v: the result's stderr holds the SMTP dialogue with `relayTo`.
   */
  send(from: string, to: readonly string[], message: string): Promise<EximRun>;
  /** A forced queue run (-qff): whatever waits in the queue is tried again now, retry times or not. */
  flushQueue(): Promise<EximRun>;
  /** Messages in the queue (-bpc). */
  queueCount(): Promise<number>;
  /** The main log so far ("<=" received, "=>" delivered, "==" deferred, "**" bounced). */
  mainlog(): string;
  /** Stops the daemon and every command still running, and removes the directory; safe to call twice. */
  stop(): Promise<void>;
}

function eximConfig(opts: EximOptions, dir: string, port: number): string {
  // Run as root (the tests' case), Exim gives up root for Debian-exim: the directories it writes
  // are that user's. Run by anyone else, it stays that user throughout.
  const self = os.userInfo();
  const asUser = self.uid === 0 ? [] : [`exim_user = ${self.uid}`, `exim_group = ${self.gid}`];
  return [
    `exim_path = ${EXIM}`,
    ...asUser,
    `primary_hostname = ${opts.hostname ?? 'exim.test'}`,
    `qualify_domain = ${opts.hostname ?? 'exim.test'}`,
    `spool_directory = ${path.join(dir, 'spool')}`,
    `log_file_path = ${path.join(dir, 'log')}/%slog`,
    `pid_file_path = ${path.join(dir, 'exim.pid')}`,
    `daemon_smtp_ports = ${port}`,
    // A port taken in between: fail at once (withPortRetry tries another), not after 9 × 30 s.
    'daemon_startup_retries = 0',
    'local_interfaces = <; 127.0.0.1',
    // No DNS, no ident, no TLS, no environment: nothing outside this directory and loopback.
    'host_lookup =',
    'rfc1413_hosts =',
    'tls_advertise_hosts =',
    'keep_environment =',
    'acl_smtp_rcpt = accept',
    'log_selector = +smtp_protocol_error +smtp_syntax_error +received_recipients -lost_incoming_connection',
    '',
    'begin routers',
    'to_relay:',
    '  driver = manualroute',
    '  domains = *',
    `  route_list = * ${opts.relayTo.host}`,
    // The relay is on this machine: send to it all the same.
    '  self = send',
    '  transport = to_relay',
    '  no_more',
    '',
    'begin transports',
    'to_relay:',
    '  driver = smtp',
    `  port = ${opts.relayTo.port}`,
    '  hosts_avoid_tls = *',
    '  allow_localhost = true',
    '',
    'begin retry',
    `*  *  ${opts.retry ?? 'F,1m,10s'}`,
    '',
  ].join('\n');
}

/** Exim's uid and gid when it gives up root. */
function eximIds(): { uid: number; gid: number } {
  const line = fs
    .readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${EXIM_USER}:`));
  const [uid, gid] = line === undefined ? [] : line.split(':').slice(2, 4).map(Number);
  if (uid === undefined || gid === undefined || !Number.isInteger(uid) || !Number.isInteger(gid)) {
    throw new Error(`no user ${EXIM_USER}: run scripts/install-peers.sh`);
  }
  return { uid, gid };
}

/** Starts a private Exim daemon on a free port, relaying everything to `relayTo`. */
export async function startExim(opts: EximOptions): Promise<EximPeer> {
  if (!fs.existsSync(EXIM)) throw new Error(`${EXIM} is missing: run scripts/install-peers.sh`);
  const owner = process.getuid?.() === 0 ? eximIds() : undefined;
  return withPortRetry(async (port) => {
    const dir = await makeTempDir('exim');
    const configFile = path.join(dir, 'exim.conf');
    const logDir = path.join(dir, 'log');
    for (const sub of ['spool', 'log']) {
      await fsp.mkdir(path.join(dir, sub), { mode: 0o750 });
      if (owner) await fsp.chown(path.join(dir, sub), owner.uid, owner.gid);
    }
    await fsp.writeFile(configFile, eximConfig(opts, dir, port), { mode: 0o644 });

    const running = new Set<ChildProcess>();
    const run = (args: readonly string[], input?: string, timeoutMs = RUN_TIMEOUT_MS): Promise<EximRun> =>
      new Promise((resolve) => {
        const child = spawn(EXIM, ['-C', configFile, ...args], { cwd: dir, detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
        running.add(child);
        const pid = child.pid;
        const token = pid === undefined ? undefined : track(() => killGroup(pid, 'SIGKILL'));
        let stdout = '';
        let stderr = '';
        let timedOut = false;
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
        const timer = setTimeout(() => {
          timedOut = true;
          if (pid !== undefined) killGroup(pid, 'SIGKILL');
        }, timeoutMs);
        const finish = (code: number | null): void => {
          clearTimeout(timer);
          running.delete(child);
          if (token !== undefined) untrack(token);
          resolve({ code, stdout, stderr, timedOut });
        };
        child.once('error', (err) => {
          stderr += `\nspawn error: ${err.message}`;
          finish(null);
        });
        child.once('close', (code) => finish(code));
        child.stdin.on('error', () => undefined);
        child.stdin.end(input ?? '');
      });
    const mainlog = (): string => {
      try {
        return fs.readFileSync(path.join(logDir, 'mainlog'), 'utf8');
      } catch {
        return '';
      }
    };

    const sp = spawnDaemon(EXIM, ['-C', configFile, '-bdf'], { cwd: dir });
    const stop = await supervise(sp, {
      ready: () => waitReady('exim', port, sp, mainlog),
      cleanup: async () => {
        for (const child of running) if (child.pid !== undefined) killGroup(child.pid, 'SIGKILL');
        await fsp.rm(dir, { recursive: true, force: true });
      },
    });
    return {
      name: 'exim',
      port,
      pid: sp.pid,
      dir,
      configFile,
      run,
      // -oi: a line holding only "." is text, not the end of the message.
      send: (from, to, message) => run(['-odi', '-oi', '-v', '-f', from, ...to], message),
      flushQueue: () => run(['-qff']),
      async queueCount() {
        const r = await run(['-bpc']);
        const n = Number(r.stdout.trim());
        if (r.code !== 0 || !Number.isInteger(n)) throw new Error(`exim -bpc failed (${r.code}): ${r.stdout}${r.stderr}`);
        return n;
      },
      mainlog,
      stop,
    };
  });
}
