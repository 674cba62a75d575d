// One running mxguard: the SMTP server, the spool and the forwarder, with their lifecycle
// (start, SIGHUP reload, SIGUSR1 queue rescan, graceful SIGTERM stop).
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Config } from './config/schema.ts';
import { SmtpServer, loadTlsContext } from './smtp/server.ts';
import type { SessionDeps } from './smtp/session.ts';
import { PolicyEngine } from './policy/engine.ts';
import { buildChecks } from './policy/index.ts';
import type { AnyCheck } from './policy/check.ts';
import { TraceBuffer } from './policy/trace.ts';
import { Spool } from './queue/spool.ts';
import { Forwarder } from './queue/forwarder.ts';
import { createTransport, type Delivery } from './delivery/index.ts';
import { openStore, type Store } from './store/index.ts';
import { createAuthenticator, type Authenticator } from './auth/index.ts';
import { startAdmin } from './admin/server.ts';
import { startLogWatcher, type LogWatcher } from './relayers/log-watcher.ts';
import { DnsResolver } from './dns/resolver.ts';
import type { Logger } from './util/log.ts';
import { pidFile } from './queue/daemon-signal.ts';
import { acquireInstanceLock } from './util/instance-lock.ts';

export class App {
  readonly config: Config;
  readonly log: Logger;
  /** The latest transactions' traces (the structured records behind the `transaction` log lines). */
  readonly traces = new TraceBuffer(1000);
  private server: SmtpServer | undefined;
  private forwarder: Forwarder | undefined;
  private spool: Spool | undefined;
  private store: Store | undefined;
  private authenticator: Authenticator | undefined;
  private admin: { port: number; close(): Promise<void> } | undefined;
  private popWatcher: LogWatcher | undefined;
  private dns: DnsResolver | undefined;
  /** This daemon's hold on its data_dir (src/util/instance-lock.ts). */
  private lock: { release(): void } | undefined;
  /** The transport behind the forwarder: routes by recipient domain (src/delivery/). */
  private delivery: Delivery | undefined;
  private current: Config;
  private scanTimer: NodeJS.Timeout | undefined;

  /** Checks run after the registry's (tests: a DATA check that never answers). */
  private readonly extraChecks: readonly AnyCheck[];

  constructor(config: Config, log: Logger, opts: { extraChecks?: readonly AnyCheck[] } = {}) {
    this.config = config;
    this.current = config;
    this.log = log;
    this.extraChecks = opts.extraChecks ?? [];
  }

  /** The admin API's port (admin.listen may say port 0), when it runs. */
  get adminPort(): number | undefined {
    return this.admin?.port;
  }

  get pidFile(): string {
    return pidFile(this.current.data_dir);
  }

  async start(): Promise<Array<{ host: string; port: number }>> {
    const config = this.config;
    await fsp.mkdir(config.data_dir, { recursive: true });
    // Before the spool is opened: a second daemon on this data_dir stops here, naming the first.
    this.lock = acquireInstanceLock(config.data_dir);
    this.spool = await Spool.open(path.join(config.data_dir, 'spool'), { log: this.log.child({ component: 'spool' }) });
    this.store = await openStore(config, this.log, { batchWrites: true });
    this.popWatcher = this.watchPopLogs(config);
    const transport = createTransport(config, this.log, this.resolverFor(config));
    this.delivery = transport;
    this.forwarder = new Forwarder({ transport, spool: this.spool, config, log: this.log });
    for (const m of this.spool.takeRecovered()) this.forwarder.enqueue(m);
    await this.forwarder.rescan();
    this.log.info({ queued: this.forwarder.queued, deliver: transport.name }, 'queue loaded');
    this.server = new SmtpServer(this.sessionDeps(config));
    const bound = await this.server.listen();
    this.admin = await startAdmin(config, this.store, this.log);
    // Without a PID file, `mxguard queue` cannot signal us, but mail still flows (a full disk).
    await fsp.writeFile(this.pidFile, `${process.pid}\n`).catch((err: Error) => this.log.error({ file: this.pidFile, err: err.message }, 'could not write the PID file'));
    this.scanTimer = setInterval(() => {
      void this.adoptNewMessages();
      this.spool?.removeStaleNew(); // once per interval, not per SIGUSR2: a day-old file can wait
    }, config.queue.scan_interval);
    this.scanTimer.unref();
    return bound;
  }

  /** SIGUSR2 from `mxguard stdio`, and every queue.scan_interval: deliver what other processes queued. */
  async adoptNewMessages(): Promise<void> {
    await this.forwarder?.rescan({ newOnly: true });
  }

  private sessionDeps(config: Config): SessionDeps {
    const forwarder = this.forwarder as Forwarder;
    return {
      config,
      policy: new PolicyEngine([...buildChecks(config, this.store, this.resolverFor(config), this.log), ...this.extraChecks], this.log),
      spool: this.spool as Spool,
      log: this.log,
      tls: loadTlsContext(config),
      enqueue: (msg) => forwarder.enqueue(msg),
      store: this.store,
      dns: this.resolverFor(config),
      authenticator: this.authenticatorFor(config),
      onTrace: (t) => this.traces.add(t),
    };
  }

  /** The DNS resolver (with its cache); a new one when dns settings change. */
  private resolverFor(config: Config): DnsResolver {
    if (!this.dns || JSON.stringify(config.dns) !== JSON.stringify(this.current.dns)) {
      this.dns = new DnsResolver({ servers: config.dns.servers, timeoutMs: config.dns.timeout, log: this.log });
    }
    return this.dns;
  }

  /** Follows relay.pop_logs: each POP/IMAP login lets its IP relay (POP-before-SMTP). */
  private watchPopLogs(config: Config): LogWatcher | undefined {
    const r = config.relay;
    if (r.pop_logs.length === 0 || !this.store) return undefined;
    return startLogWatcher({ files: r.pop_logs, pattern: r.pop_log_pattern, store: this.store, keepMs: r.relayers_keep, log: this.log });
  }

  /** The password checker; a new one when the auth settings change (SIGHUP). */
  private authenticatorFor(config: Config): Authenticator {
    if (!this.authenticator || JSON.stringify(config.auth) !== JSON.stringify(this.current.auth)) {
      this.authenticator?.close();
      this.authenticator = createAuthenticator(config);
    }
    return this.authenticator;
  }

  /**
   * Applies a new config to new sessions, the routes and the forwarder. Listen addresses,
   * data_dir and the store need a restart; a reload that changes them says so and keeps the old ones.
   */
  reload(next: Config): void {
    const deps = this.sessionDeps(next); // throws (e.g. unreadable TLS key) before anything changes
    this.delivery?.reload(next); // throws (an unreadable MTA-STS CA file) before it changes anything
    for (const key of ['listen', 'data_dir', 'store', 'dkim'] as const) {
      if (JSON.stringify(next[key]) !== JSON.stringify(this.current[key])) this.log.warn({ key }, 'setting changes on restart only');
    }
    this.server?.reload(deps);
    this.forwarder?.reload(next);
    const watched = (c: Config) => JSON.stringify([c.relay.pop_logs, c.relay.pop_log_pattern, c.relay.relayers_keep]);
    if (watched(next) !== watched(this.current)) {
      void this.popWatcher?.stop();
      this.popWatcher = this.watchPopLogs(next);
    }
    this.current = next;
    this.log.info('configuration reloaded');
  }

  /** SIGUSR1, sent by `mxguard queue flush|delete`: pick up what they changed in the spool. */
  async rescanQueue(): Promise<void> {
    await this.forwarder?.rescan();
  }

  async stop(graceMs = 30_000): Promise<void> {
    this.log.info('stopping');
    clearInterval(this.scanTimer);
    await this.server?.close(graceMs);
    await this.admin?.close();
    await this.forwarder?.stop(graceMs);
    this.spool?.close();
    await this.popWatcher?.stop();
    await this.store?.close();
    this.authenticator?.close();
    await fsp.rm(this.pidFile, { force: true });
    this.lock?.release();
    this.log.info('stopped');
  }
}
