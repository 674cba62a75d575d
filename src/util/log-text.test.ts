// log.format text: one event is one line whatever a client sends, the queue ID (else sid=) comes
// first, a queued transaction becomes its client, verdict and queued lines, and what is written
// reads back (mxguard report reads both formats).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { jsonToText, parseLogLine, parseTextLine, quoteValue } from './log-text.ts';

const TIME = '2026-12-02T14:08:07.682Z';
const line = (o: Record<string, unknown>) => `${JSON.stringify({ level: 30, time: TIME, pid: 4242, ...o })}\n`;
const text = (o: Record<string, unknown>) => jsonToText(line(o), 'mx1');

test('a session line: sid first, then the message, then key=value', () => {
  assert.equal(text({ sid: 'c74dx1', ip: '192.0.2.1', port: 47152, msg: 'connect' }), `${TIME} mx1 mxguard[4242]: sid=c74dx1 connect ip=192.0.2.1 port=47152\n`);
});

test('a line with a queue ID starts with it; levels are Postfix words', () => {
  assert.equal(
    text({ level: 40, component: 'forwarder', id: 'MX67AUIL01PBCY', rcpt: 'ok@example.test', reply: '451 4.4.1 try later', msg: 'deferred' }),
    `${TIME} mx1 mxguard[4242]: MX67AUIL01PBCY: warning: deferred component=forwarder rcpt=<ok@example.test> reply="451 4.4.1 try later"\n`,
  );
  assert.equal(text({ msg: 'queue loaded', queued: 0 }), `${TIME} mx1 mxguard[4242]: queue loaded queued=0\n`);
  // Only a queue ID leads: an MTA-STS policy id is a field like any other.
  assert.equal(text({ domain: 'x.test', id: '20160831085700Z', msg: 'MTA-STS: policy fetched' }), `${TIME} mx1 mxguard[4242]: MTA-STS: policy fetched domain=x.test id=20160831085700Z\n`);
});

test('hostile values: CR, LF, NUL, quotes, backslashes, U+2028 and C1 controls are escaped; one event is one line', () => {
  const helo = 'evil.test\r\n2026-12-02T00:00:00.000Z mx1 mxguard[1]: FAKEQUEUEID01: delivered\u0000"\\\u2028\u0085 x';
  const out = text({ sid: 'a1', helo, from: 'a b"@c\n', msg: `Command HELO refused\n${helo}` });
  assert.equal(out.split('\n').length, 2, out);
  assert.ok(out.endsWith('\n'));
  assert.ok(!/[\r\u0000\u2028\u0085]/.test(out), out);
  assert.match(text({ sid: 'a1', helo: 'abc\u202edcba' }), /helo="abc\\u202edcba"/, 'a bidi override is shown, not obeyed');
  assert.match(out, /helo="evil\.test\\r\\n2026-12-02T00:00:00\.000Z mx1 mxguard\[1\]: FAKEQUEUEID01: delivered\\x00\\"\\\\\\u2028\\x85 x"/);
  // ...and it reads back as it was.
  const ev = parseTextLine(out.trimEnd());
  assert.equal(ev?.fields.helo, helo);
  assert.equal(ev?.fields.from, 'a b"@c\n');
  assert.equal(ev?.msg, `Command HELO refused\n${helo}`);
  assert.equal(ev?.fields.sid, 'a1');
});

test('values: empty, numbers, booleans, arrays, nested objects (err) flattened', () => {
  assert.equal(quoteValue(''), '""');
  const out = text({ msg: 'x', a: '', n: 1.5, b: false, list: ['p', 'q r'], err: { type: 'Error', message: 'boom\nline 2' }, nil: null });
  assert.equal(out, `${TIME} mx1 mxguard[4242]: x a="" n=1.5 b=false list="p,q r" err.type=Error err.message="boom\\nline 2" nil=null\n`);
});

test('a message that could be misread (=, a leading ID or level word, sid=) is quoted', () => {
  for (const msg of ['a=b', 'ABCDEFGH123456: x', 'error: not really', 'sid=x y', '', ' padded']) {
    const out = text({ msg, k: 'v' });
    const ev = parseTextLine(out.trimEnd());
    assert.equal(ev?.msg, msg, out);
    assert.equal(ev?.fields.k, 'v', out);
    assert.equal(ev?.level, 30, out);
  }
});

test('a queued transaction: client line, one line per check that did more than continue, the queued line with message-id', () => {
  const out = text({
    sid: 'c74dx1',
    ip: '192.0.2.1',
    id: 'MX67AUIL01PBCY',
    from: '',
    rcpts: ['ok@example.test', 'two@example.test'],
    size: 448,
    checks: 'helo:continue,dnsbl:tag+2.5(12ms),greylist:continue,local_domains:accept',
    score: 2.5,
    reply: '250 2.0.0 Ok: queued as MX67AUIL01PBCY',
    outcome: 'accepted',
    ms: 7,
    helo: 'client.example',
    port: 47152,
    connectedAt: '2026-12-02T14:08:07.600Z',
    msgid: '<abc@client.example>',
    msg: 'transaction',
  });
  const lines = out.trimEnd().split('\n');
  assert.deepEqual(
    lines.map((l) => l.slice(`${TIME} mx1 mxguard[4242]: `.length)),
    [
      'MX67AUIL01PBCY: client=unknown[192.0.2.1]:47152 sid=c74dx1 helo=client.example connected_at=2026-12-02T14:08:07.600Z',
      'MX67AUIL01PBCY: check=dnsbl verdict=tag score=+2.5 ms=12 sid=c74dx1',
      'MX67AUIL01PBCY: check=local_domains verdict=accept sid=c74dx1',
      'MX67AUIL01PBCY: queued message-id=<abc@client.example> from=<> size=448 sid=c74dx1 ip=192.0.2.1 rcpts=<ok@example.test>,<two@example.test> checks=helo:continue,dnsbl:tag+2.5(12ms),greylist:continue,local_domains:accept score=2.5 reply="250 2.0.0 Ok: queued as MX67AUIL01PBCY" outcome=accepted ms=7',
    ],
  );
  const queued = parseTextLine(lines[3] as string);
  assert.equal(queued?.msg, 'queued');
  assert.equal(queued?.fields.id, 'MX67AUIL01PBCY');
  assert.equal(queued?.fields.msgid, '<abc@client.example>');
  assert.equal(queued?.fields.from, '');
  assert.deepEqual(queued?.fields.rcpts, ['ok@example.test', 'two@example.test']);
  assert.equal(queued?.fields.outcome, 'accepted');
  const client = parseTextLine(lines[0] as string);
  assert.equal(client?.msg, '');
  assert.equal(client?.fields.client, 'unknown[192.0.2.1]:47152');
  assert.equal(client?.fields.connectedAt, '2026-12-02T14:08:07.600Z');
});

test('a transaction without a queue ID (refused at RCPT) is one sid= line', () => {
  const out = text({ sid: 's1', ip: '192.0.2.9', from: 'x@bad.test', rcpts: [], checks: 'ban_mailfrom:reject', reply: '550 5.7.1 no', outcome: 'refused', msg: 'transaction' });
  assert.equal(out.split('\n').length, 2);
  const ev = parseTextLine(out.trimEnd());
  assert.equal(ev?.msg, 'transaction');
  assert.equal(ev?.fields.sid, 's1');
  assert.equal(ev?.fields.outcome, 'refused');
  assert.equal(ev?.fields.reply, '550 5.7.1 no');
});

test('not JSON (never from pino, but never a crash either): one quoted line', () => {
  const out = jsonToText('not json\r\nsecond\n', 'mx1');
  assert.equal(out.split('\n').length, 2);
  assert.match(out, /mxguard\[\d+\]: "not json\\r\\nsecond"\n$/);
});

test('parseLogLine reads our JSON and text lines and ignores the rest', () => {
  const j = parseLogLine(line({ sid: 's', msg: 'connect', port: 1 }).trimEnd());
  assert.equal(j?.format, 'json');
  assert.equal(j?.msg, 'connect');
  assert.equal(j?.fields.port, 1);
  const t = parseLogLine(text({ sid: 's', msg: 'connect', port: 1 }).trimEnd());
  assert.equal(t?.format, 'text');
  assert.equal(t?.fields.port, '1');
  assert.equal(t?.time, TIME);
  assert.equal(t?.pid, 4242);
  for (const other of ['', 'Dec  2 14:00:00 mx postfix/smtpd[12]: connect from x', '{"a":1}', '{broken', '[1,2]', 'null']) assert.equal(parseLogLine(other), undefined, other);
});
