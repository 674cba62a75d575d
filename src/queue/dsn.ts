// Non-delivery reports (bounces) and success notices as RFC 3464 delivery status notifications:
// multipart/report with a human-readable part, message/delivery-status, and the original
// message's header block (text/rfc822-headers), or the whole message for RET=FULL. The DSN
// requests of RFC 3461 show as Original-Envelope-Id and Original-Recipient; UTF-8 addresses use
// RFC 6533's message/global-delivery-status. CRLF line ends, lines of at most 998 octets.
import { randomBytes } from 'node:crypto';
import type { MessageDsn, RcptDsn } from '../mail/envelope.ts';
import type { RcptResult } from '../mail/transport.ts';
import { rfc5322Date } from '../util/date.ts';
import { utf8AddrEncode } from '../util/xtext.ts';

export interface BounceInput {
  /** Our host name: Reporting-MTA, From: MAILER-DAEMON@<it>, the Message-ID's domain. */
  readonly reportingMta: string;
  readonly original: {
    readonly id: string;
    readonly mailFrom: string;
    /** When we accepted the message (ms since the epoch). */
    readonly receivedAt: number;
    /** The original header block (up to, not including, the empty line). */
    readonly headers: Buffer;
  };
  /** The recipients that failed: perm results, or temp ones whose retries expired. */
  readonly failed: readonly RcptResult[];
  /** Overrides original.receivedAt for Arrival-Date (ms since the epoch). */
  readonly arrivalDate?: number;
  readonly reason?: 'failed' | 'delayed-expired';
  /** The downstream the failures came from ("mail.example.test"), for Remote-MTA. */
  readonly remoteMta?: string;
  /** The report's own time (ms); default now. For reproducible tests. */
  readonly now?: number;
  /** RET / ENVID of the original MAIL (RFC 3461): ENVID becomes Original-Envelope-Id. */
  readonly dsn?: MessageDsn;
  /** NOTIFY / ORCPT per original recipient: ORCPT becomes Original-Recipient. */
  readonly rcptDsn?: Readonly<Record<string, RcptDsn>>;
  /** The whole original message, returned when it asked RET=FULL; else the headers are. */
  readonly fullMessage?: Buffer;
}

export interface Bounce {
  /** Always the null sender: a bounce is never bounced. */
  readonly mailFrom: string;
  readonly rcpts: string[];
  readonly raw: Buffer;
  /** True when raw holds 8-bit octets (non-ASCII addresses or original headers). */
  readonly eightBit: boolean;
  /** Its own header block is UTF-8 (a UTF-8 sender in To:): it needs SMTPUTF8 downstream. */
  readonly smtputf8: boolean;
}

/** Whether a failure may be reported to this envelope sender: never to the null sender. */
export function shouldBounce(mailFrom: string): boolean {
  const s = mailFrom.trim();
  return s !== '' && s !== '<>';
}

const ENHANCED = /^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)/;

/** The RFC 3463 status for a result: its enhanced code when it leads the text, else x.0.0. */
export function statusOf(r: Pick<RcptResult, 'code' | 'text'>): string {
  const cls = Math.floor(r.code / 100);
  const m = ENHANCED.exec(r.text.trim());
  if (m && Number(m[1]) === cls) return `${m[1]}.${Number(m[2])}.${Number(m[3])}`;
  return cls === 2 ? '2.0.0' : cls === 4 ? '4.0.0' : '5.0.0';
}


/** RFC 5322 date-time in UTC: "Sat, 22 Nov 2025 02:55:00 +0000". */
/** Header / field values are one line: control characters would forge new fields. */
function oneLine(s: string): string {
  return s.replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
}

const MAX_LINE = 998;

/** A header field folded at spaces to ~78 columns, hard-split at 998 octets if it has none. */
function field(name: string, value: string): string {
  const words = oneLine(value).split(' ');
  const lines: string[] = [];
  let cur = `${name}:`;
  for (const w of words) {
    if (cur.length + 1 + w.length > 78 && cur.trim().length > name.length + 1) {
      lines.push(cur);
      cur = ' ';
    } else {
      cur += ' ';
    }
    cur += w;
  }
  lines.push(cur);
  return lines.flatMap((l) => hardSplit(l, ' ')).join('\r\n');
}

/** Splits a line longer than 998 octets; continuation pieces start with prefix. */
function hardSplit(line: string, prefix: string): string[] {
  if (Buffer.byteLength(line) <= MAX_LINE) return [line];
  const out: string[] = [];
  let rest = line;
  let first = true;
  while (rest.length > 0) {
    const room = MAX_LINE - (first ? 0 : prefix.length);
    // Count octets, not UTF-16 units, and never cut a surrogate pair.
    let take = 0;
    let bytes = 0;
    for (const ch of rest) {
      const b = Buffer.byteLength(ch);
      if (bytes + b > room) break;
      bytes += b;
      take += ch.length;
    }
    out.push((first ? '' : prefix) + rest.slice(0, take));
    rest = rest.slice(take);
    first = false;
  }
  return out;
}

/** The original header block as CRLF lines of at most 998 octets, ending in CRLF. */
function headerBlock(headers: Buffer): Buffer {
  let text = headers.toString('latin1').replace(/\r\n|\r|\n/g, '\n').replace(/\0/g, '');
  const blank = text.indexOf('\n\n');
  if (blank !== -1) text = text.slice(0, blank); // a body slipped in: keep only the headers
  const lines = text.split('\n').filter((l, i, a) => !(i === a.length - 1 && l === ''));
  // latin1 keeps every octet as one char, so lengths here are octet counts.
  const out = lines.flatMap((l) => hardSplit(l, ' ')).join('\r\n');
  return Buffer.from(out === '' ? '' : out + '\r\n', 'latin1');
}

/** Builds the DSN for the original sender. Throws if the sender is the null sender or nothing failed. */
export function buildBounce(input: BounceInput): Bounce {
  const failed = input.failed.filter((r) => r.status !== 'ok');
  if (failed.length === 0) throw new RangeError('buildBounce needs at least one failed recipient');
  return buildReport(input, failed, input.reason ?? 'failed');
}

/**
 * A success DSN (RFC 3461 4.1): for recipients that asked NOTIFY=SUCCESS and were delivered
 * into a mail store ('delivered') or handed to a downstream without DSN ('relayed'). Carries
 * the original headers only. Throws for the null sender or an empty list.
 */
export function buildSuccessReport(input: Omit<BounceInput, 'failed' | 'reason' | 'fullMessage'> & { readonly delivered: readonly RcptResult[] }): Bounce {
  const delivered = input.delivered.filter((r) => r.status === 'ok');
  if (delivered.length === 0) throw new RangeError('buildSuccessReport needs at least one delivered recipient');
  return buildReport(input, delivered, 'success');
}

const NON_ASCII = /[^\x00-\x7f]/;

/** The address-type;address value of a recipient field, in 7-bit or RFC 6533 global form. */
function addressField(type: string, addr: string, global: boolean): string {
  if (type === 'utf-8' || NON_ASCII.test(addr)) return `utf-8; ${global ? oneLine(addr) : utf8AddrEncode(addr, false)}`;
  return `${type}; ${oneLine(addr)}`;
}

function buildReport(input: Omit<BounceInput, 'failed'>, rcpts: readonly RcptResult[], kind: 'failed' | 'delayed-expired' | 'success'): Bounce {
  const { original, reportingMta } = input;
  if (!shouldBounce(original.mailFrom)) throw new RangeError('never bounce to the null sender');
  const success = kind === 'success';
  const now = input.now ?? Date.now();
  const mta = oneLine(reportingMta);
  const boundary = `=_mxguard_${randomBytes(12).toString('hex')}`;
  const msgId = `<${new Date(now).toISOString().replace(/\D/g, '').slice(0, 14)}.${randomBytes(6).toString('hex')}@${mta}>`;
  const sender = oneLine(original.mailFrom);
  const orcptOf = (r: RcptResult): { type: string; addr: string } | undefined => input.rcptDsn?.[r.rcpt]?.orcpt;
  // RFC 6533: UTF-8 addresses go in message/global-delivery-status.
  const global = rcpts.some((r) => NON_ASCII.test(r.rcpt) || NON_ASCII.test(orcptOf(r)?.addr ?? '') || orcptOf(r)?.type === 'utf-8');

  const top = [
    field('From', `MAILER-DAEMON@${mta} (Mail Delivery System)`),
    field('To', `<${sender}>`),
    field('Subject', success ? 'Successful Mail Delivery Report' : 'Undelivered Mail Returned to Sender'),
    field('Date', rfc5322Date(now)),
    field('Message-ID', msgId),
    field('Auto-Submitted', 'auto-replied'),
    field('MIME-Version', '1.0'),
    `Content-Type: multipart/report; report-type=${global ? 'global-delivery-status' : 'delivery-status'};\r\n boundary="${boundary}"`,
    '',
    'This is a MIME-encapsulated message.',
    '',
  ];

  const intro =
    kind === 'success'
      ? 'Your message was successfully delivered to the destinations listed below. If it was delivered to a mailbox, you will receive no further notifications. Otherwise you may still receive notifications of mail delivery errors from other systems.'
      : kind === 'delayed-expired'
        ? 'Your message could not be delivered before its time in the queue ran out. Delivery attempts have stopped for the recipients below.'
        : 'Your message could not be delivered to one or more recipients. The recipients and the reasons are listed below.';
  const human = [
    `This is the mail system at host ${mta}.`,
    '',
    ...wrap(intro, 76),
    '',
    ...(success ? [] : ['If you need help, please contact your postmaster and include this report.', '']),
    '                   The mail system',
    '',
    ...rcpts.map((r) => `<${oneLine(r.rcpt)}>: ${success ? `${r.dsnAction ?? 'delivered'}: ` : ''}${r.code} ${oneLine(r.text)}`).flatMap((l) => hardSplit(l, '    ')),
  ];

  const perMessage = [
    ...(input.dsn?.envid !== undefined ? [field('Original-Envelope-Id', input.dsn.envid)] : []),
    field('Reporting-MTA', `dns; ${mta}`),
    field('X-Original-Queue-ID', original.id),
    field('Arrival-Date', rfc5322Date(input.arrivalDate ?? original.receivedAt)),
  ];
  const perRcpt = rcpts.map((r) => {
    const lines: string[] = [];
    const orcpt = orcptOf(r);
    if (orcpt) lines.push(field('Original-Recipient', addressField(orcpt.type, orcpt.addr, global)));
    lines.push(field('Final-Recipient', addressField('rfc822', r.rcpt, global)));
    lines.push(field('Action', success ? (r.dsnAction ?? 'delivered') : 'failed'));
    lines.push(field('Status', statusOf(r)));
    const remote = r.remoteMta ?? input.remoteMta;
    if (remote !== undefined) lines.push(field('Remote-MTA', `dns; ${oneLine(remote)}`));
    lines.push(field('Diagnostic-Code', `smtp; ${r.code} ${oneLine(r.text)}`));
    lines.push(field('Last-Attempt-Date', rfc5322Date(now)));
    return lines.join('\r\n');
  });

  const anyEightBit = (s: string): boolean => NON_ASCII.test(s);
  const humanText = human.join('\r\n');
  const statusText = [perMessage.join('\r\n'), ...perRcpt].join('\r\n\r\n');
  const cte = (eight: boolean): string => `Content-Transfer-Encoding: ${eight ? '8bit' : '7bit'}`;
  // RET=FULL (failures only): the whole message, when the forwarder could give it.
  const full = !success && input.dsn?.ret === 'FULL' && input.fullMessage !== undefined ? normalizeMessage(input.fullMessage) : undefined;
  const returned = full ?? headerBlock(original.headers);
  const returnedHead = full ? full.subarray(0, Math.max(0, full.indexOf('\r\n\r\n'))) : returned;
  const returnedEightBit = returned.some((b) => b > 127);
  // RFC 6533 / 6532: UTF-8 header fields go in message/global(-headers); other 8-bit octets as before.
  const utf8Head = returnedHead.some((b) => b > 127) && isUtf8(returnedHead);
  const returnedType = full ? (utf8Head ? 'message/global' : 'message/rfc822') : utf8Head ? 'message/global-headers' : 'text/rfc822-headers';

  const parts: Buffer[] = [
    Buffer.from(top.join('\r\n') + '\r\n', 'utf8'),
    Buffer.from(
      [
        `--${boundary}`,
        'Content-Description: Notification',
        'Content-Type: text/plain; charset=utf-8',
        cte(anyEightBit(humanText)),
        '',
        humanText,
        '',
        `--${boundary}`,
        'Content-Description: Delivery report',
        `Content-Type: ${global ? 'message/global-delivery-status' : 'message/delivery-status'}`,
        cte(anyEightBit(statusText)),
        '',
        statusText,
        '',
        `--${boundary}`,
        `Content-Description: ${full ? 'Undelivered Message' : success ? 'Message Headers' : 'Undelivered Message Headers'}`,
        `Content-Type: ${returnedType}`,
        cte(returnedEightBit),
        '',
        '',
      ].join('\r\n'),
      'utf8',
    ),
    returned,
    Buffer.from(`\r\n--${boundary}--\r\n`, 'utf8'),
  ];
  const raw = Buffer.concat(parts);
  return { mailFrom: '', rcpts: [original.mailFrom], raw, eightBit: raw.some((b) => b > 127), smtputf8: NON_ASCII.test(sender) };
}

/** A whole message as CRLF lines of at most 998 octets, ending in CRLF (RET=FULL). */
function normalizeMessage(msg: Buffer): Buffer {
  const text = msg.toString('latin1').replace(/\r\n|\r|\n/g, '\n').replace(/\0/g, '');
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const out = lines.flatMap((l) => hardSplit(l, ' ')).join('\r\n');
  return Buffer.from(out === '' ? '' : out + '\r\n', 'latin1');
}

function isUtf8(b: Buffer): boolean {
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(b);
    return true;
  } catch {
    return false;
  }
}

/** Wraps prose at spaces. */
function wrap(text: string, width: number): string[] {
  const out: string[] = [];
  let cur = '';
  for (const w of text.split(' ')) {
    if (cur !== '' && cur.length + 1 + w.length > width) {
      out.push(cur);
      cur = w;
    } else {
      cur = cur === '' ? w : `${cur} ${w}`;
    }
  }
  if (cur !== '') out.push(cur);
  return out;
}
