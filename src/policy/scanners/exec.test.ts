// The exec scanner's pure parts: the chasquid hook's stdout as header fields, qmail-queue's exit
// codes, its envelope, the environment, and what a qmail-queue filter passed on to QMAILQUEUE
// measured against what it was given (test/scanners.exec.test.ts runs real programs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { addedFields, hookEnvironment, parseAddedFields, parseHookHeaders, qmailEnvelope, qmailQueueResult, QUEUE_CAPTURE, sameOctets, type Octets } from './exec.ts';
import type { ScanInput } from './types.ts';

test('hook stdout: header fields kept with their continuation lines, each ending CRLF; other lines dropped; long lines folded', () => {
  const long = `X-Long: ${'word '.repeat(30).trim()}`;
  const { headers, dropped } = parseHookHeaders(`X-A: 1\r\nX-B: two\n\tlines\nnot a header\n: no name\nBad Name: x\n  orphan?\nX-Ctl: a\x07b\n${long}\n`);
  assert.equal(headers[0], 'X-A: 1\r\n');
  assert.equal(headers[1], 'X-B: two\r\n\tlines\r\n');
  assert.equal(headers[2], 'X-Ctl: ab\r\n');
  assert.ok(headers[3]?.startsWith('X-Long: word'));
  assert.ok(headers[3]?.split('\r\n').every((l) => l.length <= 78));
  assert.equal(headers[3]?.replace(/\r\n\t/g, ' '), `${long}\r\n`);
  assert.equal(headers.length, 4);
  // "not a header", ": no name", "Bad Name: x" and the continuation of a dropped line.
  assert.equal(dropped, 4);
  assert.deepEqual(parseHookHeaders(''), { headers: [], dropped: 0 });
});

test('qmail-queue exit codes: 11–40 permanent (31 the filter refusal), the rest temporary', () => {
  assert.deepEqual(qmailQueueResult(31), { kind: 'reject', code: 554, enhanced: '5.7.1', text: 'Message refused (qmail-queue exit 31)' });
  assert.equal(qmailQueueResult(11).enhanced, '5.1.3');
  for (const c of [12, 20, 40]) assert.equal(qmailQueueResult(c).kind, 'reject', String(c));
  for (const c of [1, 10, 41, 51, 54, 61, 64, 71, 81, 91, 99, 120]) assert.equal(qmailQueueResult(c).kind, 'tempfail', String(c));
  assert.equal(qmailQueueResult(71).enhanced, '4.7.1');
  assert.equal(qmailQueueResult(73).enhanced, '4.4.1');
  assert.match(qmailQueueResult(53).text, /write error.*exit 53/);
});

const input = {
  session: { remoteIp: '192.0.2.7', helo: 'evil;rm -rf /`x`.example', tls: true, authUser: 'alice' },
  tx: { mailFrom: { address: '' }, rcpts: [{ address: 'a@example.test' }, { address: 'b@example.test' }], auth: { spf: { result: 'pass' } } },
  message: { id: 'MXQ1' },
} as unknown as Pick<ScanInput, 'session' | 'tx' | 'message'>;

test('environment: chasquid\'s names, EHLO_DOMAIN sanitized as chasquid does, nothing else of ours', () => {
  assert.deepEqual(hookEnvironment(input), {
    PATH: '/usr/bin:/bin',
    REMOTE_ADDR: '192.0.2.7',
    EHLO_DOMAIN: 'evilrm-rfx.example',
    EHLO_DOMAIN_RAW: 'evil;rm -rf /`x`.example',
    MAIL_FROM: '',
    RCPT_TO: 'a@example.test b@example.test',
    AUTH_AS: 'alice',
    ON_TLS: '1',
    SPF_PASS: '1',
    MXGUARD_QUEUE_ID: 'MXQ1',
  });
});

test('qmail-queue envelope: F sender NUL, T recipient NUL each, a final NUL (the null sender is an empty F)', () => {
  assert.equal(qmailEnvelope(input.tx).toString('latin1'), 'F\0Ta@example.test\0Tb@example.test\0\0');
});

/** Octets served in chunks of `chunk` octets (a different size on each side exercises the re-alignment). */
function octets(data: string | Buffer, chunk: number): Octets & { reads: number[] } {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data, 'latin1');
  const reads: number[] = [];
  return {
    size: buf.length,
    reads,
    async *read(start = 0) {
      reads.push(start);
      for (let i = start; i < buf.length; i += chunk) yield buf.subarray(i, Math.min(i + chunk, buf.length));
    },
  };
}

async function* chunks(...parts: string[]): AsyncIterable<Buffer> {
  for (const p of parts) yield Buffer.from(p, 'latin1');
}

const changedOf = (r: { headers: string[] } | { changed: string }): string => ('changed' in r ? r.changed : `not a change: ${JSON.stringify(r)}`);

test('sameOctets: the same octets however chunked (empty chunks too); a difference, a longer or shorter side, are not', async () => {
  assert.equal(await sameOctets(chunks('abc', 'def'), chunks('a', '', 'bcdef')), true);
  assert.equal(await sameOctets(chunks(), chunks('', '')), true);
  assert.equal(await sameOctets(chunks('abc', 'def'), chunks('abcdeF')), false);
  assert.equal(await sameOctets(chunks('abc'), chunks('abc', 'd')), false);
  assert.equal(await sameOctets(chunks('abcd'), chunks('abc')), false);
  // Both streams are closed when it stops early.
  let closed = 0;
  async function* tracked(...parts: string[]): AsyncIterable<Buffer> {
    try {
      for (const p of parts) yield Buffer.from(p);
    } finally {
      closed++;
    }
  }
  assert.equal(await sameOctets(tracked('x', 'yz', 'more'), tracked('xq', 'z', 'more')), false);
  assert.equal(closed, 2);
  await assert.rejects(sameOctets(chunks('a'), chunks('a'), AbortSignal.abort(new Error('timeout'))), /timeout/);
});

test('fields put on top: whole lines, each a field or its continuation, made CRLF; anything else is a change', () => {
  assert.deepEqual(parseAddedFields(Buffer.alloc(0)), { headers: [] });
  assert.deepEqual(parseAddedFields(Buffer.from('X-Scanned-By: qq-filter\n')), { headers: ['X-Scanned-By: qq-filter\r\n'] });
  assert.deepEqual(parseAddedFields(Buffer.from('X-A: 1\r\nX-B: two\n\tlines\n')), { headers: ['X-A: 1\r\n', 'X-B: two\r\n\tlines\r\n'] });
  assert.deepEqual(parseAddedFields(Buffer.from('X-Ctl: a\x07b\n')), { headers: ['X-Ctl: ab\r\n'] });
  const long = parseAddedFields(Buffer.from(`X-Long: ${'word '.repeat(30).trim()}\n`));
  assert.ok('headers' in long && long.headers[0]?.split('\r\n').every((l) => l.length <= 78), JSON.stringify(long));
  // Not ending with a line end: it would run into our first field.
  assert.match(changedOf(parseAddedFields(Buffer.from('X-A: 1'))), /line end/);
  // An empty line would make our header block body.
  assert.match(changedOf(parseAddedFields(Buffer.from('X-A: 1\n\nX-B: 2\n'))), /empty line/);
  assert.match(changedOf(parseAddedFields(Buffer.from('\r\n'))), /empty line/);
  assert.match(changedOf(parseAddedFields(Buffer.from('hello world\n'))), /1 line .* not header fields/);
  assert.match(changedOf(parseAddedFields(Buffer.from('\tcontinuation first\nX-A: 1\n'))), /not header fields/);
});

test('addedFields: header fields followed by exactly the given message are taken; a changed body, field, length or line ends are not', async () => {
  const given = 'Received: from x by y; date\r\nSubject: hi\r\n\r\nBody line\r\n';
  assert.deepEqual(await addedFields(octets(given, 7), octets(given, 5)), { headers: [] });
  const top = 'X-Scanned-By: qq-filter\nX-Two: 2\r\n\tmore\n';
  const added = octets(top + given, 3);
  assert.deepEqual(await addedFields(octets(given, 11), added), { headers: ['X-Scanned-By: qq-filter\r\n', 'X-Two: 2\r\n\tmore\r\n'] });
  // The rest is compared from where the fields end, then the fields read from the start.
  assert.deepEqual(added.reads, [top.length, 0]);
  const changed = async (passed: string) => changedOf(await addedFields(octets(given, 4), octets(passed, 6)));
  assert.match(await changed(given.replace('Body line', 'Body LINE')), /differs/);
  assert.match(await changed(`${given}tampered\n`), /not header fields followed by the one it was given/);
  // The message itself intact, but what is on top is not header fields only: the reason says which.
  assert.match(await changed(`X-A: 1\n\n${given}`), /empty line/);
  assert.match(await changed(`some text\n${given}`), /1 line it put on top of the message is not header fields/);
  assert.match(await changed(`X-A: 1${given}`), /does not end with a line end/);
  assert.match(await changed(`X-A: 1\n${given.replace('Body', 'Bodz')}`), /not header fields followed by the one it was given/);
  assert.match(await changed(`X-A: 1\n${given.replace('Subject: hi', 'Subject: ho')}`), /not header fields followed/);
  assert.match(await changed(given.slice(0, -2)), /2 octets shorter/);
  assert.match(await changed(given.replace(/\r\n/g, '\n')), /shorter/);
  // At most 64 KiB of fields: more is not even read.
  const big = octets(`X-Big: ${'x'.repeat(70_000)}\n${given}`, 4096);
  assert.match(changedOf(await addedFields(octets(given, 4), big)), /70008 octets longer .*at most 65536/);
  assert.deepEqual(big.reads, []);
});

test('addedFields on a 3 MB message: compared chunk by chunk, the field taken; one octet changed near the end is seen', async () => {
  const given = Buffer.concat([Buffer.from('Subject: big\r\n\r\n'), Buffer.alloc(3 * 1024 * 1024 + 17, 'abcdefghij\r\n')]);
  const passed = Buffer.concat([Buffer.from('X-Scanned-By: qq-filter\n'), given]);
  assert.deepEqual(await addedFields(octets(given, 65536), octets(passed, 65531)), { headers: ['X-Scanned-By: qq-filter\r\n'] });
  passed[passed.length - 5] = 0x21;
  assert.match(changedOf(await addedFields(octets(given, 65536), octets(passed, 65531))), /not header fields followed/);
});

test('the QMAILQUEUE stand-in ships in bin/, executable, a /bin/sh script', () => {
  assert.match(QUEUE_CAPTURE, /\/bin\/mxguard-queue-capture$/);
  fs.accessSync(QUEUE_CAPTURE, fs.constants.X_OK);
  assert.equal(fs.statSync(QUEUE_CAPTURE).mode & 0o777, 0o755);
  assert.match(fs.readFileSync(QUEUE_CAPTURE, 'utf8'), /^#!\/bin\/sh\n/);
});
