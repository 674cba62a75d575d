// What the message filters (filters.mfilter: DMail's Mfilter language; filters.rules:
// SpamAssassin's rule syntax) see of a message and what they answer. Both are pure: the DATA
// check in src/policy/filters/check.ts builds the ScanMessage once per message (from the spool)
// and turns a FilterResult into a verdict, points and headers.
import type { HeaderField } from '../../mail/header-block.ts';

export interface ScanMessage {
  /** The header fields in order (src/mail/header-block.ts), our own Received first; capped. */
  readonly headers: readonly HeaderField[];
  /** The header block was longer than its cap: fields past it are missing. */
  readonly headersTruncated: boolean;
  /** The body as received (transfer-encoded, CRLF lines), at most the scan cap. */
  readonly rawBody: Buffer;
  /** The body was longer than the scan cap: only its start is in rawBody. */
  readonly bodyTruncated: boolean;
  /** Octets of the whole message, header and body (not only the part scanned). */
  readonly size: number;
  /** Lines of the whole message, header and body. */
  readonly lines: number;
}

/** The envelope and the client, for rules that look at them. */
export interface FilterEnvelope {
  readonly mailFrom: string;
  readonly rcpts: readonly string[];
  readonly clientIp: string;
  readonly helo?: string;
}

/** One rule that matched and scored: its name appears in X-Spam-Status tests=. */
export interface FilterHit {
  /** SpamAssassin rule name, or MFILTER_<line> for an Mfilter rule. */
  readonly name: string;
  readonly score: number;
  /** What it means (SpamAssassin `describe`, Mfilter's spamdetect reason). */
  readonly describe?: string;
}

export interface FilterResult {
  /** Rules that added points, in the order they matched. */
  readonly hits: FilterHit[];
  /** Header fields to add, each "Name: value\r\n". */
  readonly headers: string[];
  /**
   * A final action: accept (stop filtering, no further rule of this file), reject (5xx at the
   * end of DATA with `reason`), discard (250, then dropped). `rule` names the rule for logs.
   */
  action?: { kind: 'accept' | 'reject' | 'discard'; reason: string; rule: string };
}

/** A rule file that does not parse: the file, the 1-based line (and column when known). */
export class FilterSyntaxError extends Error {
  readonly file: string;
  readonly line: number;
  readonly col: number | undefined;
  constructor(file: string, line: number, message: string, col?: number) {
    super(`${file}:${line}${col !== undefined ? `:${col}` : ''}: ${message}`);
    this.file = file;
    this.line = line;
    this.col = col;
  }
}
