// What a check may look at, per phase. The SMTP engine fills these in; checks never see sockets.
import type { Address, PathParams } from '../mail/address.ts';

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
}

export interface TransactionInfo {
  readonly mailFrom: Address;
  readonly params: PathParams;
  /** Recipients accepted so far. */
  readonly rcpts: Address[];
}

export interface ConnectContext {
  readonly session: SessionInfo;
}
export interface HeloContext {
  readonly session: SessionInfo;
  readonly helo: string;
}
export interface MailContext {
  readonly session: SessionInfo;
  readonly mailFrom: Address;
  readonly params: PathParams;
}
export interface RcptContext {
  readonly session: SessionInfo;
  readonly tx: TransactionInfo;
  readonly rcpt: Address;
}
export interface DataContext {
  readonly session: SessionInfo;
  readonly tx: TransactionInfo;
  /** Size of the message body as received, in octets. */
  readonly size: number;
}

export interface PhaseContexts {
  connect: ConnectContext;
  helo: HeloContext;
  mail: MailContext;
  rcpt: RcptContext;
  data: DataContext;
}
