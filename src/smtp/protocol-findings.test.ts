import { test } from 'node:test';
import assert from 'node:assert/strict';
import { barePipelining, nonSmtpVerb } from './protocol-findings.ts';

test('lines of HTTP proxies and POP3 clients are not SMTP; SMTP verbs and unknown words are', () => {
  assert.equal(nonSmtpVerb('GET / HTTP/1.1'), 'GET');
  assert.equal(nonSmtpVerb('post /cgi-bin/x HTTP/1.0'), 'POST');
  assert.equal(nonSmtpVerb('CONNECT mx.example.test:25 HTTP/1.0'), 'CONNECT');
  assert.equal(nonSmtpVerb('USER alice'), 'USER');
  assert.equal(nonSmtpVerb('PASS'), 'PASS');
  for (const line of ['MAIL FROM:<a@b.test>', 'GETX', 'EHLO get', 'XCLIENT NAME=x', '']) assert.equal(nonSmtpVerb(line), undefined, line);
});

test('without EHLO every command must wait for its reply; after EHLO only those that end a group', () => {
  assert.equal(barePipelining('MAIL FROM:<a@b.test>', false), true, 'after HELO');
  assert.equal(barePipelining('EHLO client.test', false), true, 'EHLO itself ends a group');
  assert.equal(barePipelining('MAIL FROM:<a@b.test>', true), false);
  assert.equal(barePipelining('RCPT TO:<u@example.test>', true), false);
  assert.equal(barePipelining('RSET', true), false);
  assert.equal(barePipelining('QUIT', true), false);
  for (const line of ['DATA', 'data', 'EHLO again.test', 'HELO x', 'NOOP', 'VRFY u', 'EXPN l', 'STARTTLS']) assert.equal(barePipelining(line, true), true, line);
});
