// mxguard relaytest HOST:PORT — the classic open-relay probe suite against any SMTP server.
// The 16 relay tests of nmap's smtp-open-relay.nse (Metasploit's smtp_relay uses the same set;
// restated here as templates, ../shared/testdata/open-relay-probes.json) and more of our own:
// the percent hack, bang paths, quoted local parts and source routes through the target's own
// domain, address literals, the null sender, upper case and sloppy RCPT syntax.
//
// Each probe is one SMTP transaction up to RCPT, never DATA: no mail is ever sent. A few probes
// share a connection, with RSET between them; a new connection every few probes keeps us under
// the servers' error limits (Postfix slows down after 10 errors), and replaces one the server
// drops. A probe is RELAYED when the server accepts (2xx) its RCPT while the address's final
// destination is not the target's own domain (every probe but the control is built that way).
import net from 'node:net';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { parseHostPort } from '../config/schema.ts';
import { parseDuration } from '../util/units.ts';

export interface ProbeTemplate {
  readonly id: string;
  /** MAIL FROM path ('' = the null sender) and RCPT TO path, with placeholders (below). */
  readonly mailFrom: string;
  readonly rcptTo: string;
  /** How RCPT is written: `RCPT TO:<p>` (default), `RCPT TO: <p>` (space) or `RCPT TO:p` (bare). */
  readonly form?: 'space' | 'bare';
  /** Send the RCPT path in upper case. */
  readonly upper?: boolean;
  /** Addressed to the target's own domain: a control, expected to be accepted, never "relayed". */
  readonly control?: boolean;
}

// Placeholders: {from} sender local part, {to} victim local part, {domain} the relay-test
// domain (foreign to the target), {srv} the target's name from its banner, {ip} the target's IP
// as an address-literal body (192.0.2.25, IPv6:2001:db8::25), {local} a domain the target
// receives mail for (--local-domain; {srv} without it), {foreignip} an IP that is not the target.

/** The 16 tests of nmap's smtp-open-relay.nse, in its order (test/fixtures/open-relay-probes.json). */
export const NMAP_PROBES: readonly ProbeTemplate[] = [
  { id: 'nmap-1', mailFrom: '', rcptTo: '{to}@{domain}' },
  { id: 'nmap-2', mailFrom: '{from}@{domain}', rcptTo: '{to}@{domain}' },
  { id: 'nmap-3', mailFrom: '{from}@{srv}', rcptTo: '{to}@{domain}' },
  { id: 'nmap-4', mailFrom: '{from}@[{ip}]', rcptTo: '{to}@{domain}' },
  { id: 'nmap-5', mailFrom: '{from}@[{ip}]', rcptTo: '{to}%{domain}@[{ip}]' },
  { id: 'nmap-6', mailFrom: '{from}@[{ip}]', rcptTo: '{to}%{domain}@{srv}' },
  { id: 'nmap-7', mailFrom: '{from}@[{ip}]', rcptTo: '"{to}@{domain}"' },
  { id: 'nmap-8', mailFrom: '{from}@[{ip}]', rcptTo: '"{to}%{domain}"' },
  { id: 'nmap-9', mailFrom: '{from}@[{ip}]', rcptTo: '{to}@{domain}@[{ip}]' },
  { id: 'nmap-10', mailFrom: '{from}@[{ip}]', rcptTo: '"{to}@{domain}"@[{ip}]' },
  { id: 'nmap-11', mailFrom: '{from}@[{ip}]', rcptTo: '{to}@{domain}@{srv}' },
  { id: 'nmap-12', mailFrom: '{from}@[{ip}]', rcptTo: '@[{ip}]:{to}@{domain}' },
  { id: 'nmap-13', mailFrom: '{from}@[{ip}]', rcptTo: '@{srv}:{to}@{domain}' },
  { id: 'nmap-14', mailFrom: '{from}@[{ip}]', rcptTo: '{domain}!{to}' },
  { id: 'nmap-15', mailFrom: '{from}@[{ip}]', rcptTo: '{domain}!{to}@[{ip}]' },
  { id: 'nmap-16', mailFrom: '{from}@[{ip}]', rcptTo: '{domain}!{to}@{srv}' },
];

/** Ours: routing through the target's own domain, more spellings, senders and RCPT syntax. */
export const EXTRA_PROBES: readonly ProbeTemplate[] = [
  { id: 'percent-local', mailFrom: '{from}@{domain}', rcptTo: '{to}%{domain}@{local}' },
  { id: 'percent-local-upper', mailFrom: '{from}@{domain}', rcptTo: '{to}%{domain}@{local}', upper: true },
  { id: 'percent-chain', mailFrom: '{from}@{domain}', rcptTo: '{to}%{domain}%{srv}@[{ip}]' },
  { id: 'percent-literal', mailFrom: '{from}@{domain}', rcptTo: '{to}%[{foreignip}]@{local}' },
  { id: 'bang-local', mailFrom: '{from}@{domain}', rcptTo: '{domain}!{to}@{local}' },
  { id: 'bang-two-hops', mailFrom: '{from}@{domain}', rcptTo: '{srv}!{domain}!{to}@[{ip}]' },
  { id: 'bang-percent', mailFrom: '{from}@{domain}', rcptTo: '{domain}!{to}%{local}@{local}' },
  { id: 'quoted-at-local', mailFrom: '{from}@{domain}', rcptTo: '"{to}@{domain}"@{local}' },
  { id: 'quoted-at-local-upper', mailFrom: '{from}@{domain}', rcptTo: '"{to}@{domain}"@{local}', upper: true },
  { id: 'quoted-escaped-at', mailFrom: '{from}@{domain}', rcptTo: '"{to}\\@{domain}"@{local}' },
  { id: 'quoted-percent-local', mailFrom: '{from}@{domain}', rcptTo: '"{to}%{domain}"@{local}' },
  { id: 'quoted-bang-local', mailFrom: '{from}@{domain}', rcptTo: '"{domain}!{to}"@{local}' },
  { id: 'quoted-percent-literal', mailFrom: '{from}@{domain}', rcptTo: '"{to}%{domain}"@[{ip}]' },
  { id: 'double-at-local', mailFrom: '{from}@{domain}', rcptTo: '{to}@{domain}@{local}' },
  { id: 'route-local', mailFrom: '{from}@{domain}', rcptTo: '@{local}:{to}@{domain}' },
  { id: 'route-two-hops', mailFrom: '{from}@{domain}', rcptTo: '@{srv},@[{ip}]:{to}@{domain}' },
  { id: 'literal-foreign', mailFrom: '{from}@{domain}', rcptTo: '{to}@[{foreignip}]' },
  { id: 'null-sender-postmaster', mailFrom: '', rcptTo: 'postmaster@{domain}' },
  { id: 'postmaster-literal-sender', mailFrom: 'postmaster@[{ip}]', rcptTo: '{to}@{domain}' },
  { id: 'local-sender', mailFrom: '{from}@{local}', rcptTo: '{to}@{domain}' },
  { id: 'upper', mailFrom: '{from}@{domain}', rcptTo: '{to}@{domain}', upper: true },
  { id: 'trailing-dot', mailFrom: '{from}@{domain}', rcptTo: '{to}@{domain}.' },
  { id: 'space-before-path', mailFrom: '{from}@{domain}', rcptTo: '{to}@{domain}', form: 'space' },
  { id: 'no-brackets', mailFrom: '{from}@{domain}', rcptTo: '{to}@{domain}', form: 'bare' },
];

/** With --local-domain: mail for the target's own domain must be accepted, or the run proves little. */
export const CONTROL_PROBE: ProbeTemplate = { id: 'control', mailFrom: '{from}@{domain}', rcptTo: 'postmaster@{local}', control: true };

export interface ProbeVars {
  readonly from: string;
  readonly to: string;
  readonly domain: string;
  readonly srv: string;
  /** Address-literal body: "192.0.2.25" or "IPv6:2001:db8::25". */
  readonly ip: string;
  readonly local: string;
  readonly foreignip: string;
}

export interface Probe {
  readonly id: string;
  readonly mailFrom: string;
  readonly rcptTo: string;
  /** The command lines sent, without CRLF. */
  readonly mailCommand: string;
  readonly rcptCommand: string;
  readonly control: boolean;
}

function fill(template: string, vars: ProbeVars): string {
  return template.replace(/\{(from|to|domain|srv|ip|local|foreignip)\}/g, (_, key: keyof ProbeVars) => vars[key]);
}

/** The probes for one target, without duplicates (with no --local-domain, {local} is {srv}). */
export function expandProbes(vars: ProbeVars, opts: { control?: boolean } = {}): Probe[] {
  const templates = [...NMAP_PROBES, ...EXTRA_PROBES, ...(opts.control ? [CONTROL_PROBE] : [])];
  const seen = new Set<string>();
  const out: Probe[] = [];
  for (const t of templates) {
    const mailFrom = fill(t.mailFrom, vars);
    let rcptTo = fill(t.rcptTo, vars);
    if (t.upper) rcptTo = rcptTo.toUpperCase();
    const rcptCommand = t.form === 'bare' ? `RCPT TO:${rcptTo}` : t.form === 'space' ? `RCPT TO: <${rcptTo}>` : `RCPT TO:<${rcptTo}>`;
    const mailCommand = `MAIL FROM:<${mailFrom}>`;
    const key = `${mailCommand}\n${rcptCommand}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ id: t.id, mailFrom, rcptTo, mailCommand, rcptCommand, control: t.control === true });
  }
  return out;
}

export interface ProbeResult extends Probe {
  /**
   * refused: MAIL or RCPT got 4xx/5xx. relayed: RCPT got 2xx for a foreign destination.
   * accepted: the control was accepted. error: no answer (connection lost, timeout).
   */
  readonly outcome: 'refused' | 'relayed' | 'accepted' | 'error';
  /** The command whose reply decided: 'mail', 'rcpt', or 'none' for an error. */
  readonly stage: 'mail' | 'rcpt' | 'none';
  /** The deciding reply code (undefined for an error). */
  readonly code?: number;
  /** The deciding reply's first line, or what went wrong. */
  readonly reply: string;
}

export interface RelayTestOptions {
  /** Our EHLO name. Default: this host's name. */
  heloName?: string;
  /** The relay-test domain, foreign to the target. Default: relaytest.invalid (RFC 2606: never delivered). */
  probeDomain?: string;
  /** A domain the target receives mail for: adds probes routed through it and a control. */
  localDomain?: string;
  /** Bound on each reply and on connecting, in ms. Default 15 s. */
  timeoutMs?: number;
  /** One line per probe, a header and the verdict. */
  log?: (line: string) => void;
  /** Probes per connection before a fresh one. Default 8 (Postfix slows down after 10 errors). */
  probesPerConnection?: number;
}

export interface RelayTestResult {
  results: ProbeResult[];
  /** Probes whose RCPT was accepted for a foreign destination. */
  relayed: number;
  /** Probes that got no answer. */
  errors: number;
  /** The target's greeting. */
  banner: string;
  /** What the target was probed as: its name, IP literal body, the local domain used. */
  vars: ProbeVars;
}

/** The first connection failed (refused, timed out, or no 220 greeting). */
export class RelayTestConnectError extends Error {}

interface Reply {
  readonly code: number;
  /** First line. */
  readonly text: string;
}

class ProtocolError extends Error {}

const MAX_REPLY_BUFFER = 64 * 1024;

/** A minimal SMTP client connection: one command, one (possibly multi-line) reply. */
class Conn {
  readonly socket: net.Socket;
  private buf = '';
  private ended = false;
  private waiter: (() => void) | undefined;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      this.buf += d;
      this.wake();
    });
    const end = () => {
      this.ended = true;
      this.wake();
    };
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', end);
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  static open(host: string, port: number, timeoutMs: number): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port, noDelay: true });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connect to ${host}:${port} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new Conn(socket));
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  get remoteIp(): string {
    return this.socket.remoteAddress ?? '';
  }

  private take(): Reply | undefined {
    let pos = 0;
    let first: string | undefined;
    for (;;) {
      const nl = this.buf.indexOf('\n', pos);
      if (nl === -1) {
        if (this.buf.length > MAX_REPLY_BUFFER) throw new ProtocolError('reply too long');
        return undefined;
      }
      const line = this.buf.slice(pos, nl).replace(/\r$/, '');
      pos = nl + 1;
      if (!/^\d{3}([ -]|$)/.test(line)) throw new ProtocolError(`not an SMTP reply: ${JSON.stringify(line.slice(0, 80))}`);
      first ??= line;
      if (line[3] !== '-') {
        this.buf = this.buf.slice(pos);
        return { code: Number(line.slice(0, 3)), text: first };
      }
    }
  }

  async reply(timeoutMs: number): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = this.take();
      if (r) return r;
      if (this.ended) throw new ProtocolError('connection closed by the server');
      const left = deadline - Date.now();
      if (left <= 0) throw new ProtocolError(`no reply within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  command(line: string, timeoutMs: number): Promise<Reply> {
    if (!this.ended) this.socket.write(`${line}\r\n`, 'latin1');
    return this.reply(timeoutMs);
  }

  /** QUIT, a short wait for its reply, then close. */
  async quit(): Promise<void> {
    try {
      if (!this.ended) await this.command('QUIT', 1000);
    } catch {
      // Closing anyway.
    } finally {
      this.socket.destroy();
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

const is2xx = (r: Reply) => r.code >= 200 && r.code < 300;

/** "127.0.0.1" → "127.0.0.1"; "::1" → "IPv6:::1"; "::ffff:1.2.3.4" → "1.2.3.4". */
function literalBody(ip: string): string {
  const plain = ip.startsWith('::ffff:') && net.isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
  return net.isIPv6(plain) ? `IPv6:${plain}` : plain;
}

/** The host name in a 220 greeting, if it looks like one. */
function bannerName(banner: string): string | undefined {
  const word = banner.slice(4).split(/\s+/)[0] ?? '';
  return /^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$/.test(word) ? word.toLowerCase() : undefined;
}

function describe(p: Probe): string {
  return `${p.mailCommand} ${p.rcptCommand}`;
}

/** The line printed for one probe. */
export function formatResult(r: ProbeResult): string {
  if (r.outcome === 'error') return `??  no answer ${r.reply}  ${describe(r)}`;
  if (r.control) {
    const note = r.outcome === 'accepted' ? "(control: the target's own domain)" : '(control refused: does the target take mail for this domain at all?)';
    return `--  local     ${r.reply}  ${describe(r)}  ${note}`;
  }
  if (r.outcome === 'relayed') return `RELAYED ${r.reply}  ${describe(r)}`;
  return `OK  refused   ${r.reply}  ${describe(r)}${r.stage === 'mail' ? '  (at MAIL)' : ''}`;
}

/**
 * Runs the probe suite against target. Throws RelayTestConnectError when it cannot connect and
 * get a 220 greeting the first time; later lost connections are replaced (a probe that loses its
 * connection is tried once more on a fresh one, then counts as an error).
 */
export async function runRelayTest(target: { host: string; port: number }, opts: RelayTestOptions = {}): Promise<RelayTestResult> {
  const timeoutMs = opts.timeoutMs ?? 15_000;
  const helo = opts.heloName ?? (os.hostname() || 'relaytest.invalid');
  const probeDomain = (opts.probeDomain ?? 'relaytest.invalid').toLowerCase();
  const perConnection = Math.max(1, opts.probesPerConnection ?? 8);
  const log = opts.log ?? (() => undefined);
  const where = `${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}`;

  /** Connects, reads the greeting and says EHLO (HELO if EHLO is refused). */
  const openSession = async (): Promise<{ conn: Conn; banner: string }> => {
    const conn = await Conn.open(target.host, target.port, timeoutMs);
    try {
      const banner = await conn.reply(timeoutMs);
      if (banner.code !== 220) throw new ProtocolError(`no 220 greeting: ${banner.text}`);
      let hello = await conn.command(`EHLO ${helo}`, timeoutMs);
      if (!is2xx(hello)) hello = await conn.command(`HELO ${helo}`, timeoutMs);
      if (!is2xx(hello)) throw new ProtocolError(`HELO refused: ${hello.text}`);
      return { conn, banner: banner.text };
    } catch (err) {
      conn.destroy();
      throw err;
    }
  };

  let first: { conn: Conn; banner: string };
  try {
    first = await openSession();
  } catch (err) {
    throw new RelayTestConnectError(`cannot test ${where}: ${(err as Error).message}`);
  }
  const ip = literalBody(first.conn.remoteIp || target.host);
  const srv = bannerName(first.banner) ?? `[${ip}]`;
  const local = (opts.localDomain ?? srv).toLowerCase();
  if (probeDomain === local || probeDomain === srv) {
    first.conn.destroy();
    throw new Error(`the probe domain ${probeDomain} must not be the target's own domain`);
  }
  const vars: ProbeVars = { from: 'relaytest', to: 'relaytest', domain: probeDomain, srv, ip, local, foreignip: ip === '192.0.2.1' ? '192.0.2.2' : '192.0.2.1' };
  const probes = expandProbes(vars, { control: opts.localDomain !== undefined });

  log(`relaytest ${where}: ${first.banner}`);
  log(`probing as ${srv} [${ip}], relay-test domain ${probeDomain}${opts.localDomain ? `, local domain ${local}` : ''}, HELO ${helo}; ${probes.length} probes, none goes past RCPT`);

  let conn: Conn | undefined = first.conn;
  let onConn = 0;
  let connectFailures = 0;
  const results: ProbeResult[] = [];

  const dropConn = () => {
    conn?.destroy();
    conn = undefined;
  };

  /** One try of one probe; 'lost' when the connection went away before the deciding reply. */
  const attempt = async (c: Conn, p: Probe): Promise<ProbeResult | 'lost'> => {
    const mail = await c.command(p.mailCommand, timeoutMs);
    if (mail.code === 421) return 'lost';
    if (!is2xx(mail)) return { ...p, outcome: 'refused', stage: 'mail', code: mail.code, reply: mail.text };
    const rcpt = await c.command(p.rcptCommand, timeoutMs);
    if (rcpt.code === 421) return 'lost';
    const outcome = is2xx(rcpt) ? (p.control ? 'accepted' : 'relayed') : 'refused';
    return { ...p, outcome, stage: 'rcpt', code: rcpt.code, reply: rcpt.text };
  };

  for (const p of probes) {
    let result: ProbeResult | undefined;
    let lastError = 'connection lost';
    for (let tries = 0; tries < 2 && result === undefined; tries++) {
      if (conn && onConn >= perConnection) {
        await conn.quit();
        conn = undefined;
      }
      if (!conn) {
        if (connectFailures >= 3) break;
        try {
          conn = (await openSession()).conn;
          onConn = 0;
          connectFailures = 0;
        } catch (err) {
          connectFailures++;
          lastError = `reconnect failed: ${(err as Error).message}`;
          continue;
        }
      }
      const c: Conn = conn;
      onConn++;
      try {
        const r = await attempt(c, p);
        if (r === 'lost') {
          lastError = 'the server closed the connection (421)';
          dropConn();
          continue;
        }
        result = r;
        // End the transaction; a server that does not take RSET gets a fresh connection.
        const rset = await c.command('RSET', timeoutMs).catch(() => undefined);
        if (!rset || rset.code !== 250) dropConn();
      } catch (err) {
        lastError = (err as Error).message;
        dropConn();
      }
    }
    result ??= { ...p, outcome: 'error', stage: 'none', reply: `(${lastError})` };
    results.push(result);
    log(formatResult(result));
  }
  const open: Conn | undefined = conn;
  if (open) await open.quit();

  const relayed = results.filter((r) => r.outcome === 'relayed').length;
  const errors = results.filter((r) => r.outcome === 'error').length;
  const counted = results.filter((r) => !r.control).length;
  const unanswered = errors > 0 ? `; ${errors} got no answer` : '';
  if (relayed > 0) log(`VERDICT: OPEN RELAY: ${relayed} of ${counted} probes relayed by ${where}${unanswered}`);
  else if (errors === results.length) log(`VERDICT: unknown: no probe got an answer from ${where}`);
  else log(`VERDICT: not an open relay: 0 of ${counted} probes relayed by ${where}${unanswered}`);
  return { results, relayed, errors, banner: first.banner, vars };
}

export const RELAYTEST_USAGE = `usage: mxguard relaytest HOST[:PORT] [--local-domain DOMAIN] [--helo NAME] [--probe-domain DOMAIN] [--timeout 15s]

Runs the classic open-relay probes (nmap's 16 and more) against an SMTP server, each up to RCPT
and never DATA, and prints one line per probe and a verdict. Probes are RELAYED when the server
accepts a recipient whose final destination is not its own.

  --local-domain D   a domain the server takes mail for: adds probes routed through it
                     (user%victim@D, victim!user@D, "user@victim"@D ...) and a control
  --helo NAME        our EHLO name (default: this host's name)
  --probe-domain D   the foreign relay-test domain (default relaytest.invalid, which can never
                     be delivered); use a real domain of yours if the server checks that
                     recipient domains exist
  --timeout T        bound on each reply (default 15s)

Exit status: 0 nothing relayed, 1 some probe relayed, 2 could not connect (or bad arguments).`;

/** `mxguard relaytest HOST:PORT [...]`: returns the exit status (0 closed, 1 relayed, 2 could not test). */
export async function relaytestMain(argv: string[], out: (line: string) => void = (l) => console.log(l)): Promise<number> {
  let values: { 'local-domain'?: string; helo?: string; 'probe-domain'?: string; timeout?: string; help?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        'local-domain': { type: 'string' },
        helo: { type: 'string' },
        'probe-domain': { type: 'string' },
        timeout: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    out(`mxguard relaytest: ${(err as Error).message}`);
    out(RELAYTEST_USAGE);
    return 2;
  }
  if (values.help) {
    out(RELAYTEST_USAGE);
    return 0;
  }
  const arg = positionals[0];
  const target = arg === undefined ? undefined : (parseHostPort(arg) ?? (/^[^\s:[\]]+$/.test(arg) ? { host: arg, port: 25 } : undefined));
  if (!target || positionals.length > 1) {
    out(arg === undefined ? 'mxguard relaytest: which server? HOST:PORT' : `mxguard relaytest: "${positionals.join(' ')}" is not HOST:PORT`);
    out(RELAYTEST_USAGE);
    return 2;
  }
  let timeoutMs: number | undefined;
  if (values.timeout !== undefined) {
    timeoutMs = parseDuration(values.timeout);
    if (timeoutMs === undefined || timeoutMs <= 0) {
      out(`mxguard relaytest: "${values.timeout}" is not a duration (e.g. 15s)`);
      return 2;
    }
  }
  try {
    const result = await runRelayTest(target, {
      localDomain: values['local-domain'],
      heloName: values.helo,
      probeDomain: values['probe-domain'],
      timeoutMs,
      log: out,
    });
    if (result.relayed > 0) return 1;
    return result.errors === result.results.length ? 2 : 0;
  } catch (err) {
    out(`mxguard relaytest: ${(err as Error).message}`);
    return 2;
  }
}
