// The policy delegation protocol's parser and replies (src/policy-service/protocol.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_ATTRIBUTES, MAX_LINE, MAX_REQUEST, PolicyRequestReader, actionReply, prependAction, refusalAction, tarpitWait } from './protocol.ts';

const requestOf = (r: ReturnType<PolicyRequestReader['feed']>[number] | undefined): Record<string, string> => {
  assert.equal(r?.kind, 'request');
  return Object.fromEntries((r as { request: ReadonlyMap<string, string> }).request);
};

test('requests end at an empty line; several per stream, split anywhere', () => {
  const text = 'request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@b.example\nrecipient=\n\nrequest=smtpd_access_policy\r\ninstance=1.2\r\n\r\n';
  for (let cut = 0; cut <= text.length; cut++) {
    const r = new PolicyRequestReader();
    const out = [...r.feed(Buffer.from(text.slice(0, cut))), ...r.feed(Buffer.from(text.slice(cut)))];
    assert.equal(out.length, 2, `cut at ${cut}`);
    assert.deepEqual(requestOf(out[0]), { request: 'smtpd_access_policy', protocol_state: 'RCPT', sender: 'a@b.example', recipient: '' });
    assert.deepEqual(requestOf(out[1]), { request: 'smtpd_access_policy', instance: '1.2' });
  }
});

test('a value may hold "=" and UTF-8; a stray empty line is no request', () => {
  const r = new PolicyRequestReader();
  const out = r.feed(Buffer.from('\n\nccert_subject=CN=a=b\nsender=jörg@b.example\n\n'));
  assert.equal(out.length, 1);
  assert.deepEqual(requestOf(out[0]), { ccert_subject: 'CN=a=b', sender: 'jörg@b.example' });
});

test('bad input is an error, and nothing is read after it', () => {
  for (const bad of ['no equals sign\n', '=value\n', 'bad name=x\n', `${'x'.repeat(MAX_LINE + 1)}\n`]) {
    const r = new PolicyRequestReader();
    const out = r.feed(Buffer.from(bad));
    assert.equal(out.length, 1);
    assert.equal(out[0]?.kind, 'error', bad.slice(0, 20));
    assert.deepEqual(r.feed(Buffer.from('a=b\n\n')), [], 'closed for good');
  }
});

test('a line without its end is bounded too (no memory for an endless line)', () => {
  const r = new PolicyRequestReader();
  const chunk = Buffer.alloc(1000, 0x61);
  let out: ReturnType<PolicyRequestReader['feed']> = [];
  for (let i = 0; i < 20 && out.length === 0; i++) out = r.feed(chunk);
  assert.equal(out[0]?.kind, 'error');
});

test('too many attributes in one request is an error', () => {
  const r = new PolicyRequestReader();
  let text = '';
  for (let i = 0; i <= MAX_ATTRIBUTES; i++) text += `a${i}=x\n`;
  const out = r.feed(Buffer.from(text));
  assert.equal(out.at(-1)?.kind, 'error');
});

test('replies: one action line and the empty line; greylisting as DEFER_IF_PERMIT; headers on one line', () => {
  assert.equal(actionReply('DUNNO'), 'action=DUNNO\n\n');
  assert.equal(actionReply('550 5.7.1 a\r\nb'), 'action=550 5.7.1 a b\n\n');
  assert.equal(refusalAction('451 4.7.1 Greylisted, please try again in 300 seconds', true), 'DEFER_IF_PERMIT Greylisted, please try again in 300 seconds');
  assert.equal(refusalAction('451 4.7.1 Rate limit', false), '451 4.7.1 Rate limit');
  assert.equal(refusalAction('554 5.7.1 Banned', true), '554 5.7.1 Banned');
  assert.equal(prependAction('X-Spam-Status: Yes, score=7.0\r\n\ttests=A,B\r\n'), 'PREPEND X-Spam-Status: Yes, score=7.0 tests=A,B');
});

test('one request is bounded in all, not only per line', () => {
  const r = new PolicyRequestReader();
  let out: ReturnType<PolicyRequestReader['feed']> = [];
  for (let i = 0; i < 10 && out.length === 0; i++) out = r.feed(Buffer.from(`a${i}=${'x'.repeat(8000)}\n`));
  assert.equal(out[0]?.kind, 'error');
  assert.match((out[0] as { error: string }).error, /request longer than 65536/);
  // Many requests of Postfix's size in one stream are fine: the bound is per request.
  const ok = new PolicyRequestReader();
  const many = ok.feed(Buffer.from(`a=${'x'.repeat(2000)}\n\n`.repeat(100)));
  assert.equal(many.length, 100);
  assert.ok(many.every((m) => m.kind === 'request'));
  assert.ok(MAX_REQUEST >= 16 * 1024);
});

test('the tarpit wait: what the checks asked, within max_delay less the time judging took', () => {
  assert.equal(tarpitWait(10_000, 3000, 0), 3000);
  assert.equal(tarpitWait(10_000, 3000, 2500), 500);
  assert.equal(tarpitWait(1000, 3000, 500), 1000);
  assert.equal(tarpitWait(10_000, 3000, 4000), 0);
  assert.equal(tarpitWait(0, 3000, 0), 0);
});
