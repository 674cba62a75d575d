// Issue 9 item 14: with a DNS server that never answers (a real UDP socket on loopback that reads
// every query and drops it), each reply waits at most one dns.timeout per phase, however many
// DNS checks the phase has: rdns and dnsbl at connect, rhsbl_helo at HELO, rhsbl_sender and
// sender_domain at MAIL. Before, the checks of a phase asked one after the other: two timeouts at
// connect and two at MAIL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { withTestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { startUdpStub } from './harness/dns.ts';

const TIMEOUT_MS = 2000;
// Slack for a loaded 2-core machine; still less than a second timeout, which the old code added.
const MARGIN_MS = 1200;

test('black-holed DNS server: banner, EHLO, MAIL and RCPT each within one dns.timeout', { timeout: 60_000 }, async (t) => {
  const blackhole = await startUdpStub('blackhole');
  try {
    await withTestApp(
      {
        relay: { forward_from_ip: ['192.0.2.0/24'] }, // loopback is not a relay client: every check runs
        dns: { servers: [`127.0.0.1:${blackhole.port}`], timeout: `${TIMEOUT_MS}ms` },
        rdns: { require: 'confirmed' },
        dnsbl: { zones: [{ zone: 'bl.example.test' }, { zone: 'bl2.example.test' }], rhsbl_helo: [{ zone: 'rhs.example.test' }], rhsbl_sender: [{ zone: 'rhs.example.test' }] },
        mail_from: { require_domain: true },
      },
      async (app) => {
        const times: Record<string, number> = {};
        let t0 = performance.now();
        const c = await RawClient.connect(app.port);
        try {
          const banner = await c.reply(15_000);
          times.banner = performance.now() - t0;
          assert.match(banner, /^220 /);
          const step = async (name: string, line: string): Promise<string> => {
            t0 = performance.now();
            c.send(`${line}\r\n`);
            const r = await c.reply(15_000);
            times[name] = performance.now() - t0;
            return r.split('\n').at(-1) as string;
          };
          assert.match(await step('ehlo', 'EHLO client.example.test'), /^250 /);
          assert.match(await step('mail', 'MAIL FROM:<alice@sender.example.test>'), /^250 /);
          // The connect phase's DNS trouble (reverse DNS) is answered at RCPT (smtp.delay_reject).
          assert.match(await step('rcpt', 'RCPT TO:<u@example.test>'), /^451 4\.7\.1 Client host \[127\.0\.0\.1\] bad reverse DNS: lookup failed/);
          c.send('QUIT\r\n');
        } finally {
          c.close();
        }
        t.diagnostic(`dns.timeout ${TIMEOUT_MS} ms; reply times (ms): ${Object.entries(times).map(([k, v]) => `${k} ${Math.round(v)}`).join(', ')}; queries dropped by the black hole: ${blackhole.received()}`);
        for (const [k, v] of Object.entries(times)) assert.ok(v <= TIMEOUT_MS + MARGIN_MS, `${k} took ${Math.round(v)} ms, more than one dns.timeout (${TIMEOUT_MS} ms) + ${MARGIN_MS} ms`);
        // Every check asked: PTR, two DNSBLs, the HELO RHSBL, the sender RHSBL, the sender's MX.
        assert.ok(blackhole.received() >= 6, `only ${blackhole.received()} queries reached the server`);
        const failed = app.logs().filter((l) => String(l.msg).startsWith('dns lookup failed'));
        assert.ok(failed.length >= 6, `dns lookup failed lines: ${failed.length}`);
      },
    );
  } finally {
    await blackhole.stop();
  }
});
