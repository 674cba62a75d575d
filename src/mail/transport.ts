// The contract between the queue manager (src/queue/forwarder.ts) and the transports that hand
// mail downstream (src/delivery/, src/smtp-client/).
import type { MessageDsn, RcptDsn } from './envelope.ts';

/** A spooled message as a transport sees it: raw RFC 5322 bytes with CRLF line ends, NOT dot-stuffed. */
export interface MessageBody {
  readonly size: number;
  /** Yields the message bytes in order; may be called more than once (one call per attempt). */
  chunks(): AsyncIterable<Buffer>;
}

export interface OutgoingMessage {
  /** Our queue ID, for logs. */
  readonly id: string;
  /** Envelope sender; '' is the null sender (bounces). */
  readonly mailFrom: string;
  /** The recipients still to deliver in this attempt. */
  readonly rcpts: readonly string[];
  readonly body: MessageBody;
  /** The client declared BODY=8BITMIME; passed on when the downstream offers it. */
  readonly eightBit?: boolean;
  /** The message needs SMTPUTF8 (a UTF-8 address or header, RFC 6531 3.2); else it goes without. */
  readonly smtputf8?: boolean;
  /** DSN requests (RFC 3461), passed on to a downstream that offers DSN. */
  readonly dsn?: MessageDsn;
  /** Per recipient NOTIFY / ORCPT, keyed by the address in rcpts. */
  readonly rcptDsn?: Readonly<Record<string, RcptDsn>>;
  /** Sign with the dkim.sign key of this domain before it leaves (src/delivery/dkim-sign.ts). */
  readonly dkim?: string;
}

/** The outcome for one recipient: ok = delivered, temp = try again later, perm = bounce. */
export interface RcptResult {
  readonly rcpt: string;
  readonly status: 'ok' | 'temp' | 'perm';
  /** The downstream's reply code (or 421/451 for a connection failure of ours). */
  readonly code: number;
  /** The reply text, one line, as received (for logs and the DSN's Diagnostic-Code). */
  readonly text: string;
  /**
   * For a delivered recipient: what a success DSN we send would say ('delivered' into a mail
   * store, 'relayed' to a downstream without DSN). Absent: the downstream took the DSN request
   * on (it offered DSN), or the transport cannot tell.
   */
  readonly dsnAction?: 'delivered' | 'relayed';
  /** Which transport answered, when it is not the one the queue manager called (routes): its name, for logs. */
  readonly relay?: string;
  /** The remote host that gave the reply (an MX host's name): the DSN's Remote-MTA. */
  readonly remoteMta?: string;
}

export interface Transport {
  /** Names the destination in logs: "smtp://127.0.0.1:2526", "maildir:/var/mail". */
  readonly name: string;
  /** Delivers one message; never throws for a downstream failure: that is a 'temp' result per recipient. */
  deliver(msg: OutgoingMessage): Promise<RcptResult[]>;
  /** Closes pooled connections (QUIT), for a graceful stop. */
  close(): Promise<void>;
}

/** The whole message of a body, in one buffer (a bounce's RET=FULL copy, a message to sign). */
export async function readAll(body: MessageBody): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of body.chunks()) parts.push(chunk);
  return Buffer.concat(parts);
}
