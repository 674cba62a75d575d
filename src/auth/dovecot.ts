// Checks passwords with Dovecot's auth service, over its auth client socket (a Unix socket
// path, or host:port for an inet_listener): "the same username and password as on the POP
// server". The protocol is Dovecot's auth client protocol 1.x: TAB-separated lines,
//   C: VERSION 1 2 / CPID <pid>       S: VERSION 1 2, MECH …, SPID, CUID, COOKIE, DONE
//   C: AUTH <id> PLAIN service=smtp [secured] rip=… lip=… resp=<base64 \0user\0pass>
//   S: OK <id> user=… | FAIL <id> … | CONT <id> …
// One connection, reopened on demand; requests are told apart by their id.
import net from 'node:net';

const TIMEOUT_MS = 5000;

interface Pending {
  resolve: (ok: boolean) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class DovecotAuth {
  private readonly target: { path: string } | { host: string; port: number };
  private socket: net.Socket | undefined;
  private ready: Promise<void> | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();

  /** `where`: a socket path, or host:port. */
  constructor(where: string) {
    const m = /^(.+):(\d+)$/.exec(where);
    this.target = !where.includes('/') && m ? { host: m[1] as string, port: Number(m[2]) } : { path: where };
  }

  private connect(): Promise<void> {
    if (this.ready) return this.ready;
    this.ready = new Promise<void>((resolve, reject) => {
      const socket = net.connect(this.target);
      this.socket = socket;
      let buf = '';
      let handshaken = false;
      const fail = (err: Error) => {
        this.socket = undefined;
        this.ready = undefined;
        for (const [id, p] of this.pending) {
          clearTimeout(p.timer);
          p.reject(err);
          this.pending.delete(id);
        }
        reject(err);
      };
      const timer = setTimeout(() => {
        socket.destroy();
        fail(new Error('dovecot auth: no handshake'));
      }, TIMEOUT_MS);
      socket.setEncoding('utf8');
      socket.on('connect', () => socket.write(`VERSION\t1\t2\nCPID\t${process.pid}\n`));
      socket.on('data', (d: string) => {
        buf += d;
        if (buf.length > 65536) socket.destroy(new Error('dovecot auth: line too long'));
        let nl: number;
        while ((nl = buf.indexOf('\n')) !== -1) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!handshaken) {
            if (line.startsWith('VERSION\t') && !line.startsWith('VERSION\t1\t')) socket.destroy(new Error(`dovecot auth: unsupported ${line}`));
            if (line === 'DONE') {
              handshaken = true;
              clearTimeout(timer);
              resolve();
            }
            continue;
          }
          this.answer(line);
        }
      });
      socket.on('error', (err) => fail(new Error(`dovecot auth: ${err.message}`)));
      socket.on('close', () => fail(new Error('dovecot auth: connection closed')));
    });
    return this.ready;
  }

  private answer(line: string): void {
    const [kind, idText] = line.split('\t');
    const id = Number(idText);
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (kind === 'OK') p.resolve(true);
    else if (kind === 'FAIL') p.resolve(false);
    else p.resolve(false); // CONT: PLAIN never needs another round; treat as a failure
  }

  /** True when Dovecot accepts user/password; throws when Dovecot cannot be asked. */
  async verify(user: string, password: string, client: { ip: string; localIp: string; secured: boolean }): Promise<boolean> {
    await this.connect();
    const socket = this.socket as net.Socket;
    const id = this.nextId++;
    const resp = Buffer.from(`\0${user}\0${password}`, 'utf8').toString('base64');
    const fields = ['AUTH', String(id), 'PLAIN', 'service=smtp', ...(client.secured ? ['secured'] : []), `rip=${client.ip}`, `lip=${client.localIp}`, 'no-penalty', `resp=${resp}`];
    return new Promise<boolean>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error('dovecot auth: no answer'));
      }, TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      socket.write(fields.join('\t') + '\n');
    });
  }

  close(): void {
    this.socket?.destroy();
  }
}
