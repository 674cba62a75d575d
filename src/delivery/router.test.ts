import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRouter } from './router.ts';
import { routeTable } from './routes.ts';
import type { OutgoingMessage, RcptResult, Transport } from '../mail/transport.ts';

const message = (rcpts: string[]): OutgoingMessage => ({ id: 'Q1', mailFrom: 'a@example.com', rcpts, body: { size: 0, async *chunks() {} } });

test('a route whose transport cannot be made (or throws) defers its own recipients only; the others keep their results', async () => {
  const delivered: string[] = [];
  const ok: Transport = {
    name: 'ok',
    async deliver(msg) {
      delivered.push(...msg.rcpts);
      return msg.rcpts.map((rcpt): RcptResult => ({ rcpt, status: 'ok', code: 250, text: '2.0.0 Ok' }));
    },
    close: async () => undefined,
  };
  const table = routeTable({ routes: { 'broken.test': 'smtp://broken:25', 'throws.test': 'lmtp://throws:24' }, localDomains: ['example.com'], deliver: 'maildir:/m' });
  const router = createRouter(table, (target) => {
    if (target === 'smtp://broken:25') throw new Error('cannot make it');
    if (target === 'lmtp://throws:24') return { ...ok, name: target, deliver: async () => Promise.reject(new Error('boom')) };
    return ok;
  });
  const rs = await router.deliver(message(['x@broken.test', 'alice@example.com', 'y@throws.test']));
  assert.deepEqual(rs.map((r) => `${r.rcpt} ${r.status} ${r.relay}`), ['x@broken.test temp smtp://broken:25', 'alice@example.com ok ok', 'y@throws.test temp lmtp://throws:24']);
  assert.deepEqual(delivered, ['alice@example.com'], 'delivered once: a retry of the others will not send it again');
});
