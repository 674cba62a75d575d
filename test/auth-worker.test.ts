// The dmarc check's worker thread (src/policy/auth/pool.ts): it verifies off the event loop; an
// aborted request gives up at once; a worker that dies fails the messages it had (the check's
// on_error: accept lets them go on) and the next message starts a new one. The DNS server is a
// real UDP socket that never answers, so a request stays pending as long as the test needs.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { authWorker } from '../src/policy/auth/pool.ts';
import { DnsResolver } from '../src/dns/resolver.ts';
import { startUdpStub, type UdpStub } from './harness/dns.ts';

let blackhole: UdpStub;
before(async () => {
  blackhole = await startUdpStub('blackhole');
});
after(async () => {
  await blackhole?.stop();
});

/** A message in a buffer of its own, as the dmarc check hands it over (run() transfers it). */
const message = (): Buffer => {
  const text = Buffer.from('From: <a@example.test>\r\nSubject: x\r\n\r\nhello\r\n');
  const own = Buffer.allocUnsafeSlow(text.length);
  text.copy(own);
  return own;
};
const input = { ip: '192.0.2.1', minKeyBits: 1024 };

test('the worker verifies; an aborted request gives up at once; a worker that dies fails what it had and a new one takes the next', { timeout: 30_000 }, async () => {
  const dns = new DnsResolver({ servers: [`127.0.0.1:${blackhole.port}`], timeoutMs: 2000 });
  const fast = new DnsResolver({ servers: [`127.0.0.1:${blackhole.port}`], timeoutMs: 50 });
  const w = authWorker();
  const first = await w.run(message(), input, fast, new AbortController().signal);
  assert.equal(first.dkim?.[0]?.result, 'none');
  assert.match(first.dmarc?.info ?? 'dmarc=temperror', /dmarc=(temperror|none)/);

  const abort = new AbortController();
  const t0 = performance.now();
  const aborted = w.run(message(), input, dns, abort.signal);
  setTimeout(() => abort.abort(), 50);
  await assert.rejects(aborted, /aborted/);
  assert.ok(performance.now() - t0 < 1500, 'did not wait for the DNS deadline');

  const pending = w.run(message(), input, dns, new AbortController().signal);
  await new Promise((r) => setTimeout(r, 100)); // it is waiting for DNS now
  await (w as unknown as { worker: { terminate(): Promise<number> } }).worker.terminate();
  await assert.rejects(pending, /DKIM\/DMARC worker exited/);

  const again = await w.run(message(), input, fast, new AbortController().signal);
  assert.equal(again.dkim?.[0]?.result, 'none', 'a new worker started');
  assert.equal(authWorker(), w, 'one per process');
});
