// The policy side of one SMTP session (issue 10): one PolicySession per connection, made by the
// PolicyEngine. The SMTP session asks it for a decision per phase and only writes the reply,
// holds it back (through the `hold` it lends) and closes; the policy state of the connection
// lives here: the refusals held back until RCPT (smtp.delay_reject), the afterAuth waiver, the
// points and headers the checks tagged, the decision log lines and the transaction trace.
import type { Address, PathParams } from '../mail/address.ts';
import { isSubmission, type AuthContext, type MessageView, type SessionInfo, type TransactionInfo } from './context.ts';
import type { PolicyEngine, PhaseResult } from './engine.ts';
import { SessionTrace, type TransactionTrace, type TxTrace } from './trace.ts';
import { refusalReply, type FinalVerdict, type RefusalVerdict, type TestHit } from './verdict.ts';
import { mergeTests, scoreRefusal, spamHeaders, SPAM_HEADER_PREFIX, type ScoringSettings } from './scoring.ts';
import type { Logger } from '../util/log.ts';
import { clock } from '../util/clock.ts';
import type { Config } from '../config/schema.ts';
import type { Store } from '../store/store.ts';
import type { DnsResolver } from '../dns/resolver.ts';
import { addressListOf } from '../util/cidr.ts';
import { greetPassKey, greetPlan, type GreetFacts } from './greet.ts';
import { protocolVerdict, type ProtocolSettings } from './protocol.ts';
import type { TraceEntry } from './trace.ts';
import { authResultsHeader, authservIdOf, type AuthResults } from './auth/results.ts';
import { metrics } from '../util/metrics.ts';

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
  /** Our host name as the RFC 8601 authserv-id: incoming Authentication-Results claiming it are cut at delivery. */
  readonly authservId?: string;
  /** Write our own Authentication-Results field (an authentication check is configured: spf). */
  readonly addAuthResults?: boolean;
  /** The greet delay and the protocol findings (smtp.*); without them, no wait and no findings. */
  readonly smtp?: ProtocolSettings & Pick<Config['smtp'], 'greet_delay' | 'greet_delay_for' | 'greet_pass_ttl'>;
  /** For greet_delay_for suspicious: the forward-confirmed reverse DNS of the client (cached, shared with the rdns check). */
  readonly dns?: DnsResolver;
  /** relay.forward_from_ip: these clients never wait with greet_delay_for suspicious. */
  readonly relayClients?: readonly string[];
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
  /** A RCPT refusal to be answered to DATA (Verdict.atData), the first one found. */
  dataRefusal?: RefusalVerdict;
  /** The authentication results found so far (SPF at MAIL), for later checks and the Authentication-Results field. */
  readonly auth: AuthResults;
}

/**
 * The end of DATA: refuse, discard (250 but drop) or queue with these points, the headers to put
 * in front and the stored octet ranges (incoming header fields) to leave out at delivery.
 */
export type DataDecision = { kind: 'reply'; reply: string } | { kind: 'discard' } | { kind: 'continue'; score: number; headers: string[]; cut: [number, number][] };

const CONTINUE: PolicyDecision = { kind: 'continue' };
const AUTH_RESULTS = 'authentication-results';

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
  /** Protocol findings after the greeting (PolicySession.finding), for the open and every later transaction. */
  private sessionTags: Tags = NO_TAGS;
  private sessionRan: TraceEntry[] = [];
  private readonly found = new Set<string>();
  /** When the connection came: the greet delay counts from here, so the connect checks' lookups are part of the wait. */
  private readonly startedAt = performance.now();

  constructor(engine: PolicyEngine, opts: PolicySessionOptions) {
    this.engine = engine;
    this.opts = opts;
    this.info = opts.info;
    this.log = opts.log;
    this.trace = new SessionTrace(opts.info.sid, opts.info.remoteIp, (t) => {
      opts.onTrace(t);
      // A count made at MAIL for a message that never came (limits.rates messages) is taken back.
      if (t.outcome !== 'accepted' && engine.observes) void engine.notify({ kind: 'not_queued', session: this.info });
    });
  }

  /** Before the greeting. A refusal closes the session, unless smtp.delay_reject holds it for RCPT. */
  async connect(): Promise<PolicyDecision> {
    const facts = this.greetFacts(); // the Store and the reverse DNS asked beside the checks
    const result = await this.engine.run('connect', { session: this.info });
    await this.opts.hold(result.delayMs);
    if (this.opts.closed()) return CONTINUE;
    const final = result.final;
    // A refusal answered now needs no pregreet test; one held for RCPT does not spare the wait.
    if (!(final && (final.kind === 'reject' || final.kind === 'tempfail') && !this.opts.delayReject)) {
      await this.greet(result, facts);
      if (this.opts.closed()) return CONTINUE;
    }
    const refusal = this.refusalOf('connect', result);
    this.connectTags = { score: result.score, headers: result.headers, tests: result.tests };
    this.trace.phase('connect', result);
    if (refusal) {
      if (this.opts.delayReject) this.delayed = refusal;
      else return { kind: 'reply', reply: refusalReply(refusal), close: true };
    }
    return CONTINUE;
  }

  /**
   * What greet_delay_for suspicious asks before the banner: is it a relay client, did it pass
   * before (the Store; unreachable: not remembered, so it waits), its forward-confirmed reverse DNS.
   */
  private greetFacts(): Promise<Omit<GreetFacts, 'score'>> | undefined {
    const s = this.opts.smtp;
    if (!s || s.greet_delay <= 0 || s.greet_delay_for === 'all' || isSubmission(this.info)) return undefined;
    const ip = this.info.remoteIp;
    if (addressListOf(this.opts.relayClients ?? []).has(ip)) return Promise.resolve({ relayClient: true, remembered: false, rdns: undefined });
    const store = this.opts.store;
    const remembered =
      store && s.greet_pass_ttl > 0
        ? store.cacheGet(greetPassKey(ip)).then(
            (v) => v !== undefined,
            (err: unknown) => {
              this.log.warn({ check: 'greet_delay', err: (err as Error).message }, 'store unreachable: the client waits');
              return false;
            },
          )
        : Promise.resolve(false);
    const rdns = this.opts.dns ? this.opts.dns.forwardConfirmed(ip).then((r) => r.kind, () => 'error' as const) : Promise.resolve(undefined);
    return Promise.all([remembered, rdns]).then(([remembered, rdns]) => ({ relayClient: false, remembered, rdns }));
  }

  /**
   * smtp.greet_delay (postscreen's pregreet test): hold the banner until greet_delay after the
   * connection for the clients that must wait, then judge one that talked meanwhile
   * (smtp.early_talker) into the connect result; remember one that did not (greet_pass_ttl).
   */
  private async greet(result: PhaseResult, factsOf: ReturnType<PolicySession['greetFacts']>): Promise<void> {
    const s = this.opts.smtp;
    // Our users on a submission listener are not made to wait: early talking judges MTAs.
    if (!s || s.greet_delay <= 0 || isSubmission(this.info)) return;
    const left = (): number => s.greet_delay - (performance.now() - this.startedAt);
    let why = 'greet_delay_for: all';
    if (factsOf) {
      // Lookups slower than the delay decide nothing: by then the client has waited anyway.
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), Math.max(0, left()))));
      const facts = await Promise.race([factsOf, late]);
      clearTimeout(timer);
      const plan = facts ? greetPlan('suspicious', { ...facts, score: result.score }) : { wait: true, why: 'lookups slower than greet_delay' };
      if (!plan.wait) {
        this.log.debug({ check: 'greet_delay', why: plan.why }, 'banner at once');
        return;
      }
      why = plan.why;
    }
    await this.opts.hold(left());
    if (this.opts.closed()) return;
    result.ran.push({ phase: 'connect', check: 'greet_delay', verdict: 'continue', ms: performance.now() - this.startedAt });
    this.log.debug({ check: 'greet_delay', why }, 'client made to wait for the banner');
    const store = this.opts.store;
    if (!this.info.earlyTalker) {
      if (factsOf && store && s.greet_pass_ttl > 0) {
        store.cacheSet(greetPassKey(this.info.remoteIp), '1', s.greet_pass_ttl).catch((err: unknown) => this.log.warn({ check: 'greet_delay', err: (err as Error).message }, 'store unreachable: pregreet pass not remembered'));
      }
      return;
    }
    this.log.info({ check: 'early_talker' }, 'client talked before greeting');
    const v = protocolVerdict('early_talker', s);
    if (!v) return;
    if (v.kind === 'tag') {
      result.ran.push({ phase: 'connect', check: 'early_talker', verdict: 'tag', score: v.score, ms: 0 });
      result.score += v.score;
      result.headers.push(...(v.headers ?? []));
      result.tests.push({ name: v.check, score: v.score });
      result.tags.push(v.check);
      this.log.info({ phase: 'connect', check: v.check, score: v.score }, v.log ?? 'early talker scored');
    } else if (v.kind === 'reject' || v.kind === 'tempfail') {
      result.ran.push({ phase: 'connect', check: 'early_talker', verdict: v.kind, ms: 0, reply: refusalReply(v) });
      result.final ??= v; // a refusal found first (ban.ip) stays the one answered
    }
  }

  /**
   * A protocol finding after the greeting (src/smtp/protocol-findings.ts: commands pipelined
   * without PIPELINING, a non-SMTP command), counted once per session. With action score its
   * points and X-Spam-Warning join the open transaction, if any, and every later one (a session
   * tag from now on, as connect tags are from the start); reject ends the session (521).
   */
  finding(name: 'non_smtp_command' | 'bare_pipelining', detail: string, tx: PolicyTx | undefined): PolicyDecision {
    const s = this.opts.smtp;
    if (!s || this.found.has(name)) return CONTINUE;
    const v = protocolVerdict(name, s, detail);
    if (!v) return CONTINUE;
    this.found.add(name);
    const phase = tx ? 'mail' : this.info.helo === undefined ? 'connect' : 'helo';
    if (v.kind === 'tag') {
      const entry: TraceEntry = { phase, check: name, verdict: 'tag', score: v.score, ms: 0 };
      const tests = [{ name, score: v.score }];
      const headers = v.headers ?? [];
      this.sessionTags = { score: this.sessionTags.score + v.score, headers: [...this.sessionTags.headers, ...headers], tests: [...this.sessionTags.tests, ...tests] };
      this.sessionRan.push(entry);
      if (tx) {
        tx.score += v.score;
        tx.headers.push(...headers);
        tx.tests.push(...tests);
        tx.trace.phase({ ran: [entry] });
      }
      this.log.info({ phase, check: name, score: v.score }, v.log ?? name);
      return CONTINUE;
    }
    if (v.kind !== 'reject' && v.kind !== 'tempfail') return CONTINUE;
    const reply = refusalReply(v);
    if (tx) {
      tx.trace.phase({ ran: [{ phase, check: name, verdict: v.kind, ms: 0, reply }] });
      tx.trace.end(reply);
    }
    this.logDecision(phase, v);
    return { kind: 'reply', reply, close: true };
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
    if (this.sessionRan.length > 0) trace.phase({ ran: this.sessionRan });
    const auth: AuthResults = {};
    const result = await this.engine.run('mail', { session: this.info, mailFrom, params, auth });
    await this.opts.hold(result.delayMs);
    trace.phase(result);
    const refusal = this.refusalOf('mail', result);
    if (refusal && !this.opts.delayReject) {
      trace.end(refusalReply(refusal));
      return { kind: 'reply', reply: refusalReply(refusal) };
    }
    const score = this.connectTags.score + this.heloTags.score + this.sessionTags.score + result.score;
    const headers = [...this.connectTags.headers, ...this.heloTags.headers, ...this.sessionTags.headers, ...result.headers];
    const tests = [...this.connectTags.tests, ...this.heloTags.tests, ...this.sessionTags.tests, ...result.tests];
    return { kind: 'continue', tx: { mailFrom, trace, delayed: refusal, score, headers, tests, rcptTests: new Map(), rcptHeaders: new Set(), auth } };
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
      tx.trace.rcptRefused(rcpt.address, refusalReply(delayed), delayed.check, delayed.key);
      this.logDecision('rcpt', delayed, tx.mailFrom, rcpt);
      return { kind: 'reply', reply: refusalReply(delayed) };
    }
    let scoreSoFar = tx.score;
    for (const points of tx.rcptTests.values()) scoreSoFar += points;
    const result = await this.engine.run('rcpt', { session: this.info, tx: info, rcpt, score: scoreSoFar });
    await this.opts.hold(result.delayMs);
    tx.trace.phase(result);
    const final = result.final;
    if (final) this.logDecision('rcpt', final, tx.mailFrom, rcpt);
    if (final && (final.kind === 'reject' || final.kind === 'tempfail') && final.atData) {
      // Answered to DATA (greylisting the null sender): the recipient itself is accepted.
      tx.dataRefusal ??= final;
    } else if (final && (final.kind === 'reject' || final.kind === 'tempfail')) {
      tx.trace.rcptRefused(rcpt.address, refusalReply(final), final.check, final.key);
      // The counting checks (limits.rates bad_rcpts) hear of it; `rcpt` is the object they saw.
      await this.engine.notify({ kind: 'rcpt_refused', session: this.info, mailFrom: tx.mailFrom, rcpt, verdict: final });
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

  /** The message is in the queue (`size` octets as stored): the checks that count messages and bytes (limits.rates, throttle) count it. */
  async accepted(tx: PolicyTx, size: number): Promise<void> {
    await this.engine.notify({ kind: 'accepted', session: this.info, mailFrom: tx.mailFrom, size });
  }

  /** The DATA command, before 354: a refusal a RCPT check put off until now (atData), or go on. */
  dataCommand(tx: PolicyTx): PolicyDecision {
    const refusal = tx.dataRefusal;
    if (refusal === undefined) return CONTINUE;
    const reply = refusalReply(refusal);
    tx.trace.phase({ ran: [{ phase: 'data', check: refusal.check, verdict: refusal.kind, ms: 0, reply }] });
    tx.trace.end(reply);
    return { kind: 'reply', reply };
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
      metrics.verdict('scoring', verdict);
      this.log.info({ phase: 'data', check: 'scoring', verdict, score, setting: `scoring.${verdict}_at`, reply: refusal }, 'message refused by its score');
      return { kind: 'reply', reply: refusal };
    }
    const cut: [number, number][] = [];
    // Incoming fields that claim to be ours are forgeable: X-Spam-*, and an Authentication-Results
    // with our authserv-id (RFC 8601 5: remove them, or downstream filters trust a forgery).
    const ourId = this.opts.authservId?.toLowerCase();
    const forgedResults = ourId !== undefined && message.mayHaveField(AUTH_RESULTS);
    if (result.removeHeaders.length > 0 || message.mayHaveField(SPAM_HEADER_PREFIX) || forgedResults) {
      const remove = new Set(result.removeHeaders);
      for (const f of message.headers) {
        const ours = forgedResults && f.key === AUTH_RESULTS && authservIdOf(f.value) === ourId;
        if (ours || f.key.startsWith(SPAM_HEADER_PREFIX) || remove.has(f.key)) cut.push([f.start, f.end]);
      }
    }
    const authResults = this.opts.addAuthResults && ourId !== undefined ? [authResultsHeader(this.opts.authservId as string, tx.auth, this.info.authUser)] : [];
    return { kind: 'continue', score, headers: [...authResults, ...tx.headers, ...tx.rcptHeaders, ...result.headers, ...spamHeaders(score, tests, s)], cut };
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
