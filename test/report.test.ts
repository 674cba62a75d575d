// mxguard report over the log of a real run: the real daemon (text log) gets 3 messages it
// accepts, 2 from a banned sender and 1 it greylists; `mxguard report` (the real CLI) counts
// exactly those, in its JSON and its text form, from the file and from standard input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { freePort, maildirFiles, makeTempDir, waitUntil } from './harness/peers.ts';
import { startMxguard } from './harness/mxguard-process.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { atEnd } from './harness/cleanups.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');

/** One transaction; the reply that ended it (250 to DATA, or the refusal). */
async function send(port: number, from: string, to: string, n: number): Promise<string> {
  const c = await RawClient.connect(port);
  try {
    await c.reply(10_000);
    c.send('EHLO client.example.test\r\n');
    await c.reply();
    c.send(`MAIL FROM:<${from}>\r\n`);
    await c.reply();
    c.send(`RCPT TO:<${to}>\r\n`);
    const rcpt = await c.reply();
    if (!rcpt.startsWith('250')) return rcpt;
    c.send('DATA\r\n');
    await c.reply();
    c.send(`Message-ID: <report.${n}@client.example.test>\r\nSubject: report ${n}\r\n\r\nhello\r\n.\r\n`);
    const final = await c.reply(10_000);
    c.send('QUIT\r\n');
    await c.reply();
    return final;
  } finally {
    c.close();
  }
}

function report(args: string[], input?: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, 'report', ...args], { encoding: 'utf8', timeout: 30_000, ...(input !== undefined ? { input } : {}) });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('mxguard report counts what a real run received, delivered, refused and greylisted', { timeout: 120_000 }, async () => {
  const dir = await makeTempDir('report');
  atEnd(() => fs.rmSync(dir, { recursive: true, force: true }));
  const logFile = path.join(dir, 'log', 'mail.log');
  const port = await freePort();
  const mx = await startMxguard(
    dir,
    {
      hostname: 'mx.example.test',
      local_domains: ['example.test'],
      data_dir: path.join(dir, 'var'),
      mail_from: { require_domain: false },
      relay: { forward_from_ip: [] }, // loopback is a relay client by default, and those are never greylisted
      ban: { mailfrom: ['*@bad.test'] },
      greylist: { when: 'always', allow_recipients: ['alice@example.test'] },
      log: { level: 'info', file: logFile, format: 'text' },
    },
    port,
  );
  atEnd(() => mx.stop());

  const replies: string[] = [];
  for (let i = 0; i < 3; i++) replies.push(await send(port, 'sender@client.example.test', 'alice@example.test', i));
  for (let i = 0; i < 2; i++) replies.push(await send(port, `spammer${i}@bad.test`, 'alice@example.test', 10 + i));
  replies.push(await send(port, 'sender@client.example.test', 'bob@example.test', 20));
  assert.deepEqual(
    replies.map((r) => r.slice(0, 3)),
    ['250', '250', '250', '550', '550', '451'],
    replies.join('\n'),
  );
  assert.ok(await waitUntil(() => maildirFiles(path.join(dir, 'var', 'maildir', 'alice')).length === 3, 15_000));
  assert.ok(await waitUntil(() => fs.readFileSync(logFile, 'utf8').split(': delivered ').length === 4, 15_000), 'three delivered lines');
  assert.equal(await mx.stop(), 0);

  const j = report(['--json', logFile]);
  assert.equal(j.code, 0, j.stderr);
  const r = JSON.parse(j.stdout) as Record<string, unknown> & {
    refusedBy: { count: number; check: string; reason: string }[];
    tempfailedBy: { count: number; check: string }[];
    topRefusedSenders: { sender: string; count: number }[];
    topRefusedClients: { client: string; count: number }[];
    perHour: { received: number; refused: number; tempfailed: number; delivered: number }[];
  };
  console.log(`mxguard report --json: ${JSON.stringify({ ...r, perHour: r.perHour.length })}`);
  assert.equal(r.received, 3);
  assert.equal(r.delivered, 3);
  assert.equal(r.deferred, 0);
  assert.equal(r.bounced, 0);
  assert.equal(r.refused, 2);
  assert.equal(r.tempfailed, 1);
  assert.equal(r.greylisted, 1);
  assert.equal(r.connections, 7, 'six sessions and the harness probe that waited for the listener');
  assert.deepEqual(r.refusedBy, [{ count: 2, check: 'ban_mailfrom', reason: '<…>: Sender address rejected: matches *@bad.test' }]);
  assert.deepEqual(
    r.tempfailedBy.map((t) => [t.check, t.count]),
    [['greylist', 1]],
  );
  assert.deepEqual(r.topRefusedClients, [{ client: '127.0.0.1', count: 2 }]);
  assert.deepEqual(r.topRefusedSenders.map((s) => s.sender).sort(), ['spammer0@bad.test', 'spammer1@bad.test']);
  const sum = (k: 'received' | 'refused' | 'tempfailed' | 'delivered') => r.perHour.reduce((a, h) => a + h[k], 0);
  assert.deepEqual([sum('received'), sum('delivered'), sum('refused'), sum('tempfailed')], [3, 3, 2, 1], 'the hours add up to the totals');

  // The text report, from standard input, with another program's lines mixed in.
  const foreign = 'Dec  2 14:00:00 mx postfix/smtpd[12]: connect from unknown[192.0.2.1]\n';
  const t = report([], foreign + fs.readFileSync(logFile, 'utf8'));
  assert.equal(t.code, 0, t.stderr);
  console.log(t.stdout);
  assert.match(t.stdout, /^ +3 {2}received/m);
  assert.match(t.stdout, /^ +3 {2}delivered/m);
  assert.match(t.stdout, /^ +2 {2}refused/m);
  assert.match(t.stdout, /^ +1 {2}greylisted/m);
  assert.match(t.stdout, /^ +2 {2}ban_mailfrom +<…>: Sender address rejected: matches \*@bad\.test$/m);

  const missing = report([path.join(dir, 'nope.log')]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /nope\.log: ENOENT/);
});
