import { test } from 'node:test';
import assert from 'node:assert/strict';
import { authResultsHeader, authservIdOf } from './results.ts';

test('the Authentication-Results field: one result per folded line, values quoted when they must be', () => {
  assert.equal(authResultsHeader('mx.example.test', {}), 'Authentication-Results: mx.example.test; none\r\n');
  assert.equal(
    authResultsHeader('mx.example.test', { spf: { result: 'pass', domain: 'example.org', identity: 'mailfrom', value: 'alice@example.org', comment: 'mx.example.test: domain of alice@example.org designates 192.0.2.1 as permitted sender' } }, 'alice'),
    'Authentication-Results: mx.example.test;\r\n\tspf=pass (mx.example.test: domain of alice@example.org designates 192.0.2.1 as permitted sender) smtp.mailfrom=alice@example.org;\r\n\tauth=pass smtp.auth=alice\r\n',
  );
  assert.equal(authResultsHeader('mx', { spf: { result: 'none', domain: 'h.example', identity: 'helo', value: 'h.example' } }), 'Authentication-Results: mx;\r\n\tspf=none smtp.helo=h.example\r\n');
  assert.match(authResultsHeader('mx', { spf: { result: 'fail', domain: 'x', identity: 'mailfrom', value: '"odd local"@x', comment: 'a (nested) \\ comment' } }), /spf=fail \(a \\\(nested\\\) \\\\ comment\) smtp\.mailfrom="\\"odd local\\"@x"/);
});

test('authservIdOf: the first token, after any comment', () => {
  assert.equal(authservIdOf(' MX.Example.Test; spf=pass'), 'mx.example.test');
  assert.equal(authservIdOf(' (forged) mx.example.test 1; dkim=pass'), 'mx.example.test');
  assert.equal(authservIdOf('mx.example.test;'), 'mx.example.test');
});
