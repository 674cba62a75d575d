// Pure parts of the SMTP client; the protocol against real servers is in test/delivery.peers.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ReplyParser, SmtpProtocolError, createSmtpTransport, mailDsnParams, parseDestination, parseEhloReply, rcptDsnParams, replyText, resultFromReply, type SmtpReply } from './client.ts';

const EHLO = '250-mx.example.test Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n';
const STREAM = '220 mx.example.test ESMTP\r\n' + EHLO + '250 2.1.0 Ok\r\n550 5.1.1 <x@y>: no such user\r\n354 End data with <CR><LF>.<CR><LF>\r\n421-4.3.2 Shutting\r\n421 4.3.2 down\r\n';

function parseAll(chunks: readonly Buffer[]): SmtpReply[] {
  const p = new ReplyParser();
  return chunks.flatMap((c) => p.push(c));
}

test('ReplyParser: multi-line replies, split at every position and byte by byte', () => {
  const data = Buffer.from(STREAM);
  const whole = parseAll([data]);
  assert.deepEqual(
    whole.map((r) => r.code),
    [220, 250, 250, 550, 354, 421],
  );
  assert.deepEqual(whole[1]?.lines, ['mx.example.test Hello', 'PIPELINING', 'SIZE 10240000', '8BITMIME', 'SMTPUTF8', 'ENHANCEDSTATUSCODES']);
  assert.equal(replyText(whole[5] as SmtpReply), '4.3.2 Shutting 4.3.2 down');
  for (let i = 0; i <= data.length; i++) {
    assert.deepEqual(parseAll([data.subarray(0, i), data.subarray(i)]), whole, `split at ${i}`);
  }
  const bytes = Array.from({ length: data.length }, (_, i) => data.subarray(i, i + 1));
  assert.deepEqual(parseAll(bytes), whole);
});

test('ReplyParser: bare LF, a bare code, UTF-8 text', () => {
  const r = parseAll([Buffer.from('250\n250-a\n250 b\r\n550 5.1.1 ünïcode\r\n')]);
  assert.deepEqual(r, [
    { code: 250, lines: [''] },
    { code: 250, lines: ['a', 'b'] },
    { code: 550, lines: ['5.1.1 ünïcode'] },
  ]);
  // A UTF-8 character split across chunks still decodes.
  const u = Buffer.from('550 ü\r\n');
  assert.deepEqual(parseAll([u.subarray(0, 5), u.subarray(5)]), [{ code: 550, lines: ['ü'] }]);
});

test('ReplyParser: garbage and endless lines are protocol errors', () => {
  assert.throws(() => new ReplyParser().push(Buffer.from('HTTP/1.1 400 Bad\r\n')), SmtpProtocolError);
  assert.throws(() => new ReplyParser().push(Buffer.from('25 short\r\n')), SmtpProtocolError);
  assert.throws(() => new ReplyParser().push(Buffer.from('250x\r\n')), SmtpProtocolError);
  assert.throws(() => new ReplyParser().push(Buffer.from('150 one hundred\r\n')), SmtpProtocolError);
  const p = new ReplyParser();
  assert.throws(() => {
    for (let i = 0; i < 100; i++) p.push(Buffer.alloc(1024, 0x41));
  }, SmtpProtocolError);
  assert.throws(() => new ReplyParser().push(Buffer.from('250-x\r\n'.repeat(1002))), SmtpProtocolError);
});

test('ReplyParser.pending tracks partial replies', () => {
  const p = new ReplyParser();
  assert.equal(p.pending, false);
  p.push(Buffer.from('250-a\r\n'));
  assert.equal(p.pending, true);
  p.push(Buffer.from('250 b\r'));
  assert.equal(p.pending, true);
  assert.equal(p.push(Buffer.from('\n')).length, 1);
  assert.equal(p.pending, false);
});

test('parseEhloReply', () => {
  const [ehlo] = parseAll([Buffer.from(EHLO)]);
  const ext = parseEhloReply(ehlo as SmtpReply);
  assert.equal(ext.pipelining, true);
  assert.equal(ext.size, 10240000);
  assert.equal(ext.eightBitMime, true);
  assert.equal(ext.smtputf8, true);
  assert.ok(ext.keywords.has('ENHANCEDSTATUSCODES'));
  const bare = parseEhloReply({ code: 250, lines: ['host', 'size', 'pipelining'] });
  assert.equal(bare.size, 0);
  assert.equal(bare.pipelining, true);
  assert.equal(bare.eightBitMime, false);
  const none = parseEhloReply({ code: 250, lines: ['host says hello'] });
  assert.equal(none.size, null);
  assert.equal(none.keywords.size, 0);
  assert.equal(parseEhloReply({ code: 250, lines: ['h', 'SIZE junk'] }).size, 0);
});

test('parseDestination', () => {
  assert.deepEqual(parseDestination('smtp://127.0.0.1:2526'), { protocol: 'smtp', host: '127.0.0.1', port: 2526 });
  assert.deepEqual(parseDestination('lmtp://mail.example.test'), { protocol: 'lmtp', host: 'mail.example.test', port: 24 });
  assert.deepEqual(parseDestination('smtp://[::1]:25/'), { protocol: 'smtp', host: '::1', port: 25 });
  assert.deepEqual(parseDestination('SMTP://host'), { protocol: 'smtp', host: 'host', port: 25 });
  for (const bad of ['http://x', 'smtp://', 'smtp://h:0', 'smtp://h:99999', 'smtp://u@h', 'smtp://h/path', 'nonsense']) {
    assert.throws(() => parseDestination(bad), Error, bad);
  }
});

test('resultFromReply maps 2xx/4xx/5xx', () => {
  assert.equal(resultFromReply('a', { code: 250, lines: ['ok'] }).status, 'ok');
  assert.equal(resultFromReply('a', { code: 451, lines: ['later'] }).status, 'temp');
  assert.deepEqual(resultFromReply('a', { code: 550, lines: ['5.1.1 no', 'such user'] }), { rcpt: 'a', status: 'perm', code: 550, text: '5.1.1 no such user' });
  assert.equal(resultFromReply('a', { code: 354, lines: ['go'] }).status, 'temp');
  assert.equal(replyText({ code: 550, lines: ['a\tb\x00c'] }), 'a b c');
});

test('createSmtpTransport validates its options and names the destination', async () => {
  const t = createSmtpTransport({ url: 'lmtp://127.0.0.1:24', heloName: 'mx.test', maxConnections: 2, connectTimeoutMs: 1000, commandTimeoutMs: 1000 });
  assert.equal(t.name, 'lmtp://127.0.0.1:24');
  await t.close();
  const results = await t.deliver({ id: 'Q', mailFrom: 'a@b', rcpts: ['c@d'], body: { size: 0, async *chunks() {} } });
  assert.deepEqual(results.map((r) => [r.status, r.code]), [['temp', 421]], 'deliver after close is temp');
  assert.throws(() => createSmtpTransport({ url: 'smtp://h', heloName: 'bad name', maxConnections: 1, connectTimeoutMs: 1, commandTimeoutMs: 1 }));
  assert.throws(() => createSmtpTransport({ url: 'ftp://h', heloName: 'ok', maxConnections: 1, connectTimeoutMs: 1, commandTimeoutMs: 1 }));
});

test('addresses that could bend a command line are refused before connecting', async () => {
  // Port 9 on loopback: nothing listens there, but no connection is even attempted for these.
  const t = createSmtpTransport({ url: 'smtp://127.0.0.1:9', heloName: 'mx.test', maxConnections: 1, connectTimeoutMs: 1000, commandTimeoutMs: 1000 });
  const body = { size: 0, async *chunks() {} };
  const bad = await t.deliver({ id: 'Q', mailFrom: 'a@b\r\nRCPT TO:<x@y>', rcpts: ['c@d'], body });
  assert.deepEqual(bad.map((r) => [r.status, r.code]), [['perm', 501]]);
  const mixed = await t.deliver({ id: 'Q', mailFrom: 'a@b', rcpts: ['c>@d', '', 'e\n@f'], body });
  assert.deepEqual(mixed.map((r) => [r.status, r.code]), [['perm', 501], ['perm', 501], ['perm', 501]]);
  await t.close();
});

test('DSN parameters for the downstream: xtext-encoded, UTF-8 ORCPT in its 7-bit form, DSN keyword', () => {
  assert.equal(parseEhloReply({ code: 250, lines: ['mx', 'DSN'] }).dsn, true);
  assert.equal(parseEhloReply({ code: 250, lines: ['mx', 'PIPELINING'] }).dsn, false);
  assert.equal(mailDsnParams({}), '');
  assert.equal(mailDsnParams({ dsn: { ret: 'HDRS', envid: 'a+b c' } }), ' RET=HDRS ENVID=a+2Bb+20c');
  const rcptDsn = {
    'a@x.test': { notify: ['SUCCESS', 'FAILURE'] as const, orcpt: { type: 'rfc822', addr: 'old+a@y.test' } },
    'b@x.test': { orcpt: { type: 'utf-8', addr: 'j\u00fcrgen@y.test' } },
    'c@x.test': { notify: ['NEVER'] as const },
  };
  assert.equal(rcptDsnParams({ rcptDsn }, 'a@x.test'), ' NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;old+2Ba@y.test');
  assert.equal(rcptDsnParams({ rcptDsn }, 'b@x.test'), ' ORCPT=utf-8;j\\x{FC}rgen@y.test');
  assert.equal(rcptDsnParams({ rcptDsn }, 'c@x.test'), ' NOTIFY=NEVER');
  assert.equal(rcptDsnParams({ rcptDsn }, 'd@x.test'), '');
});
