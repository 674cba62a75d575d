import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeaderBlockReader, headerValues, parseHeaderBlock } from './header-block.ts';

const msg = Buffer.from('Received: from x\r\n\tby y\r\nSubject: Hello\r\n  world\r\nX-Spam-Flag: YES\r\n\r\nbody line\r\n');

test('fields in order, raw and unfolded, with their octet ranges', () => {
  const h = parseHeaderBlock(msg);
  assert.deepEqual(
    h.fields.map((f) => [f.name, f.value]),
    [
      ['Received', 'from x\tby y'],
      ['Subject', 'Hello  world'],
      ['X-Spam-Flag', 'YES'],
    ],
  );
  const flag = h.fields[2]!;
  assert.equal(msg.toString('latin1', flag.start, flag.end), 'X-Spam-Flag: YES\r\n');
  assert.equal(flag.raw, 'X-Spam-Flag: YES\r\n');
  assert.equal(msg.toString('latin1', h.bodyOffset), 'body line\r\n');
  assert.equal(h.truncated, false);
  assert.deepEqual(headerValues(h.fields, 'subject'), ['Hello  world']);
});

test('a header block over the cap is truncated; a message without header has none', () => {
  const big = Buffer.from('A: ' + 'x'.repeat(100) + '\r\nB: ' + 'y'.repeat(100) + '\r\n\r\nbody\r\n');
  const h = parseHeaderBlock(big, 120);
  assert.deepEqual(h.fields.map((f) => f.name), ['A']);
  assert.equal(h.truncated, true);
  const none = parseHeaderBlock(Buffer.from('\r\nbody\r\n'));
  assert.deepEqual(none.fields, []);
  assert.equal(none.bodyOffset, 2);
});

test('a line that is not a field ends the header block', () => {
  const h = parseHeaderBlock(Buffer.from('Subject: a\r\nnot a header\r\nmore\r\n'));
  assert.deepEqual(h.fields.map((f) => f.name), ['Subject']);
  assert.equal(h.bodyOffset, 12);
});

test('the reader finds the end of the header block across chunk boundaries', () => {
  for (let cut = 1; cut < msg.length; cut++) {
    const r = new HeaderBlockReader();
    r.feed([msg.subarray(0, cut)]);
    r.feed([msg.subarray(cut)]);
    assert.equal(r.done, true);
    assert.deepEqual(r.result().fields.map((f) => f.name), ['Received', 'Subject', 'X-Spam-Flag'], `cut at ${cut}`);
  }
  const r = new HeaderBlockReader(64);
  r.feed([Buffer.from('A: ' + 'x'.repeat(80) + '\r\n'), Buffer.from('B: c\r\n\r\n')]);
  assert.equal(r.done, true);
  assert.equal(r.result().truncated, true);
});

test('mayHave: a quick look for a field name prefix, in any case, only in the header block', () => {
  const r = new HeaderBlockReader();
  r.feed([Buffer.from('Received: x\r\nx-SPAM-Flag: YES\r\n\r\nX-Spam-In-Body: no\r\n')]);
  assert.equal(r.mayHave('x-spam-'), true);
  const clean = new HeaderBlockReader();
  clean.feed([Buffer.from('Received: x\r\nSubject: X-Spam-Flag\r\n\r\nX-Spam-Flag: in the body\r\n')]);
  assert.equal(clean.mayHave('x-spam-'), false, 'a header value or the body does not count');
  const text = 'Received: x\r\nX-Spam-Flag: YES\r\n\r\nbody\r\n';
  for (let cut = 1; cut < text.length; cut++) {
    const split = new HeaderBlockReader();
    split.feed([Buffer.from(text.slice(0, cut)), Buffer.from(text.slice(cut))]);
    assert.equal(split.mayHave('x-spam-'), true, `split at ${cut}`);
  }
});
