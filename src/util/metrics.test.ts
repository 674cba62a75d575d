import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Metrics, Tally } from './metrics.ts';

test('a Tally counts per pair of labels and keeps at most 500 series, the rest under "other"', () => {
  const t = new Tally<string, string>();
  t.add('a', 'x');
  t.add('a', 'x', 2);
  t.add('a', 'y');
  assert.equal(t.get('a', 'x'), 3);
  for (let i = 0; i < 600; i++) t.add(`k${i}`, 'v');
  const entries = [...t.entries()];
  assert.equal(entries.filter(([a]) => a !== 'other').length, 500);
  assert.deepEqual(entries.find(([a]) => a === 'other'), ['other', 'other', 102]);
});

test('the text format: replies by phase, class and code; sessions; the scanner histogram; the queue gauges', async () => {
  const m = new Metrics('9.9.9');
  m.reply('RCPT', '250 2.1.5 Ok');
  m.reply('RCPT', '451 4.7.1 Greylisted');
  m.reply('EHLO', '250-mx.example.test\r\n250 SMTPUTF8\r\n');
  m.reply('command', 'garbage');
  m.session('quit');
  m.verdict('greylist', 'tempfail');
  m.scanner('spamd', 0.02);
  m.scanner('spamd', 45, 'timeout');
  m.setQueueSource(() => ({ active: { count: 2, oldestAt: Date.now() - 5000 }, deferred: { count: 1, oldestAt: Date.now() - 65_000 } }));
  m.setGreylistSource(() => Promise.reject(new Error('store unreachable')));
  const { body, contentType } = await m.text();
  assert.match(contentType, /^text\/plain; version=0\.0\.4/);
  const lines = body.split('\n');
  for (const want of [
    'mxguard_build_info{version="9.9.9",node="' + process.versions.node + '"} 1',
    'mxguard_smtp_replies_total{phase="rcpt",class="2xx",code="250"} 1',
    'mxguard_smtp_replies_total{phase="rcpt",class="4xx",code="451"} 1',
    'mxguard_smtp_replies_total{phase="ehlo",class="2xx",code="250"} 1',
    'mxguard_smtp_replies_total{phase="command",class="other",code="other"} 1',
    'mxguard_sessions_total{end="quit"} 1',
    'mxguard_verdicts_total{check="greylist",verdict="tempfail"} 1',
    'mxguard_scanner_errors_total{scanner="spamd",kind="timeout"} 1',
    'mxguard_scanner_duration_seconds_bucket{le="0.025",scanner="spamd"} 1',
    'mxguard_scanner_duration_seconds_bucket{le="30",scanner="spamd"} 1',
    'mxguard_scanner_duration_seconds_bucket{le="+Inf",scanner="spamd"} 2',
    'mxguard_scanner_duration_seconds_count{scanner="spamd"} 2',
    'mxguard_queue_messages{state="active"} 2',
    'mxguard_queue_messages{state="deferred"} 1',
    'mxguard_queue_oldest_age_seconds{state="deferred"} 65',
    'mxguard_log_lines_dropped_total 0',
  ]) assert.ok(lines.includes(want), `missing: ${want}`);
  assert.ok(lines.includes('# TYPE mxguard_scanner_duration_seconds histogram'));
  assert.ok(lines.includes('mxguard_greylist_pending 0'), 'nothing read yet');
  m.setGreylistSource(() => Promise.resolve(4));
  assert.ok((await m.text()).body.split('\n').includes('mxguard_greylist_pending 4'));
  m.setGreylistSource(() => Promise.reject(new Error('store unreachable')));
  assert.ok((await m.text()).body.split('\n').includes('mxguard_greylist_pending 4'), 'the last value read stands while the store is unreachable');
  // Counters grow between scrapes (read out anew each time, never doubled).
  m.session('quit');
  assert.ok((await m.text()).body.split('\n').includes('mxguard_sessions_total{end="quit"} 2'));
});
