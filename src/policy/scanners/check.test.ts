// combine(): the scanners' outcomes as one verdict (issue 12). A refusal ends it at once; else a
// deferral; else every scanner's tests and header fields add up; a failed scanner counts as its
// on_error says, an oversize one is skipped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { combine } from './check.ts';
import type { Logger } from '../../util/log.ts';

type Outcomes = Parameters<typeof combine>[0];

/** A logger that keeps what it was told, by level. */
function recorder(): { log: Logger; lines: Array<{ level: string; msg: string; obj: Record<string, unknown> }> } {
  const lines: Array<{ level: string; msg: string; obj: Record<string, unknown> }> = [];
  const at = (level: string) => (obj: Record<string, unknown>, msg: string) => lines.push({ level, msg, obj });
  return { log: { info: at('info'), warn: at('warn'), error: at('error') } as unknown as Logger, lines };
}

const tag = (name: string, score: number, header?: string): Outcomes[number] => ({
  name,
  onError: 'tempfail',
  result: { kind: 'accept', tests: [{ name: name.toUpperCase(), score }], ...(header ? { headers: [header] } : {}) },
});

test('a refusal wins at once, whatever comes before or after it', () => {
  const v = combine([
    tag('spamd', 3, 'X-Spam-Report: x\r\n'),
    { name: 'rspamd', onError: 'tempfail', result: { kind: 'tempfail', code: 451, enhanced: '4.7.1', text: 'greylisted' } },
    { name: 'clamd', onError: 'tempfail', result: { kind: 'reject', code: 554, enhanced: '5.7.1', text: 'Virus found: Eicar-Test-Signature', log: 'clamd: FOUND' } },
    { name: 'hook', onError: 'tempfail', error: 'boom' },
  ]);
  assert.equal(v.kind, 'reject');
  assert.ok(v.kind === 'reject');
  assert.equal(v.check, 'clamd');
  assert.equal(v.code, 554);
  assert.equal(v.enhanced, '5.7.1');
  assert.equal(v.text, 'Virus found: Eicar-Test-Signature');
  assert.equal(v.setting, 'filters.scanners');
  assert.equal(v.log, 'clamd: FOUND');
});

test('else the first deferral; a deferral outranks points', () => {
  const v = combine([
    tag('spamd', 10),
    { name: 'rspamd', onError: 'accept', result: { kind: 'tempfail', code: 451, enhanced: '4.7.1', text: 'Try again later' } },
    { name: 'hook', onError: 'tempfail', result: { kind: 'tempfail', code: 451, enhanced: '4.7.1', text: 'second' } },
  ]);
  assert.ok(v.kind === 'tempfail');
  assert.equal(v.check, 'rspamd');
  assert.equal(v.text, 'Try again later');
  assert.equal(v.log, 'rspamd: deferred');
});

test('accepts add up: every test, every header field, the removals, one score', () => {
  const v = combine([
    tag('spamd', 2.5, 'X-A: 1\r\n'),
    { name: 'hook', onError: 'tempfail', result: { kind: 'accept', headers: ['X-Hook: seen\r\n'], removeHeaders: ['x-spam-flag'] } },
    tag('rspamd', -1, 'X-B: 2\r\n'),
  ]);
  assert.ok(v.kind === 'tag');
  assert.equal(v.check, 'scanners');
  assert.equal(v.score, 1.5);
  assert.deepEqual(v.tests, [
    { name: 'SPAMD', score: 2.5 },
    { name: 'RSPAMD', score: -1 },
  ]);
  assert.deepEqual(v.headers, ['X-A: 1\r\n', 'X-Hook: seen\r\n', 'X-B: 2\r\n']);
  assert.deepEqual(v.removeHeaders, ['x-spam-flag']);
});

test('accepts with nothing to add are no verdict at all', () => {
  const v = combine([{ name: 'hook', onError: 'tempfail', result: { kind: 'accept' } }]);
  assert.equal(v.kind, 'continue');
});

test('an accept with a warning (a change the scanner asked for, not made) logs it at warn, beside its info line', () => {
  const { log, lines } = recorder();
  const v = combine([{ name: 'qq', onError: 'tempfail', result: { kind: 'accept', log: 'qq: exit 0', warn: 'qq: body changed: change not applied' } }], log);
  assert.equal(v.kind, 'continue');
  assert.deepEqual(lines.map((l) => [l.level, l.msg, l.obj['scanner']]), [['info', 'qq: exit 0', 'qq'], ['warn', 'qq: body changed: change not applied', 'qq']]);
});

test('a failed scanner with on_error accept is logged at warn and left out', () => {
  const { log, lines } = recorder();
  const v = combine([{ name: 'clamd', onError: 'accept', error: 'connect ECONNREFUSED' }, tag('spamd', 1)], log);
  assert.ok(v.kind === 'tag');
  assert.equal(v.score, 1);
  const warn = lines.find((l) => l.level === 'warn');
  assert.ok(warn, JSON.stringify(lines));
  assert.equal(warn.obj['scanner'], 'clamd');
  assert.equal(warn.obj['err'], 'connect ECONNREFUSED');
  assert.equal(lines.filter((l) => l.level === 'error').length, 0);
});

test('a failed scanner with on_error tempfail refuses for now, naming it, logged at error; a later refusal still wins', () => {
  const { log, lines } = recorder();
  const v = combine([{ name: 'clamd', onError: 'tempfail', error: 'no answer within 100 ms (timeout)' }, tag('spamd', 1)], log);
  assert.ok(v.kind === 'tempfail');
  assert.equal(v.code, 451);
  assert.equal(v.enhanced, '4.7.1');
  assert.equal(v.check, 'clamd');
  assert.match(v.text, /could not be scanned \(clamd\)/);
  assert.equal(lines.find((l) => l.level === 'error')?.obj['scanner'], 'clamd');
  const r = combine([
    { name: 'clamd', onError: 'tempfail', error: 'boom' },
    { name: 'hook', onError: 'tempfail', result: { kind: 'reject', code: 554, enhanced: '5.7.1', text: 'no' } },
  ]);
  assert.equal(r.kind, 'reject');
});

test('an oversize scanner (on_oversize: skip) is left out, logged at info', () => {
  const { log, lines } = recorder();
  const v = combine([{ name: 'spamd', onError: 'tempfail', skipped: 'oversize' }], log);
  assert.equal(v.kind, 'continue');
  assert.match(lines.find((l) => l.level === 'info')?.msg ?? '', /max_size/);
  const w = combine([{ name: 'spamd', onError: 'tempfail', skipped: 'oversize' }, tag('rspamd', 4)]);
  assert.ok(w.kind === 'tag');
  assert.equal(w.score, 4);
});
