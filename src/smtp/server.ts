// The listening side: accepts connections on every `listen` address, enforces
// limits.max_connections and limits.max_connections_per_ip, and runs one Session per client.
import net from 'node:net';
import tls from 'node:tls';
import fs from 'node:fs';
import { Session, type SessionDeps } from './session.ts';
import { parseHostPort, type Config } from '../config/schema.ts';
import { plainIp } from '../util/cidr.ts';
import type { Logger } from '../util/log.ts';

export function loadTlsContext(config: Config): tls.SecureContext | undefined {
  if (!config.tls) return undefined;
  return tls.createSecureContext({ cert: fs.readFileSync(config.tls.cert), key: fs.readFileSync(config.tls.key), minVersion: 'TLSv1.2' });
}

export class SmtpServer {
  private deps: SessionDeps;
  private readonly servers: net.Server[] = [];
  private readonly sessions = new Set<Session>();
  private readonly perIp = new Map<string, number>();
  private stopping = false;

  constructor(deps: SessionDeps) {
    this.deps = deps;
  }

  get log(): Logger {
    return this.deps.log;
  }

  /** New sessions use the new settings; running sessions finish with the ones they began with. */
  reload(deps: SessionDeps): void {
    this.deps = deps;
  }

  /** Binds every listen address; resolves with the bound addresses (port 0 → the real port). */
  async listen(): Promise<Array<{ host: string; port: number }>> {
    const bound: Array<{ host: string; port: number }> = [];
    for (const entry of this.deps.config.listen) {
      const hp = parseHostPort(entry);
      if (!hp) throw new Error(`bad listen address ${entry}`);
      const server = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: hp.host, port: hp.port, backlog: 511 }, () => {
          server.off('error', reject);
          resolve();
        });
      });
      server.on('error', (err) => this.log.error({ err }, 'listener error'));
      const addr = server.address() as net.AddressInfo;
      bound.push({ host: addr.address, port: addr.port });
      this.log.info({ listen: `${addr.address}:${addr.port}` }, 'listening');
      this.servers.push(server);
    }
    return bound;
  }

  private accept(socket: net.Socket): void {
    const config = this.deps.config;
    const ip = plainIp(socket.remoteAddress ?? '');
    socket.on('error', () => undefined);
    if (this.stopping) {
      socket.end(`421 4.3.2 ${config.hostname} Service shutting down\r\n`);
      return;
    }
    const fromIp = this.perIp.get(ip) ?? 0;
    if (this.sessions.size >= config.limits.max_connections) {
      this.log.warn({ ip, check: 'max_connections', setting: 'limits.max_connections' }, 'connection refused: too many connections');
      socket.end(`421 4.7.0 ${config.hostname} Error: too many connections\r\n`);
      return;
    }
    if (fromIp >= config.limits.max_connections_per_ip) {
      this.log.warn({ ip, check: 'max_connections_per_ip', setting: 'limits.max_connections_per_ip' }, 'connection refused: too many connections from this IP');
      socket.end(`421 4.7.0 ${config.hostname} Error: too many connections from ${ip}\r\n`);
      return;
    }
    this.perIp.set(ip, fromIp + 1);
    const session: Session = new Session(socket, this.deps, () => {
      this.sessions.delete(session);
      const n = (this.perIp.get(ip) ?? 1) - 1;
      if (n <= 0) this.perIp.delete(ip);
      else this.perIp.set(ip, n);
      if (this.stopping && this.sessions.size === 0) this.drained?.();
    });
    this.sessions.add(session);
    void session.start();
  }

  get connectionCount(): number {
    return this.sessions.size;
  }

  private drained: (() => void) | undefined;

  /** Graceful stop: no new sessions; idle ones get 421, busy ones finish their message (up to graceMs). */
  async close(graceMs = 30_000): Promise<void> {
    this.stopping = true;
    // Stop accepting now; server.close()'s callback would wait for every session to end.
    for (const s of this.servers) s.close();
    if (this.sessions.size > 0) {
      const done = new Promise<void>((r) => (this.drained = r));
      for (const s of this.sessions) s.shutdown();
      const timer = new Promise<void>((r) => setTimeout(r, graceMs).unref());
      await Promise.race([done, timer]);
      for (const s of this.sessions) s.forceClose();
    }
  }
}
