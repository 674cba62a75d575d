// Issue 9, items 11 and 12: AUTH cannot starve the spool, and auth.max_failures holds against
// parallel connections.
//  - 300 wrong AUTHs from 300 loopback addresses at a real `mxguard start` process while a
//    legitimate client sends messages: each 250 comes back within 2 s (the old code: many
//    seconds), the AUTHs over auth.max_concurrent_checks get 454 at once, and the process's peak
//    RSS stays far below 16 scrypts' worth.
//  - 20 parallel connections × 3 pipelined wrong AUTHs from one address: no more passwords are
//    checked than auth.max_failures allows (counted in the password file and in Dovecot's log).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { stringify } from 'yaml';
import { withTestApp } from './harness/app.ts';
import { freePort, startDovecotAuth } from './harness/peers.ts';
import { startMxguard } from './harness/mxguard-process.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { passwordCheckCounts } from '../src/auth/passwords.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');
const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-authlim-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A users file with alice:wonderland, made by the real `mxguard user add`. */
function usersFile(name: string, extra = ''): string {
  const file = path.join(dir, name);
  const cfg = path.join(dir, `${name}.yaml`);
  fs.writeFileSync(cfg, stringify({ data_dir: dir, auth: { users_file: file } }));
  const r = spawnSync(process.execPath, [MAIN, 'user', '-c', cfg, 'add', 'alice'], { input: 'wonderland\n', encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  if (extra) fs.appendFileSync(file, extra);
  return file;
}

/**
 * One SMTP connection from `from` that sends `lines` at once (pipelined) after the banner and
 * resolves with every reply (the banner first), or what came before the server closed.
 */
function pipelined(port: number, from: string, lines: string, replies: number, timeoutMs = 60_000): Promise<string[]> {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: '127.0.0.1', localAddress: from });
    let buf = '';
    const got: string[] = [];
    let sent = false;
    const done = () => {
      clearTimeout(timer);
      sock.destroy();
      resolve(got);
    };
    const timer = setTimeout(done, timeoutMs);
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\r\n')) !== -1) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        if (line[3] === '-') continue;
        got.push(line);
        if (!sent) {
          sent = true;
          sock.write(lines);
        }
        if (got.length >= replies) return done();
      }
    });
    sock.on('error', done);
    sock.on('close', done);
  });
}

/** Peak and current RSS of a process, in MiB (Linux /proc). */
function rssOf(pid: number): { peak: number; now: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { peak: Math.round(kib('VmHWM') / 1024), now: Math.round(kib('VmRSS') / 1024) };
}

test('300 wrong AUTHs from 300 addresses never hold up another client’s 250; over the bound they get 454 at once', { timeout: 180_000 }, async () => {
  const work = fs.mkdtempSync(path.join(dir, 'proc-'));
  const port = await freePort();
  const mx = await startMxguard(
    work,
    {
      hostname: 'mx.example.test',
      local_domains: ['example.test'],
      data_dir: path.join(work, 'var'),
      mail_from: { require_domain: false },
      auth: { users_file: usersFile('users-load'), failure_delay: '1s' },
      log: { level: 'info', file: path.join(work, 'mxguard.jsonl') },
    },
    port,
  );
  try {
    // The legitimate client, from 127.0.0.1, set up before the attack.
    const legit = await RawClient.connect(port);
    await legit.reply();
    legit.send('EHLO legit.example.test\r\n');
    await legit.reply();
    const send = async (i: number): Promise<number> => {
      legit.send(`MAIL FROM:<bob@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n`);
      const [mail, rcpt, data] = await legit.replies(3, 30_000);
      assert.deepEqual([mail?.slice(0, 3), rcpt?.slice(0, 3), data?.slice(0, 3)], ['250', '250', '354']);
      const t0 = performance.now();
      legit.send(`Subject: message ${i}\r\n\r\nbody ${i}\r\n.\r\n`);
      const queued = await legit.reply(60_000);
      assert.match(queued, /^250 2\.0\.0 Ok: queued as /);
      return performance.now() - t0;
    };
    const quiet = await send(0);
    const rss0 = rssOf(mx.pid);

    // 300 guessers, each from its own address (127.1.0.1 …), each one wrong AUTH.
    const attack = Array.from({ length: 300 }, (_, i) =>
      pipelined(port, `127.1.${(i + 1) >> 8}.${(i + 1) & 255}`, `EHLO guesser${i}.example.test\r\nAUTH PLAIN ${b64(`\0alice\0guess${i}`)}\r\nQUIT\r\n`, 4),
    );
    const took: number[] = [];
    for (let i = 1; i <= 5; i++) {
      await new Promise((r) => setTimeout(r, 200));
      took.push(await send(i));
    }
    const results = await Promise.all(attack);
    legit.send('QUIT\r\n');
    legit.close();
    const rss1 = rssOf(mx.pid);

    const authReplies = results.map((r) => r[2] ?? '(none)');
    const count = (re: RegExp) => authReplies.filter((a) => re.test(a)).length;
    const wrong = count(/^535 5\.7\.8 /);
    const busy = count(/^454 4\.7\.0 Temporary authentication failure$/);
    const busyLogged = async (): Promise<number> => {
      // The log is written asynchronously: wait (bounded) until the lines are all there.
      for (let waited = 0; ; waited += 100) {
        const n = (fs.readFileSync(path.join(work, 'mxguard.jsonl'), 'utf8').match(/"msg":"AUTH refused: too many password checks at once"/g) ?? []).length;
        if (n >= busy || waited >= 5000) return n;
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    const note = `250 after ${took.map((t) => t.toFixed(0)).join(', ')} ms (quiet: ${quiet.toFixed(0)} ms); AUTH replies: ${wrong}×535, ${busy}×454; peak RSS ${rss0.peak} → ${rss1.peak} MiB`;
    console.log(`# ${note}`);
    // Measured on the 2-core test machine: new 8-111 ms each; the old code up to 15.3 s.
    assert.ok(Math.max(...took) < 2000, `every 250 within 2 s: ${note}`);
    // At most 4 checks (32 MiB each) at once; unbounded (16 pool threads), peak RSS went 123 → 643 MiB.
    assert.ok(rss1.peak - rss0.peak < 250, `peak RSS: ${note}`);
    assert.equal(wrong + busy, 300, `every guesser answered: ${JSON.stringify(authReplies.filter((a) => !/^(535|454) /.test(a)).slice(0, 5))}`);
    assert.ok(busy > 0 && (await busyLogged()) === busy, `some over the bound, each logged: ${note}`);
  } finally {
    await mx.stop();
  }
});

/** 20 connections from 127.0.0.1 at once, each EHLO and 3 wrong AUTH PLAINs in one write. */
async function twentyByThree(port: number): Promise<string[]> {
  const auths = Array.from({ length: 3 }, (_, k) => `AUTH PLAIN ${b64(`\0alice\0guess${k}`)}\r\n`).join('');
  const all = await Promise.all(Array.from({ length: 20 }, () => pipelined(port, '127.0.0.1', `EHLO client.example.test\r\n${auths}QUIT\r\n`, 6, 30_000)));
  for (const r of all) assert.equal(r.length, 6, `banner, EHLO, 3 AUTH, QUIT: ${JSON.stringify(r)}`);
  return all.flatMap((r) => r.slice(2, 5));
}

test('20 parallel connections × 3 pipelined wrong AUTHs: no more passwords checked than auth.max_failures (password file)', async () => {
  // max_failures 2: at most 2 checks at once in this process (4 pool threads − 2), so none is refused as busy.
  await withTestApp({ auth: { users_file: usersFile('users-par'), max_failures: 2, failure_delay: '1ms' } }, async (app) => {
    const before = passwordCheckCounts().run;
    const replies = await twentyByThree(app.port);
    const checked = passwordCheckCounts().run - before;
    const failedLogged = app.logs().filter((l) => l.msg === 'authentication failed').length;
    assert.equal(replies.filter((r) => r.startsWith('535 5.7.8 ')).length, 2, replies.join('\n'));
    assert.equal(replies.filter((r) => r === '454 4.7.0 Too many failed authentication attempts, try again later').length, 58);
    assert.equal(checked, 2, 'password checks run (the old code: 20)');
    assert.equal(failedLogged, 2);
    // The right password, from the same address, is refused too until the window is over.
    const c = await RawClient.connect(app.port);
    await c.reply();
    c.send(`EHLO client.example.test\r\nAUTH PLAIN ${b64('\0alice\0wonderland')}\r\n`);
    assert.equal((await c.replies(2))[1], '454 4.7.0 Too many failed authentication attempts, try again later');
    c.close();
  });
});

test('a right password is forgiven: it does not count towards auth.max_failures', async () => {
  await withTestApp({ auth: { users_file: usersFile('users-ok'), max_failures: 2, failure_delay: '1ms' } }, async (app) => {
    for (let i = 0; i < 4; i++) {
      const c = await RawClient.connect(app.port);
      await c.reply();
      c.send(`EHLO client.example.test\r\nAUTH PLAIN ${b64('\0alice\0wonderland')}\r\n`);
      assert.equal((await c.replies(2))[1], '235 2.7.0 Authentication successful', `login ${i + 1}`);
      c.close();
    }
    const c = await RawClient.connect(app.port);
    await c.reply();
    c.send(`EHLO client.example.test\r\nAUTH PLAIN ${b64('\0alice\0guess')}\r\nAUTH PLAIN ${b64('\0alice\0guess2')}\r\nAUTH PLAIN ${b64('\0alice\0guess3')}\r\n`);
    assert.deepEqual(
      (await c.replies(4)).slice(1).map((r) => r.slice(0, 3)),
      ['535', '535', '454'],
      'two failures allowed after four good logins',
    );
    c.close();
  });
});

test('20 parallel connections × 3 pipelined wrong AUTHs against Dovecot: at most auth.max_failures (5) reach it', { timeout: 60_000 }, async () => {
  const dovecot = await startDovecotAuth({ alice: 'wonderland' });
  try {
    await withTestApp({ auth: { dovecot_socket: dovecot.socket, max_failures: 5, failure_delay: '1ms' } }, async (app) => {
      const replies = await twentyByThree(app.port);
      const mismatches = (dovecot.log().match(/Password mismatch/g) ?? []).length;
      assert.equal(replies.filter((r) => r.startsWith('535 5.7.8 ')).length, 5, replies.join('\n'));
      assert.equal(replies.filter((r) => r.startsWith('454 4.7.0 Too many failed')).length, 55);
      assert.equal(mismatches, 5, 'passwords Dovecot checked (the old code: 20)');
    });
  } finally {
    await dovecot.stop();
  }
});

test('mxguard check and mxguard user refuse a users-file line with N=2^20, without running it', () => {
  const huge = `scrypt$1048576$8$1$${Buffer.alloc(16, 1).toString('base64')}$${Buffer.alloc(32, 2).toString('base64')}`;
  const file = usersFile('users-huge', `greedy:${huge}\n`);
  const cfg = path.join(dir, 'check-huge.yaml');
  fs.writeFileSync(cfg, stringify({ data_dir: dir, auth: { users_file: file } }));
  const t0 = performance.now();
  const check = spawnSync(process.execPath, [MAIN, 'check', '-c', cfg], { encoding: 'utf8' });
  assert.equal(check.status, 1, check.stdout + check.stderr);
  assert.match(check.stderr, new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2:1: auth\\.users_file: user greedy: scrypt N=1048576 r=8 p=1 asks for 1024 MiB`, 'm'));
  const list = spawnSync(process.execPath, [MAIN, 'user', '-c', cfg, 'list'], { encoding: 'utf8' });
  assert.equal(list.status, 1);
  assert.equal(list.stdout, 'alice\ngreedy\n');
  assert.match(list.stderr, /^mxguard user: .*:2:1: auth\.users_file: user greedy: scrypt N=1048576/m);
  // Setting the password again replaces the line; then check passes.
  const fix = spawnSync(process.execPath, [MAIN, 'user', '-c', cfg, 'add', 'greedy'], { input: 'new-password\n', encoding: 'utf8' });
  assert.equal(fix.status, 0, fix.stderr);
  assert.equal(fix.stderr, '');
  const again = spawnSync(process.execPath, [MAIN, 'check', '-c', cfg], { encoding: 'utf8' });
  assert.equal(again.status, 0, again.stderr);
  assert.ok(performance.now() - t0 < 30_000, 'no 1 GiB scrypt ran');
});

test('at run time a users-file line with N=2^20 is a failed check with a warning, never run', async () => {
  const huge = `scrypt$1048576$8$1$${Buffer.alloc(16, 1).toString('base64')}$${Buffer.alloc(32, 2).toString('base64')}`;
  await withTestApp({ auth: { users_file: usersFile('users-rt', `greedy:${huge}\n`), failure_delay: '1ms' } }, async (app) => {
    const c = await RawClient.connect(app.port);
    await c.reply();
    const t0 = performance.now();
    c.send(`EHLO client.example.test\r\nAUTH PLAIN ${b64('\0greedy\0anything')}\r\n`);
    assert.equal((await c.replies(2, 10_000))[1], '535 5.7.8 Authentication credentials invalid');
    const ms = performance.now() - t0;
    c.close();
    const warn = app.logs().find((l) => l.msg === 'password hash refused');
    assert.ok(warn && warn.user === 'greedy' && warn.level === 40, JSON.stringify(warn));
    assert.ok(ms < 3000, `answered in ${ms.toFixed(0)} ms (running it took ~6 s and 1 GiB)`);
  });
});
