// The Exim harness against Postfix's smtp-sink: the unpacked Debian binary runs with its private
// configuration, takes a message on its command line and one by SMTP on its own port, relays
// both without TLS — writing "." and QUIT together and shutting its sending side, the habit the
// mxguard tests need it for — and stop() leaves no process and no directory behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startExim } from './exim.ts';
import { isAlive, runSwaks, startSmtpSink, waitUntil } from './peers.ts';

test('Exim relays to smtp-sink without TLS, pipelining QUIT and half-closing; stop() cleans up', { timeout: 60_000 }, async () => {
  const sink = await startSmtpSink();
  try {
    const exim = await startExim({ relayTo: { host: '127.0.0.1', port: sink.port } });
    try {
      assert.ok(isAlive(exim.pid));
      const r = await exim.send('a@exim.test', ['b@example.test'], 'Subject: harness\n\nhello\n');
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stderr, /STARTTLS/, 'no TLS');
      assert.match(r.stderr, /SMTP>> \.\n\s*SMTP\+> QUIT\n\s*SMTP\(shutdown\)>>\n\s*SMTP<< 250 .*\n\s*SMTP<< 221 /, r.stderr);
      const viaSmtp = await runSwaks(['--server', '127.0.0.1', '--port', String(exim.port), '--from', 'c@src.test', '--to', 'd@example.test']);
      assert.equal(viaSmtp.code, 0, viaSmtp.stdout);
      assert.ok(await waitUntil(() => sink.received() >= 2, 10_000), `smtp-sink got ${sink.received()}; Exim's log:\n${exim.mainlog()}`);
      assert.equal((exim.mainlog().match(/ => /g) ?? []).length, 2, exim.mainlog());
      assert.equal(await exim.queueCount(), 0);
    } finally {
      await exim.stop();
    }
    assert.ok(!isAlive(exim.pid), 'the daemon is gone');
    assert.ok(!fs.existsSync(exim.dir), 'its directory is removed');
    await exim.stop(); // twice is harmless
  } finally {
    await sink.stop();
  }
});
