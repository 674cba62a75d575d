// A real Exim 4.96 relaying into mxguard without TLS (issue 8, defect 6). Exim writes the final
// "." and QUIT in one write and shuts its sending side; mxguard must answer 250 and 221 all the
// same, or Exim defers a message that was in fact queued and sends it again later: every message
// would arrive twice. Exim (test/harness/exim.ts: the unpacked Debian binary, a private config)
// sends some messages from its command line (-odi, delivered at once) and takes others by SMTP
// on its own listener (its daemon delivers them); a forced queue run then retries anything
// deferred, as Exim's retries would. mxguard runs in-process and delivers into a Maildir.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startTestApp, type TestApp } from './harness/app.ts';
import { startExim, type EximPeer } from './harness/exim.ts';
import { runSwaks, waitUntil } from './harness/peers.ts';

const LIMIT = { timeout: 90_000 };

let app: TestApp;
let exim: EximPeer;

before(async () => {
  app = await startTestApp();
  exim = await startExim({ relayTo: { host: '127.0.0.1', port: app.port } });
});

after(async () => {
  await exim?.stop();
  await app?.stop();
});

function messageIds(files: string[]): string[] {
  return files.map((f) => /^Message-ID: (<[^>]+>)/im.exec(fs.readFileSync(f, 'latin1'))?.[1] ?? `? ${f}`).sort();
}

function count(text: string, re: RegExp): number {
  return (text.match(re) ?? []).length;
}

test('Exim sends "." and QUIT together and half-closes: mxguard answers both, each message arrives once, nothing is deferred', LIMIT, async () => {
  const ids: string[] = [];
  const dialogues: string[] = [];
  // Three from Exim's command line: -v shows the dialogue with mxguard.
  for (let i = 1; i <= 3; i++) {
    const id = `<exim-cli-${i}@exim.test>`;
    ids.push(id);
    const r = await exim.send('sender@exim.test', ['eximrcpt@example.test'], `From: sender@exim.test\nTo: eximrcpt@example.test\nSubject: exim ${i}\nMessage-ID: ${id}\n\nbody ${i}\n.\nlast line\n`);
    assert.equal(r.code, 0, r.stderr);
    dialogues.push(r.stderr);
  }
  // Two by SMTP to Exim's own listener: its daemon relays them.
  for (let i = 1; i <= 2; i++) {
    const id = `<exim-smtp-${i}@exim.test>`;
    ids.push(id);
    const r = await runSwaks(['--server', '127.0.0.1', '--port', String(exim.port), '--from', 'sender@src.test', '--to', 'eximrcpt@example.test', '--header', `Message-Id: ${id}`, '--header', `Subject: via exim ${i}`]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  }
  const deliveredByExim = (): number => count(exim.mainlog(), / => eximrcpt@example\.test /g);
  const settled = (): boolean => deliveredByExim() + count(exim.mainlog(), / == eximrcpt@example\.test /g) >= 5;
  assert.ok(await waitUntil(settled, 20_000), exim.mainlog());

  // What Exim does later with a deferred message, now: try it again.
  const flush = await exim.flushQueue();
  assert.equal(flush.code, 0, flush.stderr);

  // Every message mxguard queued has been delivered, then count: each Message-ID exactly once.
  const queued = (): number => app.logs().filter((l) => l.msg === 'transaction' && l.outcome === 'accepted').length;
  const delivered = (): number => app.logs().filter((l) => l.msg === 'delivered').length;
  assert.ok(await waitUntil(() => queued() >= 5 && delivered() >= queued(), 10_000), JSON.stringify({ queued: queued(), delivered: delivered() }));
  assert.deepEqual(messageIds(app.maildir('eximrcpt')), ids.sort(), exim.mainlog());
  assert.equal(queued(), 5, 'mxguard queued each message once');

  const log = exim.mainlog();
  assert.equal(count(log, / == /g), 0, `no deferral:\n${log}`);
  assert.equal(count(log, / => eximrcpt@example\.test R=to_relay T=to_relay H=127\.0\.0\.1 \[127\.0\.0\.1\] C="250 2\.0\.0 Ok: queued as [0-9A-Z]{14}"/g), 5, log);
  assert.equal(await exim.queueCount(), 0, 'Exim\'s queue is empty');

  for (const d of dialogues) {
    // The sequence of the report: "." and QUIT in one write, then shutdown(SHUT_WR) ...
    assert.match(d, /SMTP>> \.\n\s*SMTP\+> QUIT\n\s*SMTP\(shutdown\)>>\n/, d);
    // ... and mxguard's 250 and 221 read after it.
    assert.match(d, /SMTP\(shutdown\)>>\n\s*SMTP<< 250 2\.0\.0 Ok: queued as [0-9A-Z]{14}\n\s*SMTP<< 221 /, d);
  }
});
