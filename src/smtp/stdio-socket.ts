// `mxguard stdio`'s connection: what inetd, systemd socket activation (Accept=yes), ucspi-tcp's
// tcpserver or socat hand the program on file descriptors 0 and 1, and who is on the other end.
import fs from 'node:fs';
import net from 'node:net';
import { Duplex, type Readable, type Writable } from 'node:stream';
import type { Connection, SessionSocket } from './session.ts';
import { plainIp } from '../util/cidr.ts';

/** Same file on both descriptors (a socket dup()ed onto 0 and 1, as every launcher does). */
export function sameFile(a: number, b: number): boolean {
  try {
    const sa = fs.fstatSync(a);
    const sb = fs.fstatSync(b);
    return sa.dev === sb.dev && sa.ino === sb.ino;
  } catch {
    return false;
  }
}

/**
 * The client connection on standard input and output. When both are one socket, it is used as
 * a socket (it can be half-closed, and a TCP one knows its peer); otherwise (two pipes, a file
 * for testing) the two streams are joined into one duplex. Either way the end of the input
 * leaves the output open (allowHalfOpen): a client that shuts its sending side after QUIT
 * (Exim does) still reads every reply; the session closes the output when it is done.
 */
export function stdioSocket(): SessionSocket {
  if (fs.fstatSync(0).isSocket() && sameFile(0, 1)) return new net.Socket({ fd: 0, readable: true, writable: true, allowHalfOpen: true });
  return new JoinedStreams(process.stdin, process.stdout);
}

/** A readable and a writable as one duplex, with net.Socket's idle timeout. */
class JoinedStreams extends Duplex {
  private readonly input: Readable;
  private readonly output: Writable;
  private timeoutMs = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(input: Readable, output: Writable) {
    super({ allowHalfOpen: true });
    this.input = input;
    this.output = output;
    input.on('data', (chunk: Buffer) => {
      this.touch();
      if (!this.push(chunk)) input.pause();
    });
    input.on('end', () => this.push(null));
    input.on('error', (err) => this.destroy(err));
    output.on('error', (err) => this.destroy(err));
  }

  override _read(): void {
    this.input.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (err?: Error | null) => void): void {
    this.touch();
    this.output.write(chunk, done);
  }

  override _final(done: (err?: Error | null) => void): void {
    this.input.pause();
    done();
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    clearTimeout(this.timer);
    this.input.pause();
    done(err);
  }

  setTimeout(ms: number): this {
    this.timeoutMs = ms;
    this.touch();
    return this;
  }

  private touch(): void {
    clearTimeout(this.timer);
    this.timer = this.timeoutMs > 0 ? setTimeout(() => this.emit('timeout'), this.timeoutMs) : undefined;
    this.timer?.unref();
  }
}

function ipFrom(...values: Array<string | undefined>): string | undefined {
  for (const v of values) if (v !== undefined && net.isIP(plainIp(v)) !== 0) return plainIp(v);
  return undefined;
}

function portFrom(...values: Array<string | number | undefined>): number {
  for (const v of values) {
    const n = Number(v);
    if (v !== undefined && v !== '' && Number.isInteger(n) && n >= 0 && n <= 65535) return n;
  }
  return 0;
}

/**
 * Who the client is, from the launcher's variables: ucspi-tcp's TCPREMOTEIP/TCPREMOTEPORT/
 * TCPLOCALIP/TCPLOCALPORT/TCPREMOTEHOST, then systemd's and CGI's REMOTE_ADDR/REMOTE_PORT,
 * then socat's SOCAT_PEERADDR, then the socket itself (inetd sets no variables). Undefined when
 * none names a valid address. TCPREMOTEHOST is tcpserver's reverse DNS name (checked forward
 * with tcpserver -p); it saves mxguard the lookup.
 */
export function connectionFromEnv(env: NodeJS.ProcessEnv, socket: SessionSocket): Connection | undefined {
  const sock = socket instanceof net.Socket ? socket : undefined;
  const remoteIp = ipFrom(env.TCPREMOTEIP, env.REMOTE_ADDR, env.SOCAT_PEERADDR, sock?.remoteAddress);
  if (remoteIp === undefined) return undefined;
  const host = env.TCPREMOTEHOST?.trim().toLowerCase();
  return {
    remoteIp,
    remotePort: portFrom(env.TCPREMOTEPORT, env.REMOTE_PORT, env.SOCAT_PEERPORT, sock?.remotePort),
    localIp: ipFrom(env.TCPLOCALIP, env.SOCAT_SOCKADDR, sock?.localAddress) ?? '',
    localPort: portFrom(env.TCPLOCALPORT, env.SOCAT_SOCKPORT, sock?.localPort),
    ...(host && /^[a-z0-9.-]{1,253}$/.test(host) ? { clientHostname: host } : {}),
    ...(env.RBLSMTPD !== undefined ? { rblsmtpd: env.RBLSMTPD } : {}),
  };
}
