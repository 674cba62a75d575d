import { test } from 'node:test';
import assert from 'node:assert/strict';
import { badUtf8, parseCommandLine, parseHeloArg, parseParams, parsePath } from './command.ts';
import { parseMailbox } from '../mail/address.ts';
import { prng } from '../../test/harness/prng.ts';

test('command verbs are case-insensitive; unknown ones are reported', () => {
  assert.deepEqual(parseCommandLine('ehlo client.test'), { ok: true, command: { verb: 'EHLO', arg: 'client.test' } });
  assert.deepEqual(parseCommandLine('DATA'), { ok: true, command: { verb: 'DATA', arg: '' } });
  assert.deepEqual(parseCommandLine('GET / HTTP/1.1'), { ok: false, unknown: 'GET' });
  assert.deepEqual(parseCommandLine(''), { ok: false, unknown: '' });
});

test('MAIL FROM paths', () => {
  const ok = (arg: string) => {
    const r = parsePath(arg, 'FROM');
    assert.ok(r.ok, `${arg}: ${JSON.stringify(r)}`);
    return r;
  };
  assert.equal(ok('FROM:<a@Example.TEST>').address.address, 'a@example.test');
  assert.equal(ok('from: <a@b.test>').address.address, 'a@b.test');
  assert.equal(ok('FROM:<>').address.address, '');
  assert.equal(ok('FROM:a@b.test').address.address, 'a@b.test');
  assert.equal(ok('FROM:<@relay.test,@r2.test:user@c.test>').address.address, 'user@c.test');
  assert.equal(ok('FROM:<"john doe"@b.test>').address.local, '"john doe"');
  assert.equal(ok('FROM:<a@[192.0.2.1]>').address.domain, '[192.0.2.1]');
  assert.deepEqual(ok('FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8').params, { SIZE: '1000', BODY: '8BITMIME', SMTPUTF8: true });
  assert.equal(ok('FROM:<jürgen@bücher.test> SMTPUTF8').address.utf8, true);
});

test('bad paths get a 501 with a reason, never a throw', () => {
  for (const arg of ['', 'FROM', 'FROM:<a@b.test', 'FROM:<a@b.test>x', 'TO:<a@b.test>', 'FROM:<a@>', 'FROM:<@b.test>', 'FROM:<a b@c.test>', 'FROM:<a@-b.test>', 'FROM:<a..b@c.test>', 'FROM:<a@b.test> SIZE=', 'FROM:<a@b.test> =x', `FROM:<${'x'.repeat(300)}@b.test>`]) {
    const r = parsePath(arg, 'FROM');
    assert.equal(r.ok, false, arg);
    if (!r.ok) assert.ok(r.code >= 500 && r.code < 600);
  }
});

test('RCPT TO: the null path is refused, a bare postmaster is taken', () => {
  assert.equal(parsePath('TO:<>', 'TO').ok, false);
  const pm = parsePath('TO:<Postmaster>', 'TO');
  assert.ok(pm.ok);
  assert.equal(pm.address.domain, '');
  assert.equal(parsePath('TO:<alice>', 'TO').ok, false);
});

test('mailbox and params helpers', () => {
  assert.equal(typeof parseMailbox('nodomain'), 'string');
  assert.equal(parseParams('A=1 =2'), undefined);
  assert.deepEqual(parseParams('AUTH=<>'), { AUTH: '<>' });
  assert.deepEqual(parseHeloArg('  mail.example.test '), { ok: true, name: 'mail.example.test' });
  assert.equal(parseHeloArg('').ok, false);
  assert.equal(parseHeloArg('a\tb').ok, false);
});

test('random command lines never throw', () => {
  const rand = prng(7);
  const pieces = ['MAIL', 'RCPT', 'FROM:', 'TO:', '<', '>', '@', '"', '\\', ' ', 'a', '.', ',', ':', '=', 'SIZE', '\u00e9', '[', ']', 'IPv6:', '\0'];
  for (let n = 0; n < 5000; n++) {
    let line = '';
    const len = Math.floor(rand() * 12);
    for (let i = 0; i < len; i++) line += pieces[Math.floor(rand() * pieces.length)];
    const cmd = parseCommandLine(line);
    if (cmd.ok && (cmd.command.verb === 'MAIL' || cmd.command.verb === 'RCPT')) parsePath(cmd.command.arg, cmd.command.verb === 'MAIL' ? 'FROM' : 'TO');
    parsePath(line, 'FROM');
    parseHeloArg(line);
  }
});

test('local parts over 64 octets (VERP, SRS, BATV) are taken; the whole mailbox stays within 256 octets', () => {
  const srs = 'SRS0=HHH=TT=lists.example.org=very-long-list-name-bounces+subscriber=example.net@forwarder.test';
  const r = parsePath(`FROM:<${srs}>`, 'FROM');
  assert.ok(r.ok, JSON.stringify(r));
  assert.equal(r.address.local.length > 64, true);
  assert.ok(parsePath(`TO:<${'v'.repeat(100)}@example.test>`, 'TO').ok);
  const max = `${'x'.repeat(256 - '@b.test'.length)}@b.test`;
  assert.ok(parsePath(`FROM:<${max}>`, 'FROM').ok);
  assert.equal(parsePath(`FROM:<x${max}>`, 'FROM').ok, false);
  // The bound is in octets: 128 two-octet characters are 256 octets of local part alone.
  assert.equal(parsePath(`FROM:<${'ü'.repeat(128)}@b.test> SMTPUTF8`, 'FROM').ok, false);
});

test('a quoted local part that needs no quotes is the unquoted one', () => {
  const r = parsePath('TO:<"alice"@example.test>', 'TO');
  assert.ok(r.ok);
  assert.equal(r.address.address, 'alice@example.test');
  assert.equal(r.address.local, 'alice');
  const dotted = parsePath('TO:<"a.b\\c"@example.test>', 'TO');
  assert.ok(dotted.ok);
  assert.equal(dotted.address.address, 'a.bc@example.test');
  for (const keep of ['"john doe"', '"a..b"', '"u%victim.test"', '"v!u"', '"u@v"']) {
    const k = parsePath(`TO:<${keep}@example.test>`, 'TO');
    assert.ok(k.ok, keep);
    assert.equal(k.address.local, keep);
  }
});

test('badUtf8 judges the raw octets of a command line', () => {
  assert.equal(badUtf8(Buffer.from('MAIL FROM:<a@b.test>')), false);
  assert.equal(badUtf8(Buffer.from('MAIL FROM:<jürgen@bücher.test> SMTPUTF8')), false);
  assert.equal(badUtf8(Buffer.from('MAIL FROM:<j\xfcrgen@b.test>', 'latin1')), true, 'Latin-1 ü');
  assert.equal(badUtf8(Buffer.from([0x61, 0xc3])), true, 'truncated sequence');
  assert.equal(badUtf8(Buffer.from([0xc0, 0xaf])), true, 'overlong /');
  assert.equal(badUtf8(Buffer.from([0xed, 0xa0, 0x80])), true, 'UTF-16 surrogate');
  assert.equal(badUtf8(Buffer.from([0xf4, 0x90, 0x80, 0x80])), true, 'past U+10FFFF');
});
