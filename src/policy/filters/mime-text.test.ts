import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseHeaderBlock } from '../../mail/header-block.ts';
import { decodedText, decodeEntities, decodeMimeWords, decodeQuotedPrintable, htmlToText, MAX_DEPTH, parseContentType } from './mime-text.ts';
import type { ScanMessage } from './types.ts';

/** A ScanMessage from a whole message written with \n lines (sent as CRLF). */
function scan(message: string | Buffer, cap = 256 * 1024): ScanMessage {
  const buf = typeof message === 'string' ? Buffer.from(message.replace(/\r?\n/g, '\r\n'), 'utf8') : message;
  const h = parseHeaderBlock(buf);
  const body = buf.subarray(h.bodyOffset);
  return {
    headers: h.fields,
    headersTruncated: h.truncated,
    rawBody: body.subarray(0, cap),
    bodyTruncated: body.length > cap,
    size: buf.length,
    lines: buf.toString('latin1').split('\n').length,
  };
}

test('plain text without Content-Type: Subject first, paragraphs one a line, white space collapsed', () => {
  const d = decodedText(scan('Subject: Hello  there\n\nFirst   line\nsame paragraph\n\n\n  Second\tparagraph\n'));
  assert.equal(d.body, 'Hello there\nFirst line same paragraph\nSecond paragraph');
  assert.equal(d.rawbody, 'First   line\r\nsame paragraph\r\n\r\n\r\n  Second\tparagraph\r\n');
  assert.deepEqual(d.uris, []);
});

test('memoized per message', () => {
  const msg = scan('Subject: x\n\nbody\n');
  assert.equal(decodedText(msg), decodedText(msg));
});

test('quoted-printable and base64 text parts, charsets utf-8, latin1, and others by TextDecoder', () => {
  const qp = decodedText(scan('Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\nCaf=C3=A9 =\nsoft break, =3D sign\n'));
  assert.equal(qp.body, 'Café soft break, = sign');
  const latin1 = decodedText(scan('Content-Type: text/plain; charset="ISO-8859-1"\nContent-Transfer-Encoding: quoted-printable\n\nCaf=E9\n'));
  assert.equal(latin1.body, 'Café');
  const b64 = decodedText(scan(`Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n${Buffer.from('Grüße aus Köln').toString('base64')}\n`));
  assert.equal(b64.body, 'Grüße aus Köln');
  const koi8 = Buffer.concat([Buffer.from('Content-Type: text/plain; charset=koi8-r\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'), Buffer.from([0xf0, 0xd2, 0xc9, 0xd7, 0xc5, 0xd4])]);
  assert.equal(decodedText(scan(koi8)).body, 'Привет');
  const unknown = decodedText(scan('Content-Type: text/plain; charset=x-no-such-charset\n\nplain ascii\n'));
  assert.equal(unknown.body, 'plain ascii');
});

test('bad base64 and bad quoted-printable never throw: junk is skipped / kept as written', () => {
  const b64 = decodedText(scan('Content-Transfer-Encoding: base64\n\nSGVsbG8*gV29y!bGQ=\n%%%\n'));
  assert.match(b64.body, /^Hello World/);
  assert.equal(decodeQuotedPrintable('a=ZZb=4').toString('latin1'), 'a=ZZb=4');
  assert.equal(decodeQuotedPrintable('=41=4a=').toString('latin1'), 'AJ=');
});

test('multipart/alternative: both parts; HTML rendered (tags, entities, script/style dropped); rawbody keeps HTML', () => {
  const msg = scan(`Subject: =?utf-8?Q?Caf=C3=A9?= offer
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="b1"

preamble is ignored
--b1
Content-Type: text/plain; charset=us-ascii

Buy now at http://plain.example/buy.
--b1
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

<html><head><style>p {color: red}</style><script>var hidden =3D "SCRIPT";</script></head>
<body><p>Cheap &amp; <b>fast</b> &#x263A; &eacute;</p><!-- a comment --><a href=3D"http://html.example/x?a=3D1&amp;b=3D2">click</a>
<img src=3D'https://img.example/p.gif'></body></html>
--b1--
epilogue is ignored
`);
  const d = decodedText(msg);
  assert.equal(d.body, 'Café offer\nBuy now at http://plain.example/buy.\nCheap & fast ☺ é\nclick');
  assert.match(d.rawbody, /<b>fast<\/b>/);
  assert.doesNotMatch(d.body, /SCRIPT|color|comment|preamble|epilogue/);
  assert.deepEqual(d.uris.sort(), ['http://html.example/x?a=1&b=2', 'http://plain.example/buy', 'https://img.example/p.gif']);
});

test('bare www. links become http:// URIs; trailing punctuation is not part of a link', () => {
  const d = decodedText(scan('\nSee www.example.test/offer, or (https://x.example/a?b=c).\n'));
  assert.deepEqual(d.uris, ['http://www.example.test/offer', 'https://x.example/a?b=c']);
});

test('non-text parts are skipped; a part without Content-Type is text/plain', () => {
  const d = decodedText(scan(`Content-Type: multipart/mixed; boundary=XYZ

--XYZ

no header at all, plain text
--XYZ
Content-Type: image/png
Content-Transfer-Encoding: base64

${Buffer.from('IMAGEDATA secret words').toString('base64')}
--XYZ
Content-Type: application/pdf

pdf words
--XYZ--
`));
  assert.equal(d.body, 'no header at all, plain text');
});

test('a multipart whose boundary never appears is read as text/plain', () => {
  assert.equal(decodedText(scan('Content-Type: multipart/mixed; boundary="nope"\n\nhidden spam text\n')).body, 'hidden spam text');
  assert.equal(decodedText(scan('Content-Type: multipart/mixed\n\nno boundary parameter\n')).body, 'no boundary parameter');
});

test('an unterminated last part runs to the end of the (capped) body', () => {
  const d = decodedText(scan('Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nfirst\n--b\n\nsecond, never closed\n'));
  assert.equal(d.body, 'first\nsecond, never closed');
});

test('boundary odd cases: trailing white space, a longer boundary sharing the prefix, case of "BOUNDARY="', () => {
  const d = decodedText(scan(`Content-Type: Multipart/Mixed; BOUNDARY="outer"

--outer   
Content-Type: multipart/alternative; boundary="outer-inner"

--outer-inner
Content-Type: text/plain

inner text
--outer-inner--
--outer
Content-Type: text/plain

second
--outer--
`));
  assert.equal(d.body, 'inner text\nsecond');
});

test('folded part headers', () => {
  const d = decodedText(scan(`Content-Type: multipart/mixed;
 boundary="fold"

--fold
Content-Type: text/plain;
\tcharset="utf-8"
Content-Transfer-Encoding:
 base64

${Buffer.from('folded ✓').toString('base64')}
--fold--
`));
  assert.equal(d.body, 'folded ✓');
});

test('message/rfc822 parts are descended into', () => {
  const d = decodedText(scan(`Content-Type: multipart/mixed; boundary=m

--m
Content-Type: text/plain

outer
--m
Content-Type: message/rfc822

Subject: inner subject is not body text
Content-Type: text/html

<p>inner <i>html</i></p>
--m--
`));
  assert.equal(d.body, 'outer\ninner html');
});

test('nesting deeper than the cap is not descended (and does not overflow the stack)', () => {
  let body = 'deep text\n';
  for (let i = 0; i < 5000; i++) body = `--b${i}\nContent-Type: multipart/mixed; boundary=b${i + 1}\n\n${body}`;
  const d = decodedText(scan(`Content-Type: multipart/mixed; boundary=b0\n\n${body}`));
  assert.ok(!d.body.includes('deep text'));
  assert.ok(MAX_DEPTH < 5000);
});

test('many parts: bounded, and fast', () => {
  const parts = Array.from({ length: 20000 }, (_, i) => `--p\nContent-Type: text/plain\n\npart ${i}\n`).join('');
  const t = performance.now();
  const d = decodedText(scan(`Content-Type: multipart/mixed; boundary=p\n\n${parts}--p--\n`));
  assert.ok(performance.now() - t < 1000);
  assert.ok(d.body.split('\n').length < 1000);
});

test('hostile HTML and headers stay linear: unclosed quotes, runs of dots, parameters without =', () => {
  const n = 200_000;
  const t = performance.now();
  htmlToText(`<a ${'href="'.repeat(n / 6)}>`);
  htmlToText(`<a${' x'.repeat(n / 2)}`);
  decodedText(scan(`\nhttp://x.example/${'.'.repeat(n)}y\n`));
  parseContentType(`text/plain; ${'a'.repeat(n)}`);
  decodeMimeWords(`=?utf-8?B?${'A'.repeat(n)}`);
  assert.ok(performance.now() - t < 1000, `took ${performance.now() - t} ms`);
});

test('entities and encoded words', () => {
  assert.equal(decodeEntities('&lt;&#65;&#x42;&nbsp;&unknown;&#0;'), '<AB &unknown;\ufffd');
  assert.equal(decodeMimeWords('=?iso-8859-1?Q?Caf=E9?= =?utf-8?B?4pi6?= plain'), 'Café☺ plain');
});

test('never more text than the scanned body, per part', () => {
  const msg = scan('Content-Transfer-Encoding: quoted-printable\n\n' + '=41'.repeat(1000) + '\n', 100);
  const d = decodedText(msg);
  assert.ok(d.rawbody.length <= msg.rawBody.length);
});
