import { test } from 'node:test';
import assert from 'node:assert/strict';
import { normaliseSender, spellsAddress, tripletKey } from './key.ts';

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

test('generic names that spell out the address are recognised (by_domain keys them by their network instead)', () => {
  assert.equal(spellsAddress('c-73-162-5-10.hsd1.ca.comcast.net', '73.162.5.10'), true);
  assert.equal(spellsAddress('ec2-3-91-20-7.compute-1.amazonaws.com', '3.91.20.7'), true);
  assert.equal(spellsAddress('10.5.162.73.dyn.example.net', '73.162.5.10'), true, 'reversed octets too');
  assert.equal(spellsAddress('4a5b140a.dyn.example.net', '74.91.20.10'), true, 'hex');
  assert.equal(spellsAddress('mail-yw1-f170.google.com', '209.85.128.170'), false, 'one octet is a coincidence, not a pattern');
  assert.equal(spellsAddress('mx1.pool.example.test', '127.6.1.1'), false);
  assert.equal(spellsAddress('host-2001-db8-1-2.v6.example', '2001:db8:1:2::99'), true);
  assert.equal(spellsAddress('mail.example.org', '2001:db8::25'), false);
});
