// The envelope of a spooled message, stored in the spool file behind the message itself.
import type { MessageDsn, RcptDsn } from '../delivery/types.ts';

export interface Envelope {
  readonly id: string;
  /** '' = null sender. */
  readonly mailFrom: string;
  readonly rcpts: readonly string[];
  /** When we accepted it (ms since epoch). */
  readonly receivedAt: number;
  readonly client: { readonly ip: string; readonly helo?: string; readonly tls: boolean };
  readonly eightBit?: boolean;
  /**
   * The message needs SMTPUTF8 downstream: it declared SMTPUTF8 and has a UTF-8 address or
   * header (decided at the end of DATA). Envelopes written before that stored the declaration.
   */
  readonly smtputf8?: boolean;
  /** DSN RET / ENVID of MAIL (RFC 3461); absent when not given. */
  readonly dsn?: MessageDsn;
  /** DSN NOTIFY / ORCPT of RCPT, keyed by recipient address; absent when none was given. */
  readonly rcptDsn?: Readonly<Record<string, RcptDsn>>;
  /** Header lines (with CRLF) put in front of the message when it is delivered (tag verdicts). */
  readonly addHeaders?: readonly string[];
  /** Policy score, for the record. */
  readonly score?: number;
}

/** Delivery progress, kept beside the spool file; losing it only means an earlier retry. */
export interface DeliveryState {
  attempts: number;
  /** ms since epoch of the next attempt. */
  nextAt: number;
  /** Recipients not yet delivered. */
  rcpts: string[];
  lastError?: string;
}

export function isEnvelope(value: unknown): value is Envelope {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v.id === 'string' &&
    typeof v.mailFrom === 'string' &&
    Array.isArray(v.rcpts) &&
    v.rcpts.every((r) => typeof r === 'string') &&
    typeof v.receivedAt === 'number' &&
    typeof v.client === 'object' &&
    v.client !== null &&
    (v.dsn === undefined || (typeof v.dsn === 'object' && v.dsn !== null)) &&
    (v.rcptDsn === undefined || (typeof v.rcptDsn === 'object' && v.rcptDsn !== null))
  );
}
