// rspamd's checkv2 answers as mxguard reads them: the action mapping (exact: soft reject and
// greylist are 451, never 5xx; reject 550 with rspamd's message), points, milter header changes,
// the rewritten subject, the request headers. The protocol against a real rspamd is in
// test/scanners.rspamd.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mapRspamdReply, parseRspamdReply, requestHeaders, smtpText, type RspamdReply } from './rspamd.ts';
import type { ScanInput } from './types.ts';

function reply(action: string, extra: Record<string, unknown> = {}): RspamdReply {
  return parseRspamdReply(JSON.stringify({ is_skipped: false, score: 7.25, required_score: 15, action, symbols: { A_SYM: { name: 'A_SYM', score: 5, metric_score: 5 }, B_SYM: { name: 'B_SYM', score: 2, metric_score: 2 }, ZERO: { name: 'ZERO', score: 0, metric_score: 0 } }, messages: {}, ...extra }));
}

test('no action: accepted; each symbol with points in tests=, the rest under the scanner name, the sum is rspamd score', () => {
  const r = mapRspamdReply(reply('no action'), 'rspamd');
  assert.equal(r.kind, 'accept');
  if (r.kind !== 'accept') return;
  assert.deepEqual(r.tests, [
    { name: 'A_SYM', score: 5 },
    { name: 'B_SYM', score: 2 },
    { name: 'rspamd', score: 0.25 },
  ]);
  assert.equal((r.tests ?? []).reduce((s, t) => s + t.score, 0), 7.25);
  assert.equal(r.headers?.length, 1);
  assert.equal(r.headers?.[0]?.replace(/\r\n(?=[ \t])/g, ''), 'X-Spam-Rspamd: no action, score=7.25 required=15.00 symbols=A_SYM(5.00),\tB_SYM(2.00),ZERO(0.00)\r\n');
  assert.equal(r.removeHeaders, undefined);
});

test('a score of 0 with no symbol points still names the scanner in tests= (with 0 points)', () => {
  const r = mapRspamdReply(parseRspamdReply('{"score":0,"action":"no action","symbols":{}}'), 'rs1');
  assert.ok(r.kind === 'accept');
  assert.deepEqual(r.kind === 'accept' ? r.tests : [], [{ name: 'rs1', score: 0 }]);
});

test('reject: 550 5.7.1 with rspamd smtp_message made one printable line', () => {
  const r = mapRspamdReply(reply('reject', { messages: { smtp_message: 'Spam\r\nhere \u00e9\ttoo' } }), 'rspamd');
  assert.deepEqual({ ...r, log: undefined }, { kind: 'reject', code: 550, enhanced: '5.7.1', text: 'Spam here ? too', log: undefined });
  const plain = mapRspamdReply(reply('reject'), 'rspamd');
  assert.equal(plain.kind === 'reject' ? plain.text : '', 'Spam message rejected');
});

test('soft reject and greylist: 451 4.7.1 (never a 5xx), with rspamd message when it gives one', () => {
  for (const action of ['soft reject', 'greylist']) {
    const r = mapRspamdReply(reply(action), 'rspamd');
    assert.equal(r.kind, 'tempfail', action);
    if (r.kind !== 'tempfail') continue;
    assert.equal(r.code, 451);
    assert.equal(r.enhanced, '4.7.1');
    assert.equal(r.text, 'Try again later');
    const m = mapRspamdReply(reply(action, { messages: { smtp_message: 'Ratelimit exceeded' } }), 'rspamd');
    assert.equal(m.kind === 'tempfail' ? m.text : '', 'Ratelimit exceeded');
  }
});

test('add header: accepted with X-Spam: Yes (as rspamd own milter does) and the points', () => {
  const r = mapRspamdReply(reply('add header'), 'rspamd');
  assert.equal(r.kind, 'accept');
  if (r.kind !== 'accept') return;
  assert.ok(r.headers?.includes('X-Spam: Yes\r\n'));
  assert.equal((r.tests ?? []).reduce((s, t) => s + t.score, 0), 7.25);
});

test('rewrite subject: Subject replaced by rspamd one (removed, then added), tagged X-Spam: Yes', () => {
  const r = mapRspamdReply(reply('rewrite subject', { subject: '[SPAM] hello there' }), 'rspamd');
  assert.ok(r.kind === 'accept');
  if (r.kind !== 'accept') return;
  assert.deepEqual(r.removeHeaders, ['subject']);
  assert.ok(r.headers?.includes('Subject: [SPAM] hello there\r\n'));
  assert.ok(r.headers?.includes('X-Spam: Yes\r\n'));
  // Non-ASCII: RFC 2047 encoded words; long: folded before a space, which stays.
  const u = mapRspamdReply(reply('rewrite subject', { subject: '[SPAM] caf\u00e9' }), 'rspamd');
  assert.ok(u.kind === 'accept' && u.headers?.includes(`Subject: =?UTF-8?B?${Buffer.from('[SPAM] caf\u00e9').toString('base64')}?=\r\n`));
  const long = mapRspamdReply(reply('rewrite subject', { subject: `[SPAM] ${'word '.repeat(30).trim()}` }), 'rspamd');
  const field = long.kind === 'accept' ? (long.headers ?? []).find((h) => h.startsWith('Subject:')) ?? '' : '';
  assert.ok(field.split('\r\n').every((l) => l.length <= 78), field);
  assert.equal(field.replace(/\r\n(?=[ \t])/g, ''), `Subject: [SPAM] ${'word '.repeat(30).trim()}\r\n`);
});

test('milter block: add_headers in each of its forms, remove_headers by name; X-Spam-* and envelope changes are not taken', () => {
  const r = mapRspamdReply(
    reply('no action', {
      milter: {
        add_headers: {
          'X-Rspamd-Queue-Id': { value: 'ABC123', order: 0 },
          'X-Plain': 'one',
          'X-Multi': [{ value: 'a', order: 1 }, { value: 'b', order: 2 }],
          'X-Spamd-Result': { value: 'default: False [1.00 / 15.00];\r\n\tSYM(1.00)[x]', order: 0 },
          'X-Spam-Status': { value: 'Yes, score=99', order: 0 },
          'Bad Name': 'x',
        },
        remove_headers: { 'X-Spam': 0, 'X-Old': 1 },
        change_from: 'other@example.test',
      },
    }),
    'rspamd',
  );
  assert.ok(r.kind === 'accept');
  if (r.kind !== 'accept') return;
  assert.deepEqual(r.headers?.slice(0, 5), ['X-Rspamd-Queue-Id: ABC123\r\n', 'X-Plain: one\r\n', 'X-Multi: a\r\n', 'X-Multi: b\r\n', 'X-Spamd-Result: default: False [1.00 / 15.00];\r\n\tSYM(1.00)[x]\r\n']);
  assert.ok(!r.headers?.some((h) => /^X-Spam-Status|^Bad Name|^X-Spam: /.test(h)), 'no x-spam-* from rspamd, no bad name, not tagged');
  assert.deepEqual(r.removeHeaders, ['x-spam', 'x-old']);
  assert.match(r.log ?? '', /milter requests not applied: change_from/);
});

test('any other action (discard, quarantine, custom) is an error: on_error decides', () => {
  for (const action of ['discard', 'quarantine', 'my action']) assert.throws(() => mapRspamdReply(reply(action), 'rspamd'), /not one mxguard can carry out/);
});

test('not a checkv2 answer: not JSON, an error object, no action or score → throws', () => {
  assert.throws(() => parseRspamdReply('<html>oops</html>'), /not JSON/);
  assert.throws(() => parseRspamdReply('{"error":"Message is too big"}'), /Message is too big/);
  assert.throws(() => parseRspamdReply('{"score":1}'), /without action and score/);
  assert.throws(() => parseRspamdReply('{"action":"no action","score":"x"}'), /without action and score/);
  assert.throws(() => parseRspamdReply('[1]'), /not a JSON object/);
});

test('smtpText: empty or control-only text falls back', () => {
  assert.equal(smtpText('\r\n\t', 'fallback'), 'fallback');
  assert.equal(smtpText(undefined, 'fallback'), 'fallback');
  assert.equal(smtpText('x'.repeat(400), 'f').length, 300);
});

test('request headers: the envelope (IP, Helo, From, one Rcpt each, Queue-Id, User, Password)', () => {
  const input = {
    message: { id: 'Q1', size: 123 },
    session: { remoteIp: '::ffff:192.0.2.7', helo: 'client.example.test', authUser: 'alice', clientHostname: 'client.example.test' },
    tx: { mailFrom: { address: 'a@example.test' }, rcpts: [{ address: 'b@example.test' }, { address: 'c@example.test' }] },
  } as unknown as ScanInput;
  assert.deepEqual(requestHeaders(input, 'sekret'), {
    'Content-Length': '123',
    IP: '192.0.2.7',
    From: 'a@example.test',
    Rcpt: ['b@example.test', 'c@example.test'],
    'Queue-Id': 'Q1',
    Helo: 'client.example.test',
    Hostname: 'client.example.test',
    User: 'alice',
    Password: 'sekret',
  });
  const bounce = { ...input, session: { remoteIp: '2001:db8::1' }, tx: { mailFrom: { address: '' }, rcpts: [{ address: 'b@example.test' }] } } as unknown as ScanInput;
  const h = requestHeaders(bounce);
  assert.equal(h.From, '<>', 'the null sender');
  assert.equal(h.IP, '2001:db8::1');
  assert.equal(h.User, undefined);
  assert.equal(h.Helo, undefined);
});
