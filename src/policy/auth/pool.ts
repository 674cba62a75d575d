// One worker thread per process for the `dmarc` check, shared by every check (a reload builds
// new checks: they find the same worker; each request names its resolver settings). It starts
// on first use, is unref'd (it never keeps the process alive) and ends after a minute without
// work; a worker that dies fails the messages it had (the check's on_error: accept) and the next
// message starts a new one.
import { Worker } from 'node:worker_threads';
import type { DnsResolver } from '../../dns/resolver.ts';
import type { Verified, VerifyInput } from './verify.ts';

const IDLE_MS = 60_000;

class AuthWorker {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, { resolve: (v: Verified) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private idle: NodeJS.Timeout | undefined;
  /** Verifies `message`, a buffer of its own (allocUnsafeSlow): it is transferred to the worker, and unusable here afterwards. */
  run(message: Buffer, input: VerifyInput, dns: DnsResolver, signal: AbortSignal): Promise<Verified> {
    const w = this.start();
    clearTimeout(this.idle);
    const id = this.nextId++;
    return new Promise<Verified>((resolve, reject) => {
      const onAbort = (): void => {
        this.pending.delete(id);
        if (this.pending.size === 0) w.unref();
        reject(new Error('aborted'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.pending.set(id, {
        resolve: (v) => {
          signal.removeEventListener('abort', onAbort);
          resolve(v);
        },
        reject: (e) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      });
      w.ref(); // a message being verified keeps the process alive; an idle worker does not
      w.postMessage({ id, message, input, servers: dns.servers(), timeoutMs: dns.timeoutMs }, [message.buffer as ArrayBuffer]);
    });
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(new URL('./worker.ts', import.meta.url));
    w.on('message', (m: { id: number; result?: Verified; error?: string }) => {
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.error !== undefined) p?.reject(new Error(m.error));
      else p?.resolve(m.result as Verified);
      if (this.pending.size === 0) {
        w.unref();
        this.armIdle();
      }
    });
    const gone = (why: string): void => {
      if (this.worker !== w) return;
      this.worker = undefined;
      for (const p of this.pending.values()) p.reject(new Error(`DKIM/DMARC worker ${why}`));
      this.pending.clear();
    };
    w.on('error', (err) => gone(`failed: ${err.message}`));
    w.on('exit', (code) => gone(`exited (${code})`));
    // After the listeners: adding a 'message' listener refs the worker's port again.
    w.unref();
    this.worker = w;
    return w;
  }

  private armIdle(): void {
    clearTimeout(this.idle);
    this.idle = setTimeout(() => {
      if (this.pending.size > 0 || !this.worker) return;
      const w = this.worker;
      this.worker = undefined;
      void w.terminate();
    }, IDLE_MS);
    this.idle.unref();
  }
}

let shared: AuthWorker | undefined;

/** This process's DKIM/DMARC worker. */
export function authWorker(): AuthWorker {
  return (shared ??= new AuthWorker());
}
