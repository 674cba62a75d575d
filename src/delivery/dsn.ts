// Non-delivery reports (bounces) as RFC 3464 delivery status notifications:
// multipart/report with a human-readable part, message/delivery-status, and the original
// message's header block (text/rfc822-headers). CRLF line ends, lines of at most 998 octets.
import { randomBytes } from 'node:crypto';
import type { RcptResult } from './types.ts';
import { rfc5322Date } from '../util/date.ts';

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
}

export interface Bounce {
  /** Always the null sender: a bounce is never bounced. */
  readonly mailFrom: string;
  readonly rcpts: string[];
  readonly raw: Buffer;
  /** True when raw holds 8-bit octets (non-ASCII addresses or original headers). */
  readonly eightBit: boolean;
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
  const { original, reportingMta } = input;
  if (!shouldBounce(original.mailFrom)) throw new RangeError('never bounce to the null sender');
  const failed = input.failed.filter((r) => r.status !== 'ok');
  if (failed.length === 0) throw new RangeError('buildBounce needs at least one failed recipient');
  const now = input.now ?? Date.now();
  const mta = oneLine(reportingMta);
  const reason = input.reason ?? 'failed';
  const boundary = `=_mxguard_${randomBytes(12).toString('hex')}`;
  const msgId = `<${new Date(now).toISOString().replace(/\D/g, '').slice(0, 14)}.${randomBytes(6).toString('hex')}@${mta}>`;
  const sender = oneLine(original.mailFrom);

  const top = [
    field('From', `MAILER-DAEMON@${mta} (Mail Delivery System)`),
    field('To', `<${sender}>`),
    field('Subject', 'Undelivered Mail Returned to Sender'),
    field('Date', rfc5322Date(now)),
    field('Message-ID', msgId),
    field('Auto-Submitted', 'auto-replied'),
    field('MIME-Version', '1.0'),
    `Content-Type: multipart/report; report-type=delivery-status;\r\n boundary="${boundary}"`,
    '',
    'This is a MIME-encapsulated message.',
    '',
  ];

  const intro =
    reason === 'delayed-expired'
      ? 'Your message could not be delivered before its time in the queue ran out. Delivery attempts have stopped for the recipients below.'
      : 'Your message could not be delivered to one or more recipients. The recipients and the reasons are listed below.';
  const human = [
    `This is the mail system at host ${mta}.`,
    '',
    ...wrap(intro, 76),
    '',
    'If you need help, please contact your postmaster and include this report.',
    '',
    '                   The mail system',
    '',
    ...failed.map((r) => `<${oneLine(r.rcpt)}>: ${r.code} ${oneLine(r.text)}`).flatMap((l) => hardSplit(l, '    ')),
  ];

  const perMessage = [
    field('Reporting-MTA', `dns; ${mta}`),
    field('X-Original-Queue-ID', original.id),
    field('Arrival-Date', rfc5322Date(input.arrivalDate ?? original.receivedAt)),
  ];
  const perRcpt = failed.map((r) => {
    const lines = [
      field('Final-Recipient', `rfc822; ${oneLine(r.rcpt)}`),
      field('Action', 'failed'),
      field('Status', statusOf(r)),
    ];
    if (input.remoteMta !== undefined) lines.push(field('Remote-MTA', `dns; ${oneLine(input.remoteMta)}`));
    lines.push(field('Diagnostic-Code', `smtp; ${r.code} ${oneLine(r.text)}`));
    lines.push(field('Last-Attempt-Date', rfc5322Date(now)));
    return lines.join('\r\n');
  });

  const headers = headerBlock(original.headers);
  const anyEightBit = (s: string): boolean => /[^\x00-\x7f]/.test(s);
  const humanText = human.join('\r\n');
  const statusText = [perMessage.join('\r\n'), ...perRcpt].join('\r\n\r\n');
  const headersEightBit = headers.some((b) => b > 127);
  const cte = (eight: boolean): string => `Content-Transfer-Encoding: ${eight ? '8bit' : '7bit'}`;

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
        'Content-Type: message/delivery-status',
        cte(anyEightBit(statusText)),
        '',
        statusText,
        '',
        `--${boundary}`,
        'Content-Description: Undelivered Message Headers',
        'Content-Type: text/rfc822-headers',
        cte(headersEightBit),
        '',
        '',
      ].join('\r\n'),
      'utf8',
    ),
    headers,
    Buffer.from(`\r\n--${boundary}--\r\n`, 'utf8'),
  ];
  const raw = Buffer.concat(parts);
  return { mailFrom: '', rcpts: [original.mailFrom], raw, eightBit: raw.some((b) => b > 127) };
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
