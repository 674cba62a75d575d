// Issue 12, "Must show 1" (spamd and clamd): real SpamAssassin spamd and ClamAV clamd started by
// the harness on loopback, mxguard (in this process) in front, swaks or a raw client sending.
// GTUBE is refused by spamd (action reject) or tagged with SpamAssassin's points (action tag);
// the EICAR file is refused by clamd, 554 naming it; a clean message is delivered with both
// scanners' fields; a daemon that stops answering (SIGSTOP) or is gone gives the scanner's
// on_error, within its timeout. GTUBE and EICAR are put together at run time, so no scanner flags
// this file.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startTestApp, type TestApp } from './harness/app.ts';
import { runSwaks } from './harness/peers.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { startClamd, startSpamd, type ScannerPeer } from './harness/scanners.ts';

const GTUBE = ['XJS*C4JDBQADN1.NSBN3*2IDNEN*', 'GTUBE-STANDARD-ANTI-UBE-', 'TEST-EMAIL*C.34X'].join('');
const EICAR = ['X5O!P%@AP[4\\PZX54(P^)7CC)7}$', 'EICAR-STANDARD-ANTIVIRUS-', 'TEST-FILE!$H+H*'].join('');

let spamd: ScannerPeer;
let clamd: ScannerPeer;

before(async () => {
  [spamd, clamd] = await Promise.all([startSpamd(), startClamd()]);
  console.log(`# spamd ready in ${spamd.startMs} ms, clamd in ${clamd.startMs} ms`);
});
after(async () => {
  await Promise.all([spamd?.stop(), clamd?.stop()]);
});

type Scanners = Array<Record<string, unknown>>;

async function app(t: { after(fn: () => Promise<void>): void }, scanners: Scanners, scoring: Record<string, unknown> = {}): Promise<TestApp> {
  const a = await startTestApp({
    relay: { forward_from_ip: [] }, // loopback is the test client: judge it like any other
    filters: { scanners } as never,
    scoring: scoring as never,
  });
  t.after(() => a.stop());
  return a;
}

function message(subject: string, body: string, extra = ''): string {
  const head = ['From: Sender <sender@src.test>', 'To: bob@example.test', `Subject: ${subject}`, `Date: ${new Date().toUTCString()}`, `Message-ID: <${Date.now()}.${Math.random()}@src.test>`];
  if (extra !== '') head.push(extra);
  return [...head, '', body, ''].join('\r\n');
}

/** A message with the EICAR file as a base64 attachment (clamd matches the decoded part). */
function eicarMessage(): string {
  const mime = ['MIME-Version: 1.0', 'Content-Type: multipart/mixed; boundary="b1"'].join('\r\n');
  const body = ['--b1', 'Content-Type: text/plain', '', 'see attached', '--b1', 'Content-Type: application/octet-stream', 'Content-Transfer-Encoding: base64', 'Content-Disposition: attachment; filename="eicar.com"', '', Buffer.from(EICAR, 'latin1').toString('base64'), '--b1--'].join('\r\n');
  return message('attachment', body, mime);
}

function swaks(port: number, data: string): ReturnType<typeof runSwaks> {
  return runSwaks(['--server', `127.0.0.1:${port}`, '--ehlo', 'client.src.test', '--from', 'sender@src.test', '--to', 'bob@example.test', '--data', '-'], { input: data, timeoutMs: 60_000 });
}

/** The header block of the one message delivered to bob. */
async function delivered(a: TestApp): Promise<string> {
  const files = await a.waitMaildir('bob', 1, 10_000);
  assert.equal(files.length, 1, 'delivered to bob');
  const text = fs.readFileSync(files[0] as string, 'latin1');
  return text.slice(0, text.search(/\r?\n\r?\n/)).replace(/\r\n/g, '\n');
}

/** Sends one message with a raw client; resolves with the reply to the final dot and how long it took. */
async function timedSend(port: number, data: string): Promise<{ reply: string; ms: number }> {
  const c = await RawClient.connect(port);
  try {
    await c.reply();
    c.send('EHLO client.src.test\r\n');
    await c.reply();
    c.send('MAIL FROM:<sender@src.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n');
    const [mail, rcpt, go] = await c.replies(3);
    assert.match(`${mail} ${rcpt} ${go}`, /^250.* 250.* 354/);
    c.send(`${data}.\r\n`);
    const t0 = Date.now();
    const reply = await c.reply(60_000);
    return { reply, ms: Date.now() - t0 };
  } finally {
    c.close();
  }
}

test('spamd, action reject: GTUBE refused 550 5.7.1, nothing delivered', async (t) => {
  const a = await app(t, [{ type: 'spamd', address: spamd.address, action: 'reject', on_error: 'tempfail', timeout: '30s' }]);
  const r = await swaks(a.port, message('test', GTUBE));
  assert.match(r.stdout, /<\*\* 550 5\.7\.1 Message refused as spam by SpamAssassin \(score \d{3,4}\.\d, required 5\.0\)/, r.stdout);
  assert.deepEqual(a.maildir('bob'), []);
});

test('spamd, action tag (REPORT): GTUBE delivered with SpamAssassin rules and points in X-Spam-Status; envelope seen by spamd', async (t) => {
  const a = await app(t, [{ type: 'spamd', address: spamd.address, command: 'REPORT', action: 'tag', on_error: 'tempfail', timeout: '30s' }], { reject_at: 5000 });
  const r = await swaks(a.port, message('test', GTUBE));
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const head = await delivered(a);
  const status = /\nX-Spam-Status: (Yes, score=(\d+\.\d) [^\n]*(?:\n\t[^\n]*)*)/.exec(head);
  assert.ok(status, head);
  assert.ok(Number(status[2]) >= 990, `score ${status[2]}`); // GTUBE is 1000, other rules move it a little
  assert.match(status[1] as string, /tests=(?:[^\n]*\n?\t?)*GTUBE/, 'the SpamAssassin rule joins tests=');
  assert.match(head, /\nX-Spam-Flag: YES\n/);
  assert.match(head, /\nX-Spam-Spamd: Yes, score=\d{3,4}\.\d required=5\.0 tests=/);
  // Our Received (with the client's address) went to spamd: SpamAssassin counts a relay.
  assert.doesNotMatch(head, /NO_RELAYS|NO_RECEIVED/);
  assert.doesNotMatch(head, /X-Envelope-(From|To)/, 'the envelope fields are for spamd only');
});

test('clamd: the EICAR attachment refused 554 5.7.1 naming the virus', async (t) => {
  const a = await app(t, [{ type: 'clamd', address: clamd.address, on_error: 'tempfail', timeout: '30s' }]);
  const r = await swaks(a.port, eicarMessage());
  assert.match(r.stdout, /<\*\* 554 5\.7\.1 Virus found: Test\.EICAR\.Local/, r.stdout);
  assert.deepEqual(a.maildir('bob'), []);
});

test('a clean message through both: delivered with X-Virus-Scanned, X-Spam-Spamd and our X-Spam-Status', async (t) => {
  const a = await app(t, [
    { type: 'spamd', address: spamd.address, action: 'reject', on_error: 'tempfail', timeout: '30s' },
    { type: 'clamd', address: clamd.address, on_error: 'tempfail', timeout: '30s' },
  ]);
  const r = await swaks(a.port, message('lunch on friday', 'Shall we meet at noon on Friday?\r\nBob'));
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const head = await delivered(a);
  assert.match(head, /\nX-Virus-Scanned: clean \(clamd\)\n/);
  assert.match(head, /\nX-Spam-Spamd: No, score=-?\d+\.\d required=5\.0 tests=/);
  assert.match(head, /\nX-Spam-Status: No, score=/);
  assert.doesNotMatch(head, /X-Spam-Flag/);
});

test('spamd not answering (stopped with SIGSTOP): on_error tempfail gives 451 at its timeout; gone: on_error accept delivers', async (t) => {
  const own = await startSpamd();
  t.after(() => own.stop());
  const timeout = 2000;
  const a = await app(t, [{ type: 'spamd', address: own.address, action: 'reject', on_error: 'tempfail', timeout: `${timeout}ms` }]);
  own.pause();
  const hung = await timedSend(a.port, message('x', 'hello'));
  own.resume();
  assert.match(hung.reply, /^451 4\.7\.1 Message could not be scanned \(spamd\)/);
  assert.ok(hung.ms >= timeout - 100 && hung.ms < timeout + 1500, `reply after ${hung.ms} ms (timeout ${timeout})`);

  await own.stop();
  const b = await app(t, [{ type: 'spamd', address: own.address, action: 'reject', on_error: 'accept', timeout: `${timeout}ms` }]);
  const gone = await timedSend(b.port, message('x', 'hello'));
  assert.match(gone.reply, /^250 /, gone.reply);
  assert.ok(gone.ms < timeout + 1500, `reply after ${gone.ms} ms`);
  assert.equal((await b.waitMaildir('bob', 1)).length, 1);
  assert.ok(b.logs().some((l) => l.msg === 'scanner failed: message goes on without it (on_error: accept)' && /ECONNREFUSED/.test(String(l.err))));
});

test('clamd not answering (SIGSTOP): on_error accept delivers at its timeout; gone: on_error tempfail gives 451 at once', async (t) => {
  const own = await startClamd();
  t.after(() => own.stop());
  const timeout = 1500;
  const a = await app(t, [{ type: 'clamd', address: own.address, on_error: 'accept', timeout: `${timeout}ms` }]);
  own.pause();
  const hung = await timedSend(a.port, eicarMessage());
  own.resume();
  assert.match(hung.reply, /^250 /, hung.reply);
  assert.ok(hung.ms >= timeout - 100 && hung.ms < timeout + 1500, `reply after ${hung.ms} ms (timeout ${timeout})`);
  assert.equal((await a.waitMaildir('bob', 1)).length, 1, 'unscanned, as configured');
  assert.ok(a.logs().some((l) => l.msg === 'scanner failed: message goes on without it (on_error: accept)' && /timeout/.test(String(l.err))));

  await own.stop();
  const b = await app(t, [{ type: 'clamd', address: own.address, on_error: 'tempfail', timeout: `${timeout}ms` }]);
  const gone = await timedSend(b.port, eicarMessage());
  assert.match(gone.reply, /^451 4\.7\.1 Message could not be scanned \(clamd\)/);
  assert.ok(gone.ms < timeout, `reply after ${gone.ms} ms`);
  assert.deepEqual(b.maildir('bob'), []);
});

test("clamd's StreamMaxLength: a larger message is a failure naming it (on_error tempfail: 451)", async (t) => {
  const own = await startClamd({ streamMaxLength: '1K' });
  t.after(() => own.stop());
  const a = await app(t, [{ type: 'clamd', address: own.address, on_error: 'tempfail', timeout: '10s' }]);
  const r = await timedSend(a.port, message('big', ('y'.repeat(70) + '\r\n').repeat(100)));
  assert.match(r.reply, /^451 4\.7\.1 Message could not be scanned \(clamd\)/);
  assert.ok(a.logs().some((l) => /StreamMaxLength/.test(String(l.err))), `the log names the limit: ${JSON.stringify(a.logs().filter((l) => l.err !== undefined).map((l) => l.err))}`);
});
