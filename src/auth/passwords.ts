// The password file that `mxguard user add|delete|list` manages: one `user:hash` line per user,
// the hash `scrypt$N$r$p$salt$key` (base64). Read by the server on demand and re-read when the
// file changes, so a new user can log in without a restart.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { promisify } from 'node:util';

const scrypt = promisify(crypto.scrypt) as (password: crypto.BinaryLike, salt: crypto.BinaryLike, keylen: number, options: crypto.ScryptOptions) => Promise<Buffer>;

// N=2^15 costs ~50 ms and 32 MiB per check: slow for a guesser, fine for a login.
const N = 32768;
const R = 8;
const P = 1;
const KEYLEN = 32;
const MAXMEM = 64 * 1024 * 1024;

export async function hashPassword(password: string): Promise<string> {
  const salt = crypto.randomBytes(16);
  const key = await scrypt(password, salt, KEYLEN, { N, r: R, p: P, maxmem: MAXMEM });
  return `scrypt$${N}$${R}$${P}$${salt.toString('base64')}$${key.toString('base64')}`;
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const m = /^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(stored);
  if (!m) return false;
  const [n, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (n > 1 << 20 || r > 32 || p > 16) return false; // a tampered file must not eat the machine
  const expected = Buffer.from(m[5] as string, 'base64');
  const key = await scrypt(password, Buffer.from(m[4] as string, 'base64'), expected.length, { N: n, r, p, maxmem: 256 * n * r + MAXMEM });
  return key.length === expected.length && crypto.timingSafeEqual(key, expected);
}

/** A user name as the file stores it: no colon, no white space or control characters. */
export function userNameError(user: string): string | undefined {
  if (user === '' || user.length > 256) return 'a user name has 1 to 256 characters';
  if (/[:\s\x00-\x1f\x7f]/.test(user)) return 'a user name has no colon, space or control character';
  return undefined;
}

export function readUsers(file: string): Map<string, string> {
  const users = new Map<string, string>();
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return users;
    throw err;
  }
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (line.startsWith('#') || colon <= 0) continue;
    users.set(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  return users;
}

/** Writes the file atomically, readable by its owner only. */
export function writeUsers(file: string, users: ReadonlyMap<string, string>): void {
  const text = [...users].sort(([a], [b]) => (a < b ? -1 : 1)).map(([u, h]) => `${u}:${h}\n`).join('');
  fs.writeFileSync(file + '.tmp', text, { mode: 0o600 });
  fs.renameSync(file + '.tmp', file);
}

/** The server's view of the file: cached, re-read when its mtime or size changes. */
export class PasswordFile {
  readonly file: string;
  private users = new Map<string, string>();
  private stamp = '';
  /** A real hash to check unknown users against, so their answer takes as long as a wrong password. */
  private dummy: Promise<string> | undefined;

  constructor(file: string) {
    this.file = file;
  }

  private current(): Map<string, string> {
    let stamp = 'missing';
    try {
      const st = fs.statSync(this.file);
      stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch {
      // no file: no users
    }
    if (stamp !== this.stamp) {
      this.users = stamp === 'missing' ? new Map() : readUsers(this.file);
      this.stamp = stamp;
    }
    return this.users;
  }

  async verify(user: string, password: string): Promise<boolean> {
    const stored = this.current().get(user);
    if (stored === undefined) {
      this.dummy ??= hashPassword(crypto.randomBytes(16).toString('hex'));
      await verifyPassword(password, await this.dummy);
      return false;
    }
    return verifyPassword(password, stored);
  }
}
