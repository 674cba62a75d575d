// Greylisting through real SMTP sessions (issue 11, Must show 1: the delay window, expiry and
// auto-allow on an injected clock). mxguard runs in this process on the SQLite store; time moves
// by util/clock.ts (advanceClock), which the store's expiry and the greylisting decision both
// read. Clients appear from different networks by binding to 127.x.y.z. The loopback networks
// are taken out of relay.forward_from_ip, or every test client would be a relay client (waived).
//
// Also here: the null sender deferred at DATA (a callout's RCPT still answered 250), ip mode,
// the waivers (allow_clients, allow_recipients, relay clients), Greylite's extra retries for a
// client with points, and `mxguard greylist` and the admin API on the same records.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFile, spawnSync } from 'node:child_process';
import os from 'node:os';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import type { ConfigInput } from '../src/config/schema.ts';
import { advanceClock, resetClock } from '../src/util/clock.ts';
import { ALLOWED_MEMO_MS } from '../src/policy/greylist/check.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');
const TOKEN = 'greylist-admin-token-0123456789';
const LIMIT = { timeout: 60_000 };
const DAY = 86_400_000;

afterEach(() => resetClock());

function greyApp(greylist: NonNullable<ConfigInput['greylist']> = {}, more: Partial<ConfigInput> = {}): Promise<TestApp> {
  return startTestApp({ relay: { forward_from_ip: ['192.0.2.0/24'] }, greylist: { when: 'always', ...greylist }, ...more });
}

interface Attempt {
  mail: string;
  rcpt: string;
  /** The reply to DATA, or to the final dot when DATA was accepted. */
  data?: string;
}

/** One SMTP transaction from `ip`: EHLO, MAIL, RCPT, and DATA when the recipient was taken. */
async function attempt(app: TestApp, ip: string, from: string, to: string, opts: { helo?: string; subject?: string } = {}): Promise<Attempt> {
  const c = await RawClient.connect(app.port, '127.0.0.1', ip);
  try {
    await c.reply();
    c.send(`EHLO ${opts.helo ?? 'client.example.org'}\r\n`);
    await c.reply();
    c.send(`MAIL FROM:<${from}>\r\n`);
    const mail = await c.reply();
    c.send(`RCPT TO:<${to}>\r\n`);
    const rcpt = await c.reply();
    if (!rcpt.startsWith('250')) return { mail, rcpt };
    c.send('DATA\r\n');
    const go = await c.reply();
    if (!go.startsWith('354')) return { mail, rcpt, data: go };
    c.send(`Subject: ${opts.subject ?? 'hello'}\r\nFrom: <${from}>\r\n\r\nA message.\r\n.\r\n`);
    const data = await c.reply();
    c.send('QUIT\r\n');
    await c.reply();
    return { mail, rcpt, data };
  } finally {
    c.close();
  }
}

function cli(config: string, ...args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, 'greylist', '-c', config, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr });
    });
  });
}

test('a new triplet is greylisted at RCPT; an early retry is told the rest of the delay; a retry after it passes with X-Greylist; the triplet is then white', LIMIT, async () => {
  const app = await greyApp();
  try {
    const first = await attempt(app, '127.3.0.1', 'alice@sender.example', 'bob@example.test');
    assert.equal(first.rcpt, '451 4.7.1 Greylisted, please try again in 300 seconds');
    advanceClock(120_000);
    const early = await attempt(app, '127.3.0.1', 'alice@sender.example', 'bob@example.test');
    assert.equal(early.rcpt, '451 4.7.1 Greylisted, please try again in 180 seconds', 'the record is not reset by an early retry');
    advanceClock(200_000);
    // A neighbour of the same /24 retries (a pool of outgoing servers): the same client.
    const retry = await attempt(app, '127.3.0.77', 'alice@sender.example', 'bob@example.test');
    assert.equal(retry.rcpt, '250 2.1.5 Ok');
    assert.match(retry.data ?? '', /^250 2\.0\.0 Ok: queued as /);
    const [file] = await app.waitMaildir('bob', 1);
    assert.match(fs.readFileSync(file as string, 'latin1'), /\r?\nX-Greylist: delayed 320 seconds by mxguard\r?\n/);
    advanceClock(10 * DAY);
    const later = await attempt(app, '127.3.0.1', 'alice@sender.example', 'bob@example.test', { subject: 'later' });
    assert.equal(later.rcpt, '250 2.1.5 Ok', 'a passed triplet is white');
    const files = await app.waitMaildir('bob', 2);
    const second = files.map((f) => fs.readFileSync(f, 'latin1')).find((m) => m.includes('Subject: later')) ?? '';
    assert.doesNotMatch(second, /X-Greylist/, 'no header when nothing was held up');
    // Another sender and another network are new triplets.
    assert.match((await attempt(app, '127.3.0.1', 'carol@sender.example', 'bob@example.test')).rcpt, /^451 4\.7\.1 Greylisted/);
    assert.match((await attempt(app, '127.4.0.1', 'alice@sender.example', 'bob@example.test')).rcpt, /^451 4\.7\.1 Greylisted/);
    const logged = app.logs().filter((l) => l.check === 'greylist' && l.verdict === 'tempfail');
    assert.ok(logged.length >= 3 && logged.every((l) => l.setting === 'greylist'), JSON.stringify(logged.slice(0, 2)));
  } finally {
    await app.stop();
  }
});

test('an expired grey record starts over and never passes; a passed triplet unused for `expire` is greylisted again', LIMIT, async () => {
  const app = await greyApp({ retry_window: '1h', expire: '2d', auto_allow: 0 });
  try {
    assert.match((await attempt(app, '127.3.1.1', 'a@s.example', 'bob@example.test')).rcpt, /^451 .* in 300 seconds$/);
    advanceClock(3_600_000 + 1000);
    assert.equal((await attempt(app, '127.3.1.1', 'a@s.example', 'bob@example.test')).rcpt, '451 4.7.1 Greylisted, please try again in 300 seconds', 'past the retry window: a new first attempt');
    advanceClock(301_000);
    assert.equal((await attempt(app, '127.3.1.1', 'a@s.example', 'bob@example.test')).rcpt, '250 2.1.5 Ok');
    advanceClock(2 * DAY - 1000);
    assert.equal((await attempt(app, '127.3.1.1', 'a@s.example', 'bob@example.test')).rcpt, '250 2.1.5 Ok', 'used again within expire: still white, and its time starts again');
    advanceClock(2 * DAY + 1000);
    assert.match((await attempt(app, '127.3.1.1', 'a@s.example', 'bob@example.test')).rcpt, /^451 4\.7\.1 Greylisted/, 'unused for longer than expire');
  } finally {
    await app.stop();
  }
});

test('auto_allow: a network whose greylisted triplets passed twice within a day is allowed; others are not', LIMIT, async () => {
  const app = await greyApp({ auto_allow: 2 });
  try {
    const ip = '127.3.2.1';
    for (const from of ['one@s.example', 'two@s.example']) assert.match((await attempt(app, ip, from, 'bob@example.test')).rcpt, /^451/);
    advanceClock(301_000);
    assert.equal((await attempt(app, ip, 'one@s.example', 'bob@example.test')).rcpt, '250 2.1.5 Ok');
    assert.match((await attempt(app, ip, 'three@s.example', 'bob@example.test')).rcpt, /^451/, 'one pass is not enough');
    assert.equal((await attempt(app, ip, 'two@s.example', 'bob@example.test')).rcpt, '250 2.1.5 Ok');
    assert.ok(app.logs().some((l) => l.check === 'greylist' && l.setting === 'greylist.auto_allow' && l.net === '127.3.2.0/24'));
    assert.equal((await attempt(app, '127.3.2.200', 'new@other.example', 'carol@example.test')).rcpt, '250 2.1.5 Ok', 'the allowed network passes at once');
    assert.match((await attempt(app, '127.3.3.1', 'new@other.example', 'carol@example.test')).rcpt, /^451/, 'a neighbouring /24 is not allowed');
    advanceClock(35 * DAY + 1000);
    assert.match((await attempt(app, '127.3.2.200', 'newer@other.example', 'carol@example.test')).rcpt, /^451/, 'the allowance lasts `expire`');
  } finally {
    await app.stop();
  }
});

test('the null sender is deferred at DATA, not RCPT: a callout gets its answer; the bounce passes after the delay', LIMIT, async () => {
  const app = await greyApp();
  try {
    const bounce = await attempt(app, '127.3.4.1', '', 'bob@example.test');
    assert.equal(bounce.rcpt, '250 2.1.5 Ok', 'RCPT is answered as it would be (callouts work)');
    assert.equal(bounce.data, '451 4.7.1 Greylisted, please try again in 300 seconds');
    advanceClock(301_000);
    const retry = await attempt(app, '127.3.4.1', '', 'bob@example.test');
    assert.match(retry.data ?? '', /^250 2\.0\.0 Ok: queued/);
    assert.equal((await app.waitMaildir('bob', 1)).length, 1);
  } finally {
    await app.stop();
  }
});

test('mode ip: the client network alone is the key; once it passed, any sender and recipient pass', LIMIT, async () => {
  const app = await greyApp({ mode: 'ip', auto_allow: 0 });
  try {
    assert.match((await attempt(app, '127.3.5.1', 'a@s.example', 'bob@example.test')).rcpt, /^451/);
    assert.match((await attempt(app, '127.3.5.1', 'b@t.example', 'carol@example.test')).rcpt, /^451 .* in 300 seconds$/, 'the same network, still its first wait');
    advanceClock(301_000);
    assert.equal((await attempt(app, '127.3.5.9', 'c@u.example', 'dave@example.test')).rcpt, '250 2.1.5 Ok');
  } finally {
    await app.stop();
  }
});

test('never greylisted: allow_clients, allow_recipients, relay clients, POP-before-SMTP clients, and mail we would not take anyway', LIMIT, async () => {
  const app = await greyApp(
    { allow_clients: ['127.3.6.0/24', '*.trusted.example'], allow_recipients: ['postmaster@*', '@open.example.test'] },
    { local_domains: ['example.test', 'open.example.test'], relay: { forward_from_ip: ['127.3.9.0/24'], forward_user: true }, admin: { listen: '127.0.0.1:0', token: TOKEN } },
  );
  try {
    // A POP login reported over the admin API (the way a webmail or POP server would).
    const pop = await fetch(`http://127.0.0.1:${app.app.adminPort as number}/api/relayers/127.3.7.50`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(pop.status, 200);
    assert.equal((await attempt(app, '127.3.7.50', 'a@s.example', 'bob@example.test')).rcpt, '250 2.1.5 Ok', 'a recent POP user');
    assert.equal((await attempt(app, '127.3.6.5', 'a@s.example', 'bob@example.test')).rcpt, '250 2.1.5 Ok', 'allow_clients (CIDR)');
    assert.equal((await attempt(app, '127.3.7.1', 'a@s.example', 'postmaster@example.test')).rcpt, '250 2.1.5 Ok', 'allow_recipients (pattern)');
    assert.equal((await attempt(app, '127.3.7.1', 'a@s.example', 'anyone@open.example.test')).rcpt, '250 2.1.5 Ok', 'allow_recipients (@domain)');
    assert.equal((await attempt(app, '127.3.9.1', 'a@s.example', 'bob@example.test')).rcpt, '250 2.1.5 Ok', 'a relay client');
    assert.match((await attempt(app, '127.3.7.1', 'a@s.example', 'someone@elsewhere.example')).rcpt, /^554 5\.7\.1 .*Relay access denied/, 'a relay attempt is refused, not greylisted');
    assert.match((await attempt(app, '127.3.7.1', 'a@s.example', 'bob@example.test')).rcpt, /^451 4\.7\.1 Greylisted/, 'the control: this client is greylisted');
  } finally {
    await app.stop();
  }
});

test('retry_per_points (Greylite): a client with points must retry more often, a delay apart', LIMIT, async () => {
  // HELO "localhost" scores 3 (helo.action score): 1 + (3 - 1) / 1 = 3 retries after the delay.
  const app = await greyApp({ retry_per_points: 1, min_score: 1 }, { helo: { action: 'score', score: 3 } });
  try {
    const send = () => attempt(app, '127.3.8.1', 'a@s.example', 'bob@example.test', { helo: 'localhost' });
    assert.match((await send()).rcpt, /^451 .* in 300 seconds$/);
    advanceClock(301_000);
    assert.match((await send()).rcpt, /^451 .* in 300 seconds$/, 'first retry: not enough');
    advanceClock(301_000);
    assert.match((await send()).rcpt, /^451 .* in 300 seconds$/, 'second retry: not enough');
    advanceClock(301_000);
    assert.equal((await send()).rcpt, '250 2.1.5 Ok', 'third retry passes');
    // A clean client (a proper HELO) needs one retry.
    const clean = () => attempt(app, '127.3.8.1', 'b@s.example', 'bob@example.test');
    assert.match((await clean()).rcpt, /^451/);
    advanceClock(301_000);
    assert.equal((await clean()).rcpt, '250 2.1.5 Ok');
  } finally {
    await app.stop();
  }
});

test('`mxguard greylist` and the admin API list, allow, release and delete the records the sessions use', LIMIT, async () => {
  const app = await greyApp({ auto_allow: 0 }, { admin: { listen: '127.0.0.1:0', token: TOKEN } });
  const config = path.join(app.dir, 'mxguard.yaml');
  fs.writeFileSync(config, `data_dir: ${app.dir}\nlocal_domains: [example.test]\ngreylist: {}\n`);
  const base = `http://127.0.0.1:${app.app.adminPort as number}`;
  const api = async (method: string, p: string): Promise<{ status: number; body: unknown }> => {
    const r = await fetch(base + p, { method, headers: { authorization: `Bearer ${TOKEN}` } });
    return { status: r.status, body: await r.json() };
  };
  try {
    assert.match((await attempt(app, '127.3.10.1', 'login@bank.example', 'bob@example.test')).rcpt, /^451/);
    assert.match((await attempt(app, '127.3.11.1', 'news@list.example', 'carol@example.test')).rcpt, /^451/);
    const listed = await cli(config, 'list');
    assert.equal(listed.code, 0, listed.out);
    assert.match(listed.out, /^grey +127\.3\.10\.0\/24\|login@bank\.example\|bob@example\.test +first=\S+ retry (in \d+s|due)$/m);
    assert.match((await cli(config, 'stats')).out, /^grey 2$/m);

    // A login link must not wait: release it by hand, and it passes at once.
    const released = await cli(config, 'release', '127.3.10.1', 'login@bank.example', 'bob@example.test');
    assert.equal(released.code, 0, released.out);
    assert.equal((await attempt(app, '127.3.10.1', 'login@bank.example', 'bob@example.test')).rcpt, '250 2.1.5 Ok');
    assert.match((await cli(config, 'release', 'nosuch|x|y')).out, /no such triplet/);

    // Allow a network by hand (CLI), another over the API.
    assert.equal((await cli(config, 'allow', '127.3.12.7')).code, 0);
    assert.equal((await attempt(app, '127.3.12.99', 'x@y.example', 'bob@example.test')).rcpt, '250 2.1.5 Ok');
    const bad = await cli(config, 'allow', '10.0.0.0/8');
    assert.notEqual(bad.code, 0);
    assert.match(bad.out, /wider than \/16: list it in greylist\.allow_clients/);
    const allowed = await api('POST', '/api/greylist/allow?net=127.3.13.0%2F24');
    assert.deepEqual(allowed, { status: 200, body: { allowed: ['127.3.13.0/24'] } });
    assert.equal((await attempt(app, '127.3.13.1', 'x@y.example', 'bob@example.test')).rcpt, '250 2.1.5 Ok');

    const list = (await api('GET', '/api/greylist')).body as { triplets: Array<{ key: string; record: { passed?: number } }>; allowed: Array<{ net: string; by: string }> };
    assert.deepEqual(list.allowed.map((a) => `${a.net} ${a.by}`).sort(), ['127.3.12.0/24 admin', '127.3.13.0/24 admin']);
    const key = '127.3.11.0/24|news@list.example|carol@example.test';
    assert.ok(list.triplets.some((t) => t.key === key && t.record.passed === undefined));
    assert.deepEqual((await api('POST', `/api/greylist/release?key=${encodeURIComponent(key)}`)).body, { released: key });
    assert.equal((await attempt(app, '127.3.11.1', 'news@list.example', 'carol@example.test')).rcpt, '250 2.1.5 Ok');
    assert.deepEqual((await api('GET', '/api/greylist/stats')).body, { grey: 0, passed: 2, allowedAuto: 0, allowedAdmin: 2 });

    assert.equal((await cli(config, 'delete', '127.3.12.0/24', key)).out.trim(), 'deleted 2 of 2');
    assert.deepEqual((await api('DELETE', `/api/greylist?key=${encodeURIComponent('127.3.13.0/24')}`)).body, { deleted: 1 });
    // The running mxguard found 127.3.12.0/24 allowed a moment ago and believes it ALLOWED_MEMO_MS more.
    assert.equal((await attempt(app, '127.3.12.98', 'x@y.example', 'bob@example.test')).rcpt, '250 2.1.5 Ok', 'still believed allowed');
    advanceClock(ALLOWED_MEMO_MS);
    assert.match((await attempt(app, '127.3.12.99', 'x@y.example', 'bob@example.test')).rcpt, /^451/, 'no longer allowed');
    assert.deepEqual((await api('GET', '/api/greylist/stats')).body, { grey: 1, passed: 1, allowedAuto: 0, allowedAdmin: 0 });
    assert.equal((await api('POST', '/api/greylist/allow?net=nonsense')).status, 400);
  } finally {
    await app.stop();
  }
});

test('an authenticated client is never greylisted', LIMIT, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-grey-auth-'));
  const users = path.join(dir, 'users');
  const cfg = path.join(dir, 'cli.yaml');
  fs.writeFileSync(cfg, `data_dir: ${dir}\nauth: { users_file: ${users} }\n`);
  const added = spawnSync(process.execPath, [MAIN, 'user', '-c', cfg, 'add', 'alice'], { input: 'wonderland\n', encoding: 'utf8' });
  assert.equal(added.status, 0, added.stderr);
  const app = await greyApp({}, { auth: { users_file: users } });
  try {
    const c = await RawClient.connect(app.port, '127.0.0.1', '127.3.14.1');
    try {
      await c.reply();
      c.send('EHLO client.example.org\r\n');
      await c.reply();
      c.send(`AUTH PLAIN ${Buffer.from('\0alice\0wonderland').toString('base64')}\r\n`);
      assert.match(await c.reply(), /^235 /);
      c.send('MAIL FROM:<alice@s.example>\r\nRCPT TO:<bob@example.test>\r\n');
      assert.deepEqual(await c.replies(2), ['250 2.1.0 Ok', '250 2.1.5 Ok']);
    } finally {
      c.close();
    }
    assert.match((await attempt(app, '127.3.14.1', 'alice@s.example', 'bob@example.test')).rcpt, /^451 4\.7\.1 Greylisted/, 'the control: without AUTH');
  } finally {
    await app.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
