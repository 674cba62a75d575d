import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DotStuffer, dotStuff, dotStuffChunks, dotUnstuff } from './dotstuff.ts';
import { prng } from '../../test/harness/prng.ts';
import { SMUGGLING_SEQUENCES } from '../../test/fixtures/smuggling.ts';

const EOD = '\r\n.\r\n';

function stuffInChunks(input: Buffer, cuts: readonly number[]): Buffer {
  const st = new DotStuffer();
  const parts: Buffer[] = [];
  let prev = 0;
  for (const c of [...cuts, input.length]) {
    parts.push(st.push(input.subarray(prev, c)));
    prev = c;
  }
  parts.push(st.end());
  return Buffer.concat(parts);
}

/** Describes the first wire-safety violation, or returns null. */
function wireProblem(out: Buffer): string | null {
  const s = out.toString('latin1');
  if (s.includes('\0')) return 'NUL on the wire';
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\r' && s[i + 1] !== '\n') return `bare CR at ${i}`;
    if (s[i] === '\n' && s[i - 1] !== '\r') return `bare LF at ${i}`;
  }
  // DATA's 354 leaves us at a line start, so prefix a CRLF to see an EOD at offset 0 too.
  const framed = '\r\n' + s;
  const first = framed.indexOf(EOD);
  if (first !== framed.length - EOD.length) return `end-of-data at ${first - 2}, expected only at the end`;
  return null;
}

/** The reference normalisation: CRLF, lone CR and lone LF become CRLF; NULs are dropped. */
function normalize(input: Buffer): Buffer {
  const s = input.toString('latin1').replace(/\r\n|\r|\n/g, '\r\n').replace(/\0/g, '');
  return Buffer.from(s, 'latin1');
}

function expectedUnstuffed(input: Buffer): Buffer {
  const n = normalize(input);
  if (n.length === 0) return n;
  return n.subarray(n.length - 2).toString('latin1') === '\r\n' ? n : Buffer.concat([n, Buffer.from('\r\n')]);
}

test('plain message: stuffing, terminator, round trip', () => {
  const msg = Buffer.from('Subject: x\r\n\r\n.hello\r\n..\r\n.\r\nend\r\n');
  const out = dotStuff(msg);
  assert.equal(out.toString(), 'Subject: x\r\n\r\n..hello\r\n...\r\n..\r\nend\r\n.\r\n');
  assert.deepEqual(dotUnstuff(out), msg);
});

test('a message without a final CRLF gets one before the dot', () => {
  assert.equal(dotStuff(Buffer.from('a\r\nb')).toString(), 'a\r\nb\r\n.\r\n');
  assert.equal(dotStuff(Buffer.from('a\r\nb\r')).toString(), 'a\r\nb\r\n.\r\n');
  assert.equal(dotStuff(Buffer.alloc(0)).toString(), '.\r\n');
});

test('bare CR, bare LF and NUL are normalised', () => {
  assert.equal(dotStuff(Buffer.from('a\nb\rc\0d\r\n')).toString(), 'a\r\nb\r\ncd\r\n.\r\n');
  assert.equal(dotStuff(Buffer.from('\0.x\r\n')).toString(), '..x\r\n.\r\n');
});

test('every smuggling sequence at every split position yields exactly one end-of-data', () => {
  const seqs = SMUGGLING_SEQUENCES;
  assert.ok(seqs.length >= 10, `expected the fixture's sequences, got ${seqs.length}`);
  let cases = 0;
  for (const seq of seqs) {
    const contexts = [
      `Subject: t\r\n\r\nbefore${seq}after\r\n`,
      `Subject: t\r\n\r\nbefore${seq}`,
      `${seq}MAIL FROM:<evil@x.test>\r\n`,
      `x\r\n${seq}${seq}.${seq}\r\n.\r\nRCPT TO:<v@y.test>${seq}`,
    ];
    for (const ctx of contexts) {
      const input = Buffer.from(ctx, 'latin1');
      const whole = stuffInChunks(input, []);
      for (let i = 0; i <= input.length; i++) {
        const out = stuffInChunks(input, [i]);
        const problem = wireProblem(out);
        assert.equal(problem, null, `seq ${JSON.stringify(seq)} in ${JSON.stringify(ctx)} split at ${i}: ${problem}`);
        assert.deepEqual(out, whole, `split at ${i} changed the output`);
        cases++;
      }
      // One byte per chunk: every boundary at once.
      const cuts = Array.from({ length: input.length }, (_, k) => k);
      assert.deepEqual(stuffInChunks(input, cuts), whole);
      assert.deepEqual(dotUnstuff(whole), expectedUnstuffed(input));
    }
  }
  assert.ok(cases > 500);
});


test('property: un-stuffing gives back the CRLF-normalised input (seeded, bounded)', () => {
  const alphabet = [13, 10, 46, 0, 97, 98, 32, 13, 10, 46];
  const deadline = Date.now() + 3000;
  for (let seed = 1; seed <= 3000 && Date.now() < deadline; seed++) {
    const rnd = prng(seed);
    const len = Math.floor(rnd() * 200);
    const input = Buffer.alloc(len);
    for (let i = 0; i < len; i++) {
      input[i] = rnd() < 0.85 ? (alphabet[Math.floor(rnd() * alphabet.length)] as number) : Math.floor(rnd() * 256);
    }
    const cuts: number[] = [];
    for (let c = 0; c < len; c += 1 + Math.floor(rnd() * 8)) cuts.push(c);
    const out = stuffInChunks(input, cuts);
    const problem = wireProblem(out);
    assert.equal(problem, null, `seed ${seed}: ${problem}`);
    assert.deepEqual(dotUnstuff(out), expectedUnstuffed(input), `seed ${seed}`);
  }
});

test('dotStuffChunks puts the terminator into the last buffer', async () => {
  async function* src(): AsyncGenerator<Buffer> {
    yield Buffer.from('a\r\n.b\r');
    yield Buffer.from('\n');
    yield Buffer.alloc(0);
    yield Buffer.from('last line');
  }
  const got: Buffer[] = [];
  for await (const b of dotStuffChunks(src())) got.push(b);
  assert.equal(Buffer.concat(got).toString(), 'a\r\n..b\r\nlast line\r\n.\r\n');
  assert.equal(got.at(-1)?.toString(), 'last line\r\n.\r\n');

  async function* empty(): AsyncGenerator<Buffer> {}
  const e: Buffer[] = [];
  for await (const b of dotStuffChunks(empty())) e.push(b);
  assert.deepEqual(e.map((b) => b.toString()), ['.\r\n']);
});

test('large CRLF message is stuffed quickly and without copying clean lines', () => {
  const line = 'x'.repeat(76) + '\r\n';
  const big = Buffer.from(('.' + line + line.repeat(9)).repeat(2000)); // ~1.5 MiB
  const t0 = performance.now();
  const out = dotStuff(big);
  const ms = performance.now() - t0;
  assert.equal(out.length, big.length + 2000 + 3);
  assert.ok(ms < 500, `took ${ms} ms`);
  const clean = Buffer.from(line.repeat(1000));
  const st = new DotStuffer();
  assert.equal(st.push(clean).buffer, clean.buffer, 'clean input should pass through as a view');
});
