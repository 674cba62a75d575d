// The queue manager's delivery counts (mxguard_delivery_attempts_total) against its log lines: a
// real spool in a temporary directory and a transport that answers as scripted (a recipient
// delivered, one refused for good, one deferred, one the transport says nothing about).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { defaultConfig } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import type { OutgoingMessage, RcptResult, Transport } from '../mail/transport.ts';
import { metrics, type DeliveryResult } from '../util/metrics.ts';
import { Forwarder } from './forwarder.ts';
import { Spool, newQueueId } from './spool.ts';

const RESULTS: Array<DeliveryResult> = ['delivered', 'bounced', 'expired', 'deferred'];

/** The delivery counts now, read from the metrics text. */
async function counts(): Promise<Record<DeliveryResult, number>> {
  const body = (await metrics.text()).body;
  const out = {} as Record<DeliveryResult, number>;
  for (const r of RESULTS) out[r] = Number(new RegExp(`^mxguard_delivery_attempts_total\\{result="${r}"\\} (\\S+)$`, 'm').exec(body)?.[1] ?? 0);
  return out;
}

/** One message to ok@, perm@, temp@ and silent@ through one attempt; the log lines and the counts it added. */
async function oneAttempt(t: import('node:test').TestContext, maxAge: number): Promise<{ logged: Record<DeliveryResult, number>; counted: Record<DeliveryResult, number> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-forwarder-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const spool = await Spool.open(path.join(dir, 'spool'));
  const base = defaultConfig(dir);
  const config: Config = { ...base, queue: { ...base.queue, max_age: maxAge, retry: [3_600_000] } };
  const transport: Transport = {
    name: 'scripted',
    deliver: async (msg: OutgoingMessage): Promise<RcptResult[]> =>
      msg.rcpts.flatMap((rcpt): RcptResult[] => {
        if (rcpt.startsWith('ok@')) return [{ rcpt, status: 'ok', code: 250, text: '2.0.0 Ok' }];
        if (rcpt.startsWith('perm@')) return [{ rcpt, status: 'perm', code: 550, text: '5.1.1 no such user' }];
        if (rcpt.startsWith('temp@')) return [{ rcpt, status: 'temp', code: 451, text: '4.3.0 try later' }];
        return []; // silent@: no result at all
      }),
    close: async () => undefined,
  };
  const lines: Array<{ msg: string }> = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as { msg: string }) });
  const forwarder = new Forwarder({ transport, spool, config, log });
  t.after(async () => {
    await forwarder.stop(1000);
    spool.close();
  });
  const before = await counts();
  const id = newQueueId();
  const w = spool.begin(id, Buffer.from('Received: x\r\n'));
  w.add([Buffer.from('Subject: counts\r\n\r\nhi\r\n')]);
  // The null sender: no bounce is queued (it would be delivered and counted too).
  forwarder.enqueue(await w.commit({ id, mailFrom: '', rcpts: ['ok@d.test', 'perm@d.test', 'temp@d.test', 'silent@d.test'], receivedAt: Date.now() - 1000, client: { ip: '192.0.2.1', tls: false } }));
  // The attempt is over when the message is gone (delivered, bounced, expired) or waits for its retry.
  const done = (): boolean => forwarder.queued === 0 || forwarder.stats().deferred.count === 1;
  for (let i = 0; i < 500 && !done(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(done(), JSON.stringify(lines));
  const after = await counts();
  const logged = {} as Record<DeliveryResult, number>;
  const counted = {} as Record<DeliveryResult, number>;
  for (const r of RESULTS) {
    logged[r] = lines.filter((l) => l.msg === r).length;
    counted[r] = after[r] - before[r];
  }
  return { logged, counted };
}

test('delivery counts: a recipient without a result is counted deferred, as it is logged', async (t) => {
  const { logged, counted } = await oneAttempt(t, 5 * 86_400_000);
  assert.deepEqual(logged, { delivered: 1, bounced: 1, expired: 0, deferred: 2 });
  assert.deepEqual(counted, logged);
});

test('delivery counts: on the attempt past queue.max_age the deferred recipients are counted expired, not deferred', async (t) => {
  const { logged, counted } = await oneAttempt(t, 1);
  assert.deepEqual(logged, { delivered: 1, bounced: 1, expired: 2, deferred: 0 });
  assert.deepEqual(counted, logged);
});
