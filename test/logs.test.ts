// Issue 14, Must show 2: text logs follow a message by its queue ID, and the log file is reopened
// after logrotate moves it. The real daemon (a process, as an administrator runs it) logs with
// log.format text into a file in a temp dir and delivers to its Maildir; the test talks SMTP to
// it, greps the queue ID in the file, moves the file away and signals the process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { freePort, maildirFiles, makeTempDir, waitUntil } from './harness/peers.ts';
import { startMxguard, type MxguardProcess } from './harness/mxguard-process.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { atEnd } from './harness/cleanups.ts';


/** One message over its own connection; the queue ID from the 250 (undefined if refused). */
async function send(port: number, opts: { from: string; to: string; msgid: string; helo?: string }): Promise<{ id: string | undefined; replies: string[] }> {
  const c = await RawClient.connect(port);
  const replies: string[] = [];
  let id: string | undefined;
  try {
    replies.push(await c.reply(10_000));
    c.send(`EHLO ${opts.helo ?? 'client.example.test'}\r\n`);
    replies.push(await c.reply());
    c.send(`MAIL FROM:<${opts.from}>\r\n`);
    replies.push(await c.reply());
    c.send(`RCPT TO:<${opts.to}>\r\n`);
    const rcpt = await c.reply();
    replies.push(rcpt);
    if (rcpt.startsWith('250')) {
      c.send('DATA\r\n');
      replies.push(await c.reply());
      c.send(`From: <${opts.from}>\r\nTo: <${opts.to}>\r\nMessage-ID: ${opts.msgid}\r\nSubject: logs\r\n\r\nhello\r\n.\r\n`);
      const final = await c.reply(10_000);
      replies.push(final);
      id = /queued as ([0-9A-Z]+)/.exec(final)?.[1];
    }
    c.send('QUIT\r\n');
    replies.push(await c.reply());
  } finally {
    c.close();
  }
  return { id, replies };
}

const read = (file: string): string => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '');
const grep = (file: string, word: string): string[] => read(file).split('\n').filter((l) => l.includes(word));

/** Waits until `file` has the message's delivery and the end of its session. */
async function settled(file: string, id: string): Promise<string> {
  const ok = await waitUntil(() => {
    const sid = /sid=(\S+)/.exec(grep(file, `${id}: client=`)[0] ?? '')?.[1];
    return sid !== undefined && grep(file, `${id}: delivered`).length === 1 && grep(file, `sid=${sid} disconnect`).length === 1;
  }, 15_000);
  assert.ok(ok, `${id}: no delivered and disconnect lines in ${file}:\n${read(file)}`);
  return /sid=(\S+)/.exec(grep(file, `${id}: client=`)[0] as string)?.[1] as string;
}

test('log.format text: one grep of the queue ID shows connect, verdicts, queued with message-id, delivered; logrotate moves + SIGHUP / SIGUSR1 reopen; SIGHUP applies log.*', { timeout: 120_000 }, async () => {
  const dir = await makeTempDir('logs');
  atEnd(() => fs.rmSync(dir, { recursive: true, force: true }));
  const logDir = path.join(dir, 'log');
  const logFile = path.join(logDir, 'mail.log');
  const port = await freePort();
  const config = {
    hostname: 'mx.example.test',
    local_domains: ['example.test'],
    data_dir: path.join(dir, 'var'),
    mail_from: { require_domain: false },
    log: { level: 'info', file: logFile, format: 'text' },
  };
  const mx: MxguardProcess = await startMxguard(dir, config, port);
  atEnd(() => mx.stop());
  const maildir = path.join(dir, 'var', 'maildir', 'alice');

  // 1. One message; everything about it under its queue ID.
  const m1 = await send(port, { from: 'sender@client.example.test', to: 'alice@example.test', msgid: '<first.1@client.example.test>' });
  assert.ok(m1.id, `message 1 queued: ${JSON.stringify(m1.replies)}`);
  const id1 = m1.id as string;
  const sid1 = await settled(logFile, id1);
  const lines = grep(logFile, id1);
  console.log(`grep ${id1} ${logFile}:\n${lines.join('\n')}`);
  const at = (re: RegExp) => lines.filter((l) => re.test(l));
  const head = new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z \\S+ mxguard\\[${mx.pid}\\]: ${id1}: `);
  assert.ok(
    lines.every((l) => head.test(l)),
    `every line starts with the timestamp, host, mxguard[PID] and the queue ID:\n${lines.join('\n')}`,
  );
  assert.equal(at(new RegExp(`${id1}: client=unknown\\[127\\.0\\.0\\.1\\]:\\d+ sid=${sid1} helo=client\\.example\\.test connected_at=\\S+$`)).length, 1, 'the connect, under the queue ID');
  assert.ok(at(new RegExp(`: check=local_domains verdict=accept sid=${sid1}$`)).length === 1, 'the deciding verdict');
  assert.equal(at(new RegExp(`${id1}: queued message-id=<first\\.1@client\\.example\\.test> from=<sender@client\\.example\\.test> size=\\d+ sid=${sid1} `)).length, 1, 'queued, with the Message-ID');
  assert.equal(at(new RegExp(`${id1}: delivered .*rcpt=<alice@example\\.test> relay=maildir:\\S+ status=ok`)).length, 1, 'delivered');
  assert.equal(maildirFiles(maildir).length, 1);
  // The session's own lines (connect, verdicts, disconnect) carry its session ID first; nothing names the client without it.
  assert.ok(grep(logFile, `sid=${sid1} connect ip=127.0.0.1 port=`).length === 1, 'the connect line of the session');
  const unnamed = grep(logFile, 'ip=').filter((l) => !/: (sid=\S+ |[0-9A-Z]{14}: .* sid=)/.test(l));
  assert.deepEqual(unnamed, [], 'lines about a client without its session ID');

  // 2. logrotate: rename, SIGHUP (postrotate), the next message goes to the new file only.
  const rotated1 = `${logFile}.1`;
  fs.renameSync(logFile, rotated1);
  mx.signal('SIGHUP');
  assert.ok(await waitUntil(() => grep(logFile, 'configuration reloaded').length === 1, 10_000), `SIGHUP: a new ${logFile} with the reload line; old file:\n${read(rotated1).slice(-2000)}`);
  const oldAfterHup = read(rotated1);
  const m2 = await send(port, { from: 'sender@client.example.test', to: 'alice@example.test', msgid: '<second.2@client.example.test>' });
  const id2 = m2.id as string;
  assert.ok(id2, JSON.stringify(m2.replies));
  await settled(logFile, id2);
  assert.equal(read(rotated1), oldAfterHup, 'the moved file gets no new lines after SIGHUP');
  assert.equal(grep(logFile, `${id2}: queued message-id=<second.2@client.example.test>`).length, 1);

  // 3. The same with SIGUSR1 (which also rescans the queue).
  const rotated2 = `${logFile}.2`;
  fs.renameSync(logFile, rotated2);
  mx.signal('SIGUSR1');
  assert.ok(await waitUntil(() => fs.existsSync(logFile), 10_000), 'SIGUSR1 opened a new log file');
  const oldAfterUsr1 = read(rotated2);
  const m3 = await send(port, { from: 'sender@client.example.test', to: 'alice@example.test', msgid: '<third.3@client.example.test>' });
  const id3 = m3.id as string;
  assert.ok(id3, JSON.stringify(m3.replies));
  await settled(logFile, id3);
  assert.equal(read(rotated2), oldAfterUsr1, 'the moved file gets no new lines after SIGUSR1');
  assert.equal(grep(rotated1, id3).length + grep(rotated2, id3).length, 0);

  // 4. SIGHUP applies log.*: a new file, JSON, level debug; the Message-ID is in the JSON transaction line.
  const jsonFile = path.join(logDir, 'json', 'mail.json');
  const write = (log: Record<string, unknown>) => fs.writeFileSync(path.join(dir, 'mxguard.yaml'), stringify({ listen: [`127.0.0.1:${port}`], ...config, log }));
  write({ level: 'debug', file: jsonFile, format: 'json' });
  const textBefore = read(logFile);
  mx.signal('SIGHUP');
  assert.ok(await waitUntil(() => read(jsonFile).includes('"msg":"logging to a new file"'), 10_000), `log.file changed: ${read(logFile).slice(-1500)}`);
  const m4 = await send(port, { from: 'sender@client.example.test', to: 'alice@example.test', msgid: '<fourth.4@client.example.test>' });
  const id4 = m4.id as string;
  assert.ok(id4, JSON.stringify(m4.replies));
  assert.ok(await waitUntil(() => read(jsonFile).includes(`"id":"${id4}","rcpt":"alice@example.test"`), 10_000), read(jsonFile));
  const records = read(jsonFile)
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const txLine = records.find((r) => r.msg === 'transaction' && r.id === id4);
  assert.equal(txLine?.msgid, '<fourth.4@client.example.test>', 'JSON: the transaction line has the Message-ID');
  assert.equal(txLine?.helo, 'client.example.test');
  assert.equal(typeof txLine?.sid, 'string');
  assert.ok(
    records.some((r) => r.level === 20),
    'log.level debug applies to the running loggers',
  );
  assert.ok(read(logFile).startsWith(textBefore) && grep(logFile, id4).length === 0, 'the text file is left alone after the switch');

  // 5. A file that cannot be opened: the old descriptor is kept and the error is logged there.
  fs.writeFileSync(path.join(dir, 'not-a-dir'), '');
  write({ level: 'info', file: path.join(dir, 'not-a-dir', 'mail.log'), format: 'json' });
  mx.signal('SIGHUP');
  assert.ok(await waitUntil(() => read(jsonFile).includes('cannot open the log file'), 10_000), read(jsonFile).slice(-2000));
  const failure = read(jsonFile)
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .find((r) => typeof r.msg === 'string' && r.msg.includes('cannot open the log file'));
  assert.equal(failure?.level, 50);
  assert.equal(failure?.kept, jsonFile);
  const m5 = await send(port, { from: 'sender@client.example.test', to: 'alice@example.test', msgid: '<fifth.5@client.example.test>' });
  assert.ok(m5.id, JSON.stringify(m5.replies));
  assert.ok(await waitUntil(() => read(jsonFile).includes(`"id":"${m5.id}","rcpt":"alice@example.test"`), 10_000), 'logging goes on in the old file');
  assert.equal(maildirFiles(maildir).length, 5);

  // 6. A config that does not load: SIGHUP still reopens the log (logrotate does not wait for the config to be fixed).
  fs.writeFileSync(path.join(dir, 'mxguard.yaml'), 'listen: [\n');
  fs.renameSync(jsonFile, `${jsonFile}.1`);
  const oldJson = read(`${jsonFile}.1`);
  mx.signal('SIGHUP');
  assert.ok(await waitUntil(() => read(jsonFile).includes('reload failed; keeping the running configuration'), 10_000), `reload failure logged in the new file; old:\n${read(`${jsonFile}.1`).slice(-1500)}`);
  assert.equal(read(`${jsonFile}.1`), oldJson);
  assert.equal(await mx.stop(), 0);
});
