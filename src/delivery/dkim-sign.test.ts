import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fromDomain, signingDomainFor } from './dkim-sign.ts';

test('fromDomain: the addr-spec domain of a From: value, lower case', () => {
  assert.equal(fromDomain('Ann <ann@Example.COM>'), 'example.com');
  assert.equal(fromDomain('ann@example.com'), 'example.com');
  assert.equal(fromDomain('"a@b" <x@c.example>'), 'c.example', 'the @ inside a quoted display name is not it');
  assert.equal(fromDomain('<x@c.example> (comment)'), 'c.example');
  assert.equal(fromDomain('undisclosed'), undefined);
  assert.equal(fromDomain('<>'), undefined);
});

test('signingDomainFor: the domain itself or its nearest signing parent; nothing else', () => {
  const d = ['example.com', 'mail.example.com', 'example.org'];
  assert.equal(signingDomainFor('example.com', d), 'example.com');
  assert.equal(signingDomainFor('news.example.com', d), 'example.com');
  assert.equal(signingDomainFor('a.mail.example.com', d), 'mail.example.com', 'the nearest');
  assert.equal(signingDomainFor('notexample.com', d), undefined);
  assert.equal(signingDomainFor(undefined, d), undefined);
});
