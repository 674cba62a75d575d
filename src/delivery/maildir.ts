// Local delivery into Maildir (one folder per recipient local part), the embedded default.
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
  /** Base directory; each mailbox is <dir>/<mailbox>/{tmp,new,cur}. */
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
    this.#dir = path.resolve(opts.dir);
    this.name = `maildir:${this.#dir}`;
  }

  async deliver(msg: OutgoingMessage): Promise<RcptResult[]> {
    const results: RcptResult[] = [];
    for (const rcpt of msg.rcpts) {
      // Outcomes are logged once, by the forwarder.
      results.push(await this.#deliverOne(rcpt, msg.body));
    }
    return results;
  }

  async #deliverOne(rcpt: string, body: MessageBody): Promise<RcptResult> {
    const box = path.join(this.#dir, mailboxName(rcpt));
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
        await fh.writeFile(body.chunks()); // loops over short writes for us
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
