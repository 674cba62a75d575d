// Real DNS on loopback for the tests (PEERS.md, "DNS on loopback"):
//
// - startRbldnsd: the DNS blocklists (ip4set/ip6trie/dnset … zones), with a query log so a test
//   can see which questions reached it;
// - startDnsmasq: ordinary records (A, AAAA, MX, TXT, PTR, CNAME) for test domains, NXDOMAIN for
//   unknown names under its local zones, forwarding of chosen zones (to rbldnsd), and zones
//   that answer SERVFAIL or never answer (timeouts);
// - startUdpStub: the two misbehaving upstreams behind those zones, in this process: one that
//   answers every question with SERVFAIL, one that swallows every packet.
//
// Each daemon runs on a port free for both UDP and TCP, waits until it answers a real query
// (bounded), and is stopped by PID; a process 'exit' / signal handler kills whatever is still
// running. Surprises worth knowing (measured with dnsmasq 2.90 and rbldnsd 1.0pre 20210120):
// - dnsmasq forwarding a zone to a closed port never answers (the client times out): a real
//   SERVFAIL needs an upstream that says SERVFAIL, hence the stub; REFUSED from upstream is
//   passed on as REFUSED.
// - dnsmasq's local records have TTL 0 unless local-ttl is set (we set 300); cache-size=0 here,
//   so every forwarded question reaches rbldnsd and caching is the resolver's own.
// - rbldnsd serves UDP only; it answers REFUSED for zones it does not serve.
// - One burst of a few hundred UDP questions overflows the receive buffer of either daemon
//   (about 200 KiB by default): packets are dropped, the client sees timeouts.
import dgram from 'node:dgram';
import dns from 'node:dns';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ptrName } from '../../src/dns/resolver.ts';
import { freePort, makeTempDir, sleep, waitUntil } from './peers.ts';
import { killGroup, spawnDaemon, supervise, type Spawned } from './processes.ts';

const READY_TIMEOUT_MS = 15_000;
const NOBODY_UID = 65534;
const NOBODY_GID = 65534;

// --- process bookkeeping (as in peers.ts) ---------------------------------------------------



/** Kills a daemon's group and removes its temp dir, synchronously (for the 'exit' handler). */
function lastResort(pid: number, dir: string): () => void {
  return () => {
    killGroup(pid, 'SIGKILL');
    try {
      fs.rmSync(dir, { recursive: true, force: true });
    } catch {
      // Best effort.
    }
  };
}




/** The daemons live in /usr/sbin, which a non-root PATH may lack. */
function sbin(name: string): string {
  const full = `/usr/sbin/${name}`;
  return fs.existsSync(full) ? full : name;
}



// --- ports and probes -----------------------------------------------------------------------

function udpFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    s.once('error', () => {
      s.close();
      resolve(false);
    });
    s.bind(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** A port on 127.0.0.1 that was free a moment ago for TCP and for UDP (DNS wants both). */
export async function freeDnsPort(): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const port = await freePort();
    if (await udpFree(port)) return port;
  }
  throw new Error('no port free for both TCP and UDP');
}

/**
 * One real question to 127.0.0.1:port: true as soon as the server answers anything (an answer,
 * NXDOMAIN, NODATA, REFUSED); false on timeout or when nothing listens.
 */
async function answers(port: number, name: string): Promise<boolean> {
  const r = new dns.promises.Resolver({ timeout: 300, tries: 1 });
  r.setServers([`127.0.0.1:${port}`]);
  try {
    await r.resolve4(name);
    return true;
  } catch (err) {
    const code = (err as { code?: string }).code;
    return code !== dns.TIMEOUT && code !== dns.CONNREFUSED && code !== dns.CANCELLED;
  }
}

async function waitAnswering(what: string, port: number, d: Spawned, probeName: string, logOf: () => string): Promise<void> {
  const end = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < end && !d.hasExited()) {
    if (await answers(port, probeName)) return;
    await sleep(50);
  }
  const why = d.hasExited() ? `exited with ${d.child.exitCode ?? d.child.signalCode}` : `not answering after ${READY_TIMEOUT_MS} ms`;
  const log = `${d.output()}\n${logOf()}`.trim();
  throw new Error(`${what} on 127.0.0.1:${port} ${why}${log ? `: ${log.slice(-1500)}` : ''}`);
}

/** Runs start on fresh ports until one is not taken in between (at most 3 tries). */
async function withPortRetry<T>(start: (port: number) => Promise<T>): Promise<T> {
  let lastErr: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await start(await freeDnsPort());
    } catch (err) {
      lastErr = err;
      if (!/in use|EADDRINUSE|bind/i.test(String(err))) throw err;
    }
  }
  throw lastErr;
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

// --- misbehaving upstreams ------------------------------------------------------------------

export interface UdpStub {
  readonly port: number;
  /** Packets received so far. */
  received(): number;
  stop(): Promise<void>;
}

/**
 * A UDP "name server" on 127.0.0.1 in this process: `servfail` answers every question with
 * SERVFAIL (the question echoed, no records); `blackhole` reads every packet and never answers.
 */
export async function startUdpStub(mode: 'servfail' | 'blackhole'): Promise<UdpStub> {
  const sock = dgram.createSocket('udp4');
  let received = 0;
  sock.on('message', (msg, rinfo) => {
    received++;
    if (mode === 'blackhole' || msg.length < 12) return;
    // Header: same ID, QR=1, opcode and RD copied, RA=1, RCODE=2; then the question only.
    let i = 12;
    while (i < msg.length && msg[i] !== 0) i += (msg[i] ?? 0) + 1;
    const end = Math.min(msg.length, i + 5);
    const reply = Buffer.from(msg.subarray(0, end));
    reply[2] = 0x80 | ((msg[2] ?? 0) & 0x79);
    reply[3] = 0x80 | 2;
    reply.writeUInt16BE(1, 4);
    reply.writeUInt16BE(0, 6);
    reply.writeUInt16BE(0, 8);
    reply.writeUInt16BE(0, 10);
    sock.send(reply, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => resolve());
  });
  let stopped = false;
  return {
    port: sock.address().port,
    received: () => received,
    stop: () => {
      if (stopped) return Promise.resolve();
      stopped = true;
      return new Promise<void>((resolve) => sock.close(() => resolve()));
    },
  };
}

// --- rbldnsd --------------------------------------------------------------------------------

export interface RblDataset {
  readonly type: 'ip4set' | 'ip4tset' | 'ip4trie' | 'ip6trie' | 'ip6tset' | 'dnset';
  /**
   * One entry per line as rbldnsd reads it: "192.0.2.99", "198.51.100.0/24",
   * "192.0.2.7 :127.0.0.4:another reason", "!192.0.2.8", "spammer.test", ".evil.test" …
   */
  readonly entries: readonly string[];
  /** The default A answer for listed entries; 127.0.0.2 when unset. */
  readonly a?: string;
  /** The default TXT template; `$` becomes the IP (or domain) asked about. No TXT when unset. */
  readonly txt?: string;
  /** $TTL for this dataset, seconds (else the server's `ttl`). */
  readonly ttl?: number;
}

export interface RbldnsdOptions {
  /** zone → its dataset(s); several datasets (e.g. ip4set and ip6trie) make one zone. */
  readonly zones: Readonly<Record<string, RblDataset | readonly RblDataset[]>>;
  /** Default TTL of answers (rbldnsd -t), seconds; rbldnsd's own default is 35 minutes. */
  readonly ttl?: number;
  /** The SOA minimum (the negative-caching TTL a zone announces), seconds; default 60. */
  readonly soaMinimum?: number;
}

export interface RblQuery {
  readonly name: string;
  readonly type: string;
  /** NOERROR, NXDOMAIN, REFUSED … */
  readonly rcode: string;
  readonly answers: number;
}

export interface RbldnsdPeer {
  readonly name: 'rbldnsd';
  readonly port: number;
  readonly pid: number;
  /** "127.0.0.1:PORT", for dns.servers. */
  readonly server: string;
  readonly dir: string;
  /** Questions answered since it became ready, oldest first (harness probes left out). */
  queries(): RblQuery[];
  /** Resolves once everything rbldnsd answered so far is in its query log (asks a marker question). */
  sync(): Promise<void>;
  log(): string;
  stop(): Promise<void>;
}

const HARNESS_LABEL = '_mxg-harness-';

function datasetText(zone: string, d: RblDataset, soaMinimum: number): string {
  const lines = [`$SOA 0 ns.${zone} hostmaster.${zone} 1 3600 600 86400 ${soaMinimum}`];
  if (d.ttl !== undefined) lines.push(`$TTL ${d.ttl}`);
  if (d.a !== undefined || d.txt !== undefined) lines.push(`:${d.a ?? '127.0.0.2'}:${d.txt ?? ''}`);
  for (const e of d.entries) {
    if (/[\r\n]/.test(e)) throw new Error(`rbldnsd entry with a line break: ${JSON.stringify(e)}`);
    lines.push(e);
  }
  return lines.join('\n') + '\n';
}

function parseRblLog(text: string): RblQuery[] {
  const out: RblQuery[] = [];
  for (const line of text.split('\n')) {
    // "1795321511 127.0.0.1 99.2.0.192.bl.test A IN: NOERROR/1/52"
    const m = /^\d+ \S+ (\S+) (\S+) \S+: ([A-Z]+)\/(\d+)\/\d+$/.exec(line.trim());
    if (m === null) continue;
    const [, name = '', type = '', rcode = '', n = '0'] = m;
    if (name.toLowerCase().startsWith(HARNESS_LABEL)) continue;
    out.push({ name: name.toLowerCase(), type, rcode, answers: Number(n) });
  }
  return out;
}

/**
 * rbldnsd on a free loopback port, chrooted into its own temp dir (owned by nobody, which it
 * runs as): `rbldnsd -n -u nobody:nogroup -r DIR -b 127.0.0.1/PORT -l +query.log ZONE:TYPE:FILE…`.
 */
export async function startRbldnsd(opts: RbldnsdOptions): Promise<RbldnsdPeer> {
  const zoneNames = Object.keys(opts.zones);
  const first = zoneNames[0];
  if (first === undefined) throw new Error('startRbldnsd: no zones');
  return withPortRetry(async (port) => {
    const dir = await makeTempDir('rbldnsd');
    const specs: string[] = [];
    let n = 0;
    for (const zone of zoneNames) {
      const spec = opts.zones[zone];
      const sets: readonly RblDataset[] = spec === undefined ? [] : Array.isArray(spec) ? spec : [spec as RblDataset];
      for (const d of sets) {
        const file = `${zone}.${n++}.${d.type}`;
        await fsp.writeFile(path.join(dir, file), datasetText(zone, d, opts.soaMinimum ?? 60), { mode: 0o644 });
        specs.push(`${zone}:${d.type}:${file}`);
      }
    }
    await fsp.chown(dir, NOBODY_UID, NOBODY_GID); // it writes query.log after chroot + setuid
    const logFile = path.join(dir, 'query.log');
    const args = ['-n', '-u', 'nobody:nogroup', '-r', dir, '-b', `127.0.0.1/${port}`, '-l', '+query.log'];
    if (opts.ttl !== undefined) args.push('-t', String(opts.ttl));
    const d = spawnDaemon(sbin('rbldnsd'), [...args, ...specs]);
    const stop = await supervise(d, {
      ready: () => waitAnswering('rbldnsd', port, d, `${HARNESS_LABEL}probe.${first}`, () => readText(logFile)),
      lastResort: lastResort(d.pid, dir),
      cleanup: () => fsp.rm(dir, { recursive: true, force: true }),
    });
    let syncSeq = 0;
    return {
      name: 'rbldnsd',
      port,
      pid: d.pid,
      server: `127.0.0.1:${port}`,
      dir,
      queries: () => parseRblLog(readText(logFile)),
      sync: async () => {
        const marker = `${HARNESS_LABEL}sync-${++syncSeq}.${first}`;
        const logged = (): boolean => readText(logFile).toLowerCase().includes(` ${marker} `);
        const ok = await waitUntil(async () => logged() || ((await answers(port, marker)) && logged()), 5000, 10);
        if (!ok) throw new Error(`rbldnsd: marker ${marker} never reached the query log`);
      },
      log: () => `${d.output()}\n${readText(logFile)}`,
      stop,
    };
  });
}

// --- dnsmasq --------------------------------------------------------------------------------

export interface DnsRecords {
  /** name → IPv4 addresses. dnsmasq also answers the PTR of each (unless `ptr` names that IP). */
  readonly a?: Readonly<Record<string, readonly string[]>>;
  /** name → IPv6 addresses (with their PTRs, likewise). */
  readonly aaaa?: Readonly<Record<string, readonly string[]>>;
  /** name → MX records; exchange "." is the null MX (RFC 7505). */
  readonly mx?: Readonly<Record<string, readonly { readonly exchange: string; readonly priority: number }[]>>;
  /** name → TXT records: a string, or its character-strings (["p1", "p2"] is "p1" "p2"). */
  readonly txt?: Readonly<Record<string, readonly (string | readonly string[])[]>>;
  /** IP → PTR names (replacing the automatic PTR of an A/AAAA record). */
  readonly ptr?: Readonly<Record<string, readonly string[]>>;
  /** alias → target. */
  readonly cname?: Readonly<Record<string, string>>;
}

export interface DnsmasqOptions {
  readonly records?: DnsRecords;
  /** Zones answered from the records only: unknown names NXDOMAIN. Default test, in-addr.arpa, ip6.arpa. */
  readonly localZones?: readonly string[];
  /** zone → a port on 127.0.0.1 to forward it to (e.g. rbldnsd's). */
  readonly forward?: Readonly<Record<string, number>>;
  /** Zones whose every name answers SERVFAIL (forwarded to a SERVFAIL stub). */
  readonly servfail?: readonly string[];
  /** Zones whose every name times out (forwarded to a stub that never answers). */
  readonly timeout?: readonly string[];
  /** TTL of the local records (local-ttl), seconds; default 300. */
  readonly ttl?: number;
}

export interface DnsQuery {
  readonly type: string;
  readonly name: string;
}

export interface DnsmasqPeer {
  readonly name: 'dnsmasq';
  readonly port: number;
  readonly pid: number;
  /** "127.0.0.1:PORT", for dns.servers. */
  readonly server: string;
  readonly dir: string;
  /** Questions received since it became ready (from log-queries), oldest first. */
  queries(): DnsQuery[];
  /** Packets that reached the SERVFAIL and the blackhole stubs. */
  stubPackets(): { servfail: number; blackhole: number };
  log(): string;
  stop(): Promise<void>;
}

/** A value for a dnsmasq option: no quotes, backslashes or line breaks; no commas outside TXT strings. */
function dnsmasqText(v: string, what: string): string {
  const bad = what === 'txt' ? /["\\\r\n]/ : /["\\\r\n,]/;
  if (bad.test(v)) throw new Error(`dnsmasq ${what}: unsupported characters in ${JSON.stringify(v)}`);
  return v;
}

function recordLines(r: DnsRecords): string[] {
  const lines: string[] = [];
  for (const [name, ips] of Object.entries(r.a ?? {})) for (const ip of ips) lines.push(`host-record=${dnsmasqText(name, 'name')},${dnsmasqText(ip, 'a')}`);
  for (const [name, ips] of Object.entries(r.aaaa ?? {})) for (const ip of ips) lines.push(`host-record=${dnsmasqText(name, 'name')},${dnsmasqText(ip, 'aaaa')}`);
  for (const [name, mxs] of Object.entries(r.mx ?? {})) {
    for (const mx of mxs) lines.push(`mx-host=${dnsmasqText(name, 'name')},${dnsmasqText(mx.exchange, 'mx')},${mx.priority}`);
  }
  for (const [name, txts] of Object.entries(r.txt ?? {})) {
    for (const t of txts) {
      const chunks = typeof t === 'string' ? [t] : t;
      lines.push(`txt-record=${dnsmasqText(name, 'name')},${chunks.map((c) => `"${dnsmasqText(c, 'txt')}"`).join(',')}`);
    }
  }
  for (const [ip, names] of Object.entries(r.ptr ?? {})) {
    const rev = ptrName(ip);
    if (rev === undefined) throw new Error(`dnsmasq ptr: ${ip} is not an IP address`);
    for (const name of names) lines.push(`ptr-record=${rev},${dnsmasqText(name, 'name')}`);
  }
  for (const [alias, target] of Object.entries(r.cname ?? {})) lines.push(`cname=${dnsmasqText(alias, 'name')},${dnsmasqText(target, 'name')}`);
  return lines;
}

function parseDnsmasqLog(text: string): DnsQuery[] {
  const out: DnsQuery[] = [];
  for (const line of text.split('\n')) {
    // "Nov 22 04:25:49 dnsmasq[15794]: query[A] mail.example.test from 127.0.0.1"
    const m = /dnsmasq\[\d+\]: query\[(\w+)\] (\S+) from /.exec(line);
    if (m === null) continue;
    const [, type = '', name = ''] = m;
    if (name.toLowerCase().startsWith(HARNESS_LABEL)) continue;
    out.push({ type, name: name.toLowerCase() });
  }
  return out;
}

/**
 * dnsmasq on a free loopback port (`dnsmasq --keep-in-foreground --conf-file=F`) with no
 * upstream of its own, no cache, the given records, local zones, forwarded zones, and zones that
 * answer SERVFAIL or time out.
 */
export async function startDnsmasq(opts: DnsmasqOptions = {}): Promise<DnsmasqPeer> {
  const servfailStub = (opts.servfail ?? []).length > 0 ? await startUdpStub('servfail') : undefined;
  const blackholeStub = (opts.timeout ?? []).length > 0 ? await startUdpStub('blackhole') : undefined;
  const stopStubs = async (): Promise<void> => {
    await servfailStub?.stop();
    await blackholeStub?.stop();
  };
  try {
    return await withPortRetry(async (port) => {
      const dir = await makeTempDir('dnsmasq');
      const logFile = path.join(dir, 'dnsmasq.log');
      await fsp.writeFile(logFile, '', { mode: 0o644 });
      await fsp.chown(logFile, NOBODY_UID, NOBODY_GID);
      const conf = [
        `port=${port}`,
        'listen-address=127.0.0.1',
        'bind-interfaces',
        'no-resolv',
        'no-hosts',
        'no-poll',
        'user=nobody',
        'group=nogroup',
        'pid-file=',
        'cache-size=0',
        'dns-forward-max=1000',
        `local-ttl=${opts.ttl ?? 300}`,
        'log-queries',
        `log-facility=${logFile}`,
        ...(opts.localZones ?? ['test', 'in-addr.arpa', 'ip6.arpa']).map((z) => `local=/${z}/`),
        ...Object.entries(opts.forward ?? {}).map(([z, p]) => `server=/${z}/127.0.0.1#${p}`),
        ...(opts.servfail ?? []).map((z) => `server=/${z}/127.0.0.1#${servfailStub?.port ?? 0}`),
        ...(opts.timeout ?? []).map((z) => `server=/${z}/127.0.0.1#${blackholeStub?.port ?? 0}`),
        ...recordLines(opts.records ?? {}),
      ];
      const confFile = path.join(dir, 'dnsmasq.conf');
      await fsp.writeFile(confFile, conf.join('\n') + '\n', { mode: 0o644 });
      const d = spawnDaemon(sbin('dnsmasq'), ['--keep-in-foreground', `--conf-file=${confFile}`]);
      const stopDaemonOnly = await supervise(d, {
        // The probe name is under no local zone: dnsmasq answers it REFUSED, which is an answer.
        ready: () => waitAnswering('dnsmasq', port, d, `${HARNESS_LABEL}probe.invalid`, () => readText(logFile)),
        lastResort: lastResort(d.pid, dir),
        cleanup: () => fsp.rm(dir, { recursive: true, force: true }),
      });
      return {
        name: 'dnsmasq',
        port,
        pid: d.pid,
        server: `127.0.0.1:${port}`,
        dir,
        queries: () => parseDnsmasqLog(readText(logFile)),
        stubPackets: () => ({ servfail: servfailStub?.received() ?? 0, blackhole: blackholeStub?.received() ?? 0 }),
        log: () => `${d.output()}\n${readText(logFile)}`,
        stop: async () => {
          await stopDaemonOnly();
          await stopStubs();
        },
      };
    });
  } catch (err) {
    await stopStubs();
    throw err;
  }
}
