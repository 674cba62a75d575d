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
import crypto from 'node:crypto';
import { Session, newSessionId, socketConnection, type Connection, type SessionDeps } from './session.ts';
import { parseProxyHeader } from './proxy-protocol.ts';
import { parseHostPort, type Config } from '../config/schema.ts';
import { addressListOf, plainIp } from '../util/cidr.ts';
import type { Logger } from '../util/log.ts';
import { metrics } from '../util/metrics.ts';

/**
 * TLS 1.2 ciphers, best first: Mozilla's "intermediate" profile (forward secrecy, AEAD only; no
 * static-RSA key exchange, no CBC). TLS 1.3 suites are OpenSSL's defaults, all of them AEAD.
 */
export const TLS12_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
  'DHE-RSA-AES128-GCM-SHA256',
  'DHE-RSA-AES256-GCM-SHA384',
  'DHE-RSA-CHACHA20-POLY1305',
].join(':');

export function loadTlsContext(config: Config): tls.SecureContext | undefined {
  if (!config.tls) return undefined;
  return tls.createSecureContext({
    cert: fs.readFileSync(config.tls.cert),
    key: fs.readFileSync(config.tls.key),
    // TLS 1.2 is the floor: many MTAs still stop there (RFC 8996 retired 1.0 and 1.1).
    minVersion: 'TLSv1.2',
    ciphers: TLS12_CIPHERS,
    honorCipherOrder: true,
    // Renegotiation is refused outright (Node would allow a few per 10 minutes): it only ever
    // served client-certificate tricks and CPU exhaustion attacks.
    secureOptions: crypto.constants.SSL_OP_NO_RENEGOTIATION,
  });
}

/** A listen address bound by bindListeners(): connections wait in a queue until serve() takes them. */
export interface BoundListener {
  readonly entry: string;
  readonly mode: Config['listen'][number]['mode'];
  readonly server: net.Server;
  /** Hands this and every later connection to `handler`. */
  serve(handler: (socket: net.Socket) => void): void;
  close(): void;
}

/**
 * Binds every listen address without serving yet: a daemon started as root binds port 25 first,
 * then gives root up, then opens its spool and serves. A client that connects in between waits
 * (its socket is kept, unread) and is served once the daemon is ready.
 */
export async function bindListeners(config: Config): Promise<BoundListener[]> {
  const bound: BoundListener[] = [];
  try {
    for (const { address: entry, mode } of config.listen) {
      const hp = parseHostPort(entry);
      if (!hp) throw new Error(`bad listen address ${entry}`);
      const early: net.Socket[] = [];
      let handler: ((socket: net.Socket) => void) | undefined;
      const server = net.createServer({ noDelay: true, allowHalfOpen: true }, (socket) => {
        if (handler) return handler(socket);
        socket.on('error', () => undefined); // a client gone before we served it
        // As many as limits.max_connections may wait; more are told to come back (a flood must
        // not use up the descriptors the start-up itself needs).
        if (early.length >= config.limits.max_connections) return void socket.end('421 4.3.2 Service not yet available, try again later\r\n');
        early.push(socket);
      });
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: hp.host, port: hp.port, backlog: 511 }, () => {
          server.off('error', reject);
          resolve();
        });
      });
      bound.push({
        entry,
        mode,
        server,
        serve(h) {
          handler = h;
          for (const socket of early.splice(0)) if (!socket.destroyed) h(socket);
        },
        close() {
          for (const socket of early.splice(0)) socket.destroy();
          server.close();
        },
      });
    }
  } catch (err) {
    for (const l of bound) l.close();
    throw err;
  }
  return bound;
}

export class SmtpServer {
  private deps: SessionDeps;
  private readonly servers: net.Server[] = [];
  private readonly sessions = new Set<Session>();
  private readonly perIp = new Map<string, number>();
  private stopping = false;
  /** Postfix's stress mode: the connection table is nearly full (limits.stress_at), deadlines are short. */
  private stressed = false;

  constructor(deps: SessionDeps) {
    this.deps = this.withStress(deps);
  }

  private withStress(deps: SessionDeps): SessionDeps {
    return { ...deps, stressed: () => this.stressed };
  }

  get log(): Logger {
    return this.deps.log;
  }

  /** New sessions use the new settings; running sessions finish with the ones they began with. */
  reload(deps: SessionDeps): void {
    this.deps = this.withStress(deps);
  }

  /**
   * Serves every listen address; resolves with the bound addresses (port 0 → the real port).
   * `bound`: the listeners bindListeners() made (before the daemon gave root up); without, binds now.
   */
  async listen(bound?: readonly BoundListener[]): Promise<Array<{ host: string; port: number }>> {
    const listeners = bound ?? (await bindListeners(this.deps.config));
    const addresses: Array<{ host: string; port: number }> = [];
    for (const l of listeners) {
      if (l.mode === 'submissions' && !this.deps.tls) throw new Error(`listen ${l.entry}: mode submissions needs tls`);
      const proxied = this.deps.config.proxy_protocol.listen.includes(l.entry);
      const listener = l.mode === 'mx' ? undefined : l.mode;
      const serve = (socket: net.Socket) => (proxied ? this.acceptProxied(socket, listener) : this.accept(socket, { ...socketConnection(socket), ...(listener ? { listener } : {}) }));
      l.serve(serve);
      l.server.on('error', (err) => this.log.error({ err }, 'listener error'));
      const addr = l.server.address() as net.AddressInfo;
      addresses.push({ host: addr.address, port: addr.port });
      this.log.info({ listen: `${addr.address}:${addr.port}`, mode: l.mode }, 'listening');
      this.servers.push(l.server);
    }
    return addresses;
  }

  /** A proxy listener: only trusted proxies, and only after a valid PROXY header. */
  private acceptProxied(socket: net.Socket, listener: Connection['listener']): void {
    const pp = this.deps.config.proxy_protocol;
    const proxy = plainIp(socket.remoteAddress ?? '');
    // Every line about this connection carries the session ID it will have.
    const sid = newSessionId();
    socket.on('error', () => undefined);
    if (!addressListOf(pp.trusted).has(proxy)) {
      this.log.warn({ sid, ip: proxy, check: 'proxy_protocol', setting: 'proxy_protocol.trusted' }, 'connection refused: not a trusted proxy');
      socket.destroy();
      return;
    }
    void readProxyHeader(socket, pp.timeout).then((result) => {
      if (typeof result === 'string') {
        this.log.warn({ sid, ip: proxy, check: 'proxy_protocol', reason: result }, 'connection dropped: no valid PROXY header');
        socket.destroy();
        return;
      }
      if ('unknown' in result) {
        // The proxy is not the client: taking it for one would make every such connection a
        // loopback (relay-trusted) client.
        this.log.warn({ sid, ip: proxy, check: 'proxy_protocol', reason: result.unknown }, 'connection dropped: the PROXY header names no client');
        socket.destroy();
        return;
      }
      if (result.proxyLocal) this.log.info({ sid, ip: proxy, check: 'proxy_protocol' }, 'PROXY LOCAL (proxy health check): a session that may not send mail');
      if ('udp' in result) this.log.warn({ sid, ip: proxy, client: result.remoteIp, check: 'proxy_protocol' }, 'PROXY header names a UDP client: taken as that client');
      this.accept(socket, listener ? { ...result, listener, sid } : { ...result, sid }, proxy);
    });
  }

  private accept(raw: net.Socket, given: Connection, proxy?: string): void {
    const config = this.deps.config;
    // The session ID is made here: the lines about refusing or wrapping the connection carry it too.
    const sid = given.sid ?? newSessionId();
    const connection = given.sid === undefined ? { ...given, sid } : given;
    const ip = connection.remoteIp;
    raw.on('error', () => undefined);
    // submissions (RFC 8314): the TLS handshake comes first, and everything after it, refusals
    // included, goes through TLS; what is written before the handshake ends waits for it.
    const socket = connection.listener === 'submissions' ? this.implicitTls(raw, ip, sid) : raw;
    if (this.stopping) return refuse(socket, `421 4.3.2 ${config.hostname} Service shutting down`);
    const fromIp = this.perIp.get(ip) ?? 0;
    if (this.sessions.size >= config.limits.max_connections) {
      this.log.warn({ sid, ip, check: 'max_connections', setting: 'limits.max_connections' }, 'connection refused: too many connections');
      return refuse(socket, `421 4.7.0 ${config.hostname} Error: too many connections`);
    }
    if (fromIp >= config.limits.max_connections_per_ip) {
      this.log.warn({ sid, ip, check: 'max_connections_per_ip', setting: 'limits.max_connections_per_ip' }, 'connection refused: too many connections from this IP');
      return refuse(socket, `421 4.7.0 ${config.hostname} Error: too many connections from ${ip}`);
    }
    this.perIp.set(ip, fromIp + 1);
    if (proxy !== undefined) this.log.debug({ sid, ip, proxy }, 'proxied connection');
    // The per-IP count holds a session from accept to its end (our 221 or 421, or the client
    // gone), not until the socket is fully closed: a client that keeps exactly
    // max_connections_per_ip sessions open is never refused (issue 9, item 16).
    let counted = true;
    const ended = (): void => {
      if (!counted) return;
      counted = false;
      const n = (this.perIp.get(ip) ?? 1) - 1;
      if (n <= 0) this.perIp.delete(ip);
      else this.perIp.set(ip, n);
    };
    const session: Session = new Session(
      socket,
      connection,
      this.deps,
      () => {
        ended();
        this.sessions.delete(session);
        this.updateStress();
        if (this.stopping && this.sessions.size === 0) this.drained?.();
      },
      ended,
    );
    this.sessions.add(session);
    this.updateStress();
    void session.start();
    if (proxy !== undefined) raw.resume(); // readProxyHeader() left it paused
  }

  /** Wraps a connection to a submissions listener in TLS, server side, with the current certificate. */
  private implicitTls(raw: net.Socket, ip: string, sid: string): tls.TLSSocket {
    const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: this.deps.tls });
    secure.on('error', (err) => this.log.debug({ sid, ip, err: err.message }, 'TLS handshake failed'));
    secure.once('secure', () => this.log.info({ sid, ip, protocol: secure.getProtocol(), cipher: secure.getCipher().name }, 'TLS established (implicit)'));
    return secure;
  }

  get connectionCount(): number {
    return this.sessions.size;
  }

  /**
   * Stress mode on from limits.stress_at of limits.max_connections, off again below three
   * quarters of that; running sessions re-check their deadlines against the new limits.
   */
  private updateStress(): void {
    const limits = this.deps.config.limits;
    const on = Math.max(1, Math.ceil(limits.stress_at * limits.max_connections));
    const n = this.sessions.size;
    if (!this.stressed && n >= on) {
      this.stressed = true;
      this.log.warn({ connections: n, check: 'stress', setting: 'limits.stress_at' }, 'stress mode on: shorter deadlines');
      for (const s of this.sessions) s.recheckDeadline();
    } else if (this.stressed && n < Math.floor(on * 0.75)) {
      this.stressed = false;
      this.log.info({ connections: n, check: 'stress', setting: 'limits.stress_at' }, 'stress mode off');
    }
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

/** The longest a refused connection's reply may take to reach the kernel before the socket is cut anyway. */
const REFUSE_WRITE_MS = 1000;

/**
 * Says `reply`, shuts our side and releases the descriptor as soon as the reply is handed to
 * the kernel (which still delivers it and the FIN): a refused client that never closes holds
 * nothing (issue 9, item 9). What it sends meanwhile is ignored. Counted as a session ended
 * `refused` and a reply at connect, as a Session would count them (there is none here).
 */
function refuse(socket: net.Socket, reply: string): void {
  metrics.reply('connect', reply);
  metrics.session('refused');
  socket.resume();
  socket.end(`${reply}\r\n`, () => socket.destroy());
  const timer = setTimeout(() => socket.destroy(), REFUSE_WRITE_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/** A header that parses but names no IP client (PROXY UNKNOWN, AF_UNIX, AF_UNSPEC): why. */
export interface NoClient {
  readonly unknown: string;
}

/**
 * Reads the PROXY header (v1 or v2) a proxy sends before anything else. Resolves with the
 * client it names (`udp` set when over UDP), with the socket's own addresses marked proxyLocal
 * for a LOCAL header (the proxy's own health check, never a relay client), with NoClient, or
 * with the reason there is no valid header. What follows the header is put back for the
 * session, and the socket is left paused.
 */
export function readProxyHeader(socket: net.Socket, timeoutMs: number): Promise<(Connection & { udp?: true }) | NoClient | string> {
  return new Promise((resolve) => {
    let buf: Buffer = Buffer.alloc(0);
    const finish = (result: (Connection & { udp?: true }) | NoClient | string, rest?: Buffer): void => {
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
      if (h.kind === 'local') return finish({ ...socketConnection(socket), proxyLocal: true }, rest);
      if (h.kind === 'unknown') return finish({ unknown: h.reason }, rest);
      const client = { remoteIp: h.source.ip, remotePort: h.source.port, localIp: h.destination.ip, localPort: h.destination.port };
      finish(h.udp ? { ...client, udp: true } : client, rest);
    };
    const onClose = (): void => finish('closed before the header');
    const timer = setTimeout(() => finish(`no header within ${timeoutMs} ms`), timeoutMs);
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.once('end', onClose); // the proxy shut its sending side before the header was complete
  });
}
