// The policy without a socket (src/policy/offline.ts) over a real SQLite store wrapped read-only
// (src/store/read-only.ts): each step's checks and reply, the delayed refusal answered at RCPT,
// the tarpit reported and not waited, greylisting counted in memory only.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { configSchema, type ConfigInput } from '../config/schema.ts';
import { buildChecks } from './index.ts';
import { OfflineSession, senderAddress } from './offline.ts';
import { SqliteStore } from '../store/sqlite.ts';
import { ReadOnlyStore } from '../store/read-only.ts';
import type { Store } from '../store/store.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-offline-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
const log = pino({ level: 'silent' });
let n = 0;

function session(input: Partial<ConfigInput>, store?: Store, ip = '192.0.2.10') {
  const config = configSchema.parse({ hostname: 'mx.example.test', local_domains: ['example.test'], mail_from: { require_domain: false }, ...input });
  return new OfflineSession({ ip }, { config, checks: buildChecks(config, store, undefined, log), log, ...(store ? { store } : {}), greet: true });
}

test('a banned client: greeted, then refused at RCPT (smtp.delay_reject), each step naming its checks', async () => {
  const s = session({ ban: { ip: ['192.0.2.0/24'] } });
  const c = await s.connect();
  assert.equal(c.reply, '220 mx.example.test ESMTP mxguard');
  assert.equal(c.refused, false);
  assert.deepEqual(c.checks.map((e) => [e.check, e.verdict]), [['ban_ip', 'reject']]);
  assert.equal((await s.helo('client.example.org')).reply, '250 mx.example.test');
  assert.equal((await s.mail('a@sender.example')).reply, '250 2.1.0 Ok');
  const r = await s.rcpt('u@example.test');
  assert.equal(r.refused, true);
  assert.match(r.reply, /^554 5\.7\.1 /);
  assert.deepEqual(s.recipients, []);
});

test('without smtp.delay_reject a refusal at connect is the banner, and the connection closes', async () => {
  const s = session({ ban: { ip: ['192.0.2.0/24'] }, smtp: { delay_reject: false } });
  const c = await s.connect();
  assert.equal(c.refused, true);
  assert.equal(c.close, true);
  assert.equal(s.closed, true);
  assert.match(c.reply, /^554 5\.7\.1 /);
});

test('AUTH: an authenticated client is not greylisted, and its ban refusal from HELO is waived (afterAuth)', async () => {
  const file = path.join(dir, `state-${++n}.db`);
  const ro = new ReadOnlyStore(new SqliteStore(file));
  const s = session({ greylist: { when: 'always' }, helo: { reject_names: ['*.bad.example'] } }, ro);
  await s.connect();
  const h = await s.helo('x.bad.example');
  assert.equal(h.reply, '250 mx.example.test', 'held for RCPT');
  const a = await s.auth('alice');
  assert.equal(a.reply, '235 2.7.0 Authentication successful');
  assert.equal(s.info.authUser, 'alice');
  await s.mail('alice@example.test');
  const r = await s.rcpt('bob@example.test');
  assert.equal(r.reply, '250 2.1.5 Ok');
  await ro.close();
});

test('the greet delay and the tarpit are reported with their step, not waited', async () => {
  const s = session({ smtp: { greet_delay: '30s' }, limits: { tarpit_start: 1, tarpit_delay: '20s' } });
  const t0 = performance.now();
  const c = await s.connect();
  assert.ok(c.delayMs > 29_000 && c.delayMs <= 30_000, `greet delay ${c.delayMs}`);
  assert.ok(c.checks.some((e) => e.check === 'greet_delay'));
  await s.helo('client.example.org');
  await s.mail('a@sender.example');
  assert.equal((await s.rcpt('u1@example.test')).delayMs, 0);
  const second = await s.rcpt('u2@example.test');
  assert.equal(second.delayMs, 20_000);
  assert.equal(second.reply, '250 2.1.5 Ok');
  assert.ok(performance.now() - t0 < 5000, 'nothing waited');
  assert.equal(s.dataCommand().reply, '354 End data with <CR><LF>.<CR><LF>');
  const d = await s.data(Buffer.from('Subject: hi\r\n\r\nbody\r\n'));
  assert.equal(d.reply, '250 2.0.0 Ok: queued as EXPLAIN');
  assert.ok(d.headers.some((h) => h.startsWith('X-Spam-Score: 0.0')));
});

test('greylisting over a read-only store: 451 each time, nothing written to the file', async () => {
  const file = path.join(dir, `state-${++n}.db`);
  const real = new SqliteStore(file);
  await real.cacheSet('unrelated', 'kept', 60_000);
  const ro = new ReadOnlyStore(real);
  const grey = { greylist: { when: 'always' as const } };
  for (let i = 0; i < 2; i++) {
    const s = session(grey, ro);
    await s.connect();
    await s.helo('client.example.org');
    await s.mail('a@sender.example');
    const r = await s.rcpt('u@example.test');
    assert.match(r.reply, /^451 4\.7\.1 Greylisted/);
    assert.deepEqual(r.checks.map((e) => e.check).at(-1), 'greylist');
  }
  assert.ok(ro.writes.some((w) => w.op === 'cacheSet' && w.key.startsWith('grey:t:')), 'the write a real session makes is listed');
  assert.deepEqual((await real.cacheList('')).map((e) => e.key), ['unrelated'], 'nothing reached the file');
  await ro.close();
});

test('senderAddress: the null sender, with or without brackets; a bad address is an error text', () => {
  assert.equal((senderAddress('') as { address: string }).address, '');
  assert.equal((senderAddress('<>') as { address: string }).address, '');
  assert.equal((senderAddress('<A@B.Example>') as { address: string }).address, 'A@b.example');
  assert.equal(typeof senderAddress('no-domain'), 'string');
});
