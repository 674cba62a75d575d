import { test } from 'node:test';
import assert from 'node:assert/strict';
import { normaliseSender, tripletKey } from './key.ts';

test('senders are normalised as postgrey does: case, BATV, +extension, numbers', () => {
  assert.equal(normaliseSender('Alice@Example.ORG'), 'alice@example.org');
  assert.equal(normaliseSender('prvs=1234abcdef=alice@example.org'), 'alice@example.org');
  assert.equal(normaliseSender('msprvs1=17abc=Alice@example.org'), 'alice@example.org');
  assert.equal(normaliseSender('list+bounces-4711@lists.example.org'), 'list@lists.example.org');
  assert.equal(normaliseSender('bounce-4711-42@lists.example.org'), 'bounce-#-#@lists.example.org');
  assert.equal(normaliseSender('bounce-4711@lists.example.org'), normaliseSender('bounce-4712@lists.example.org'));
  assert.equal(normaliseSender('user2000x@example.org'), 'user2000x@example.org', 'digits inside a word stay');
  assert.equal(normaliseSender('+only@example.org'), '+only@example.org', 'a leading + is not an extension');
  assert.equal(normaliseSender(''), '', 'the null sender');
});

test('the triplet: client network, normalised sender, recipient', () => {
  assert.equal(tripletKey('198.51.100.77', 'bounce-1@l.example', 'Bob@Example.test'), '198.51.100.0/24|bounce-#@l.example|bob@example.test');
  assert.equal(tripletKey('198.51.100.12', 'bounce-2@l.example', 'bob@example.test'), tripletKey('198.51.100.200', 'bounce-3@l.example', 'bob@example.test'), 'a pool retrying from a neighbour');
  assert.notEqual(tripletKey('198.51.101.1', 'a@l.example', 'bob@example.test'), tripletKey('198.51.100.1', 'a@l.example', 'bob@example.test'));
  assert.equal(tripletKey('2001:db8::1', '', 'postmaster@example.test'), '2001:db8::/64||postmaster@example.test');
  assert.equal(tripletKey('nonsense', 'a@b', 'c@d'), undefined);
});
