// The policy side of one SMTP session (issue 10): one PolicySession per connection, made by the
// PolicyEngine. The SMTP session asks it for a decision per phase and only writes the reply,
// holds it back (through the `hold` it lends) and closes; the policy state of the connection
// lives here: the refusals held back until RCPT (smtp.delay_reject), the afterAuth waiver, the
// points and headers the checks tagged, the decision log lines and the transaction trace.
import type { Address, PathParams } from '../mail/address.ts';
import type { AuthContext, MessageView, SessionInfo, TransactionInfo } from './context.ts';
import type { PolicyEngine, PhaseResult } from './engine.ts';
import { SessionTrace, type TransactionTrace, type TxTrace } from './trace.ts';
import { refusalReply, type FinalVerdict, type RefusalVerdict, type TestHit } from './verdict.ts';
import { mergeTests, scoreRefusal, spamHeaders, SPAM_HEADER_PREFIX, type ScoringSettings } from './scoring.ts';
import type { Logger } from '../util/log.ts';
import { clock } from '../util/clock.ts';
import type { Config } from '../config/schema.ts';
import type { Store } from '../store/store.ts';

export interface PolicySessionOptions {
  /** The connection's facts; the SMTP session keeps them current (HELO, TLS, AUTH, recipients). */
  readonly info: SessionInfo;
  /** smtp.delay_reject: refusals at connect, HELO and MAIL are answered at RCPT. */
  readonly delayReject: boolean;
  /** The session's logger (with its sid and ip). */
  readonly log: Logger;
  /** Holds the session's next reply back (the tarpit); the SMTP session flushes what is due first. */
  readonly hold: (delayMs: number) => Promise<void>;
  /** Has the connection closed (checked after the connect-phase delay)? */
  readonly closed: () => boolean;
  /** Receives each transaction's trace when it ends. */
  readonly onTrace: (t: TransactionTrace) => void;
  /** relay.hide_auth, relay.forward_user and relay.forward_window: AUTH is hidden from a recent POP user. */
  readonly relay?: Pick<Config['relay'], 'hide_auth' | 'forward_user' | 'forward_window'>;
  /** Shared policy state (the recent POP users). */
  readonly store?: Store;
  /** The transaction score's thresholds and headers, and the DATA checks' deadline (scoring.*). */
  readonly scoring: ScoringSettings & { readonly data_timeout: number };
}

/** What the SMTP session does next: go on, or answer with `reply` (and close, when `close`). */
export type PolicyDecision = { kind: 'continue' } | { kind: 'reply'; reply: string; close?: true };

/** The policy state of one transaction, from MAIL to its end. */
export interface PolicyTx {
  readonly mailFrom: Address;
  readonly trace: TxTrace;
  /** A refusal found at MAIL time, answered at RCPT (smtp.delay_reject). */
  readonly delayed: RefusalVerdict | undefined;
  /** Points, headers and tests tagged so far at connect, HELO and MAIL. */
  score: number;
  headers: string[];
  tests: TestHit[];
  /**
   * What RCPT checks tagged, over the accepted recipients: the score is per message, not per
   * recipient, so a finding counts once however many recipients it was found for (its highest points).
   */
  rcptTests: Map<string, number>;
  rcptHeaders: Set<string>;
}

/**
 * The end of DATA: refuse, discard (250 but drop) or queue with these points, the headers to put
 * in front and the stored octet ranges (incoming header fields) to leave out at delivery.
 */
export type DataDecision = { kind: 'reply'; reply: string } | { kind: 'discard' } | { kind: 'continue'; score: number; headers: string[]; cut: [number, number][] };

const CONTINUE: PolicyDecision = { kind: 'continue' };

interface Tags {
  score: number;
  headers: string[];
  tests: TestHit[];
}

const NO_TAGS: Tags = { score: 0, headers: [], tests: [] };

export class PolicySession {
  private readonly engine: PolicyEngine;
  private readonly opts: PolicySessionOptions;
  private readonly info: SessionInfo;
  private readonly log: Logger;
  private readonly trace: SessionTrace;
  /** A refusal found at connect/HELO time, answered at RCPT (smtp.delay_reject). */
  private delayed: RefusalVerdict | undefined;
  /** Score and headers that connect- and HELO-phase checks tagged (action: score), for every transaction. */
  private connectTags: Tags = NO_TAGS;
  private heloTags: Tags = NO_TAGS;

  constructor(engine: PolicyEngine, opts: PolicySessionOptions) {
    this.engine = engine;
    this.opts = opts;
    this.info = opts.info;
    this.log = opts.log;
    this.trace = new SessionTrace(opts.info.sid, opts.info.remoteIp, opts.onTrace);
  }

  /** Before the greeting. A refusal closes the session, unless smtp.delay_reject holds it for RCPT. */
  async connect(): Promise<PolicyDecision> {
    const result = await this.engine.run('connect', { session: this.info });
    await this.opts.hold(result.delayMs);
    if (this.opts.closed()) return CONTINUE;
    const refusal = this.refusalOf('connect', result);
    this.connectTags = { score: result.score, headers: result.headers, tests: result.tests };
    this.trace.phase('connect', result);
    if (refusal) {
      if (this.opts.delayReject) this.delayed = refusal;
      else return { kind: 'reply', reply: refusalReply(refusal), close: true };
    }
    return CONTINUE;
  }

  /** HELO/EHLO with a well-formed name. A refusal is the answer to it, unless smtp.delay_reject holds it for RCPT. */
  async helo(name: string): Promise<PolicyDecision> {
    const result = await this.engine.run('helo', { session: this.info, helo: name });
    await this.opts.hold(result.delayMs);
    const refusal = this.refusalOf('helo', result);
    if (refusal && !this.opts.delayReject) return { kind: 'reply', reply: refusalReply(refusal) };
    if (refusal) this.delayed ??= refusal;
    this.heloTags = { score: result.score, headers: result.headers, tests: result.tests };
    this.trace.phase('helo', result);
    return CONTINUE;
  }

  /**
   * One stage of an AUTH exchange through the `auth`-phase checks (AUTH failure throttling):
   * `start` and `attempt` may refuse (454, after the delay the check asked for); the outcome
   * stages only hold the reply back (a failed password is answered later each time).
   */
  async auth(stage: AuthContext['stage']): Promise<PolicyDecision> {
    const result = await this.engine.run('auth', { session: this.info, stage });
    await this.opts.hold(result.delayMs);
    const final = result.final;
    if (final && (final.kind === 'reject' || final.kind === 'tempfail')) {
      this.logDecision('auth', final);
      return { kind: 'reply', reply: refusalReply(final) };
    }
    return CONTINUE;
  }

  /** STARTTLS: what HELO told is forgotten (RFC 3207). */
  forgetHelo(): void {
    this.heloTags = NO_TAGS;
    this.trace.phase('helo', undefined);
  }

  /**
   * Should EHLO leave AUTH out for this client (relay.hide_auth: recentpop)? A client that read
   * its mail by POP within relay.forward_window may relay already and is not offered AUTH.
   */
  async hideAuth(): Promise<boolean> {
    const relay = this.opts.relay;
    const store = this.opts.store;
    if (!relay || !store || !relay.hide_auth.includes('recentpop') || !relay.forward_user) return false;
    try {
      const at = await store.relayerGet(this.info.remoteIp);
      return at !== undefined && clock.now() / 1000 - at <= relay.forward_window / 1000;
    } catch {
      return false; // Store unreachable: offer AUTH, which works without it.
    }
  }

  /** MAIL: a refusal, or the new transaction's policy state. */
  async mail(mailFrom: Address, params: PathParams): Promise<{ kind: 'reply'; reply: string } | { kind: 'continue'; tx: PolicyTx }> {
    const trace = this.trace.begin(mailFrom.address, this.info.helo);
    const result = await this.engine.run('mail', { session: this.info, mailFrom, params });
    await this.opts.hold(result.delayMs);
    trace.phase(result);
    const refusal = this.refusalOf('mail', result);
    if (refusal && !this.opts.delayReject) {
      trace.end(refusalReply(refusal));
      return { kind: 'reply', reply: refusalReply(refusal) };
    }
    const score = this.connectTags.score + this.heloTags.score + result.score;
    const headers = [...this.connectTags.headers, ...this.heloTags.headers, ...result.headers];
    const tests = [...this.connectTags.tests, ...this.heloTags.tests, ...result.tests];
    return { kind: 'continue', tx: { mailFrom, trace, delayed: refusal, score, headers, tests, rcptTests: new Map(), rcptHeaders: new Set() } };
  }

  /** One recipient. `close`: smtpd's deny, the SMTP session says 421 and ends. */
  async rcpt(tx: PolicyTx, info: TransactionInfo, rcpt: Address): Promise<PolicyDecision> {
    // A HELO or reverse-DNS refusal is waived for a client that has since authenticated (Postfix
    // evaluates them at RCPT, after permit_sasl_authenticated): roaming users connect from anywhere.
    // Which checks are waived is declared by each check (Waivers.afterAuth in src/policy/check.ts).
    const waived = this.delayed !== undefined && this.info.authUser !== undefined && this.engine.waivedAfterAuth(this.delayed.check);
    const sessionRefusal = waived ? undefined : this.delayed;
    const delayed = sessionRefusal ?? tx.delayed;
    if (delayed) {
      tx.trace.refused(refusalReply(delayed));
      this.logDecision('rcpt', delayed, tx.mailFrom, rcpt);
      return { kind: 'reply', reply: refusalReply(delayed) };
    }
    const result = await this.engine.run('rcpt', { session: this.info, tx: info, rcpt });
    await this.opts.hold(result.delayMs);
    tx.trace.phase(result);
    const final = result.final;
    if (final) this.logDecision('rcpt', final, tx.mailFrom, rcpt);
    if (final && (final.kind === 'reject' || final.kind === 'tempfail')) {
      if (final.closeSession) {
        tx.trace.end(refusalReply(final));
        return { kind: 'reply', reply: refusalReply(final), close: true };
      }
      return { kind: 'reply', reply: refusalReply(final) };
    }
    for (const t of result.tests) tx.rcptTests.set(t.name, Math.max(t.score, tx.rcptTests.get(t.name) ?? -Infinity));
    for (const h of result.headers) tx.rcptHeaders.add(h);
    return CONTINUE;
  }

  /**
   * The end of DATA, the message received, well-formed and in the spool (not yet committed).
   * The DATA checks judge it (src/policy/engine.ts runData, under scoring.data_timeout); then
   * the transaction score, the sum over every phase, is read against scoring.reject_at and
   * tempfail_at, and the X-Spam-* headers are written. Incoming X-Spam-* fields are forgeable
   * and left out at delivery, with any field a check asked to remove.
   */
  async data(tx: PolicyTx, info: TransactionInfo, message: MessageView): Promise<DataDecision> {
    const s = this.opts.scoring;
    const result = await this.engine.runData({ session: this.info, tx: info, message }, s.data_timeout);
    await this.opts.hold(result.delayMs);
    tx.trace.phase(result);
    const final = result.final;
    if (final) this.logDecision('data', final);
    if (final && (final.kind === 'reject' || final.kind === 'tempfail')) return { kind: 'reply', reply: refusalReply(final) };
    if (final?.kind === 'discard') return { kind: 'discard' };
    const rcptTests = [...tx.rcptTests].map(([name, points]) => ({ name, score: points }));
    const tests = mergeTests([...tx.tests, ...rcptTests, ...result.tests]);
    const score = tests.reduce((sum, t) => sum + t.score, 0);
    tx.trace.scored(score);
    // A check's accept (an Mfilter `accept`, say) is the administrator's word: the score does not refuse it.
    const refusal = final?.kind === 'accept' ? undefined : scoreRefusal(score, tests, s);
    if (refusal) {
      const verdict = refusal.startsWith('5') ? 'reject' : 'tempfail';
      tx.trace.phase({ ran: [{ phase: 'data', check: 'scoring', verdict, ms: 0, reply: refusal }] });
      this.log.info({ phase: 'data', check: 'scoring', verdict, score, setting: `scoring.${verdict}_at`, reply: refusal }, 'message refused by its score');
      return { kind: 'reply', reply: refusal };
    }
    const cut: [number, number][] = [];
    if (result.removeHeaders.length > 0 || message.mayHaveField(SPAM_HEADER_PREFIX)) {
      const remove = new Set(result.removeHeaders);
      for (const f of message.headers) if (f.key.startsWith(SPAM_HEADER_PREFIX) || remove.has(f.key)) cut.push([f.start, f.end]);
    }
    return { kind: 'continue', score, headers: [...tx.headers, ...tx.rcptHeaders, ...result.headers, ...spamHeaders(score, tests, s)], cut };
  }

  private refusalOf(phase: 'connect' | 'helo' | 'mail', result: PhaseResult): RefusalVerdict | undefined {
    const final = result.final;
    if (final) this.logDecision(phase, final);
    return final && (final.kind === 'reject' || final.kind === 'tempfail') ? final : undefined;
  }

  /** One structured line per policy decision, with the check and the setting behind it. */
  private logDecision(phase: string, v: FinalVerdict, mailFrom?: Address, rcpt?: Address): void {
    const fields: Record<string, unknown> = { phase, check: v.check, verdict: v.kind };
    if (mailFrom) fields.from = mailFrom.address;
    if (rcpt) fields.rcpt = rcpt.address;
    if (v.kind === 'reject' || v.kind === 'tempfail') {
      fields.reply = refusalReply(v);
      if (v.setting) fields.setting = v.setting;
    }
    this.log.info(fields, v.log ?? (v.kind === 'reject' || v.kind === 'tempfail' ? `Command ${phase.toUpperCase()} refused` : `${phase} ${v.kind}`));
  }
}
