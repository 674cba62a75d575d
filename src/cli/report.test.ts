// mxguard report's counting: the same events in JSON and in text give the same summary; other
// programs' lines and broken lines are ignored.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { jsonToText } from '../util/log-text.ts';
import { formatReport, reasonOf, refusingCheck, reportCommand, summarize } from './report.ts';

let t = Date.parse('2026-12-02T13:58:00.000Z');
const ev = (o: Record<string, unknown>): string => JSON.stringify({ level: 30, time: new Date((t += 30_000)).toISOString(), pid: 7, ...o });
const tx = (o: Record<string, unknown>) => ev({ sid: 's', ip: '192.0.2.1', rcpts: [], score: 0, ms: 1, msg: 'transaction', ...o });

function sample(): string[] {
  t = Date.parse('2026-12-02T13:58:00.000Z');
  return [
    ev({ sid: 's1', ip: '192.0.2.1', port: 1, msg: 'connect' }),
    tx({ id: 'MX67AUIL01PBC1', from: 'a@good.test', rcpts: ['x@example.test'], size: 1000, checks: 'helo:continue,local_domains:accept', reply: '250 2.0.0 Ok: queued as MX67AUIL01PBC1', outcome: 'accepted', msgid: '<1@good.test>' }),
    ev({ component: 'forwarder', id: 'MX67AUIL01PBC1', rcpt: 'x@example.test', status: 'ok', reply: '250 ok', msg: 'delivered' }),
    ev({ sid: 's2', ip: '192.0.2.1', port: 1, msg: 'connect' }),
    tx({ id: 'MX67AUIL01PBC2', from: 'b@good.test', rcpts: ['x@example.test', 'y@example.test'], size: 24, checks: 'local_domains:accept', reply: '250 2.0.0 Ok', outcome: 'accepted' }),
    ev({ component: 'forwarder', id: 'MX67AUIL01PBC2', rcpt: 'x@example.test', msg: 'delivered' }),
    ev({ component: 'forwarder', id: 'MX67AUIL01PBC2', rcpt: 'y@example.test', reply: '451 later', msg: 'deferred' }),
    ev({ component: 'forwarder', id: 'MX67AUIL01PBC2', rcpt: 'y@example.test', reply: '451 later', msg: 'deferred' }),
    ev({ component: 'forwarder', id: 'MX67AUIL01PBC2', rcpt: 'y@example.test', reply: '550 no', msg: 'bounced' }),
    tx({ ip: '198.51.100.7', from: 'spam@bad.test', checks: 'helo:continue,ban_mailfrom:reject', reply: '550 5.7.1 <spam@bad.test>: Sender address rejected: matches *@bad.test', outcome: 'refused' }),
    tx({ ip: '198.51.100.7', from: 'other@bad.test', checks: 'ban_mailfrom:reject', reply: '550 5.7.1 <other@bad.test>: Sender address rejected: matches *@bad.test', outcome: 'refused' }),
    tx({ ip: '203.0.113.5', from: '', checks: 'dnsbl:reject(40ms),ban_mailfrom:continue', reply: '554 5.7.1 Service unavailable; client listed', outcome: 'refused' }),
    tx({ ip: '203.0.113.6', from: 'g@good.test', checks: 'greylist:tempfail(1ms)', reply: '451 4.7.1 Greylisted, please try again in 300 seconds', outcome: 'tempfailed' }),
    tx({ ip: '203.0.113.6', from: 'g@good.test', checks: 'greylist:tempfail', reply: '451 4.7.1 Greylisted, please try again in 120 seconds', outcome: 'tempfailed' }),
    tx({ from: 'r@good.test', checks: 'helo:continue', outcome: 'aborted' }),
    ev({ level: 40, sid: 's9', ip: '203.0.113.9', check: 'max_connections_per_ip', msg: 'connection refused: too many connections from this IP' }),
  ];
}

test('counts by outcome, check and reason; tops; per hour', () => {
  const r = summarize(sample());
  assert.equal(r.received, 2);
  assert.equal(r.receivedBytes, 1024);
  assert.equal(r.delivered, 2);
  assert.equal(r.deferred, 2);
  assert.equal(r.deferredMessages, 1);
  assert.equal(r.bounced, 1);
  assert.equal(r.refused, 3);
  assert.equal(r.tempfailed, 2);
  assert.equal(r.greylisted, 2);
  assert.equal(r.aborted, 1);
  assert.equal(r.connections, 2);
  assert.equal(r.connectionsRefused, 1);
  assert.deepEqual(r.refusedBy, [
    { count: 2, check: 'ban_mailfrom', reason: '<…>: Sender address rejected: matches *@bad.test' },
    { count: 1, check: 'dnsbl', reason: 'Service unavailable; client listed' },
  ]);
  assert.deepEqual(r.tempfailedBy, [{ count: 2, check: 'greylist', reason: 'Greylisted, please try again in N seconds' }]);
  assert.deepEqual(r.topRefusedClients, [
    { client: '198.51.100.7', count: 2 },
    { client: '203.0.113.5', count: 1 },
  ]);
  assert.deepEqual(r.topRefusedSenders[2], { sender: '<>', count: 1 });
  assert.deepEqual(r.connectionsRefusedBy, [{ check: 'max_connections_per_ip', count: 1 }]);
  // 16 events 30 s apart from 13:58:30: the first three in the 13:00 hour.
  assert.deepEqual(
    r.perHour.map((h) => [h.hour, h.received, h.delivered, h.deferred, h.bounced, h.refused, h.tempfailed]),
    [
      ['2026-12-02 13:00', 1, 1, 0, 0, 0, 0],
      ['2026-12-02 14:00', 1, 1, 2, 1, 3, 2],
    ],
  );
});

test('the text form of the same log gives the same summary; foreign and broken lines are skipped', () => {
  const json = sample();
  const asText = json.flatMap((l) => jsonToText(`${l}\n`, 'mx1').trimEnd().split('\n'));
  assert.ok(asText.length > json.length, 'the queued transactions became several lines');
  const noise = ['Dec  2 14:00:00 mx postfix/smtpd[1]: connect from x[1.2.3.4]', '{"level":30,"msg":"no time or pid"}', '{"level":30,"time":"2026-', '', 'random words = here'];
  const a = summarize(json);
  const b = summarize([...noise, ...asText]);
  assert.deepEqual({ ...b, lines: 0, ours: 0 }, { ...a, lines: 0, ours: 0 });
  assert.equal(b.lines, noise.length + asText.length);
  assert.equal(b.ours, asText.length);
});

test('reasons and the refusing check', () => {
  assert.equal(reasonOf('550 5.1.1 <u@x>: Recipient address rejected: User unknown'), '<…>: Recipient address rejected: User unknown');
  assert.equal(reasonOf('554 Service unavailable'), 'Service unavailable');
  assert.equal(refusingCheck('helo:reject,sender_domain:reject(3ms)', 'reject'), 'helo');
  assert.equal(refusingCheck('helo:continue,greylist:tempfail', 'tempfail'), 'greylist');
  assert.equal(refusingCheck('', 'reject'), 'smtp');
});

test('reportCommand reads standard input; --json is the same numbers', async () => {
  const input = Readable.from([sample().join('\n')]);
  const out = JSON.parse(await reportCommand([], { json: true }, input)) as { received: number; refused: number };
  assert.equal(out.received, 2);
  assert.equal(out.refused, 3);
  const textOut = formatReport(summarize(sample()));
  assert.match(textOut, /^\s+2 {2}received/m);
  assert.match(textOut, /^\s+2 {2}ban_mailfrom +<…>: Sender address rejected/m);
  assert.match(textOut, /^ {2}2026-12-02 14:00 +1 +1 +2 +1 +3 +2$/m);
});

test('a missing file is an error naming it', async () => {
  await assert.rejects(reportCommand(['/nonexistent/mxguard.log'], {}), /\/nonexistent\/mxguard\.log: ENOENT/);
});

test('gzip is recognised by its magic octets (1f 8b), not the name: files and standard input', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-report-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const text = `${sample().join('\n')}\n`;
  const gz = zlib.gzipSync(text);
  fs.writeFileSync(path.join(dir, 'mail.log.1'), gz); // logrotate's compress without the .gz suffix
  fs.writeFileSync(path.join(dir, 'plain.gz'), text); // named .gz, never compressed
  const received = async (files: string[], stdin?: Readable): Promise<number> => (JSON.parse(await reportCommand(files, { json: true }, stdin)) as { received: number }).received;
  assert.equal(await received([path.join(dir, 'mail.log.1')]), 2);
  assert.equal(await received([path.join(dir, 'plain.gz')]), 2);
  // Standard input in small pieces: the magic split over two chunks.
  const pieces = [gz.subarray(0, 1), gz.subarray(1, 7), gz.subarray(7)];
  assert.equal(await received([], Readable.from(pieces)), 2, 'gzip on standard input');
  assert.equal(await received([], Readable.from([Buffer.from(text)])), 2, 'plain standard input');
  assert.equal(await received([], Readable.from([])), 0, 'empty standard input');
  assert.equal(await received([], Readable.from([Buffer.from('x')])), 0, 'one octet');
});

test("the policy service's transactions (Postfix's mail) are counted apart, not in the SMTP totals", () => {
  t = Date.parse('2026-12-02T15:00:00.000Z');
  const pf = (o: Record<string, unknown>) => tx({ component: 'policy-service', sid: 'pf-1A2B3C', ip: '203.0.113.50', ...o });
  const policyLines = [
    pf({ from: 'a@good.test', rcpts: ['x@example.test'], size: 500, checks: 'helo:continue', reply: '250 2.0.0 Ok', outcome: 'accepted' }),
    pf({ from: 'spam@bad.test', checks: 'ban_mailfrom:reject', reply: '550 5.7.1 <spam@bad.test>: Sender address rejected: matches *@bad.test', outcome: 'refused' }),
    pf({ from: 'g@good.test', checks: 'greylist:tempfail', reply: '451 4.7.1 Greylisted, please try again in 300 seconds', outcome: 'tempfailed' }),
    pf({ from: 'r@good.test', checks: '', outcome: 'aborted' }),
  ];
  const smtpOnly = summarize(sample());
  const both = summarize([...sample(), ...policyLines]);
  const { policyService, perHour, ...smtp } = both;
  const { policyService: noPolicy, perHour: _, ...smtpWithout } = smtpOnly;
  assert.deepEqual({ ...smtp, lines: 0, ours: 0, last: '' }, { ...smtpWithout, lines: 0, ours: 0, last: '' }, 'the SMTP totals are unchanged');
  assert.deepEqual(perHour, smtpOnly.perHour);
  assert.deepEqual(policyService, {
    accepted: 1,
    refused: 1,
    tempfailed: 1,
    greylisted: 1,
    discarded: 0,
    aborted: 1,
    refusedBy: [{ count: 1, check: 'ban_mailfrom', reason: '<…>: Sender address rejected: matches *@bad.test' }],
    tempfailedBy: [{ count: 1, check: 'greylist', reason: 'Greylisted, please try again in N seconds' }],
  });
  assert.deepEqual(noPolicy, { accepted: 0, refused: 0, tempfailed: 0, greylisted: 0, discarded: 0, aborted: 0, refusedBy: [], tempfailedBy: [] });
  // The text form says the same.
  const asText = [...sample(), ...policyLines].flatMap((l) => jsonToText(`${l}\n`, 'mx1').trimEnd().split('\n'));
  assert.deepEqual(summarize(asText).policyService, policyService);
  const out = formatReport(both);
  assert.match(out, /^Policy service \(Postfix's transactions; not in the totals above\)\n\s+1 {2}accepted\n\s+1 {2}refused\n\s+1 {2}tempfailed/m);
  assert.doesNotMatch(formatReport(smtpOnly), /Policy service/, 'no section without policy service lines');
});
