// The file-system calls on the path to a 250, in one place, so that every write checks its
// count and tests can inject faults (ENOSPC at the k-th write, short writes, a failing fsync)
// without a real full disk. Node's fs.write*/writev* report a partial write on a full file
// system as a short count with no error: a short count is never success here.
import fs from 'node:fs';
import zlib from 'node:zlib';

/** The calls the spool makes. Tests replace members to inject faults; code calls through this object. */
export const spoolFs = {
  writevSync: (fd: number, bufs: readonly NodeJS.ArrayBufferView[], position?: number | null): number => fs.writevSync(fd, bufs, position ?? undefined),
  writev: (fd: number, bufs: readonly NodeJS.ArrayBufferView[]): Promise<number> =>
    new Promise((resolve, reject) => fs.writev(fd, bufs, null, (err, n) => (err ? reject(err) : resolve(n)))),
  fdatasync: (fd: number): Promise<void> => new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve()))),
  fsync: (fd: number): Promise<void> => new Promise((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve()))),
  openSync: (file: string, flags: string, mode?: number): number => fs.openSync(file, flags, mode),
  linkSync: (from: string, to: string): void => fs.linkSync(from, to),
  renameSync: (from: string, to: string): void => fs.renameSync(from, to),
};

/** An I/O error that means "no room": the client is told 452 4.3.1 (RFC 3463), not 451. */
export function isStorageFull(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

function shortWrite(written: number, total: number): NodeJS.ErrnoException {
  const err: NodeJS.ErrnoException = new Error(`short write: ${written} of ${total} octets (file system full?)`);
  err.code = 'ENOSPC';
  return err;
}

function totalLength(bufs: readonly NodeJS.ArrayBufferView[]): number {
  let n = 0;
  for (const b of bufs) n += b.byteLength;
  return n;
}

/** The buffers left after the first `skip` octets. */
function rest(bufs: readonly NodeJS.ArrayBufferView[], skip: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const b of bufs) {
    const u = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    if (skip >= u.length) {
      skip -= u.length;
      continue;
    }
    out.push(skip > 0 ? u.subarray(skip) : u);
    skip = 0;
  }
  return out;
}

/**
 * Writes every octet of `bufs` (at `position`, or at the file position), going on after a short
 * count; a write that makes no progress is an ENOSPC error. Throws on any error.
 */
export function writevAllSync(fd: number, bufs: readonly NodeJS.ArrayBufferView[], position?: number): void {
  const total = totalLength(bufs);
  let done = 0;
  while (done < total) {
    const left = done === 0 ? bufs : rest(bufs, done);
    const n = spoolFs.writevSync(fd, left, position === undefined ? null : position + done);
    if (n <= 0) throw shortWrite(done, total);
    done += n;
  }
}

/** writevAllSync's asynchronous twin (file position only), for large messages. */
export async function writevAll(fd: number, bufs: readonly NodeJS.ArrayBufferView[]): Promise<void> {
  const total = totalLength(bufs);
  let done = 0;
  while (done < total) {
    const n = await spoolFs.writev(fd, done === 0 ? bufs : rest(bufs, done));
    if (n <= 0) throw shortWrite(done, total);
    done += n;
  }
}

/** CRC-32 of several buffers in a row (zlib's, ~2.6 GB/s here: cheap beside the fsync it guards). */
export function crc32Of(bufs: readonly Uint8Array[], crc = 0): number {
  for (const b of bufs) crc = zlib.crc32(b, crc);
  return crc;
}

export function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}
