// The exec scanner's pure parts: the chasquid hook's stdout as header fields, qmail-queue's exit
// codes, its envelope, and the environment (test/scanners.exec.test.ts runs real programs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hookEnvironment, parseHookHeaders, qmailEnvelope, qmailQueueResult } from './exec.ts';
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
