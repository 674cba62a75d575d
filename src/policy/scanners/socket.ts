// What the socket scanners (spamd, clamd) share: their `address` (host:port, or a Unix socket's
// path) and one request/reply exchange on a fresh connection, bounded and abortable.
import net from 'node:net';

export type SocketAddress = { readonly path: string } | { readonly host: string; readonly port: number };

/** `host:port`, `[v6]:port` or an absolute path; a bad address fails when the config loads. */
export function parseAddress(address: string, what: string): SocketAddress {
  if (address.startsWith('/')) return { path: address };
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(address);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 1 && port <= 65535)) throw new Error(`${what}: address "${address}" is neither host:port nor an absolute socket path`);
  return { host: (m[1] ?? m[2]) as string, port };
}

export function describeAddress(a: SocketAddress): string {
  return 'path' in a ? a.path : a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** Replies larger than this are not a scanner's answer: the exchange fails. */
const MAX_REPLY = 1024 * 1024;

/**
 * Connects, lets `send` write the request (with backpressure; it must not end the socket), half-
 * closes, and resolves with everything the peer sent before it closed. A peer that answers early
 * and closes (clamd over its size limit) still has its answer read: a failed write is not the end.
 * Rejects on a connection error with no answer, on a reply over 1 MiB, and at once when `signal`
 * aborts (the socket is destroyed).
 */
export function exchange(addr: SocketAddress, what: string, signal: AbortSignal, send: (sock: net.Socket) => Promise<void>): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    if (signal.aborted) {
      reject(new Error(`${what}: aborted`));
      return;
    }
    const sock = 'path' in addr ? net.connect({ path: addr.path }) : net.connect({ host: addr.host, port: addr.port });
    const parts: Buffer[] = [];
    let size = 0;
    let failure: Error | undefined;
    let settled = false;
    const finish = (err: Error | undefined, value?: Buffer): void => {
      if (settled) return;
      settled = true;
      signal.removeEventListener('abort', onAbort);
      sock.destroy();
      if (err) reject(err);
      else resolve(value as Buffer);
    };
    const onAbort = (): void => finish(new Error(`${what}: aborted`));
    signal.addEventListener('abort', onAbort, { once: true });
    sock.on('data', (d: Buffer) => {
      size += d.length;
      if (size > MAX_REPLY) finish(new Error(`${what}: reply over ${MAX_REPLY} octets`));
      else parts.push(d);
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      failure ??= new Error(`${what} at ${describeAddress(addr)}: ${err.code ?? err.message}`);
    });
    sock.on('close', () => {
      if (size > 0) finish(undefined, Buffer.concat(parts));
      else finish(failure ?? new Error(`${what} at ${describeAddress(addr)}: closed without an answer`));
    });
    sock.once('connect', () => {
      send(sock).then(
        () => {
          if (!sock.destroyed) sock.end();
        },
        (err: unknown) => {
          // A write the peer cut short (EPIPE, ECONNRESET): its answer may follow, 'close' decides.
          failure ??= err instanceof Error ? err : new Error(String(err));
          sock.destroy();
        },
      );
    });
  });
}

/** Writes with backpressure; rejects when the socket fails or closes first. */
export function write(sock: net.Socket, data: Buffer | string): Promise<void> {
  if (sock.destroyed) return Promise.reject(new Error('connection closed while sending'));
  if (sock.write(data)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      sock.off('drain', onDrain);
      sock.off('close', onClose);
    };
    const onDrain = (): void => {
      cleanup();
      resolve();
    };
    const onClose = (): void => {
      cleanup();
      reject(new Error('connection closed while sending'));
    };
    sock.on('drain', onDrain);
    sock.on('close', onClose);
  });
}
