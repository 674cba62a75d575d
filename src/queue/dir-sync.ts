// Group commit for directory fsyncs: every caller that asks while one fsync is running is
// served by the next one, so N sessions committing at once cost two directory fsyncs, not N.
import fs from 'node:fs';

export class DirSync {
  private readonly fd: number;
  private running = false;
  private waiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];

  constructor(dirPath: string) {
    this.fd = fs.openSync(dirPath, 'r');
  }

  /** Resolves once an fsync of the directory that started after this call has finished. */
  sync(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      if (!this.running) this.start();
    });
  }

  private start(): void {
    const batch = this.waiters;
    this.waiters = [];
    this.running = true;
    fs.fsync(this.fd, (err) => {
      this.running = false;
      for (const w of batch) {
        if (err) w.reject(err);
        else w.resolve();
      }
      if (this.waiters.length > 0) this.start();
    });
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
