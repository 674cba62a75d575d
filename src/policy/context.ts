// What a check may look at, per phase. The SMTP engine fills these in; checks never see sockets.
import type { Address, PathParams } from '../mail/address.ts';
import type { HeaderField } from '../mail/header-block.ts';
import type { AuthResults } from './auth/results.ts';

export interface SessionInfo {
  /** Session ID for logs. */
  readonly sid: string;
  readonly remoteIp: string;
  readonly remotePort: number;
  readonly localIp: string;
  readonly localPort: number;
  tls: boolean;
  /** The HELO/EHLO argument, once given. */
  helo?: string;
  esmtp: boolean;
  /** The client sent before our banner (postscreen's pregreet test). */
  earlyTalker: boolean;
  /** Authenticated user (a later issue fills this in). */
  authUser?: string;
  /** Recipients accepted in this session so far, over all its transactions. */
  rcptCount: number;
  /** The client's host name as the launcher found it (tcpserver's TCPREMOTEHOST); null: it has none. */
  readonly clientHostname?: string | null;
  /** rblsmtpd's RBLSMTPD variable under `mxguard stdio`: non-empty refuses every RCPT, empty skips the DNS blocklists. */
  readonly rblsmtpd?: string;
  /** The listener's role (listen: mode); undefined is mx. On submission and submissions AUTH comes before MAIL. */
  readonly listener?: 'mx' | 'submission' | 'submissions';
}

/** A connection to a submission listener (submission or submissions): our users, who authenticate before MAIL. */
export function isSubmission(session: Pick<SessionInfo, 'listener'>): boolean {
  return session.listener === 'submission' || session.listener === 'submissions';
}

export interface TransactionInfo {
  readonly mailFrom: Address;
  readonly params: PathParams;
  /** Recipients accepted so far. */
  readonly rcpts: Address[];
  /** What the authentication checks found so far (SPF at MAIL; DKIM, DMARC, ARC at the end of DATA). */
  readonly auth?: AuthResults;
}

export interface ConnectContext {
  readonly session: SessionInfo;
}
export interface HeloContext {
  readonly session: SessionInfo;
  readonly helo: string;
}
/**
 * One AUTH exchange, stage by stage: `start` (the AUTH command), `attempt` (credentials to
 * check, not yet checked), then its outcome: `ok`, `failed`, or `unchecked` (the backend could
 * not say: busy, unreachable).
 */
export interface AuthContext {
  readonly session: SessionInfo;
  readonly stage: 'start' | 'attempt' | 'ok' | 'failed' | 'unchecked';
}
export interface MailContext {
  readonly session: SessionInfo;
  readonly mailFrom: Address;
  readonly params: PathParams;
  /** The transaction's authentication results, for the checks that find them (SPF) to fill in (the policy session always gives one). */
  readonly auth?: AuthResults;
}
export interface RcptContext {
  readonly session: SessionInfo;
  readonly tx: TransactionInfo;
  readonly rcpt: Address;
  /** The transaction score so far: connect, HELO and MAIL findings, and those of the recipients accepted before. */
  readonly score: number;
}
export interface DataContext {
  readonly session: SessionInfo;
  readonly tx: TransactionInfo;
  /** The message itself (its size included), received and in the spool, not yet acknowledged. */
  readonly message: MessageView;
  /** Aborted when scoring.data_timeout passes: a check still reading should stop. */
  readonly signal: AbortSignal;
}

/** The message as DATA checks see it: its parsed header block, and its octets re-read from the spool. */
export interface MessageView {
  /** The queue ID it will have. */
  readonly id: string;
  /** Octets of the stored message: our Received header, then the message as the client sent it. */
  readonly size: number;
  /** The header fields in order, our Received first, raw and unfolded, up to a size cap (parsed on first use). */
  readonly headers: readonly HeaderField[];
  /** The header block was longer than the cap: fields past it are not in `headers`. */
  readonly headersTruncated: boolean;
  /** Lines of the stored message. */
  readonly lines: number;
  /** Offset of the body (after the empty line) in the stored message. */
  readonly bodyOffset: number;
  /**
   * Might a header field whose lower-case name starts with `prefix` be there? A quick look that
   * spares parsing the header block when no check reads it; true means "look in `headers`".
   */
  mayHaveField(prefix: string): boolean;
  /** The stored message from `start` (default 0), read afresh each call: the whole of it is never held for a check. */
  read(start?: number): AsyncIterable<Buffer>;
}

export interface PhaseContexts {
  connect: ConnectContext;
  helo: HeloContext;
  auth: AuthContext;
  mail: MailContext;
  rcpt: RcptContext;
  data: DataContext;
}
