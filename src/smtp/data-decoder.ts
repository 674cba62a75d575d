// Decodes the DATA phase as it arrives off the wire, chunk by chunk, split anywhere:
// removes dot-stuffing and finds the end of data. Only the exact octets CR LF "." CR LF end a
// message (the very first line counts as following a CRLF). Bare CR, bare LF and NUL are noted
// as problems; in "normalize" mode they become CRLF (NUL is dropped), but a line start that
// normalization creates never counts as the start of the end-of-data line, and neither does a
// line whose first octet was a dropped NUL: no sequence in SMTP-smuggling lists can end DATA.

export interface DataProblems {
  bareLf: boolean;
  bareCr: boolean;
  nul: boolean;
  /** A text line longer than the limit (octets including CRLF). */
  longLine: boolean;
  /** The message grew past the size limit; output stopped there. */
  tooBig: boolean;
}

// States of the line scanner.
const LINE_START = 0; // after a real CRLF (or at the start of data)
const MID = 1; // inside a line
const CR = 2; // saw CR inside a line, not yet emitted
const DOT = 3; // real line start, then "." (not yet emitted)
const DOT_CR = 4; // real line start, ".", CR

const BLOCK = 64 * 1024;
const CRLF = Buffer.from('\r\n');

export class DataDecoder {
  readonly problems: DataProblems = { bareLf: false, bareCr: false, nul: false, longLine: false, tooBig: false };
  /** Octets of decoded message (after un-stuffing and normalization). */
  size = 0;
  /** Lines of decoded message (Mfilter's lines()). */
  lines = 0;
  private state = LINE_START;
  private lineLen = 0;
  private readonly normalize: boolean;
  private readonly maxLine: number;
  private readonly maxSize: number;
  private block: Buffer = Buffer.allocUnsafe(BLOCK);
  private used = 0;
  private readonly done: Buffer[] = [];

  /** maxLineLength: octets including CRLF; 0 = no limit. */
  constructor(opts: { normalize: boolean; maxLineLength: number; maxSize: number }) {
    this.normalize = opts.normalize;
    this.maxLine = opts.maxLineLength > 0 ? opts.maxLineLength : Infinity;
    this.maxSize = opts.maxSize;
  }

  get failed(): boolean {
    const p = this.problems;
    return p.tooBig || p.longLine || (!this.normalize && (p.bareLf || p.bareCr || p.nul));
  }

  /**
   * Feeds one chunk. Returns the index just past the end-of-data line when this chunk holds it
   * (the rest of the chunk is pipelined commands), or -1 when more data is needed.
   */
  feed(chunk: Uint8Array): number {
    let state = this.state;
    let spanStart = 0; // start of the run of octets to copy verbatim
    let lineLen = this.lineLen;
    const n = chunk.length;
    let i = 0;
    for (; i < n; i++) {
      const b = chunk[i] as number;
      switch (state) {
        case MID:
          if (b > 13 || (b !== 13 && b !== 10 && b !== 0)) {
            lineLen++;
            continue;
          }
          break;
        case LINE_START:
          if (b === 46) {
            // "." at a real line start: the stuffing dot, or the end-of-data line.
            this.copy(chunk, spanStart, i);
            spanStart = i + 1;
            state = DOT;
            lineLen = 1;
            continue;
          }
          state = MID;
          lineLen = 0;
          if (b > 13 || (b !== 13 && b !== 10 && b !== 0)) {
            lineLen++;
            continue;
          }
          break;
        case DOT:
          if (b === 13) {
            state = DOT_CR;
            spanStart = i + 1;
            continue;
          }
          // The dot was stuffing (already dropped); this octet starts the line's content. The
          // stuffing dot does not count towards the line length (RFC 5321 4.5.3.1.6).
          state = MID;
          lineLen = 0;
          if (b > 13 || (b !== 13 && b !== 10 && b !== 0)) {
            lineLen++;
            continue;
          }
          break;
        case DOT_CR:
          if (b === 10) {
            this.state = LINE_START;
            this.lineLen = 0;
            return i + 1;
          }
          // ".\r" then something else: a bare CR on a line whose dot was stuffing.
          this.bareCr();
          state = MID;
          lineLen = 1;
          spanStart = i;
          i--; // look at this octet again as line content
          continue;
        case CR:
          if (b === 10) {
            this.crlf();
            spanStart = i + 1;
            state = LINE_START;
            if (lineLen + 2 > this.maxLine) this.problems.longLine = true;
            lineLen = 0;
            continue;
          }
          // Bare CR: the line ends here when normalizing, but NOT at a real line start.
          this.bareCr();
          spanStart = i;
          state = MID;
          lineLen = 0;
          i--;
          continue;
      }
      // Special octet (CR, LF or NUL) in a line: b is one of 13, 10, 0.
      this.copy(chunk, spanStart, i);
      spanStart = i + 1;
      if (b === 13) {
        state = CR;
      } else if (b === 10) {
        this.problems.bareLf = true;
        if (this.normalize) this.crlf();
        state = MID; // deliberately not LINE_START
        lineLen = 0;
      } else {
        this.problems.nul = true; // dropped; the line is no longer at its start
        state = MID;
      }
      if (lineLen + 2 > this.maxLine) this.problems.longLine = true;
    }
    if (state === MID || state === LINE_START) this.copy(chunk, spanStart, n);
    if (lineLen + 2 > this.maxLine) this.problems.longLine = true;
    this.state = state;
    this.lineLen = lineLen;
    return -1;
  }

  /**
   * Takes the decoded octets produced so far. A partly used block is copied out and reused, so
   * a small message keeps only its own octets alive, not a 64 KiB block.
   */
  take(): Buffer[] {
    if (this.used > 0) {
      this.done.push(Buffer.from(this.block.subarray(0, this.used)));
      this.used = 0;
    }
    return this.done.splice(0);
  }

  private bareCr(): void {
    this.problems.bareCr = true;
    if (this.normalize) this.crlf();
  }

  private crlf(): void {
    if (!this.room(2)) return;
    this.append(CRLF, 0, 2);
    this.lines++;
  }

  private room(len: number): boolean {
    if (this.size + len > this.maxSize) {
      this.problems.tooBig = true;
      return false;
    }
    this.size += len;
    return true;
  }

  private copy(src: Uint8Array, start: number, end: number): void {
    const len = end - start;
    if (len > 0 && this.room(len)) this.append(src, start, len);
  }

  /** Appends octets to the output, starting a new block whenever one is full (even mid CR LF). */
  private append(src: Uint8Array, start: number, len: number): void {
    while (len > 0) {
      const space = BLOCK - this.used;
      if (space === 0) {
        this.done.push(this.block);
        this.block = Buffer.allocUnsafe(BLOCK);
        this.used = 0;
        continue;
      }
      const n = Math.min(space, len);
      this.block.set(src.subarray(start, start + n), this.used);
      this.used += n;
      start += n;
      len -= n;
    }
  }
}
