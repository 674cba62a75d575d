// SPF through real SMTP (issue 12, Must show 3, the SPF part) against records a real dnsmasq
// serves on loopback: pass, fail, softfail, none, permerror, the HELO identity for the null
// sender, spf.fail: reject answered at RCPT, and the Authentication-Results field checked field
// by field in the delivered message (with a forged one claiming our authserv-id removed).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import type { ConfigInput } from '../src/config/schema.ts';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { startDnsmasq, type DnsmasqPeer } from './harness/dns.ts';

const LIMIT = { timeout: 60_000 };
/** The client: loopback, but not a relay client here (relay clients are not checked). */
const CLIENT = '127.9.0.1';
let dm: DnsmasqPeer;

before(async () => {
  dm = await startDnsmasq({
    records: {
      txt: {
        'pass.spf.test': ['v=spf1 ip4:127.9.0.0/16 -all'],
        'fail.spf.test': ['v=spf1 ip4:192.0.2.0/24 -all'],
        'soft.spf.test': ['v=spf1 ip4:192.0.2.0/24 ~all'],
        'broken.spf.test': ['v=spf1 ip4:127.9.0.0/16 bogus:thing -all'],
        'helo.spf.test': ['v=spf1 ip4:127.9.0.0/16 -all'],
      },
      // The client's name: its PTR (dnsmasq answers one for each A record) resolves back to it: iprev=pass.
      a: { 'none.spf.test': ['192.0.2.7'], 'client.spf.test': [CLIENT] },
    },
  });
});

after(async () => {
  await dm?.stop();
});

function app(spf: NonNullable<ConfigInput['spf']> = {}): Promise<TestApp> {
  return startTestApp({ dns: { servers: [dm.server], timeout: '3s' }, relay: { forward_from_ip: ['192.0.2.0/24'] }, spf });
}

/** One transaction; the message when it was queued, else the first refusal. */
async function send(a: TestApp, from: string, opts: { helo?: string; extraHeaders?: string } = {}): Promise<{ reply: string; message?: string }> {
  const before = a.maildir('bob').length;
  const c = await RawClient.connect(a.port, '127.0.0.1', CLIENT);
  try {
    await c.reply(10_000);
    c.send(`EHLO ${opts.helo ?? 'client.example.org'}\r\n`);
    await c.reply();
    c.send(`MAIL FROM:<${from}>\r\n`);
    const mail = await c.reply(10_000);
    if (!mail.startsWith('250')) return { reply: mail };
    c.send('RCPT TO:<bob@example.test>\r\n');
    const rcpt = await c.reply(10_000);
    if (!rcpt.startsWith('250')) return { reply: rcpt };
    c.send('DATA\r\n');
    await c.reply();
    c.send(`${opts.extraHeaders ?? ''}Subject: spf\r\nFrom: <${from || 'mailer-daemon@x.test'}>\r\n\r\nhello\r\n.\r\n`);
    const data = await c.reply(10_000);
    c.send('QUIT\r\n');
    if (!data.startsWith('250')) return { reply: data };
    const files = await a.waitMaildir('bob', before + 1);
    const newest = files.map((f) => ({ f, t: fs.statSync(f).mtimeMs })).sort((x, y) => y.t - x.t)[0]?.f as string;
    return { reply: data, message: fs.readFileSync(newest, 'latin1') };
  } finally {
    c.close();
  }
}

/** The Authentication-Results field of a delivered message, unfolded. */
function authResults(message: string): string[] {
  const head = message.split('\r\n\r\n')[0] as string;
  return head
    .replace(/\r\n[ \t]+/g, ' ')
    .split('\r\n')
    .filter((l) => /^Authentication-Results:/i.test(l));
}

test('pass, fail, softfail, none and permerror, each in the Authentication-Results field and the score', LIMIT, async () => {
  const a = await app();
  try {
    const pass = await send(a, 'alice@pass.spf.test', { extraHeaders: 'Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=forged@pass.spf.test\r\nAuthentication-Results: other.example; dkim=pass\r\n' });
    const ar = authResults(pass.message as string);
    assert.equal(ar.length, 2, `ours, and the other host's (the forged one claiming our id is removed): ${ar.join(' | ')}`);
    assert.match(ar[0] as string, /^Authentication-Results: mx\.example\.test; spf=pass \(.*127\.9\.0\.1.*\) smtp\.mailfrom=alice@pass\.spf\.test; iprev=pass \(client\.spf\.test\) policy\.iprev=127\.9\.0\.1$/);
    assert.equal(ar[1], 'Authentication-Results: other.example; dkim=pass', 'another host\'s field is kept');
    assert.doesNotMatch(pass.message as string, /forged@pass/);
    assert.match(pass.message as string, /X-Spam-Status: No, score=0\.0/);

    const fail = await send(a, 'bob@fail.spf.test');
    assert.match(authResults(fail.message as string)[0] as string, /spf=fail \(.*\) smtp\.mailfrom=bob@fail\.spf\.test; iprev=pass/);
    assert.match(fail.message as string, /X-Spam-Status: Yes, score=5\.0 required=5\.0 tests=SPF_FAIL\r\n/, 'spf.fail: score (the default) tags it');

    const soft = await send(a, 'carol@soft.spf.test');
    assert.match(authResults(soft.message as string)[0] as string, /spf=softfail .*smtp\.mailfrom=carol@soft\.spf\.test; iprev=pass/);
    assert.match(soft.message as string, /tests=SPF_SOFTFAIL\r\n/);

    const none = await send(a, 'dave@none.spf.test');
    assert.match(authResults(none.message as string)[0] as string, /spf=none .*smtp\.mailfrom=dave@none\.spf\.test; iprev=pass/);

    const broken = await send(a, 'eve@broken.spf.test');
    assert.match(authResults(broken.message as string)[0] as string, /spf=permerror .*smtp\.mailfrom=eve@broken\.spf\.test; iprev=pass/);
    assert.match(broken.message as string, /tests=SPF_PERMERROR\r\n/);

    // The null sender: the HELO name is the identity checked.
    const bounce = await send(a, '', { helo: 'helo.spf.test' });
    assert.match(authResults(bounce.message as string)[0] as string, /spf=pass .*smtp\.helo=helo\.spf\.test; iprev=pass/);
    const lines = a.logs().filter((l) => l.check === 'spf');
    assert.ok(lines.some((l) => String(l.msg).startsWith('spf: fail for MAIL FROM bob@fail.spf.test from [127.9.0.1]')), JSON.stringify(lines.map((l) => l.msg)));
  } finally {
    await a.stop();
  }
});

test('spf.fail: reject refuses at RCPT (smtp.delay_reject) with 550 5.7.23; a pass goes through', LIMIT, async () => {
  const a = await app({ fail: 'reject' });
  try {
    assert.equal((await send(a, 'bob@fail.spf.test')).reply, '550 5.7.23 Message rejected due to SPF policy: fail.spf.test does not designate [127.9.0.1] as permitted sender');
    assert.match((await send(a, 'alice@pass.spf.test')).reply, /^250 2\.0\.0 Ok: queued/);
    assert.match((await send(a, 'carol@soft.spf.test')).reply, /^250 2\.0\.0 Ok: queued/, 'softfail only scores');
  } finally {
    await a.stop();
  }
});
