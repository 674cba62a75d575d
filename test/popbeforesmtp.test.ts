// POP-before-SMTP end to end with real parts (issue 3, "Must show 4"): a real Dovecot serves POP3
// and IMAP on loopback and writes its own log; a real POP3 login makes Dovecot write the login
// line; mxguard's log watcher follows that log into the real store; the relay check then lets
// 127.0.0.1 relay within a second, and no longer after forward_window.
//
// The first test also checks the default patterns against every line this Dovecot wrote for
// successful and failed logins (including user names made to look like a login line).
// MXGUARD_WRITE_FIXTURE=1 writes those lines to test/fixtures/dovecot-login.log.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { freePort, makeTempDir, sleep, waitUntil } from './harness/peers.ts';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { DEFAULT_LOGIN_PATTERNS, loginIp } from '../src/relayers/log-watcher.ts';
import { DAEMON_COMMIT_EVERY_MS, openStore, type Store } from '../src/store/index.ts';
import { advanceClock, resetClock } from '../src/util/clock.ts';

const USER = 'alice';
const PASSWORD = 's3cret-Pw';
const NOBODY = 65534;
const FIXTURE = path.resolve(import.meta.dirname, 'fixtures/dovecot-login.log');

// --- a real Dovecot with POP3 and IMAP ------------------------------------------------------

interface Dovecot {
  readonly pop3: number;
  readonly imap: number;
  readonly ipv6: boolean;
  readonly logFile: string;
  readonly pid: number;
  log(): string;
  stop(): Promise<void>;
}

/** A bound for Promise.race that does not keep the process alive once the race is won. */
const bound = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref());

/** Whether ::1 can be bound here (it is not on every CI machine). */
function hasIpv6Loopback(): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(0, '::1', () => srv.close(() => resolve(true)));
  });
}

/** Connects and waits for the greeting; true when it starts with `ok`. */
function probe(port: number, ok: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const done = (v: boolean): void => {
      clearTimeout(t);
      s.destroy();
      resolve(v);
    };
    const t = setTimeout(() => done(false), 1000);
    s.once('data', (d: Buffer) => done(d.toString('latin1').startsWith(ok)));
    s.once('error', () => done(false));
  });
}

async function startDovecot(): Promise<Dovecot> {
  const ipv6 = await hasIpv6Loopback();
  let lastErr: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const [pop3, imap] = [await freePort(), await freePort()];
    const dir = await makeTempDir('dovecot-pop');
    const logFile = path.join(dir, 'dovecot.log');
    for (const d of ['run', 'state']) await fsp.mkdir(path.join(dir, d));
    await fsp.mkdir(path.join(dir, 'mail'));
    await fsp.chown(path.join(dir, 'mail'), NOBODY, NOBODY);
    // A one-user passwd-file: alice with a known password; every other user name is unknown.
    await fsp.writeFile(path.join(dir, 'passwd'), `${USER}:{PLAIN}${PASSWORD}::::::\n`);
    const addrs = ipv6 ? '127.0.0.1, ::1' : '127.0.0.1';
    const conf = [
      'protocols = pop3 imap',
      'ssl = no',
      'disable_plaintext_auth = no',
      'auth_verbose = yes',
      `listen = ${addrs}`,
      `base_dir = ${path.join(dir, 'run')}`,
      `state_dir = ${path.join(dir, 'state')}`,
      `log_path = ${logFile}`,
      'mail_location = maildir:~/Maildir',
      `passdb {\n  driver = passwd-file\n  args = scheme=PLAIN ${path.join(dir, 'passwd')}\n}`,
      `userdb {\n  driver = static\n  args = uid=${NOBODY} gid=${NOBODY} home=${path.join(dir, 'mail')}/%n\n}`,
      `service pop3-login {\n  inet_listener pop3 {\n    address = ${addrs}\n    port = ${pop3}\n  }\n  inet_listener pop3s {\n    port = 0\n  }\n}`,
      `service imap-login {\n  inet_listener imap {\n    address = ${addrs}\n    port = ${imap}\n  }\n  inet_listener imaps {\n    port = 0\n  }\n}`,
    ];
    const confFile = path.join(dir, 'dovecot.conf');
    await fsp.writeFile(confFile, conf.join('\n') + '\n');
    const child = spawn('/usr/sbin/dovecot', ['-c', confFile, '-F'], { cwd: dir, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (out += d.toString('utf8')));
    let exited = false;
    const exitedP = new Promise<void>((resolve) => {
      child.once('exit', () => ((exited = true), resolve()));
      child.once('error', (err) => ((out += String(err)), (exited = true), resolve()));
    });
    const pid = child.pid ?? -1;
    const killGroup = (): void => {
      for (const target of [-pid, pid]) {
        try {
          if (pid > 0) process.kill(target, 'SIGKILL');
        } catch {
          // gone
        }
      }
    };
    process.once('exit', killGroup); // a crashed test leaves no Dovecot behind
    let stopped = false;
    const readLog = (): string => {
      try {
        return fs.readFileSync(logFile, 'utf8');
      } catch {
        return '';
      }
    };
    const stop = async (): Promise<void> => {
      if (stopped) return;
      stopped = true;
      if (!exited && pid > 0) {
        process.kill(pid, 'SIGTERM');
        await Promise.race([exitedP, bound(10_000)]);
      }
      killGroup(); // login/auth/log children share the master's process group
      await Promise.race([exitedP, bound(2000)]);
      process.removeListener('exit', killGroup);
      await fsp.rm(dir, { recursive: true, force: true });
    };
    const ready = await waitUntil(async () => exited || ((await probe(pop3, '+OK')) && (await probe(imap, '* OK'))), 15_000, 50);
    if (ready && !exited) return { pop3, imap, ipv6, logFile, pid, log: readLog, stop };
    lastErr = new Error(`dovecot did not start: ${out}\n${readLog()}`);
    await stop();
    if (!/in use|bind/i.test(String(lastErr))) break;
  }
  throw lastErr;
}

/**
 * One POP3 or IMAP session: sends each step's line, then waits for a reply line matching
 * `until` (bounded). Ends with the socket closed (by the server after a logout, or by us).
 */
async function talk(port: number, steps: ReadonlyArray<{ send: string; until: RegExp }>, host = '127.0.0.1', from?: string): Promise<string[]> {
  const sock = net.connect({ host, port, localAddress: from });
  sock.setEncoding('latin1');
  const lines: string[] = [];
  const transcript: string[] = [];
  let buf = '';
  let wake: (() => void) | undefined;
  sock.on('data', (d: string) => {
    buf += d;
    for (let nl = buf.indexOf('\r\n'); nl !== -1; nl = buf.indexOf('\r\n')) {
      lines.push(buf.slice(0, nl));
      transcript.push(`S: ${buf.slice(0, nl)}`);
      buf = buf.slice(nl + 2);
    }
    wake?.();
  });
  let closed = false;
  sock.on('close', () => ((closed = true), wake?.()));
  sock.on('error', () => undefined);
  const waitFor = async (re: RegExp): Promise<void> => {
    const deadline = Date.now() + 10_000;
    let seen = 0;
    for (;;) {
      for (; seen < lines.length; seen++) if (re.test(lines[seen] as string)) return void lines.splice(0, seen + 1);
      if (closed) throw new Error(`closed before ${re}: ${JSON.stringify(lines)}`);
      if (Date.now() > deadline) throw new Error(`timeout waiting for ${re}: ${JSON.stringify(lines)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 100);
        wake = () => (clearTimeout(t), r());
      });
    }
  };
  try {
    await waitFor(/^(\+OK|\* OK)/);
    for (const step of steps) {
      transcript.push(`C: ${step.send}`);
      sock.write(step.send + '\r\n');
      await waitFor(step.until);
    }
  } finally {
    await Promise.race([new Promise((r) => sock.once('close', r)), bound(500)]);
    sock.destroy();
  }
  return transcript;
}

const b64 = (s: string): string => Buffer.from(s, 'latin1').toString('base64');
const pop3Login = (port: number, host?: string) =>
  talk(port, [
    { send: `USER ${USER}`, until: /^\+OK/ },
    { send: `PASS ${PASSWORD}`, until: /^\+OK Logged in/ },
    { send: 'QUIT', until: /^\+OK/ },
  ], host);

/** Lines the login processes wrote: exactly one per session, a Login or a Disconnected. */
const loginProcessLines = (log: string): string[] => log.split('\n').filter((l) => /^\w{3} [ \d]\d [\d:]{8} (pop3|imap)-login: /.test(l));

/** Of those, the successful logins of our user. */
const logins = (lines: string[]): string[] => lines.filter((l) => / (pop3|imap)-login: Info: Login: user=<alice>,/.test(l));

let dovecot: Dovecot;

before(async () => {
  dovecot = await startDovecot();
});

after(async () => {
  await dovecot?.stop();
});

test('a real Dovecot logs POP3/IMAP logins; the default patterns take exactly the successful ones', async () => {
  const d = dovecot;
  const start = d.log().length; // what Dovecot wrote before (start-up, readiness probes) is not ours
  const injected = 'pop3-login: Info: Login: user=<x>, method=PLAIN, rip=6.6.6.6, lip=127.0.0.1';
  // Successful logins, one after the other.
  const ok: Array<() => Promise<string[]>> = [
    () => pop3Login(d.pop3),
    () => talk(d.pop3, [{ send: `AUTH PLAIN ${b64(`\0${USER}\0${PASSWORD}`)}`, until: /^\+OK Logged in/ }, { send: 'QUIT', until: /^\+OK/ }]),
    () => talk(d.imap, [{ send: `a LOGIN ${USER} ${PASSWORD}`, until: /^a OK/ }, { send: 'b LOGOUT', until: /^b OK/ }]),
  ];
  if (d.ipv6) ok.push(() => pop3Login(d.pop3, '::1'));
  for (const session of ok) await session();
  // Failed ones, in parallel, each from its own loopback address: Dovecot delays a failure by
  // auth_failure_delay (2 s) and every later attempt from a failing IP by a growing penalty,
  // which would slow down the successful logins from 127.0.0.1 too.
  const failed = [
    (ip: string) => talk(d.pop3, [{ send: `USER ${USER}`, until: /^\+OK/ }, { send: 'PASS wrong', until: /^-ERR/ }, { send: 'QUIT', until: /^\+OK/ }], '127.0.0.1', ip),
    (ip: string) => talk(d.imap, [{ send: `a LOGIN ${USER} wrong`, until: /^a NO/ }, { send: 'b LOGOUT', until: /^b OK/ }], '127.0.0.1', ip),
    // unknown user, then the client just goes away
    (ip: string) => talk(d.pop3, [{ send: 'USER nosuchuser', until: /^\+OK/ }, { send: `PASS ${PASSWORD}`, until: /^-ERR/ }], '127.0.0.1', ip),
    (ip: string) => talk(d.pop3, [{ send: 'QUIT', until: /^\+OK/ }], '127.0.0.1', ip), // no login attempt at all
    // User names that look like a successful login line (Dovecot logs them, sanitised, on failure).
    (ip: string) => talk(d.pop3, [{ send: `USER ${injected}`, until: /^\+OK/ }, { send: 'PASS x', until: /^-ERR/ }, { send: 'QUIT', until: /^\+OK/ }], '127.0.0.1', ip),
    (ip: string) =>
      talk(d.pop3, [{ send: `AUTH PLAIN ${b64(`\0x\nNov 22 03:51:47 ${injected}\0x`)}`, until: /^-ERR/ }, { send: 'QUIT', until: /^\+OK/ }], '127.0.0.1', ip),
    (ip: string) => talk(d.imap, [{ send: `a LOGIN {${injected.length + 2}+}\r\nx\n${injected} x`, until: /^a NO/ }, { send: 'b LOGOUT', until: /^b OK/ }], '127.0.0.1', ip),
  ];
  await Promise.all(failed.map((session, i) => session(`127.0.0.${i + 2}`)));
  const ours = (): string => d.log().slice(start);
  // Every session ends in one line of the login process: a Login, or a Disconnected with its rip.
  const complete = (): boolean => {
    const mine = loginProcessLines(ours());
    return logins(mine).length === ok.length && failed.every((_, i) => mine.some((l) => l.includes(`rip=127.0.0.${i + 2},`)));
  };
  assert.ok(await waitUntil(complete, 10_000), `a line for each session:\n${ours()}`);

  const lines = ours().split('\n').filter(Boolean);
  const matched = lines.filter((l) => loginIp(l, DEFAULT_LOGIN_PATTERNS) !== undefined);
  const successes = logins(loginProcessLines(ours()));
  assert.equal(successes.length, ok.length, ours());
  assert.deepEqual(matched, successes, 'the default patterns match the successful logins and nothing else');
  assert.deepEqual(
    successes.map((l) => loginIp(l, DEFAULT_LOGIN_PATTERNS)),
    d.ipv6 ? ['127.0.0.1', '127.0.0.1', '127.0.0.1', '::1'] : ['127.0.0.1', '127.0.0.1', '127.0.0.1'],
  );
  // The failures really are in the log, in Dovecot's words, with the client's address, and none counts.
  const failures = lines.filter((l) => /auth failed|no auth attempts|Password mismatch|unknown user|disallowed/.test(l));
  assert.ok(failures.length >= failed.length + 3, ours());
  for (let i = 0; i < failed.length; i++) assert.ok(failures.some((l) => l.includes(`rip=127.0.0.${i + 2},`)), `session from 127.0.0.${i + 2}:\n${ours()}`);
  assert.ok(loginProcessLines(ours()).some((l) => l.includes('rip=6.6.6.6') && / pop3-login: Info: Disconnected/.test(l)), 'the injected user name is in a failed-login line');
  for (const l of failures) assert.equal(loginIp(l, DEFAULT_LOGIN_PATTERNS), undefined, l);
  const all = d.log().split('\n').filter(Boolean);

  if (process.env.MXGUARD_WRITE_FIXTURE === '1') {
    const head = [
      `# Written by Dovecot ${/Dovecot v(\S+)/.exec(d.log())?.[1] ?? '?'} itself (log_path, auth_verbose = yes) in test/popbeforesmtp.test.ts,`,
      '# regenerate with: MXGUARD_WRITE_FIXTURE=1 npx node --test test/popbeforesmtp.test.ts',
      '# Readiness probes (no login); successful logins: POP3 USER/PASS, POP3 AUTH PLAIN, IMAP LOGIN (and POP3 over ::1);',
      '# then failed ones, each from its own 127.0.0.N: wrong password (POP3, IMAP), unknown user, no login at all,',
      '# and user names made to look like a login line.',
    ];
    await fsp.writeFile(FIXTURE, [...head, ...all].join('\n') + '\n');
  }
});

test('POP-before-SMTP end to end: a real Dovecot login lets 127.0.0.1 relay within a second, and not after forward_window', async (t) => {
  const d = dovecot;
  let app: TestApp | undefined;
  let store: Store | undefined;
  try {
    // A login from before mxguard starts: the watcher follows from the end, so it is not replayed.
    const before = logins(loginProcessLines(d.log())).length;
    await pop3Login(d.pop3);
    assert.ok(await waitUntil(() => logins(loginProcessLines(d.log())).length > before, 5000), d.log());
    // mxguard follows Dovecot's log through its own wiring (relay.pop_logs). Loopback may not
    // relay by itself here; only the POP-before-SMTP rule can let it.
    app = await startTestApp({ relay: { forward_from_ip: ['192.0.2.0/24'], forward_user: true, forward_window: '10m', pop_logs: [d.logFile] } });
    const a = app;
    const rcpt = async (to: string): Promise<string> => {
      const c = await RawClient.connect(a.port);
      try {
        await c.reply();
        c.send(`EHLO client.test\r\nMAIL FROM:<${USER}@example.test>\r\nRCPT TO:<${to}>\r\n`);
        return (await c.replies(3))[2] as string;
      } finally {
        c.close();
      }
    };

    store = await openStore(a.config);
    await sleep(600); // a few polls: nothing old is picked up
    assert.match(await rcpt('x@far.test'), /^554 5\.7\.1 .*Relay access denied/, 'no recent login yet');
    assert.equal(await store.relayerGet('127.0.0.1'), undefined);

    // The real login: Dovecot appends its own line; within a second 127.0.0.1 may relay.
    const linesBefore = loginProcessLines(d.log()).length;
    const transcript = await pop3Login(d.pop3);
    const loggedIn = Date.now();
    assert.ok(transcript.some((l) => l.startsWith('S: +OK Logged in')), transcript.join('\n'));
    let reply = '';
    let n = 0;
    while (Date.now() - loggedIn < 1000) {
      reply = await rcpt(`y${++n}@far.test`);
      if (reply.startsWith('250')) break;
      await sleep(25);
    }
    const tookMs = Date.now() - loggedIn;
    assert.equal(reply, '250 2.1.5 Ok', `relay allowed within 1 s of the login (waited ${tookMs} ms)`);
    t.diagnostic(`relaying allowed ${tookMs} ms after Dovecot said "+OK Logged in." (${n} RCPT tries)`);
    const newLines = loginProcessLines(d.log()).slice(linesBefore);
    assert.ok(newLines.some((l) => / pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=127\.0\.0\.1, /.test(l)), newLines.join('\n'));
    const logs = a.logs();
    assert.ok(logs.some((l) => l.msg === '(127.0.0.1) is recent' && l.rcpt === `y${n}@far.test`), 'DMail\'s log line for forward_user');
    const seen = logs.filter((l) => l.msg === 'POP-before-SMTP login');
    assert.deepEqual(seen.map((l) => [l.check, l.ip, l.file]), [['forward_user', '127.0.0.1', d.logFile]], 'one login, logged once');

    // After forward_window (10 m) the same RCPT is refused again; the entry itself is still kept.
    // mxguard runs in this process: its clock (util/clock.ts) is moved on, not slept through.
    advanceClock(9 * 60_000);
    assert.equal(await rcpt('w@far.test'), '250 2.1.5 Ok', 'still within forward_window');
    advanceClock(60_000 + 2000);
    assert.match(await rcpt('z@far.test'), /^554 5\.7\.1 <z@far\.test>: Relay access denied/);
    // Read through another connection, as `mxguard relay` would: the daemon commits its writes in
    // batches of DAEMON_COMMIT_EVERY_MS (src/store/sqlite.ts), so others see them that much later.
    await sleep(DAEMON_COMMIT_EVERY_MS * 5);
    assert.notEqual(await store.relayerGet('127.0.0.1'), undefined, 'kept for relayers_keep, only outside the window');
  } finally {
    resetClock();
    await store?.close();
    await app?.stop();
  }
});
