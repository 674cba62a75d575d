import { test } from 'node:test';
import assert from 'node:assert/strict';
import { protocolVerdict, type ProtocolSettings } from './protocol.ts';

const S: ProtocolSettings = {
  early_talker: 'reject',
  early_talker_score: 3,
  non_smtp_command: 'score',
  non_smtp_command_score: 5,
  bare_pipelining: 'ignore',
  bare_pipelining_score: 2,
};

test('each protocol finding: ignore is no verdict, score a tag with its points, reject its refusal', () => {
  assert.equal(protocolVerdict('bare_pipelining', S), undefined);
  const early = protocolVerdict('early_talker', S);
  assert.equal(early?.kind, 'reject');
  assert.ok(early?.kind === 'reject' && early.code === 554 && early.setting === 'smtp.early_talker');
  const web = protocolVerdict('non_smtp_command', S, 'GET');
  assert.ok(web?.kind === 'tag', JSON.stringify(web));
  assert.equal(web.score, 5);
  assert.deepEqual(web.headers, ['X-Spam-Warning: non_smtp_command: non-SMTP command\r\n']);
  assert.equal(web.log, 'non_smtp_command: GET (scored 5)');
  const drop = protocolVerdict('bare_pipelining', { ...S, bare_pipelining: 'reject' });
  assert.ok(drop?.kind === 'reject' && drop.code === 521, JSON.stringify(drop));
});
