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

test('the session\'s own SMTP replies are no refusals: DATA asked first (a permit_mynetworks client), addresses Postfix took and mxguard\'s parser does not', async () => {
  // smtpd_recipient_restrictions = permit_mynetworks, …, check_policy_service and the same in smtpd_data_restrictions: DATA is the first request, no recipient seen.
  const t = base('d.1', '192.0.2.60');
  const [data, eom] = await ask({ ...t, protocol_state: 'DATA', recipient: 'a@example.test' }, { ...t, protocol_state: 'END-OF-MESSAGE', recipient: '', size: '100' });
  assert.match(data as string, /^(DUNNO|PREPEND .*)$/, 'not "554 5.5.1 Error: no valid recipients"');
  assert.equal(eom, 'DUNNO');
  const odd = { ...base('d.2', '192.0.2.61'), sender: 'a..b@sender.example' };
  assert.deepEqual(await ask({ ...odd, protocol_state: 'RCPT', recipient: 'a@example.test' }, { ...odd, protocol_state: 'RCPT', recipient: 'b@example.test' }), ['DUNNO', 'DUNNO'], 'not 553 on every RCPT');
  const [badRcpt] = await ask({ ...base('d.3', '192.0.2.62'), protocol_state: 'RCPT', recipient: 'x..y@example.test' });
  assert.match(badRcpt as string, /^(DUNNO|PREPEND .*)$/, 'not 501');
});

test('at DATA only a refusal held for DATA is answered, not one held for RCPT (a sender ban seen first at DATA)', async () => {
  // The ban is a RCPT refusal (delay_reject): Postfix let the recipients through without asking, so DATA is not the place.
  service.reload(configSchema.parse({ hostname: 'mx.example.test', local_domains: ['example.test'], mail_from: { require_domain: false }, policy: { listen: '127.0.0.1:0' }, ban: { mailfrom: ['*@banned.example'] } }));
  try {
    const t = { ...base('d.4', '192.0.2.63'), sender: 'x@banned.example' };
    const [data] = await ask({ ...t, protocol_state: 'DATA', recipient: 'a@example.test' });
    assert.match(data as string, /^(DUNNO|PREPEND .*)$/);
  } finally {
    service.reload(configSchema.parse({ hostname: 'mx.example.test', local_domains: ['example.test', 'grey.test'], mail_from: { require_domain: false }, policy: { listen: '127.0.0.1:0' }, greylist: { when: 'always', allow_recipients: ['*@example.test'] } }));
  }
});

test('greylisting the null sender without smtpd_data_restrictions: answered at END-OF-MESSAGE (a 4xx), the message not counted as queued', async () => {
  const t = { ...base('n.2', '198.51.100.31'), sender: '' };
  const answers = await ask({ ...t, protocol_state: 'RCPT', recipient: 'y@grey.test' }, { ...t, protocol_state: 'END-OF-MESSAGE', recipient: '', size: '500' });
  assert.match(answers[0] as string, /^(DUNNO|PREPEND .*)$/, 'not greylisted at RCPT');
  assert.match(answers[1] as string, /^4\d\d 4\.\d\.\d+ Greylisted, please try again in \d+ seconds$/);
  const trace = traces.find((x) => x.sid === 'pf-n.2');
  assert.ok(trace !== undefined && trace.outcome !== 'accepted', JSON.stringify(trace?.outcome));
});

test('policy.idle_timeout must be longer than policy.max_delay', () => {
  const r = configSchema.safeParse({ policy: { listen: '127.0.0.1:0', max_delay: '90s', idle_timeout: '60s' } });
  assert.equal(r.success, false);
  assert.match(JSON.stringify(r.error?.issues), /idle_timeout.*must be longer than policy\.max_delay/);
  assert.equal(configSchema.safeParse({ policy: { max_delay: '10s', idle_timeout: '11s' } }).success, true);
});

/** A service of its own (connection limits, close) on the shared store. */
async function ownService(t: { after: (fn: () => Promise<void>) => void }, extra: Record<string, unknown> = {}, opts: { maxConnections?: number; traces?: TransactionTrace[] } = {}): Promise<PolicyService> {
  const config = configSchema.parse({ hostname: 'mx.example.test', local_domains: ['example.test'], mail_from: { require_domain: false }, policy: { listen: '127.0.0.1:0' }, ...extra });
  const s = await startPolicyService({ config, log: pino({ level: 'silent' }), store, ...(opts.maxConnections !== undefined ? { maxConnections: opts.maxConnections } : {}), onTrace: (x) => opts.traces?.push(x) });
  t.after(() => s.close());
  return s;
}

function connect(port: number, allowHalfOpen = false): Promise<net.Socket> {
  const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen });
  s.on('error', () => undefined);
  return new Promise((resolve, reject) => s.once('connect', () => resolve(s)).once('error', reject));
}

const waitFor = async (cond: () => boolean, ms: number): Promise<boolean> => {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 20))) if (cond()) return true;
  return cond();
};

test('a client that sends and never reads: reading stops (bounded memory), the connection stays and is answered in order', async (t) => {
  const s2 = await ownService(t);
  const c = await connect(s2.port);
  t.after(() => c.destroy());
  // About Postfix's size each; the answer (the deferral for an unknown request) is 57 octets.
  const request = `request=other\npad=${'p'.repeat(1080)}\n\n`;
  let sent = 0;
  let stalled = false;
  while (sent < 400e6) {
    if (!c.write(request)) {
      const drained = await Promise.race([new Promise<boolean>((r) => c.once('drain', () => r(true))), new Promise<boolean>((r) => setTimeout(() => r(false), 1000))]);
      if (!drained) {
        stalled = true;
        break;
      }
    }
    sent += request.length;
  }
  assert.ok(stalled, `the service kept reading ${Math.round(sent / 1e6)} MB without its answers being read`);
  assert.equal(c.destroyed, false);
  assert.equal(s2.connections, 1);
  const first = await new Promise<string>((r) => c.once('data', (d: Buffer) => r(d.toString('utf8'))));
  assert.ok(first.startsWith('action=DEFER_IF_PERMIT Service temporarily unavailable\n\naction=DEFER_IF_PERMIT'), first.slice(0, 100));
});

test('a request over 64 KiB in all is refused and closed; after a protocol error the connection is dropped even if the client keeps it open', async (t) => {
  const s2 = await ownService(t);
  const c = await connect(s2.port, true);
  t.after(() => c.destroy());
  let out = '';
  let ended = false;
  c.on('data', (d: Buffer) => (out += d.toString('utf8')));
  c.on('end', () => (ended = true));
  for (let i = 0; i < 10; i++) c.write(`a${i}=${'x'.repeat(8000)}\n`);
  assert.ok(await waitFor(() => ended, 5000), 'the service ends its side');
  assert.equal(out, 'action=DEFER_IF_PERMIT Service temporarily unavailable\n\n');
  assert.equal(s2.connections, 1, 'the client has not closed its side');
  assert.ok(await waitFor(() => s2.connections === 0, 5000), 'dropped shortly after');
});

test('at the connection limit the longest idle connection is dropped for the new one', async (t) => {
  const s2 = await ownService(t, {}, { maxConnections: 2 });
  const ping = async (c: net.Socket): Promise<string> => {
    const answer = new Promise<string>((r) => c.once('data', (d: Buffer) => r(d.toString('utf8'))));
    c.write('request=other\n\n');
    return answer;
  };
  const c1 = await connect(s2.port);
  const c2 = await connect(s2.port);
  t.after(() => [c1, c2].forEach((c) => c.destroy()));
  await ping(c1);
  await ping(c2);
  await ping(c1); // c2 is now the longest idle
  let c2closed = false;
  c2.on('close', () => (c2closed = true));
  const c3 = await connect(s2.port);
  t.after(() => c3.destroy());
  assert.equal(await ping(c3), 'action=DEFER_IF_PERMIT Service temporarily unavailable\n\n');
  assert.ok(await waitFor(() => c2closed, 3000), 'the longest idle one went');
  assert.equal(await ping(c1), 'action=DEFER_IF_PERMIT Service temporarily unavailable\n\n', 'the other still served');
});

test('close() ends the open transactions (counted, traced) before it resolves, and does not wait out the tarpit', async (t) => {
  const own: TransactionTrace[] = [];
  const s2 = await ownService(t, { policy: { listen: '127.0.0.1:0', max_delay: '30s', idle_timeout: '60s' }, limits: { tarpit_start: 1, tarpit_delay: '20s' } }, { traces: own });
  const t0 = base('c.1', '192.0.2.70');
  const c = await connect(s2.port);
  t.after(() => c.destroy());
  const answers: string[] = [];
  c.on('data', (d: Buffer) => answers.push(d.toString('utf8')));
  c.write(req({ ...t0, protocol_state: 'RCPT', recipient: 'a@example.test' }));
  assert.ok(await waitFor(() => answers.length === 1, 5000), 'the first recipient is answered at once');
  c.write(req({ ...t0, protocol_state: 'RCPT', recipient: 'b@example.test' })); // tarpitted 20 s
  await new Promise((r) => setTimeout(r, 300));
  const start = performance.now();
  await s2.close();
  assert.ok(performance.now() - start < 5000, 'the tarpit let go');
  const trace = own.find((x) => x.sid === 'pf-c.1');
  assert.equal(trace?.outcome, 'accepted', 'ended before close() resolved');
  assert.deepEqual(trace?.rcpts, ['a@example.test', 'b@example.test']);
});

function req(attrs: Record<string, string>): string {
  return `${Object.entries({ request: 'smtpd_access_policy', ...attrs }).map(([k, v]) => `${k}=${v}`).join('\n')}\n\n`;
}
