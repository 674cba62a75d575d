import { test } from 'node:test';
import assert from 'node:assert/strict';
import { asciiDomain, DomainSet } from './idna.ts';

test('asciiDomain maps Unicode names to their A-labels and leaves ASCII ones alone', () => {
  assert.equal(asciiDomain('bücher.example'), 'xn--bcher-kva.example');
  assert.equal(asciiDomain('BÜCHER.Example'), 'xn--bcher-kva.example');
  assert.equal(asciiDomain('xn--bcher-kva.EXAMPLE'), 'xn--bcher-kva.example');
  assert.equal(asciiDomain('Example.TEST'), 'example.test');
  // No URL-style rewriting of ASCII names; an unmappable name or literal comes back lower-cased.
  assert.equal(asciiDomain('127.1'), '127.1');
  assert.equal(asciiDomain('[192.0.2.1]'), '[192.0.2.1]');
  assert.equal(asciiDomain('bü cher.example'), 'bü cher.example');
  assert.equal(asciiDomain('１２７.０.０.１'), '１２７.０.０.１', 'full-width digits that map to an IP address');
  assert.equal(asciiDomain(''), '');
});

test('DomainSet matches either form of a name', () => {
  const set = new DomainSet(['bücher.example', 'plain.test']);
  assert.ok(set.has('bücher.example'));
  assert.ok(set.has('xn--bcher-kva.example'));
  assert.ok(set.has('Bücher.Example'));
  assert.ok(set.has('PLAIN.test'));
  assert.equal(set.has('buecher.example'), false);
  assert.equal(set.size, 2);
});
