import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeaderScan, messageDsnOf, parseEnvid, parseNotify, parseOrcpt, parseRcptParams, parseRet } from './dsn-params.ts';

test('parseNotify: NEVER alone, or SUCCESS/FAILURE/DELAY each once, any case', () => {
  assert.deepEqual(parseNotify('NEVER'), ['NEVER']);
  assert.deepEqual(parseNotify('success,Failure,DELAY'), ['SUCCESS', 'FAILURE', 'DELAY']);
  assert.deepEqual(parseNotify('FAILURE'), ['FAILURE']);
  for (const bad of ['', 'NEVER,SUCCESS', 'SUCCESS,SUCCESS', 'SUCCESS,', ',FAILURE', 'ALWAYS', 'SUCCESS FAILURE']) assert.equal(parseNotify(bad), undefined, bad);
  assert.equal(parseNotify(true), undefined);
});

test('parseOrcpt: addr-type;xtext, decoded; utf-8 type per RFC 6533', () => {
  assert.deepEqual(parseOrcpt('rfc822;bob+2Btag@example.test', false), { type: 'rfc822', addr: 'bob+tag@example.test' });
  assert.deepEqual(parseOrcpt('RFC822;bob@example.test', false), { type: 'rfc822', addr: 'bob@example.test' });
  assert.deepEqual(parseOrcpt('x-local;anything+20here', false), { type: 'x-local', addr: 'anything here' });
  assert.deepEqual(parseOrcpt('utf-8;b\\x{FC}cher@example.test', false), { type: 'utf-8', addr: 'b\u00fccher@example.test' });
  assert.deepEqual(parseOrcpt('utf-8;b\u00fccher@example.test', true), { type: 'utf-8', addr: 'b\u00fccher@example.test' });
  assert.equal(parseOrcpt('utf-8;b\u00fccher@example.test', false), undefined, 'raw UTF-8 only with SMTPUTF8');
  for (const bad of ['bob@example.test', ';bob@x', 'rfc822;', 'rfc822;a+zz@x', 'rfc822;a+0Db@x', 'rf c822;a', 'rfc822;caf\u00e9', `rfc822;${'a'.repeat(500)}`]) {
    assert.equal(parseOrcpt(bad, true), undefined, JSON.stringify(bad.slice(0, 40)));
  }
  assert.equal(parseOrcpt(true, false), undefined);
});

test('parseRet and parseEnvid', () => {
  assert.equal(parseRet('FULL'), 'FULL');
  assert.equal(parseRet('hdrs'), 'HDRS');
  assert.equal(parseRet('BODY'), undefined);
  assert.equal(parseRet(true), undefined);
  assert.equal(parseEnvid('QQ314159+2Bx'), 'QQ314159+x');
  assert.equal(parseEnvid('a'.repeat(100)), 'a'.repeat(100));
  assert.equal(parseEnvid('a'.repeat(101)), undefined, 'RFC 3461 4.4: at most 100 characters');
  assert.equal(parseEnvid('a+0D+0Ab'), undefined, 'decoded controls are not printable');
  assert.equal(parseEnvid('a+'), undefined);
  assert.deepEqual(messageDsnOf({ RET: 'hdrs', ENVID: 'id+2B1', SIZE: '10' }), { ret: 'HDRS', envid: 'id+1' });
  assert.equal(messageDsnOf({ SIZE: '10' }), undefined);
});

test('parseRcptParams: 501 for malformed NOTIFY/ORCPT, 555 for unknown keywords', () => {
  assert.deepEqual(parseRcptParams({}, false), { ok: true });
  assert.deepEqual(parseRcptParams({ NOTIFY: 'SUCCESS,FAILURE', ORCPT: 'rfc822;a@b' }, false), { ok: true, dsn: { notify: ['SUCCESS', 'FAILURE'], orcpt: { type: 'rfc822', addr: 'a@b' } } });
  assert.deepEqual(parseRcptParams({ NOTIFY: 'NEVER,DELAY' }, false), { ok: false, reply: '501 5.5.4 Bad NOTIFY parameter syntax' });
  assert.deepEqual(parseRcptParams({ ORCPT: 'a@b' }, false), { ok: false, reply: '501 5.5.4 Bad ORCPT parameter syntax' });
  assert.deepEqual(parseRcptParams({ NOTIFY: true }, false), { ok: false, reply: '501 5.5.4 Bad NOTIFY parameter syntax' });
  assert.deepEqual(parseRcptParams({ FOO: '1' }, false), { ok: false, reply: '555 5.5.4 Unsupported option: FOO' });
});

test('HeaderScan: 8-bit octets in the header block only, split anywhere, CRLF or LF', () => {
  const scan = (parts: string[]): HeaderScan => {
    const s = new HeaderScan();
    for (const p of parts) s.feed([Buffer.from(p, 'latin1')]);
    return s;
  };
  const msg = 'Subject: hi\r\nFrom: a@b\r\n\r\nbody caf\xe9\r\n';
  assert.equal(scan([msg]).eightBit, false, 'an 8-bit body does not count');
  assert.equal(scan([msg]).done, true);
  // Every split point, including inside the CRLF CRLF.
  for (let i = 0; i <= msg.length; i++) {
    const s = scan([msg.slice(0, i), msg.slice(i)]);
    assert.deepEqual([s.eightBit, s.done], [false, true], `split at ${i}`);
  }
  const utf8 = 'Subject: caf\xc3\xa9\r\n\r\nbody\r\n';
  for (let i = 0; i <= utf8.length; i++) assert.equal(scan([utf8.slice(0, i), utf8.slice(i)]).eightBit, true, `split at ${i}`);
  assert.equal(scan(['Subject: x\n\nbody \xff\n']).eightBit, false, 'bare LF ends the block too');
  assert.equal(scan(['\r\nSubject-looking body \xff\r\n']).eightBit, false, 'no header block at all');
  assert.equal(scan(['X: a\r\n b\xff\r\n\r\n']).eightBit, true, 'a folded line is still the header');
  assert.equal(scan(['X: a\r\r\n\xff']).eightBit, true, 'a bare CR in a line does not end the block');
});
