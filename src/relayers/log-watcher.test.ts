// The POP/IMAP log watcher: loginIp on real Dovecot lines (test/fixtures/dovecot-login.log, written
// by Dovecot itself) and on Courier's, then the follower on temp files. The follower's store is a
// small in-memory fake (plumbing only); test/popbeforesmtp.test.ts runs it against the real store.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { COURIER_LOGIN, DEFAULT_LOGIN_PATTERNS, DOVECOT_LOGIN, MAX_LINE_BYTES, loginIp, loginPatterns, startLogWatcher, type LogWatcher } from './log-watcher.ts';
import type { Relayer, Store } from '../store/store.ts';
import type { Logger } from '../util/log.ts';

const FIXTURE = path.resolve(import.meta.dirname, '../../test/fixtures/dovecot-login.log');
const D = DEFAULT_LOGIN_PATTERNS;

// --- loginIp ---------------------------------------------------------------------------------

test('loginIp: every line a real Dovecot wrote; only the successful logins count', () => {
  const lines = fs
    .readFileSync(FIXTURE, 'utf8')
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('#'));
  const logins = lines.filter((l) => /^\w{3} [ \d]\d [\d:]{8} (pop3|imap)-login: Info: Login: /.test(l));
  assert.ok(logins.length >= 3 && lines.length > logins.length + 10, 'the fixture has successes and failures');
  for (const l of lines) {
    const ip = loginIp(l, D);
    if (logins.includes(l)) assert.equal(ip, /rip=::1,/.test(l) ? '::1' : '127.0.0.1', l);
    else assert.equal(ip, undefined, l);
  }
  assert.ok(lines.some((l) => l.includes('rip=6.6.6.6')), 'the fixture holds the forged user names');
});

test('loginIp: Dovecot success lines, log_path and syslog formats, IPv4 and IPv6', () => {
  const ok: Array<[string, string]> = [
    ['Nov 22 04:00:05 pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1, mpid=17875, secured, session=<25wxg9VgUMd/AAAB>', '127.0.0.1'],
    ['Nov 22 04:00:05 imap-login: Info: Login: user=<alice>, method=PLAIN, rip=192.0.2.10, lip=192.0.2.1, mpid=17879, TLS, session=<ljUyg9VgXM9/AAAB>', '192.0.2.10'],
    ['Nov 22 04:00:05 pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=::1, lip=::1, mpid=17881, secured, session=<PXMyg9VgCL4AAAAAAAAAAAAAAAAAAAAB>', '::1'],
    ['Mar  3 10:00:01 mx1 dovecot: pop3-login: Login: user=<bob@example.com>, method=PLAIN, rip=192.0.2.10, lip=192.0.2.1, mpid=4242, TLS, session=<abc>', '192.0.2.10'],
    ['2026-03-03T10:00:01.123456+01:00 mx1 dovecot[812]: imap-login: Login: user=<bob>, method=CRAM-MD5, rip=2001:DB8:0::A, lip=2001:db8::1, mpid=1, TLS', '2001:db8::a'],
    ['Mar  3 10:00:01 mx1 dovecot: pop3-login: Login: user=<bob>, method=PLAIN, rip=::ffff:192.0.2.10, lip=::ffff:192.0.2.1, TLS', '192.0.2.10'],
    ['pop3-login: Login: user=<carol>, method=LOGIN, rip=198.51.100.7, lip=198.51.100.1', '198.51.100.7'],
  ];
  for (const [line, ip] of ok) assert.equal(loginIp(line, D), ip, line);
  for (const [line] of ok) assert.equal(loginIp(line, [COURIER_LOGIN]), undefined, 'the Courier pattern alone does not take Dovecot lines');
});

test('loginIp: failed, aborted and forged Dovecot lines never count', () => {
  const no = [
    // Written by Dovecot 2.3.19 (see the fixture):
    'Nov 22 04:00:07 pop3-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 2 secs): user=<alice>, method=PLAIN, rip=127.0.0.2, lip=127.0.0.1, session=<+eMyg9Vg75B/AAAC>',
    'Nov 22 04:00:07 pop3-login: Info: Disconnected: Connection closed (auth failed, 1 attempts in 2 secs): user=<nosuchuser>, method=PLAIN, rip=127.0.0.4, lip=127.0.0.1, session=<4P0yg9VgZ5x/AAAE>',
    'Nov 22 04:00:05 pop3-login: Info: Disconnected: Aborted login by logging out (no auth attempts in 0 secs): user=<>, rip=127.0.0.5, lip=127.0.0.1, session=<JQ0zg9Vg/YZ/AAAF>',
    'Nov 22 04:00:05 auth: Info: passwd-file(alice,127.0.0.2,<+eMyg9Vg75B/AAAC>): Password mismatch',
    'Nov 22 04:00:05 pop3(alice)<17875><25wxg9VgUMd/AAAB>: Info: Disconnected: Logged out top=0/0, retr=0/0, del=0/0, size=0',
    'Nov 22 04:00:07 pop3-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 2 secs): user=<pop3-login: Info: Login: user=<x>, method=PLAIN, rip=6.6.6.6, lip=127.0.0.1>, method=PLAIN, rip=127.0.0.6, lip=127.0.0.1, session=<wjEzg9Vge5d/AAAG>',
    'Nov 22 04:00:05 auth: Info: plain(?,127.0.0.6,<wjEzg9Vge5d/AAAG>): Username character disallowed by auth_username_chars: 0x3a (username: pop3-login: Info: Login: user=<x>, method=PLAIN, rip=6.6.6.6, lip=127.0.0.1)',
    // The same forgeries without the session id Dovecot puts in front of them:
    'Nov 22 04:00:05 auth: Info: plain(?,127.0.0.6): Username character disallowed (username: pop3-login: Info: Login: user=<x>, method=PLAIN, rip=6.6.6.6, lip=1)',
    'Nov 22 04:00:05 auth: passwd-file(pop3-login: Login: user=<x>, method=PLAIN, rip=6.6.6.6, lip=1): unknown user',
    // Other wordings of failures (Dovecot 2.2 and 2.4):
    'Mar  3 10:00:01 mx1 dovecot: imap-login: Aborted login (auth failed, 3 attempts in 14 secs): user=<alice>, method=PLAIN, rip=192.0.2.10, lip=192.0.2.1, TLS',
    'Mar  3 10:00:01 mx1 dovecot: imap-login: Login aborted: Connection closed (auth failed, 1 attempts in 2 secs) (auth_failed): user=<alice>, method=PLAIN, rip=192.0.2.10, lip=192.0.2.1',
    'Mar  3 10:00:01 mx1 dovecot: submission-login: Login: user=<alice>, method=PLAIN, rip=192.0.2.10, lip=192.0.2.1',
    // Not an address:
    'Nov 22 04:00:05 pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=999.0.2.10, lip=127.0.0.1',
    'Nov 22 04:00:05 pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=1:2:3, lip=127.0.0.1',
    '',
    '\u0000\u0000\ufffd binary \u0001 junk',
  ];
  for (const line of no) assert.equal(loginIp(line, D), undefined, line);
});

test('loginIp: Courier successful logins (mapped IPv4 made plain, IPv6), not its failures', () => {
  const ok: Array<[string, string]> = [
    ['Oct  3 14:07:48 server courierpop3login: LOGIN, user=murray, ip=[::ffff:192.168.0.2]', '192.168.0.2'],
    ['Feb 19 00:03:39 hal courierpop3login: LOGIN, user=alice@example.com, ip=[::ffff:192.0.2.10], port=[41234]', '192.0.2.10'],
    ['Feb 20 13:46:05 localhost imaplogin: LOGIN, user=foo, ip=[::ffff:192.0.2.11], protocol=IMAP', '192.0.2.11'],
    ['Apr 15 06:54:50 bovo pop3d: LOGIN, user=april@example.com, ip=[::ffff:198.51.100.4], port=[1060]', '198.51.100.4'],
    ['Sep  2 11:01:59 web-server imapd-ssl: LOGIN, user=x@example.com, ip=[::1], port=[48801], protocol=IMAP', '::1'],
    ['Oct  8 19:10:30 (none) imapd-ssl: LOGIN, user=root@localhost, ip=[::ffff:127.0.0.1], port=[58570], protocol=IMAP', '127.0.0.1'],
    ['Jan 20 10:15:30 server pop3d-ssl[123]: LOGIN, user=testuser, ip=[2001:db8::10], port=[12345]', '2001:db8::10'],
  ];
  for (const [line, ip] of ok) assert.equal(loginIp(line, D), ip, line);
  for (const [line] of ok) assert.equal(loginIp(line, [DOVECOT_LOGIN]), undefined);
  const no = [
    'Sep 21 00:51:50 server01 courierpop3login: LOGIN FAILED, ip=[::ffff:88.73.124.13]',
    'Sep 21 00:51:50 server01 imapd: LOGIN FAILED, user=alice, ip=[::ffff:192.0.2.10]',
    'Sep 21 00:51:50 server01 pop3d: LOGIN FAILED, method=PLAIN, user=alice, ip=[::ffff:192.0.2.10]',
    'Oct  2 02:07:36 www courierpop3login: LOGOUT, user=alice, ip=[::ffff:192.0.2.10], top=0, retr=0, time=0',
    'Oct  2 02:07:35 www courierpop3login: Connection, ip=[::ffff:192.0.2.10]',
    'Feb 18 23:48:37 hal imaplogin: DISCONNECTED, user=alice, ip=[::ffff:127.0.0.1], headers=0, body=0, time=0',
    // A user name forged to look like a login, in a failure line:
    'Sep 21 00:51:50 server01 imapd: LOGIN FAILED, user=x imapd: LOGIN, user=a, ip=[6.6.6.6], ip=[::ffff:192.0.2.10]',
  ];
  for (const line of no) assert.equal(loginIp(line, D), undefined, line);
});

test('loginIp: relay.pop_log_pattern replaces the defaults', () => {
  const custom = loginPatterns(String.raw`qpopper\[\d+\]: Stats: \S+ \d+ \d+ \d+ \d+ \S+ (?<ip>\S+)$`);
  assert.equal(custom.length, 1);
  assert.equal(loginIp('Mar  3 10:00:01 mx1 qpopper[99]: Stats: alice 0 0 2 1234 mx1 192.0.2.44', custom), '192.0.2.44');
  assert.equal(loginIp('Mar  3 10:00:01 mx1 qpopper[99]: Stats: alice 0 0 2 1234 mx1 ::FFFF:192.0.2.45', custom), '192.0.2.45');
  assert.equal(loginIp('Mar  3 10:00:01 mx1 qpopper[99]: Stats: alice 0 0 2 1234 mx1 not-an-ip', custom), undefined);
  assert.equal(loginIp('Nov 22 04:00:05 pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1', custom), undefined);
  assert.equal(loginPatterns(undefined), D);
  assert.throws(() => loginPatterns('Login from (\\S+)'), /named group/);
});

// --- the follower --------------------------------------------------------------------------

interface Added {
  ip: string;
  at: number;
  keepMs: number;
}

/** The relayers half of a Store in memory; failNext makes the next adds reject. */
function fakeStore(): Store & { added: Added[]; failNext: number } {
  const added: Added[] = [];
  const s = {
    kind: 'fake',
    added,
    failNext: 0,
    async relayerAdd(ip: string, at: number, keepMs: number) {
      if (s.failNext > 0) {
        s.failNext -= 1;
        throw new Error('store down');
      }
      added.push({ ip, at, keepMs });
    },
    async relayerGet(ip: string) {
      return added.findLast((a) => a.ip === ip)?.at;
    },
    async relayerDelete() {
      return 0;
    },
    async relayerExpire() {
      return 0;
    },
    async relayerList(): Promise<Relayer[]> {
      return added.map(({ ip, at }) => ({ ip, at }));
    },
    async counterIncr() {
      return 1;
    },
    async counterGet() {
      return 0;
    },
    async counterReset() {},
    async counterDecr() {},
    async cacheSet() {},
    async cacheGet() {
      return undefined;
    },
    async cacheDelete() {
      return false;
    },
    async cacheList() {
      return [];
    },
    async rateAdd() {
      return 0;
    },
    async rateGet() {
      return 0;
    },
    async close() {},
  };
  return s;
}

function memoryLog(): { log: Logger; lines: () => Array<Record<string, unknown>> } {
  const out: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      out.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      done();
    },
  });
  return { log: pino({ level: 'debug' }, sink), lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

const login = (ip: string, user = 'alice') =>
  `Nov 22 04:00:05 pop3-login: Info: Login: user=<${user}>, method=PLAIN, rip=${ip}, lip=127.0.0.1, mpid=1, secured, session=<x>\n`;
const noise = 'Nov 22 04:00:05 pop3(alice)<1><x>: Info: Disconnected: Logged out top=0/0, retr=0/0, del=0/0, size=0\n';

async function waitFor(cond: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A temp dir, a fake store and a watcher on `files` (relative to the dir); all undone after. */
async function withWatcher(
  files: string[],
  fn: (w: { dir: string; file: string; store: ReturnType<typeof fakeStore>; logs: () => Array<Record<string, unknown>>; watcher: LogWatcher; ips: () => string[] }) => Promise<void>,
  opts: { before?: (dir: string) => void; pollMs?: number; pattern?: string } = {},
): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxg-logwatch-'));
  const store = fakeStore();
  const { log, lines } = memoryLog();
  let watcher: LogWatcher | undefined;
  try {
    opts.before?.(dir);
    const paths = files.map((f) => path.join(dir, f));
    watcher = startLogWatcher({ files: paths, store, keepMs: 86_400_000, log, pollMs: opts.pollMs ?? 50, pattern: opts.pattern });
    await fn({ dir, file: paths[0] as string, store, logs: lines, watcher, ips: () => store.added.map((a) => a.ip) });
  } finally {
    await watcher?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('follower: starts at the end, then counts whole and split lines as they are appended', async () => {
  await withWatcher(
    ['dovecot.log'],
    async ({ file, store, logs, ips }) => {
      await sleep(200);
      assert.deepEqual(ips(), [], 'old logins are not replayed');
      const t0 = Date.now();
      fs.appendFileSync(file, noise + login('192.0.2.10'));
      await waitFor(() => ips().length === 1, 'an appended login');
      assert.ok(Date.now() - t0 < 1000);
      const [a] = store.added;
      assert.equal(a?.keepMs, 86_400_000);
      const at = a?.at ?? 0;
      assert.ok(Number.isInteger(at) && at >= Math.floor(t0 / 1000) && at <= Date.now() / 1000, `now, in whole epoch seconds: ${at}`);
      const entry = logs().find((l) => l.msg === 'POP-before-SMTP login');
      assert.deepEqual([entry?.check, entry?.ip, entry?.file, entry?.level], ['forward_user', '192.0.2.10', file, 30]);

      // A line in three writes: nothing until its newline.
      const line = login('2001:db8::7');
      fs.appendFileSync(file, line.slice(0, 30));
      await sleep(150);
      fs.appendFileSync(file, line.slice(30, 90));
      await sleep(150);
      assert.deepEqual(ips(), ['192.0.2.10']);
      fs.appendFileSync(file, line.slice(90));
      await waitFor(() => ips().length === 2, 'the completed line');
      assert.deepEqual(ips(), ['192.0.2.10', '2001:db8::7']);
      // CRLF endings and a Courier line in the same file.
      fs.appendFileSync(file, login('192.0.2.11').replace('\n', '\r\n') + 'Oct  3 14:07:48 mx courierpop3login: LOGIN, user=bob, ip=[::ffff:192.0.2.12]\n');
      await waitFor(() => ips().length === 4, 'CRLF and Courier lines');
      assert.deepEqual(ips().slice(2), ['192.0.2.11', '192.0.2.12']);
    },
    { before: (dir) => fs.writeFileSync(path.join(dir, 'dovecot.log'), login('198.51.100.1') + noise + login('198.51.100.2')) },
  );
});

test('follower: a line being written at start-up is read whole', async () => {
  const line = login('192.0.2.20');
  await withWatcher(
    ['dovecot.log'],
    async ({ file, ips }) => {
      fs.appendFileSync(file, line.slice(40));
      await waitFor(() => ips().length === 1, 'the rest of the line');
      assert.deepEqual(ips(), ['192.0.2.20']);
    },
    { before: (dir) => fs.writeFileSync(path.join(dir, 'dovecot.log'), login('198.51.100.1') + line.slice(0, 40)) },
  );
});

test('follower: rotation by rename and a new file; the old file is read to its end', async () => {
  await withWatcher(
    ['dovecot.log'],
    async ({ dir, file, ips, logs }) => {
      fs.appendFileSync(file, login('192.0.2.1'));
      await waitFor(() => ips().length === 1, 'the first login');
      fs.renameSync(file, path.join(dir, 'dovecot.log.1'));
      // The daemon has not reopened its log yet: it still writes to the renamed file.
      fs.appendFileSync(path.join(dir, 'dovecot.log.1'), login('192.0.2.2'));
      await waitFor(() => ips().length === 2, 'a login written to the renamed file');
      fs.writeFileSync(file, noise + login('192.0.2.3'));
      await waitFor(() => ips().length === 3, 'the new file, from its start');
      fs.appendFileSync(path.join(dir, 'dovecot.log.1'), login('192.0.2.4')); // a late writer
      fs.appendFileSync(file, login('192.0.2.5'));
      await waitFor(() => ips().length === 5, 'both files');
      assert.deepEqual(ips().sort(), ['192.0.2.1', '192.0.2.2', '192.0.2.3', '192.0.2.4', '192.0.2.5']);
      assert.ok(logs().some((l) => l.msg === 'POP/IMAP log rotated; reading the new file from its start'));
      // Rotated again, this time straight to a new file (logrotate's create): nothing is lost.
      fs.renameSync(file, path.join(dir, 'dovecot.log.2'));
      fs.writeFileSync(file, login('192.0.2.6'));
      await waitFor(() => ips().length === 6, 'the second new file');
    },
    { before: (dir) => fs.writeFileSync(path.join(dir, 'dovecot.log'), '') },
  );
});

test('follower: truncation (copytruncate) reads the file again from its start', async () => {
  await withWatcher(
    ['dovecot.log'],
    async ({ file, ips, logs }) => {
      fs.appendFileSync(file, noise + noise + login('192.0.2.1'));
      await waitFor(() => ips().length === 1, 'the first login');
      fs.truncateSync(file, 0);
      await sleep(150);
      fs.appendFileSync(file, login('192.0.2.2'));
      await waitFor(() => ips().length === 2, 'a login after the truncation');
      assert.deepEqual(ips(), ['192.0.2.1', '192.0.2.2']);
      assert.ok(logs().some((l) => l.msg === 'POP/IMAP log truncated; reading it from its start'));
    },
    { before: (dir) => fs.writeFileSync(path.join(dir, 'dovecot.log'), noise.repeat(20)) },
  );
});

test('follower: a file (and its directory) created after start is waited for and read from its start', async () => {
  await withWatcher(['dovecot.log', 'later/pop.log'], async ({ dir, file, ips, logs }) => {
    await sleep(150);
    assert.deepEqual(ips(), []);
    assert.equal(logs().filter((l) => l.msg === 'POP/IMAP log does not exist yet; waiting for it').length, 2);
    fs.writeFileSync(file, login('192.0.2.1') + login('192.0.2.2'));
    await waitFor(() => ips().length === 2, 'the new file');
    fs.mkdirSync(path.join(dir, 'later'));
    fs.writeFileSync(path.join(dir, 'later/pop.log'), login('192.0.2.3'));
    await waitFor(() => ips().length === 3, 'the file in a new directory');
    fs.appendFileSync(path.join(dir, 'later/pop.log'), login('192.0.2.4'));
    await waitFor(() => ips().length === 4, 'an append to it');
    assert.deepEqual(ips(), ['192.0.2.1', '192.0.2.2', '192.0.2.3', '192.0.2.4']);
    assert.equal(logs().filter((l) => l.level === 40).length, 0, 'a missing file is not a warning');
  });
});

test('follower: a path that cannot be read at start-up is warned about once, then followed from its end', async () => {
  await withWatcher(
    ['dovecot.log', 'fifo.log'],
    async ({ dir, file, ips, logs }) => {
      await sleep(200);
      const warnings = logs().filter((l) => l.level === 40);
      assert.deepEqual(
        warnings.map((l) => [l.file, l.err]),
        [
          [file, 'not a regular file'],
          [path.join(dir, 'fifo.log'), 'not a regular file'],
        ],
        'once each, not once per poll; the FIFO does not block',
      );
      fs.rmdirSync(file);
      fs.writeFileSync(file, login('198.51.100.1'));
      await waitFor(() => logs().some((l) => l.msg === 'following POP/IMAP log for POP-before-SMTP logins'), 'the file being followed');
      fs.appendFileSync(file, login('192.0.2.1'));
      await waitFor(() => ips().length === 1, 'the appended login');
      assert.deepEqual(ips(), ['192.0.2.1'], 'what the file held before it could be read is not replayed');
    },
    {
      before: (dir) => {
        fs.mkdirSync(path.join(dir, 'dovecot.log'));
        execFileSync('mkfifo', [path.join(dir, 'fifo.log')]);
      },
    },
  );
});

test('follower: many lines fast, written in chunks that split lines anywhere, each counted once', async () => {
  await withWatcher(
    ['dovecot.log'],
    async ({ file, ips }) => {
      const want: string[] = [];
      let text = '';
      for (let i = 0; i < 3000; i++) {
        const ip = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
        want.push(ip);
        text += login(ip) + (i % 3 === 0 ? noise : '');
      }
      const fd = fs.openSync(file, 'a');
      let seed = 7;
      for (let at = 0; at < text.length; ) {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        const n = 1 + (seed % 9000);
        fs.writeSync(fd, text.slice(at, at + n));
        at += n;
        if (seed % 5 === 0) await sleep(1);
      }
      fs.closeSync(fd);
      await waitFor(() => ips().length >= want.length, 'every login', 5000);
      await sleep(100);
      assert.deepEqual(ips(), want);
    },
    { before: (dir) => fs.writeFileSync(path.join(dir, 'dovecot.log'), '') },
  );
});

test('follower: very long and binary lines are skipped, the lines after them still count', async () => {
  await withWatcher(
    ['dovecot.log'],
    async ({ file, ips }) => {
      // Longer than the bound and ending like a login: skipped whole, never matched by its tail.
      fs.appendFileSync(file, 'x'.repeat(MAX_LINE_BYTES * 6));
      await sleep(100);
      fs.appendFileSync(file, ' ' + login('6.6.6.6'));
      fs.appendFileSync(file, Buffer.from([0, 0, 0xff, 0xfe, 0x80, 0x0d, 0x01, 0x0a]));
      fs.appendFileSync(file, Buffer.concat([Buffer.from('\0\0\0'), Buffer.from(login('192.0.2.9'))]));
      fs.appendFileSync(file, `${'y'.repeat(MAX_LINE_BYTES + 10)}${login('6.6.6.7')}`);
      fs.appendFileSync(file, login('192.0.2.10'));
      await waitFor(() => ips().length === 2, 'the good lines');
      await sleep(100);
      assert.deepEqual(ips(), ['192.0.2.9', '192.0.2.10']);
    },
    { before: (dir) => fs.writeFileSync(path.join(dir, 'dovecot.log'), '') },
  );
});

test('follower: a store that fails is logged and the watcher goes on', async () => {
  await withWatcher(
    ['dovecot.log'],
    async ({ file, store, ips, logs }) => {
      store.failNext = 2;
      fs.appendFileSync(file, login('192.0.2.1') + login('192.0.2.2'));
      await waitFor(() => logs().filter((l) => l.level === 40).length === 2, 'two warnings');
      fs.appendFileSync(file, login('192.0.2.3'));
      await waitFor(() => ips().length === 1, 'the next login');
      assert.deepEqual(ips(), ['192.0.2.3']);
      const warn = logs().find((l) => l.level === 40);
      assert.deepEqual([warn?.check, warn?.ip, warn?.err], ['forward_user', '192.0.2.1', 'store down']);
    },
    { before: (dir) => fs.writeFileSync(path.join(dir, 'dovecot.log'), '') },
  );
});

test('follower: a custom pattern; the default poll counts a login within a second; stop() ends it', async () => {
  await withWatcher(
    ['pop.log'],
    async ({ file, ips, watcher }) => {
      fs.appendFileSync(file, login('192.0.2.1') + 'qpopper[1]: Stats: alice 0 0 0 0 mx 192.0.2.2\n');
      const t0 = Date.now();
      await waitFor(() => ips().length === 1, 'the custom line', 1000);
      assert.ok(Date.now() - t0 < 1000);
      assert.deepEqual(ips(), ['192.0.2.2']);
      await watcher.stop();
      await watcher.stop();
      fs.appendFileSync(file, 'qpopper[1]: Stats: alice 0 0 0 0 mx 192.0.2.3\n');
      await sleep(400);
      assert.deepEqual(ips(), ['192.0.2.2'], 'nothing after stop()');
    },
    { before: (dir) => fs.writeFileSync(path.join(dir, 'pop.log'), ''), pollMs: 250, pattern: String.raw`qpopper\[\d+\]: Stats: \S+ \d+ \d+ \d+ \d+ \S+ (?<ip>\S+)$` },
  );
});
