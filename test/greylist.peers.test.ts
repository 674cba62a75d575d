// Greylisting against real senders (issue 11, Must show 1): a real Postfix, its retry times set
// short, is greylisted at RCPT, retries by itself and is delivered with X-Greylist; smtp-source,
// which never retries (as most spamware), never gets its message through. Real time here: the
// delay is 3 s, the Postfix queue is scanned every 2 s with backoffs of 2 to 4 s.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { sleep, startPostfix, waitUntil, type MailStorePeer } from './harness/peers.ts';
import { runWithInput } from './harness/processes.ts';
import { startTestApp, type TestApp } from './harness/app.ts';

const LIMIT = { timeout: 90_000 };
const DELAY_S = 3;

let mx: TestApp;
let postfix: MailStorePeer;

before(async () => {
  mx = await startTestApp({
    // 127.0.0.1 is where both senders come from: not a relay client here, or it would be waived.
    relay: { forward_from_ip: ['192.0.2.0/24'] },
    greylist: { when: 'always', delay: `${DELAY_S}s` },
  });
  postfix = await startPostfix({
    domains: ['relay.invalid'],
    mainCf: [
      'default_transport = smtp',
      `relayhost = [127.0.0.1]:${mx.port}`,
      'smtp_helo_name = relay.src.test',
      // PEERS.md: short retries for greylisting tests.
      'minimal_backoff_time = 2s',
      'maximal_backoff_time = 4s',
      'queue_run_delay = 2s',
    ],
  });
});

after(async () => {
  await postfix?.stop();
  await mx?.stop();
});

test('a real Postfix is greylisted, retries by itself and is delivered with X-Greylist; smtp-source never gets through', LIMIT, async () => {
  const etc = path.join(postfix.dir, 'etc');
  const token = `grey-${Date.now()}`;
  const message = `From: <news@src.test>\nTo: <bob@example.test>\nSubject: ${token}\nMessage-ID: <${token}@src.test>\n\nGreylisted once.\n`;
  const sm = await runWithInput('sendmail', ['-C', etc, '-i', '-f', 'news@src.test', '--', 'bob@example.test'], message, 20_000);
  assert.equal(sm.code, 0, `sendmail: ${sm.output}`);

  // smtp-source sends one message (another sender: its own triplet) and never comes back.
  // (Not spawnSync: mxguard runs in this process and must go on answering.)
  const src = await runWithInput('/usr/sbin/smtp-source', ['-M', 'bulk.spam.test', '-m', '1', '-f', 'bulk@spam.test', '-t', 'bob@example.test', `127.0.0.1:${mx.port}`], '', 20_000);
  assert.match(src.output, /451 4\.7\.1 Greylisted/, `smtp-source was answered: ${src.output}`);

  const deferred = /status=deferred \(host 127\.0\.0\.1\[127\.0\.0\.1\] said: 451 4\.7\.1 Greylisted, please try again in \d+ seconds \(in reply to RCPT TO command\)\)/;
  const sent = /to=<bob@example\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+,.* status=sent \(250 2\.0\.0 Ok: queued as (\w+)\)/;
  assert.ok(await waitUntil(() => sent.test(postfix.log()), 40_000, 200), `Postfix did not get through:\n${postfix.log().slice(-3000)}`);
  assert.match(postfix.log(), deferred, 'its first attempt was greylisted');

  const files = await mx.waitMaildir('bob', 1, 10_000);
  const mine = files.map((f) => fs.readFileSync(f, 'latin1')).filter((m) => m.includes(`Subject: ${token}`));
  assert.equal(mine.length, 1, 'delivered once');
  const held = /\nX-Greylist: delayed (\d+) seconds by mxguard\r?\n/.exec(mine[0] as string);
  assert.ok(held, `no X-Greylist in:\n${(mine[0] as string).slice(0, 800)}`);
  assert.ok(Number(held[1]) >= DELAY_S, `held ${held[1]} s, the delay is ${DELAY_S} s`);

  // Well past the delay, smtp-source's message is still not there: it never retried.
  await sleep(DELAY_S * 1000 + 500);
  assert.equal(mx.maildir('bob').length, 1, 'only the Postfix message arrived');
  const spamLines = mx.logs().filter((l) => l.check === 'greylist' && String(l.msg).includes('bulk@spam.test'));
  assert.ok(spamLines.length >= 1 && spamLines.every((l) => l.verdict === 'tempfail'), JSON.stringify(spamLines));
});
