// The envelope of an accepted message: what smtp/ builds, the spool stores behind the message
// itself and the queue manager hands to the transports. Shared mail types sit here, at the bottom.

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
  /** Header lines (with CRLF) put in the message when it is delivered (tag verdicts, X-Spam-*). */
  readonly addHeaders?: readonly string[];
  /** Where addHeaders go: this octet of the stored message (the end of our Received header); absent: in front. */
  readonly addHeadersAt?: number;
  /**
   * Octet ranges [start, end) of the stored message left out when it is delivered: incoming
   * header fields the policy removed (forged X-Spam-*). The spool keeps what the client sent.
   */
  readonly cut?: readonly (readonly [number, number])[];
  /** Policy score, for the record. */
  readonly score?: number;
  /** The dkim.sign domain to sign with when delivered (our user's mail, decided at the end of DATA). */
  readonly dkim?: string;
}

/** RFC 3461 per-message parameters: RET and ENVID (decoded from xtext). */
export interface MessageDsn {
  readonly ret?: 'FULL' | 'HDRS';
  readonly envid?: string;
}

export type NotifyKeyword = 'NEVER' | 'SUCCESS' | 'FAILURE' | 'DELAY';

/** RFC 3461 per-recipient parameters. */
export interface RcptDsn {
  /** ['NEVER'] or some of SUCCESS, FAILURE, DELAY; absent: not given (failures are reported). */
  readonly notify?: readonly NotifyKeyword[];
  /** ORCPT: its address type ("rfc822", "utf-8", …) and the address, decoded. */
  readonly orcpt?: { readonly type: string; readonly addr: string };
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
    (v.rcptDsn === undefined || (typeof v.rcptDsn === 'object' && v.rcptDsn !== null)) &&
    (v.addHeadersAt === undefined || (Number.isSafeInteger(v.addHeadersAt) && (v.addHeadersAt as number) >= 0)) &&
    (v.cut === undefined || (Array.isArray(v.cut) && v.cut.every((r) => Array.isArray(r) && r.length === 2 && r.every((n) => Number.isSafeInteger(n) && (n as number) >= 0))))
  );
}
