import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fold, mergeTests, scoreRefusal, spamHeaders } from './scoring.ts';

const s = { tag_at: 5, reject_at: 15, add_headers: 'all' as const };

test('above tag_at: the three SpamAssassin headers, tests sorted by name', () => {
  const h = spamHeaders(7.5, [{ name: 'helo', score: 2.5 }, { name: 'dnsbl', score: 5 }], s);
  assert.deepEqual(h, ['X-Spam-Flag: YES\r\n', 'X-Spam-Score: 7.5\r\n', 'X-Spam-Level: *******\r\n', 'X-Spam-Status: Yes, score=7.5 required=5.0 tests=dnsbl,helo\r\n']);
});

test('below tag_at: X-Spam-Status No, no flag; add_headers spam and none', () => {
  assert.deepEqual(spamHeaders(0, [], s), ['X-Spam-Score: 0.0\r\n', 'X-Spam-Status: No, score=0.0 required=5.0 tests=none\r\n']);
  assert.deepEqual(spamHeaders(1, [], { ...s, add_headers: 'spam' }), []);
  assert.deepEqual(spamHeaders(99, [], { ...s, add_headers: 'none' }), []);
  assert.equal(spamHeaders(6, [], { ...s, add_headers: 'spam' })[0], 'X-Spam-Flag: YES\r\n');
});

test('reject_at names the three largest contributors; tempfail_at below it', () => {
  const tests = [
    { name: 'a', score: 1 },
    { name: 'dnsbl', score: 8 },
    { name: 'helo', score: 5 },
    { name: 'MFILTER_12', score: 3 },
  ];
  assert.equal(scoreRefusal(17, tests, s), '550 5.7.1 Message refused as spam (score 17.0, limit 15.0): dnsbl=8.0 helo=5.0 MFILTER_12=3.0');
  assert.equal(scoreRefusal(14.9, tests, s), undefined);
  assert.match(scoreRefusal(12, tests, { ...s, tempfail_at: 10 }) ?? '', /^451 4\.7\.1 Message deferred as likely spam \(score 12\.0, limit 10\.0\): dnsbl=8\.0/);
});

test('contributions by the same name add up; zero ones are left out', () => {
  assert.deepEqual(mergeTests([{ name: 'x', score: 1 }, { name: 'y', score: 0 }, { name: 'x', score: 2 }]), [{ name: 'x', score: 3 }]);
});

test('a long X-Spam-Status is folded at commas, every line under 78 octets', () => {
  const names = Array.from({ length: 30 }, (_, i) => `RULE_NUMBER_${i}`).join(',');
  const f = fold('X-Spam-Status', `Yes, score=30.0 required=5.0 tests=${names}`);
  const lines = f.split('\r\n').slice(0, -1);
  assert.ok(lines.length > 3);
  for (const l of lines) assert.ok(l.length <= 78, l);
  assert.equal(f.replace(/\r\n\t/g, ''), `X-Spam-Status: Yes, score=30.0 required=5.0 tests=${names}\r\n`);
});
