// RFC 1413 IDENT client: asks the identd on the SMTP client's host which user owns the
// connection, for the `%U` macro and the `user@host` source patterns of the rules. The answer
// comes from the client's own host, so it is a hint, never proof, and it is hostile input: it
// goes into log lines and SMTP reply texts, so only a small safe alphabet survives (below).
//
// Like the DNS resolver, this module never throws and keeps its own deadline: `identLookup`
// resolves within `timeoutMs` (connect, query and reply together) with the user name, or with
// undefined for every failure (no identd, refused, an ERROR reply, a timeout, garbage, a port
// pair other than the one we asked about).
//
// Sanitising the user id. RFC 1413 allows 1 to 512 octets of anything but NUL, CR and LF, and
// "OTHER" ids are opaque tokens (still usable as names). The rules:
// - a reply line longer than 1000 octets (CRLF not counted) is no answer (RFC 1413 lets clients
//   give up there);
// - leading and trailing blanks (space, tab) are stripped (the RFC counts them as part of the
//   id, but servers commonly send "USERID : UNIX : root" and clients strip them);
// - a NUL or CR in the id (LF ends the line) rejects the whole answer: the RFC forbids them, so
//   the identd is broken or hostile and nothing it says is worth keeping;
// - every octet outside [A-Za-z0-9._+-] becomes '?', so the id cannot split a log field, look
//   like address or rule syntax (':' '@' '<' '>' ','), start a macro ('%' '$') or smuggle
//   control or non-ASCII bytes; replacing rather than rejecting keeps something to log, and a
//   collision ("a b" and "a:b" both give "a?b") gives a client nothing it could not claim
//   anyway, since it chooses its own identd's answer. The result is a value matched against
//   patterns, never a pattern itself, so the '?' is literal;
// - the result is cut to 64 characters; an id that is empty after stripping is no answer.
import net from 'node:net';

/** The two ends of the SMTP connection being asked about. */
export interface IdentQuery {
  /** The SMTP client's address: the identd is asked there. */
  remoteIp: string;
  /** The SMTP client's port (the first number of the query). */
  remotePort: number;
  /** Our address the client connected to: the query goes out from it. */
  localIp: string;
  /** Our SMTP port (the second number of the query). */
  localPort: number;
}

export interface IdentOptions {
  /** The identd's port; default 113. */
  port?: number;
  /** The whole lookup (connect, query, reply) takes at most this long. */
  timeoutMs: number;
}

export const IDENT_PORT = 113;
/** The longest reply line we read, CRLF not counted (RFC 1413: clients may give up after 1000). */
export const MAX_REPLY_OCTETS = 1000;
/** The longest user name we hand out (longer ones are cut). */
export const MAX_USER_LENGTH = 64;

const PORT_PAIR = /^[ \t]*(\d{1,5})[ \t]*,[ \t]*(\d{1,5})[ \t]*$/;
/** An RFC 1413 token (OPSYS, charset, ERROR type): US-ASCII, no blanks, no ':' or ','. */
const TOKEN = /^[\x21-\x2b\x2d-\x39\x3b-\x7e]{1,64}$/;
const UNSAFE = /[^A-Za-z0-9._+-]/g;

/** Normalises an IPv4-mapped IPv6 address (::ffff:1.2.3.4, as a dual-stack socket reports) to IPv4. */
function unmapIp(ip: string): string {
  const lower = ip.toLowerCase();
  return lower.startsWith('::ffff:') && net.isIPv4(lower.slice(7)) ? lower.slice(7) : ip;
}

function validPort(p: number): boolean {
  return Number.isInteger(p) && p > 0 && p < 65536;
}

/**
 * The user name in one identd reply line (with or without its CRLF), sanitised as described at
 * the top of this file; undefined for an ERROR reply, a reply about another port pair than
 * `remotePort , localPort`, or anything malformed. Pure.
 */
export function parseIdentReply(line: string, remotePort: number, localPort: number): string | undefined {
  let text = line.endsWith('\n') ? line.slice(0, -1) : line;
  if (text.endsWith('\r')) text = text.slice(0, -1);
  if (text.length > MAX_REPLY_OCTETS || text.includes('\n')) return undefined;
  // port-pair ":" type ":" rest; the user id (in rest) may itself contain colons.
  const c1 = text.indexOf(':');
  const c2 = c1 === -1 ? -1 : text.indexOf(':', c1 + 1);
  if (c2 === -1) return undefined;
  const pair = PORT_PAIR.exec(text.slice(0, c1));
  if (pair === null || Number(pair[1]) !== remotePort || Number(pair[2]) !== localPort) return undefined;
  if (text.slice(c1 + 1, c2).trim().toUpperCase() !== 'USERID') return undefined; // ERROR or garbage
  const rest = text.slice(c2 + 1);
  const c3 = rest.indexOf(':');
  if (c3 === -1) return undefined;
  // opsys [, charset]: the charset only tells how to read the id, which we reduce to ASCII anyway.
  const opsys = rest.slice(0, c3).split(',');
  if (opsys.length > 2 || !opsys.every((t) => TOKEN.test(t.trim()))) return undefined;
  const raw = rest.slice(c3 + 1).replace(/^[ \t]+|[ \t]+$/g, '');
  if (raw === '' || /[\0\r]/.test(raw)) return undefined;
  return raw.replace(UNSAFE, '?').slice(0, MAX_USER_LENGTH);
}

/**
 * Asks the identd at remoteIp (port 113 unless told otherwise), from localIp, who owns the
 * connection remotePort → localPort. The client's user name, or undefined (no identd, an ERROR
 * reply, a timeout, garbage). Resolves within `timeoutMs`; never throws.
 */
export async function identLookup(q: IdentQuery, opts: IdentOptions): Promise<string | undefined> {
  const remoteIp = unmapIp(q.remoteIp);
  const localIp = unmapIp(q.localIp);
  const port = opts.port ?? IDENT_PORT;
  const family = net.isIP(remoteIp);
  if (family === 0 || net.isIP(localIp) !== family) return undefined;
  if (!validPort(q.remotePort) || !validPort(q.localPort) || !validPort(port)) return undefined;
  if (!(opts.timeoutMs > 0)) return undefined;

  return new Promise<string | undefined>((resolve) => {
    let sock: net.Socket | undefined;
    let settled = false;
    const finish = (user: string | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock?.destroy();
      resolve(user);
    };
    const timer = setTimeout(() => finish(undefined), Math.min(opts.timeoutMs, 2 ** 31 - 1));
    try {
      sock = net.connect({ host: remoteIp, port, localAddress: localIp, family });
    } catch {
      finish(undefined); // e.g. a local address node refuses outright
      return;
    }
    let buf: Buffer = Buffer.alloc(0);
    sock.on('connect', () => sock?.write(`${q.remotePort} , ${q.localPort}\r\n`));
    sock.on('data', (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const nl = buf.indexOf(0x0a);
      if (nl === -1) {
        // Room for MAX_REPLY_OCTETS and a CR; more without an end of line: give up.
        if (buf.length > MAX_REPLY_OCTETS + 1) finish(undefined);
        return;
      }
      // latin1: one char per octet, so non-ASCII octets reach the sanitiser one by one.
      finish(parseIdentReply(buf.subarray(0, nl + 1).toString('latin1'), q.remotePort, q.localPort));
    });
    // Refused, reset, unreachable, or closed before a whole line: no answer.
    sock.on('error', () => finish(undefined));
    sock.on('close', () => finish(undefined));
  });
}
