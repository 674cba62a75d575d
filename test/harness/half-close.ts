// A test client that half-closes: it writes, shuts its sending side (FIN, or the end of a pipe)
// and goes on reading until the server closes, as Exim does after a pipelined "." and QUIT.
// Over a TCP socket (optionally upgraded with STARTTLS) or over a child process's stdin/stdout.
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import type { Readable, Writable } from 'node:stream';

export class HalfCloseClient {
  private input: Readable;
  private output: Writable;
  private buf = '';
  private waiters: Array<() => void> = [];
  /** The server closed its side (or the connection is gone). */
  serverDone = false;

  private constructor(input: Readable, output: Writable) {
    this.input = input;
    this.output = output;
    this.listen(input);
  }

  /**
   * Connects to 127.0.0.1:port. `read: false` never reads (a client that does not take its
   * replies: only the first few KiB are ever taken off the socket).
   */
  static connect(port: number, opts: { read?: boolean } = {}): Promise<HalfCloseClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ port, host: '127.0.0.1', noDelay: true, allowHalfOpen: true }, () => resolve(new HalfCloseClient(socket, socket)));
      socket.once('error', reject);
      if (opts.read === false) socket.pause();
    });
  }

  /** Talks to a server over a pair of streams: what it writes (a child's stdout) and its input (stdin). */
  static over(fromServer: Readable, toServer: Writable): HalfCloseClient {
    toServer.on('error', () => undefined);
    return new HalfCloseClient(fromServer, toServer);
  }

  private listen(input: Readable): void {
    input.setEncoding('latin1');
    input.on('data', (d: string) => {
      this.buf += d;
      this.wake();
    });
    const done = (): void => {
      this.serverDone = true;
      this.wake();
    };
    input.on('end', done);
    input.on('close', done);
    input.on('error', () => undefined);
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private async until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0 || this.serverDone) {
        if (cond()) return;
        throw new Error(`${this.serverDone ? 'server closed' : 'timeout'} waiting for ${what}; got ${JSON.stringify(this.buf)}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** The next complete reply (the lines of a multi-line reply joined by "\n"). */
  async reply(timeoutMs = 5000): Promise<string> {
    let reply: string | undefined;
    await this.until(
      () => {
        const r = firstReply(this.buf);
        if (r === undefined) return false;
        reply = r.reply;
        this.buf = this.buf.slice(r.length);
        return true;
      },
      timeoutMs,
      'a reply',
    );
    return reply as string;
  }

  send(data: string): void {
    this.output.write(data, 'latin1');
  }

  /** Writes `data` (if any) and shuts the sending side: one write, then the FIN, as Exim does. */
  halfClose(data?: string): void {
    if (data === undefined) this.output.end();
    else this.output.end(data, 'latin1');
  }

  /** Everything the server sends until it closes its side, as one string. */
  async rest(timeoutMs = 5000): Promise<string> {
    await this.until(() => this.serverDone, timeoutMs, 'the server to close');
    const out = this.buf;
    this.buf = '';
    return out;
  }

  /** Upgrades a TCP client to TLS after "220 Ready to start TLS" (test certificates are self-signed). */
  async startTls(): Promise<void> {
    const raw = this.input;
    assert.ok(raw instanceof net.Socket, 'STARTTLS needs a socket');
    for (const ev of ['data', 'end', 'close']) raw.removeAllListeners(ev);
    // allowHalfOpen comes from the wrapped socket.
    const secure = tls.connect({ socket: raw, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    this.input = secure;
    this.output = secure;
    this.buf = '';
    this.listen(secure);
  }

  destroy(): void {
    this.input.destroy();
    this.output.destroy();
  }
}

/** The first complete reply in `text` and how many characters it takes, if there is one. */
function firstReply(text: string): { reply: string; length: number } | undefined {
  const lines: string[] = [];
  let pos = 0;
  for (;;) {
    const nl = text.indexOf('\r\n', pos);
    if (nl === -1) return undefined;
    const line = text.slice(pos, nl);
    lines.push(line);
    pos = nl + 2;
    if (line.length < 4 || line[3] !== '-') return { reply: lines.join('\n'), length: pos };
  }
}

/** Splits a run of replies into single replies ("250-a\r\n250 b\r\n221 c\r\n" → ["250-a\n250 b", "221 c"]). */
export function splitReplies(text: string): string[] {
  assert.ok(text === '' || text.endsWith('\r\n'), `replies end with CRLF: ${JSON.stringify(text)}`);
  const out: string[] = [];
  let rest = text;
  for (;;) {
    const r = firstReply(rest);
    if (r === undefined) break;
    out.push(r.reply);
    rest = rest.slice(r.length);
  }
  return out;
}
