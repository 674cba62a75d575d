// The policy without an SMTP session (issue 14): `mxguard explain` and the Postfix policy
// service give the facts of a client (address, HELO, sender, recipients, AUTH user, maybe a
// message) and get, phase by phase, what the checks said and the reply a client would get. The
// same PolicySession the SMTP engine uses does the work (delayed refusals, waivers, scoring);
// here nothing waits: the delays the checks ask for (the tarpit, the greet delay) are reported
// with each step, for the caller to wait or to show.
import type { Address, PathParams } from '../mail/address.ts';
import { parseMailbox } from '../mail/address.ts';
import { parseHeaderBlock, type ParsedHeaders } from '../mail/header-block.ts';
import type { Config } from '../config/schema.ts';
import type { Store } from '../store/store.ts';
import type { DnsResolver } from '../dns/resolver.ts';
import type { Logger } from '../util/log.ts';
import type { AnyCheck } from './check.ts';
import type { DataContext, MessageView, PhaseContexts, SessionInfo, TransactionInfo } from './context.ts';
import { PolicyEngine, type PhaseResult } from './engine.ts';
import { PolicySession, type PolicyTx } from './session.ts';
import type { TraceEntry, TransactionTrace } from './trace.ts';
import type { Phase } from './verdict.ts';
import { mergeTests, spamHeaders } from './scoring.ts';

/** What is known of the client. */
export interface OfflineClient {
  readonly ip: string;
  /** Session ID for the log lines (the policy service: Postfix's instance). */
  readonly sid?: string;
  readonly port?: number;
  /** Its host name as the front end found it (Postfix's client_name); null: it has none. */
  readonly clientName?: string | null;
  readonly tls?: boolean;
}

export interface OfflineOptions {
  readonly config: Config;
  /** The checks (buildChecks), built once and shared by every offline session. */
  readonly checks: readonly AnyCheck[];
  readonly log: Logger;
  readonly store?: Store;
  readonly dns?: DnsResolver;
  /** Judge the greet delay (explain); the Postfix policy service has no banner of its own. */
  readonly greet?: boolean;
  /** Each transaction's trace when it ends. */
  readonly onTrace?: (t: TransactionTrace) => void;
}

/** One step of the dialogue: the command, the checks that ran for it, the delay asked and the reply. */
export interface OfflineStep {
  readonly phase: Phase | 'data_command';
  /** The HELO name, the sender, the recipient. */
  readonly arg?: string;
  readonly checks: readonly TraceEntry[];
  /** How long the reply would be held back (tarpit, greet delay, rate limits): not waited here. */
  readonly delayMs: number;
  /** The reply a client would get. */
  readonly reply: string;
  /** A refusal (4xx or 5xx). */
  readonly refused: boolean;
  /** The server would close the connection after this reply. */
  readonly close?: true;
  /**
   * The reply is the dialogue's own (bad sequence, address syntax, no valid recipients), not a
   * check's verdict: a front end that ran its own SMTP (the Postfix policy service) ignores it.
   */
  readonly protocol?: true;
}

/** The end of DATA: its step, and the score, the headers added and whether the message is dropped. */
export interface OfflineDataStep extends OfflineStep {
  readonly score: number;
  readonly headers: readonly string[];
  readonly discard?: true;
}

/** A PolicyEngine that keeps each phase result it hands the session (a step's checks). */
class RecordingEngine extends PolicyEngine {
  results: PhaseResult[] = [];

  override async run<P extends Phase>(phase: P, ctx: PhaseContexts[P]): Promise<PhaseResult> {
    const r = await super.run(phase, ctx);
    this.results.push(r);
    return r;
  }

  override async runData(ctx: Omit<DataContext, 'signal'>, timeoutMs: number): Promise<PhaseResult> {
    const r = await super.runData(ctx, timeoutMs);
    this.results.push(r);
    return r;
  }

  /** The checks that ran since the last call (greet_delay, pushed late, included). */
  takeRan(): TraceEntry[] {
    const ran = this.results.flatMap((r) => r.ran);
    this.results = [];
    return ran;
  }
}

let offlineCounter = 0;

/**
 * One client's dialogue, step by step, without a socket: connect, helo, auth, mail, rcpt…,
 * dataCommand, data. Each returns the step; a step after a closing reply is not run.
 */
export class OfflineSession {
  readonly info: SessionInfo;
  private readonly opts: OfflineOptions;
  private readonly engine: RecordingEngine;
  private readonly policy: PolicySession;
  private held = 0;
  private tx: PolicyTx | undefined;
  private txInfo: { mailFrom: Address; params: PathParams; rcpts: Address[]; auth?: PolicyTx['auth'] } | undefined;
  /** A reply closed the connection: nothing more is asked. */
  closed = false;

  constructor(client: OfflineClient, opts: OfflineOptions) {
    this.opts = opts;
    this.info = {
      sid: client.sid ?? `x${(Date.now() % 1e8).toString(36)}${(++offlineCounter).toString(36)}`,
      remoteIp: client.ip,
      remotePort: client.port ?? 0,
      localIp: '',
      localPort: 0,
      tls: client.tls ?? false,
      esmtp: false,
      earlyTalker: false,
      rcptCount: 0,
      ...(client.clientName !== undefined ? { clientHostname: client.clientName } : {}),
    };
    const c = opts.config;
    const log = opts.log.child({ sid: this.info.sid, ip: this.info.remoteIp });
    this.engine = new RecordingEngine(opts.checks, log);
    this.policy = new PolicySession(this.engine, {
      info: this.info,
      delayReject: c.smtp.delay_reject,
      log,
      hold: async (ms) => {
        this.held += Math.max(0, ms);
      },
      closed: () => this.closed,
      relay: c.relay,
      scoring: c.scoring,
      authservId: c.hostname,
      addAuthResults: c.spf !== undefined || c.dmarc !== undefined,
      relayClients: c.relay.forward_from_ip,
      ...(opts.greet ? { smtp: c.smtp } : {}),
      ...(opts.store ? { store: opts.store } : {}),
      ...(opts.dns ? { dns: opts.dns } : {}),
      onTrace: (t) => opts.onTrace?.(t),
    });
  }

  /** The step of what just ran, with the delay held since the last step. */
  private step(phase: OfflineStep['phase'], reply: string, arg?: string, close?: boolean): OfflineStep {
    const delayMs = this.held;
    this.held = 0;
    const refused = /^[45]/.test(reply);
    if (close) this.closed = true;
    return { phase, ...(arg !== undefined ? { arg } : {}), checks: this.engine.takeRan(), delayMs, reply, refused, ...(close ? { close: true as const } : {}) };
  }

  /** A step answered by the dialogue itself (syntax, sequence), no check involved. */
  private protocolStep(phase: OfflineStep['phase'], reply: string, arg?: string): OfflineStep {
    return { ...this.step(phase, reply, arg), protocol: true };
  }

  async connect(): Promise<OfflineStep> {
    const d = await this.policy.connect();
    return this.step('connect', d.kind === 'reply' ? d.reply : `220 ${this.opts.config.hostname} ${this.opts.config.smtp.banner}`, undefined, d.kind === 'reply' && d.close);
  }

  async helo(name: string, esmtp = true): Promise<OfflineStep> {
    const d = await this.policy.helo(name);
    if (d.kind === 'continue') {
      this.info.helo = name;
      this.info.esmtp = esmtp;
    }
    return this.step('helo', d.kind === 'reply' ? d.reply : `250 ${this.opts.config.hostname}`, name);
  }

  /** AUTH as `user`, taken as a good password: the AUTH checks' start, attempt and ok stages. */
  async auth(user: string): Promise<OfflineStep> {
    for (const stage of ['start', 'attempt'] as const) {
      const d = await this.policy.auth(stage);
      if (d.kind === 'reply') return this.step('auth', d.reply, user);
    }
    await this.policy.auth('ok');
    this.info.authUser = user;
    return this.step('auth', '235 2.7.0 Authentication successful', user);
  }

  /** A user authenticated elsewhere (Postfix's sasl_username): no AUTH checks run. */
  authenticated(user: string): void {
    this.info.authUser = user;
  }

  /** MAIL FROM: `from` is the address, '' for the null sender. */
  async mail(from: string, params: PathParams = {}): Promise<OfflineStep> {
    const mailFrom = senderAddress(from);
    if (typeof mailFrom === 'string') return this.protocolStep('mail', `553 5.1.7 ${mailFrom}`, from);
    const d = await this.policy.mail(mailFrom, params);
    if (d.kind === 'reply') return this.step('mail', d.reply, from);
    this.tx = d.tx;
    this.txInfo = { mailFrom, params, rcpts: [], auth: d.tx.auth };
    return this.step('mail', '250 2.1.0 Ok', from);
  }

  /** Is a transaction open (MAIL accepted)? */
  get inTransaction(): boolean {
    return this.tx !== undefined;
  }

  /** Recipients accepted in the open transaction. */
  get recipients(): readonly Address[] {
    return this.txInfo?.rcpts ?? [];
  }

  async rcpt(to: string): Promise<OfflineStep> {
    const tx = this.tx;
    const info = this.txInfo;
    if (!tx || !info) return this.protocolStep('rcpt', '503 5.5.1 Error: need MAIL command', to);
    const rcpt = parseMailbox(to, true);
    if (typeof rcpt === 'string') return this.protocolStep('rcpt', `501 5.1.3 ${rcpt}`, to);
    const d = await this.policy.rcpt(tx, info, rcpt);
    if (d.kind === 'reply') return this.step('rcpt', d.reply, to, d.close);
    info.rcpts.push(rcpt);
    tx.trace.rcpt(rcpt.address);
    this.info.rcptCount++;
    return this.step('rcpt', '250 2.1.5 Ok', to);
  }

  /**
   * The headers and score the open transaction carries so far (before DATA): the checks' own
   * headers and, when the score reaches scoring.tag_at or add_headers is all, the X-Spam-* ones.
   */
  tagsSoFar(): { score: number; headers: string[] } {
    const tx = this.tx;
    if (!tx) return { score: 0, headers: [] };
    const tests = mergeTests([...tx.tests, ...[...tx.rcptTests].map(([name, score]) => ({ name, score }))]);
    const score = tests.reduce((sum, t) => sum + t.score, 0);
    return { score, headers: [...tx.headers, ...tx.rcptHeaders, ...spamHeaders(score, tests, this.opts.config.scoring)] };
  }

  /** The DATA command: a refusal a RCPT check put off until now, or 354. */
  dataCommand(): OfflineStep {
    const tx = this.tx;
    if (!tx || !this.txInfo) return this.protocolStep('data_command', '503 5.5.1 Error: need MAIL command');
    if (this.txInfo.rcpts.length === 0) return this.protocolStep('data_command', '554 5.5.1 Error: no valid recipients');
    const d = this.policy.dataCommand(tx);
    if (d.kind === 'reply') {
      this.tx = undefined;
      return this.step('data_command', d.reply);
    }
    return this.step('data_command', '354 End data with <CR><LF>.<CR><LF>');
  }

  /** The end of DATA with `stored`, the message as it would be spooled (our Received first, CRLF lines). */
  async data(stored: Buffer, id = 'EXPLAIN'): Promise<OfflineDataStep> {
    const tx = this.tx;
    const info = this.txInfo as TransactionInfo;
    if (!tx) return { ...this.protocolStep('data', '503 5.5.1 Error: need MAIL command'), score: 0, headers: [] };
    let parsed: ParsedHeaders | undefined;
    const headers = (): ParsedHeaders => (parsed ??= parseHeaderBlock(stored));
    const message: MessageView = {
      id,
      size: stored.length,
      lines: countLines(stored),
      get headers() {
        return headers().fields;
      },
      get headersTruncated() {
        return headers().truncated;
      },
      get bodyOffset() {
        return headers().bodyOffset;
      },
      mayHaveField: (prefix) => headers().fields.some((f) => f.key.startsWith(prefix)),
      read: (start = 0) => oneChunk(stored.subarray(start)),
    };
    const d = await this.policy.data(tx, info, message);
    this.tx = undefined;
    if (d.kind === 'reply') {
      tx.trace.end(d.reply, id);
      return { ...this.step('data', d.reply), score: 0, headers: [] };
    }
    if (d.kind === 'discard') {
      tx.trace.end(`250 2.0.0 Ok: queued as ${id}`, id, 'discarded');
      return { ...this.step('data', `250 2.0.0 Ok: queued as ${id}`), score: 0, headers: [], discard: true };
    }
    return { ...this.step('data', `250 2.0.0 Ok: queued as ${id}`), score: d.score, headers: d.headers };
  }

  /**
   * The open transaction is over. `accepted`: the message was queued (`size` octets), and the
   * checks that count messages and bytes count it; else what they counted at MAIL is taken back.
   */
  async end(accepted?: { size: number; reply?: string; id?: string }): Promise<void> {
    const tx = this.tx;
    this.tx = undefined;
    if (!tx) return;
    if (accepted) {
      await this.policy.accepted(tx, accepted.size);
      tx.trace.end(accepted.reply ?? '250 2.0.0 Ok', accepted.id, 'accepted', accepted.size);
    } else tx.trace.end();
  }
}

/** The sender as MAIL FROM gives it: '' and <> are the null sender. */
export function senderAddress(from: string): Address | string {
  const bare = from.replace(/^<(.*)>$/, '$1');
  if (bare === '') return { address: '', local: '', domain: '', utf8: false };
  return parseMailbox(bare);
}

function countLines(b: Buffer): number {
  let n = 0;
  for (let i = b.indexOf(10); i !== -1; i = b.indexOf(10, i + 1)) n++;
  return n;
}

async function* oneChunk(b: Buffer): AsyncIterable<Buffer> {
  yield b;
}
