// Relaying as DMail defines it: for each relay setting, a RCPT that it allows (with DMail's log
// line) and one it does not; mail to a local domain is always accepted. Plus the relayers table
// through the real `mxguard relay` CLI, and Redis going away in the middle of a session.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { withTestApp as withApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { startRedis } from './harness/peers.ts';
import { advanceClock, clock, resetClock } from '../src/util/clock.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');
// Loopback is not a relay network in these tests, so each rule has to earn its accept.
const CLOSED = { forward_from_ip: ['192.0.2.0/24'] };

/** Sends one MAIL FROM and RCPT TO; returns the RCPT reply. */
async function rcpt(app: TestApp, from: string, to: string): Promise<string> {
  const c = await RawClient.connect(app.port);
  try {
    await c.reply();
    c.send(`EHLO client.test\r\nMAIL FROM:<${from}>\r\nRCPT TO:<${to}>\r\n`);
    return (await c.replies(3))[2] as string;
  } finally {
    c.close();
  }
}

function logged(app: TestApp, to: string): string[] {
  return app.logs().filter((l) => l.rcpt === to && l.phase === 'rcpt').map((l) => String(l.msg));
}

test('DMail matrix: forward_from_ip', async () => {
  await withApp({ relay: { forward_from_ip: ['127.0.0.0/8'] } }, async (app) => {
    assert.equal(await rcpt(app, 'a@src.test', 'x@far.test'), '250 2.1.5 Ok');
    assert.deepEqual(logged(app, 'x@far.test'), ['Command RCPT OK (relaying allowed)']);
  });
  await withApp({ relay: CLOSED }, async (app) => {
    assert.equal(await rcpt(app, 'a@src.test', 'x@far.test'), '554 5.7.1 <x@far.test>: Relay access denied');
    assert.equal(await rcpt(app, 'a@src.test', 'local@example.test'), '250 2.1.5 Ok', 'local mail is always accepted');
  });
});

test('DMail matrix: relay_to', async () => {
  await withApp({ relay: { ...CLOSED, relay_to: ['partner.test'] } }, async (app) => {
    assert.equal(await rcpt(app, 'a@src.test', 'x@partner.test'), '250 2.1.5 Ok');
    assert.deepEqual(logged(app, 'x@partner.test'), ['Command RCPT OK (relay_to allowed)']);
    assert.equal(await rcpt(app, 'a@src.test', 'x@other.test'), '554 5.7.1 <x@other.test>: Relay access denied');
  });
});

test('DMail matrix: forward_from', async () => {
  await withApp({ relay: { ...CLOSED, forward_from: ['trusted.test'] } }, async (app) => {
    assert.equal(await rcpt(app, 'boss@trusted.test', 'x@far.test'), '250 2.1.5 Ok');
    assert.deepEqual(logged(app, 'x@far.test'), ['Command RCPT OK (forward_from allowed)']);
    assert.equal(await rcpt(app, 'boss@untrusted.test', 'y@far.test'), '554 5.7.1 <y@far.test>: Relay access denied');
  });
});

test('DMail matrix: forward_user (POP-before-SMTP) within forward_window and not after', async (t) => {
  t.after(() => resetClock());
  await withApp({ relay: { ...CLOSED, forward_user: true, forward_window: '1m' } }, async (app) => {
    assert.equal(await rcpt(app, 'a@src.test', 'x@far.test'), '554 5.7.1 <x@far.test>: Relay access denied', 'no login yet');
    const { openStore } = await import('../src/store/index.ts');
    const store = await openStore(app.config);
    try {
      await store.relayerAdd('127.0.0.1', Math.floor(clock.now() / 1000), 3_600_000);
      assert.equal(await rcpt(app, 'a@src.test', 'y@far.test'), '250 2.1.5 Ok');
      assert.deepEqual(logged(app, 'y@far.test'), ['(127.0.0.1) is recent']);
      // mxguard runs in this process: moving util/clock.ts moves its clock, no sleeping.
      advanceClock(45_000);
      assert.equal(await rcpt(app, 'a@src.test', 'w@far.test'), '250 2.1.5 Ok', 'still within the window');
      advanceClock(20_000);
      assert.equal(await rcpt(app, 'a@src.test', 'z@far.test'), '554 5.7.1 <z@far.test>: Relay access denied', 'the window has passed');
      assert.notEqual(await store.relayerGet('127.0.0.1'), undefined, 'the entry is kept; only the window is over');
    } finally {
      await store.close();
    }
  });
});

test('mxguard relay: add, list, dump, expire, delete, and output that re-imports', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-relay-'));
  try {
    const cfg = path.join(dir, 'mxguard.yaml');
    fs.writeFileSync(cfg, stringify({ data_dir: path.join(dir, 'var'), relay: { forward_window: '10m' } }));
    const run = (...args: string[]) =>
      new Promise<{ code: number; out: string; err: string }>((resolve) =>
        execFile(process.execPath, [MAIN, 'relay', '-c', cfg, ...args], (e, out, err) => resolve({ code: e ? 1 : 0, out, err })),
      );
    const now = Math.floor(Date.now() / 1000);
    assert.equal((await run('add', '192.0.2.1')).code, 0);
    await run('add', '192.0.2.2', String(now - 3600)); // an hour old: "old" (window 10m)
    await run('add', '2001:db8::7', String(now + 86_400)); // future-dated
    const dump = (await run('dump')).out.trim().split('\n');
    assert.equal(dump.length, 3);
    assert.match(dump[0] as string, new RegExp(`^192\\.0\\.2\\.1 (${now}|${now + 1})$`));
    assert.equal(dump[1], `192.0.2.2 ${now - 3600}`);
    assert.equal(dump[2], `2001:db8::7 ${now + 86_400}`);
    assert.equal((await run('list')).out.trim(), `192.0.2.2 ${now - 3600}`, 'list shows the old entries only');
    assert.equal((await run('list', '120')).out.trim(), '', 'none older than 120 minutes');
    fs.writeFileSync(path.join(dir, 'saved.txt'), (await run('dump')).out);
    await run('expire');
    assert.deepEqual((await run('dump')).out.trim().split('\n').map((l) => l.split(' ')[0]), ['192.0.2.1', '2001:db8::7'], 'expire keeps new and future entries');
    await run('delete', '192.0.2.1', '2001:db8::7');
    assert.equal((await run('dump')).out.trim(), '');
    assert.match((await run('load', path.join(dir, 'saved.txt'))).out, /loaded 3 entries/);
    assert.deepEqual((await run('dump')).out.trim().split('\n'), dump, 'the dump re-imports as it was');
    const bad = await run('add', '999.1.1.1');
    assert.equal(bad.code, 1);
    assert.match(bad.err, /not an IP address/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('Redis stops mid-session: the RCPT that needs it gets 451 4.3.0, then everything recovers', async () => {
  let redis = await startRedis();
  try {
    await withApp({ relay: { ...CLOSED, forward_user: true }, store: { backend: 'redis', redis_url: redis.url } }, async (app) => {
      const c = await RawClient.connect(app.port);
      await c.reply();
      c.send('EHLO client.test\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<x@far.test>\r\n');
      assert.equal((await c.replies(3))[2], '554 5.7.1 <x@far.test>: Relay access denied');
      const port = redis.port;
      await redis.stop();
      c.send('RCPT TO:<y@far.test>\r\n');
      assert.equal(await c.reply(5000), '451 4.3.0 Temporary local problem, try again later');
      c.send('RCPT TO:<local@example.test>\r\n');
      assert.equal(await c.reply(), '250 2.1.5 Ok', 'local mail does not need the store');
      redis = await startRedis({ port });
      const { RedisStore } = await import('../src/store/redis.ts');
      const direct = await RedisStore.open(redis.url);
      await direct.relayerAdd('127.0.0.1', Math.floor(Date.now() / 1000), 60_000);
      await direct.close();
      let reply = '';
      for (let i = 0; i < 15 && reply !== '250 2.1.5 Ok'; i++) { // 451s count against limits.max_errors (20)
        c.send('RCPT TO:<z@far.test>\r\n');
        reply = await c.reply(5000);
        if (reply !== '250 2.1.5 Ok') await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(reply, '250 2.1.5 Ok', 'relaying works again once Redis is back');
      c.send('QUIT\r\n');
      assert.match(await c.reply(), /^221 /);
      c.close();
    });
  } finally {
    await redis.stop();
  }
});

test('store.fail_open: with Redis away, POP-before-SMTP cannot grant, so the RCPT is refused (554), never relayed', async () => {
  const redis = await startRedis();
  const url = redis.url;
  await redis.stop(); // the store is unreachable from the start
  await withApp({ relay: { ...CLOSED, forward_user: true }, store: { backend: 'redis', redis_url: url, fail_open: true } }, async (app) => {
    assert.equal(await rcpt(app, 'a@src.test', 'x@far.test'), '554 5.7.1 <x@far.test>: Relay access denied');
    assert.equal(await rcpt(app, 'a@src.test', 'local@example.test'), '250 2.1.5 Ok');
  });
});
