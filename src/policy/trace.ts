// The trace of a transaction (issue 10): each check that ran, its verdict, points and time, the
// final reply and the outcome. The session logs it as one `transaction` line when the transaction
// ends and hands the structured record to a sink (the App keeps the latest in memory for the
// explain command, the history API and the dashboard).
import type { PhaseResult } from './engine.ts';
import type { Phase, Verdict } from './verdict.ts';

/** One check that ran, as the engine saw it. */
export interface TraceEntry {
  readonly phase: Phase;
  readonly check: string;
  readonly verdict: Verdict['kind'];
  /** Points a tag added. */
  readonly score?: number;
  /** Time the check took, in milliseconds. */
  readonly ms: number;
  /** The reply a refusal (reject, tempfail) asked for. */
  readonly reply?: string;
}

/** A recipient the policy refused (RCPT answered 4xx or 5xx): greylisted ones are among them. */
export interface RefusedRcpt {
  readonly rcpt: string;
  readonly reply: string;
  /** The check whose verdict it was (greylist, relay, ban_rcptto…). */
  readonly check: string;
  /** The store record the refusal was about (greylisting's key: by_domain and spf_domain key on more than the client). */
  readonly key?: string;
}

/** accepted (250 at end of DATA), refused (5xx), tempfailed (4xx), discarded, aborted (RSET, QUIT, disconnect, a new HELO). */
export type TraceOutcome = 'accepted' | 'refused' | 'tempfailed' | 'discarded' | 'aborted';

export interface TransactionTrace {
  readonly sid: string;
  readonly ip: string;
  readonly helo?: string;
  readonly mailFrom: string;
  /** Recipients accepted. */
  readonly rcpts: readonly string[];
  /** Recipients refused, in the order they came (always set by TxTrace; optional for records made by hand). */
  readonly refused?: readonly RefusedRcpt[];
  /** The queue ID, once DATA gave the message one. */
  readonly id?: string;
  /** Octets queued (accepted messages). */
  readonly size?: number;
  /** When MAIL was received (ms since the epoch). */
  readonly startedAt: number;
  /** The connect and HELO checks of the session, then the transaction's own, in the order they ran. */
  readonly entries: readonly TraceEntry[];
  /** The transaction score (src/policy/scoring.ts) once DATA was judged; before, the points of every tag in entries. */
  readonly score: number;
  /** The final reply: to DATA, or the last refusal of a transaction that ended without one. */
  readonly reply?: string;
  readonly outcome: TraceOutcome;
}

/** A session's side of the trace: the connect and HELO checks, copied into each transaction it begins. */
export class SessionTrace {
  private connect: readonly TraceEntry[] = [];
  private helo: readonly TraceEntry[] = [];
  private readonly sid: string;
  private readonly ip: string;
  private readonly emit: (t: TransactionTrace) => void;

  constructor(sid: string, ip: string, emit: (t: TransactionTrace) => void) {
    this.sid = sid;
    this.ip = ip;
    this.emit = emit;
  }

  /** The connect- or HELO-phase checks (a new HELO, or STARTTLS with `undefined`, replaces the HELO ones). */
  phase(phase: 'connect' | 'helo', result: Pick<PhaseResult, 'ran'> | undefined): void {
    this[phase] = result?.ran ?? [];
  }

  /** A transaction begins (MAIL). */
  begin(mailFrom: string, helo: string | undefined): TxTrace {
    return new TxTrace({ sid: this.sid, ip: this.ip, helo, mailFrom, startedAt: Date.now() }, [...this.connect, ...this.helo], this.emit);
  }
}

/** Refused recipients kept per transaction: a dictionary attack's thousand RCPTs are not all worth keeping. */
const MAX_REFUSED = 100;

/** One transaction's trace, from MAIL to its end; end() emits it once. */
export class TxTrace {
  private readonly rcpts: string[] = [];
  private readonly refusedRcpts: RefusedRcpt[] = [];
  private lastRefusal: string | undefined;
  private score: number | undefined;
  private ended = false;
  private readonly head: Pick<TransactionTrace, 'sid' | 'ip' | 'helo' | 'mailFrom' | 'startedAt'>;
  private readonly entries: TraceEntry[];
  private readonly emit: (t: TransactionTrace) => void;

  constructor(head: Pick<TransactionTrace, 'sid' | 'ip' | 'helo' | 'mailFrom' | 'startedAt'>, entries: TraceEntry[], emit: (t: TransactionTrace) => void) {
    this.head = head;
    this.entries = entries;
    this.emit = emit;
  }

  /** The checks of a MAIL, RCPT or DATA phase. */
  phase(result: Pick<PhaseResult, 'ran'>): void {
    this.entries.push(...result.ran);
    for (const e of result.ran) if (e.reply !== undefined) this.lastRefusal = e.reply;
  }

  /** A refusal the session gave without a check running now (one held for smtp.delay_reject). */
  refused(reply: string): void {
    this.lastRefusal = reply;
  }

  /** The transaction score as the end of DATA read it (a finding counts once per message). */
  scored(score: number): void {
    this.score = score;
  }

  /** A recipient the policy refused: the reply it got and the check that refused it. */
  rcptRefused(rcpt: string, reply: string, check: string, key?: string): void {
    this.lastRefusal = reply;
    if (this.refusedRcpts.length < MAX_REFUSED) this.refusedRcpts.push({ rcpt, reply, check, ...(key !== undefined ? { key } : {}) });
  }

  rcpt(address: string): void {
    if (!this.rcpts.includes(address)) this.rcpts.push(address);
  }

  /**
   * The transaction is over. With a reply (to DATA, or a refusal that ends it), the outcome
   * follows from its code unless given; without one (RSET, QUIT, disconnect), a transaction
   * whose every recipient was refused counts as refused (or tempfailed) with that refusal, any
   * other as aborted. Only the first call counts.
   */
  end(reply?: string, id?: string, outcome?: TraceOutcome, size?: number): TransactionTrace | undefined {
    if (this.ended) return undefined;
    this.ended = true;
    let final = reply;
    if (final === undefined && this.rcpts.length === 0) final = this.lastRefusal;
    const trace: TransactionTrace = {
      ...this.head,
      rcpts: this.rcpts,
      refused: this.refusedRcpts,
      ...(id !== undefined ? { id } : {}),
      ...(size !== undefined ? { size } : {}),
      entries: this.entries,
      score: this.score ?? this.entries.reduce((sum, e) => sum + (e.score ?? 0), 0),
      ...(final !== undefined ? { reply: final } : {}),
      outcome: outcome ?? outcomeOf(final),
    };
    this.emit(trace);
    return trace;
  }
}

function outcomeOf(reply: string | undefined): TraceOutcome {
  if (reply === undefined) return 'aborted';
  if (reply.startsWith('2')) return 'accepted';
  return reply.startsWith('4') ? 'tempfailed' : 'refused';
}

/** "ban_ip:continue,helo:tag+3(1ms),relay:reject(2ms)": the checks in one compact field; times under 1 ms are left out. */
export function formatEntries(entries: readonly TraceEntry[]): string {
  let out = '';
  for (const e of entries) {
    if (out !== '') out += ',';
    out += `${e.check}:${e.verdict}`;
    if (e.score !== undefined) out += (e.score >= 0 ? '+' : '') + String(e.score);
    if (e.ms >= 0.5) out += `(${Math.round(e.ms)}ms)`;
  }
  return out;
}

/** The fields of the `transaction` log line. */
export function traceLogFields(t: TransactionTrace): Record<string, unknown> {
  return {
    ...(t.id !== undefined ? { id: t.id } : {}),
    from: t.mailFrom,
    rcpts: t.rcpts,
    ...(t.size !== undefined ? { size: t.size } : {}),
    checks: formatEntries(t.entries),
    score: t.score,
    reply: t.reply,
    outcome: t.outcome,
    ms: Date.now() - t.startedAt,
  };
}

/** The latest traces, oldest first, at most `size` of them: the structured records later issues read. */
export class TraceBuffer {
  private readonly items: (TransactionTrace | undefined)[];
  private next = 0;
  private count = 0;

  readonly size: number;

  constructor(size = 1000) {
    this.size = size;
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`trace buffer size ${size}`);
    this.items = new Array<TransactionTrace | undefined>(size);
  }

  add(t: TransactionTrace): void {
    this.items[this.next] = t;
    this.next = (this.next + 1) % this.size;
    this.count = Math.min(this.count + 1, this.size);
  }

  get length(): number {
    return this.count;
  }

  /** Every trace held, oldest first. */
  list(): TransactionTrace[] {
    const out: TransactionTrace[] = [];
    for (let i = 0; i < this.count; i++) out.push(this.items[(this.next - this.count + i + this.size) % this.size] as TransactionTrace);
    return out;
  }
}
