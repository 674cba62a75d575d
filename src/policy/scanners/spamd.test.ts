import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { create, envelopeFields, parseReportTable, parseSpamdReply, spamdResult } from './spamd.ts';
import type { ScannerSpec } from './check.ts';
import type { ScanInput } from './types.ts';

const REPORT = [
  'SPAMD/1.1 0 EX_OK',
  'Content-length: 0',
  'Spam: True ; 1004.2 / 5.0',
  '',
  'Spam detection software, running on the system "vm",',
  'has identified this incoming email as possible spam.',
  '',
  'Content analysis details:   (1004.2 points, 5.0 required)',
  '',
  ' pts rule name              description',
  '---- ---------------------- --------------------------------------------------',
  ' 2.7 MISSING_DATE           Missing Date: header',
  '-0.0 NO_RECEIVED            Informational: message has no Received headers',
  ' 0.6 MISSING_MID            Missing Message-Id: header',
  '                            [continued 1.5 DESCRIPTION line]',
  '1000 GTUBE                  BODY: Generic Test for Unsolicited Bulk Email',
  '-1.0 ALL_TRUSTED            Passed through trusted hosts only via SMTP',
  '',
].join('\r\n');

test('REPORT: each rule with its points, the verdict and the totals', () => {
  const r = parseSpamdReply(Buffer.from(REPORT, 'latin1'), 'REPORT');
  assert.equal(r.spam, true);
  assert.equal(r.score, 1004.2);
  assert.equal(r.required, 5);
  assert.deepEqual(r.rules, ['MISSING_DATE', 'NO_RECEIVED', 'MISSING_MID', 'GTUBE', 'ALL_TRUSTED']);
  assert.deepEqual(
    r.points?.map((p) => `${p.name}=${p.score}`),
    ['MISSING_DATE=2.7', 'NO_RECEIVED=0', 'MISSING_MID=0.6', 'GTUBE=1000', 'ALL_TRUSTED=-1'],
  );
  assert.deepEqual(parseReportTable('no table here\n'), []);
});

test('SYMBOLS: rule names, Spam: Yes/No spelling too', () => {
  const raw = 'SPAMD/1.1 0 EX_OK\r\nContent-length: 21\r\nSpam: False ; 0.3 / 5.0\r\n\r\nMISSING_MID,NO_RELAYS';
  const r = parseSpamdReply(Buffer.from(raw), 'SYMBOLS');
  assert.deepEqual(r, { spam: false, score: 0.3, required: 5, rules: ['MISSING_MID', 'NO_RELAYS'] });
  assert.equal(parseSpamdReply(Buffer.from('SPAMD/1.1 0 EX_OK\r\nSpam: Yes ; 7.3 / 5.0\r\n\r\n'), 'SYMBOLS').spam, true);
  assert.deepEqual(parseSpamdReply(Buffer.from('SPAMD/1.1 0 EX_OK\r\nSpam: False ; -1.0 / 5.0\r\n\r\n'), 'SYMBOLS').rules, []);
});

test('errors: an EX_ code other than 0, not SPAMD, no Spam: line, cut short', () => {
  assert.throws(() => parseSpamdReply(Buffer.from('SPAMD/1.0 76 Bad header line: xyz\r\n'), 'SYMBOLS'), /Bad header line.*code 76/);
  assert.throws(() => parseSpamdReply(Buffer.from('HTTP/1.1 400 Bad\r\n\r\n'), 'SYMBOLS'), /not a SPAMD reply/);
  assert.throws(() => parseSpamdReply(Buffer.from('SPAMD/1.1 0 EX_OK\r\nContent-length: 3\r\n\r\nA'), 'SYMBOLS'), /without a Spam: line/);
  assert.throws(() => parseSpamdReply(Buffer.from('SPAMD/1.1 0 EX_OK\r\nContent-length: 30\r\nSpam: True ; 9.0 / 5.0\r\n\r\nA,B'), 'SYMBOLS'), /cut short/);
  assert.throws(() => parseSpamdReply(Buffer.from('SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9.0 / 5.0'), 'SYMBOLS'), /header block/);
});

test('result: tag gives points (REPORT by rule, the rounding rest under the scanner), reject refuses spam only', () => {
  const reply = parseSpamdReply(Buffer.from(REPORT, 'latin1'), 'REPORT');
  const tagged = spamdResult(reply, 'spamd', 'tag');
  assert.equal(tagged.kind, 'accept');
  if (tagged.kind !== 'accept') return;
  const sum = (tagged.tests ?? []).reduce((s, t) => s + t.score, 0);
  assert.ok(Math.abs(sum - 1004.2) < 1e-9, `sum ${sum}`);
  assert.deepEqual(tagged.tests?.at(-1), { name: 'spamd', score: 1.9 });
  assert.match(tagged.headers?.join('') ?? '', /^X-Spam-Spamd: Yes, score=1004\.2 required=5\.0 tests=MISSING_DATE,NO_RECEIVED,\r\n\tMISSING_MID,GTUBE,ALL_TRUSTED\r\n$/);
  const rejected = spamdResult(reply, 'spamd', 'reject');
  assert.deepEqual([rejected.kind, rejected.kind === 'reject' && rejected.code, rejected.kind === 'reject' && rejected.enhanced], ['reject', 550, '5.7.1']);
  const ham = spamdResult({ spam: false, score: 1.5, required: 5, rules: ['A'] }, 'sa', 'reject');
  assert.equal(ham.kind, 'accept');
  assert.deepEqual(ham.kind === 'accept' && ham.tests, [{ name: 'sa', score: 1.5 }]);
});

test('the envelope for SpamAssassin: X-Envelope-From and X-Envelope-To, null sender <>, no control characters', () => {
  const tx = { mailFrom: { address: '', local: '', domain: '', utf8: false }, params: {}, rcpts: [{ address: 'a@x.test', local: 'a', domain: 'x.test', utf8: false }, { address: 'b\r@x.test', local: 'b', domain: 'x.test', utf8: false }] };
  assert.equal(envelopeFields({ tx }), 'X-Envelope-From: <>\r\nX-Envelope-To: <a@x.test>, <b@x.test>\r\n');
});

test('create: a bad address fails when the config loads; a refused connection fails the scan', async () => {
  const spec = (address: string) => ({ type: 'spamd', address, command: 'SYMBOLS', action: 'tag', timeout: 1000, max_size: 1000, on_oversize: 'skip' }) as Extract<ScannerSpec, { type: 'spamd' }>;
  assert.throws(() => create(spec('localhost')), /neither host:port/);
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  const input = {
    message: { id: 'x', size: 3, read: async function* () { yield Buffer.from('a\r\n'); } },
    tx: { mailFrom: { address: 'a@b.test' }, rcpts: [] },
    signal: new AbortController().signal,
  } as unknown as ScanInput;
  await assert.rejects(create(spec(`127.0.0.1:${port}`)).scan(input), /spamd at 127\.0\.0\.1:\d+: ECONNREFUSED/);
});
