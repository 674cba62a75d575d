// The delivery transports against real peers: smtp-sink, Postfix, Dovecot LMTP.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { createSmtpTransport, type SmtpTransportOptions } from '../src/smtp-client/client.ts';
import type { MessageBody, OutgoingMessage, RcptResult, Transport } from '../src/mail/transport.ts';
import { freePort, maildirFiles, makeTempDir, parseSinkDump, runSwaks, startDovecotLmtp, startPostfix, startSmtpSink, waitUntil, type SmtpSinkPeer } from './harness/peers.ts';
import { SMUGGLING_SEQUENCES } from './fixtures/smuggling.ts';

type TestContext = { after(fn: () => unknown): void };

/** A body served in chunks of chunkSize, so chunk boundaries fall mid-line and mid-CRLF. */
function bodyOf(raw: Buffer, chunkSize = 997): MessageBody {
  return {
    size: raw.length,
    async *chunks() {
      for (let i = 0; i < raw.length; i += chunkSize) yield raw.subarray(i, i + chunkSize);
    },
  };
}


let seq = 0;
function message(rcpts: readonly string[], raw: Buffer | string, extra: Partial<OutgoingMessage> = {}): OutgoingMessage {
  seq += 1;
  const buf = typeof raw === 'string' ? Buffer.from(raw, 'latin1') : raw;
  return { id: `T${seq}`, mailFrom: 'sender@src.test', rcpts, body: bodyOf(buf), ...extra };
}

function simple(subject: string, body = 'Hello.\r\n'): string {
  return `From: sender@src.test\r\nTo: rcpt@example.test\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@src.test>\r\n\r\n${body}`;
}

function transport(t: TestContext, url: string, opts: Partial<SmtpTransportOptions> = {}): Transport {
  const tr = createSmtpTransport({ url, heloName: 'mxguard.test', maxConnections: 2, connectTimeoutMs: 3000, commandTimeoutMs: 5000, ...opts });
  t.after(() => tr.close());
  return tr;
}

async function sinkWithDump(t: TestContext, extraArgs: string[] = []): Promise<SmtpSinkPeer> {
  const dump = await makeTempDir('sinkdump');
  const sink = await startSmtpSink({ dumpDir: dump, extraArgs });
  t.after(async () => {
    await sink.stop();
    await fsp.rm(dump, { recursive: true, force: true });
  });
  return sink;
}

function statuses(rs: readonly RcptResult[]): string[] {
  return rs.map((r) => `${r.rcpt} ${r.status} ${r.code}`);
}

/** What smtp-sink's dump holds for a message we sent: CRLF (and any bare CR/LF) as LF, NUL dropped. */
function asSinkSees(raw: Buffer): Buffer {
  let s = raw.toString('latin1').replace(/\r\n|\r|\n/g, '\n').replace(/\0/g, '');
  if (s !== '' && !s.endsWith('\n')) s += '\n';
  return Buffer.from(s, 'latin1');
}

async function dumps(sink: SmtpSinkPeer, n: number): Promise<string[]> {
  // smtp-sink writes the file as it reads the data; give it a moment to close it.
  await waitUntil(() => sink.files().length >= n, 3000);
  return sink.files();
}

test('SMTP → smtp-sink: byte-exact after un-stuffing, dot lines, BODY=8BITMIME', async (t) => {
  const sink = await sinkWithDump(t);
  const tr = transport(t, `smtp://127.0.0.1:${sink.port}`);
  const raw = Buffer.from(simple('dots', '.leading dot\r\n..two dots\r\n.\r\nnot the end\r\n. \r\n8bit: caf\xe9\r\nlast line without CRLF'), 'latin1');
  const rs = await tr.deliver(message(['a@example.test', 'b@example.test'], raw, { eightBit: true }));
  assert.deepEqual(statuses(rs), ['a@example.test ok 250', 'b@example.test ok 250']);
  const files = await dumps(sink, 1);
  assert.equal(files.length, 1);
  const d = parseSinkDump(files[0] as string);
  assert.equal(d.mailArgs, '<sender@src.test> BODY=8BITMIME');
  assert.deepEqual(d.rcptArgs, ['<a@example.test>', '<b@example.test>']);
  assert.equal(d.helo, 'mxguard.test');
  assert.deepEqual(d.body, asSinkSees(raw));
});

test('SMTP → smtp-sink: many messages over reused connections, null sender', async (t) => {
  // -n 3: smtp-sink exits after 3 sessions (the readiness probe + our 2), so a client that
  // opened a connection per message would lose its messages.
  const sink = await sinkWithDump(t, ['-n', '3']);
  const tr = transport(t, `smtp://127.0.0.1:${sink.port}`, { maxConnections: 2 });
  const n = 60;
  const t0 = performance.now();
  const all = await Promise.all(
    Array.from({ length: n }, (_, i) => tr.deliver(message([`u${i}@example.test`], simple(`msg ${i}`), i % 10 === 0 ? { mailFrom: '' } : {}))),
  );
  const ms = performance.now() - t0;
  for (const rs of all) assert.equal(rs[0]?.status, 'ok', JSON.stringify(rs));
  const files = await dumps(sink, n);
  assert.equal(files.length, n);
  const nullSenders = files.map(parseSinkDump).filter((d) => d.mailArgs === '<>').length;
  assert.equal(nullSenders, 6);
  // One session per message would cost >40 ms each with Nagle; the pool does far better.
  assert.ok(ms < 5000, `${n} messages took ${ms.toFixed(0)} ms`);
});

test('SMTP → smtp-sink: a 100 KiB message arrives intact (backpressure path)', async (t) => {
  const sink = await sinkWithDump(t);
  const tr = transport(t, `smtp://127.0.0.1:${sink.port}`);
  let body = '';
  for (let i = 0; body.length < 100 * 1024; i++) body += (i % 7 === 0 ? '.' : '') + `line ${i} ` + 'x'.repeat(60) + '\r\n';
  const raw = Buffer.from(simple('big', body));
  const rs = await tr.deliver({ ...message(['big@example.test'], raw), body: bodyOf(raw, 4096) });
  assert.equal(rs[0]?.status, 'ok');
  const [f] = await dumps(sink, 1);
  assert.deepEqual(parseSinkDump(f as string).body, asSinkSees(raw));
});

test('SMTP → smtp-sink: a smuggling-laden message arrives as exactly one message', async (t) => {
  const sink = await sinkWithDump(t);
  const tr = transport(t, `smtp://127.0.0.1:${sink.port}`);
  const seqs = SMUGGLING_SEQUENCES;
  assert.ok(seqs.length >= 10);
  let body = 'Innocent start.\r\n';
  for (const s of seqs) body += `${s}MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nowned\r\n`;
  const raw = Buffer.from(simple('smuggle', body), 'latin1');
  const rs = await tr.deliver(message(['rcpt@example.test'], raw));
  assert.equal(rs[0]?.status, 'ok');
  await tr.close();
  await waitUntil(() => sink.files().length > 1, 500); // would a second transaction show up?
  const files = sink.files();
  assert.equal(files.length, 1, 'a smuggled second message reached the sink');
  const d = parseSinkDump(files[0] as string);
  assert.deepEqual(d.rcptArgs, ['<rcpt@example.test>']);
  assert.deepEqual(d.body, asSinkSees(raw));
});

test('SMTP → smtp-sink: server refusals map to per-recipient results', async (t) => {
  // -f RCPT: every RCPT gets 500 5.3.0 (and no PIPELINING): no DATA, RSET, connection kept.
  const hard = await sinkWithDump(t, ['-f', 'RCPT']);
  const tr1 = transport(t, `smtp://127.0.0.1:${hard.port}`, { maxConnections: 1 });
  for (let i = 0; i < 2; i++) {
    const rs = await tr1.deliver(message(['a@example.test', 'b@example.test'], simple('refused')));
    assert.deepEqual(statuses(rs), ['a@example.test perm 500', 'b@example.test perm 500']);
    assert.match(rs[0]?.text ?? '', /^5\.3\.0/);
  }
  // -r MAIL: soft reject of MAIL FROM: every recipient gets that reply.
  const soft = await sinkWithDump(t, ['-r', 'MAIL']);
  const rs2 = await transport(t, `smtp://127.0.0.1:${soft.port}`).deliver(message(['a@example.test', 'b@example.test'], simple('soft')));
  assert.deepEqual(statuses(rs2), ['a@example.test temp 450', 'b@example.test temp 450']);
  // -f .: the final dot is refused: all accepted recipients perm.
  const dot = await sinkWithDump(t, ['-f', '.']);
  const rs3 = await transport(t, `smtp://127.0.0.1:${dot.port}`).deliver(message(['a@example.test'], simple('dot')));
  assert.deepEqual(statuses(rs3), ['a@example.test perm 500']);
  // -Q RCPT: 421 and disconnect: temp 421 for all.
  const q = await sinkWithDump(t, ['-Q', 'RCPT']);
  const rs4 = await transport(t, `smtp://127.0.0.1:${q.port}`).deliver(message(['a@example.test', 'b@example.test'], simple('421')));
  assert.deepEqual(statuses(rs4), ['a@example.test temp 421', 'b@example.test temp 421']);
  // -q DATA: the server hangs up without a reply: temp for all, nothing delivered.
  const hang = await sinkWithDump(t, ['-q', 'DATA']);
  const rs5 = await transport(t, `smtp://127.0.0.1:${hang.port}`).deliver(message(['a@example.test'], simple('hangup')));
  assert.equal(rs5[0]?.status, 'temp');
  assert.equal(rs5[0]?.code, 421);
  // smtp-sink opens a dump file at MAIL, so one may exist; it must not hold the message.
  for (const f of hang.files()) assert.doesNotMatch(fs.readFileSync(f, 'latin1'), /Subject: hangup/);
});

test('SMTP → smtp-sink: SMTPUTF8 needed but not offered is perm 550 5.6.7 without a transaction', async (t) => {
  const sink = await sinkWithDump(t);
  const tr = transport(t, `smtp://127.0.0.1:${sink.port}`);
  const rs = await tr.deliver(message(['a@example.test', 'b@example.test'], simple('utf8'), { smtputf8: true }));
  assert.deepEqual(statuses(rs), ['a@example.test perm 550', 'b@example.test perm 550']);
  assert.match(rs[0]?.text ?? '', /^5\.6\.7 /);
  const after = await tr.deliver(message(['c@example.test'], simple('after utf8')));
  assert.equal(after[0]?.status, 'ok', 'the connection stays usable');
  assert.equal((await dumps(sink, 1)).length, 1);
});

test('SMTP → smtp-sink: a reply timeout is temp 451 and quick', async (t) => {
  const sink = await sinkWithDump(t, ['-w', '5']); // waits 5 s before answering DATA
  const tr = transport(t, `smtp://127.0.0.1:${sink.port}`, { commandTimeoutMs: 300 });
  const t0 = performance.now();
  const rs = await tr.deliver(message(['a@example.test', 'b@example.test'], simple('slow')));
  const ms = performance.now() - t0;
  assert.deepEqual(statuses(rs), ['a@example.test temp 451', 'b@example.test temp 451']);
  // smtp-sink holds the pipelined MAIL/RCPT replies until it answers DATA.
  assert.match(rs[0]?.text ?? '', /^4\.4\.2 timeout after 300 ms waiting for the reply to (MAIL FROM|DATA)/);
  assert.ok(ms < 2000, `took ${ms.toFixed(0)} ms`);
});

test('SMTP → smtp-sink: a pooled connection the server dropped is replaced', async (t) => {
  const sink = await sinkWithDump(t, ['-t', '1']); // smtp-sink drops sessions idle for 1 s
  const tr = transport(t, `smtp://127.0.0.1:${sink.port}`, { maxConnections: 1 });
  assert.equal((await tr.deliver(message(['a@example.test'], simple('first'))))[0]?.status, 'ok');
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal((await tr.deliver(message(['a@example.test'], simple('second'))))[0]?.status, 'ok');
  assert.equal((await dumps(sink, 2)).length, 2);
});

test('LMTP → smtp-sink -L: one result per recipient', async (t) => {
  const sink = await sinkWithDump(t, ['-L']);
  const tr = transport(t, `lmtp://127.0.0.1:${sink.port}`);
  const rs = await tr.deliver(message(['a@example.test', 'b@example.test', 'c@example.test'], simple('lmtp sink')));
  assert.deepEqual(statuses(rs), ['a@example.test ok 250', 'b@example.test ok 250', 'c@example.test ok 250']);
  assert.equal((await dumps(sink, 1)).length, 1);
});

test('a dead port gives temp for every recipient, quickly', async (t) => {
  const port = await freePort(); // closed again: nothing listens
  const tr = transport(t, `smtp://127.0.0.1:${port}`);
  const t0 = performance.now();
  const many = await Promise.all([1, 2, 3, 4].map((i) => tr.deliver(message([`a${i}@example.test`, `b${i}@example.test`], simple('dead')))));
  const ms = performance.now() - t0;
  for (const rs of many) {
    assert.deepEqual(
      rs.map((r) => [r.status, r.code]),
      [
        ['temp', 421],
        ['temp', 421],
      ],
    );
    assert.match(rs[0]?.text ?? '', /^4\.4\.1 connect to 127\.0\.0\.1:\d+ failed: .*ECONNREFUSED/);
  }
  assert.ok(ms < 1000, `took ${ms.toFixed(0)} ms`);
});

test('SMTP → Postfix: virtual maildir delivery, unknown users perm, mixed recipients, RSET and reuse', async (t) => {
  const pf = await startPostfix({ domains: ['example.test'] });
  t.after(() => pf.stop());
  const tr = createSmtpTransport({ url: `smtp://127.0.0.1:${pf.port}`, heloName: 'mxguard.test', maxConnections: 1, connectTimeoutMs: 3000, commandTimeoutMs: 10_000 });
  t.after(() => tr.close());

  const one = await tr.deliver(message(['alice@example.test'], simple('to alice', '.dotted\r\nbody\r\n')));
  assert.deepEqual(statuses(one), ['alice@example.test ok 250']);

  const mixed = await tr.deliver(message(['bob@example.test', 'zed@example.test', 'carol@example.test'], simple('mixed')));
  assert.deepEqual(statuses(mixed), ['bob@example.test ok 250', 'zed@example.test perm 550', 'carol@example.test ok 250']);
  assert.match(mixed[1]?.text ?? '', /^5\.1\.1 <zed@example\.test>: Recipient address rejected/);
  assert.match(mixed[0]?.text ?? '', /^2\.0\.0 Ok: queued as /);

  const none = await tr.deliver(message(['nobody@example.test', 'x@elsewhere.test'], simple('nobody')));
  assert.deepEqual(
    none.map((r) => r.status),
    ['perm', 'perm'],
    JSON.stringify(none),
  );

  const bounce = await tr.deliver(message(['dave@example.test'], simple('null sender'), { mailFrom: '' }));
  assert.equal(bounce[0]?.status, 'ok');

  const utf8 = await tr.deliver(message(['dave@example.test'], simple('utf8'), { smtputf8: true }));
  assert.deepEqual(statuses(utf8), ['dave@example.test perm 550']);

  for (const [addr, n] of [['alice@example.test', 1], ['bob@example.test', 1], ['carol@example.test', 1], ['dave@example.test', 1]] as const) {
    const box = pf.maildirFor(addr);
    assert.ok(await waitUntil(() => maildirFiles(box).length === n, 10_000), `${addr}: ${maildirFiles(box).length} files; log:\n${pf.log()}`);
  }
  const aliceMail = fs.readFileSync(maildirFiles(pf.maildirFor('alice@example.test'))[0] as string, 'latin1');
  assert.match(aliceMail, /^Subject: to alice$/m);
  assert.match(aliceMail, /^\.dotted$/m, 'the dot line arrives un-stuffed');
  assert.match(aliceMail, /^Return-Path: <sender@src\.test>$/m);
  assert.equal(fs.existsSync(pf.maildirFor('zed@example.test')), false);

  await tr.close();
  // One session did everything (the SMTPUTF8 refusal sent nothing): the pipelined DATA without
  // recipients was refused and followed by RSET, and close() sent QUIT.
  // (The readiness probe's own "disconnect … quit=1" line is there from the start: wait for ours.)
  const ours = /disconnect from \S+ ehlo=1 mail=4 rcpt=4\/7 data=3\/4 rset=1 quit=1/;
  assert.ok(await waitUntil(() => ours.test(pf.log()), 5000), pf.log());
  const connects = pf.log().match(/smtpd\[\d+\]: connect from/g) ?? [];
  assert.equal(connects.length, 2, 'the readiness probe and one pooled connection');
});

test('LMTP → Dovecot: per-recipient results and delivered files', async (t) => {
  const dv = await startDovecotLmtp({ users: ['alice@example.test', 'bob@example.test'] });
  t.after(() => dv.stop());
  const tr = transport(t, `lmtp://127.0.0.1:${dv.port}`);
  const raw = simple('lmtp', '.dot line\r\nbody\r\n');
  const rs = await tr.deliver(message(['alice@example.test', 'zed@example.test', 'bob@example.test'], raw));
  assert.deepEqual(statuses(rs), ['alice@example.test ok 250', 'zed@example.test perm 550', 'bob@example.test ok 250']);
  assert.match(rs[0]?.text ?? '', /<alice@example\.test> .*Saved/);
  assert.match(rs[2]?.text ?? '', /<bob@example\.test> .*Saved/);
  for (const a of ['alice@example.test', 'bob@example.test']) {
    const files = maildirFiles(dv.maildirFor(a));
    assert.equal(files.length, 1, `${a}:\n${dv.log()}`);
    const got = fs.readFileSync(files[0] as string, 'latin1');
    assert.match(got, /^\.dot line\r?$/m);
  }
  // A second message on the pooled connection.
  const again = await tr.deliver(message(['alice@example.test'], simple('again')));
  assert.equal(again[0]?.status, 'ok');
  assert.equal(maildirFiles(dv.maildirFor('alice@example.test')).length, 2);
});

test('SMTP → Postfix (which splits smuggled messages itself): a smuggling-laden message stays one message', async (t) => {
  const pf = await startPostfix({ domains: ['example.test'] });
  t.after(() => pf.stop());
  const smuggled = (s: string): string => `${s}MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nowned\r\n`;
  const bob = pf.maildirFor('bob@example.test');

  // Control: sent raw (swaks --no-data-fixup), Postfix 3.7's defaults let "\n.\n" end the DATA,
  // so the smuggled message reaches bob. Newer Postfix may refuse that; then only note it.
  const eml = path.join(pf.dir, 'smuggle.eml');
  fs.writeFileSync(eml, simple('raw probe', `probe${smuggled('\n.\n')}.\r\n`));
  const probe = await runSwaks(['--server', '127.0.0.1', '--port', String(pf.port), '--from', 'probe@src.test', '--to', 'carol@example.test', '--no-data-fixup', '--data', eml]);
  const controlSplit = await waitUntil(() => maildirFiles(bob).length > 0, 3000);
  if (!controlSplit) t.diagnostic(`this Postfix does not split raw smuggling probes (swaks exit ${probe.code}); the check below still holds`);
  const bobBefore = maildirFiles(bob).length;
  const evilCount = (): number => (pf.log().match(/from=<evil@attacker\.test>/g) ?? []).length;
  const evilBefore = evilCount();

  const tr = transport(t, `smtp://127.0.0.1:${pf.port}`);
  let body = 'Innocent start.\r\n';
  for (const s of SMUGGLING_SEQUENCES) body += smuggled(s);
  const rs = await tr.deliver(message(['alice@example.test'], simple('smuggle', body)));
  assert.deepEqual(statuses(rs), ['alice@example.test ok 250']);
  const alice = pf.maildirFor('alice@example.test');
  assert.ok(await waitUntil(() => maildirFiles(alice).length === 1, 10_000), pf.log());
  await tr.close();
  await waitUntil(() => maildirFiles(bob).length > bobBefore, 500);
  assert.equal(maildirFiles(bob).length, bobBefore, `a smuggled message reached bob:\n${pf.log()}`);
  assert.equal(evilCount(), evilBefore, 'Postfix saw a transaction from the smuggled sender');
  const got = fs.readFileSync(maildirFiles(alice)[0] as string, 'latin1');
  assert.equal((got.match(/^MAIL FROM:<evil@attacker\.test>$/gm) ?? []).length, SMUGGLING_SEQUENCES.length, 'the probes arrive as plain body lines');
});
