// SMTP AUTH (issue 3, Must show 5): swaks with PLAIN and LOGIN over STARTTLS, against the
// password file (users added with the real `mxguard user add`) and against a real Dovecot;
// plaintext AUTH refused where TLS is required; guessing slowed down and then refused;
// auth_allow_relay and hide_auth recentpop.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { withTestApp as withApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { runSwaks, startDovecotAuth } from './harness/peers.ts';
import type { ConfigInput } from '../src/config/schema.ts';
import { advanceClock, clock, resetClock } from '../src/util/clock.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');
const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

let dir = '';
let cert = '';
let key = '';
let usersFile = '';
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-auth-'));
  cert = path.join(dir, 'cert.pem');
  key = path.join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=mx.example.test'], { stdio: 'ignore' });
  // Users go in through the real CLI, password on standard input.
  const cfg = path.join(dir, 'cli.yaml');
  usersFile = path.join(dir, 'users');
  fs.writeFileSync(cfg, stringify({ data_dir: dir, auth: { users_file: usersFile } }));
  for (const [user, pw] of [['alice', 'wonderland'], ['bob', 'builder']] as const) {
    const r = spawnSync(process.execPath, [MAIN, 'user', '-c', cfg, 'add', user], { input: `${pw}\n`, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
  }
  const list = spawnSync(process.execPath, [MAIN, 'user', '-c', cfg, 'list'], { encoding: 'utf8' });
  assert.equal(list.stdout, 'alice\nbob\n');
  assert.doesNotMatch(fs.readFileSync(usersFile, 'utf8'), /wonderland|builder/, 'only hashes are stored');
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** mxguard that wants TLS for AUTH from everyone (plaintext_from: []), loopback included. */
function strict(extra: { auth?: ConfigInput['auth'] } = {}): Partial<ConfigInput> {
  return {
    tls: { cert, key },
    auth: { users_file: usersFile, plaintext_from: [], ...extra.auth },
    relay: { forward_from_ip: ['192.0.2.0/24'], auth_allow_relay: true },
  };
}

function swaks(app: TestApp, args: string[]) {
  return runSwaks(['--server', '127.0.0.1', '--port', String(app.port), '--from', 'alice@example.test', '--to', 'friend@far.test', ...args]);
}

test('mxguard user delete removes a user, and says so when there is none', () => {
  const cfg = path.join(dir, 'cli.yaml');
  const run = (args: string[], input = '') => spawnSync(process.execPath, [MAIN, 'user', '-c', cfg, ...args], { input, encoding: 'utf8' });
  assert.equal(run(['add', 'erin'], 'temporary\n').status, 0);
  assert.match(run(['list']).stdout, /^erin$/m);
  const del = run(['delete', 'erin']);
  assert.equal(del.status, 0, del.stderr);
  assert.doesNotMatch(run(['list']).stdout, /erin/);
  const again = run(['delete', 'erin']);
  assert.equal(again.status, 1);
  assert.match(again.stderr, /no such user: erin/);
  assert.equal(run(['add', 'bad:name'], 'x\n').status, 1, 'a colon cannot be in a user name');
  assert.equal(run(['add', 'nopassword'], '').status, 1, 'no password on standard input');
});

test('AUTH PLAIN and LOGIN with swaks over STARTTLS; the relay opens for the authenticated (auth_allow_relay)', async () => {
  await withApp(strict(), async (app) => {
    for (const mech of ['PLAIN', 'LOGIN']) {
      const r = await swaks(app, ['-tls', '--auth', mech, '--auth-user', 'alice', '--auth-password', 'wonderland']);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /<~ +235 2\.7\.0 Authentication successful/);
      assert.match(r.stdout, /<~ +250 2\.0\.0 Ok: queued as/);
    }
    const ok = app.logs().filter((l) => l.msg === 'Command RCPT OK (authenticated channel)');
    assert.equal(ok.length, 2);
    assert.equal(app.logs().filter((l) => l.msg === 'authenticated' && l.user === 'alice').length, 2);
    // Without AUTH the same relay is refused.
    const anon = await swaks(app, ['-tls', '--helo', 'client.example']); // a proper name: only the relay rule decides
    assert.equal(anon.code, 24, anon.stdout);
    assert.match(anon.stdout, /554 5\.7\.1 <friend@far\.test>: Relay access denied/);
    // Received says ESMTPSA for authenticated mail (RFC 3848).
    const local = await runSwaks(['--server', '127.0.0.1', '--port', String(app.port), '--from', 'bob@example.test', '--to', 'carol@example.test', '-tls', '--auth', 'PLAIN', '--auth-user', 'bob', '--auth-password', 'builder']);
    assert.equal(local.code, 0, local.stdout);
    const [file] = await app.waitMaildir('carol', 1);
    assert.match(fs.readFileSync(file as string, 'utf8'), /with ESMTPSA id /);
  });
});

test('a wrong password and an unknown user get the same 535; swaks exits 28', async () => {
  await withApp(strict(), async (app) => {
    const wrong = await swaks(app, ['-tls', '--auth', 'PLAIN', '--auth-user', 'alice', '--auth-password', 'guess']);
    const unknown = await swaks(app, ['-tls', '--auth', 'PLAIN', '--auth-user', 'mallory', '--auth-password', 'guess']);
    assert.equal(wrong.code, 28);
    assert.equal(unknown.code, 28);
    const reply = (r: { stdout: string }) => /<~\*? +(535 .*)/.exec(r.stdout)?.[1];
    assert.equal(reply(wrong), '535 5.7.8 Authentication credentials invalid');
    assert.equal(reply(unknown), reply(wrong));
  });
});

test('plaintext AUTH is not offered and is refused with 538 where TLS is required', async () => {
  await withApp(strict(), async (app) => {
    const c = await RawClient.connect(app.port);
    await c.reply();
    c.send('EHLO client.test\r\n');
    const ehlo = await c.reply();
    assert.ok(ehlo.includes('STARTTLS') && !ehlo.includes('AUTH'), ehlo);
    c.send(`AUTH PLAIN ${b64('\0alice\0wonderland')}\r\n`);
    assert.equal(await c.reply(), '538 5.7.11 Encryption required for requested authentication mechanism');
    c.close();
    const r = await swaks(app, ['--auth', 'PLAIN', '--auth-user', 'alice', '--auth-password', 'wonderland']);
    assert.equal(r.code, 28, 'swaks: the server offers no AUTH');
  });
  // On the defaults, loopback may authenticate without TLS (a local webmail, say).
  await withApp({ auth: { users_file: usersFile } }, async (app) => {
    const c = await RawClient.connect(app.port);
    await c.reply();
    c.send('EHLO client.test\r\n');
    assert.ok((await c.reply()).includes('AUTH PLAIN LOGIN'));
    c.send(`AUTH PLAIN ${b64('\0alice\0wonderland')}\r\n`);
    assert.equal(await c.reply(), '235 2.7.0 Authentication successful');
    c.close();
  });
});

test('guessing is slowed down, then refused with 454 for the whole failure_window', async (t) => {
  t.after(() => resetClock());
  await withApp({ auth: { users_file: usersFile, max_failures: 3, failure_delay: '200ms', failure_window: '10m' } }, async (app) => {
    const c = await RawClient.connect(app.port);
    await c.reply();
    c.send('EHLO client.test\r\n');
    await c.reply();
    const took: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = Date.now();
      c.send(`AUTH PLAIN ${b64(`\0alice\0guess${i}`)}\r\n`);
      assert.equal(await c.reply(5000), '535 5.7.8 Authentication credentials invalid');
      took.push(Date.now() - t0);
    }
    assert.ok((took[0] as number) >= 190 && (took[1] as number) >= 390 && (took[2] as number) >= 590, `each failure answered later: ${took}`);
    // Now even the right password is refused from this address, until the window is over.
    c.send(`AUTH PLAIN ${b64('\0alice\0wonderland')}\r\n`);
    assert.equal(await c.reply(5000), '454 4.7.0 Too many failed authentication attempts, try again later');
    c.close();
    // The window (util/clock.ts, which mxguard in this process reads) started when the first
    // failure was counted, before its (delayed) 535 came back. Late in the window: still refused.
    advanceClock(9 * 60_000);
    const late = await RawClient.connect(app.port);
    await late.reply();
    late.send(`EHLO client.test\r\nAUTH PLAIN ${b64('\0alice\0wonderland')}\r\n`);
    assert.equal((await late.replies(2, 5000))[1], '454 4.7.0 Too many failed authentication attempts, try again later');
    late.close();
    // Once the window is over, the right password works again.
    advanceClock(60_000 + 1000);
    const d = await RawClient.connect(app.port);
    await d.reply();
    d.send(`EHLO client.test\r\nAUTH PLAIN ${b64('\0alice\0wonderland')}\r\n`);
    assert.equal((await d.replies(2, 5000))[1], '235 2.7.0 Authentication successful');
    d.close();
  });
});

test('AUTH edge cases: LOGIN exchange, cancel, bad base64, unknown mechanism, twice, inside a transaction', async () => {
  await withApp({ auth: { users_file: usersFile, failure_delay: '1ms' } }, async (app) => {
    const c = await RawClient.connect(app.port);
    await c.reply();
    c.send('EHLO client.test\r\n');
    await c.reply();
    c.send('AUTH LOGIN\r\n');
    assert.equal(await c.reply(), `334 ${b64('Username:')}`);
    c.send('*\r\n');
    assert.equal(await c.reply(), '501 5.7.0 Authentication cancelled');
    c.send('AUTH PLAIN\r\n');
    assert.equal(await c.reply(), '334 ');
    c.send('@@not base64@@\r\n');
    assert.equal(await c.reply(), '501 5.5.2 Cannot decode response');
    c.send('AUTH DIGEST-MD5\r\n');
    assert.equal(await c.reply(), '504 5.5.4 Unrecognized authentication type');
    c.send('MAIL FROM:<a@b.test>\r\nAUTH PLAIN\r\nRSET\r\n');
    assert.deepEqual((await c.replies(3)).slice(1), ['503 5.5.1 Error: AUTH not allowed in a mail transaction', '250 2.0.0 Ok']);
    c.send('AUTH LOGIN\r\n');
    await c.reply();
    c.send(`${b64('bob')}\r\n`);
    assert.equal(await c.reply(), `334 ${b64('Password:')}`);
    c.send(`${b64('builder')}\r\n`);
    assert.equal(await c.reply(), '235 2.7.0 Authentication successful');
    c.send(`AUTH PLAIN ${b64('\0bob\0builder')}\r\n`);
    assert.equal(await c.reply(), '503 5.5.1 Error: already authenticated');
    c.close();
  });
});

test('hide_auth: [recentpop] does not offer AUTH to a recent POP user', async (t) => {
  t.after(() => resetClock());
  await withApp({ auth: { users_file: usersFile }, relay: { forward_user: true, hide_auth: ['recentpop'] } }, async (app) => {
    const ehlo = async () => {
      const c = await RawClient.connect(app.port);
      await c.reply();
      c.send('EHLO client.test\r\n');
      const r = await c.reply();
      c.close();
      return r;
    };
    assert.ok((await ehlo()).includes('AUTH PLAIN LOGIN'));
    const { openStore } = await import('../src/store/index.ts');
    const store = await openStore(app.config);
    await store.relayerAdd('127.0.0.1', Math.floor(clock.now() / 1000), 3_600_000);
    await store.close();
    assert.ok(!(await ehlo()).includes('AUTH'), 'hidden from a client that logged in to POP lately');
    // forward_window (default 2m) on util/clock.ts: still hidden late in it, offered again after.
    advanceClock(100_000);
    assert.ok(!(await ehlo()).includes('AUTH'), 'still within forward_window');
    advanceClock(25_000);
    assert.ok((await ehlo()).includes('AUTH PLAIN LOGIN'), 'offered again once forward_window is over');
  });
});

test('AUTH against a real Dovecot auth service (auth.dovecot_socket)', async () => {
  const dovecot = await startDovecotAuth({ dave: 'pop-password' });
  try {
    await withApp(strict({ auth: { dovecot_socket: dovecot.socket } }), async (app) => {
      const good = await swaks(app, ['-tls', '--auth', 'PLAIN', '--auth-user', 'dave', '--auth-password', 'pop-password']);
      assert.equal(good.code, 0, good.stdout + good.stderr);
      assert.match(good.stdout, /235 2\.7\.0/);
      const login = await swaks(app, ['-tls', '--auth', 'LOGIN', '--auth-user', 'dave', '--auth-password', 'pop-password']);
      assert.equal(login.code, 0, login.stdout);
      const bad = await swaks(app, ['-tls', '--auth', 'PLAIN', '--auth-user', 'dave', '--auth-password', 'wrong']);
      assert.equal(bad.code, 28);
      assert.match(dovecot.log(), /Password mismatch/, 'Dovecot itself checked it');
    });
  } finally {
    await dovecot.stop();
  }
});
