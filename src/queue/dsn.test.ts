import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildBounce, buildSuccessReport, shouldBounce, statusOf } from './dsn.ts';
import { rfc5322Date } from '../util/date.ts';
import type { RcptResult } from '../mail/transport.ts';

interface Part {
  headers: Map<string, string>;
  body: string;
}

/** Header fields of a block: unfolded, names lower-cased (the last one wins). */
function parseFields(block: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of block.replace(/\r\n(?=[ \t])/g, '').split('\r\n')) {
    if (line === '') continue;
    const i = line.indexOf(':');
    assert.ok(i > 0, `not a header field: ${JSON.stringify(line)}`);
    out.set(line.slice(0, i).toLowerCase(), line.slice(i + 1).trim());
  }
  return out;
}

function splitHead(s: string): Part {
  const i = s.indexOf('\r\n\r\n');
  assert.ok(i !== -1, 'no empty line after the headers');
  return { headers: parseFields(s.slice(0, i)), body: s.slice(i + 4) };
}

function parseMultipart(raw: string): { top: Map<string, string>; parts: Part[] } {
  const { headers: top, body } = splitHead(raw);
  const ct = top.get('content-type') ?? '';
  const m = /boundary="([^"]+)"/.exec(ct);
  assert.ok(m?.[1], `no boundary in ${ct}`);
  const b = m[1];
  const close = body.indexOf(`\r\n--${b}--`);
  assert.ok(close !== -1, 'no closing boundary');
  // Skip the preamble up to the first delimiter line.
  const first = body.indexOf(`--${b}\r\n`);
  assert.ok(first !== -1, 'no first delimiter');
  const inner = body.slice(first + b.length + 4, close).split(`\r\n--${b}\r\n`);
  return { top, parts: inner.map((p) => (p.startsWith('\r\n') ? { headers: new Map(), body: p.slice(2) } : splitHead(p))) };
}

const headers = Buffer.from(
  'Received: from client.example (client.example [192.0.2.1])\r\n\tby mx.example.test with ESMTP id 4ABC\r\n' +
    'From: Sender <sender@example.org>\r\nTo: alice@example.test, nobody@example.test\r\nSubject: hello\r\n' +
    'Message-ID: <orig@example.org>\r\n',
);

const failed: RcptResult[] = [
  { rcpt: 'nobody@example.test', status: 'perm', code: 550, text: '5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in virtual mailbox table' },
  { rcpt: 'slow@example.test', status: 'temp', code: 451, text: 'try later' },
  { rcpt: 'ok@example.test', status: 'ok', code: 250, text: '2.0.0 Ok' },
];

test('shouldBounce: never to the null sender', () => {
  assert.equal(shouldBounce(''), false);
  assert.equal(shouldBounce('<>'), false);
  assert.equal(shouldBounce('  '), false);
  assert.equal(shouldBounce('a@example.org'), true);
});

test('statusOf: enhanced code from the text, else derived from the reply code', () => {
  assert.equal(statusOf({ code: 550, text: '5.1.1 User unknown' }), '5.1.1');
  assert.equal(statusOf({ code: 552, text: '5.03.004 too big' }), '5.3.4');
  assert.equal(statusOf({ code: 550, text: 'User unknown' }), '5.0.0');
  assert.equal(statusOf({ code: 451, text: 'later' }), '4.0.0');
  assert.equal(statusOf({ code: 421, text: '4.4.1 connect to x failed' }), '4.4.1');
  assert.equal(statusOf({ code: 550, text: '4.1.1 class mismatch' }), '5.0.0');
  assert.equal(statusOf({ code: 554, text: '5.7.1x not a code' }), '5.0.0');
});

test('rfc5322Date', () => {
  assert.equal(rfc5322Date(Date.UTC(2025, 10, 2, 3, 4, 5)), 'Sun, 2 Nov 2025 03:04:05 +0000');
});

test('buildBounce: RFC 3464 structure parses back', () => {
  const receivedAt = Date.UTC(2025, 10, 22, 2, 55, 0);
  const now = receivedAt + 60_000;
  const b = buildBounce({
    reportingMta: 'mx.example.test',
    original: { id: 'Q4ABC', mailFrom: 'sender@example.org', receivedAt, headers },
    failed,
    remoteMta: 'mail.example.test',
    now,
  });
  assert.equal(b.mailFrom, '');
  assert.deepEqual(b.rcpts, ['sender@example.org']);
  assert.equal(b.eightBit, false);
  const raw = b.raw.toString('utf8');
  // Wire hygiene: CRLF only, no line above 998 octets.
  assert.equal(/\r(?!\n)|(?<!\r)\n/.test(raw), false, 'bare CR or LF');
  for (const line of raw.split('\r\n')) assert.ok(Buffer.byteLength(line) <= 998);
  assert.ok(raw.endsWith('--\r\n'));

  const { top, parts } = parseMultipart(raw);
  assert.equal(top.get('from'), 'MAILER-DAEMON@mx.example.test (Mail Delivery System)');
  assert.equal(top.get('to'), '<sender@example.org>');
  assert.equal(top.get('subject'), 'Undelivered Mail Returned to Sender');
  assert.equal(top.get('date'), rfc5322Date(now));
  assert.match(top.get('message-id') ?? '', /^<\d{14}\.[0-9a-f]+@mx\.example\.test>$/);
  assert.equal(top.get('auto-submitted'), 'auto-replied');
  assert.equal(top.get('mime-version'), '1.0');
  assert.match(top.get('content-type') ?? '', /^multipart\/report; report-type=delivery-status; boundary="/);

  assert.equal(parts.length, 3);
  const [human, status, hdrs] = parts as [Part, Part, Part];
  assert.match(human.headers.get('content-type') ?? '', /^text\/plain; charset=utf-8/);
  assert.match(human.body, /nobody@example\.test>: 550 5\.1\.1/);
  assert.doesNotMatch(human.body, /ok@example\.test/);

  assert.equal(status.headers.get('content-type'), 'message/delivery-status');
  const groups = status.body.replace(/\r\n$/, '').split('\r\n\r\n').map(parseFields);
  assert.equal(groups.length, 3, 'per-message block + one per failed recipient');
  const [msgFields, r1, r2] = groups as [Map<string, string>, Map<string, string>, Map<string, string>];
  assert.equal(msgFields.get('reporting-mta'), 'dns; mx.example.test');
  assert.equal(msgFields.get('x-original-queue-id'), 'Q4ABC');
  assert.equal(msgFields.get('arrival-date'), rfc5322Date(receivedAt));
  assert.equal(r1.get('final-recipient'), 'rfc822; nobody@example.test');
  assert.equal(r1.get('action'), 'failed');
  assert.equal(r1.get('status'), '5.1.1');
  assert.equal(r1.get('remote-mta'), 'dns; mail.example.test');
  assert.equal(r1.get('diagnostic-code'), `smtp; 550 ${failed[0]?.text}`);
  assert.equal(r2.get('final-recipient'), 'rfc822; slow@example.test');
  assert.equal(r2.get('status'), '4.0.0');
  assert.equal(r2.get('diagnostic-code'), 'smtp; 451 try later');

  assert.equal(hdrs.headers.get('content-type'), 'text/rfc822-headers');
  assert.equal(hdrs.body, headers.toString('latin1'));
});

test('buildBounce: long diagnostics are folded, bad header lines normalised, reason wording', () => {
  const long: RcptResult = { rcpt: 'x@example.test', status: 'perm', code: 554, text: '5.7.1 ' + 'word '.repeat(400) + 'z'.repeat(1500) };
  const b = buildBounce({
    reportingMta: 'mx.example.test',
    original: { id: 'Q1', mailFrom: 's@example.org', receivedAt: 0, headers: Buffer.from('Subject: ' + 'y'.repeat(2500) + '\nX-Bare: lf\n\nbody must not appear\n') },
    failed: [long],
    reason: 'delayed-expired',
  });
  const raw = b.raw.toString('utf8');
  for (const line of raw.split('\r\n')) assert.ok(Buffer.byteLength(line) <= 998, `line of ${line.length}`);
  assert.equal(/\r(?!\n)|(?<!\r)\n/.test(raw), false);
  assert.doesNotMatch(raw, /body must not appear/);
  assert.match(raw, /time in the queue ran out/);
  const { parts } = parseMultipart(raw);
  const diag = parts[1]?.body.replace(/\r\n(?=[ \t])/g, '') ?? '';
  assert.match(diag, /Diagnostic-Code: smtp; 554 5\.7\.1 word word/);
  assert.match(parts[2]?.body ?? '', /^Subject: y+\r\n y+\r\n y+\r\nX-Bare: lf\r\n$/);
});

test('buildBounce refuses the null sender and an empty failure list', () => {
  const original = { id: 'Q', mailFrom: '', receivedAt: 0, headers };
  assert.throws(() => buildBounce({ reportingMta: 'mx', original, failed }), RangeError);
  assert.throws(() => buildBounce({ reportingMta: 'mx', original: { ...original, mailFrom: 'a@b' }, failed: [] }), RangeError);
});

test('buildBounce: 8-bit original headers are carried and flagged', () => {
  const b = buildBounce({
    reportingMta: 'mx.example.test',
    original: { id: 'Q', mailFrom: 's@example.org', receivedAt: 0, headers: Buffer.from('Subject: caf\xe9\r\n', 'latin1') },
    failed: [{ rcpt: 'a@example.test', status: 'perm', code: 550, text: 'no' }],
  });
  assert.equal(b.eightBit, true);
  assert.ok(b.raw.includes(Buffer.from('Subject: caf\xe9\r\n', 'latin1')));
  assert.match(b.raw.toString('latin1'), /Content-Type: text\/rfc822-headers\r\nContent-Transfer-Encoding: 8bit/);
});

test('buildBounce: ORCPT as Original-Recipient, ENVID as Original-Envelope-Id (RFC 3461 6.3)', () => {
  const b = buildBounce({
    reportingMta: 'mx.example.test',
    original: { id: 'Q', mailFrom: 's@example.org', receivedAt: 0, headers },
    failed: [failed[0] as RcptResult],
    dsn: { ret: 'HDRS', envid: 'env 42+x' },
    rcptDsn: { 'nobody@example.test': { notify: ['FAILURE'], orcpt: { type: 'rfc822', addr: 'old-nobody@example.org' } } },
  });
  const { top, parts } = parseMultipart(b.raw.toString('utf8'));
  assert.match(top.get('content-type') ?? '', /report-type=delivery-status;/);
  const [msgFields, r1] = (parts[1]?.body ?? '').replace(/\r\n$/, '').split('\r\n\r\n').map(parseFields) as [Map<string, string>, Map<string, string>];
  assert.equal(msgFields.get('original-envelope-id'), 'env 42+x');
  assert.equal(r1.get('original-recipient'), 'rfc822; old-nobody@example.org');
  assert.equal(r1.get('final-recipient'), 'rfc822; nobody@example.test');
  assert.ok((parts[1]?.body ?? '').indexOf('Original-Recipient') < (parts[1]?.body ?? '').indexOf('Final-Recipient'), 'RFC 3464 order');
  assert.equal(parts[2]?.headers.get('content-type'), 'text/rfc822-headers', 'RET=HDRS: headers only');
});

test('buildBounce: UTF-8 addresses give message/global-delivery-status, UTF-8 headers message/global-headers (RFC 6533)', () => {
  const utf8Headers = Buffer.from('From: J\u00fcrgen <j\u00fcrgen@b\u00fccher.example>\r\nSubject: gr\u00fc\u00dfe\r\n', 'utf8');
  const b = buildBounce({
    reportingMta: 'mx.example.test',
    original: { id: 'Q', mailFrom: 'j\u00fcrgen@b\u00fccher.example', receivedAt: 0, headers: utf8Headers },
    failed: [{ rcpt: 'm\u00fcller@example.test', status: 'perm', code: 550, text: '5.6.7 no SMTPUTF8 downstream' }],
    rcptDsn: { 'm\u00fcller@example.test': { orcpt: { type: 'utf-8', addr: 'm\u00fcller@old.example' } } },
  });
  assert.equal(b.smtputf8, true, 'a UTF-8 sender in To: needs SMTPUTF8');
  assert.equal(b.eightBit, true);
  const { top, parts } = parseMultipart(b.raw.toString('utf8'));
  assert.match(top.get('content-type') ?? '', /report-type=global-delivery-status;/);
  assert.equal(top.get('to'), '<j\u00fcrgen@b\u00fccher.example>');
  assert.equal(parts[1]?.headers.get('content-type'), 'message/global-delivery-status');
  assert.equal(parts[1]?.headers.get('content-transfer-encoding'), '8bit');
  const [, r1] = (parts[1]?.body ?? '').replace(/\r\n$/, '').split('\r\n\r\n').map(parseFields) as [Map<string, string>, Map<string, string>];
  assert.equal(r1.get('final-recipient'), 'utf-8; m\u00fcller@example.test');
  assert.equal(r1.get('original-recipient'), 'utf-8; m\u00fcller@old.example');
  assert.equal(r1.get('status'), '5.6.7');
  assert.equal(parts[2]?.headers.get('content-type'), 'message/global-headers');

  // All-ASCII addresses: the plain RFC 3464 type, and no SMTPUTF8 needed.
  const plain = buildBounce({
    reportingMta: 'mx.example.test',
    original: { id: 'Q', mailFrom: 's@example.org', receivedAt: 0, headers },
    failed: [{ rcpt: 'a@example.test', status: 'perm', code: 550, text: 'no' }],
  });
  assert.equal(plain.smtputf8, false);
  assert.match(plain.raw.toString('latin1'), /Content-Type: message\/delivery-status\r\n/);
});

test('buildBounce: RET=FULL returns the whole message as message/rfc822, CRLF and 998-octet lines', () => {
  const msg = Buffer.from('Subject: full\r\nFrom: s@example.org\r\n\r\nthe body line\nbare lf line\r\n' + 'z'.repeat(1500) + '\r\n');
  const b = buildBounce({
    reportingMta: 'mx.example.test',
    original: { id: 'Q', mailFrom: 's@example.org', receivedAt: 0, headers: Buffer.from('Subject: full\r\nFrom: s@example.org\r\n') },
    failed: [{ rcpt: 'a@example.test', status: 'perm', code: 550, text: 'no' }],
    dsn: { ret: 'FULL' },
    fullMessage: msg,
  });
  const raw = b.raw.toString('latin1');
  for (const line of raw.split('\r\n')) assert.ok(Buffer.byteLength(line) <= 998);
  assert.equal(/\r(?!\n)|(?<!\r)\n/.test(raw), false);
  const { parts } = parseMultipart(raw);
  assert.equal(parts[2]?.headers.get('content-type'), 'message/rfc822');
  assert.match(parts[2]?.body ?? '', /^Subject: full\r\nFrom: s@example\.org\r\n\r\nthe body line\r\nbare lf line\r\n/);
  // Without RET=FULL the same input returns headers only.
  const hdrs = buildBounce({ reportingMta: 'mx', original: { id: 'Q', mailFrom: 's@example.org', receivedAt: 0, headers }, failed: [{ rcpt: 'a@x', status: 'perm', code: 550, text: 'no' }], fullMessage: msg });
  assert.doesNotMatch(hdrs.raw.toString('latin1'), /the body line/);
});

test('buildSuccessReport: Action delivered / relayed, status 2.x, headers only', () => {
  const b = buildSuccessReport({
    reportingMta: 'mx.example.test',
    original: { id: 'Q', mailFrom: 's@example.org', receivedAt: 0, headers },
    delivered: [
      { rcpt: 'a@example.test', status: 'ok', code: 250, text: '2.0.0 Ok: queued as X', dsnAction: 'relayed' },
      { rcpt: 'b@example.test', status: 'ok', code: 250, text: '2.0.0 <b@example.test> Saved', dsnAction: 'delivered' },
      { rcpt: 'c@example.test', status: 'perm', code: 550, text: 'no' },
    ],
    dsn: { envid: 'E1', ret: 'FULL' },
    rcptDsn: { 'a@example.test': { notify: ['SUCCESS'], orcpt: { type: 'rfc822', addr: 'orig-a@example.org' } } },
  });
  const { top, parts } = parseMultipart(b.raw.toString('utf8'));
  assert.equal(top.get('subject'), 'Successful Mail Delivery Report');
  const groups = (parts[1]?.body ?? '').replace(/\r\n$/, '').split('\r\n\r\n').map(parseFields);
  assert.equal(groups.length, 3, 'only the delivered recipients');
  assert.equal(groups[0]?.get('original-envelope-id'), 'E1');
  assert.equal(groups[1]?.get('action'), 'relayed');
  assert.equal(groups[1]?.get('original-recipient'), 'rfc822; orig-a@example.org');
  assert.equal(groups[1]?.get('status'), '2.0.0');
  assert.equal(groups[2]?.get('action'), 'delivered');
  assert.equal(parts[2]?.headers.get('content-type'), 'text/rfc822-headers', 'RET applies to failures only');
  assert.throws(() => buildSuccessReport({ reportingMta: 'mx', original: { id: 'Q', mailFrom: 's@x', receivedAt: 0, headers }, delivered: [] }), RangeError);
});
