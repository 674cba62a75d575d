// Local delivery into Maildir, the embedded default: one folder per recipient, <dir>/<local part>,
// or where the directory names it with %d (the recipient's domain) and %u (its local part), so
// that postmaster@example.com and postmaster@example.org stay apart (maildir:/var/mail/%d/%u).
// Each copy begins with Return-Path (the envelope sender) and Delivered-To (the recipient), as
// qmail-local and Postfix's local write them: the user can tell which address a message reached.
//
// The classic safe sequence: write into tmp/ under a unique name, fsync the file, rename into
// new/, fsync new/ so the rename itself survives a crash; only then is the result 'ok'.
// The message bytes are written exactly as spooled, CRLF line ends included: Maildir readers
// (Dovecot, mutt, Courier) accept CRLF, and rewriting would change what was signed (DKIM).
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { MessageBody, OutgoingMessage, RcptResult, Transport } from '../mail/transport.ts';

export interface MaildirTransportOptions {
  /** Base directory, each mailbox <dir>/<mailbox>/{tmp,new,cur}; or a path with %d and %u, each mailbox that path. */
  readonly dir: string;
}

/**
 * The mailbox folder for a recipient: its local part, lower-cased and without quotes, safe as one file name.
 * '/', '\', NUL and control characters become '_', as does a leading '.'; empty becomes '_'.
 */
export function mailboxName(rcpt: string): string {
  const at = rcpt.lastIndexOf('@');
  let local = (at === -1 ? rcpt : rcpt.slice(0, at)).toLowerCase();
  // A quoted local part names the folder of its content: "alice" is alice.
  if (local.length >= 2 && local.startsWith('"') && local.endsWith('"')) local = local.slice(1, -1).replace(/\\(.)/g, '$1');
  let name = local.replace(/[/\\\x00-\x1f\x7f]/g, '_');
  if (name.startsWith('.')) name = '_' + name.slice(1);
  // File names are limited to 255 bytes; local parts to 64 octets, but do not trust that.
  while (Buffer.byteLength(name) > 200) name = name.slice(0, -1);
  return name === '' ? '_' : name;
}

/** The recipient's domain as one safe path component (lower case; '/', '\\', control characters and a leading '.' become '_'). */
export function domainFolder(rcpt: string): string {
  const at = rcpt.lastIndexOf('@');
  const d = at === -1 ? '' : rcpt.slice(at + 1).toLowerCase();
  const name = d.replace(/[/\\\x00-\x1f\x7f]/g, '_').replace(/^\./, '_');
  return name === '' ? '_' : name.slice(0, 200);
}

/** The mailbox directory of a recipient: `dir` with %d and %u filled in, or <dir>/<local part>. */
export function mailboxPath(dir: string, rcpt: string): string {
  if (!/%[du]/.test(dir)) return path.join(dir, mailboxName(rcpt));
  return path.resolve(dir.replace(/%([du])/g, (_, k: string) => (k === 'd' ? domainFolder(rcpt) : mailboxName(rcpt))));
}

/** The fields a delivered copy begins with (qmail-local's order). */
export function deliveryFields(mailFrom: string, rcpt: string): Buffer {
  return Buffer.from(`Return-Path: <${mailFrom}>\r\nDelivered-To: ${rcpt}\r\n`);
}

// Maildir's own escaping for the host part of the unique name.
const HOST = os.hostname().replace(/\//g, '\\057').replace(/:/g, '\\072') || 'localhost';
let counter = 0;

/** A unique Maildir file name: <seconds>.M<microseconds>P<pid>Q<counter>.<hostname>. */
export function uniqueName(): string {
  const nowUs = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  const sec = Math.floor(nowUs / 1_000_000);
  const micro = nowUs % 1_000_000;
  counter += 1;
  return `${sec}.M${micro}P${process.pid}Q${counter}.${HOST}`;
}

function errnoCode(err: unknown): string | undefined {
  return err instanceof Error && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

async function* withFields(fields: Buffer, body: MessageBody): AsyncIterable<Buffer> {
  yield fields;
  yield* body.chunks();
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

class MaildirTransport implements Transport {
  readonly name: string;
  readonly #dir: string;
  /** Mailboxes whose tmp/new/cur are known to exist. */
  readonly #ready = new Set<string>();

  constructor(opts: MaildirTransportOptions) {
    this.#dir = /%[du]/.test(opts.dir) ? opts.dir : path.resolve(opts.dir);
    this.name = `maildir:${this.#dir}`;
  }

  async deliver(msg: OutgoingMessage): Promise<RcptResult[]> {
    const results: RcptResult[] = [];
    for (const rcpt of msg.rcpts) {
      // Outcomes are logged once, by the forwarder.
      results.push(await this.#deliverOne(rcpt, msg.mailFrom, msg.body));
    }
    return results;
  }

  async #deliverOne(rcpt: string, mailFrom: string, body: MessageBody): Promise<RcptResult> {
    const box = mailboxPath(this.#dir, rcpt);
    const name = uniqueName();
    const tmp = path.join(box, 'tmp', name);
    const final = path.join(box, 'new', name);
    let created = false;
    try {
      if (!this.#ready.has(box)) await this.#prepare(box);
      let fh: fsp.FileHandle;
      try {
        fh = await fsp.open(tmp, 'wx', 0o600);
      } catch (err) {
        if (errnoCode(err) !== 'ENOENT') throw err;
        // Someone removed the mailbox since we made it: make it again, once.
        this.#ready.delete(box);
        await this.#prepare(box);
        fh = await fsp.open(tmp, 'wx', 0o600);
      }
      created = true;
      try {
        await fh.writeFile(withFields(deliveryFields(mailFrom, rcpt), body)); // loops over short writes for us
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fsp.rename(tmp, final);
      created = false;
      await fsyncDir(path.join(box, 'new'));
      return { rcpt, status: 'ok', code: 250, text: `2.0.0 delivered to ${final}`, dsnAction: 'delivered' };
    } catch (err) {
      if (created) await fsp.unlink(tmp).catch(() => undefined);
      const code = errnoCode(err);
      const text = err instanceof Error ? err.message : String(err);
      if (code === 'ENOSPC' || code === 'EDQUOT') return { rcpt, status: 'temp', code: 452, text: `4.3.1 maildir delivery to ${box} failed: ${text}` };
      return { rcpt, status: 'temp', code: 451, text: `4.3.0 maildir delivery to ${box} failed: ${text}` };
    }
  }

  /** Creates <box>/{tmp,new,cur} (mode 0700) and makes new directory entries durable. */
  async #prepare(box: string): Promise<void> {
    let createdAny = false;
    for (const sub of ['tmp', 'new', 'cur']) {
      const first = await fsp.mkdir(path.join(box, sub), { recursive: true, mode: 0o700 });
      if (first !== undefined) createdAny = true;
    }
    if (createdAny) {
      await fsyncDir(box);
      await fsyncDir(path.dirname(box));
    }
    this.#ready.add(box);
  }

  async close(): Promise<void> {
    // Nothing is held open between deliveries.
  }
}

/** A Transport that stores each recipient's copy in <dir>/<mailbox>/new. */
export function createMaildirTransport(opts: MaildirTransportOptions): Transport {
  return new MaildirTransport(opts);
}
