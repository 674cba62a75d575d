// Group commit: every caller that asks while an fsync is running is served by the next one,
// so N sessions committing at once cost two fsyncs, not N. Used for the spool directory and
// for journal segments.
import fs from 'node:fs';
import { spoolFs } from './spool-fs.ts';

export class SyncGroup {
  private readonly fd: number;
  private readonly data: boolean;
  private running = false;
  private waiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];

  /** `fd` is synced with fsync, or fdatasync when `dataOnly` (a file whose size is all that changes). */
  constructor(fd: number, dataOnly = false) {
    this.fd = fd;
    this.data = dataOnly;
  }

  static forDirectory(dirPath: string): SyncGroup {
    return new SyncGroup(fs.openSync(dirPath, 'r'));
  }

  /** Resolves once an fsync that started after this call has finished. */
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
    const settle = (err?: Error): void => {
      this.running = false;
      for (const w of batch) {
        if (err) w.reject(err);
        else w.resolve();
      }
      if (this.waiters.length > 0) this.start();
    };
    (this.data ? spoolFs.fdatasync : spoolFs.fsync)(this.fd).then(() => settle(), settle);
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
