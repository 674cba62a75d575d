import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DataDecoder } from './data-decoder.ts';
import { SMUGGLING_SEQUENCES } from '../../test/fixtures/smuggling.ts';
import { prng } from '../../test/harness/prng.ts';

const SEQUENCES = SMUGGLING_SEQUENCES;

function decoder(normalize = false, maxSize = 1 << 20, maxLineLength = 1000): DataDecoder {
  return new DataDecoder({ normalize, maxLineLength, maxSize });
}

/** Feeds `wire` in the given pieces; returns [decoded, end offset in wire or -1]. */
function decode(d: DataDecoder, pieces: Buffer[]): { out: Buffer; end: number } {
  let offset = 0;
  for (const p of pieces) {
    const end = d.feed(p);
    if (end !== -1) return { out: Buffer.concat(d.take()), end: offset + end };
    offset += p.length;
  }
  return { out: Buffer.concat(d.take()), end: -1 };
}

function splits(wire: Buffer): Buffer[][] {
  const all: Buffer[][] = [[wire]];
  for (let i = 1; i < wire.length; i++) all.push([wire.subarray(0, i), wire.subarray(i)]);
  all.push([...wire].map((b) => Buffer.from([b]))); // one octet at a time
  return all;
}

test('un-stuffs dots and stops at CRLF.CRLF, for every split position', () => {
  const wire = Buffer.from('Subject: x\r\n\r\n..leading dot\r\n...two\r\n.\r\nQUIT\r\n');
  const expected = 'Subject: x\r\n\r\n.leading dot\r\n..two\r\n';
  for (const pieces of splits(wire)) {
    const { out, end } = decode(decoder(), pieces);
    assert.equal(out.toString(), expected);
    assert.equal(wire.subarray(end).toString(), 'QUIT\r\n');
  }
});

test('an empty message ends at a first line of "."', () => {
  const d = decoder();
  assert.equal(d.feed(Buffer.from('.\r\nNOOP\r\n')), 3);
  assert.equal(d.size, 0);
});

test('no smuggling sequence ends DATA, in reject and normalize mode, at any split', () => {
  for (const seq of SEQUENCES) {
    const wire = Buffer.from(`Subject: hi\r\n\r\nbody${seq}MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nsmuggled\r\n.\r\n`, 'latin1');
    const realEnd = wire.length;
    for (const normalize of [false, true]) {
      for (const pieces of splits(wire)) {
        const d = decoder(normalize);
        const { out, end } = decode(d, pieces);
        assert.equal(end, realEnd, `sequence ${JSON.stringify(seq)} ended DATA early (normalize=${normalize})`);
        assert.ok(out.includes('MAIL FROM:<evil@x.test>'), 'the smuggled text stays inside the one message');
        const p = d.problems;
        assert.ok(p.bareCr || p.bareLf || p.nul, `sequence ${JSON.stringify(seq)} must be flagged`);
        assert.equal(d.failed, !normalize);
        if (normalize) {
          // Normalized output has no bare CR, bare LF or NUL.
          const text = out.toString('latin1');
          assert.doesNotMatch(text.replace(/\r\n/g, ''), /[\r\n\0]/);
        }
      }
    }
  }
});

test('bare LF alone is flagged, and normalized to CRLF', () => {
  const d = decoder(true);
  const { out } = decode(d, [Buffer.from('a\nb\r\n.\r\n')]);
  assert.equal(out.toString(), 'a\r\nb\r\n');
  assert.ok(d.problems.bareLf);
  assert.equal(d.failed, false);
});

test('long lines are flagged at the limit, counting CRLF', () => {
  const ok = decoder(false, 1 << 20, 100);
  decode(ok, [Buffer.from('x'.repeat(98) + '\r\n.\r\n')]);
  assert.equal(ok.problems.longLine, false);
  const long = decoder(false, 1 << 20, 100);
  decode(long, [Buffer.from('x'.repeat(60)), Buffer.from('x'.repeat(39) + '\r\n.\r\n')]);
  assert.equal(long.problems.longLine, true);
});

test('maxLineLength 0 is no limit: a 5000-octet line passes unchanged', () => {
  const line = 'y'.repeat(5000) + '\r\n';
  const d = decoder(false, 1 << 20, 0);
  const { out } = decode(d, [Buffer.from(line + '.\r\n')]);
  assert.equal(d.problems.longLine, false);
  assert.equal(d.failed, false);
  assert.equal(out.toString(), line);
});

test('size limit stops output but still finds the end', () => {
  const d = decoder(false, 50);
  const { end } = decode(d, [Buffer.from('y'.repeat(40) + '\r\n' + 'z'.repeat(40) + '\r\n.\r\n')]);
  assert.notEqual(end, -1);
  assert.ok(d.problems.tooBig);
  assert.ok(d.size <= 50);
});

test('large messages cross the 64 KiB output block boundary intact', () => {
  const line = 'abcdefghij'.repeat(7) + '\r\n';
  const body = line.repeat(3000);
  const wire = Buffer.from(body + '.\r\n');
  const pieces: Buffer[] = [];
  for (let i = 0; i < wire.length; i += 7919) pieces.push(wire.subarray(i, i + 7919));
  const { out, end } = decode(decoder(false, 1 << 24), pieces);
  assert.equal(end, wire.length);
  assert.equal(out.toString(), body);
});

test('random input never throws and never ends before a real CRLF.CRLF', () => {
  const rand = prng(42);
  const alphabet = [13, 10, 46, 0, 97, 32];
  for (let n = 0; n < 3000; n++) {
    const len = Math.floor(rand() * 60);
    const bytes = Buffer.from(Array.from({ length: len }, () => alphabet[Math.floor(rand() * alphabet.length)] as number));
    const d = decoder(rand() < 0.5);
    const end = d.feed(bytes);
    if (end !== -1) {
      const wire = Buffer.concat([Buffer.from('\r\n'), bytes.subarray(0, end)]);
      assert.equal(wire.subarray(-5).toString('latin1'), '\r\n.\r\n', `ended on ${JSON.stringify(bytes.toString('latin1'))}`);
    }
  }
});

// --- the 64 KiB output block boundary (issue 8, defect 1) -----------------------------------
// A line end whose CR or LF lands on the last octets of an output block once threw (421) or,
// when the network read ended right there, lost the LF. These inputs put a line end at every
// offset within a few octets of each block boundary, chunked at random, and compare the output
// with a plain reference decoding byte for byte.

const BLOCK = 64 * 1024;

interface Line {
  readonly text: string;
  /** How the client ended it: a real CRLF, or (normalize mode only) a bare LF. */
  readonly end: '\r\n' | '\n';
}

/** Lines whose decoded CR lands at `BLOCK*k + skew` for every skew in -4..4, blocks long. */
function boundaryLines(rand: () => number, blocks: number, bareLf: boolean): Line[] {
  const lines: Line[] = [];
  let out = 0; // decoded octets so far
  let skew = -4;
  while (out < blocks * BLOCK) {
    const nextBoundary = (Math.floor(out / BLOCK) + 1) * BLOCK;
    let len = 1 + Math.floor(rand() * 997);
    if (nextBoundary - out < 1100) {
      // Aim this line's CR at the boundary plus skew (cycling through -4..4).
      len = nextBoundary + skew - out;
      skew = skew === 4 ? -4 : skew + 1;
      if (len < 0) len = 0;
    }
    const dot = rand() < 0.1;
    let text = (dot ? '.' : '') + randomText(rand, Math.max(0, len - (dot ? 1 : 0)));
    const end = bareLf && rand() < 0.2 ? '\n' : '\r\n';
    // A line after a bare LF is not at a real line start: keep it dot-free to keep the reference simple.
    if (lines.at(-1)?.end === '\n' && text.startsWith('.')) text = 'x' + text.slice(1);
    lines.push({ text, end });
    out += text.length + 2;
  }
  return lines;
}

function randomText(rand: () => number, len: number): string {
  let s = '';
  for (let i = 0; i < len; i++) s += String.fromCharCode(32 + Math.floor(rand() * 95));
  return s;
}

/** What the client sends: dot-stuffing after each real line start, then CRLF.CRLF. */
function wireOf(lines: Line[]): Buffer {
  let atStart = true;
  const parts: string[] = [];
  for (const l of lines) {
    parts.push((atStart && l.text.startsWith('.') ? '.' : '') + l.text + l.end);
    atStart = l.end === '\r\n';
  }
  if (!atStart) parts.push('\r\n'); // the end-of-data line must follow a real CRLF
  parts.push('.\r\n');
  return Buffer.from(parts.join(''), 'latin1');
}

/** The reference decoding: every line with CRLF, dots as the client wrote them. */
function expectedOf(lines: Line[]): Buffer {
  let s = lines.map((l) => l.text + '\r\n').join('');
  if (lines.at(-1)?.end === '\n') s += '\r\n';
  return Buffer.from(s, 'latin1');
}

function randomPieces(rand: () => number, wire: Buffer): Buffer[] {
  const pieces: Buffer[] = [];
  for (let i = 0; i < wire.length; ) {
    const r = rand();
    // Mostly network-sized reads, sometimes tiny ones that end right after a CR or an LF.
    const n = r < 0.3 ? 1 + Math.floor(rand() * 4) : r < 0.6 ? 1 + Math.floor(rand() * 2000) : 1 + Math.floor(rand() * 70000);
    pieces.push(wire.subarray(i, i + n));
    i += n;
  }
  return pieces;
}

test('line ends on every offset around the 64 KiB block boundary, at random chunkings, decode byte for byte', () => {
  const rand = prng(8);
  for (let round = 0; round < 40; round++) {
    const normalize = round % 2 === 1;
    const lines = boundaryLines(rand, 3 + (round % 4), normalize);
    const wire = wireOf(lines);
    const expected = expectedOf(lines);
    for (let k = 0; k < 3; k++) {
      const d = decoder(normalize, 1 << 26, 1 << 20);
      const { out, end } = decode(d, randomPieces(rand, wire));
      assert.equal(end, wire.length, `round ${round}: end of data`);
      assert.equal(d.failed, false, `round ${round}: ${JSON.stringify(d.problems)}`);
      assert.equal(d.size, expected.length);
      assert.ok(out.equals(expected), `round ${round}: decoded output differs at octet ${firstDifference(out, expected)}`);
    }
  }
});

test('a read that ends right after a CR LF on the block boundary keeps the LF', () => {
  for (let skew = -3; skew <= 3; skew++) {
    const line = 'a'.repeat(BLOCK - 2 + skew);
    const wire = Buffer.from(`${line}\r\nnext\r\n.\r\n`);
    const cut = line.length + 2; // the read ends just after the CR LF
    const d = decoder(false, 1 << 26, 1 << 20);
    const { out, end } = decode(d, [wire.subarray(0, cut), wire.subarray(cut)]);
    assert.equal(end, wire.length);
    assert.equal(out.toString(), `${line}\r\nnext\r\n`, `skew ${skew}`);
  }
});

function firstDifference(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

test('the stuffing dot does not count towards the line length limit (RFC 5321 4.5.3.1.6)', () => {
  const ok = decoder(false, 1 << 20, 1000);
  decode(ok, [Buffer.from('..' + 'x'.repeat(997) + '\r\n.\r\n')]); // 998 octets of text, 1001 on the wire
  assert.equal(ok.problems.longLine, false);
  const long = decoder(false, 1 << 20, 1000);
  decode(long, [Buffer.from('..' + 'x'.repeat(998) + '\r\n.\r\n')]); // 999 octets of text
  assert.equal(long.problems.longLine, true);
});
