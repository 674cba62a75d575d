// SMTPUTF8 only where a message needs it, and DSN (RFC 3461, RFC 6533) through real SMTP into
// real peers (issue 9, items 3 and 6): mxguard runs in-process and forwards to a real Dovecot
// LMTP (no SMTPUTF8, no DSN), a private Postfix (DSN) and smtp-sink (DSN on or off).
// Every peer is stopped in an after-hook, also when an assertion fails.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { maildirFiles, makeTempDir, parseSinkDump, startDovecotAndPostfix, startSmtpSink, waitUntil, type MailStorePeer, type SmtpSinkPeer } from './harness/peers.ts';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import type { ConfigInput } from '../src/config/schema.ts';

const LMTP_DOMAIN = 'lmtp.example.test';
const PF_DOMAIN = 'pf.example.test';

let dovecot: MailStorePeer;
let postfix: MailStorePeer;
const cleanups: Array<() => unknown> = [];

before(async () => {
  const peers = await startDovecotAndPostfix([PF_DOMAIN]);
  cleanups.push(peers.stop);
  ({ dovecot, postfix } = peers);
});

after(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function app(t: { after(fn: () => unknown): void }, overrides: Partial<ConfigInput>): Promise<TestApp> {
  // The senders (client.test) have their mailboxes behind the same downstream: our bounces go there.
  const routes: Record<string, string> = overrides.deliver !== undefined ? { 'client.test': overrides.deliver } : {};
  const a = await startTestApp({ queue: { retry: ['1h'] }, routes, ...overrides });
  t.after(() => a.stop());
  return a;
}

let seq = 0;
function uniqueId(tag: string): string {
  return `${tag}.${process.pid}.${++seq}.${Date.now()}@client.test`;
}

/** One transaction over real SMTP; returns every reply (banner, EHLO, MAIL, RCPT…, DATA, end of data). */
async function transact(port: number, mail: string, rcpts: readonly string[], message: string): Promise<string[]> {
  const c = await RawClient.connect(port);
  try {
    const out = [await c.reply()];
    const say = async (line: string): Promise<string> => {
      c.send(Buffer.from(line + '\r\n', 'utf8'));
      const r = await c.reply(10_000);
      out.push(r);
      return r;
    };
    await say('EHLO client.test');
    if (!(await say(`MAIL FROM:${mail}`)).startsWith('250')) return out;
    let accepted = 0;
    for (const r of rcpts) if ((await say(`RCPT TO:${r}`)).startsWith('250')) accepted++;
    if (accepted === 0) return out;
    if (!(await say('DATA')).startsWith('354')) return out;
    await say(message.replace(/\r?\n/g, '\r\n') + '\r\n.');
    c.send('QUIT\r\n');
    return out;
  } finally {
    c.close();
  }
}

function messageText(id: string, subject = 'plain ascii', body = 'Hello.'): string {
  return `From: sender@client.test\nTo: someone@example.test\nSubject: ${subject}\nMessage-ID: <${id}>\n\n${body}\n`;
}

/** Files in a Maildir holding `needle`, read as UTF-8. */
function mailWith(maildir: string, needle: string): string[] {
  return maildirFiles(maildir)
    .map((f) => fs.readFileSync(f, 'utf8'))
    .filter((m) => m.includes(needle));
}

async function waitMail(maildir: string, needle: string, why: () => string): Promise<string> {
  assert.ok(await waitUntil(() => mailWith(maildir, needle).length > 0, 15_000), `no mail with ${needle} in ${maildir}\n${why()}`);
  return mailWith(maildir, needle)[0] as string;
}

/** The fields of a delivery-status body part (unfolded), per block: [per-message, per-recipient…]. */
function statusBlocks(mail: string): Array<Map<string, string>> {
  const m = /Content-Type: message\/(?:global-)?delivery-status\r?\n(?:[^\r\n]+\r?\n)*\r?\n([\s\S]*?)\r?\n--/.exec(mail);
  assert.ok(m, `no delivery-status part in:\n${mail}`);
  return (m[1] as string)
    .replace(/\r\n/g, '\n')
    .replace(/\n[ \t]+/g, ' ')
    .trim()
    .split(/\n\n+/)
    .map((block) => new Map(block.split('\n').map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()] as [string, string])));
}

// --- item 3: SMTPUTF8 only when needed ----------------------------------------------------------

test('an all-ASCII message sent with SMTPUTF8 is delivered into a real Dovecot LMTP, which offers no SMTPUTF8', async (t) => {
  const mx = await app(t, { local_domains: [LMTP_DOMAIN], deliver: `lmtp://127.0.0.1:${dovecot.port}` });
  const id = uniqueId('ascii-utf8');
  const replies = await transact(mx.port, '<sender@client.test> SMTPUTF8', [`<alice@${LMTP_DOMAIN}>`], messageText(id));
  assert.match(replies.at(-1) ?? '', /^250 2\.0\.0 Ok: queued as/, replies.join('\n'));
  const got = await waitMail(dovecot.maildirFor(`alice@${LMTP_DOMAIN}`), id, () => `${dovecot.log()}\n${JSON.stringify(mx.logs())}`);
  assert.match(got, /^Subject: plain ascii$/m);
  // (The file can show up a moment before the forwarder logs the 250.)
  assert.ok(await waitUntil(() => mx.logs().some((l) => l.msg === 'delivered' && l.rcpt === `alice@${LMTP_DOMAIN}`), 5000), JSON.stringify(mx.logs()));
  assert.equal(mx.logs().filter((l) => l.msg === 'bounced').length, 0);
});

test('a UTF-8 header or a UTF-8 address still needs SMTPUTF8: Dovecot LMTP gets none, the sender a 5.6.7 bounce (RFC 6533 types)', async (t) => {
  const mx = await app(t, { local_domains: [LMTP_DOMAIN], deliver: `lmtp://127.0.0.1:${dovecot.port}` });
  const senderBox = dovecot.maildirFor('utf8-sender@client.test');
  const why = (): string => `${dovecot.log()}\n${JSON.stringify(mx.logs())}`;

  // A UTF-8 Subject in an SMTPUTF8 transaction.
  const hid = uniqueId('utf8-header');
  const r1 = await transact(mx.port, '<utf8-sender@client.test> SMTPUTF8', [`<bob@${LMTP_DOMAIN}>`], messageText(hid, 'Gr\u00fc\u00dfe aus K\u00f6ln'));
  assert.match(r1.at(-1) ?? '', /^250 /, r1.join('\n'));
  const b1 = await waitMail(senderBox, hid, why);
  assert.match(b1, /^Subject: Undelivered Mail Returned to Sender$/m);
  assert.match(b1, /^Status: 5\.6\.7$/m);
  assert.match(b1, /^Content-Type: message\/global-headers$/m, 'the UTF-8 header block is returned as message/global-headers');
  assert.match(b1, /^Subject: Gr\u00fc\u00dfe aus K\u00f6ln$/m);
  assert.equal(maildirFiles(dovecot.maildirFor(`bob@${LMTP_DOMAIN}`)).filter((f) => fs.readFileSync(f, 'utf8').includes(hid)).length, 0);

  // A UTF-8 recipient: refused by mxguard itself before any transaction with Dovecot.
  const aid = uniqueId('utf8-address');
  const r2 = await transact(mx.port, '<utf8-sender@client.test> SMTPUTF8', [`<j\u00fcrgen@${LMTP_DOMAIN}>`], messageText(aid));
  assert.match(r2.at(-1) ?? '', /^250 /, r2.join('\n'));
  const b2 = await waitMail(senderBox, aid, why);
  assert.match(b2, /report-type=global-delivery-status/);
  const blocks = statusBlocks(b2);
  assert.equal(blocks[1]?.get('final-recipient'), `utf-8; j\u00fcrgen@${LMTP_DOMAIN}`);
  assert.equal(blocks[1]?.get('status'), '5.6.7');
  assert.match(blocks[1]?.get('diagnostic-code') ?? '', /does not support SMTPUTF8/);
});

// --- item 6: DSN ---------------------------------------------------------------------------------

test('EHLO offers DSN; NOTIFY, ORCPT, RET and ENVID are taken when well-formed, 501 when not, 555 where they do not belong', async (t) => {
  const mx = await app(t, {});
  const c = await RawClient.connect(mx.port);
  t.after(() => c.close());
  await c.reply();
  c.send('EHLO client.test\r\n');
  assert.match(await c.reply(), /^250-DSN$/m);
  const cases: Array<[string, RegExp]> = [
    ['MAIL FROM:<a@client.test> RET=BODY', /^501 5\.5\.4 Bad RET parameter syntax/],
    ['MAIL FROM:<a@client.test> ENVID=a+ZZ', /^501 5\.5\.4 Bad ENVID parameter syntax/],
    [`MAIL FROM:<a@client.test> ENVID=${'e'.repeat(101)}`, /^501 5\.5\.4 Bad ENVID/],
    ['MAIL FROM:<a@client.test> NOTIFY=SUCCESS', /^555 5\.5\.4 Unsupported option: NOTIFY/],
    ['MAIL FROM:<a@client.test> RET=hdrs ENVID=QQ314159+2B1', /^250 /],
    ['RCPT TO:<x@example.test> NOTIFY=NEVER,SUCCESS', /^501 5\.5\.4 Bad NOTIFY parameter syntax/],
    ['RCPT TO:<x@example.test> NOTIFY=SOMETIMES', /^501 5\.5\.4 Bad NOTIFY/],
    ['RCPT TO:<x@example.test> ORCPT=x@example.test', /^501 5\.5\.4 Bad ORCPT parameter syntax/],
    ['RCPT TO:<x@example.test> ORCPT=rfc822;x+Z1@example.test', /^501 5\.5\.4 Bad ORCPT/],
    ['RCPT TO:<x@example.test> RET=FULL', /^555 5\.5\.4 Unsupported option: RET/],
    ['RCPT TO:<x@example.test> NOTIFY=success,delay ORCPT=rfc822;x+2Bold@example.test', /^250 /],
    ['RCPT TO:<y@example.test> NOTIFY=NEVER', /^250 /],
  ];
  for (const [cmd, want] of cases) {
    c.send(cmd + '\r\n');
    assert.match(await c.reply(), want, cmd);
  }
});

test('DSN passed on: NOTIFY=SUCCESS and ORCPT reach a real Postfix, which reports delivery with the original recipient', async (t) => {
  const mx = await app(t, { local_domains: [PF_DOMAIN], deliver: `smtp://127.0.0.1:${postfix.port}` });
  const id = uniqueId('dsn-success');
  const replies = await transact(mx.port, `<alice@${PF_DOMAIN}> RET=HDRS ENVID=QQ+2B${seq}`, [`<bob@${PF_DOMAIN}> NOTIFY=SUCCESS ORCPT=rfc822;bob+2Bold@orig.example`], messageText(id));
  assert.match(replies.at(-1) ?? '', /^250 /, replies.join('\n'));
  const why = (): string => `${postfix.log()}\n${JSON.stringify(mx.logs())}`;
  await waitMail(postfix.maildirFor(`bob@${PF_DOMAIN}`), id, why);
  // Postfix's own success DSN to alice: it got NOTIFY=SUCCESS, ORCPT and ENVID from mxguard.
  const report = await waitMail(postfix.maildirFor(`alice@${PF_DOMAIN}`), `Original-Envelope-Id: QQ+${seq}`, why);
  assert.match(report, /^From: Mail Delivery System <MAILER-DAEMON@postfix\.mxguard\.test>$/m);
  const blocks = statusBlocks(report);
  assert.equal(blocks[0]?.get('original-envelope-id'), `QQ+${seq}`);
  assert.equal(blocks[1]?.get('original-recipient'), 'rfc822;bob+old@orig.example');
  assert.equal(blocks[1]?.get('final-recipient'), `rfc822; bob@${PF_DOMAIN}`);
  assert.equal(blocks[1]?.get('action'), 'delivered');
  assert.match(postfix.log(), /: sender delivery status notification: /);
  // mxguard sent no report of its own: Postfix took the request on.
  assert.equal(mx.logs().filter((l) => l.msg === 'sender delivery status notification').length, 0);
});

test("mxguard's own bounce carries ORCPT and ENVID and returns the full message for RET=FULL; NOTIFY=NEVER or without FAILURE gets none", async (t) => {
  const mx = await app(t, { local_domains: [PF_DOMAIN], deliver: `smtp://127.0.0.1:${postfix.port}` });
  const why = (): string => `${postfix.log()}\n${JSON.stringify(mx.logs())}`;
  const id = uniqueId('dsn-bounce');
  // zed and nobody are unknown to Postfix (550 5.1.1 at RCPT): mxguard bounces, to alice through Postfix.
  const replies = await transact(
    mx.port,
    `<alice@${PF_DOMAIN}> RET=FULL ENVID=B${seq}`,
    [`<zed@${PF_DOMAIN}> NOTIFY=FAILURE ORCPT=rfc822;zed+2Bold@orig.example`, `<nobody@${PF_DOMAIN}> NOTIFY=NEVER`, `<noone@${PF_DOMAIN}> NOTIFY=SUCCESS,DELAY`, `<carol@${PF_DOMAIN}>`],
    messageText(id, 'to be bounced', 'the body line that RET=FULL returns'),
  );
  assert.match(replies.at(-1) ?? '', /^250 2\.0\.0 Ok: queued as ([0-9A-Z]+)/, replies.join('\n'));
  const bounce = await waitMail(postfix.maildirFor(`alice@${PF_DOMAIN}`), `Original-Envelope-Id: B${seq}`, why);
  assert.match(bounce, /^From: MAILER-DAEMON@mx\.example\.test/m);
  assert.match(bounce, /^Return-Path: <>$/m);
  const blocks = statusBlocks(bounce);
  assert.equal(blocks.length, 2, 'one recipient: nobody asked NOTIFY=NEVER, noone did not ask FAILURE');
  assert.equal(blocks[1]?.get('original-recipient'), 'rfc822; zed+old@orig.example');
  assert.equal(blocks[1]?.get('final-recipient'), `rfc822; zed@${PF_DOMAIN}`);
  assert.equal(blocks[1]?.get('status'), '5.1.1');
  assert.match(bounce, /^Content-Type: message\/rfc822$/m);
  assert.match(bounce, /^the body line that RET=FULL returns$/m);
  assert.doesNotMatch(bounce, /nobody@pf|noone@pf/);
  await waitMail(postfix.maildirFor(`carol@${PF_DOMAIN}`), id, why);
  const noBounce = mx.logs().find((l) => l.msg === 'no bounce sent: NOTIFY');
  assert.deepEqual(noBounce?.rcpts, [`nobody@${PF_DOMAIN}`, `noone@${PF_DOMAIN}`]);
  assert.equal(mx.logs().filter((l) => l.msg === 'sender non-delivery notification').length, 1);
});

test('NOTIFY=SUCCESS with a downstream that offers no DSN: mxguard reports "relayed" (SMTP) or "delivered" (LMTP, Maildir)', async (t) => {
  const dump = await makeTempDir('dsn-sink');
  t.after(() => fsp.rm(dump, { recursive: true, force: true }));
  const sinks: SmtpSinkPeer[] = [];
  t.after(async () => {
    for (const s of sinks) await s.stop();
  });
  // With DSN (smtp-sink's default), the parameters go on the wire and mxguard sends nothing itself.
  const withDsn = await startSmtpSink({ dumpDir: path.join(dump, 'dsn') });
  sinks.push(withDsn);
  const mx1 = await app(t, { local_domains: ['sink.example.test'], deliver: `smtp://127.0.0.1:${withDsn.port}` });
  const id1 = uniqueId('sink-dsn');
  const r1 = await transact(mx1.port, '<s@client.test> RET=HDRS ENVID=e+2B1', ['<a@sink.example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;old+2Ba@orig.example'], messageText(id1));
  assert.match(r1.at(-1) ?? '', /^250 /);
  assert.ok(await waitUntil(() => withDsn.files().length >= 1, 10_000));
  const d1 = parseSinkDump(withDsn.files()[0] as string);
  assert.match(d1.mailArgs, /^<s@client\.test>( SIZE=\d+)? RET=HDRS ENVID=e\+2B1$/);
  assert.deepEqual(d1.rcptArgs, ['<a@sink.example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;old+2Ba@orig.example']);

  // Without DSN (-N): no parameters, and mxguard's own "relayed" report goes to the sender.
  const noDsn = await startSmtpSink({ dumpDir: path.join(dump, 'nodsn'), extraArgs: ['-N'] });
  sinks.push(noDsn);
  const mx2 = await app(t, { local_domains: ['sink.example.test'], deliver: `smtp://127.0.0.1:${noDsn.port}` });
  const id2 = uniqueId('sink-nodsn');
  const r2 = await transact(mx2.port, '<s@client.test>', ['<a@sink.example.test> NOTIFY=SUCCESS ORCPT=rfc822;old-a@orig.example', '<b@sink.example.test>'], messageText(id2));
  assert.match(r2.at(-1) ?? '', /^250 /);
  assert.ok(await waitUntil(() => noDsn.files().length >= 2, 10_000), JSON.stringify(mx2.logs()));
  const dumps = noDsn.files().map(parseSinkDump);
  const original = dumps.find((d) => d.body.includes(id2) && d.mailArgs.startsWith('<s@'));
  assert.ok(original);
  assert.deepEqual(original.rcptArgs, ['<a@sink.example.test>', '<b@sink.example.test>']);
  const report = dumps.find((d) => d.mailArgs.startsWith('<>'));
  assert.ok(report, 'a success report from the null sender');
  assert.deepEqual(report.rcptArgs, ['<s@client.test>']);
  const text = report.body.toString('utf8');
  assert.match(text, /^Subject: Successful Mail Delivery Report$/m);
  const blocks = statusBlocks(text);
  assert.equal(blocks.length, 2, 'only a, which asked NOTIFY=SUCCESS');
  assert.equal(blocks[1]?.get('action'), 'relayed');
  assert.equal(blocks[1]?.get('original-recipient'), 'rfc822; old-a@orig.example');

  // LMTP into Dovecot (no DSN there): final delivery, so "delivered".
  const mx3 = await app(t, { local_domains: [LMTP_DOMAIN], deliver: `lmtp://127.0.0.1:${dovecot.port}` });
  const id3 = uniqueId('lmtp-success');
  const r3 = await transact(mx3.port, '<lmtp-sender@client.test>', [`<carol@${LMTP_DOMAIN}> NOTIFY=SUCCESS`], messageText(id3));
  assert.match(r3.at(-1) ?? '', /^250 /);
  const lmtpReport = await waitMail(dovecot.maildirFor('lmtp-sender@client.test'), id3, () => `${dovecot.log()}\n${JSON.stringify(mx3.logs())}`);
  assert.equal(statusBlocks(lmtpReport)[1]?.get('action'), 'delivered');

  // mxguard's own Maildir: "delivered" into the local sender's Maildir.
  const mx4 = await app(t, {});
  const id4 = uniqueId('maildir-success');
  const r4 = await transact(mx4.port, '<postmaster@example.test>', ['<dora@example.test> NOTIFY=SUCCESS,FAILURE'], messageText(id4));
  assert.match(r4.at(-1) ?? '', /^250 /);
  const files = await mx4.waitMaildir('postmaster', 1, 10_000);
  assert.equal(files.length, 1, JSON.stringify(mx4.logs()));
  const local = fs.readFileSync(files[0] as string, 'utf8');
  assert.ok(local.includes(id4));
  assert.equal(statusBlocks(local)[1]?.get('action'), 'delivered');
});
