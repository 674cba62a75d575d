// Our own small SMTP / LMTP client for forwarding downstream (see DESIGN.md: speed target): the
// transport of src/delivery/ for smtp:// and lmtp://, and the prober of the recipient callout.
//
// Speed: a pool of reused connections, no-delay sockets, MAIL+RCPT+DATA in one write with
// PIPELINING, and the final "." in the same write as the last data. Safety: deliver() never
// throws for downstream trouble; every failure becomes a per-recipient 'temp' result, while a
// recipient the server refused keeps its own code.
//
// Optional STARTTLS (tls: none / opportunistic / required / verify, as Postfix's
// smtp_tls_security_level) and AUTH PLAIN / LOGIN (auth), both once per new connection.
import net from 'node:net';
import type { Socket } from 'node:net';
import tls from 'node:tls';
import type { Logger } from '../util/log.ts';
import type { MessageBody, OutgoingMessage, RcptResult, Transport } from '../mail/transport.ts';
import { dotStuffChunks } from './dotstuff.ts';
import { utf8AddrEncode, xtextEncode } from '../util/xtext.ts';

export interface SmtpTransportOptions {
  /** smtp://host:port or lmtp://host:port (LMTP: one reply per recipient after the dot). */
  readonly url: string;
  /** Our name in EHLO / LHLO. */
  readonly heloName: string;
  /** Upper bound on simultaneous connections to the downstream. */
  readonly maxConnections: number;
  readonly connectTimeoutMs: number;
  /** Limit for each reply (greeting, EHLO, MAIL, RCPT, DATA, RSET). */
  readonly commandTimeoutMs: number;
  /** Limit for the reply to the final dot and for each stalled body write; default commandTimeoutMs. */
  readonly dataTimeoutMs?: number;
  /** Close a pooled connection after this long unused; default 30 s. */
  readonly idleTimeoutMs?: number;
  readonly log?: Logger;
  /** STARTTLS (RFC 3207); default { mode: 'none' }: plain text, as before. See SmtpTlsOptions. */
  readonly tls?: SmtpTlsOptions;
  /** SMTP AUTH (RFC 4954) after EHLO (after STARTTLS with TLS): PLAIN if offered, else LOGIN. */
  readonly auth?: SmtpAuthOptions;
}

/**
 * STARTTLS, as Postfix's smtp_tls_security_level:
 * - none: never (plain text);
 * - opportunistic (Postfix "may"): STARTTLS when the server offers it, any certificate; plain
 *   text when it is not offered or refused; a failed handshake is retried once in plain text;
 * - required (Postfix "encrypt"): TLS or nothing: the address fails with 421 4.7.4;
 * - verify (Postfix "verify"/"secure"): as required, and the certificate must verify against the
 *   system CAs plus ca, for servername; else 421 4.7.5.
 */
export type SmtpTlsMode = 'none' | 'opportunistic' | 'required' | 'verify';

export interface SmtpTlsOptions {
  readonly mode: SmtpTlsMode;
  /** Extra trust anchors (PEM), besides the system's. */
  readonly ca?: string | Buffer;
  /** The name the certificate must be for (and SNI unless an IP address); default the URL's host. */
  readonly servername?: string;
}

export interface SmtpAuthOptions {
  readonly user: string;
  readonly password: string;
}

/** One SMTP reply; lines hold the text after "250-" / "250 " of each line. */
export interface SmtpReply {
  readonly code: number;
  readonly lines: readonly string[];
}

/** What the server offered in its EHLO / LHLO reply. size: null = not offered, 0 = no fixed limit. */
export interface SmtpExtensions {
  readonly pipelining: boolean;
  readonly size: number | null;
  readonly eightBitMime: boolean;
  readonly smtputf8: boolean;
  /** RFC 3461: the server takes NOTIFY, ORCPT, RET and ENVID. */
  readonly dsn: boolean;
  readonly keywords: ReadonlySet<string>;
}

export const NO_EXTENSIONS: SmtpExtensions = { pipelining: false, size: null, eightBitMime: false, smtputf8: false, dsn: false, keywords: new Set() };

export class SmtpProtocolError extends Error {}

/**
 * How a recipient probe (a callout) ended. step says how far it got: 'rcpt' = code and text are
 * the server's answer to RCPT TO; 'mail' = the server did not accept MAIL FROM; 'session' = we
 * never got an answer to ask about (connect refused or timed out, greeting or EHLO/LHLO refused,
 * a 421, a timeout or protocol error on the way; code is then 421/451, ours or the server's).
 */
export interface ProbeResult {
  readonly step: 'session' | 'mail' | 'rcpt';
  readonly code: number;
  readonly text: string;
}

/** Asks the downstream whether it would take a recipient, without sending mail. */
export interface RecipientProber {
  /** smtp://host:port or lmtp://host:port, for logs. */
  readonly name: string;
  /** Connect, EHLO/LHLO, MAIL FROM:<mailFrom>, RCPT TO:<rcpt>, QUIT: never DATA. Never throws. */
  probe(mailFrom: string, rcpt: string): Promise<ProbeResult>;
  close(): Promise<void>;
}

/** A reply line longer than this without a line end is a protocol error (RFC 5321 allows 512). */
const MAX_REPLY_LINE = 16 * 1024;
const MAX_REPLY_LINES = 1000;
const REPLY_LINE = /^([2-5][0-9][0-9])([ -]|$)(.*)$/s;

/**
 * Incremental reply parser: push() raw socket data split anywhere, get back the complete
 * replies. Multi-line replies ("250-a", "250 b") come out as one reply. Tolerates bare-LF
 * line ends; throws SmtpProtocolError on a line that is not a reply.
 */
export class ReplyParser {
  #rest: Buffer | null = null;
  #lines: string[] = [];

  push(chunk: Buffer): SmtpReply[] {
    const data = this.#rest === null ? chunk : Buffer.concat([this.#rest, chunk]);
    this.#rest = null;
    const out: SmtpReply[] = [];
    let start = 0;
    for (;;) {
      const lf = data.indexOf(10, start);
      if (lf === -1) break;
      const end = lf > start && data[lf - 1] === 13 ? lf - 1 : lf;
      const reply = this.#line(data.toString('utf8', start, end));
      if (reply) out.push(reply);
      start = lf + 1;
    }
    if (start < data.length) {
      if (data.length - start > MAX_REPLY_LINE) throw new SmtpProtocolError('reply line too long');
      // Copy, so a small remainder does not pin a large socket buffer.
      this.#rest = Buffer.from(data.subarray(start));
    }
    return out;
  }

  /** True while part of a reply has been received. */
  get pending(): boolean {
    return this.#rest !== null || this.#lines.length > 0;
  }

  #line(line: string): SmtpReply | null {
    const m = REPLY_LINE.exec(line);
    if (!m) throw new SmtpProtocolError(`malformed reply line ${JSON.stringify(line.slice(0, 80))}`);
    this.#lines.push(m[3] ?? '');
    if (m[2] === '-') {
      if (this.#lines.length > MAX_REPLY_LINES) throw new SmtpProtocolError('reply has too many lines');
      return null;
    }
    // RFC 5321 wants one code on every line; if a server mixes them, the last line decides.
    const reply: SmtpReply = { code: Number(m[1]), lines: this.#lines };
    this.#lines = [];
    return reply;
  }
}

/** The reply as one printable line without its code, for RcptResult.text and logs. */
export function replyText(r: SmtpReply): string {
  return r.lines
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .join(' ')
    .replace(/[\x00-\x1f\x7f]/g, ' ');
}

/** Reads the EHLO / LHLO reply's extension lines (the first line is the server's name). */
export function parseEhloReply(r: SmtpReply): SmtpExtensions {
  const keywords = new Set<string>();
  let size: number | null = null;
  for (const line of r.lines.slice(1)) {
    const [kw = '', param] = line.trim().split(/\s+/, 2);
    const key = kw.toUpperCase();
    if (key === '') continue;
    keywords.add(key);
    if (key === 'SIZE') {
      const n = param === undefined ? 0 : Number(param);
      size = Number.isSafeInteger(n) && n >= 0 ? n : 0;
    }
  }
  return {
    pipelining: keywords.has('PIPELINING'),
    size,
    eightBitMime: keywords.has('8BITMIME'),
    smtputf8: keywords.has('SMTPUTF8'),
    dsn: keywords.has('DSN'),
    keywords,
  };
}

export interface Destination {
  readonly protocol: 'smtp' | 'lmtp';
  readonly host: string;
  readonly port: number;
}

/** Parses smtp://host[:port] and lmtp://host[:port]; throws on anything else (a config error). */
export function parseDestination(url: string): Destination {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`invalid downstream URL ${JSON.stringify(url)}`);
  }
  const protocol = u.protocol === 'smtp:' ? 'smtp' : u.protocol === 'lmtp:' ? 'lmtp' : null;
  if (protocol === null) throw new Error(`downstream URL must be smtp:// or lmtp://, got ${JSON.stringify(url)}`);
  if ((u.pathname !== '' && u.pathname !== '/') || u.search !== '' || u.username !== '') {
    throw new Error(`downstream URL takes only host and port, got ${JSON.stringify(url)}`);
  }
  const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
  if (host === '') throw new Error(`downstream URL has no host: ${JSON.stringify(url)}`);
  const port = u.port === '' ? (protocol === 'smtp' ? 25 : 24) : Number(u.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`downstream URL has a bad port: ${JSON.stringify(url)}`);
  return { protocol, host, port };
}

/** Maps a reply to a recipient's result: 2xx ok, 4xx temp, 5xx perm (anything else: temp). */
export function resultFromReply(rcpt: string, r: SmtpReply): RcptResult {
  const status = r.code >= 200 && r.code < 300 ? 'ok' : r.code >= 500 && r.code < 600 ? 'perm' : 'temp';
  return { rcpt, status, code: r.code, text: replyText(r) };
}

/** A failure of the connection or of our side: becomes a 'temp' result for every open recipient. */
class DeliveryError extends Error {
  readonly code: number;
  readonly text: string;
  /** True when the server itself said 421. */
  readonly fromServer: boolean;
  constructor(code: number, text: string, fromServer = false) {
    super(text);
    this.code = code;
    this.text = text;
    this.fromServer = fromServer;
  }
}

/** A failed TLS handshake in opportunistic mode: the connection is retried once in plain text. */
class TlsFallbackError extends DeliveryError {}

/** The AUTH mechanisms of an EHLO reply ("AUTH PLAIN LOGIN", or the old "AUTH=PLAIN LOGIN"), upper case. */
export function authMechanisms(r: SmtpReply): Set<string> {
  const out = new Set<string>();
  for (const line of r.lines.slice(1)) {
    const m = /^AUTH[ =](.*)$/i.exec(line.trim());
    if (m) for (const mech of (m[1] ?? '').trim().split(/\s+/)) if (mech !== '') out.add(mech.toUpperCase());
  }
  return out;
}

/** The initial response of AUTH PLAIN (RFC 4616): base64 of "\0user\0password" (no authorization identity). */
export function authPlainResponse(user: string, password: string): string {
  return Buffer.from(`\0${user}\0${password}`, 'utf8').toString('base64');
}

/** 127.0.0.0/8 and ::1 (also as ::ffff:127.x.y.z): credentials may go there in plain text. */
export function isLoopbackAddress(addr: string | undefined): boolean {
  if (addr === undefined) return false;
  const a = addr.toLowerCase().replace(/^::ffff:(?=\d+\.)/, '');
  return (net.isIPv4(a) && a.startsWith('127.')) || a === '::1' || a === '0:0:0:0:0:0:0:1';
}

/** Contexts built, by their extra CAs ('' for none): a handful at most (the system's, a lab's). */
const trustContexts = new Map<string, tls.SecureContext>();

/**
 * A client context trusting Node's CAs (with NODE_EXTRA_CA_CERTS), the system's, and `extra`;
 * built once per extra, for every client that verifies (SMTP, MX hosts, MTA-STS policy fetches).
 */
export function trustContext(extra: string | Buffer | undefined): tls.SecureContext {
  const key = extra === undefined ? '' : extra.toString();
  const known = trustContexts.get(key);
  if (known !== undefined) return known;
  const ca = new Set(tls.getCACertificates('default'));
  try {
    for (const c of tls.getCACertificates('system')) ca.add(c);
  } catch {
    // No system store readable here: Node's own CAs and extra still count.
  }
  const ctx = tls.createSecureContext({ ca: extra === undefined ? [...ca] : [...ca, extra] });
  if (trustContexts.size >= 8) trustContexts.clear();
  trustContexts.set(key, ctx);
  return ctx;
}

/** Why a certificate did not verify, readably: Node gives a code such as DEPTH_ZERO_SELF_SIGNED_CERT. */
function verifyFailure(secure: tls.TLSSocket, name: string): string {
  const code = String(secure.authorizationError ?? 'not verified');
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    const err = tls.checkServerIdentity(name, secure.getPeerCertificate());
    if (err) return err.message;
  }
  return `${code} (for ${name})`;
}

// Address text goes into a command line: refuse anything that could end or bend it.
const UNSAFE_ADDRESS = /[\x00-\x1f\x7f<>]/;
const NON_ASCII = /[^\x00-\x7f]/;

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

interface Waiter {
  resolve(r: SmtpReply): void;
  reject(e: DeliveryError): void;
}

/** One downstream connection: a socket, its reply parser, and the replies not yet read. */
class Connection {
  /** The socket we talk on: the TCP socket, or the TLS socket over it after STARTTLS. */
  socket: Socket;
  /** The TCP socket. */
  readonly raw: Socket;
  readonly label: string;
  ext: SmtpExtensions = NO_EXTENSIONS;
  /** The AUTH mechanisms of the last EHLO reply. */
  authMechs: ReadonlySet<string> = new Set();
  /** Set once STARTTLS succeeded. */
  tls: { readonly protocol: string; readonly cipher: string; readonly verified: boolean } | null = null;
  /** Transactions run on it: a failure on a reused connection may be a stale socket. */
  transactions = 0;
  idle = false;
  discarded = false;
  idleTimer: NodeJS.Timeout | null = null;
  /** Called when an idle connection closes or talks (e.g. a 421 on the server's idle timeout). */
  onIdleEvent: (() => void) | null = null;
  #parser = new ReplyParser();
  #replies: SmtpReply[] = [];
  #waiter: Waiter | null = null;
  #drainWaiter: Waiter | null = null;
  #connectWaiter: Waiter | null = null;
  #failure: DeliveryError | null = null;
  #connected = false;
  readonly closed: Promise<void>;
  #resolveClosed: () => void = () => undefined;
  readonly #dataListener = (chunk: Buffer): void => this.#onData(chunk);

  constructor(socket: Socket, label: string) {
    this.socket = socket;
    this.raw = socket;
    this.label = label;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    this.#attach(socket);
  }

  /** Listeners go on at once: an unhandled 'error' would crash the process. */
  #attach(sock: Socket): void {
    const label = this.label;
    sock.on('error', (err) => {
      const what = this.#connected ? `connection to ${label} failed` : `connect to ${label} failed`;
      this.fail(new DeliveryError(421, `${this.#connected ? '4.4.2' : '4.4.1'} ${what}: ${err.message}`));
    });
    sock.on('data', this.#dataListener);
    sock.once('close', () => {
      if (sock !== this.socket) return; // the TCP socket under TLS: the TLS socket reports
      this.fail(new DeliveryError(421, `4.4.2 connection to ${label} closed by the server`));
      this.#resolveClosed();
    });
  }

  /**
   * The TLS handshake after the server's 220 to STARTTLS; then socket is the TLS socket, read()
   * and write() go through it. Rejects on a handshake error, a timeout or fail(). Certificates are
   * not checked here (rejectUnauthorized: false): the caller reads authorized.
   */
  startTls(options: tls.ConnectionOptions, timeoutMs: number): Promise<tls.TLSSocket> {
    if (this.#failure) return Promise.reject(this.#failure);
    // Anything after the 220 came in the clear, before the handshake: never read it as if it
    // came over TLS (the client side of CVE-2011-0411, the STARTTLS command injection).
    if (this.#replies.length > 0 || this.#parser.pending) return Promise.reject(new Error(`${this.label} sent more after its 220 to STARTTLS`));
    const raw = this.socket;
    raw.off('data', this.#dataListener);
    return new Promise((resolve, reject) => {
      const secure = tls.connect({ ...options, socket: raw, rejectUnauthorized: false });
      let done = false;
      const finish = (err?: Error): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.#connectWaiter = null;
        secure.off('error', finish);
        if (err) {
          secure.on('error', () => undefined); // it may say more while it goes
          secure.destroy();
          reject(err);
          return;
        }
        this.socket = secure;
        this.#attach(secure);
        resolve(secure);
      };
      const timer = setTimeout(() => finish(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
      secure.on('error', finish);
      secure.once('secureConnect', () => finish());
      // fail() (the server closed, the transport closes) ends the wait.
      this.#connectWaiter = { resolve: () => undefined, reject: (e) => finish(e) };
    });
  }

  get alive(): boolean {
    return this.#failure === null && !this.socket.destroyed && !this.socket.readableEnded && !this.#parser.pending && this.#replies.length === 0;
  }

  /** Resolves once connected; rejects on error or after timeoutMs. */
  waitConnected(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const e = new DeliveryError(421, `4.4.1 connect to ${this.label} timed out after ${timeoutMs} ms`);
        this.fail(e);
      }, timeoutMs);
      const onConnect = (): void => {
        clearTimeout(timer);
        this.#connected = true;
        this.#connectWaiter = null;
        resolve();
      };
      this.socket.once('connect', onConnect);
      // fail() rejects it on error, close or timeout.
      this.#connectWaiter = {
        resolve: () => undefined,
        reject: (e) => {
          clearTimeout(timer);
          this.socket.off('connect', onConnect);
          reject(e);
        },
      };
    });
  }

  /** Marks the connection dead (first cause wins), wakes whoever waits, destroys the socket. */
  fail(err: DeliveryError): void {
    if (this.#failure === null) this.#failure = err;
    const w = this.#waiter;
    this.#waiter = null;
    const d = this.#drainWaiter;
    this.#drainWaiter = null;
    const c = this.#connectWaiter;
    this.#connectWaiter = null;
    if (w) w.reject(this.#failure);
    if (d) d.reject(this.#failure);
    if (c) c.reject(this.#failure);
    if (!this.socket.destroyed) this.socket.destroy();
    if (!this.raw.destroyed) this.raw.destroy();
    if (this.idle) this.onIdleEvent?.();
  }

  #onData(chunk: Buffer): void {
    let replies: SmtpReply[];
    try {
      replies = this.#parser.push(chunk);
    } catch (err) {
      this.fail(new DeliveryError(451, `4.5.0 protocol error from ${this.label}: ${errText(err)}`));
      return;
    }
    for (const r of replies) {
      const w = this.#waiter;
      if (w) {
        this.#waiter = null;
        w.resolve(r);
      } else {
        this.#replies.push(r);
      }
    }
    if (this.idle) this.onIdleEvent?.();
  }

  /** The next reply, in order; a timeout destroys the connection (its state is unknown then). */
  read(timeoutMs: number, what: string): Promise<SmtpReply> {
    const queued = this.#replies.shift();
    if (queued) return Promise.resolve(queued);
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.fail(new DeliveryError(451, `4.4.2 timeout after ${timeoutMs} ms waiting for the reply to ${what} from ${this.label}`));
      }, timeoutMs);
      this.#waiter = {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  /** Writes; returns false when the caller should wait for drain (socket backpressure). */
  write(data: string | Buffer): boolean {
    if (this.#failure) throw this.#failure;
    return this.socket.write(data);
  }

  waitDrain(timeoutMs: number): Promise<void> {
    if (this.#failure) return Promise.reject(this.#failure);
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onDrain = (): void => {
        clearTimeout(timer);
        this.#drainWaiter = null;
        resolve();
      };
      const timer = setTimeout(() => {
        this.socket.off('drain', onDrain);
        this.fail(new DeliveryError(451, `4.4.2 timeout after ${timeoutMs} ms sending the message to ${this.label}`));
      }, timeoutMs);
      this.socket.once('drain', onDrain);
      this.#drainWaiter = {
        resolve: () => undefined,
        reject: (e) => {
          clearTimeout(timer);
          this.socket.off('drain', onDrain);
          reject(e);
        },
      };
    });
  }

  /** Polite close: QUIT, wait briefly for 221 and the server's close, then destroy. */
  async quit(timeoutMs: number): Promise<void> {
    if (this.#failure === null && !this.socket.destroyed) {
      try {
        this.write('QUIT\r\n');
        await this.read(timeoutMs, 'QUIT');
        this.socket.end();
        await Promise.race([this.closed, new Promise((r) => setTimeout(r, timeoutMs).unref())]);
      } catch {
        // A failed QUIT changes nothing: the socket goes away below.
      }
    }
    this.fail(new DeliveryError(421, `4.4.2 connection to ${this.label} closed`));
  }
}

interface PoolWaiter {
  resolve(v: { conn: Connection } | { slot: true }): void;
  reject(e: DeliveryError): void;
}

interface OpenRcpt {
  readonly index: number;
  readonly addr: string;
}

interface TransactionOutcome {
  readonly reusable: boolean;
  /** The failure hit a reused connection before any reply: probably stale, try a fresh one. */
  readonly retry: boolean;
}

const QUIT_TIMEOUT_MS = 2000;

class SmtpTransport implements Transport, RecipientProber {
  readonly name: string;
  readonly #dest: Destination;
  readonly #lmtp: boolean;
  readonly #helo: string;
  readonly #max: number;
  readonly #connectTimeout: number;
  readonly #cmdTimeout: number;
  readonly #dataTimeout: number;
  readonly #idleTimeout: number;
  readonly #log: Logger | undefined;
  readonly #label: string;
  readonly #tls: SmtpTlsOptions;
  /** The name the certificate is checked for. */
  readonly #tlsName: string;
  readonly #auth: SmtpAuthOptions | undefined;
  #idle: Connection[] = [];
  /** Every connection not yet discarded, idle or busy: close() ends them all. */
  #live = new Set<Connection>();
  #total = 0;
  #waiters: PoolWaiter[] = [];
  #closed = false;

  constructor(opts: SmtpTransportOptions) {
    this.#dest = parseDestination(opts.url);
    this.#lmtp = this.#dest.protocol === 'lmtp';
    const hostPart = this.#dest.host.includes(':') ? `[${this.#dest.host}]` : this.#dest.host;
    this.#label = `${hostPart}:${this.#dest.port}`;
    this.name = `${this.#dest.protocol}://${this.#label}`;
    if (/[\s\x00-\x1f\x7f]/.test(opts.heloName) || opts.heloName === '') throw new Error(`invalid heloName ${JSON.stringify(opts.heloName)}`);
    this.#helo = opts.heloName;
    this.#max = Math.max(1, Math.floor(opts.maxConnections));
    this.#connectTimeout = opts.connectTimeoutMs;
    this.#cmdTimeout = opts.commandTimeoutMs;
    this.#dataTimeout = opts.dataTimeoutMs ?? opts.commandTimeoutMs;
    this.#idleTimeout = opts.idleTimeoutMs ?? 30_000;
    this.#log = opts.log;
    this.#tls = opts.tls ?? { mode: 'none' };
    if (!['none', 'opportunistic', 'required', 'verify'].includes(this.#tls.mode)) throw new Error(`invalid tls mode ${JSON.stringify(this.#tls.mode)}`);
    const servername = this.#tls.servername;
    if (servername !== undefined && (servername === '' || /[\s\x00-\x1f\x7f]/.test(servername))) throw new Error(`invalid tls servername ${JSON.stringify(servername)}`);
    this.#tlsName = servername ?? this.#dest.host;
    if (opts.auth !== undefined) {
      // PLAIN separates with NUL; LOGIN sends each on a line of its own (base64, so any byte is safe there).
      if (opts.auth.user === '' || opts.auth.user.includes('\0') || opts.auth.password.includes('\0')) throw new Error('invalid auth user or password: empty user, or a NUL');
    }
    this.#auth = opts.auth;
  }

  /** Outcomes are logged once, by the forwarder (delivered / deferred / bounced). */
  deliver(msg: OutgoingMessage): Promise<RcptResult[]> {
    return this.#deliver(msg);
  }

  async #deliver(msg: OutgoingMessage): Promise<RcptResult[]> {
    const all = (code: number, text: string, status: RcptResult['status']): RcptResult[] =>
      msg.rcpts.map((rcpt) => ({ rcpt, status, code, text }));
    if (this.#closed) return all(421, '4.3.2 transport is closed', 'temp');
    if (UNSAFE_ADDRESS.test(msg.mailFrom)) return all(501, '5.1.7 bad sender address syntax', 'perm');

    const fixed: (RcptResult | undefined)[] = new Array<RcptResult | undefined>(msg.rcpts.length);
    const open: OpenRcpt[] = [];
    msg.rcpts.forEach((addr, index) => {
      if (addr === '' || UNSAFE_ADDRESS.test(addr)) fixed[index] = { rcpt: addr, status: 'perm', code: 501, text: '5.1.3 bad recipient address syntax' };
      else open.push({ index, addr });
    });
    if (open.length === 0) return fixed as RcptResult[];

    for (let attempt = 0; ; attempt++) {
      const results = [...fixed];
      let conn: Connection;
      try {
        conn = await this.#acquire();
      } catch (err) {
        const e = err instanceof DeliveryError ? err : new DeliveryError(451, `4.3.0 ${errText(err)}`);
        for (const r of open) results[r.index] = { rcpt: r.addr, status: 'temp', code: e.code, text: e.text };
        return results as RcptResult[];
      }
      const outcome = await this.#transaction(conn, msg, open, results);
      this.#release(conn, outcome.reusable);
      if (outcome.retry && attempt === 0) {
        this.#log?.debug({ id: msg.id, relay: this.name }, 'stale pooled connection, retrying on a new one');
        continue;
      }
      return results as RcptResult[];
    }
  }

  /**
   * A callout: one transaction that stops after RCPT TO, on a connection of its own that is
   * closed (QUIT) afterwards, never pooled: a mail server counts refused RCPTs per session
   * (Postfix's smtpd_soft_error_limit slows such a client down), so probes do not share one.
   * At most maxConnections run at once; more wait for a slot.
   */
  async probe(mailFrom: string, rcpt: string): Promise<ProbeResult> {
    if (this.#closed) return { step: 'session', code: 421, text: '4.3.2 transport is closed' };
    if (UNSAFE_ADDRESS.test(mailFrom)) return { step: 'mail', code: 501, text: '5.1.7 bad sender address syntax' };
    if (rcpt === '' || UNSAFE_ADDRESS.test(rcpt)) return { step: 'rcpt', code: 501, text: '5.1.3 bad recipient address syntax' };
    let conn: Connection;
    try {
      conn = await this.#acquire();
    } catch (err) {
      const e = err instanceof DeliveryError ? err : new DeliveryError(451, `4.3.0 ${errText(err)}`);
      return { step: 'session', code: e.code, text: e.text };
    }
    const t = this.#cmdTimeout;
    const check = (r: SmtpReply): SmtpReply => {
      if (r.code === 421) throw new DeliveryError(421, replyText(r), true);
      return r;
    };
    try {
      const utf8 = NON_ASCII.test(mailFrom) || NON_ASCII.test(rcpt);
      // Delivery would refuse such an address for good (see #transaction): so does the probe.
      if (utf8 && !conn.ext.smtputf8) return { step: 'rcpt', code: 550, text: `5.6.7 ${this.#label} does not support SMTPUTF8, which this address needs` };
      const mailCmd = `MAIL FROM:<${mailFrom}>${utf8 ? ' SMTPUTF8' : ''}\r\n`;
      const rcptCmd = `RCPT TO:<${rcpt}>\r\n`;
      conn.write(conn.ext.pipelining ? mailCmd + rcptCmd : mailCmd);
      const mail = check(await conn.read(t, 'MAIL FROM'));
      if (mail.code < 200 || mail.code >= 300) return { step: 'mail', code: mail.code, text: replyText(mail) };
      if (!conn.ext.pipelining) conn.write(rcptCmd);
      const rr = check(await conn.read(t, 'RCPT TO'));
      return { step: 'rcpt', code: rr.code, text: replyText(rr) };
    } catch (err) {
      const e = err instanceof DeliveryError ? err : new DeliveryError(451, `4.3.0 probe of ${this.#label} failed: ${errText(err)}`);
      conn.fail(e);
      return { step: 'session', code: e.code, text: e.text };
    } finally {
      this.#release(conn, false); // QUIT (or drop a broken connection); never back to the pool
    }
  }

  /** One mail transaction on conn; fills results for every open recipient. Never throws. */
  async #transaction(conn: Connection, msg: OutgoingMessage, open: readonly OpenRcpt[], results: (RcptResult | undefined)[]): Promise<TransactionOutcome> {
    const ext = conn.ext;
    const setAll = (rs: readonly OpenRcpt[], code: number, text: string, status: RcptResult['status']): void => {
      for (const r of rs) results[r.index] = { rcpt: r.addr, status, code, text };
    };
    // Non-ASCII addresses need SMTPUTF8 as much as a message that asked for it.
    const wantUtf8 = msg.smtputf8 === true || NON_ASCII.test(msg.mailFrom) || open.some((r) => NON_ASCII.test(r.addr));
    if (wantUtf8 && !ext.smtputf8) {
      setAll(open, 550, `5.6.7 ${this.#label} does not support SMTPUTF8, which the message needs`, 'perm');
      return { reusable: true, retry: false };
    }
    if (ext.size !== null && ext.size > 0 && msg.body.size > ext.size) {
      setAll(open, 552, `5.3.4 message size ${msg.body.size} exceeds the limit of ${ext.size} of ${this.#label}`, 'perm');
      return { reusable: true, retry: false };
    }
    let mailCmd = `MAIL FROM:<${msg.mailFrom}>`;
    if (ext.size !== null) mailCmd += ` SIZE=${msg.body.size}`;
    if (msg.eightBit === true && ext.eightBitMime) mailCmd += ' BODY=8BITMIME';
    if (wantUtf8) mailCmd += ' SMTPUTF8';
    if (ext.dsn) mailCmd += mailDsnParams(msg);
    const rcptCmd = (r: OpenRcpt): string => `RCPT TO:<${r.addr}>${ext.dsn ? rcptDsnParams(msg, r.addr) : ''}\r\n`;
    // Without DSN downstream, a success notice a recipient asked for is ours to send (RFC 3461 4.1).
    const okResult = (r: OpenRcpt, reply: SmtpReply): RcptResult => {
      const res = resultFromReply(r.addr, reply);
      return res.status === 'ok' && !ext.dsn ? { ...res, dsnAction: this.#lmtp ? 'delivered' : 'relayed' } : res;
    };

    conn.transactions += 1;
    const reused = conn.transactions > 1;
    let gotReply = false;
    /** The final dot went out: from here a lost connection may have delivered the message. */
    let bodySent = false;
    let needRset = false;
    const t = this.#cmdTimeout;
    // A 421 means the server is closing this connection: everything still open is temp.
    const check = (r: SmtpReply): SmtpReply => {
      if (r.code === 421) throw new DeliveryError(421, replyText(r), true);
      gotReply = true;
      return r;
    };
    try {
      const accepted: OpenRcpt[] = [];
      if (ext.pipelining) {
        let batch = mailCmd + '\r\n';
        for (const r of open) batch += rcptCmd(r);
        conn.write(batch + 'DATA\r\n');
        const mail = check(await conn.read(t, 'MAIL FROM'));
        const mailOk = mail.code >= 200 && mail.code < 300;
        for (const r of open) {
          const rr = check(await conn.read(t, 'RCPT TO'));
          if (!mailOk) continue;
          if (rr.code >= 200 && rr.code < 300) accepted.push(r);
          else results[r.index] = resultFromReply(r.addr, rr);
        }
        const data = check(await conn.read(t, 'DATA'));
        if (!mailOk) setAll(open, mail.code, replyText(mail), resultFromReply('', mail).status);
        if (!mailOk || accepted.length === 0) {
          if (data.code === 354) {
            // A server that opens DATA without recipients: send it nothing, drop the connection.
            throw new DeliveryError(451, `4.5.0 ${this.#label} accepted DATA without recipients`);
          }
          return await this.#finish(conn, true);
        }
        if (data.code !== 354) {
          const res = resultFromReply('', data);
          setAll(accepted, data.code, res.text, res.status === 'ok' ? 'temp' : res.status);
          return await this.#finish(conn, true);
        }
      } else {
        conn.write(mailCmd + '\r\n');
        const mail = check(await conn.read(t, 'MAIL FROM'));
        if (mail.code < 200 || mail.code >= 300) {
          setAll(open, mail.code, replyText(mail), resultFromReply('', mail).status);
          return await this.#finish(conn, true);
        }
        for (const r of open) {
          conn.write(rcptCmd(r));
          const rr = check(await conn.read(t, 'RCPT TO'));
          if (rr.code >= 200 && rr.code < 300) accepted.push(r);
          else results[r.index] = resultFromReply(r.addr, rr);
        }
        if (accepted.length === 0) return await this.#finish(conn, true);
        conn.write('DATA\r\n');
        const data = check(await conn.read(t, 'DATA'));
        if (data.code !== 354) {
          const res = resultFromReply('', data);
          setAll(accepted, data.code, res.text, res.status === 'ok' ? 'temp' : res.status);
          return await this.#finish(conn, true);
        }
      }

      await this.#sendBody(conn, msg.id, msg.body);
      bodySent = true;

      if (this.#lmtp) {
        for (const r of accepted) {
          const rr = check(await conn.read(this.#dataTimeout, 'end of data'));
          results[r.index] = okResult(r, rr);
          if (rr.code < 200 || rr.code >= 300) needRset = true;
        }
      } else {
        const rr = check(await conn.read(this.#dataTimeout, 'end of data'));
        for (const r of accepted) results[r.index] = okResult(r, rr);
        if (rr.code < 200 || rr.code >= 300) needRset = true;
      }
      return await this.#finish(conn, needRset);
    } catch (err) {
      let e = err instanceof DeliveryError ? err : new DeliveryError(451, `4.3.0 delivery to ${this.#label} failed: ${errText(err)}`);
      // Lost after the final dot: the server may have taken the message. A 451, not a 421, so that
      // delivery by MX defers it instead of sending it to the next MX at once (a duplicate).
      if (bodySent && !e.fromServer && e.code === 421) e = new DeliveryError(451, `${e.text}, after the message was sent: deferred (it may have been delivered)`);
      conn.fail(e);
      for (const r of open) {
        if (results[r.index] === undefined) results[r.index] = { rcpt: r.addr, status: 'temp', code: e.code, text: e.text };
      }
      if (!e.fromServer || e.code !== 421) this.#log?.warn({ id: msg.id, relay: this.name, err: e.text }, 'downstream connection failed');
      return { reusable: false, retry: reused && !gotReply };
    }
  }

  /** Ends a transaction: RSET after a failed one (a connection that cannot RSET is not reused). */
  async #finish(conn: Connection, rset: boolean): Promise<TransactionOutcome> {
    if (!rset) return { reusable: true, retry: false };
    try {
      conn.write('RSET\r\n');
      const r = await conn.read(this.#cmdTimeout, 'RSET');
      if (r.code >= 200 && r.code < 300) return { reusable: true, retry: false };
      conn.fail(new DeliveryError(421, `4.4.2 ${this.#label} refused RSET`));
    } catch {
      // The results already stand; only the connection is lost.
    }
    return { reusable: false, retry: false };
  }

  /** Streams the dot-stuffed body with backpressure; the final dot rides with the last chunk. */
  async #sendBody(conn: Connection, id: string, body: MessageBody): Promise<void> {
    const sock = conn.socket;
    let corked = 0;
    let done = false;
    const it = dotStuffChunks(body.chunks());
    sock.cork();
    try {
      for (;;) {
        let step: IteratorResult<Buffer, void>;
        try {
          step = await it.next();
        } catch (err) {
          // Never send the final dot for a partial message: the connection is dropped instead.
          throw new DeliveryError(451, `4.3.0 cannot read message ${id} from the queue: ${errText(err)}`);
        }
        if (step.done) {
          done = true;
          break;
        }
        const ok = conn.write(step.value);
        corked += step.value.length;
        if (!ok || corked >= 64 * 1024) {
          sock.uncork();
          corked = 0;
          if (!ok) await conn.waitDrain(this.#dataTimeout);
          sock.cork();
        }
      }
    } finally {
      sock.uncork();
      // On failure, close the body's source (e.g. a spool file handle) instead of leaving it to GC.
      if (!done) await it.return(undefined).catch(() => undefined);
    }
  }

  // --- the pool ---

  async #acquire(): Promise<Connection> {
    for (;;) {
      const c = this.#idle.pop();
      if (!c) break;
      this.#unidle(c);
      if (c.alive) return c;
      this.#discard(c);
      c.fail(new DeliveryError(421, '4.4.2 stale idle connection dropped'));
    }
    if (this.#closed) throw new DeliveryError(421, '4.3.2 transport is closed');
    if (this.#total < this.#max) {
      this.#total += 1;
      return this.#open();
    }
    const got = await new Promise<{ conn: Connection } | { slot: true }>((resolve, reject) => this.#waiters.push({ resolve, reject }));
    if ('conn' in got) return got.conn;
    return this.#open(); // the slot was counted in #total by whoever handed it over
  }

  /** Opens a connection for a slot already counted in #total. */
  async #open(): Promise<Connection> {
    try {
      return await this.#connect();
    } catch (err) {
      this.#total -= 1;
      const e = err instanceof DeliveryError ? err : new DeliveryError(421, `4.4.1 connect to ${this.#label} failed: ${errText(err)}`);
      if (this.#total === 0) {
        // Nothing else is connected: those waiting would fail the same way, so tell them now.
        for (const w of this.#waiters.splice(0)) w.reject(e);
      } else {
        this.#wakeNext();
      }
      throw e;
    }
  }

  async #connect(): Promise<Connection> {
    try {
      return await this.#connectOnce(this.#tls.mode);
    } catch (err) {
      if (!(err instanceof TlsFallbackError)) throw err;
      // Postfix does the same at smtp_tls_security_level=may: after a failed handshake, the
      // delivery is retried once in plain text, on a new connection to the same address.
      this.#log?.info({ relay: this.name, err: err.text }, 'TLS handshake failed, retrying in plain text');
      return await this.#connectOnce('none');
    }
  }

  async #connectOnce(tlsMode: SmtpTlsMode): Promise<Connection> {
    const socket = net.connect({ host: this.#dest.host, port: this.#dest.port });
    socket.setNoDelay(true);
    const conn = new Connection(socket, this.#label);
    this.#live.add(conn);
    try {
      return await this.#handshake(conn, tlsMode);
    } catch (err) {
      this.#live.delete(conn);
      throw err;
    }
  }

  /** Greeting and EHLO (LHLO; HELO for an old server) on a new connection, then STARTTLS and AUTH as configured. */
  async #handshake(conn: Connection, tlsMode: SmtpTlsMode): Promise<Connection> {
    await conn.waitConnected(this.#connectTimeout);
    try {
      const greeting = await conn.read(this.#cmdTimeout, 'the greeting');
      if (greeting.code !== 220) {
        throw new DeliveryError(421, `4.4.2 ${this.#label} refused to talk to us: ${greeting.code} ${replyText(greeting)}`);
      }
      await this.#hello(conn, true);
      if (tlsMode !== 'none') await this.#startTls(conn, tlsMode);
      if (this.#auth !== undefined) await this.#authenticate(conn, this.#auth);
    } catch (err) {
      const e = err instanceof DeliveryError ? err : new DeliveryError(421, `4.4.2 ${errText(err)}`);
      conn.fail(e);
      throw e;
    }
    this.#log?.debug({ relay: this.name, ext: [...conn.ext.keywords] }, 'connected');
    return conn;
  }

  /** EHLO / LHLO; HELO for an old server that refuses EHLO (not after STARTTLS: it took EHLO before). */
  async #hello(conn: Connection, heloFallback: boolean): Promise<void> {
    conn.write(`${this.#lmtp ? 'LHLO' : 'EHLO'} ${this.#helo}\r\n`);
    const ehlo = await conn.read(this.#cmdTimeout, this.#lmtp ? 'LHLO' : 'EHLO');
    if (ehlo.code >= 200 && ehlo.code < 300) {
      conn.ext = parseEhloReply(ehlo);
      conn.authMechs = authMechanisms(ehlo);
    } else if (heloFallback && !this.#lmtp && ehlo.code >= 500 && ehlo.code < 600) {
      // An old server without ESMTP (RFC 5321 3.2): plain HELO, no extensions.
      conn.write(`HELO ${this.#helo}\r\n`);
      const helo = await conn.read(this.#cmdTimeout, 'HELO');
      if (helo.code < 200 || helo.code >= 300) {
        throw new DeliveryError(421, `4.4.2 ${this.#label} refused HELO: ${helo.code} ${replyText(helo)}`);
      }
    } else {
      throw new DeliveryError(421, `4.4.2 ${this.#label} refused ${this.#lmtp ? 'LHLO' : 'EHLO'}: ${ehlo.code} ${replyText(ehlo)}`);
    }
  }

  /** STARTTLS after EHLO (RFC 3207), the handshake, the certificate check, and EHLO again. */
  async #startTls(conn: Connection, mode: Exclude<SmtpTlsMode, 'none'>): Promise<void> {
    const required = mode !== 'opportunistic';
    if (!conn.ext.keywords.has('STARTTLS')) {
      if (required) throw new DeliveryError(421, `4.7.4 TLS is required, but ${this.#label} does not offer STARTTLS`);
      this.#log?.debug({ relay: this.name }, 'no STARTTLS offered: plain text');
      return;
    }
    conn.write('STARTTLS\r\n');
    const r = await conn.read(this.#cmdTimeout, 'STARTTLS');
    if (r.code === 421) throw new DeliveryError(421, replyText(r), true);
    if (r.code !== 220) {
      if (required) throw new DeliveryError(421, `4.7.4 TLS is required, but ${this.#label} refused STARTTLS: ${r.code} ${replyText(r)}`);
      // Postfix (may) goes on in plain text too: the session is still where it was before STARTTLS.
      this.#log?.info({ relay: this.name, reply: `${r.code} ${replyText(r)}` }, 'STARTTLS refused: plain text');
      return;
    }
    const name = this.#tlsName;
    let secure: tls.TLSSocket;
    try {
      secure = await conn.startTls({ secureContext: trustContext(this.#tls.ca), host: name, servername: net.isIP(name) === 0 ? name : undefined }, this.#cmdTimeout);
    } catch (err) {
      const why = err instanceof DeliveryError ? err.text : errText(err);
      if (required) throw new DeliveryError(421, `4.7.4 TLS is required, but the TLS handshake with ${this.#label} failed: ${why}`);
      throw new TlsFallbackError(421, `4.4.2 TLS handshake with ${this.#label} failed: ${why}`);
    }
    const verified = secure.authorized;
    if (mode === 'verify' && !verified) throw new DeliveryError(421, `4.7.5 certificate verification failed: ${verifyFailure(secure, name)}`);
    conn.tls = { protocol: secure.getProtocol() ?? 'unknown', cipher: secure.getCipher().name, verified };
    this.#log?.info({ relay: this.name, tls: conn.tls.protocol, cipher: conn.tls.cipher, verified }, 'TLS established');
    // RFC 3207 4.2: forget what the server said before TLS, ask again.
    conn.ext = NO_EXTENSIONS;
    conn.authMechs = new Set();
    await this.#hello(conn, false);
  }

  /** AUTH PLAIN (RFC 4616, with the initial response) if offered, else AUTH LOGIN. */
  async #authenticate(conn: Connection, auth: SmtpAuthOptions): Promise<void> {
    if (conn.tls === null && !isLoopbackAddress(conn.raw.remoteAddress)) {
      throw new DeliveryError(451, `4.7.0 not sending credentials over an unencrypted connection to ${this.#label}`);
    }
    const t = this.#cmdTimeout;
    const failed = (r: SmtpReply): DeliveryError =>
      r.code === 421 ? new DeliveryError(421, replyText(r), true) : new DeliveryError(451, `4.7.8 authentication failed: ${r.code} ${replyText(r)}`);
    const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
    // Success is 235; any 2xx is taken as one (smtp-sink says 250), as Postfix does.
    const ok = (r: SmtpReply): boolean => r.code >= 200 && r.code < 300;
    let r: SmtpReply;
    if (conn.authMechs.has('PLAIN')) {
      conn.write(`AUTH PLAIN ${authPlainResponse(auth.user, auth.password)}\r\n`);
      r = await conn.read(t, 'AUTH PLAIN');
    } else if (conn.authMechs.has('LOGIN')) {
      conn.write('AUTH LOGIN\r\n');
      r = await conn.read(t, 'AUTH LOGIN');
      if (r.code === 334) {
        conn.write(`${b64(auth.user)}\r\n`);
        r = await conn.read(t, 'AUTH LOGIN user name');
        if (r.code === 334) {
          conn.write(`${b64(auth.password)}\r\n`);
          r = await conn.read(t, 'AUTH LOGIN password');
        }
      }
    } else {
      // Postfix would send without AUTH; a smarthost that needs it would then refuse relaying
      // for good (a bounce). Deferring lets the mail wait while an admin looks.
      const offered = conn.authMechs.size > 0 ? `AUTH ${[...conn.authMechs].join(' ')}` : 'no AUTH';
      throw new DeliveryError(451, `4.7.0 ${this.#label} offers neither AUTH PLAIN nor LOGIN (${offered})${conn.tls === null ? ' over plain text' : ''}`);
    }
    // Any failure drops the connection (conn.fail), so a half-done exchange never matters.
    if (!ok(r)) throw failed(r);
    this.#log?.debug({ relay: this.name, user: auth.user }, 'authenticated');
  }

  #release(conn: Connection, reusable: boolean): void {
    if (!reusable || !conn.alive || this.#closed) {
      this.#discard(conn);
      if (conn.alive) void conn.quit(QUIT_TIMEOUT_MS);
      else conn.fail(new DeliveryError(421, '4.4.2 connection discarded'));
      return;
    }
    const w = this.#waiters.shift();
    if (w) {
      w.resolve({ conn });
      return;
    }
    conn.idle = true;
    conn.socket.unref(); // an idle pooled connection must not keep the process alive
    conn.onIdleEvent = () => {
      // Closed or spoke while idle (a 421 on the server's timeout): drop it.
      const i = this.#idle.indexOf(conn);
      if (i !== -1) this.#idle.splice(i, 1);
      this.#unidle(conn);
      this.#discard(conn);
      conn.fail(new DeliveryError(421, '4.4.2 idle connection dropped'));
    };
    conn.idleTimer = setTimeout(() => {
      const i = this.#idle.indexOf(conn);
      if (i !== -1) this.#idle.splice(i, 1);
      this.#unidle(conn);
      this.#discard(conn);
      void conn.quit(QUIT_TIMEOUT_MS);
    }, this.#idleTimeout);
    conn.idleTimer.unref();
    this.#idle.push(conn);
  }

  #unidle(conn: Connection): void {
    conn.idle = false;
    conn.onIdleEvent = null;
    if (conn.idleTimer) clearTimeout(conn.idleTimer);
    conn.idleTimer = null;
    conn.socket.ref();
  }

  /** Forgets a connection exactly once and lets a waiter have its slot. */
  #discard(conn: Connection): void {
    if (conn.discarded) return;
    conn.discarded = true;
    this.#live.delete(conn);
    this.#total -= 1;
    this.#wakeNext();
  }

  #wakeNext(): void {
    if (this.#closed) return;
    if (this.#waiters.length > 0 && this.#total < this.#max) {
      const w = this.#waiters.shift();
      if (w) {
        this.#total += 1;
        w.resolve({ slot: true });
      }
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    const closing = new DeliveryError(421, '4.3.2 transport is closed');
    for (const w of this.#waiters.splice(0)) w.reject(closing);
    const idle = this.#idle.splice(0);
    for (const c of idle) {
      this.#unidle(c);
      this.#discard(c);
    }
    await Promise.all(idle.map((c) => c.quit(QUIT_TIMEOUT_MS)));
    // Deliveries still under way after the forwarder's grace period are cut off: never
    // confirmed, so they are retried after the restart (at worst a duplicate, never a loss).
    for (const c of this.#live) c.fail(closing);
    this.#live.clear();
  }
}

/** " RET=… ENVID=…" for MAIL FROM, from the message's DSN request ('' when it made none). */
export function mailDsnParams(msg: Pick<OutgoingMessage, 'dsn'>): string {
  let s = '';
  if (msg.dsn?.ret) s += ` RET=${msg.dsn.ret}`;
  if (msg.dsn?.envid !== undefined) s += ` ENVID=${xtextEncode(msg.dsn.envid)}`;
  return s;
}

/** " NOTIFY=… ORCPT=…" for RCPT TO ('' when the recipient made no DSN request). */
export function rcptDsnParams(msg: Pick<OutgoingMessage, 'rcptDsn'>, rcpt: string): string {
  const d = msg.rcptDsn?.[rcpt];
  if (!d) return '';
  let s = '';
  if (d.notify && d.notify.length > 0) s += ` NOTIFY=${d.notify.join(',')}`;
  if (d.orcpt) {
    // utf-8 addresses in their 7-bit form (RFC 6533 3), valid with or without SMTPUTF8.
    s += d.orcpt.type === 'utf-8' ? ` ORCPT=utf-8;${utf8AddrEncode(d.orcpt.addr, false)}` : ` ORCPT=${d.orcpt.type};${xtextEncode(d.orcpt.addr)}`;
  }
  return s;
}

/** A Transport that forwards over SMTP or LMTP with a pool of reused connections. */
export function createSmtpTransport(opts: SmtpTransportOptions): Transport {
  return new SmtpTransport(opts);
}

/** A RecipientProber for callouts: the same protocol code, one connection per probe. */
export function createSmtpProber(opts: Omit<SmtpTransportOptions, 'dataTimeoutMs' | 'idleTimeoutMs'>): RecipientProber {
  return new SmtpTransport(opts);
}
