// A real rspamd 3.4 for the scanner tests (PEERS.md, "Content filters"): the stock
// /etc/rspamd/rspamd.conf with private LOCAL_CONFDIR, DBDIR, RUNDIR and LOGDIR, only the normal
// worker (on a free loopback port), nothing that needs the network: fuzzy_check, rbl and asn off,
// DNS sent to the given resolver (a dnsmasq of the test) or to a closed loopback port.
//
// What makes it start in ~1.5 s instead of ~30 s: rspamd compiles its whole public-suffix list
// (~9600 TLDs) into a URL matcher at every start; here url_tld points at a list of a few TLDs, and
// hyperscan is off (its rule database would be compiled on the first start too). Neither matters
// for what the tests look at (GTUBE, actions, envelope, milter headers).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { makeTempDir, waitReady, withPortRetry } from './peers.ts';
import { killGroup, spawnDaemon, supervise } from './processes.ts';

export interface RspamdPeer {
  readonly name: 'rspamd';
  readonly port: number;
  readonly pid: number;
  /** http://127.0.0.1:PORT, for the scanner's url. */
  readonly url: string;
  /** Its private directory (conf/, db/, run/, log/). */
  readonly dir: string;
  /** rspamd.log so far (one "rspamd_task_write_log" line per message: qid, ip, user, from, rcpts, symbols). */
  log(): string;
  stop(): Promise<void>;
}

export interface RspamdOptions {
  /** "127.0.0.1:PORT" of a resolver; default a closed loopback port (every lookup fails at once). */
  readonly dns?: string;
  /** Files for local.d (name → content), e.g. multimap.conf; ${LOCAL_CONFDIR} names conf/. */
  readonly localD?: Readonly<Record<string, string>>;
  /** Other files under conf/ (maps), name → content. */
  readonly files?: Readonly<Record<string, string>>;
}

/** The TLDs the tests' addresses use (the URL matcher needs at least some). */
const TLDS = ['com', 'net', 'org', 'test', 'example', 'invalid', 'localhost'];

/** rspamd answers GET /ping with "pong" once its normal worker runs. */
function probePing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/ping', timeout: 1000, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve(res.statusCode === 200 && body.includes('pong')));
      res.on('error', () => resolve(false));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

export async function startRspamd(opts: RspamdOptions = {}): Promise<RspamdPeer> {
  return withPortRetry(async (port) => {
    const dir = await makeTempDir('rspamd');
    const conf = path.join(dir, 'conf');
    const localD = path.join(conf, 'local.d');
    const overrideD = path.join(conf, 'override.d');
    for (const d of [localD, overrideD]) await fsp.mkdir(d, { recursive: true, mode: 0o755 });
    const own = ['db', 'run', 'log'].map((d) => path.join(dir, d));
    const root = process.getuid?.() === 0;
    for (const d of own) {
      await fsp.mkdir(d, { mode: 0o755 });
      // rspamd drops to _rspamd (root only: otherwise it runs as we do).
      if (root) await fsp.chown(d, ...ids('_rspamd'));
    }
    const tld = path.join(conf, 'tld.dat');
    const files: Record<string, string> = {
      // override.d (priority 10) replaces the stock bind_socket instead of adding to it.
      [path.join(overrideD, 'worker-normal.inc')]: `bind_socket = "127.0.0.1:${port}";\ncount = 1;\n`,
      [path.join(overrideD, 'worker-controller.inc')]: 'enabled = false;\n',
      [path.join(overrideD, 'worker-proxy.inc')]: 'enabled = false;\n',
      [path.join(localD, 'fuzzy_check.conf')]: 'enabled = false;\n',
      [path.join(localD, 'rbl.conf')]: 'enabled = false;\n',
      [path.join(localD, 'asn.conf')]: 'enabled = false;\n',
      [path.join(localD, 'options.inc')]: [
        `dns { nameserver = ["${opts.dns ?? '127.0.0.1:9'}"]; timeout = 1s; retransmits = 1; }`,
        'disable_hyperscan = true;',
        `url_tld = "${tld}";`,
        '',
      ].join('\n'),
      [tld]: TLDS.join('\n') + '\n',
    };
    for (const [name, text] of Object.entries(opts.localD ?? {})) files[path.join(localD, name)] = text;
    for (const [name, text] of Object.entries(opts.files ?? {})) files[path.join(conf, name)] = text;
    for (const [file, text] of Object.entries(files)) {
      await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o755 });
      await fsp.writeFile(file, text, { mode: 0o644 });
    }
    const logFile = path.join(dir, 'log', 'rspamd.log');
    const args = ['-f', '-c', '/etc/rspamd/rspamd.conf', ...(root ? ['-u', '_rspamd', '-g', '_rspamd'] : [])];
    args.push(`--var=LOCAL_CONFDIR=${conf}`, `--var=DBDIR=${own[0]}`, `--var=RUNDIR=${own[1]}`, `--var=LOGDIR=${own[2]}`);
    const sp = spawnDaemon('rspamd', args);
    const stop = await supervise(sp, {
      ready: () => waitReady('rspamd', port, sp, () => readText(logFile).slice(-6000), probePing),
      lastResort: () => killGroup(sp.pid, 'SIGKILL'),
      cleanup: () => fsp.rm(dir, { recursive: true, force: true }),
    });
    return { name: 'rspamd', port, pid: sp.pid, url: `http://127.0.0.1:${port}`, dir, log: () => readText(logFile), stop };
  });
}

/** uid and gid of a system user, from /etc/passwd. */
function ids(user: string): [number, number] {
  const line = fs
    .readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${user}:`));
  const f = line?.split(':') ?? [];
  const uid = Number(f[2]);
  const gid = Number(f[3]);
  if (!Number.isInteger(uid) || !Number.isInteger(gid)) throw new Error(`no user ${user} (is rspamd installed? scripts/install-peers.sh)`);
  return [uid, gid];
}
