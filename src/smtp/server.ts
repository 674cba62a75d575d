// The listening side: accepts connections on every `listen` address, enforces
// limits.max_connections and limits.max_connections_per_ip, and runs one Session per client.
// On the addresses under proxy_protocol.listen a trusted proxy (HAProxy) connects and sends a
// PROXY header first: the session, its limits and its checks then see the client it names.
//
// Connections are half-open capable (allowHalfOpen): a client may shut its sending side and go
// on reading (Exim sends "." and QUIT, then its FIN); the session answers everything it read
// before it closes ours.
import net from 'node:net';
import tls from 'node:tls';
import fs from 'node:fs';
import { Session, socketConnection, type Connection, type SessionDeps } from './session.ts';
import { parseProxyHeader } from './proxy-protocol.ts';
import { parseHostPort, type Config } from '../config/schema.ts';
import { addressListOf, plainIp } from '../util/cidr.ts';
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
      const proxied = this.deps.config.proxy_protocol.listen.includes(entry);
      const server = net.createServer({ noDelay: true, allowHalfOpen: true }, (socket) => (proxied ? this.acceptProxied(socket) : this.accept(socket, socketConnection(socket))));
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

  /** A proxy listener: only trusted proxies, and only after a valid PROXY header. */
  private acceptProxied(socket: net.Socket): void {
    const pp = this.deps.config.proxy_protocol;
    const proxy = plainIp(socket.remoteAddress ?? '');
    socket.on('error', () => undefined);
    if (!addressListOf(pp.trusted).has(proxy)) {
      this.log.warn({ ip: proxy, check: 'proxy_protocol', setting: 'proxy_protocol.trusted' }, 'connection refused: not a trusted proxy');
      socket.destroy();
      return;
    }
    void readProxyHeader(socket, pp.timeout).then((result) => {
      if (typeof result === 'string') {
        this.log.warn({ ip: proxy, check: 'proxy_protocol', reason: result }, 'connection dropped: no valid PROXY header');
        socket.destroy();
        return;
      }
      this.accept(socket, result, proxy);
    });
  }

  private accept(socket: net.Socket, connection: Connection, proxy?: string): void {
    const config = this.deps.config;
    const ip = connection.remoteIp;
    socket.on('error', () => undefined);
    if (this.stopping) return refuse(socket, `421 4.3.2 ${config.hostname} Service shutting down`);
    const fromIp = this.perIp.get(ip) ?? 0;
    if (this.sessions.size >= config.limits.max_connections) {
      this.log.warn({ ip, check: 'max_connections', setting: 'limits.max_connections' }, 'connection refused: too many connections');
      return refuse(socket, `421 4.7.0 ${config.hostname} Error: too many connections`);
    }
    if (fromIp >= config.limits.max_connections_per_ip) {
      this.log.warn({ ip, check: 'max_connections_per_ip', setting: 'limits.max_connections_per_ip' }, 'connection refused: too many connections from this IP');
      return refuse(socket, `421 4.7.0 ${config.hostname} Error: too many connections from ${ip}`);
    }
    this.perIp.set(ip, fromIp + 1);
    if (proxy !== undefined) this.log.debug({ ip, proxy }, 'proxied connection');
    const session: Session = new Session(socket, connection, this.deps, () => {
      this.sessions.delete(session);
      const n = (this.perIp.get(ip) ?? 1) - 1;
      if (n <= 0) this.perIp.delete(ip);
      else this.perIp.set(ip, n);
      if (this.stopping && this.sessions.size === 0) this.drained?.();
    });
    this.sessions.add(session);
    void session.start();
    if (proxy !== undefined) socket.resume(); // readProxyHeader() left it paused
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

/** How long a refused client may take to close its side before the connection is cut. */
const REFUSE_LINGER_MS = 5000;

/** Says `reply` and closes; what the client sends meanwhile is read and ignored, and a client that never closes is cut off. */
function refuse(socket: net.Socket, reply: string): void {
  socket.end(`${reply}\r\n`);
  socket.resume();
  const timer = setTimeout(() => socket.destroy(), REFUSE_LINGER_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/**
 * Reads the PROXY header (v1 or v2) a proxy sends before anything else. Resolves with the
 * client it names (a LOCAL header, the proxy's own health check: the socket's own addresses),
 * or with the reason there is none. What follows the header is put back for the session, and
 * the socket is left paused.
 */
export function readProxyHeader(socket: net.Socket, timeoutMs: number): Promise<Connection | string> {
  return new Promise((resolve) => {
    let buf: Buffer = Buffer.alloc(0);
    const finish = (result: Connection | string, rest?: Buffer): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('end', onClose);
      socket.pause();
      if (rest && rest.length > 0) socket.unshift(rest);
      resolve(result);
    };
    const onData = (chunk: Buffer): void => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const h = parseProxyHeader(buf);
      if (h.kind === 'incomplete') return;
      if (h.kind === 'invalid') return finish(h.reason);
      const rest = buf.subarray(h.consumed);
      if (h.kind === 'local') return finish(socketConnection(socket), rest);
      finish({ remoteIp: h.source.ip, remotePort: h.source.port, localIp: h.destination.ip, localPort: h.destination.port }, rest);
    };
    const onClose = (): void => finish('closed before the header');
    const timer = setTimeout(() => finish(`no header within ${timeoutMs} ms`), timeoutMs);
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.once('end', onClose); // the proxy shut its sending side before the header was complete
  });
}
