// The PROXY protocol (issue 4, "front-end operation"): mxguard behind a real HAProxy sending
// send-proxy (v1) and send-proxy-v2, on a listener under proxy_protocol.listen. The session,
// its checks and the Received header see the client HAProxy names — clients here connect from
// other loopback addresses (swaks --local-interface) so that it differs from HAProxy's own.
// Also: only proxy_protocol.trusted may connect there, a connection without a valid header (or
// without one in time) is dropped before the banner, v2 LOCAL (a health check) gets a session of
// its own addresses that may not send mail, a header naming no client (PROXY UNKNOWN, AF_UNIX,
// AF_UNSPEC) is dropped (issue 9), and a proxy listener that is not a listen address is a config
// error.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { withTestApp, type TestApp } from './harness/app.ts';
import { startHaproxy } from './harness/haproxy.ts';
import { runSwaks, waitUntil } from './harness/peers.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { checkConfigFile } from '../src/config/load.ts';

const LIMIT = { timeout: 60_000 };
const BEHIND_PROXY = { proxy_protocol: { listen: ['127.0.0.1:0'], timeout: '1s' } };

let dir = '';
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-proxy-'));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function swaksVia(port: number, from: string, to: string, subject: string) {
  return runSwaks(['--server', '127.0.0.1', '--port', String(port), '--local-interface', from, '--helo', 'mail.client.test', '--from', 'sender@src.test', '--to', to, '--header', `Subject: ${subject}`, '--timeout', '20']);
}

for (const version of ['v1', 'v2'] as const) {
  test(`HAProxy send-proxy${version === 'v2' ? '-v2' : ''}: the session sees the client HAProxy names`, LIMIT, async () => {
    await withTestApp({ ...BEHIND_PROXY, ban: { ip: ['127.0.0.9'] } }, async (app: TestApp) => {
      const hap = await startHaproxy({ backend: { host: '127.0.0.1', port: app.port }, sendProxy: version });
      try {
        const ok = await swaksVia(hap.port, '127.0.0.8', 'alice@example.test', `via ${version}`);
        assert.match(ok.stdout, /<- {2}250 2\.0\.0 Ok: queued as/, ok.stdout);
        const [file] = await app.waitMaildir('alice', 1);
        assert.ok(file, 'delivered');
        assert.match(fs.readFileSync(file, 'latin1'), /^Return-Path: <sender@src\.test>\r\nDelivered-To: alice@example\.test\r\nReceived: from mail\.client\.test \(\[127\.0\.0\.8\]\)/);

        // The checks judge the proxied client too: ban.ip names 127.0.0.9, not HAProxy's 127.0.0.1.
        const banned = await swaksVia(hap.port, '127.0.0.9', 'alice@example.test', 'banned');
        assert.match(banned.stdout, /<\*\* 5\d\d /, banned.stdout);
        assert.ok(app.logs().some((l) => l.ip === '127.0.0.9' && l.check === 'ban_ip'), 'refused by ban_ip for 127.0.0.9');
      } finally {
        await hap.stop();
      }
    });
  });
}

test('only proxy_protocol.trusted may connect to a proxy listener', LIMIT, async () => {
  await withTestApp({ proxy_protocol: { listen: ['127.0.0.1:0'], trusted: ['192.0.2.1'] } }, async (app) => {
    const hap = await startHaproxy({ backend: { host: '127.0.0.1', port: app.port }, sendProxy: 'v2' });
    try {
      const r = await swaksVia(hap.port, '127.0.0.8', 'alice@example.test', 'untrusted');
      assert.doesNotMatch(r.stdout, /<- {2}220 /, 'no banner');
      assert.ok(await waitUntil(() => app.logs().some((l) => l.check === 'proxy_protocol' && l.setting === 'proxy_protocol.trusted'), 5000));
    } finally {
      await hap.stop();
    }
  });
});

test('a trusted peer without a valid PROXY header, or too slow with it, is dropped before the banner', LIMIT, async () => {
  await withTestApp(BEHIND_PROXY, async (app) => {
    const plain = await RawClient.connect(app.port);
    plain.send('EHLO mail.client.test\r\n');
    assert.ok(await plain.closed(), 'closed');
    assert.equal(plain.ended, true);

    const silent = await RawClient.connect(app.port);
    const t0 = Date.now();
    assert.ok(await silent.closed(5000), 'closed after proxy_protocol.timeout');
    assert.ok(Date.now() - t0 >= 900, 'not before the timeout');
    const reasons = app.logs().filter((l) => l.check === 'proxy_protocol').map((l) => String(l.reason));
    assert.equal(reasons.length, 2, reasons.join('; '));
    assert.match(reasons[1] ?? '', /no header within 1000 ms/);
  });
});

test('PROXY v2 LOCAL (a health check): a session with the connection\'s own addresses; bytes after the header are SMTP', LIMIT, async () => {
  await withTestApp(BEHIND_PROXY, async (app) => {
    const c = await RawClient.connect(app.port);
    const local = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00, 0x00]);
    c.send(local);
    assert.match(await c.reply(), /^220 mx\.example\.test /);
    // v1 in one write with the first command behind it: the command is kept for the session.
    const d = await RawClient.connect(app.port);
    d.send('PROXY TCP4 198.51.100.7 127.0.0.1 40000 25\r\nNOOP\r\n');
    assert.deepEqual(await d.replies(2), ['220 mx.example.test ESMTP mxguard', '250 2.0.0 Ok']);
    c.close();
    d.close();
    assert.ok(await waitUntil(() => app.logs().some((l) => l.ip === '198.51.100.7' && l.msg === 'connect'), 2000));
  });
});

const V2_SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

function v2Header(verCmd: number, famProto: number, block: Buffer): Buffer {
  const fixed = Buffer.from([verCmd, famProto, 0, 0]);
  fixed.writeUInt16BE(block.length, 2);
  return Buffer.concat([V2_SIG, fixed, block]);
}

/** An IPv4 address block: source, destination, ports. */
function v4Block(src: string, dst: string, sport: number, dport: number): Buffer {
  const b = Buffer.alloc(12);
  src.split('.').forEach((o, i) => (b[i] = Number(o)));
  dst.split('.').forEach((o, i) => (b[4 + i] = Number(o)));
  b.writeUInt16BE(sport, 8);
  b.writeUInt16BE(dport, 10);
  return b;
}

test('PROXY UNKNOWN, v2 AF_UNIX and AF_UNSPEC from the trusted proxy: dropped with a warning, never a session of the (loopback, relay-trusted) proxy', LIMIT, async () => {
  await withTestApp(BEHIND_PROXY, async (app) => {
    const headers = [
      Buffer.from('PROXY UNKNOWN\r\n'),
      Buffer.from('PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n'),
      v2Header(0x21, 0x31, Buffer.alloc(216)),
      v2Header(0x21, 0x00, Buffer.alloc(0)),
    ];
    for (const h of headers) {
      const c = await RawClient.connect(app.port);
      c.send(Buffer.concat([h, Buffer.from('EHLO relay.test\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<victim@elsewhere.test>\r\n')]));
      assert.ok(await c.closed(), 'closed');
      await assert.rejects(c.reply(500), /connection closed after 0\/1 replies/, 'no banner, no reply');
      c.close();
    }
    const drops = app.logs().filter((l) => l.msg === 'connection dropped: the PROXY header names no client');
    assert.deepEqual(
      drops.map((l) => [l.level, l.reason]),
      [
        [40, 'PROXY UNKNOWN'],
        [40, 'PROXY UNKNOWN'],
        [40, 'PROXY v2 with AF_UNIX'],
        [40, 'PROXY v2 with AF_UNSPEC'],
      ],
    );
    assert.ok(!app.logs().some((l) => l.msg === 'connect'), 'no session');
  });
});

test('PROXY v2 LOCAL (a health check) may talk but never send mail, not even to a local domain; v2 UDP is taken as the client it names', LIMIT, async () => {
  await withTestApp(BEHIND_PROXY, async (app) => {
    const c = await RawClient.connect(app.port);
    c.send(Buffer.concat([v2Header(0x20, 0x00, Buffer.alloc(0)), Buffer.from('EHLO haproxy.test\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<alice@example.test>\r\nQUIT\r\n')]));
    const [banner, ehlo, mail, rcpt, quit] = await c.replies(5);
    assert.match(banner ?? '', /^220 /);
    assert.match(ehlo ?? '', /^250-/);
    assert.equal(mail, '550 5.7.1 Error: a proxy health check connection (PROXY LOCAL) may not send mail');
    assert.match(rcpt ?? '', /^503 5\.5\.1 /);
    assert.match(quit ?? '', /^221 /);
    c.close();
    assert.ok(app.logs().some((l) => l.msg === 'PROXY LOCAL (proxy health check): a session that may not send mail'));

    // DGRAM over IPv4: the header names a client address, which is who the session is.
    const u = await RawClient.connect(app.port);
    u.send(Buffer.concat([v2Header(0x21, 0x12, v4Block('198.51.100.9', '127.0.0.1', 4000, 25)), Buffer.from('HELO udp.test\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<victim@elsewhere.test>\r\n')]));
    const [, , , relay] = await u.replies(4);
    assert.match(relay ?? '', /^554 5\.7\.1 <victim@elsewhere\.test>: Relay access denied/, 'the proxied client (198.51.100.9) may not relay');
    u.close();
    assert.ok(await waitUntil(() => app.logs().some((l) => l.msg === 'PROXY header names a UDP client: taken as that client' && l.client === '198.51.100.9' && l.level === 40), 2000));
    assert.ok(app.logs().some((l) => l.msg === 'connect' && l.ip === '198.51.100.9'));
  });
});

test('a real HAProxy SMTP health check (send-proxy-v2 sends LOCAL) passes: the server stays up and mail still flows through it', LIMIT, async () => {
  await withTestApp(BEHIND_PROXY, async (app) => {
    const hap = await startHaproxy({ backend: { host: '127.0.0.1', port: app.port }, sendProxy: 'v2', healthCheck: true });
    try {
      // Checks every 300 ms; three failed ones (HAProxy's default "fall 3") would take the server down.
      assert.ok(await waitUntil(() => app.logs().filter((l) => l.msg === 'PROXY LOCAL (proxy health check): a session that may not send mail').length >= 4, 10_000), 'health checks arrive as PROXY LOCAL');
      const ok = await swaksVia(hap.port, '127.0.0.8', 'alice@example.test', 'after health checks');
      assert.match(ok.stdout, /<- {2}250 2\.0\.0 Ok: queued as/, ok.stdout);
      assert.ok(!app.logs().some((l) => l.msg === 'connection dropped: the PROXY header names no client'));
    } finally {
      await hap.stop();
    }
  });
});

test('mxguard check: a proxy_protocol.listen entry that is not a listen address', () => {
  const file = path.join(dir, 'bad.yaml');
  fs.writeFileSync(file, 'listen: ["127.0.0.1:25"]\nproxy_protocol:\n  listen: ["127.0.0.1:26"]\n');
  return checkConfigFile(file).then((r) => {
    assert.equal(r.ok, false);
    assert.match(r.output, /bad\.yaml:3:\d+: proxy_protocol\.listen\[0\]: "127\.0\.0\.1:26" is not one of the listen addresses \(127\.0\.0\.1:25\)/);
  });
});
