import { test } from 'node:test';
import assert from 'node:assert/strict';
import { saslContinue, saslStart, type SaslStep } from './sasl.ts';
import { prng } from '../../test/harness/prng.ts';

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

test('PLAIN with and without an initial response', () => {
  assert.deepEqual(saslStart(`PLAIN ${b64('\0alice\0s3cret')}`), { kind: 'done', user: 'alice', password: 's3cret' });
  assert.deepEqual(saslStart(`plain ${b64('alice\0alice\0pw')}`), { kind: 'done', user: 'alice', password: 'pw' });
  const first = saslStart('PLAIN');
  assert.equal(first.kind, 'challenge');
  if (first.kind !== 'challenge') return;
  assert.equal(first.text, '');
  assert.deepEqual(saslContinue(first.state, b64('\0bob\0pässwörd')), { kind: 'done', user: 'bob', password: 'pässwörd' });
});

test('LOGIN asks for the user name and the password', () => {
  const s1 = saslStart('LOGIN');
  assert.ok(s1.kind === 'challenge' && Buffer.from(s1.text, 'base64').toString() === 'Username:');
  if (s1.kind !== 'challenge') return;
  const s2 = saslContinue(s1.state, b64('carol'));
  assert.ok(s2.kind === 'challenge' && Buffer.from(s2.text, 'base64').toString() === 'Password:');
  if (s2.kind !== 'challenge') return;
  assert.deepEqual(saslContinue(s2.state, b64('pw')), { kind: 'done', user: 'carol', password: 'pw' });
  const withUser = saslStart(`LOGIN ${b64('dave')}`);
  assert.ok(withUser.kind === 'challenge' && withUser.state.user === 'dave');
});

test('bad mechanisms, bad base64, cancel and impersonation get the right 5xx', () => {
  const reply = (s: SaslStep) => (s.kind === 'error' ? s.reply.slice(0, 9) : s.kind);
  assert.equal(reply(saslStart('CRAM-MD5')), '504 5.5.4');
  assert.equal(reply(saslStart('')), '501 5.5.4');
  assert.equal(reply(saslStart('PLAIN a b')), '501 5.5.4');
  assert.equal(reply(saslStart('PLAIN not-base64!')), '501 5.5.2');
  assert.equal(reply(saslStart('PLAIN *')), '501 5.7.0');
  assert.equal(reply(saslStart(`PLAIN ${b64('only-two\0parts')}`)), '501 5.5.2');
  assert.equal(reply(saslStart(`PLAIN ${b64('root\0alice\0pw')}`)), '535 5.7.8', 'authzid other than the user');
  const login = saslStart('LOGIN');
  if (login.kind === 'challenge') {
    assert.equal(reply(saslContinue(login.state, '*')), '501 5.7.0');
    assert.equal(reply(saslContinue(login.state, '%%%')), '501 5.5.2');
  }
});

test('random input never throws', () => {
  const rand = prng(99);
  const alphabet = 'PLAINLOGIN =*+/\0abc12';
  for (let i = 0; i < 5000; i++) {
    let s = '';
    for (let j = Math.floor(rand() * 20); j > 0; j--) s += alphabet[Math.floor(rand() * alphabet.length)];
    const start = saslStart(s);
    if (start.kind === 'challenge') saslContinue(start.state, s);
  }
});
