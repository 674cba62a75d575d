// Issue 13, DKIM signing (Must show 4, its signing half): our users' mail (a relay client here;
// an authenticated user alike) with a From: in a dkim.sign domain is signed on its way out, and
// the receiving side's verification (mailauth, through mxguard's resolver and a real dnsmasq
// serving the published key) says pass; mail from anyone else, or from another domain, is not
// signed. The key and the record come from `mxguard dkim keygen`.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { startDnsmasq, type DnsmasqPeer } from './harness/dns.ts';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { DnsResolver } from '../src/dns/resolver.ts';
import { verifyMessage } from '../src/policy/auth/verify.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-dkim-sign-'));
const keyFile = path.join(dir, 'example.com.s1.pem');
let dm: DnsmasqPeer;
let app: TestApp;

before(async () => {
  const out = execFileSync(process.execPath, [MAIN, 'dkim', 'keygen', 'example.com', 's1', keyFile], { encoding: 'utf8' });
  assert.equal(fs.statSync(keyFile).mode & 0o777, 0o600);
  // The zone-file line keygen printed, its strings as DNS character-strings.
  const line = /^s1\._domainkey\.example\.com\. IN TXT \( (.*) \)$/m.exec(out)?.[1];
  assert.ok(line, out);
  const strings = [...line.matchAll(/"([^"]*)"/g)].map((m) => m[1] as string);
  dm = await startDnsmasq({ records: { txt: { 's1._domainkey.example.com': [strings] } } });
  app = await startTestApp({
    local_domains: ['example.com', 'example.test'],
    relay: { forward_from_ip: ['127.0.0.1'] },
    dkim: { sign: [{ domain: 'example.com', selector: 's1', key: keyFile }] },
  });
});
after(async () => {
  await app?.stop();
  await dm?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function send(from: string, headerFrom: string, to: string, subject: string, ip = '127.0.0.1'): Promise<void> {
  const c = await RawClient.connect(app.port, '127.0.0.1', ip);
  try {
    assert.match(await c.reply(), /^220 /);
    c.send('EHLO client.example.com\r\n');
    assert.match(await c.reply(), /^250/);
    c.send(`MAIL FROM:<${from}>\r\nRCPT TO:<${to}>\r\nDATA\r\n`);
    assert.match(await c.reply(), /^250 /);
    assert.match(await c.reply(), /^250 /);
    assert.match(await c.reply(), /^354 /);
    c.send(`From: ${headerFrom}\r\nTo: <${to}>\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@example.com>\r\n\r\nHello,\r\nsigned or not.\r\n.\r\n`);
    assert.match(await c.reply(10_000), /^250 /);
    c.send('QUIT\r\n');
  } finally {
    c.close();
  }
}

async function verified(local: string, subject: string): Promise<{ text: string; dkim: string[] }> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const file = app.maildir(local).find((f) => fs.readFileSync(f, 'latin1').includes(`Subject: ${subject}\r\n`));
    if (file) {
      const raw = fs.readFileSync(file);
      const dns = new DnsResolver({ servers: [dm.server], timeoutMs: 3000 });
      const v = await verifyMessage([raw], { ip: '192.0.2.1', minKeyBits: 1024 }, dns);
      return { text: raw.toString('latin1'), dkim: (v.dkim ?? []).map((d) => `${d.result} ${d.domain}`) };
    }
    if (Date.now() > deadline) assert.fail(`${subject}: not delivered\n${JSON.stringify(app.logs().slice(-10))}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

test('a relay client\'s message From: example.com is signed, and the receiving side verifies it: dkim=pass', async () => {
  await send('ann@example.com', 'Ann <ann@Example.COM>', 'bob@example.test', 'signed one');
  const v = await verified('bob', 'signed one');
  assert.match(v.text, /\r\nDKIM-Signature: v=1; a=rsa-sha256; c=relaxed\/relaxed; d=example\.com;[^]*?s=s1;/);
  assert.deepEqual(v.dkim, ['pass example.com']);
});

test('a subdomain of a signing domain is signed by it; another domain, or a client that is not ours, is not signed', async () => {
  await send('x@news.example.com', '<x@news.example.com>', 'bob@example.test', 'subdomain');
  assert.deepEqual((await verified('bob', 'subdomain')).dkim, ['pass example.com']);
  await send('x@other.test', '<x@other.test>', 'bob@example.test', 'other domain');
  const other = await verified('bob', 'other domain');
  assert.doesNotMatch(other.text, /DKIM-Signature/);
  // 127.0.0.2 is neither a relay client nor authenticated: mail from the internet claiming example.com.
  await send('spoof@example.com', '<spoof@example.com>', 'bob@example.test', 'from outside', '127.0.0.2');
  const outside = await verified('bob', 'from outside');
  assert.doesNotMatch(outside.text, /DKIM-Signature/, 'never vouch for mail from outside');
});
