// A raw SMTP client for tests: sends exact octets and reads whole replies (multi-line aware),
// so tests can drive pipelining, chunk splits and protocol abuse that real clients never send.
import net from 'node:net';
import tls from 'node:tls';

export class RawClient {
  private socket: net.Socket;
  private buf = '';
  private waiters: Array<() => void> = [];
  ended = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.listen(socket);
  }

  private listen(socket: net.Socket): void {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      this.buf += d;
      this.wake();
    });
    socket.on('end', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** `localAddress`: appear as another client (every 127.x.y.z is this machine). */
  static connect(port: number, host = '127.0.0.1', localAddress?: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ port, host, noDelay: true, ...(localAddress ? { localAddress } : {}) }, () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  send(data: string | Buffer): void {
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  /** Reads `count` complete replies; each is returned with its lines joined by "\n". */
  async replies(count: number, timeoutMs = 5000): Promise<string[]> {
    const out: string[] = [];
    const deadline = Date.now() + timeoutMs;
    while (out.length < count) {
      const reply = this.takeReply();
      if (reply !== undefined) {
        out.push(reply);
        continue;
      }
      if (this.ended) throw new Error(`connection closed after ${out.length}/${count} replies: ${JSON.stringify(out)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout after ${out.length}/${count} replies: ${JSON.stringify(out)} pending ${JSON.stringify(this.buf)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return out;
  }

  async reply(timeoutMs = 5000): Promise<string> {
    return (await this.replies(1, timeoutMs))[0] as string;
  }

  private takeReply(): string | undefined {
    const lines: string[] = [];
    let pos = 0;
    for (;;) {
      const nl = this.buf.indexOf('\r\n', pos);
      if (nl === -1) return undefined;
      const line = this.buf.slice(pos, nl);
      lines.push(line);
      pos = nl + 2;
      if (line.length < 4 || line[3] !== '-') {
        this.buf = this.buf.slice(pos);
        return lines.join('\n');
      }
    }
  }

  /** Resolves when the server has closed the connection. */
  async closed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return this.ended;
  }

  /** Upgrades to TLS after a 220 to STARTTLS (test certificates are self-signed). */
  async startTls(): Promise<tls.TLSSocket> {
    const raw = this.socket;
    raw.removeAllListeners('data');
    const secure = tls.connect({ socket: raw, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    this.socket = secure;
    this.buf = '';
    this.listen(secure);
    return secure;
  }

  close(): void {
    this.socket.destroy();
  }

  /** Aborts the connection with a TCP RST (a client that gave up), where close() sends a FIN the server may take for a half-close. */
  reset(): void {
    (this.socket as net.Socket).resetAndDestroy();
  }
}
