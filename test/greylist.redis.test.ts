// Two mxguard processes on one real redis-server share greylisting and volume limits (issue 11,
// Must show 3): a triplet greylisted by one passes on its retry to the other, a network one of
// them auto-allowed is allowed on the other, and limits.fromip_max counts the messages of both.
// Real processes, real time (Redis expires on its own clock): the delay is 2 s.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { freePort, makeTempDir, sleep, startRedis, waitUntil, type RedisPeer } from './harness/peers.ts';
import { startMxguard, type MxguardProcess } from './harness/mxguard-process.ts';
import { RawClient } from './harness/smtp-talk.ts';

const LIMIT = { timeout: 60_000 };
let redis: RedisPeer;
const hosts: Array<{ mx: MxguardProcess; dir: string }> = [];

before(async () => {
  redis = await startRedis();
  for (let i = 0; i < 2; i++) {
    const dir = await makeTempDir(`mx-grey-${i}`);
    const mx = await startMxguard(
      dir,
      {
        hostname: `mx${i}.example.test`,
        local_domains: ['example.test'],
        data_dir: path.join(dir, 'var'),
        mail_from: { require_domain: false },
        relay: { forward_from_ip: ['192.0.2.0/24'] },
        store: { backend: 'redis', redis_url: `redis://127.0.0.1:${redis.port}`, redis_prefix: 'mxg-test:' },
        greylist: { when: 'always', delay: '2s', auto_allow: 2, allow_clients: ['127.8.0.0/16'] },
        limits: { fromip_max: 4, fromip_nolimit: [] },
      },
      await freePort(),
    );
    hosts.push({ mx, dir });
  }
});

after(async () => {
  for (const h of hosts) await h.mx.stop();
  await redis?.stop();
  for (const h of hosts) fs.rmSync(h.dir, { recursive: true, force: true });
});

async function send(mx: MxguardProcess, ip: string, from: string, to: string): Promise<{ rcpt: string; data?: string }> {
  const c = await RawClient.connect(mx.port, '127.0.0.1', ip);
  try {
    await c.reply();
    c.send('EHLO client.example.org\r\n');
    await c.reply();
    c.send(`MAIL FROM:<${from}>\r\n`);
    await c.reply();
    c.send(`RCPT TO:<${to}>\r\n`);
    const rcpt = await c.reply();
    if (!rcpt.startsWith('250')) return { rcpt };
    c.send('DATA\r\n');
    await c.reply();
    c.send(`Subject: shared\r\n\r\nhello\r\n.\r\n`);
    const data = await c.reply();
    c.send('QUIT\r\n');
    return { rcpt, data };
  } finally {
    c.close();
  }
}

function delivered(dir: string, local: string): string[] {
  const d = path.join(dir, 'var', 'maildir', local, 'new');
  return fs.existsSync(d) ? fs.readdirSync(d).map((f) => fs.readFileSync(path.join(d, f), 'latin1')) : [];
}

test('a triplet greylisted by one mxguard passes on its retry to the other; an auto-allowed network is allowed on both', LIMIT, async () => {
  const [a, b] = hosts as [{ mx: MxguardProcess; dir: string }, { mx: MxguardProcess; dir: string }];
  assert.match((await send(a.mx, '127.7.0.1', 'one@s.example', 'bob@example.test')).rcpt, /^451 4\.7\.1 Greylisted, please try again in 2 seconds$/);
  assert.match((await send(b.mx, '127.7.0.1', 'one@s.example', 'bob@example.test')).rcpt, /^451 4\.7\.1 Greylisted, please try again in [12] seconds$/, 'the other host knows the first attempt');
  assert.match((await send(b.mx, '127.7.0.1', 'two@s.example', 'bob@example.test')).rcpt, /^451/);
  await sleep(2100);
  const retry = await send(b.mx, '127.7.0.1', 'one@s.example', 'bob@example.test');
  assert.equal(retry.rcpt, '250 2.1.5 Ok');
  assert.match(retry.data ?? '', /^250 2\.0\.0 Ok: queued/);
  assert.ok(await waitUntil(() => delivered(b.dir, 'bob').length === 1, 10_000));
  assert.match(delivered(b.dir, 'bob')[0] as string, /\nX-Greylist: delayed [23] seconds by mxguard\r?\n/);
  // The second pass, on the first host, makes two: the network is allowed, on both hosts.
  assert.equal((await send(a.mx, '127.7.0.1', 'two@s.example', 'bob@example.test')).rcpt, '250 2.1.5 Ok');
  assert.equal((await send(b.mx, '127.7.0.200', 'three@s.example', 'carol@example.test')).rcpt, '250 2.1.5 Ok', 'auto-allowed on the other host');
  assert.match((await send(b.mx, '127.7.1.1', 'three@s.example', 'carol@example.test')).rcpt, /^451/, 'another network is not');
});

test('limits.fromip_max counts the messages one client sent through both mxguard processes', LIMIT, async () => {
  const [a, b] = hosts as [{ mx: MxguardProcess; dir: string }, { mx: MxguardProcess; dir: string }];
  const ip = '127.8.0.1'; // greylist.allow_clients: only the rate limit applies
  for (const [i, h] of [a, a, b, b].entries()) assert.match((await send(h.mx, ip, `n${i}@s.example`, 'dave@example.test')).data ?? '', /^250 2\.0\.0 Ok: queued/, `message ${i + 1}`);
  for (const h of [a, b]) {
    const over = await send(h.mx, ip, 'n5@s.example', 'dave@example.test');
    assert.equal(over.rcpt, '451 4.7.1 Rate limit fromip_max reached (4 messages per 1h per client address), try again in 3600 seconds', 'the fifth, on either host');
  }
  assert.match((await send(b.mx, '127.8.0.2', 'x@s.example', 'dave@example.test')).data ?? '', /^250 2\.0\.0 Ok: queued/, 'another address has its own count');
});
