// Issue 13, routes (Must show 1, 3 and 5 through SMTP): mxguard running with a real dnsmasq that
// serves MX and A records pointing at loopback addresses, real smtp-sinks there on one port
// (queue.mx_port), and a second mxguard as the MX that refuses an unknown user (550 5.1.1). Relayed mail reaches the right MX host, the next one when the first is down;
// a null MX and a remote refusal bounce, the DSN quoting the remote reply; the default route of a
// foreign domain is mx, never a local mailbox; Maildir routes keep domains apart, each copy with
// Return-Path and Delivered-To.
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startDnsmasq, type DnsmasqPeer } from './harness/dns.ts';
import { sharedPort, sinkAt } from './harness/mx-sinks.ts';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import type { ConfigInput } from '../src/config/schema.ts';

const IP = { mx1: '127.0.0.2', mx2: '127.0.0.3', refuser: '127.0.0.4' } as const;

let dm: DnsmasqPeer;
let port: number;
before(async () => {
  dm = await startDnsmasq({
    records: {
      mx: {
        'far.test': [
          { exchange: 'mx1.far.test', priority: 10 },
          { exchange: 'mx2.far.test', priority: 20 },
        ],
        'nullmx.test': [{ exchange: '.', priority: 0 }],
        'refusing.test': [{ exchange: 'mx.refusing.test', priority: 10 }],
      },
      a: { 'mx1.far.test': [IP.mx1], 'mx2.far.test': [IP.mx2], 'mx.refusing.test': [IP.refuser] },
    },
  });
  port = await sharedPort(Object.values(IP));
});
after(async () => {
  await dm?.stop();
});

async function app(t: TestContext, overrides: Partial<ConfigInput> = {}): Promise<TestApp> {
  const a = await startTestApp({ dns: { servers: [dm.server] }, queue: { mx_port: port, retry: ['1h'] }, local_domains: ['example.com', 'example.org'], ...overrides });
  t.after(() => a.stop());
  return a;
}

/** One message from a loopback client (a relay client by default); the replies to RCPT and to the final dot. */
async function send(a: TestApp, from: string, rcpts: string[], subject: string): Promise<{ rcpts: string[]; data?: string }> {
  const c = await RawClient.connect(a.port, '127.0.0.1');
  try {
    assert.match(await c.reply(), /^220 /);
    c.send('EHLO client.example.com\r\n');
    assert.match(await c.reply(), /^250/);
    c.send(`MAIL FROM:<${from}>\r\n`);
    assert.match(await c.reply(), /^250 /);
    const out: { rcpts: string[]; data?: string } = { rcpts: [] };
    for (const r of rcpts) {
      c.send(`RCPT TO:<${r}>\r\n`);
      out.rcpts.push(await c.reply());
    }
    c.send('DATA\r\n');
    assert.match(await c.reply(), /^354 /);
    c.send(`From: <${from}>\r\nSubject: ${subject}\r\n\r\nhello\r\n.\r\n`);
    out.data = await c.reply(10_000);
    c.send('QUIT\r\n');
    return out;
  } finally {
    c.close();
  }
}

async function waitFor<T>(what: string, get: () => T | undefined, logs: () => unknown, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = get();
    if (v !== undefined) return v;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms\n${JSON.stringify(logs())}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Every file delivered under a Maildir tree (any mailbox), path → content. */
function maildirFiles(root: string): Map<string, string> {
  const out = new Map<string, string>();
  if (!fs.existsSync(root)) return out;
  for (const e of fs.readdirSync(root, { recursive: true, withFileTypes: true })) {
    if (e.isFile() && path.basename(e.parentPath) === 'new') out.set(path.join(e.parentPath, e.name), fs.readFileSync(path.join(e.parentPath, e.name), 'latin1'));
  }
  return out;
}

test('relayed mail goes by MX: the best host gets it, the next one when it is down; never a local mailbox (the default route)', async (t) => {
  const mx1 = await sinkAt(t, IP.mx1, port);
  const mx2 = await sinkAt(t, IP.mx2, port);
  const a = await app(t);
  const r = await send(a, 'sender@example.com', ['x@far.test'], 'by mx 1');
  assert.equal(r.data?.slice(0, 3), '250', JSON.stringify(r));
  const got = await waitFor('mx1.far.test receives it', () => mx1.dumps()[0], a.logs);
  assert.deepEqual(got.rcptArgs, ['<x@far.test>']);
  assert.equal(mx2.files().length, 0, 'not the worse MX');
  assert.deepEqual([...maildirFiles(path.join(a.dir, 'maildir')).keys()], [], 'nothing in a local mailbox (x@far.test is not the local user x)');
  const delivered = await waitFor('the delivered line', () => a.logs().find((l) => l.msg === 'delivered' && l.rcpt === 'x@far.test'), a.logs);
  assert.equal(delivered.relay, 'mx');
  assert.match(String(delivered.reply), /^250 .*\(host mx1\.far\.test\[127\.0\.0\.2\]:\d+\)$/);

  await mx1.stop();
  const r2 = await send(a, 'sender@example.com', ['y@far.test'], 'by mx 2');
  assert.equal(r2.data?.slice(0, 3), '250');
  const got2 = await waitFor('mx2.far.test receives it', () => mx2.dumps()[0], a.logs);
  assert.deepEqual(got2.rcptArgs, ['<y@far.test>']);
});

test('every MX down: deferred, then delivered when one comes back (queue flush)', async (t) => {
  const a = await app(t, { queue: { mx_port: port, retry: ['1s'] } });
  const r = await send(a, 'sender@example.com', ['z@far.test'], 'deferred');
  assert.equal(r.data?.slice(0, 3), '250');
  const deferred = await waitFor('deferred', () => a.logs().find((l) => l.msg === 'deferred' && l.rcpt === 'z@far.test'), a.logs);
  assert.match(String(deferred.reply), /all 2 MX addresses of far\.test tried/);
  const mx2 = await sinkAt(t, IP.mx2, port);
  const got = await waitFor('delivered on a retry', () => mx2.dumps()[0], a.logs, 15_000);
  assert.deepEqual(got.rcptArgs, ['<z@far.test>']);
});

test('a null MX bounces at once; a remote refusal bounces with a DSN quoting the remote reply and naming the host', async (t) => {
  // The remote MX is a real mxguard for refusing.test that knows one user: bob gets 550 5.1.1.
  const users = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-remote-')), 'recipients');
  fs.writeFileSync(users, 'alice@refusing.test\n');
  const remote = await startTestApp({ hostname: 'mx.refusing.test', listen: [`${IP.refuser}:${port}`], local_domains: ['refusing.test'], recipients: { file: users }, relay: { forward_from_ip: [] } });
  t.after(async () => {
    await remote.stop();
    fs.rmSync(path.dirname(users), { recursive: true, force: true });
  });
  const a = await app(t);
  const r = await send(a, 'sender@example.com', ['nobody@nullmx.test', 'bob@refusing.test'], 'bounces');
  assert.equal(r.data?.slice(0, 3), '250');
  // One bounce to the local sender, in its Maildir, with a block for each recipient.
  const files = await a.waitMaildir('sender', 1, 10_000);
  assert.equal(files.length, 1, JSON.stringify(a.logs()));
  // The report's blocks, folded lines joined.
  const blocks = fs.readFileSync(files[0] as string, 'latin1').replace(/\r\n[ \t]+/g, ' ').split(/\r\n\r\n/);
  const nullMx = blocks.find((x) => /^Final-Recipient: rfc822; nobody@nullmx\.test$/m.test(x)) ?? '';
  assert.match(nullMx, /^Status: 5\.1\.10$/m);
  assert.match(nullMx, /^Diagnostic-Code: smtp; 556 5\.1\.10 .*null MX/m);
  assert.doesNotMatch(nullMx, /^Remote-MTA:/m, 'no remote host said it');
  const refused = blocks.find((x) => /^Final-Recipient: rfc822; bob@refusing\.test$/m.test(x)) ?? '';
  assert.match(refused, /^Remote-MTA: dns; mx\.refusing\.test$/m);
  assert.match(refused, /^Status: 5\.1\.1$/m);
  assert.match(refused, /^Diagnostic-Code: smtp; 550 5\.1\.1 <bob@refusing\.test>: [^\r\n]* \(host mx\.refusing\.test\[127\.0\.0\.4\]:\d+\)/m);
  assert.equal(a.logs().filter((l) => l.msg === 'deferred').length, 0, 'neither is retried');
});

test('Maildir routes keep postmaster@example.com and postmaster@example.org apart; each copy has Return-Path and Delivered-To', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-routes-'));
  t.after(() => fs.rmSync(root, { recursive: true, force: true }));
  const b = await app(t, { deliver: `maildir:${root}/%d/%u`, routes: { 'example.org': `maildir:${root}/org/%d/%u` } });
  const r = await send(b, 'Sender@Far.test', ['postmaster@example.com', 'postmaster@example.org'], 'two postmasters');
  assert.deepEqual(r.rcpts.map((x) => x.slice(0, 3)), ['250', '250']);
  assert.equal(r.data?.slice(0, 3), '250');
  const files = await waitFor('both copies', () => {
    const m = maildirFiles(root);
    return m.size >= 2 ? m : undefined;
  }, b.logs);
  const byBox = new Map([...files].map(([f, text]) => [path.relative(root, path.dirname(path.dirname(f))), text]));
  assert.deepEqual([...byBox.keys()].sort(), ['example.com/postmaster', 'org/example.org/postmaster']);
  assert.match(byBox.get('example.com/postmaster') ?? '', /^Return-Path: <Sender@far\.test>\r\nDelivered-To: postmaster@example\.com\r\nReceived: /);
  assert.match(byBox.get('org/example.org/postmaster') ?? '', /^Return-Path: <Sender@far\.test>\r\nDelivered-To: postmaster@example\.org\r\nReceived: /);
  const lines = b.logs().filter((l) => l.msg === 'delivered');
  assert.deepEqual(lines.map((l) => String(l.relay)).sort(), [`maildir:${root}/%d/%u`, `maildir:${root}/org/%d/%u`]);
});
