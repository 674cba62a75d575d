import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_LIMIT, historySql, parseHistoryQuery, type HistoryQuery } from './query.ts';

const parse = (qs: string): HistoryQuery | { error: string } => parseHistoryQuery(new URLSearchParams(qs));

test('no parameters: the newest DEFAULT_LIMIT', () => {
  assert.deepEqual(parse(''), { limit: DEFAULT_LIMIT });
  assert.deepEqual(historySql({ limit: 100 }), { sql: 'SELECT seq, record FROM tx ORDER BY seq DESC LIMIT ?', args: [100] });
});

test('every parameter, normalised: canonical IP, lower-case texts, numbers', () => {
  const q = parse('ip=::ffff:192.0.2.7&sender=Bob@Example.TEST&rcpt=%25_x&outcome=refused&check=ban_mailfrom&since=1000&until=2000&limit=5');
  assert.deepEqual(q, { ip: '192.0.2.7', sender: 'bob@example.test', rcpt: '%_x', outcome: 'refused', check: 'ban_mailfrom', since: 1000, until: 2000, limit: 5 });
  const { sql, args } = historySql(q as HistoryQuery);
  assert.equal(sql, 'SELECT seq, record FROM tx WHERE ip = ? AND instr(sender, ?) > 0 AND instr(rcpts, ?) > 0 AND outcome = ? AND instr(checks, ?) > 0 AND at >= ? AND at <= ? ORDER BY seq DESC LIMIT ?');
  assert.deepEqual(args, ['192.0.2.7', 'bob@example.test', '%_x', 'refused', ',ban_mailfrom,', 1000, 2000, 5]);
});

test('empty values count as not given', () => {
  assert.deepEqual(parse('ip=&sender=&rcpt=&outcome=&check=&since=&until=&limit='), { limit: DEFAULT_LIMIT });
});

test('bad parameters are errors that say what is wanted', () => {
  const bad: Record<string, RegExp> = {
    'ip=300.1.1.1': /ip: .* is not an IP address/,
    'ip=example.com': /not an IP address/,
    'outcome=spam': /outcome: one of accepted, refused, tempfailed, discarded, aborted/,
    'check=a%20b': /check: a check name/,
    "check=x';DROP": /check: a check name/,
    'since=yesterday': /since: milliseconds/,
    'until=-5': /until: milliseconds/,
    'since=10&until=5': /since is after until/,
    'limit=0': /limit: 1 to 1000/,
    'limit=1001': /limit: 1 to 1000/,
    'limit=ten': /limit: 1 to 1000/,
    'sender=a&sender=b': /sender given twice/,
    'verdict=reject': /unknown parameter "verdict"/,
  };
  for (const [qs, want] of Object.entries(bad)) {
    const r = parse(qs);
    assert.ok('error' in r, `${qs} accepted`);
    assert.match(r.error, want, qs);
  }
  const long = parse(`sender=${'a'.repeat(321)}`);
  assert.ok('error' in long && /longer than 320/.test(long.error));
  assert.deepEqual(parse('limit=1000'), { limit: 1000 });
});
