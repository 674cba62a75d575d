// Running as an unprivileged user (seed 004's smtpd -u -g, Postfix's mail_owner). Started as
// root, mxguard binds its listeners (port 25 needs root or CAP_NET_BIND_SERVICE), hands data_dir
// to the configured user and group, and gives root up for good before it opens the spool, the
// store or any message: everything it writes afterwards belongs to that user.
//
// Names are resolved with getent, so users from NSS (LDAP, systemd's DynamicUser) work too.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';

export interface RunAs {
  readonly user: string;
  readonly uid: number;
  readonly gid: number;
  /** Supplementary groups: the user's (id -G), with gid. */
  readonly groups: readonly number[];
}

export class PrivilegeError extends Error {
  override readonly name = 'PrivilegeError';
}

/** One getent database entry (`passwd` or `group`) by name or number: its fields, or undefined. */
function getent(db: 'passwd' | 'group', key: string): string[] | undefined {
  try {
    return execFileSync('getent', [db, key], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split('\n')[0]?.split(':');
  } catch {
    return undefined; // exit 2: no such entry
  }
}

/** The uid and gid to run as: `user` (name or number) and `group` (default: the user's primary group). */
export function resolveRunAs(user: string, group: string | undefined): RunAs {
  const pw = getent('passwd', user);
  if (!pw || pw.length < 4) throw new PrivilegeError(`user: no such user "${user}"`);
  const uid = Number(pw[2]);
  let gid = Number(pw[3]);
  if (group !== undefined) {
    const gr = getent('group', group);
    if (!gr || gr.length < 3) throw new PrivilegeError(`group: no such group "${group}"`);
    gid = Number(gr[2]);
  }
  if (uid === 0) throw new PrivilegeError(`user: "${user}" is root; name an unprivileged user (e.g. mxguard)`);
  let groups: number[] = [];
  try {
    groups = execFileSync('id', ['-G', pw[0] as string], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split(/\s+/).map(Number).filter(Number.isInteger);
  } catch {
    // no supplementary groups known
  }
  return { user: pw[0] as string, uid, gid, groups: [...new Set([gid, ...groups])] };
}

/** Errors a walk as root steps over: gone meanwhile, or not root's to see (NFS with root squash). */
const SKIPPABLE = new Set(['ENOENT', 'EACCES', 'EPERM', 'ENOTDIR', 'ELOOP', 'ENXIO']);

function skippable(err: unknown): boolean {
  return SKIPPABLE.has((err as NodeJS.ErrnoException).code ?? '');
}

/**
 * Gives `dir` and everything under it to uid:gid where it is not theirs yet; returns how many
 * entries changed. Safe against the user it hands the tree to: that user may already own
 * directories in it and rename or replace entries while root walks. So every step is taken
 * relative to a directory already opened (O_NOFOLLOW), through /proc/self/fd/N/NAME (Linux's
 * openat/fchownat, which Node lacks): a directory swapped for a symbolic link is never followed,
 * a link itself is only re-owned, and a file with other hard links is left alone (it may be
 * someone else's file linked in). Entries root cannot see (NFS root squash) or that vanish are
 * skipped: the access check after the drop says what matters.
 */
export function chownTree(dir: string, uid: number, gid: number): number {
  const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK, O_NOCTTY } = fs.constants;
  let changed = 0;
  /** An entry of an open directory (the link itself for a symbolic link), or an open directory by descriptor. */
  const give = (at: string | number, st: fs.Stats): void => {
    if (st.uid === uid && st.gid === gid) return;
    if (!st.isDirectory() && !st.isSymbolicLink() && (st.nlink > 1 || !st.isFile())) return;
    if (typeof at === 'number') fs.fchownSync(at, uid, gid);
    else fs.lchownSync(at, uid, gid);
    changed++;
  };
  const walk = (fd: number): void => {
    const here = `/proc/self/fd/${fd}`;
    for (const name of fs.readdirSync(here)) {
      const at = `${here}/${name}`;
      try {
        const st = fs.lstatSync(at);
        if (st.isDirectory()) {
          const sub = fs.openSync(at, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
          try {
            give(sub, fs.fstatSync(sub));
            walk(sub);
          } finally {
            fs.closeSync(sub);
          }
        } else if (st.isSymbolicLink() || (st.uid === uid && st.gid === gid)) {
          give(at, st); // a link is re-owned itself, never followed
        } else {
          // Re-owned through a descriptor, judged by what it is now: the entry may have been
          // swapped since lstat (for a hard link to someone else's file, say).
          const file = fs.openSync(at, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
          try {
            give(file, fs.fstatSync(file));
          } finally {
            fs.closeSync(file);
          }
        }
      } catch (err) {
        if (!skippable(err)) throw err;
      }
    }
  };
  // data_dir itself may be a symbolic link the administrator made (moved to another disk).
  const top = fs.openSync(fs.realpathSync(dir), O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  try {
    give(top, fs.fstatSync(top));
    walk(top);
  } finally {
    fs.closeSync(top);
  }
  return changed;
}

/** Gives one file (the log file) to uid:gid: a plain file with no other hard link, never through a symbolic link. */
function chownFile(file: string, uid: number, gid: number): void {
  const { O_RDONLY, O_NOFOLLOW, O_NONBLOCK } = fs.constants;
  let fd: number;
  try {
    fd = fs.openSync(file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new PrivilegeError(`${file}: ${(err as NodeJS.ErrnoException).code === 'ELOOP' ? 'a symbolic link: not handed to the user' : (err as Error).message}`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.nlink > 1) throw new PrivilegeError(`${file}: not a plain file of its own (hard links?): not handed to the user`);
    if (st.uid !== uid || st.gid !== gid) fs.fchownSync(fd, uid, gid);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Becomes `runAs` for good: supplementary groups, gid, uid (in that order: after setuid the others
 * are not allowed). Then checks that root cannot be taken back.
 */
export function dropPrivileges(runAs: RunAs): void {
  process.setgroups?.(runAs.groups);
  process.setgid?.(runAs.gid);
  process.setuid?.(runAs.uid);
  if (process.getuid?.() !== runAs.uid || process.getgid?.() !== runAs.gid) throw new PrivilegeError(`could not become ${runAs.uid}:${runAs.gid}`);
  let regained = false;
  try {
    process.setuid?.(0);
    regained = true;
  } catch {
    // EPERM: as it should be
  }
  if (regained) throw new PrivilegeError('root could be taken back after dropping privileges');
}

/**
 * What a process started as root does before it touches data_dir, when `user` is configured:
 * data_dir (and the log file) are given to that user, then root is given up. Not root: nothing to
 * drop, but running as another user than the configured one is refused (the files would be theirs).
 * Returns whom the process now runs as (undefined: no user configured).
 */
export function becomeConfiguredUser(settings: { user?: string; group?: string; data_dir: string }, alsoOwn: readonly string[] = []): RunAs | undefined {
  if (settings.user === undefined) return undefined;
  const runAs = resolveRunAs(settings.user, settings.group);
  if (process.getuid?.() !== 0) {
    if (process.getuid?.() !== runAs.uid) throw new PrivilegeError(`user: configured to run as ${runAs.user} (uid ${runAs.uid}), but started as uid ${process.getuid?.()} without root to switch`);
    return runAs;
  }
  fs.mkdirSync(settings.data_dir, { recursive: true });
  chownTree(settings.data_dir, runAs.uid, runAs.gid);
  for (const file of alsoOwn) chownFile(file, runAs.uid, runAs.gid);
  dropPrivileges(runAs);
  try {
    fs.accessSync(settings.data_dir, fs.constants.W_OK | fs.constants.X_OK);
  } catch {
    throw new PrivilegeError(`data_dir ${path.resolve(settings.data_dir)} is out of reach of user ${runAs.user}: a directory above it is closed to that user`);
  }
  return runAs;
}
