// The `exec` scanner through real SMTP (issue 12, Must show 2): a filter written as a chasquid
// post-data hook and one written as a qmail-queue program (shell scripts), each refusing,
// deferring and adding a header field; the hook's header fields and chasquid's environment
// variables, the qmail-queue envelope on fd 1, a qmail-queue filter passing the message on to
// "$QMAILQUEUE" with a field on top (added) or otherwise changed (not applied, logged at warn); a
// program that hangs is killed at its timeout and its on_error applies; a program that does not
// exist is a failure too.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import type { ConfigInput } from '../src/config/schema.ts';
import { QUEUE_CAPTURE } from '../src/policy/scanners/exec.ts';

let dir = '';
let hook = '';
let qq = '';
let qqPass = '';

// The hook decides by the sender's local part; it keeps what it was given for the test to read.
const HOOK = `#!/bin/sh
out="${'${OUT_DIR}'}"
who="\${MAIL_FROM%%@*}"
env > "$out/env.$who"
# Decides on the envelope alone, without reading the message (mxguard meets EPIPE writing it).
[ "$who" = early ] && { echo "Refused without reading"; exit 20; }
cat > "$out/stdin.$who"
case "$who" in
  refuse) echo "some words before"; echo "Spam detected by the hook (score 99)"; exit 20 ;;
  defer) echo "Busy, come back later"; exit 75 ;;
  hang) sleep 30 & echo $! > "$out/hang.pid"; wait; exit 0 ;;
  *)
    echo "X-Hook: seen $MAIL_FROM"
    echo "X-Hook-Env: addr=$REMOTE_ADDR ehlo=$EHLO_DOMAIN rcpt=$RCPT_TO"
    echo "  auth=[$AUTH_AS] tls=$ON_TLS spf=$SPF_PASS"
    echo "this line is not a header field"
    exit 0 ;;
esac
`;

// A QMAILQUEUE program: the message on fd 0, then the envelope on fd 1 (F sender NUL, T rcpt NUL…, NUL).
const QQ = `#!/bin/sh
out="${'${OUT_DIR}'}"
cat > "$out/qq.stdin"
tr '\\000' '\\n' <&1 > "$out/qq.envelope"
from=$(head -n 1 "$out/qq.envelope")
case "$from" in
  Frefuse@*) echo "virus found" >&2; exit 31 ;;
  Fdefer@*) exit 71 ;;
  Flong@*) exit 11 ;;
  *) exit 0 ;;
esac
`;

// A qmail-queue filter that passes the message on as filters do under qmail: it reads the
// message (fd 0) and the envelope (fd 1), then runs "$QMAILQUEUE" with the message, its own
// header field on top, on fd 0 and the envelope it read on fd 1, and exits with its status.
const QQ_PASS = `#!/bin/sh
out="${'${OUT_DIR}'}"
who="\${MAIL_FROM%%@*}"
t="$out/pass.$who"
mkdir -p "$t" || exit 53
cat > "$t/msg" || exit 54
cat <&1 > "$t/env" || exit 54
echo "$QMAILQUEUE" > "$t/qmailqueue"
capture=$(dirname "$MXGUARD_QUEUE_MESSAGE")
echo "$capture" > "$t/capture"
stat -c %a "$capture" > "$t/mode"
case "$who" in
  add) { echo "X-Scanned-By: qq-filter"; cat "$t/msg"; } | "$QMAILQUEUE" 1< "$t/env" ;;
  body) { cat "$t/msg"; echo "appended by the filter"; } | "$QMAILQUEUE" 1< "$t/env" ;;
  rcpt)
    printf 'F%s\\000Tmallory@example.test\\000\\000' "$MAIL_FROM" > "$t/env2"
    { echo "X-Scanned-By: qq-filter"; cat "$t/msg"; } | "$QMAILQUEUE" 1< "$t/env2" ;;
  lost) env -u MXGUARD_QUEUE_MESSAGE "$QMAILQUEUE" < "$t/msg" 1< "$t/env" ;;
  refuse) exit 31 ;;
  defer) exit 71 ;;
  *) exit 0 ;;
esac
rc=$?
echo "$rc" > "$t/rc"
exit "$rc"
`;

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-exec-'));
  hook = path.join(dir, 'post-data');
  qq = path.join(dir, 'qmail-queue-filter');
  qqPass = path.join(dir, 'qmail-queue-pass');
  fs.writeFileSync(hook, HOOK.replace('${OUT_DIR}', dir), { mode: 0o755 });
  fs.writeFileSync(qq, QQ.replace('${OUT_DIR}', dir), { mode: 0o755 });
  fs.writeFileSync(qqPass, QQ_PASS.replace('${OUT_DIR}', dir), { mode: 0o755 });
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function scanners(list: NonNullable<ConfigInput['filters']>['scanners']): Partial<ConfigInput> {
  return { filters: { scanners: list } };
}

/** One message through SMTP: the reply to the final dot, and how long it took. */
async function send(app: TestApp, from: string, rcpts = ['bob@example.test'], timeoutMs = 10_000, body = 'Hello from the test.\r\n'): Promise<{ reply: string; ms: number }> {
  const c = await RawClient.connect(app.port);
  try {
    assert.match(await c.reply(), /^220 /);
    c.send('EHLO client.example.test\r\n');
    assert.match(await c.reply(), /^250/);
    c.send(`MAIL FROM:<${from}>\r\n`);
    assert.match(await c.reply(), /^250 /);
    for (const r of rcpts) {
      c.send(`RCPT TO:<${r}>\r\n`);
      assert.match(await c.reply(), /^250 /);
    }
    c.send('DATA\r\n');
    assert.match(await c.reply(), /^354 /);
    const started = Date.now();
    c.send(`From: <${from}>\r\nTo: <${rcpts[0]}>\r\nSubject: exec scanner test\r\nMessage-ID: <${Date.now()}.${Math.random()}@client.example.test>\r\n\r\n${body}.\r\n`);
    const reply = await c.reply(timeoutMs);
    const ms = Date.now() - started;
    c.send('QUIT\r\n');
    return { reply, ms };
  } finally {
    c.close();
  }
}

function envOf(who: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of fs.readFileSync(path.join(dir, `env.${who}`), 'utf8').split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

/** Gone, or a zombie waiting for init: either way no longer running. */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

test('chasquid hook: exit 0 adds its header fields (folded ones kept, stray lines dropped); the environment is chasquid\'s, not ours', async () => {
  const app = await startTestApp(scanners([{ type: 'exec', name: 'hook', command: [hook], on_error: 'tempfail' }]));
  try {
    const { reply } = await send(app, 'alice@sender.test', ['bob@example.test', 'carol@example.test']);
    assert.match(reply, /^250 /);
    const [file] = await app.waitMaildir('bob', 1);
    assert.ok(file, 'delivered');
    const text = fs.readFileSync(file, 'utf8');
    const header = text.slice(0, text.indexOf('\r\n\r\n') + 2);
    assert.match(header, /^X-Hook: seen alice@sender\.test\r$/m);
    assert.match(header, /^X-Hook-Env: addr=127\.0\.0\.1 ehlo=client\.example\.test rcpt=bob@example\.test carol@example\.test\r\n {2}auth=\[\] tls=0 spf=0\r$/m);
    assert.doesNotMatch(text, /not a header field/);
    assert.match(header, /^X-Spam-Status: No, score=/m);
    const env = envOf('alice');
    assert.equal(env['REMOTE_ADDR'], '127.0.0.1');
    assert.equal(env['EHLO_DOMAIN'], 'client.example.test');
    assert.equal(env['EHLO_DOMAIN_RAW'], 'client.example.test');
    assert.equal(env['MAIL_FROM'], 'alice@sender.test');
    assert.equal(env['RCPT_TO'], 'bob@example.test carol@example.test');
    assert.equal(env['AUTH_AS'], '');
    assert.equal(env['ON_TLS'], '0');
    assert.equal(env['SPF_PASS'], '0');
    assert.equal(env['PATH'], '/usr/bin:/bin');
    assert.match(env['MXGUARD_QUEUE_ID'] ?? '', /^\S+$/);
    assert.ok(text.includes(env['MXGUARD_QUEUE_ID'] as string), 'the queue ID given is the one in our Received header');
    // Nothing of mxguard's own environment reaches the program.
    for (const k of ['HOME', 'NODE_OPTIONS', 'USER']) if (process.env[k] !== undefined) assert.equal(env[k], undefined, k);
    // It read the stored message: our Received header first, then the message as sent.
    const stdin = fs.readFileSync(path.join(dir, 'stdin.alice'), 'utf8');
    assert.match(stdin, /^Received: from client\.example\.test/);
    assert.match(stdin, /\r\nSubject: exec scanner test\r\n[^]*\r\n\r\nHello from the test\.\r\n$/);
  } finally {
    await app.stop();
  }
});

test('chasquid hook: exit 20 refuses (554 5.7.1, its last stdout line), also without reading the message; exit 75 defers (451 4.7.1); nothing delivered', async () => {
  const app = await startTestApp(scanners([{ type: 'exec', command: [hook], on_error: 'accept' }]));
  try {
    assert.equal((await send(app, 'refuse@sender.test')).reply, '554 5.7.1 Spam detected by the hook (score 99)');
    assert.equal((await send(app, 'defer@sender.test')).reply, '451 4.7.1 Busy, come back later');
    // 2 MB it never reads: the broken pipe is no failure, its exit status is the answer.
    const big = 'x'.repeat(998) + '\r\n';
    assert.equal((await send(app, 'early@sender.test', ['bob@example.test'], 10_000, big.repeat(2000))).reply, '554 5.7.1 Refused without reading');
    assert.deepEqual(app.maildir('bob'), []);
  } finally {
    await app.stop();
  }
});

test('qmail-queue program: the envelope on fd 1, exit 0 delivers, 31 refuses, 71 defers, 11 is permanent', async () => {
  const app = await startTestApp(scanners([{ type: 'exec', name: 'qq', command: [qq], protocol: 'qmail-queue', on_error: 'tempfail' }]));
  try {
    assert.match((await send(app, 'alice@sender.test', ['bob@example.test', 'carol@example.test'])).reply, /^250 /);
    assert.equal(fs.readFileSync(path.join(dir, 'qq.envelope'), 'utf8'), 'Falice@sender.test\nTbob@example.test\nTcarol@example.test\n\n');
    assert.match(fs.readFileSync(path.join(dir, 'qq.stdin'), 'utf8'), /^Received: from client\.example\.test[\s\S]*Hello from the test\.\r\n$/);
    const [file] = await app.waitMaildir('bob', 1);
    assert.ok(file, 'delivered');
    assert.match(fs.readFileSync(file, 'utf8'), /^X-Spam-Status: No, score=/m);

    assert.equal((await send(app, 'refuse@sender.test')).reply, '554 5.7.1 Message refused (qmail-queue exit 31)');
    assert.equal((await send(app, 'defer@sender.test')).reply, '451 4.7.1 Message deferred, try again later (qmail-queue exit 71)');
    assert.equal((await send(app, 'long@sender.test')).reply, '554 5.1.3 Envelope address too long (qmail-queue exit 11)');
    assert.equal(app.maildir('bob').length, 1);
    // The program's stderr is for the log, not for the client.
    assert.ok(app.logs().some((l) => l['check'] === 'qq' && /qmail-queue exit 31; stderr: virus found$/.test(String(l['msg']))), JSON.stringify(app.logs().filter((l) => l['check'] === 'qq')));
  } finally {
    await app.stop();
  }
});

test('qmail-queue filter passing the message on to $QMAILQUEUE: a field on top is added; a changed body or envelope is not applied (warn); 31 refuses, 71 defers', async () => {
  const app = await startTestApp(scanners([{ type: 'exec', name: 'qqpass', command: [qqPass], protocol: 'qmail-queue', on_error: 'tempfail' }]));
  const pass = (who: string, file: string) => fs.readFileSync(path.join(dir, `pass.${who}`, file), 'utf8').trim();
  const warnings = () => app.logs().filter((l) => l['scanner'] === 'qqpass' && l['level'] === 40).map((l) => String(l['msg']));
  try {
    // Added: the field is on top of the delivered message, once; the rest as sent.
    assert.match((await send(app, 'add@sender.test', ['bob@example.test', 'carol@example.test'])).reply, /^250 /);
    assert.equal(pass('add', 'rc'), '0');
    assert.equal(pass('add', 'qmailqueue'), QUEUE_CAPTURE);
    assert.equal(pass('add', 'mode'), '700');
    assert.equal(fs.existsSync(pass('add', 'capture')), false, 'the capture directory is removed after the run');
    const [file] = await app.waitMaildir('bob', 1);
    assert.ok(file, 'delivered');
    const text = fs.readFileSync(file, 'utf8');
    const header = text.slice(0, text.indexOf('\r\n\r\n') + 2);
    assert.match(header, /^X-Scanned-By: qq-filter\r$/m);
    assert.equal(text.match(/X-Scanned-By/g)?.length, 1);
    assert.match(header, /^Subject: exec scanner test\r$/m);
    assert.match(text, /\r\n\r\nHello from the test\.\r\n$/);
    assert.equal((await app.waitMaildir('carol', 1)).length, 1);
    assert.ok(app.logs().some((l) => l['scanner'] === 'qqpass' && /exit 0, passed on with 1 header field added$/.test(String(l['msg']))));
    assert.deepEqual(warnings(), []);

    // The body changed: delivered as sent, the change not applied, a warning says so.
    assert.match((await send(app, 'body@sender.test')).reply, /^250 /);
    assert.equal(pass('body', 'rc'), '0');
    const bodyFile = (await app.waitMaildir('bob', 2)).find((f) => fs.readFileSync(f, 'utf8').includes('From: <body@sender.test>'));
    assert.ok(bodyFile, 'delivered');
    const bodyText = fs.readFileSync(bodyFile, 'utf8');
    assert.doesNotMatch(bodyText, /appended by the filter/);
    assert.match(bodyText, /\r\n\r\nHello from the test\.\r\n$/);
    assert.equal(warnings().length, 1);
    assert.match(warnings()[0] ?? '', /qmail-queue-pass: the message it passed on is not header fields followed by the one it was given: change not applied, the message goes on as received/);

    // The envelope changed (another recipient): not applied either, the field with it; bob gets it.
    assert.match((await send(app, 'rcpt@sender.test')).reply, /^250 /);
    const rcptFile = (await app.waitMaildir('bob', 3)).find((f) => fs.readFileSync(f, 'utf8').includes('From: <rcpt@sender.test>'));
    assert.ok(rcptFile, 'delivered to the recipient given');
    assert.doesNotMatch(fs.readFileSync(rcptFile, 'utf8'), /X-Scanned-By/);
    assert.equal(warnings().length, 2);
    assert.match(warnings()[1] ?? '', /the envelope it passed on differs from the one it was given: change not applied/);

    // Accepting without running $QMAILQUEUE: delivered as before, nothing to warn about.
    assert.match((await send(app, 'plain@sender.test')).reply, /^250 /);
    assert.equal((await app.waitMaildir('bob', 4)).length, 4);
    assert.equal(warnings().length, 2);

    // The stand-in cannot write (its variables gone): it exits 71, which the filter passes on.
    assert.equal((await send(app, 'lost@sender.test')).reply, '451 4.7.1 Message deferred, try again later (qmail-queue exit 71)');
    assert.equal(pass('lost', 'rc'), '71');
    assert.ok(app.logs().some((l) => l['check'] === 'qqpass' && /qmail-queue exit 71; stderr: mxguard-queue-capture: MXGUARD_QUEUE_MESSAGE and MXGUARD_QUEUE_ENVELOPE are not set/.test(String(l['msg']))), JSON.stringify(app.logs().filter((l) => l['check'] === 'qqpass')));

    assert.equal((await send(app, 'refuse@sender.test')).reply, '554 5.7.1 Message refused (qmail-queue exit 31)');
    assert.equal((await send(app, 'defer@sender.test')).reply, '451 4.7.1 Message deferred, try again later (qmail-queue exit 71)');
    assert.equal(app.maildir('bob').length, 4);
  } finally {
    await app.stop();
  }
});

test('a program that hangs is killed at its timeout, with what it started; on_error tempfail defers, accept delivers', async () => {
  for (const onError of ['tempfail', 'accept'] as const) {
    fs.rmSync(path.join(dir, 'hang.pid'), { force: true });
    const app = await startTestApp(scanners([{ type: 'exec', name: 'slow', command: [hook], timeout: '1s', on_error: onError }]));
    try {
      const { reply, ms } = await send(app, 'hang@sender.test');
      assert.ok(ms >= 900 && ms < 3000, `answered after ${ms} ms`);
      if (onError === 'tempfail') {
        assert.equal(reply, '451 4.7.1 Message could not be scanned (slow), try again later');
        assert.deepEqual(app.maildir('bob'), []);
      } else {
        assert.match(reply, /^250 /);
        const [file] = await app.waitMaildir('bob', 1);
        assert.ok(file);
        assert.doesNotMatch(fs.readFileSync(file, 'utf8'), /X-Hook/);
      }
      // The sleep the script started went with it (its process group was killed).
      const pid = Number(fs.readFileSync(path.join(dir, 'hang.pid'), 'utf8'));
      const deadline = Date.now() + 2000;
      while (running(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
      assert.equal(running(pid), false, `sleep ${pid} still running`);
    } finally {
      await app.stop();
    }
  }
});

test('a program that does not exist: on_error tempfail defers, accept delivers', async () => {
  const missing = path.join(dir, 'no-such-program');
  const app = await startTestApp(scanners([{ type: 'exec', name: 'gone', command: [missing, '--flag'], on_error: 'tempfail' }]));
  try {
    assert.equal((await send(app, 'alice@sender.test')).reply, '451 4.7.1 Message could not be scanned (gone), try again later');
    assert.ok(app.logs().some((l) => l['scanner'] === 'gone' && String(l['err']).includes('ENOENT')), 'the log says why');
  } finally {
    await app.stop();
  }
  const lenient = await startTestApp(scanners([{ type: 'exec', name: 'gone', command: [missing], on_error: 'accept' }]));
  try {
    assert.match((await send(lenient, 'alice@sender.test')).reply, /^250 /);
    assert.equal((await lenient.waitMaildir('bob', 1)).length, 1);
  } finally {
    await lenient.stop();
  }
});
