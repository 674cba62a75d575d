// One running mxguard: the SMTP server, the spool and the forwarder, with their lifecycle
// (start, SIGHUP reload, SIGUSR1 queue rescan, graceful SIGTERM stop).
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Config } from './config/schema.ts';
import type tls from 'node:tls';
import { SmtpServer, bindListeners, loadTlsContext } from './smtp/server.ts';
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
import { ResolverForSettings, type DnsResolver } from './dns/resolver.ts';
import type { Logger } from './util/log.ts';
import { pidFile } from './queue/daemon-signal.ts';
import { acquireInstanceLock } from './util/instance-lock.ts';
import { metrics } from './util/metrics.ts';
import { HistoryStore } from './admin/history/store.ts';
import { GreyStore } from './policy/greylist/store.ts';
import { becomeConfiguredUser } from './util/privileges.ts';
import { RESTART_ONLY, restartOnlyChanges, withRunningRestartOnly } from './config/reload.ts';

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
  /** The Postfix policy delegation server (policy.listen), when set. */
  private policyService: import('./policy-service/server.ts').PolicyService | undefined;
  private popWatcher: LogWatcher | undefined;
  private readonly resolvers = new ResolverForSettings();
  /** This daemon's hold on its data_dir (src/util/instance-lock.ts). */
  private lock: { release(): void } | undefined;
  /** The transport behind the forwarder: routes by recipient domain (src/delivery/). */
  private delivery: Delivery | undefined;
  private current: Config;
  private scanTimer: NodeJS.Timeout | undefined;
  /** The transaction history on disk (data_dir/history.sqlite), while the admin API runs. */
  private history: HistoryStore | undefined;
  /** The admin listener's restarts after reloads, one after the other (stop waits for them). */
  private adminRestart: Promise<void> = Promise.resolve();
  private stopping = false;
  /** The TLS context and the settings it was read with. */
  private tls: { settings: string; context: tls.SecureContext | undefined } | undefined;

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

  /** The policy service's port (policy.listen may say port 0), when it runs. */
  get policyPort(): number | undefined {
    return this.policyService?.port;
  }

  get pidFile(): string {
    return pidFile(this.current.data_dir);
  }

  async start(): Promise<Array<{ host: string; port: number }>> {
    const config = this.config;
    // Port 25 needs root: with a `user` to become, bind first, read the TLS key (often root's
    // only), then become that user before anything in data_dir is opened, so all the daemon writes
    // is theirs. Without, the listeners are bound once the daemon is ready to serve.
    const listeners = config.user !== undefined ? await bindListeners(config) : undefined;
    try {
      this.tls = { settings: JSON.stringify(config.tls), context: loadTlsContext(config) };
      const runAs = becomeConfiguredUser(config, config.log.file !== undefined ? [config.log.file] : []);
      if (runAs) this.log.info({ user: runAs.user, uid: runAs.uid, gid: runAs.gid, setting: 'user' }, 'running as an unprivileged user');
      else if (process.getuid?.() === 0) this.log.warn({ setting: 'user' }, 'running as root: set user (and group) to run as an unprivileged user');
      await fsp.mkdir(config.data_dir, { recursive: true });
      // Before the spool is opened: a second daemon on this data_dir stops here, naming the first.
      this.lock = acquireInstanceLock(config.data_dir);
    } catch (err) {
      for (const l of listeners ?? []) l.close();
      throw err;
    }
    let bound: Array<{ host: string; port: number }>;
    try {
      this.spool = await Spool.open(path.join(config.data_dir, 'spool'), { log: this.log.child({ component: 'spool' }) });
      this.store = await openStore(config, this.log, { batchWrites: true });
      this.popWatcher = this.watchPopLogs(config);
      const transport = createTransport(config, this.log, this.resolverFor(config));
      this.delivery = transport;
      this.forwarder = new Forwarder({ transport, spool: this.spool, config, log: this.log });
      for (const m of this.spool.takeRecovered()) this.forwarder.enqueue(m);
      await this.forwarder.rescan();
      this.log.info({ queued: this.forwarder.queued, deliver: transport.name, data_dir: path.resolve(config.data_dir) }, 'queue loaded');
      this.server = new SmtpServer(this.sessionDeps(config));
      bound = await this.server.listen(listeners);
    } catch (err) {
      // The listeners bound as root (and the clients waiting on them) go with the failed start.
      for (const l of listeners ?? []) l.close();
      throw err;
    }
    if (config.admin.listen !== undefined) this.history = this.openHistory(config);
    this.watchMetrics(config);
    this.admin = await this.startAdmin(config);
    if (config.policy.listen !== undefined) {
      const { startPolicyService } = await import('./policy-service/server.ts');
      this.policyService = await startPolicyService({
        config,
        log: this.log,
        store: this.store,
        dns: this.resolverFor(config),
        onTrace: (t) => {
          this.traces.add(t);
          this.history?.add(t);
        },
      });
    }
    // Without a PID file, `mxguard queue` cannot signal us, but mail still flows (a full disk).
    await fsp.writeFile(this.pidFile, `${process.pid}\n`).catch((err: Error) => this.log.error({ file: this.pidFile, err: err.message }, 'could not write the PID file'));
    this.armScanTimer(config.queue.scan_interval);
    return bound;
  }

  private armScanTimer(everyMs: number): void {
    clearInterval(this.scanTimer);
    this.scanTimer = setInterval(() => {
      void this.adoptNewMessages();
      this.spool?.removeStaleNew(); // once per interval, not per SIGUSR2: a day-old file can wait
    }, everyMs);
    this.scanTimer.unref();
  }

  /** SIGUSR2 from `mxguard stdio`, and every queue.scan_interval: deliver what other processes queued. */
  async adoptNewMessages(): Promise<void> {
    await this.forwarder?.rescan({ newOnly: true });
  }

  private sessionDeps(config: Config, rereadTls = false): SessionDeps {
    const forwarder = this.forwarder as Forwarder;
    return {
      config,
      policy: new PolicyEngine([...buildChecks(config, this.store, this.resolverFor(config), this.log), ...this.extraChecks], this.log),
      spool: this.spool as Spool,
      log: this.log,
      tls: this.tlsFor(config, rereadTls),
      enqueue: (msg) => forwarder.enqueue(msg),
      store: this.store,
      dns: this.resolverFor(config),
      authenticator: this.authenticatorFor(config),
      onTrace: (t) => {
        this.traces.add(t);
        this.history?.add(t);
        metrics.transaction(t.outcome);
      },
    };
  }

  /**
   * The TLS context: the one read at start (as root, before dropping privileges) while the tls
   * settings are unchanged; read anew when they change or a reload asks (a renewed certificate).
   */
  private tlsFor(config: Config, reread = false): tls.SecureContext | undefined {
    const settings = JSON.stringify(config.tls);
    if (this.tls && this.tls.settings === settings && !reread) return this.tls.context;
    try {
      this.tls = { settings, context: loadTlsContext(config) };
    } catch (err) {
      // Unchanged paths that only root may read (the daemon dropped root): keep what start read.
      if (!this.tls || this.tls.settings !== settings) throw err;
      this.log.warn({ err: (err as Error).message, setting: 'tls' }, 'could not read the TLS certificate or key again: keeping the ones read at start (make them readable by the user mxguard runs as)');
    }
    return this.tls.context;
  }

  /** The transaction history; one that cannot be opened (a damaged file) is logged, and mail flows without it. */
  private openHistory(config: Config): HistoryStore | undefined {
    const file = path.join(config.data_dir, 'history.sqlite');
    try {
      return new HistoryStore(file, { keep: config.history.keep, log: this.log });
    } catch (err) {
      this.log.error({ file, err: (err as Error).message }, 'could not open the transaction history: /api/history is off');
      return undefined;
    }
  }

  /** The gauges read at scrape (src/util/metrics.ts): this daemon's queue, and the greylisting store's waiting triplets. */
  private watchMetrics(config: Config): void {
    metrics.setQueueSource(() => this.forwarder?.stats());
    const store = this.store;
    metrics.setGreylistSource(config.greylist && store ? async () => (await new GreyStore(store).stats()).grey : undefined);
  }

  /** The DNS resolver (with its cache); a new one when dns settings change. */
  private resolverFor(config: Config): DnsResolver {
    return this.resolvers.get(config, this.log);
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
  reload(wanted: Config): void {
    // Settings read once at start keep their running values (src/config/reload.ts), and say so.
    const restart = restartOnlyChanges(this.current, wanted);
    const next = withRunningRestartOnly(this.current, wanted);
    const deps = this.sessionDeps(next, true); // throws (e.g. unreadable TLS key) before anything changes
    this.delivery?.reload(next); // throws (an unreadable MTA-STS CA file) before it changes anything
    for (const key of restart) this.log.warn({ key, why: RESTART_ONLY[key] }, 'setting changes on restart only');
    if (next.queue.scan_interval !== this.current.queue.scan_interval) this.armScanTimer(next.queue.scan_interval);
    this.server?.reload(deps);
    this.policyService?.reload(next, this.resolverFor(next));
    this.forwarder?.reload(next);
    this.history?.setKeep(next.history.keep);
    // One restart at a time, each with the settings current when it runs (two quick reloads).
    if (JSON.stringify(next.admin) !== JSON.stringify(this.current.admin)) this.adminRestart = this.adminRestart.then(() => this.restartAdmin());
    this.watchMetrics(next);
    const watched = (c: Config) => JSON.stringify([c.relay.pop_logs, c.relay.pop_log_pattern, c.relay.relayers_keep]);
    if (watched(next) !== watched(this.current)) {
      void this.popWatcher?.stop();
      this.popWatcher = this.watchPopLogs(next);
    }
    this.current = next;
    this.log.info('configuration reloaded');
  }

  private startAdmin(config: Config): ReturnType<typeof startAdmin> {
    return startAdmin(config, this.store as Store, this.log, { ...(this.history ? { history: this.history } : {}), queue: () => this.forwarder?.stats() });
  }

  /** A reload changed admin.*: the admin listener is closed and started with the new address and token. */
  private async restartAdmin(): Promise<void> {
    if (this.stopping) return;
    const next = this.current;
    const old = this.admin;
    this.admin = undefined;
    await old?.close();
    try {
      if (next.admin.listen !== undefined && !this.history) this.history = this.openHistory(next);
      this.admin = await this.startAdmin(next);
      this.log.info({ setting: 'admin', listen: next.admin.listen }, this.admin ? 'admin API restarted with the new settings' : 'admin API stopped');
    } catch (err) {
      this.log.error({ setting: 'admin.listen', err: (err as Error).message }, 'admin API could not be started with the new settings');
    }
  }

  /** SIGUSR1, sent by `mxguard queue flush|delete`: pick up what they changed in the spool. */
  async rescanQueue(): Promise<void> {
    await this.forwarder?.rescan();
  }

  async stop(graceMs = 30_000): Promise<void> {
    this.log.info('stopping');
    this.stopping = true;
    clearInterval(this.scanTimer);
    // The SMTP sessions and the policy service end first: their last transactions still reach
    // the history and the store, which close after them.
    await Promise.all([this.server?.close(graceMs), this.policyService?.close()]);
    await this.adminRestart;
    await this.admin?.close();
    this.history?.close();
    metrics.setQueueSource(undefined);
    metrics.setGreylistSource(undefined);
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
