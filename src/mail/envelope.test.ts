import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isEnvelope } from './envelope.ts';

const old = { id: 'Q1', mailFrom: 'a@b.test', rcpts: ['c@d.test'], receivedAt: 1, client: { ip: '127.0.0.1', tls: false }, smtputf8: true };

test('isEnvelope: envelopes written before DSN still read; the DSN fields are optional objects', () => {
  assert.equal(isEnvelope(JSON.parse(JSON.stringify(old))), true);
  const withDsn = { ...old, dsn: { ret: 'HDRS', envid: 'E1' }, rcptDsn: { 'c@d.test': { notify: ['SUCCESS'], orcpt: { type: 'rfc822', addr: 'x@y.test' } } } };
  assert.equal(isEnvelope(JSON.parse(JSON.stringify(withDsn))), true);
  assert.equal(isEnvelope({ ...old, dsn: null }), false);
  assert.equal(isEnvelope({ ...old, rcptDsn: 'NOTIFY=NEVER' }), false);
});
