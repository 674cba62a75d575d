// A small tmpfs to fill up: the real "file system full" for the disk-full tests. Mounting needs
// root (the test machines and CI run as root); without it the test fails with the reason.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';

/** Mounts a tmpfs of `size` on `dir`; returns its unmount (lazy if busy), for the test's clean-up. */
export function mountTmpfs(dir: string, size: string): () => void {
  const uid = process.getuid?.();
  if (uid !== 0) throw new Error(`this test mounts a tmpfs to fill it up and must run as root (uid 0); it runs as uid ${uid}`);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cannot mount a tmpfs on ${dir} (mount exit ${r.status}): ${r.stderr || r.error?.message}`);
  return () => {
    if (spawnSync('umount', [dir]).status !== 0) spawnSync('umount', ['-l', dir]);
  };
}

/** Fills the file system holding `file` (appending to it) until no octet is left; returns the octets written. */
export function fill(file: string): number {
  const fd = fs.openSync(file, 'a');
  let total = 0;
  try {
    for (const size of [65536, 4096, 512, 64, 1]) {
      const chunk = Buffer.alloc(size, 0x78);
      for (;;) {
        try {
          total += fs.writeSync(fd, chunk);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
          break;
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return total;
}
