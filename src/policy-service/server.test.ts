// The policy service (src/policy-service/server.ts) on loopback with a real SQLite store, driven
// as Postfix drives it: one transaction per `instance`, PREPEND each header once, END-OF-MESSAGE
// counting the message, greylisting the null sender answered at DATA, the store really written.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { configSchema } from '../config/schema.ts';
import { SqliteStore } from '../store/sqlite.ts';
import { startPolicyService, type PolicyService } from './server.ts';
import type { TransactionTrace } from '../policy/trace.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-policy-service-'));
let store: SqliteStore;
let service: PolicyService;
const traces: TransactionTrace[] = [];

before(async () => {
  store = new SqliteStore(path.join(dir, 'state.db'));
  const config = configSchema.parse({
    hostname: 'mx.example.test',
    local_domains: ['example.test', 'grey.test'],
    mail_from: { require_domain: false },
    policy: { listen: '127.0.0.1:0' },
    greylist: { when: 'always', allow_recipients: ['*@example.test'] },
    limits: { rates: [{ name: 'msgs', key: 'client_ip', count: 'messages', max: 1, per: '1h', action: 'reject' }] },
  });
  service = await startPolicyService({ config, log: pino({ level: 'silent' }), store, onTrace: (t) => traces.push(t) });
});

after(async () => {
  await service?.close();
  await store?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Sends the requests on one connection, one at a time as Postfix does; the actions answered. */
async function ask(...requests: Array<Record<string, string>>): Promise<string[]> {
  const s = net.connect(service.port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => s.once('connect', resolve).once('error', reject));
  let buf = '';
  const answers: string[] = [];
  try {
    for (const r of requests) {
      s.write(`${Object.entries({ request: 'smtpd_access_policy', ...r }).map(([k, v]) => `${k}=${v}`).join('\n')}\n\n`);
      while (!buf.includes('\n\n')) {
        const chunk = await new Promise<string>((resolve, reject) => {
          s.once('data', (d: Buffer) => resolve(d.toString('utf8')));
          s.once('close', () => reject(new Error(`closed; got ${JSON.stringify(buf)}`)));
        });
        buf += chunk;
      }
      const end = buf.indexOf('\n\n');
      answers.push(buf.slice(0, end).replace(/^action=/, ''));
      buf = buf.slice(end + 2);
    }
  } finally {
    s.destroy();
  }
  return answers;
}

const base = (instance: string, ip: string) => ({ client_address: ip, client_name: 'unknown', helo_name: 'mail.sender.example', sender: 's@sender.example', instance });

test('one transaction per instance: each header PREPENDed once, then DUNNO; END-OF-MESSAGE counts the message', async () => {
  const ip = '192.0.2.20';
  const t = base('i.1', ip);
  const answers = await ask(
    { ...t, protocol_state: 'RCPT', recipient: 'a@example.test' },
    { ...t, protocol_state: 'RCPT', recipient: 'b@example.test' },
    { ...t, protocol_state: 'RCPT', recipient: 'c@example.test' },
    { ...t, protocol_state: 'END-OF-MESSAGE', recipient: '', size: '1234' },
  );
  assert.deepEqual(answers, ['PREPEND X-Spam-Status: No, score=0.0 required=5.0 tests=none', 'PREPEND X-Spam-Score: 0.0', 'DUNNO', 'DUNNO']);
  const trace = traces.find((x) => x.sid === 'pf-i.1');
  assert.deepEqual(trace?.rcpts, ['a@example.test', 'b@example.test', 'c@example.test'], 'three recipients, one transaction');
  assert.equal(trace?.outcome, 'accepted');
  // limits.rates msgs: 1 message per client an hour, and that one was counted once.
  const [next] = await ask({ ...base('i.2', ip), protocol_state: 'RCPT', recipient: 'a@example.test' });
  assert.match(next as string, /^550 5\.7\.1 Rate limit msgs reached/);
  const [other] = await ask({ ...base('i.3', '192.0.2.21'), protocol_state: 'RCPT', recipient: 'a@example.test' });
  assert.match(other as string, /^PREPEND /, 'another client is not limited');
});

test('greylisting the null sender is answered at DATA (callouts get their RCPT answer); the triplet is written to the store', async () => {
  const t = { ...base('n.1', '198.51.100.30'), sender: '' };
  const answers = await ask({ ...t, protocol_state: 'RCPT', recipient: 'x@grey.test' }, { ...t, protocol_state: 'DATA', recipient: '' });
  assert.match(answers[0] as string, /^(DUNNO|PREPEND .*)$/, 'not greylisted at RCPT');
  assert.match(answers[1] as string, /^DEFER_IF_PERMIT Greylisted, please try again in \d+ seconds$/);
  assert.ok((await store.cacheList('grey:t:198.51.100.0/24')).length === 1, 'the greylisting record is real');
});

test('VRFY and ETRN are not judged; a request that is not smtpd_access_policy is deferred', async () => {
  assert.deepEqual(await ask({ ...base('v.1', '192.0.2.40'), protocol_state: 'VRFY', recipient: 'a@example.test' }), ['DUNNO']);
  assert.deepEqual(await ask({ request: 'something_else', protocol_state: 'RCPT' }), ['DEFER_IF_PERMIT Service temporarily unavailable']);
});

test('reload: transactions that begin afterwards follow the new config', async () => {
  const t = base('r.1', '192.0.2.50');
  assert.match((await ask({ ...t, protocol_state: 'RCPT', recipient: 'a@example.test' }))[0] as string, /^PREPEND /);
  service.reload(configSchema.parse({ hostname: 'mx.example.test', local_domains: ['example.test'], mail_from: { require_domain: false }, policy: { listen: '127.0.0.1:0' }, ban: { mailfrom: ['*@sender.example'] } }));
  const [banned] = await ask({ ...base('r.2', '192.0.2.50'), protocol_state: 'RCPT', recipient: 'a@example.test' });
  assert.match(banned as string, /^550 5\.7\.1 <s@sender\.example>: Sender address rejected/);
});
