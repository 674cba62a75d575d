// Sender domains and reverse DNS (issue 4) through real SMTP sessions against a real dnsmasq:
// NXDOMAIN and null MX are permanent, SERVFAIL and timeouts are only ever 451.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { withTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { startDnsmasq } from './harness/dns.ts';

const CLOSED = { forward_from_ip: ['192.0.2.0/24'] }; // loopback is not a relay client here
let dns: Awaited<ReturnType<typeof startDnsmasq>>;
let noPtr: Awaited<ReturnType<typeof startDnsmasq>>;
let badPtr: Awaited<ReturnType<typeof startDnsmasq>>;

before(async () => {
  [dns, noPtr, badPtr] = await Promise.all([
    startDnsmasq({
      records: {
        a: { 'mail.good.test': ['192.0.2.25'], 'aonly.test': ['192.0.2.26'], 'client.example.test': ['127.0.0.1'] },
        mx: { 'good.test': [{ exchange: 'mail.good.test', priority: 10 }], 'nullmx.test': [{ exchange: '.', priority: 0 }] },
        ptr: { '127.0.0.1': ['client.example.test'] },
      },
      servfail: ['broken.test'],
      timeout: ['slow.test'],
    }),
    startDnsmasq({ records: {} }),
    startDnsmasq({ records: { a: { 'liar.example.test': ['192.0.2.99'] }, ptr: { '127.0.0.1': ['liar.example.test'] } } }),
  ]);
});
after(async () => {
  await Promise.all([dns?.stop(), noPtr?.stop(), badPtr?.stop()]);
});

async function rcptReply(app: TestApp, from: string): Promise<{ reply: string; ms: number }> {
  const c = await RawClient.connect(app.port);
  try {
    await c.reply();
    const t0 = Date.now();
    c.send(`EHLO client.example.test\r\nMAIL FROM:<${from}>\r\nRCPT TO:<u@example.test>\r\n`);
    const r = await c.replies(3, 10_000);
    return { reply: r[2] as string, ms: Date.now() - t0 };
  } finally {
    c.close();
  }
}

test('the sender domain must exist: MX or A, no null MX; DNS trouble is 451, never 5xx', async () => {
  await withTestApp({ relay: CLOSED, mail_from: { require_domain: true }, dns: { servers: [`127.0.0.1:${dns.port}`], timeout: '1s' } }, async (app) => {
    assert.equal((await rcptReply(app, 'a@good.test')).reply, '250 2.1.5 Ok');
    assert.equal((await rcptReply(app, 'a@aonly.test')).reply, '250 2.1.5 Ok', 'an A record is enough');
    assert.equal((await rcptReply(app, '')).reply, '250 2.1.5 Ok', 'bounces must get through');
    assert.equal((await rcptReply(app, 'a@nullmx.test')).reply, '550 5.7.27 <a@nullmx.test>: Sender address rejected: nullmx.test does not send mail (null MX)');
    assert.equal((await rcptReply(app, 'a@nothing.test')).reply, '550 5.1.8 <a@nothing.test>: Sender address rejected: Domain not found');
    assert.equal((await rcptReply(app, 'a@broken.test')).reply, '451 4.1.8 <a@broken.test>: Sender address rejected: Domain not found (DNS lookup failed, try again later)');
    const slow = await rcptReply(app, 'a@slow.test');
    assert.equal(slow.reply, '451 4.1.8 <a@slow.test>: Sender address rejected: Domain not found (DNS lookup failed, try again later)');
    assert.ok(slow.ms < 1000 + 1500, `a DNS timeout holds the reply at most dns.timeout (+ slack): ${slow.ms} ms`);
  });
  await withTestApp({ relay: CLOSED, mail_from: { require_domain: true, action: 'tempfail' }, dns: { servers: [`127.0.0.1:${dns.port}`] } }, async (app) => {
    assert.match((await rcptReply(app, 'a@nothing.test')).reply, /^450 4\.1\.8 /);
  });
});

test('reverse DNS: rdns.require ptr / confirmed, "451 4.7.1 bad reverse DNS"', async () => {
  const cfg = (port: number, require: 'ptr' | 'confirmed') => ({ relay: CLOSED, rdns: { require }, dns: { servers: [`127.0.0.1:${port}`], timeout: '1s' } });
  await withTestApp(cfg(dns.port, 'confirmed'), async (app) => {
    assert.equal((await rcptReply(app, 'a@src.test')).reply, '250 2.1.5 Ok', '127.0.0.1 → client.example.test → 127.0.0.1');
  });
  await withTestApp(cfg(noPtr.port, 'ptr'), async (app) => {
    assert.equal((await rcptReply(app, 'a@src.test')).reply, '451 4.7.1 Client host [127.0.0.1] bad reverse DNS: no PTR record');
  });
  await withTestApp(cfg(badPtr.port, 'ptr'), async (app) => {
    assert.equal((await rcptReply(app, 'a@src.test')).reply, '250 2.1.5 Ok', 'a PTR is all that ptr asks for');
  });
  await withTestApp(cfg(badPtr.port, 'confirmed'), async (app) => {
    assert.equal((await rcptReply(app, 'a@src.test')).reply, '451 4.7.1 Client host [127.0.0.1] bad reverse DNS: liar.example.test does not point back to it');
  });
});
