// One SMTP session (RFC 5321) over one connection: a state machine that reads commands, asks
// its policy session (src/policy/session.ts) for a decision per phase, streams DATA into the
// spool and answers. Commands are handled strictly in order; while one is waiting (policy, spool,
// a tarpit delay) the rest of the pipelined input stays buffered, and replies are written in one
// batch when the input runs dry (RFC 2920).
import tls from 'node:tls';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { badUtf8, parseCommandLine, parseHeloArg, parsePath } from './command.ts';
import { parseMailbox, type Address, type PathParams } from '../mail/address.ts';
import { DataDecoder } from './data-decoder.ts';
import { HeaderScan, messageDsnOf, parseEnvid, parseRcptParams, parseRet } from './dsn-params.ts';
import type { RcptDsn } from '../mail/envelope.ts';
import { multiline, receivedHeader } from './replies.ts';
import { saslContinue, saslStart, type SaslState, type SaslStep } from './sasl.ts';
import type { Config } from '../config/schema.ts';
import type { PolicyEngine, PhaseResult } from '../policy/engine.ts';
import { isSubmission, type MessageView, type SessionInfo } from '../policy/context.ts';
import { HeaderBlockReader, headerValues } from '../mail/header-block.ts';
import { fromAddress, fromDomain, signingDomainFor } from '../delivery/dkim-sign.ts';
import type { PolicySession, PolicyTx } from '../policy/session.ts';
import { traceLogFields, type TraceOutcome, type TransactionTrace } from '../policy/trace.ts';
import { newQueueId, type CommittedMessage, type MessageWriter, type Spool } from '../queue/spool.ts';
import { isStorageFull } from '../queue/spool-fs.ts';
import type { Envelope } from '../mail/envelope.ts';
import type { Logger } from '../util/log.ts';
import { addressListOf, plainIp } from '../util/cidr.ts';
import { asciiDomain } from '../util/idna.ts';
import type { Store } from '../store/store.ts';
import { AuthBusyError, HashRefusedError, type Authenticator } from '../auth/index.ts';
import type { DnsResolver } from '../dns/resolver.ts';
import { barePipelining, nonSmtpVerb } from './protocol-findings.ts';
import type { AuthResults } from '../policy/auth/results.ts';
import { metrics, type SessionEnd } from '../util/metrics.ts';

/** What a session needs from the server around it. */
export interface SessionDeps {
  readonly config: Config;
  readonly policy: PolicyEngine;
  readonly spool: Spool;
  readonly log: Logger;
  readonly tls: tls.SecureContext | undefined;
  /** Hands a committed message to the forwarder. */
  readonly enqueue: (msg: CommittedMessage) => void;
  /** Shared policy state (AUTH failure counters, recent POP users). */
  readonly store?: Store;
  /** Checks AUTH credentials; no authenticator, no AUTH. */
  readonly authenticator?: Authenticator;
  /** Whether the server is in stress mode (limits.stress_at): the stress deadlines apply. */
  readonly stressed?: () => boolean;
  /** Receives each transaction's trace when it ends (after its `transaction` log line). */
  readonly onTrace?: (t: TransactionTrace) => void;
  /** The resolver, for smtp.greet_delay_for suspicious (the client's forward-confirmed reverse DNS). */
  readonly dns?: DnsResolver;
}

/**
 * What a session needs of its connection: a TCP socket, or the inherited standard input and
 * output of `mxguard stdio` (src/smtp/stdio-socket.ts). It emits 'timeout' after setTimeout's
 * idle time, as net.Socket does.
 */
export type SessionSocket = Duplex & {
  setTimeout(ms: number): unknown;
  setNoDelay?(noDelay?: boolean): unknown;
};

/** Who is talking to whom: from the socket, a PROXY protocol header or tcpserver's variables. */
export interface Connection {
  readonly remoteIp: string;
  readonly remotePort: number;
  readonly localIp: string;
  readonly localPort: number;
  /** The client's host name as the launcher found it (tcpserver's TCPREMOTEHOST); null: it has none. */
  readonly clientHostname?: string | null;
  /** rblsmtpd's RBLSMTPD variable, when `mxguard stdio` runs with it set. */
  readonly rblsmtpd?: string;
  /** A PROXY v2 LOCAL connection: the proxy's own health check, which may not send mail. */
  readonly proxyLocal?: boolean;
  /** The listener's role (listen: mode); undefined is mx. submissions: the socket is TLS from the start. */
  readonly listener?: 'mx' | 'submission' | 'submissions';
  /** The session ID, when the server made one first (it logged about the connection before the session began). */
  readonly sid?: string;
}

/** The connection facts of a plain TCP socket. */
export function socketConnection(socket: net.Socket): Connection {
  return {
    remoteIp: plainIp(socket.remoteAddress ?? ''),
    remotePort: socket.remotePort ?? 0,
    localIp: plainIp(socket.localAddress ?? ''),
    localPort: socket.localPort ?? 0,
  };
}

/** Command line limit (RFC 5321 4.5.3.1.4), including CRLF. */
const MAX_COMMAND_LINE = 512;
/** AUTH lines may be longer (RFC 4954 4). */
const MAX_AUTH_LINE = 12288;
/** Pause reading when this much unprocessed input has piled up. */
const INPUT_HIGH_WATER = 256 * 1024;

interface Transaction {
  mailFrom: Address;
  params: PathParams;
  rcpts: Address[];
  /** Its policy state: a refusal held for RCPT, the points and headers tagged, the trace. */
  policy: PolicyTx;
  /** Its authentication results (the same object as policy.auth), as the checks see them in TransactionInfo. */
  auth: AuthResults;
  /** DSN NOTIFY / ORCPT per recipient address (RFC 3461). */
  rcptDsn?: Record<string, RcptDsn>;
  /** Watches the header block for UTF-8 while DATA arrives (does the message need SMTPUTF8?). */
  headerScan?: HeaderScan;
  /** Collects the header block while DATA arrives, for the DATA checks and the X-Spam-* cuts. */
  headerBlock?: HeaderBlockReader;
  /** Lines and octets of our Received header, in front of the message. */
  prefixLines?: number;
  prefixLength?: number;
}

type Mode = 'greeting' | 'command' | 'data' | 'closed';

let sessionCounter = 0;

/** A session ID for the log; the server makes one before the session when it refuses a connection. */
export function newSessionId(): string {
  return (Date.now() % 1e8).toString(36) + (++sessionCounter).toString(36);
}

export class Session {
  readonly info: SessionInfo;
  private socket: SessionSocket;
  private readonly deps: SessionDeps;
  private readonly config: Config;
  private readonly log: Logger;
  private mode: Mode = 'greeting';
  private buf: Buffer = Buffer.alloc(0);
  private pumping = false;
  private out: string[] = [];
  private errors = 0;
  private tx: Transaction | undefined;
  private writer: MessageWriter | undefined;
  private decoder: DataDecoder | undefined;
  private discardingLongLine = false;
  /** An AUTH exchange waiting for the client's next line. */
  private sasl: SaslState | undefined;
  private shuttingDown = false;
  /** The client has shut its sending side (a FIN, or the end of standard input): no more input comes. */
  private inputEnded = false;
  /** A message was being received when the input ended or the connection died. */
  private lostData = false;
  private readonly onClosed: () => void;
  private closeTimer: NodeJS.Timeout | undefined;
  /** Called once when the session ends (our last reply, or the client gone), before the socket is closed. */
  private onEnded: (() => void) | undefined;
  /** The command or message under way must be complete by its deadline (limits.command_deadline, data_deadline). */
  private deadline: { mode: 'command' | 'data'; since: number; timer: NodeJS.Timeout | undefined } | undefined;
  /** Octets received since 354 (they extend the DATA deadline at limits.data_min_rate). */
  private dataOctets = 0;
  private readonly healthCheck: boolean;
  /** When the client connected, for the transaction line (text logs repeat the connect under the queue ID). */
  private readonly connectedAt = Date.now();
  /** The Message-ID of the message whose DATA is being decided, for its transaction line. */
  private messageId: string | undefined;
  /** The policy side of this connection: decisions per phase, delayed refusals, score, trace. */
  private readonly policy: PolicySession;
  /** What our replies answer, for mxguard_smtp_replies_total: the verb, or connect, command (unparsed), data_end. */
  private replyPhase = 'connect';
  /** How the session ended, for mxguard_sessions_total (unset: the client went away). */
  private endedHow: SessionEnd | undefined;
  private endCounted = false;

  constructor(socket: SessionSocket, connection: Connection, deps: SessionDeps, onClosed: () => void, onEnded?: () => void) {
    this.socket = socket;
    this.deps = deps;
    this.config = deps.config;
    this.onClosed = onClosed;
    this.onEnded = onEnded;
    this.healthCheck = connection.proxyLocal === true;
    this.info = {
      sid: newSessionId(),
      ...connection,
      tls: connection.listener === 'submissions', // implicit TLS (RFC 8314): the server wrapped the socket
      esmtp: false,
      earlyTalker: false,
      rcptCount: 0,
    };
    this.log = deps.log.child({ sid: this.info.sid, ip: this.info.remoteIp });
    this.policy = deps.policy.session({
      info: this.info,
      delayReject: this.config.smtp.delay_reject,
      log: this.log,
      hold: (delayMs) => this.hold({ delayMs }),
      closed: () => this.closed,
      relay: this.config.relay,
      scoring: this.config.scoring,
      authservId: this.config.hostname,
      addAuthResults: this.config.spf !== undefined || this.config.dmarc !== undefined,
      smtp: this.config.smtp,
      relayClients: this.config.relay.forward_from_ip,
      ...(deps.store ? { store: deps.store } : {}),
      ...(deps.dns ? { dns: deps.dns } : {}),
      onTrace: (t) => {
        const fields = traceLogFields(t);
        // What the connect line said, so that a queued message's lines all carry its queue ID (log.format text), and the Message-ID.
        fields.helo = t.helo;
        fields.port = this.info.remotePort;
        fields.connectedAt = new Date(this.connectedAt).toISOString();
        if (this.messageId !== undefined) fields.msgid = this.messageId;
        this.messageId = undefined;
        this.log.info(fields, 'transaction');
        deps.onTrace?.(t);
      },
    });
    this.attach(socket);
  }

  private attach(socket: SessionSocket): void {
    socket.setNoDelay?.(true);
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
    socket.on('timeout', this.onTimeout);
    socket.setTimeout(this.config.limits.command_timeout);
  }

  private detach(socket: SessionSocket): void {
    socket.off('data', this.onData);
    socket.off('end', this.onEnd);
    socket.off('error', this.onError);
    socket.off('close', this.onClose);
    socket.off('timeout', this.onTimeout);
    socket.setTimeout(0);
  }

  /** Greets after the connect-phase checks and smtp.greet_delay, which the policy holds the banner for (PolicySession.connect). */
  async start(): Promise<void> {
    this.log.info({ port: this.info.remotePort }, 'connect');
    const decision = await this.policy.connect();
    if (this.closed) return;
    if (decision.kind === 'reply') {
      this.endedHow ??= 'refused';
      this.reply(decision.reply);
      return this.close();
    }
    this.mode = 'command';
    this.reply(`220 ${this.config.hostname} ${this.config.smtp.banner}`);
    this.flush();
    void this.pump();
  }

  /**
   * Graceful stop. A session waiting for its next command gets 421 now, even inside a
   * transaction (nothing of it was acknowledged, the client will try again later); one that is
   * busy gets it right after the reply it is working on, and a message being received is
   * finished and acknowledged first.
   */
  shutdown(): void {
    this.shuttingDown = true;
    if (this.mode === 'command' && !this.pumping) this.sayGoodbye();
  }

  /** The grace period is over: close whatever is still open. */
  forceClose(): void {
    if (this.closed) return;
    this.sayGoodbye();
    this.socket.destroy();
  }

  private sayGoodbye(): void {
    this.endedHow ??= 'shutdown';
    this.reply(`421 4.3.2 ${this.config.hostname} Service shutting down, closing transmission channel`);
    this.close();
  }

  // --- input ---------------------------------------------------------------------------

  private readonly onData = (chunk: Buffer): void => {
    // Anything before our banner: the policy judges it if it made the client wait (smtp.early_talker).
    if (this.mode === 'greeting') this.info.earlyTalker = true;
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    if (this.buf.length > INPUT_HIGH_WATER) this.socket.pause();
    if (!this.pumping && this.mode !== 'greeting') void this.pump();
  };

  /**
   * The client has half-closed (Exim writes "." and QUIT, then shuts its sending side). It still
   * reads: every command already received is handled and answered, then we close our side
   * (pump() calls endOfInput() once the buffered input has run dry).
   */
  private readonly onEnd = (): void => {
    this.inputEnded = true;
    this.log.debug({ mode: this.mode, buffered: this.buf.length }, 'client closed its sending side');
    if (!this.pumping && this.mode !== 'greeting') void this.pump();
  };

  /**
   * All the input there will ever be has been handled: a message it ends inside is dropped
   * (never acknowledged), an unterminated last line is ignored, and our side is closed.
   */
  private endOfInput(): void {
    this.endedHow ??= 'input_ended';
    if (this.mode === 'data') {
      this.log.info({ id: this.writer?.id, check: 'data' }, 'client ended its input inside DATA: message dropped');
      this.dropMessage();
    } else if (this.buf.length > 0) {
      this.log.debug({ bytes: this.buf.length }, 'unterminated command line at the end of the input ignored');
    }
    this.buf = Buffer.alloc(0);
    this.close();
  }

  /** Throws away the message being received (nothing of it was acknowledged). */
  private dropMessage(): void {
    const writer = this.writer;
    this.writer = undefined;
    this.decoder = undefined;
    this.tx?.policy.trace.end();
    this.tx = undefined;
    if (!writer) return;
    this.lostData = true;
    writer.abort().catch((err: unknown) => this.log.warn({ id: writer.id, err }, 'could not remove an unfinished message'));
  }

  /** Processes buffered input until it runs dry or the session closes. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.mode === 'command' || this.mode === 'data') {
        if (this.mode === 'data') {
          if (this.buf.length === 0) break;
          this.dataOctets += this.buf.length;
          const pending = this.feedData();
          if (pending) await pending;
          continue;
        }
        const line = this.nextLine();
        if (line === undefined) break;
        this.clearDeadline();
        const command = this.sasl === undefined && !line.tooLong;
        const esmtp = this.info.esmtp;
        const sentAhead = this.buf.length > 0;
        const pending = this.handleLine(line);
        if (pending) {
          // RFC 2920: while another complete command is waiting, its reply joins this batch.
          if (this.buf.indexOf(10) === -1) this.flush();
          await pending;
        }
        // More input before our reply, where the client had to wait for it (after STARTTLS the
        // buffer was emptied, and what comes now was sent after its handshake).
        const ahead = sentAhead || (pending !== undefined && this.buf.length > 0 && !/^starttls/i.test(line.text));
        if (ahead && command && !this.closed && this.config.smtp.bare_pipelining !== 'ignore' && barePipelining(line.text, esmtp)) this.protocolFinding('bare_pipelining', line.text.split(' ', 1)[0]?.toUpperCase() ?? '');
      }
    } catch (err) {
      this.log.error({ err }, 'session failed');
      this.reply(`421 4.3.0 ${this.config.hostname} Error: internal error`);
      this.close();
    } finally {
      this.pumping = false;
      if (this.shuttingDown && this.mode === 'command') this.sayGoodbye();
      if (this.inputEnded && this.mode !== 'closed') this.endOfInput();
      this.flush();
      if (this.socket.isPaused() && this.buf.length < INPUT_HIGH_WATER && this.mode !== 'closed') this.socket.resume();
      this.armDeadline();
    }
  }

  /** Takes one command line off the buffer; undefined when no complete line is there. */
  private nextLine(): { text: string; bareLf: boolean; tooLong: boolean; badUtf8?: boolean } | undefined {
    const limit = this.sasl || /^auth /i.test(this.buf.toString('latin1', 0, 5)) ? MAX_AUTH_LINE : MAX_COMMAND_LINE;
    const lf = this.buf.indexOf(10);
    if (lf === -1) {
      if (this.buf.length > limit) {
        // Throw the excess away now, answer once the line finally ends.
        this.discardingLongLine = true;
        this.buf = Buffer.alloc(0);
      }
      return undefined;
    }
    const bareLf = lf === 0 || this.buf[lf - 1] !== 13;
    const end = bareLf ? lf : lf - 1;
    const tooLong = this.discardingLongLine || lf + 1 > limit;
    const text = tooLong ? '' : this.buf.toString('utf8', 0, end);
    // toString('utf8') turns invalid octets into U+FFFD: judge the raw octets.
    const invalid = !tooLong && badUtf8(this.buf.subarray(0, end));
    this.buf = this.buf.subarray(lf + 1);
    this.discardingLongLine = false;
    return { text, bareLf, tooLong, badUtf8: invalid };
  }

  // --- replies -------------------------------------------------------------------------

  private reply(text: string): void {
    metrics.reply(this.replyPhase, text);
    this.out.push(text.endsWith('\n') ? text : text + '\r\n');
  }

  private flush(): void {
    if (this.out.length === 0 || this.socket.destroyed) return;
    const data = this.out.length === 1 ? (this.out[0] as string) : this.out.join('');
    this.out = [];
    this.socket.write(data);
  }

  /** A client error: counted against limits.max_errors. */
  private error(text: string): void {
    this.reply(text);
    if (++this.errors >= this.config.limits.max_errors) {
      this.log.info({ check: 'max_errors', setting: 'limits.max_errors' }, 'too many errors');
      this.endedHow ??= 'too_many_errors';
      this.reply(`421 4.7.0 ${this.config.hostname} Error: too many errors`);
      this.close();
    }
  }

  // --- commands ------------------------------------------------------------------------

  private handleLine(line: { text: string; bareLf: boolean; tooLong: boolean; badUtf8?: boolean }): Promise<void> | void {
    if (!this.sasl) this.replyPhase = 'command';
    if (line.tooLong) {
      this.sasl = undefined;
      return this.error('500 5.5.2 Error: line too long');
    }
    if (line.bareLf && this.config.smtp.bare_lf === 'reject') {
      this.sasl = undefined;
      return this.error('500 5.5.2 Error: bare <LF> received');
    }
    if (line.badUtf8) {
      // Postfix's answer (smtputf8_enable): the line is never decoded into U+FFFD and passed on.
      this.sasl = undefined;
      this.log.debug({ check: 'utf8' }, 'command line is not valid UTF-8');
      return this.error('500 5.5.2 Error: bad UTF-8 syntax');
    }
    if (this.sasl) {
      const state = this.sasl;
      this.sasl = undefined;
      return this.authStep(saslContinue(state, line.text));
    }
    const parsed = parseCommandLine(line.text);
    if (!parsed.ok) {
      const foreign = nonSmtpVerb(line.text);
      if (foreign !== undefined && this.protocolFinding('non_smtp_command', foreign)) return;
      this.log.debug({ cmd: parsed.unknown }, 'unknown command');
      return this.error('500 5.5.2 Error: command not recognized');
    }
    const { verb, arg } = parsed.command;
    this.replyPhase = verb;
    switch (verb) {
      case 'EHLO':
      case 'HELO':
        return this.helo(verb, arg);
      case 'MAIL':
        return this.mail(arg);
      case 'RCPT':
        return this.rcpt(arg);
      case 'DATA':
        return this.data(arg);
      case 'RSET':
        this.resetTransaction();
        return this.reply('250 2.0.0 Ok');
      case 'NOOP':
        return this.reply('250 2.0.0 Ok');
      case 'QUIT':
        this.endedHow ??= 'quit';
        this.reply(`221 2.0.0 ${this.config.hostname} Bye`);
        return this.close();
      case 'VRFY':
        if (arg.trim() === '') return this.error('501 5.5.4 Syntax: VRFY address');
        return this.reply('252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery');
      case 'EXPN':
        return this.error('502 5.5.1 Error: EXPN not available');
      case 'HELP':
        return this.reply('214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS; see RFC 5321');
      case 'STARTTLS':
        return this.startTls(arg);
      case 'AUTH':
        return this.auth(arg);
      case 'BDAT':
        return this.error('502 5.5.1 Error: command not implemented');
    }
  }

  private async helo(verb: 'HELO' | 'EHLO', arg: string): Promise<void> {
    const parsed = parseHeloArg(arg);
    if (!parsed.ok) return this.error(`501 5.5.4 ${parsed.text}`);
    this.resetTransaction();
    const decision = await this.policy.helo(parsed.name);
    if (decision.kind === 'reply') return this.error(decision.reply);
    this.info.helo = parsed.name;
    this.info.esmtp = verb === 'EHLO';
    if (verb === 'HELO') return this.reply(`250 ${this.config.hostname}`);
    const lines = [this.config.hostname, 'PIPELINING', `SIZE ${this.config.limits.max_message_size}`];
    if (this.deps.tls && !this.info.tls) lines.push('STARTTLS');
    if (await this.authOffered()) lines.push('AUTH PLAIN LOGIN');
    lines.push('ENHANCEDSTATUSCODES', '8BITMIME', 'DSN', 'SMTPUTF8');
    this.reply(multiline(250, lines));
  }

  private async mail(arg: string): Promise<void> {
    if (this.healthCheck) return this.error('550 5.7.1 Error: a proxy health check connection (PROXY LOCAL) may not send mail');
    if (this.tx) return this.error('503 5.5.1 Error: nested MAIL command');
    if (this.info.helo === undefined && this.config.helo.required) return this.error('503 5.5.1 Error: send HELO/EHLO first');
    // A submission listener takes mail from our users only (RFC 4954 6, RFC 6409 4.3).
    const submission = isSubmission(this.info);
    if (submission && this.info.authUser === undefined) return this.error('530 5.7.0 Authentication required');
    const parsed = parsePath(arg, 'FROM');
    if (!parsed.ok) return this.error(`${parsed.code} ${parsed.enhanced} ${parsed.text}`);
    const { address, params } = parsed;
    if (submission && !senderAllowed(this.config.submission.senders, this.info.authUser as string, address)) {
      this.log.info({ check: 'submission_sender', user: this.info.authUser, from: address.address, setting: 'submission.senders' }, 'sender address not owned by the user');
      return this.error(`553 5.7.1 Sender address <${address.address}> not owned by user ${this.info.authUser as string}`);
    }
    for (const [key, value] of Object.entries(params)) {
      if (key === 'SIZE') {
        if (value === true || !/^\d{1,15}$/.test(value)) return this.error('501 5.5.4 Bad SIZE parameter');
        if (Number(value) > this.config.limits.max_message_size) return this.error('552 5.3.4 Message size exceeds fixed maximum message size');
      } else if (key === 'BODY') {
        if (value !== '7BIT' && value !== '8BITMIME' && value !== '7bit' && value !== '8bitmime') return this.error('501 5.5.4 Unsupported BODY parameter');
      } else if (key === 'SMTPUTF8') {
        if (value !== true) return this.error('501 5.5.4 SMTPUTF8 takes no value');
      } else if (key === 'RET') {
        if (parseRet(value) === undefined) return this.error('501 5.5.4 Bad RET parameter syntax');
      } else if (key === 'ENVID') {
        if (parseEnvid(value) === undefined) return this.error('501 5.5.4 Bad ENVID parameter syntax');
      } else if (key === 'AUTH') {
        // RFC 4954 5: the submitter's identity as another server saw it; we trust our own AUTH only.
        if (value === true) return this.error('501 5.5.4 AUTH= needs a value');
      } else {
        return this.error(`555 5.5.4 Unsupported option: ${key}`);
      }
      if (!this.info.esmtp) return this.error('555 5.5.4 Parameters need EHLO');
    }
    if (address.utf8 && params.SMTPUTF8 !== true) return this.error('553 5.6.7 Address needs SMTPUTF8');
    const decision = await this.policy.mail(address, params);
    if (decision.kind === 'reply') return this.error(decision.reply);
    this.tx = { mailFrom: address, params, rcpts: [], policy: decision.tx, auth: decision.tx.auth };
    this.reply('250 2.1.0 Ok');
  }

  private async rcpt(arg: string): Promise<void> {
    const tx = this.tx;
    if (!tx) return this.error('503 5.5.1 Error: need MAIL command');
    const parsed = parsePath(arg, 'TO');
    if (!parsed.ok) return this.error(`${parsed.code} ${parsed.enhanced} ${parsed.text}`);
    const dsnParams = parseRcptParams(parsed.params, tx.params.SMTPUTF8 === true);
    if (!dsnParams.ok) return this.error(dsnParams.reply);
    if (Object.keys(parsed.params).length > 0 && !this.info.esmtp) return this.error('555 5.5.4 Parameters need EHLO');
    let rcpt = parsed.address;
    if (rcpt.domain === '') {
      // A bare <postmaster> is ours (RFC 5321 4.5.1).
      const domain = this.config.local_domains[0] ?? this.config.hostname;
      rcpt = { ...rcpt, address: `postmaster@${domain}`, domain };
    }
    if (rcpt.utf8 && tx.params.SMTPUTF8 !== true) return this.error('553 5.6.7 Address needs SMTPUTF8');
    const decision = await this.policy.rcpt(tx.policy, tx, rcpt);
    if (decision.kind === 'reply') {
      if (decision.close) {
        // smtpd's deny: the refusal, then 421 and the end of the session; pipelined input is dropped.
        this.endedHow ??= 'refused';
        this.reply(decision.reply);
        this.reply(`421 4.7.0 ${this.config.hostname} Service not available, closing transmission channel`);
        this.buf = Buffer.alloc(0);
        return this.close();
      }
      return this.error(decision.reply);
    }
    if (!tx.rcpts.some((r) => r.address === rcpt.address)) {
      tx.rcpts.push(rcpt);
      if (dsnParams.dsn) (tx.rcptDsn ??= {})[rcpt.address] = dsnParams.dsn;
    }
    tx.policy.trace.rcpt(rcpt.address);
    this.info.rcptCount++;
    this.reply('250 2.1.5 Ok');
  }

  private data(arg: string): Promise<void> | void {
    const tx = this.tx;
    if (arg !== '') return this.error('501 5.5.4 Syntax: DATA');
    if (!tx) return this.error('503 5.5.1 Error: need MAIL command');
    if (tx.rcpts.length === 0) return this.error('554 5.5.1 Error: no valid recipients');
    const deferred = this.policy.dataCommand(tx.policy);
    if (deferred.kind === 'reply') {
      this.tx = undefined; // the transaction ends with its refusal (RFC 5321 3.3: a new MAIL follows)
      return this.error(deferred.reply);
    }
    if (tx.params.SMTPUTF8 === true) tx.headerScan = new HeaderScan();
    const id = newQueueId();
    // RFC 3848: ESMTPS with TLS, ESMTPA / ESMTPSA after AUTH; RFC 6531 3.7.3: UTF8SMTP, UTF8SMTPS,
    // UTF8SMTPA, UTF8SMTPSA for SMTPUTF8 (which needs EHLO, so it implies ESMTP).
    const protocol = (tx.params.SMTPUTF8 ? 'UTF8SMTP' : this.info.esmtp ? 'ESMTP' : 'SMTP') + (this.info.tls ? 'S' : '') + (this.info.authUser !== undefined && this.info.esmtp ? 'A' : '');
    const received = receivedHeader({
      helo: this.info.helo,
      ip: this.info.remoteIp,
      hostname: this.config.hostname,
      protocol,
      id,
      rcpts: tx.rcpts.map((r) => r.address),
      date: new Date(),
    });
    const prefix = Buffer.from(received);
    this.writer = this.deps.spool.begin(id, prefix);
    tx.headerScan?.feed([prefix]); // a UTF-8 HELO name makes our own header UTF-8
    tx.headerBlock = new HeaderBlockReader();
    tx.headerBlock.feed([prefix]);
    tx.prefixLines = received.split('\n').length - 1;
    tx.prefixLength = prefix.length;
    this.decoder = new DataDecoder({
      normalize: this.config.smtp.bare_lf === 'normalize',
      maxLineLength: this.config.limits.max_line_length,
      maxSize: this.config.limits.max_message_size,
    });
    this.mode = 'data';
    this.socket.setTimeout(this.config.limits.data_timeout);
    this.reply('354 End data with <CR><LF>.<CR><LF>');
    return undefined;
  }

  /** Feeds buffered input to the DATA decoder; returns a promise while the spool needs time. */
  private feedData(): Promise<void> | undefined {
    const decoder = this.decoder as DataDecoder;
    const writer = this.writer as MessageWriter;
    const end = decoder.feed(this.buf);
    const decoded = decoder.take();
    let wait: Promise<void> | undefined;
    if (!decoder.failed && decoded.length > 0) {
      wait = writer.add(decoded);
      if (this.tx?.headerScan && !this.tx.headerScan.done) this.tx.headerScan.feed(decoded);
      if (this.tx?.headerBlock && !this.tx.headerBlock.done) this.tx.headerBlock.feed(decoded);
    }
    if (end === -1) {
      this.buf = Buffer.alloc(0);
      return wait;
    }
    this.buf = this.buf.subarray(end);
    this.mode = 'command';
    // The final dot made the DATA deadline; the time we now take to judge and store the message is ours.
    this.clearDeadline();
    this.socket.setTimeout(this.config.limits.command_timeout);
    // The whole message is in: it is no longer the session's to drop if the client goes away
    // now (it is committed and queued, as Postfix does after END-OF-MESSAGE).
    const tx = this.tx as Transaction;
    this.decoder = undefined;
    this.writer = undefined;
    this.tx = undefined;
    return (wait ?? Promise.resolve()).then(() => this.endOfData(tx, decoder, writer));
  }

  private async endOfData(tx: Transaction, decoder: DataDecoder, writer: MessageWriter): Promise<void> {
    this.replyPhase = 'data_end';
    const refused = dataProblemReply(decoder, this.config);
    if (refused) {
      this.log.info({ id: writer.id, check: 'data', reply: refused, from: tx.mailFrom.address }, 'message refused');
      await writer.abort();
      return this.finishTransaction(tx, writer.id, refused);
    }
    const header = tx.headerBlock as HeaderBlockReader;
    const message: MessageView = {
      id: writer.id,
      size: writer.length,
      lines: decoder.lines + (tx.prefixLines ?? 0),
      // Parsed only when something reads them (a DATA check, an incoming X-Spam-* field to cut).
      get headers() {
        return header.result().fields;
      },
      get headersTruncated() {
        return header.result().truncated;
      },
      get bodyOffset() {
        return header.result().bodyOffset;
      },
      mayHaveField: (prefix) => header.mayHave(prefix),
      read: (start) => writer.read(start),
    };
    const decision = await this.policy.data(tx.policy, tx, message);
    this.messageId = messageIdOf(message.headers);
    if (this.closed) {
      // The client went away (or its deadline ran out) while the DATA checks ran or the throttle
      // held the reply: nothing was acknowledged, and a queued copy would arrive twice once it
      // retries. The message is dropped, as a refusal would be.
      await writer.abort();
      tx.policy.trace.end();
      this.log.info({ id: writer.id, from: tx.mailFrom.address }, 'client gone before the reply to its message: not queued');
      return;
    }
    if (decision.kind === 'reply') {
      await writer.abort();
      return this.finishTransaction(tx, writer.id, decision.reply);
    }
    if (decision.kind === 'discard') {
      await writer.abort();
      return this.finishTransaction(tx, writer.id, `250 2.0.0 Ok: queued as ${writer.id}`, 'discarded');
    }
    const envelope: Envelope = {
      id: writer.id,
      mailFrom: tx.mailFrom.address,
      rcpts: tx.rcpts.map((r) => r.address),
      receivedAt: Date.now(),
      client: { ip: this.info.remoteIp, helo: this.info.helo, tls: this.info.tls },
      eightBit: typeof tx.params.BODY === 'string' && tx.params.BODY.toUpperCase() === '8BITMIME' ? true : undefined,
      // Only a UTF-8 address or header needs SMTPUTF8 downstream (RFC 6531 3.2); an all-ASCII
      // message that merely declared it goes to a downstream without SMTPUTF8 as it is.
      smtputf8: tx.params.SMTPUTF8 === true && (tx.mailFrom.utf8 || tx.rcpts.some((r) => r.utf8) || tx.headerScan?.eightBit === true) ? true : undefined,
      dsn: messageDsnOf(tx.params),
      rcptDsn: tx.rcptDsn,
      addHeaders: decision.headers.length > 0 ? decision.headers : undefined,
      addHeadersAt: decision.headers.length > 0 ? tx.prefixLength : undefined,
      cut: decision.cut.length > 0 ? decision.cut : undefined,
      score: decision.score || undefined,
      dkim: this.dkimDomainOf(message),
    };
    let committed: CommittedMessage;
    try {
      committed = await writer.commit(envelope);
    } catch (err) {
      await writer.abort().catch(() => undefined);
      if (isStorageFull(err)) {
        this.log.error({ id: writer.id, err: (err as Error).message }, 'spool write failed: file system full');
        return this.finishTransaction(tx, writer.id, '452 4.3.1 Insufficient system storage');
      }
      this.log.error({ id: writer.id, err }, 'spool write failed');
      return this.finishTransaction(tx, writer.id, '451 4.3.0 Error: queue file write error');
    }
    // The transaction's one line (src/policy/trace.ts) says it was queued: outcome accepted, its size.
    this.deps.enqueue(committed);
    await this.policy.accepted(tx.policy, committed.size); // counted before the 250: the client's next MAIL sees it
    this.finishTransaction(tx, writer.id, `250 2.0.0 Ok: queued as ${writer.id}`, undefined, committed.size);
  }

  /**
   * Our user's mail (an authenticated client, or a relay client) with one From: in a dkim.sign
   * domain: that domain, to sign with when it is delivered. Mail from anyone else is not ours to vouch for.
   */
  private dkimDomainOf(message: MessageView): string | undefined {
    const sign = this.config.dkim.sign;
    if (sign.length === 0) return undefined;
    if (this.info.authUser === undefined && !addressListOf(this.config.relay.forward_from_ip).has(this.info.remoteIp)) return undefined;
    const from = headerValues(message.headers, 'from');
    if (from.length !== 1) return undefined; // RFC 5322: exactly one From
    const domain = signingDomainFor(fromDomain(from[0] as string), sign.map((s) => s.domain));
    // A user on a submission listener gets a signature only for a From: it may send as (submission.senders).
    if (domain !== undefined && isSubmission(this.info) && this.info.authUser !== undefined) {
      const addr = fromAddress(from[0] as string);
      const mailbox = addr === undefined ? 'none' : parseMailbox(addr);
      if (typeof mailbox === 'string' || !senderAllowed(this.config.submission.senders, this.info.authUser, mailbox)) return undefined;
    }
    return domain;
  }

  private finishTransaction(tx: Transaction, id: string, reply: string, outcome?: TraceOutcome, size?: number): void {
    tx.policy.trace.end(reply, id, outcome, size);
    this.reply(reply);
    if (this.shuttingDown) this.sayGoodbye();
  }

  /** May this client authenticate over this connection (TLS, or listed in auth.plaintext_from)? */
  private authSecured(): boolean {
    return this.info.tls || !this.config.auth.require_tls || addressListOf(this.config.auth.plaintext_from).has(this.info.remoteIp);
  }

  /** Whether EHLO lists AUTH: enabled, secured, and not hidden from a recent POP user (relay.hide_auth). */
  private async authOffered(): Promise<boolean> {
    if (!this.config.auth.enabled || !this.deps.authenticator || this.info.authUser !== undefined || !this.authSecured()) return false;
    // On a submission listener AUTH is the only way to send: never hidden.
    return isSubmission(this.info) || !(await this.policy.hideAuth());
  }

  private async auth(arg: string): Promise<void> {
    if (!this.config.auth.enabled || !this.deps.authenticator) return this.error('502 5.5.1 Error: authentication not enabled');
    if (!this.info.esmtp) return this.error('503 5.5.1 Error: send EHLO first');
    if (this.info.authUser !== undefined) return this.error('503 5.5.1 Error: already authenticated');
    if (this.tx) return this.error('503 5.5.1 Error: AUTH not allowed in a mail transaction');
    if (!this.authSecured()) return this.error('538 5.7.11 Encryption required for requested authentication mechanism');
    const decision = await this.policy.auth('start');
    if (decision.kind === 'reply') return this.error(decision.reply);
    return this.authStep(saslStart(arg));
  }

  /** Advances an AUTH exchange: a challenge, credentials to check, or an error. */
  private async authStep(step: SaslStep): Promise<void> {
    if (step.kind === 'error') return this.error(step.reply);
    if (step.kind === 'challenge') {
      this.sasl = step.state;
      return this.reply(`334 ${step.text}`);
    }
    // The policy counts the attempt before the password is checked (src/policy/checks/auth_failures.ts).
    const counted = await this.policy.auth('attempt');
    if (counted.kind === 'reply') return this.error(counted.reply);
    const authenticator = this.deps.authenticator as Authenticator;
    let ok: boolean;
    try {
      ok = await authenticator.verify(step.user, step.password, { ip: this.info.remoteIp, localIp: this.info.localIp, secured: this.authSecured() });
    } catch (err) {
      if (err instanceof HashRefusedError) {
        this.log.warn({ check: 'auth', user: err.user, err: err.message }, 'password hash refused');
        ok = false;
      } else {
        await this.policy.auth('unchecked');
        if (err instanceof AuthBusyError) {
          this.log.warn({ check: 'auth', running: err.limit, setting: 'auth.max_concurrent_checks' }, 'AUTH refused: too many password checks at once');
        } else {
          this.log.warn({ check: 'auth', err: (err as Error).message }, 'AUTH backend unavailable');
        }
        return this.error('454 4.7.0 Temporary authentication failure');
      }
    }
    if (ok) {
      await this.policy.auth('ok');
      this.info.authUser = step.user;
      this.log.info({ check: 'auth', user: step.user }, 'authenticated');
      return this.reply('235 2.7.0 Authentication successful');
    }
    await this.policy.auth('failed');
    return this.error('535 5.7.8 Authentication credentials invalid');
  }

  private startTls(arg: string): Promise<void> | void {
    const context = this.deps.tls;
    if (!context) return this.error('502 5.5.1 Error: command not implemented');
    if (this.info.tls) return this.error('503 5.5.1 Error: TLS already active');
    if (arg !== '') return this.error('501 5.5.4 Syntax: STARTTLS');
    // Anything the client pipelined after STARTTLS was sent in the clear: throw it away
    // (CVE-2011-0411, the STARTTLS command injection).
    this.buf = Buffer.alloc(0);
    const raw = this.socket;
    this.detach(raw);
    raw.pause();
    this.reply('220 2.0.0 Ready to start TLS');
    const data = this.out.join('');
    this.out = [];
    return new Promise<void>((resolve) => {
      raw.write(data, () => {
        const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: context });
        this.socket = secure;
        this.attach(secure);
        secure.once('secure', () => {
          // RFC 3207: forget everything learned before the handshake.
          this.info.tls = true;
          this.info.helo = undefined;
          this.policy.forgetHelo();
          this.info.esmtp = false;
          this.info.authUser = undefined;
          this.resetTransaction();
          this.log.info({ protocol: secure.getProtocol(), cipher: secure.getCipher().name }, 'TLS established');
          resolve();
        });
        secure.once('close', () => resolve());
      });
    });
  }

  // --- helpers -------------------------------------------------------------------------

  /** A protocol finding for the policy (PolicySession.finding); true when it ended the session. */
  private protocolFinding(name: 'non_smtp_command' | 'bare_pipelining', detail: string): boolean {
    const decision = this.policy.finding(name, detail, this.tx?.policy);
    if (decision.kind !== 'reply') return false;
    this.endedHow ??= 'refused';
    this.reply(decision.reply);
    this.buf = Buffer.alloc(0); // what else it sent is not read
    if (this.mode === 'data') this.dropMessage();
    this.close();
    return true;
  }

  private get closed(): boolean {
    return this.mode === 'closed';
  }

  /**
   * Holds this session's next reply back as long as the policy asked (the tarpit). The replies
   * already due go out first; other sessions are not held up.
   */
  private async hold(result: Pick<PhaseResult, 'delayMs'>): Promise<void> {
    if (result.delayMs <= 0 || this.closed) return;
    this.flush();
    await new Promise((r) => setTimeout(r, result.delayMs));
  }

  private resetTransaction(): void {
    this.tx?.policy.trace.end();
    this.tx = undefined;
  }

  private close(): void {
    if (this.mode === 'closed') return;
    this.tx?.policy.trace.end(); // QUIT, a timeout, 421: a transaction still open ends here
    this.mode = 'closed';
    this.clearDeadline();
    this.ended();
    this.flush();
    this.socket.end();
    // A client that never closes its side is cut off.
    this.closeTimer = setTimeout(() => this.socket.destroy(), 5000);
    this.closeTimer.unref();
  }

  private ended(): void {
    if (!this.endCounted) {
      this.endCounted = true;
      metrics.session(this.endedHow ?? 'disconnect');
    }
    const f = this.onEnded;
    this.onEnded = undefined;
    f?.();
  }

  // --- deadlines (issue 9) ---------------------------------------------------------------
  // The socket's idle timeout (limits.command_timeout, data_timeout) restarts with every octet;
  // a deadline does not: a client has limits.command_deadline from our reply to the end of its
  // next command line, and limits.data_deadline from 354 to the final dot (plus what
  // limits.data_min_rate allows for the octets it sent), the stress_* ones in stress mode.
  // Time the server itself spends on a command is not counted.

  /** Starts the deadline of what we now wait for, unless it is already running. */
  private armDeadline(): void {
    const mode = this.mode;
    if (mode !== 'command' && mode !== 'data') return this.clearDeadline();
    if (this.pumping || this.deadline?.mode === mode) return;
    this.clearDeadline();
    if (mode === 'data') this.dataOctets = 0;
    this.deadline = { mode, since: Date.now(), timer: undefined };
    this.recheckDeadline();
  }

  private clearDeadline(): void {
    if (this.deadline?.timer) clearTimeout(this.deadline.timer);
    this.deadline = undefined;
  }

  /** The running deadline against the limits in force now (the server calls it when stress mode begins). */
  recheckDeadline(): void {
    const d = this.deadline;
    if (!d) return;
    if (d.timer) clearTimeout(d.timer);
    const limits = this.config.limits;
    const stressed = this.deps.stressed?.() === true;
    let limit: number;
    if (d.mode === 'command') limit = stressed ? limits.stress_command_deadline : limits.command_deadline;
    else {
      limit = stressed ? limits.stress_data_deadline : limits.data_deadline;
      if (limits.data_min_rate > 0) limit += Math.floor((this.dataOctets * 1000) / limits.data_min_rate);
    }
    const left = d.since + limit - Date.now();
    if (left <= 0) return this.deadlineExceeded(stressed);
    d.timer = setTimeout(() => this.recheckDeadline(), left);
    d.timer.unref();
  }

  private deadlineExceeded(stressed: boolean): void {
    const d = this.deadline;
    this.clearDeadline();
    if (!d || this.closed) return;
    this.endedHow ??= 'deadline';
    const setting = `limits.${stressed ? 'stress_' : ''}${d.mode}_deadline`;
    this.log.info({ mode: d.mode, check: 'deadline', setting, seconds: Math.round((Date.now() - d.since) / 1000), octets: d.mode === 'data' ? this.dataOctets : undefined }, 'deadline exceeded');
    this.reply(`421 4.4.2 ${this.config.hostname} Error: timeout exceeded`);
    this.close();
  }

  private readonly onTimeout = (): void => {
    this.endedHow ??= 'timeout';
    this.log.info({ mode: this.mode }, 'timeout');
    this.reply(`421 4.4.2 ${this.config.hostname} Error: timeout exceeded`);
    this.close();
  };

  private readonly onError = (err: Error): void => {
    this.log.debug({ err: err.message }, 'socket error');
  };

  private readonly onClose = (): void => {
    if (this.closeTimer) clearTimeout(this.closeTimer);
    this.clearDeadline();
    this.ended();
    this.mode = 'closed';
    this.dropMessage();
    this.log.info({ lostData: this.lostData || undefined }, 'disconnect');
    this.onClosed();
  };
}

/**
 * May `user`, authenticated on a submission listener, send as `from` (submission.senders,
 * Postfix's reject_sender_login_mismatch)? A listed user: one of its addresses or *@domain
 * entries (case-insensitive). A user not listed: only the address that is its login name. The
 * null sender (bounces, read receipts) is always allowed.
 */
export function senderAllowed(senders: Readonly<Record<string, readonly string[]>>, user: string, from: Address): boolean {
  if (from.address === '') return true;
  const domain = asciiDomain(from.domain);
  const address = `${from.local.toLowerCase()}@${domain}`;
  const own = Object.hasOwn(senders, user) ? senders[user] : undefined;
  if (own === undefined) return user.toLowerCase() === address || user.toLowerCase() === from.address.toLowerCase();
  return own.some((p) => p === address || p === `*@${domain}`);
}

/** The reply for a message the decoder found broken, or undefined when it is fine. */
function dataProblemReply(decoder: DataDecoder, config: Config): string | undefined {
  const p = decoder.problems;
  if (p.tooBig) return '552 5.3.4 Error: message size exceeds fixed maximum message size';
  if (config.smtp.bare_lf === 'reject') {
    if (p.bareLf) return '550 5.5.2 Error: bare <LF> received';
    if (p.bareCr) return '550 5.5.2 Error: bare <CR> received';
    if (p.nul) return '550 5.6.0 Error: NUL character in message';
  }
  if (p.longLine) return `550 5.6.0 Error: message line longer than ${config.limits.max_line_length} octets`;
  return undefined;
}

/** The Message-ID field's value for the log: unfolded, at most 250 characters (the log escapes the rest). */
function messageIdOf(headers: MessageView['headers']): string | undefined {
  const v = headerValues(headers, 'message-id')[0];
  if (v === undefined) return undefined;
  const id = v.replace(/\s+/g, ' ').trim();
  return id.length > 250 ? `${id.slice(0, 250)}…` : id;
}
