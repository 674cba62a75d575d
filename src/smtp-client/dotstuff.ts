// Streaming dot-stuffing for the DATA phase (RFC 5321 4.5.2), with line-end normalisation.
//
// Defence against SMTP smuggling: the output never holds a bare CR, a bare LF or a NUL, so the
// only CRLF.CRLF a downstream can ever see is the real end of data we append. Bare CR and bare LF
// become CRLF and NULs are dropped, before the line-start check, so "\r\n\0.\r\n" is stuffed too.

const CR = 13;
const LF = 10;
const NUL = 0;
const DOT = 46;

const CRLF = Buffer.from('\r\n', 'latin1');
const DOT_BUF = Buffer.from('.', 'latin1');
const EOD_AT_LINE_START = Buffer.from('.\r\n', 'latin1');
const EOD_AFTER_PARTIAL_LINE = Buffer.from('\r\n.\r\n', 'latin1');

/**
 * Feed raw message chunks with push(); chunk boundaries may fall anywhere (between CR and LF,
 * just before a leading '.'). end() returns the tail plus the end-of-data marker.
 * Output buffers may share memory with the input chunks: do not reuse input buffers.
 */
export class DotStuffer {
  /** The next output byte starts a line (true at the start: it follows DATA's 354). */
  #atLineStart = true;
  /** The previous chunk ended in CR; whether it was bare depends on the next byte. */
  #pendingCR = false;
  #ended = false;

  push(chunk: Buffer): Buffer {
    if (this.#ended) throw new Error('DotStuffer: push after end');
    const n = chunk.length;
    if (n === 0) return chunk;
    const parts: Buffer[] = [];
    let pos = 0;
    if (this.#pendingCR) {
      // Either way the CR ends a line: CRLF if the LF came now, a bare CR turned into CRLF if not.
      parts.push(CRLF);
      this.#pendingCR = false;
      this.#atLineStart = true;
      if (chunk[0] === LF) pos = 1;
    }
    let runStart = pos;
    let nextCR = chunk.indexOf(CR, pos);
    let nextLF = chunk.indexOf(LF, pos);
    let nextNUL = chunk.indexOf(NUL, pos);

    while (pos < n) {
      if (this.#atLineStart) {
        // NULs are dropped, so a '.' after them is what starts the line.
        while (pos < n && chunk[pos] === NUL) {
          if (pos > runStart) parts.push(chunk.subarray(runStart, pos));
          pos += 1;
          runStart = pos;
        }
        if (pos >= n) break;
        if (chunk[pos] === DOT) {
          if (pos > runStart) parts.push(chunk.subarray(runStart, pos));
          parts.push(DOT_BUF);
          runStart = pos; // the original dot follows as part of the run
        }
        this.#atLineStart = false;
      }
      // Each cached position is only recomputed once the scan has passed it: O(n) overall.
      if (nextCR !== -1 && nextCR < pos) nextCR = chunk.indexOf(CR, pos);
      if (nextLF !== -1 && nextLF < pos) nextLF = chunk.indexOf(LF, pos);
      if (nextNUL !== -1 && nextNUL < pos) nextNUL = chunk.indexOf(NUL, pos);
      const s = minPos(minPos(nextCR, nextLF), nextNUL);
      if (s === -1) break; // the rest of the chunk is plain line content
      const b = chunk[s];
      if (b === NUL) {
        if (s > runStart) parts.push(chunk.subarray(runStart, s));
        pos = s + 1;
        runStart = pos;
      } else if (b === CR && s + 1 < n && chunk[s + 1] === LF) {
        pos = s + 2; // a proper CRLF: stays in the run, no copy
        this.#atLineStart = true;
      } else if (b === CR && s + 1 === n) {
        // CR at the end of the chunk: whether it is bare depends on the next chunk.
        if (s > runStart) parts.push(chunk.subarray(runStart, s));
        this.#pendingCR = true;
        pos = n;
        runStart = n;
      } else {
        // A bare CR or a bare LF (a CRLF pair was consumed above): it becomes CRLF.
        if (s > runStart) parts.push(chunk.subarray(runStart, s));
        parts.push(CRLF);
        pos = s + 1;
        runStart = pos;
        this.#atLineStart = true;
      }
    }
    if (n > runStart) parts.push(chunk.subarray(runStart, n));
    if (parts.length === 1) return parts[0] as Buffer;
    return Buffer.concat(parts);
  }

  /** The bytes that finish the data: a pending line end, a CRLF if the last line is open, and ".\r\n". */
  end(): Buffer {
    if (this.#ended) throw new Error('DotStuffer: end called twice');
    this.#ended = true;
    if (this.#pendingCR) return EOD_AFTER_PARTIAL_LINE;
    return this.#atLineStart ? EOD_AT_LINE_START : EOD_AFTER_PARTIAL_LINE;
  }
}

function minPos(a: number, b: number): number {
  if (a === -1) return b;
  if (b === -1) return a;
  return a < b ? a : b;
}

/**
 * Dot-stuffs a whole message stream. The end-of-data marker is part of the LAST yielded buffer,
 * so a writer sends it together with the last data (no tiny separate segment, no Nagle stall).
 * Empty results are skipped; at least one buffer is always yielded.
 */
export async function* dotStuffChunks(src: AsyncIterable<Buffer>): AsyncGenerator<Buffer, void, undefined> {
  const st = new DotStuffer();
  let held: Buffer | null = null;
  for await (const chunk of src) {
    const out = st.push(chunk);
    if (out.length === 0) continue;
    if (held !== null) yield held;
    held = out;
  }
  const tail = st.end();
  yield held === null ? tail : Buffer.concat([held, tail]);
}

/** Dot-stuffs a complete message in memory (tests, small messages). */
export function dotStuff(message: Buffer): Buffer {
  const st = new DotStuffer();
  const body = st.push(message);
  return Buffer.concat([body, st.end()]);
}

/**
 * The receiving side's inverse, for tests: takes wire bytes ending in CRLF.CRLF (or a lone ".\r\n"
 * for an empty message) and returns the message with leading dots removed. Throws if the terminator is missing.
 */
export function dotUnstuff(wire: Buffer): Buffer {
  let body: Buffer;
  if (wire.equals(EOD_AT_LINE_START)) return Buffer.alloc(0);
  if (wire.length >= 5 && wire.subarray(wire.length - 5).equals(EOD_AFTER_PARTIAL_LINE)) {
    body = wire.subarray(0, wire.length - 3); // keep the CRLF that ends the last line
  } else {
    throw new Error('dotUnstuff: no end-of-data marker');
  }
  const parts: Buffer[] = [];
  let lineStart = 0;
  while (lineStart < body.length) {
    const lf = body.indexOf(LF, lineStart);
    const lineEnd = lf === -1 ? body.length : lf + 1;
    const from = body[lineStart] === DOT ? lineStart + 1 : lineStart;
    parts.push(body.subarray(from, lineEnd));
    lineStart = lineEnd;
  }
  return Buffer.concat(parts);
}
