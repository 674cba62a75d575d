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
