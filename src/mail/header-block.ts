// The header block of a message (RFC 5322 2.2), parsed while DATA streams in: the fields in
// order, each raw (with its folding) and unfolded, with its octet range in the stored message so
// a field can be cut out at delivery (incoming X-Spam-* headers) without rewriting the spool.
// Only the first `cap` octets are kept: a header block larger than that is marked truncated and
// the fields past the cap are not seen (a filter must not make a 10 MB header block cost memory).

export interface HeaderField {
  /** The name as written ("Subject"). */
  readonly name: string;
  /** The name in lower case, for lookups. */
  readonly key: string;
  /** The value unfolded (CRLF + WSP → WSP), leading white space and the final CRLF removed. */
  readonly value: string;
  /** The field as received, folding and final CRLF included. */
  readonly raw: string;
  /** Octet offsets of the raw field in the stored message: [start, end). */
  readonly start: number;
  readonly end: number;
}

export interface ParsedHeaders {
  readonly fields: readonly HeaderField[];
  /** The header block was longer than the cap (or never ended): fields past it are missing. */
  readonly truncated: boolean;
  /** Offset of the first body octet (after the empty line), or the offset where parsing stopped. */
  readonly bodyOffset: number;
}

/** Default cap on the octets of a header block that are parsed. */
export const HEADER_BLOCK_CAP = 256 * 1024;

/** Collects the header block from the chunks of a message as they arrive (up to the cap). */
export class HeaderBlockReader {
  private readonly cap: number;
  private parts: Buffer[] = [];
  private length = 0;
  /** The last octets fed (up to 3), to find a CRLF CRLF that straddles two chunks. */
  private tail = '';
  private parsed: ParsedHeaders | undefined;
  /** The end of the header block (the empty line) was seen, or the cap was reached. */
  done = false;

  constructor(cap = HEADER_BLOCK_CAP) {
    this.cap = cap;
  }

  feed(chunks: readonly Buffer[]): void {
    for (const chunk of chunks) {
      if (this.done || chunk.length === 0) return;
      // A message that starts with the empty line has no header; else look for CRLF CRLF, also
      // across the boundary with what came before. No copying: a small message costs a search.
      const starts = this.length === 0 && (chunk[0] === 10 || (chunk[0] === 13 && chunk[1] === 10));
      const across = this.tail !== '' && (this.tail + chunk.toString('latin1', 0, 3)).includes('\r\n\r\n');
      this.parts.push(chunk);
      this.length += chunk.length;
      if (starts || across || chunk.includes('\r\n\r\n') || this.length >= this.cap) this.done = true;
      this.tail = chunk.length >= 3 ? chunk.toString('latin1', chunk.length - 3) : (this.tail + chunk.toString('latin1')).slice(-3);
    }
  }

  private joined(): Buffer {
    if (this.parts.length > 1) this.parts = [Buffer.concat(this.parts)];
    return this.parts[0] ?? Buffer.alloc(0);
  }

  /** The fields seen (call once DATA has ended); parsed on the first call. */
  result(): ParsedHeaders {
    this.parsed ??= parseHeaderBlock(this.joined(), this.cap);
    return this.parsed;
  }

  /**
   * Might a field whose (lower-case) name starts with `prefix` be there? A quick look at the
   * octets, so that a message without one is never parsed for it; true means "parse and see".
   */
  mayHave(prefix: string): boolean {
    // A byte scan, part by part, of each line start until the empty line: no string is made.
    // `prefix` is lower-case ASCII; letters compare with the 0x20 bit set. A false "yes" only
    // costs a parse.
    let atLineStart = true;
    let matched = 0;
    let prev = -1;
    for (const part of this.parts) {
      for (let i = 0; i < part.length; i++) {
        const b = part[i] as number;
        if (matched > 0 || atLineStart) {
          const want = prefix.charCodeAt(matched);
          const got = want >= 0x61 && want <= 0x7a ? b | 0x20 : b;
          if (got === want) {
            if (++matched === prefix.length) return true;
            atLineStart = false;
            prev = b;
            continue;
          }
          matched = 0;
        }
        if (b === 10) {
          if (prev === 10 || (prev === 13 && atLineStart)) return false; // the empty line: the header is over
          atLineStart = true;
        } else if (!(b === 13 && atLineStart)) atLineStart = false;
        prev = b;
      }
    }
    return false;
  }

}

/**
 * Parses the header block at the start of `message` (octets, CRLF lines). `cap`: parse no
 * further than this many octets (the block is then truncated). A line that is neither a field
 * nor a continuation ends the block, as the body would (RFC 5322 allows nothing else there).
 */
export function parseHeaderBlock(message: Buffer, cap?: number): ParsedHeaders {
  const limit = Math.min(message.length, cap ?? message.length);
  const fields: HeaderField[] = [];
  let pos = 0;
  let truncated = false;
  let bodyOffset = -1;
  while (pos < limit) {
    if (message[pos] === 13 && message[pos + 1] === 10) {
      bodyOffset = pos + 2; // the empty line
      break;
    }
    if (message[pos] === 10) {
      bodyOffset = pos + 1;
      break;
    }
    // One field: its first line and every continuation line (starting with SP or HTAB).
    let end = pos;
    for (;;) {
      const lf = message.indexOf(10, end);
      if (lf === -1 || lf >= limit) {
        end = -1;
        break;
      }
      end = lf + 1;
      const next = message[end];
      if (next !== 32 && next !== 9) break;
    }
    if (end === -1) {
      truncated = true;
      break;
    }
    const raw = message.toString('utf8', pos, end);
    const colon = raw.indexOf(':');
    const name = colon > 0 ? raw.slice(0, colon) : '';
    if (colon <= 0 || !/^[\x21-\x39\x3b-\x7e]+$/.test(name)) {
      // Not a header field: the body starts here (no empty line).
      bodyOffset = pos;
      break;
    }
    // Unfolded: most fields are one line, and need no regular expression.
    const last = raw.length - (raw.endsWith('\r\n') ? 2 : 1);
    const folded = raw.indexOf('\n') < last;
    const value = (folded ? raw.slice(colon + 1, last).replace(/\r?\n(?=[ \t])/g, '') : raw.slice(colon + 1, last)).replace(/^[ \t]+/, '');
    fields.push({ name, key: name.toLowerCase(), value, raw, start: pos, end });
    pos = end;
  }
  if (bodyOffset === -1) {
    // Ran into the cap before the empty line; a message that is all header has no body.
    if (limit < message.length) truncated = true;
    bodyOffset = pos;
  }
  return { fields, truncated, bodyOffset };
}

/** The unfolded values of the fields called `name` (any case), in order. */
export function headerValues(fields: readonly HeaderField[], name: string): string[] {
  const key = name.toLowerCase();
  const out: string[] = [];
  for (const f of fields) if (f.key === key) out.push(f.value);
  return out;
}
