// Body lines over RFC 5321's 1000 octets, taken by default (issue 9, item 1), are passed on
// unfolded: mxguard forwards them to a real Dovecot LMTP and a real Postfix, and both store them
// unchanged, so no downstream of the shipped setups needs mxguard to fold them.
// Every peer is stopped in an after-hook, also when an assertion fails.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { maildirFiles, startDovecotAndPostfix, waitUntil, type MailStorePeer } from './harness/peers.ts';
import { startTestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';

const PF_DOMAIN = 'pf.example.test';
const LMTP_DOMAIN = 'lmtp.example.test';
const LINE_1001 = 'a'.repeat(999);
const LINE_5000 = 'b'.repeat(4998);

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

for (const downstream of ['Dovecot LMTP', 'Postfix'] as const) {
  test(`1001- and 5000-octet lines reach ${downstream} unchanged`, { timeout: 60_000 }, async (t) => {
    const peer = downstream === 'Postfix' ? postfix : dovecot;
    const domain = downstream === 'Postfix' ? PF_DOMAIN : LMTP_DOMAIN;
    const deliver = `${downstream === 'Postfix' ? 'smtp' : 'lmtp'}://127.0.0.1:${peer.port}`;
    const mx = await startTestApp({ local_domains: [domain], deliver, queue: { retry: ['1h'] } });
    t.after(() => mx.stop());
    const c = await RawClient.connect(mx.port);
    t.after(() => c.close());
    assert.match(await c.reply(), /^220 /);
    c.send(`EHLO client.test\r\nMAIL FROM:<news@remote.test>\r\nRCPT TO:<alice@${domain}>\r\nDATA\r\n`);
    const replies = await c.replies(4);
    assert.match(replies[3] as string, /^354 /, replies.join('\n'));
    c.send(`Subject: long lines\r\n\r\nshort\r\n${LINE_1001}\r\n${LINE_5000}\r\nend\r\n.\r\n`);
    assert.match(await c.reply(10_000), /^250 2\.0\.0 Ok: queued as /);
    const box = peer.maildirFor(`alice@${domain}`);
    assert.ok(await waitUntil(() => maildirFiles(box).length === 1, 30_000), `not delivered:\n${peer.log().slice(-2000)}`);
    const lines = fs.readFileSync(maildirFiles(box)[0] as string, 'latin1').split(/\r?\n/);
    const at = lines.indexOf('short');
    assert.ok(at !== -1, 'the body is there');
    assert.equal(lines[at + 1], LINE_1001, 'the 1001-octet line (999 + CRLF) is one line, unchanged');
    assert.equal(lines[at + 2], LINE_5000, 'the 5000-octet line (4998 + CRLF) is one line, unchanged');
    assert.equal(lines[at + 3], 'end');
  });
}
