// The password file that `mxguard user add|delete|list` manages: one `user:hash` line per user,
// the hash `scrypt$N$r$p$salt$key` (base64). Read by the server on demand and re-read when the
// file changes, so a new user can log in without a restart.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { promisify } from 'node:util';
import { AuthBusyError, HashRefusedError } from './errors.ts';

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

/**
 * The most a users-file line may ask of one check: scrypt's memory is 128·N·r octets, its time
 * grows with N·r·p. Twice what `mxguard user add` writes (N=2^15, r=8, p=1: 32 MiB, ~50 ms); a
 * line asking for more is refused, never run (N=2^20 took 3.3 GB and 14 s per check).
 */
export const SCRYPT_MAX = { memory: 64 * 1024 * 1024, work: 2 * N * R * P, keyBytes: 64 } as const;

interface ParsedHash {
  n: number;
  r: number;
  p: number;
  salt: Buffer;
  key: Buffer;
}

function parseHash(stored: string): ParsedHash | string {
  const m = /^scrypt\$(\d{1,10})\$(\d{1,10})\$(\d{1,10})\$([A-Za-z0-9+/=]{1,1024})\$([A-Za-z0-9+/=]{1,1024})$/.exec(stored);
  if (!m) return 'not a hash of `mxguard user add` (scrypt$N$r$p$salt$key)';
  const [n, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const key = Buffer.from(m[5] as string, 'base64');
  if (n < 2 || (n & (n - 1)) !== 0 || r < 1 || p < 1) return `scrypt N=${n} r=${r} p=${p}: N must be a power of 2, r and p at least 1`;
  if (128 * n * r > SCRYPT_MAX.memory || n * r * p > SCRYPT_MAX.work) {
    return `scrypt N=${n} r=${r} p=${p} asks for ${Math.ceil((128 * n * r) / 2 ** 20)} MiB and ${((n * r * p) / (N * R * P)).toFixed(1)}× the work of a check; at most ${SCRYPT_MAX.memory / 2 ** 20} MiB and ${SCRYPT_MAX.work / (N * R * P)}× (set the password again with \`mxguard user add\`)`;
  }
  if (key.length < 16 || key.length > SCRYPT_MAX.keyBytes) return `a key of ${key.length} octets; 16 to ${SCRYPT_MAX.keyBytes}`;
  return { n, r, p, salt: Buffer.from(m[4] as string, 'base64'), key };
}

/** Why this mxguard will not check a password against `stored` (undefined: it will). */
export function hashProblem(stored: string): string | undefined {
  const h = parseHash(stored);
  return typeof h === 'string' ? h : undefined;
}

/** False for a wrong password, and for a hash that hashProblem refuses (which is never run). */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const h = parseHash(stored);
  if (typeof h === 'string') return false;
  const key = await scrypt(password, h.salt, h.key.length, { N: h.n, r: h.r, p: h.p, maxmem: 256 * h.n * h.r + MAXMEM });
  return crypto.timingSafeEqual(key, h.key);
}

/** A line of the users file that this mxguard refuses (1-based line number). */
export interface UsersFileProblem {
  line: number;
  user: string;
  message: string;
}

/** The lines of `text` (a users file) whose hash hashProblem refuses. */
export function usersFileProblems(text: string): UsersFileProblem[] {
  const out: UsersFileProblem[] = [];
  text.split('\n').forEach((line, i) => {
    const colon = line.indexOf(':');
    if (line.startsWith('#') || colon <= 0) return;
    const message = hashProblem(line.slice(colon + 1).trim());
    if (message !== undefined) out.push({ line: i + 1, user: line.slice(0, colon), message });
  });
  return out;
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

/**
 * Writes the file atomically, readable by its owner only: `owner` when given (root writing the
 * file of the user mxguard runs as). The temporary file is made anew (O_EXCL: never through a
 * link someone left there).
 */
export function writeUsers(file: string, users: ReadonlyMap<string, string>, owner?: { uid: number; gid: number }): void {
  const text = [...users].sort(([a], [b]) => (a < b ? -1 : 1)).map(([u, h]) => `${u}:${h}\n`).join('');
  const tmp = file + '.tmp';
  fs.rmSync(tmp, { force: true });
  const fd = fs.openSync(tmp, 'wx', 0o600);
  try {
    if (owner) fs.fchownSync(fd, owner.uid, owner.gid);
    fs.writeFileSync(fd, text);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

/** Password checks running now, in this process (all PasswordFiles: they share one thread pool). */
let checksRunning = 0;
/** Password checks run since start (each an scrypt); for tests and metrics. */
let checksRun = 0;

export function passwordCheckCounts(): { running: number; run: number } {
  return { running: checksRunning, run: checksRun };
}

/** libuv's thread pool size (UV_THREADPOOL_SIZE, default 4): spool fsyncs and scrypt share it. */
export function threadPoolSize(): number {
  const n = Number(process.env.UV_THREADPOOL_SIZE);
  return Number.isInteger(n) && n >= 1 ? Math.min(n, 1024) : 4;
}

/**
 * How many checks may run at once: the setting, but always two pool threads left for the spool's
 * fsyncs (so no number of AUTHs can delay a 250), and at least one.
 */
export function checkLimit(setting: number): number {
  return Math.max(1, Math.min(setting, threadPoolSize() - 2));
}

/** The server's view of the file: cached, re-read when its mtime or size changes. */
export class PasswordFile {
  readonly file: string;
  /** At most this many checks at once; more get AuthBusyError at once. */
  readonly limit: number;
  private users = new Map<string, string>();
  private stamp = '';
  /** A real hash to check unknown users against, so their answer takes as long as a wrong password. */
  private dummy: Promise<string> | undefined;

  constructor(file: string, maxConcurrentChecks = 4) {
    this.file = file;
    this.limit = checkLimit(maxConcurrentChecks);
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

  /**
   * True for the right password. Throws AuthBusyError (nothing checked) when `limit` checks are
   * running, and HashRefusedError when the user's hash asks for more than SCRYPT_MAX (it is not
   * run: a check against the dummy hash takes its place, so the answer takes as long).
   */
  async verify(user: string, password: string): Promise<boolean> {
    if (checksRunning >= this.limit) throw new AuthBusyError(this.limit);
    checksRunning++;
    checksRun++;
    try {
      const stored = this.current().get(user);
      const refused = stored === undefined ? undefined : hashProblem(stored);
      if (stored === undefined || refused !== undefined) {
        this.dummy ??= hashPassword(crypto.randomBytes(16).toString('hex'));
        await verifyPassword(password, await this.dummy);
        if (refused !== undefined) throw new HashRefusedError(user, refused);
        return false;
      }
      return await verifyPassword(password, stored);
    } finally {
      checksRunning--;
    }
  }
}
