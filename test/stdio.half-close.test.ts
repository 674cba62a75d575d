// `mxguard stdio` when its input ends before its output (issue 8, defect 6): a client that
// half-closes after a pipelined "." and QUIT (Exim does) still reads 250 and 221, both on a
// TCP socket handed over as descriptors 0 and 1 (inetd, tcpserver, systemd Accept=yes) and on
// two pipes; the end of the input ends the session at once, and inside DATA drops the message.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { stringify } from 'yaml';
import { HalfCloseClient, splitReplies } from './harness/half-close.ts';
import { makeTempDir } from './harness/peers.ts';

// The installed command, as the launchers run it.
const MAIN = path.resolve(import.meta.dirname, '../bin/mxguard.js');
const LIMIT = { timeout: 30_000 };

let dir: string;
let configFile: string;
const children = new Set<ChildProcess>();

before(async () => {
  dir = await makeTempDir('stdio-halfclose');
  configFile = path.join(dir, 'mxguard.yaml');
  fs.writeFileSync(
    configFile,
    stringify({
      hostname: 'mx.example.test',
      data_dir: path.join(dir, 'var'),
      deliver: `maildir:${path.join(dir, 'maildir')}`,
      local_domains: ['example.test'],
      mail_from: { require_domain: false },
    }),
  );
});

after(() => {
  for (const child of children) child.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The environment without any launcher's client variables. */
function cleanEnv(): NodeJS.ProcessEnv {
  const { TCPREMOTEIP: _a, TCPREMOTEPORT: _b, REMOTE_ADDR: _c, REMOTE_PORT: _d, SOCAT_PEERADDR: _e, RBLSMTPD: _f, ...env } = process.env;
  return env;
}

interface StdioRun {
  readonly client: HalfCloseClient;
  /** Resolves with the exit code once the process has ended. */
  readonly exited: Promise<number | null>;
  stderr(): string;
}

function track(child: ChildProcess): { exited: Promise<number | null>; stderr: () => string } {
  children.add(child);
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err += d.toString('utf8')));
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      children.delete(child);
      resolve(code);
    }),
  );
  return { exited, stderr: () => err };
}

/** `mxguard stdio` on a TCP connection: the accepted socket is its descriptors 0 and 1, as inetd does it. */
async function stdioOnSocket(): Promise<StdioRun> {
  const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    const client = await HalfCloseClient.connect((server.address() as net.AddressInfo).port);
    const socket = await accepted;
    const child = spawn(process.execPath, [MAIN, 'stdio', '-c', configFile], { stdio: [socket, socket, 'pipe'], env: cleanEnv() });
    socket.destroy(); // the child has its own copies of the descriptor
    return { client, ...track(child) };
  } finally {
    server.close();
  }
}

/** `mxguard stdio` on two pipes, with tcpserver's variables naming the client. */
function stdioOnPipes(): StdioRun {
  const child = spawn(process.execPath, [MAIN, 'stdio', '-c', configFile], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...cleanEnv(), TCPREMOTEIP: '192.0.2.7', TCPREMOTEPORT: '4000' } });
  const client = HalfCloseClient.over(child.stdout as NonNullable<typeof child.stdout>, child.stdin as NonNullable<typeof child.stdin>);
  return { client, ...track(child) };
}

/** Greeting, EHLO, MAIL, RCPT, DATA: up to the 354. */
async function upToData(c: HalfCloseClient, rcpt: string): Promise<void> {
  assert.match(await c.reply(10_000), /^220 mx\.example\.test /);
  c.send('EHLO exim.test\r\n');
  assert.match(await c.reply(), /^250-mx\.example\.test\n/);
  c.send(`MAIL FROM:<sender@exim.test>\r\nRCPT TO:<${rcpt}>\r\nDATA\r\n`);
  assert.equal(await c.reply(), '250 2.1.0 Ok');
  assert.equal(await c.reply(), '250 2.1.5 Ok');
  assert.match(await c.reply(), /^354 /);
}

const DOT_QUIT = /^250 2\.0\.0 Ok: queued as [0-9A-Z]{14}\r\n221 2\.0\.0 mx\.example\.test Bye\r\n$/;

for (const [name, start] of [
  ['a TCP socket on descriptors 0 and 1', stdioOnSocket],
  ['two pipes', async () => stdioOnPipes()],
] as const) {
  test(`stdio on ${name}: "." and QUIT, then the end of the input: the client reads 250 and 221`, LIMIT, async () => {
    const run = await start();
    await upToData(run.client, 'stdio@example.test');
    run.client.halfClose('Subject: stdio half-close\r\nMessage-ID: <stdio-half@exim.test>\r\n\r\nbody\r\n.\r\nQUIT\r\n');
    assert.match(await run.client.rest(), DOT_QUIT, run.stderr());
    assert.equal(await run.exited, 0, run.stderr());
    assert.match(run.stderr(), /"outcome":"accepted"/);
  });

  test(`stdio on ${name}: the input ends without QUIT: every command is answered and the process ends at once`, LIMIT, async () => {
    const run = await start();
    assert.match(await run.client.reply(10_000), /^220 /);
    run.client.halfClose('EHLO a.test\r\nNOOP\r\nRSET\r\nNOOP');
    const replies = splitReplies(await run.client.rest());
    assert.equal(replies.length, 3, JSON.stringify(replies));
    assert.deepEqual(replies.slice(1), ['250 2.0.0 Ok', '250 2.0.0 Ok']);
    assert.equal(await run.exited, 0, run.stderr());
  });

  test(`stdio on ${name}: the input ends inside DATA: nothing is acknowledged or queued`, LIMIT, async () => {
    const run = await start();
    await upToData(run.client, 'cut@example.test');
    run.client.halfClose('Subject: cut\r\n\r\nno final dot\r\n');
    assert.equal(await run.client.rest(), '');
    assert.equal(await run.exited, 0, run.stderr());
    assert.match(run.stderr(), /client ended its input inside DATA: message dropped/);
    assert.doesNotMatch(run.stderr(), /"outcome":"accepted"/);
  });
}
