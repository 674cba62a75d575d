// Delivery by MX against real peers: dnsmasq serves the MX and A records, real Postfix
// smtp-sinks listen on loopback addresses 127.0.0.2, 127.0.0.3 … all on one port (the
// transport uses one port for every MX host): test/harness/mx-sinks.ts.
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { pino } from 'pino';
import { startDnsmasq, type DnsmasqPeer } from './harness/dns.ts';
import { sharedPort, sinkAt } from './harness/mx-sinks.ts';
import { DnsResolver } from '../src/dns/resolver.ts';
import { createMxTransport, type MxTransportOptions } from '../src/delivery/mx.ts';
import type { OutgoingMessage, RcptResult, Transport } from '../src/mail/transport.ts';

const IP = {
  a: '127.0.0.2',
  b: '127.0.0.3',
  down: '127.0.0.4', // nothing ever listens here
  down2: '127.0.0.5',
  c: '127.0.0.6',
  self: '127.0.0.7', // one of "our" addresses
  me: '127.0.0.8',
} as const;

const RECORDS = {
  mx: {
    'relay.test': [
      { exchange: 'mx-a.test', priority: 10 },
      { exchange: 'mx-b.test', priority: 20 },
    ],
    'failover.test': [
      { exchange: 'mx-down.test', priority: 10 },
      { exchange: 'mx-b.test', priority: 20 },
    ],
    'greet421.test': [
      { exchange: 'mx-c.test', priority: 10 },
      { exchange: 'mx-b.test', priority: 20 },
    ],
    'alldown.test': [
      { exchange: 'mx-down.test', priority: 10 },
      { exchange: 'mx-down2.test', priority: 20 },
    ],
    'skip.test': [
      { exchange: 'mx-noaddr.test', priority: 10 },
      { exchange: 'mx-b.test', priority: 20 },
    ],
    'nullmx.test': [{ exchange: '.', priority: 0 }],
    // mx-self.test resolves to one of our addresses: it and mx-b.test (worse) must go.
    'loop.test': [
      { exchange: 'mx-down.test', priority: 10 },
      { exchange: 'mx-self.test', priority: 20 },
      { exchange: 'mx-b.test', priority: 30 },
    ],
    // The best MX is us by name: nothing is left.
    'loopfirst.test': [
      { exchange: 'me.test', priority: 10 },
      { exchange: 'mx-a.test', priority: 20 },
    ],
    'reject.test': [{ exchange: 'mx-c.test', priority: 10 }],
  },
  a: {
    'mx-a.test': [IP.a],
    'mx-b.test': [IP.b],
    'mx-c.test': [IP.c],
    'mx-down.test': [IP.down],
    'mx-down2.test': [IP.down2],
    'mx-self.test': [IP.self],
    'me.test': [IP.me],
    'implicit.test': [IP.a], // no MX: implicit MX
  },
};

const SELF = { names: ['me.test'], addresses: [IP.self] };

function message(rcpts: readonly string[]): OutgoingMessage {
  const raw = Buffer.from('From: sender@origin.test\r\nTo: someone\r\nSubject: mx test\r\n\r\nHello by MX.\r\n');
  return {
    id: `MXTEST${Math.floor(Math.random() * 1e9)}`,
    mailFrom: 'sender@origin.test',
    rcpts,
    body: {
      size: raw.length,
      async *chunks() {
        yield raw;
      },
    },
  };
}

describe('delivery by MX (dnsmasq + smtp-sink on 127.0.0.x)', () => {
  let dm: DnsmasqPeer;
  let dns: DnsResolver;
  let port: number;

  before(async () => {
    dm = await startDnsmasq({ records: RECORDS, servfail: ['broken.example'] });
    dns = new DnsResolver({ servers: [dm.server], timeoutMs: 3000 });
    port = await sharedPort(Object.values(IP));
  });
  after(async () => {
    await dm?.stop();
  });

  /** A fresh transport per test (closed at its end), with its log lines collected. */
  function transport(t: TestContext, extra: Partial<MxTransportOptions> = {}): { mx: Transport; logs: Record<string, unknown>[] } {
    const logs: Record<string, unknown>[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => logs.push(JSON.parse(line) as Record<string, unknown>) });
    const mx = createMxTransport({
      dns,
      heloName: 'gw.origin.test',
      port,
      maxConnections: 2,
      connectTimeoutMs: 2000,
      commandTimeoutMs: 5000,
      self: SELF,
      log,
      ...extra,
    });
    t.after(() => mx.close());
    return { mx, logs };
  }

  const brief = (rs: readonly RcptResult[]): string[] => rs.map((r) => `${r.rcpt} ${r.status} ${r.code}`);

  test('relayed mail reaches the MX of the lowest preference; close() ends it', async (t) => {
    const a = await sinkAt(t, IP.a, port);
    const b = await sinkAt(t, IP.b, port);
    const { mx } = transport(t);
    assert.equal(mx.name, 'mx');
    const rs = await mx.deliver(message(['alice@relay.test', 'bob@Relay.TEST']));
    assert.deepEqual(brief(rs), ['alice@relay.test ok 250', 'bob@Relay.TEST ok 250']);
    assert.match(rs[0]?.text ?? '', /^2\.0\.0 Ok.*\(host mx-a\.test\[127\.0\.0\.2\]:\d+\)$/);
    assert.equal(a.files().length, 1, 'one transaction for both recipients');
    assert.deepEqual(a.rcpts().map((r) => r.toLowerCase()), ['<alice@relay.test>', '<bob@relay.test>']);
    assert.equal(b.files().length, 0);

    await mx.close();
    const late = await mx.deliver(message(['carol@relay.test']));
    assert.deepEqual(brief(late), ['carol@relay.test temp 421']);
    assert.match(late[0]?.text ?? '', /^4\.3\.2 /);
  });

  test('the first MX is down: the second one gets the mail (and each attempt is logged)', async (t) => {
    const b = await sinkAt(t, IP.b, port);
    const { mx, logs } = transport(t);
    const rs = await mx.deliver(message(['dave@failover.test']));
    assert.deepEqual(brief(rs), ['dave@failover.test ok 250']);
    assert.match(rs[0]?.text ?? '', /\(host mx-b\.test\[127\.0\.0\.3\]:\d+\)$/);
    assert.equal(b.files().length, 1);
    const attempts = logs.filter((l) => l.msg === 'mx delivery attempt');
    assert.deepEqual(
      attempts.map((l) => [l.domain, l.mx, l.addr]),
      [
        ['failover.test', 'mx-down.test', IP.down],
        ['failover.test', 'mx-b.test', IP.b],
      ],
    );
    assert.match(String(attempts[0]?.result), /^temp 421: 4\.4\.1 /);
  });

  test('a server that greets with 421 counts as down: the next MX gets the mail', async (t) => {
    const c = await sinkAt(t, IP.c, port, ['-Q', 'connect']);
    const b = await sinkAt(t, IP.b, port);
    const { mx } = transport(t);
    const rs = await mx.deliver(message(['erin@greet421.test']));
    assert.deepEqual(brief(rs), ['erin@greet421.test ok 250']);
    assert.equal(b.files().length, 1);
    assert.equal(c.files().length, 0);
  });

  test('every MX host down: temp, naming the last failure and how many were tried', async (t) => {
    const { mx } = transport(t);
    const rs = await mx.deliver(message(['frank@alldown.test', 'gina@alldown.test']));
    assert.deepEqual(brief(rs), ['frank@alldown.test temp 421', 'gina@alldown.test temp 421']);
    assert.match(rs[0]?.text ?? '', /^4\.4\.1 connect to 127\.0\.0\.5:\d+ failed.*\(all 2 MX addresses of alldown\.test tried\)$/);
  });

  test('null MX: perm 556 5.1.10', async (t) => {
    const { mx } = transport(t);
    const rs = await mx.deliver(message(['hal@nullmx.test']));
    assert.deepEqual(brief(rs), ['hal@nullmx.test perm 556']);
    assert.match(rs[0]?.text ?? '', /^5\.1\.10 .*nullmx\.test does not accept mail \(null MX\)$/);
  });

  test('NXDOMAIN: perm 550 5.1.2', async (t) => {
    const { mx } = transport(t);
    const rs = await mx.deliver(message(['ivy@nosuch.test']));
    assert.deepEqual(brief(rs), ['ivy@nosuch.test perm 550']);
    assert.match(rs[0]?.text ?? '', /^5\.1\.2 Host or domain name not found: domain nosuch\.test not found$/);
  });

  test('a DNS error (SERVFAIL): temp 451 4.4.3 naming the domain', async (t) => {
    const { mx } = transport(t);
    const rs = await mx.deliver(message(['jay@broken.example']));
    assert.deepEqual(brief(rs), ['jay@broken.example temp 451']);
    assert.match(rs[0]?.text ?? '', /^4\.4\.3 MX lookup for broken\.example failed: /);
  });

  test('no MX but an A record: the domain itself is the mail host (implicit MX)', async (t) => {
    const a = await sinkAt(t, IP.a, port);
    const { mx } = transport(t);
    const rs = await mx.deliver(message(['kim@implicit.test']));
    assert.deepEqual(brief(rs), ['kim@implicit.test ok 250']);
    assert.match(rs[0]?.text ?? '', /\(host implicit\.test\[127\.0\.0\.2\]:\d+\)$/);
    assert.deepEqual(a.rcpts(), ['<kim@implicit.test>']);
  });

  test('an MX host that does not resolve is skipped', async (t) => {
    const b = await sinkAt(t, IP.b, port);
    const { mx, logs } = transport(t);
    const rs = await mx.deliver(message(['lee@skip.test']));
    assert.deepEqual(brief(rs), ['lee@skip.test ok 250']);
    assert.equal(b.files().length, 1);
    assert.ok(logs.some((l) => l.mx === 'mx-noaddr.test' && /does not resolve/.test(String(l.msg))));
  });

  test('an MX that is ourselves (by address): it and every worse MX are dropped', async (t) => {
    // mx-b.test (preference 30) is up, but it ranks below ourselves (20): it must not be used.
    const b = await sinkAt(t, IP.b, port);
    const self = await sinkAt(t, IP.self, port);
    const { mx } = transport(t);
    const rs = await mx.deliver(message(['max@loop.test']));
    assert.deepEqual(brief(rs), ['max@loop.test temp 421']);
    assert.match(rs[0]?.text ?? '', /\(all 1 MX addresses of loop\.test tried\)$/);
    assert.equal(b.files().length, 0);
    assert.equal(self.files().length, 0);
  });

  test('the best MX is ourselves (by name): nothing left, perm 554 5.4.6', async (t) => {
    const a = await sinkAt(t, IP.a, port);
    const { mx } = transport(t);
    const rs = await mx.deliver(message(['ned@loopfirst.test']));
    assert.deepEqual(brief(rs), ['ned@loopfirst.test perm 554']);
    assert.equal(rs[0]?.text, '5.4.6 mail for loopfirst.test loops back to myself');
    assert.equal(a.files().length, 0);
  });

  test('a remote rejection of a recipient is perm with the remote text, not retried elsewhere', async (t) => {
    const c = await sinkAt(t, IP.c, port, ['-f', 'rcpt']); // smtp-sink: "500 5.3.0 Error: command failed"
    const { mx, logs } = transport(t);
    const rs = await mx.deliver(message(['oli@reject.test']));
    assert.deepEqual(brief(rs), ['oli@reject.test perm 500']);
    assert.match(rs[0]?.text ?? '', /^5\.3\.0 Error: command failed \(host mx-c\.test\[127\.0\.0\.6\]:\d+\)$/);
    assert.equal(c.files().length, 0);
    assert.equal(logs.filter((l) => l.msg === 'mx delivery attempt').length, 1);
  });

  test('several domains in one message: each routed on its own, results in recipient order', async (t) => {
    const a = await sinkAt(t, IP.a, port);
    const { mx } = transport(t);
    const rs = await mx.deliver(message(['p@relay.test', 'q@nullmx.test', 'r@nosuch.test', 's@implicit.test', 't@relay.test']));
    assert.deepEqual(brief(rs), ['p@relay.test ok 250', 'q@nullmx.test perm 556', 'r@nosuch.test perm 550', 's@implicit.test ok 250', 't@relay.test ok 250']);
    assert.deepEqual(a.rcpts().sort(), ['<p@relay.test>', '<s@implicit.test>', '<t@relay.test>']);
  });

  test('a dead destination is not tried again for deadMs: its next messages are deferred at once, without connecting; then it is tried again', async (t) => {
    const { mx, logs } = transport(t, { deadMs: 400 });
    const attempts = () => logs.filter((l) => l.msg === 'mx delivery attempt' && l.domain === 'alldown.test').length;
    const first = await mx.deliver(message(['w@alldown.test']));
    assert.deepEqual(brief(first), ['w@alldown.test temp 421']);
    assert.equal(attempts(), 2, 'both MX addresses tried');
    const t0 = performance.now();
    const second = await mx.deliver(message(['x@alldown.test', 'y@relay.test']));
    assert.deepEqual(brief(second), ['x@alldown.test temp 421', 'y@relay.test temp 421']);
    assert.match(second[0]?.text ?? '', /\(all 2 MX addresses of alldown\.test failed\) \(not tried again for 1 s\)$/);
    assert.equal(attempts(), 2, 'not tried again');
    assert.ok(performance.now() - t0 < 1000);
    await new Promise((r) => setTimeout(r, 450));
    await mx.deliver(message(['z@alldown.test']));
    assert.equal(attempts(), 4, 'tried again after deadMs');
  });

  test('a connection lost after the final dot defers the message (451) instead of sending it to the next MX at once (it may have been delivered)', async (t) => {
    // An MX that reads the whole message and then drops the connection without a reply.
    const server = net.createServer((sock) => {
      let buf = '';
      sock.on('error', () => undefined);
      sock.write('220 mx-c.test ESMTP\r\n');
      sock.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        for (;;) {
          if (buf.includes('\r\n.\r\n')) return void sock.destroy();
          const nl = buf.indexOf('\r\n');
          if (nl === -1 || buf.startsWith('From:')) return;
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 2);
          if (/^EHLO/i.test(line)) sock.write('250 mx-c.test\r\n');
          else if (/^DATA/i.test(line)) sock.write('354 go ahead\r\n');
          else if (/^(MAIL|RCPT)/i.test(line)) sock.write('250 ok\r\n');
          else if (/^QUIT/i.test(line)) sock.end('221 bye\r\n');
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(port, IP.c, resolve));
    t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const b = await sinkAt(t, IP.b, port);
    const { mx } = transport(t, { tls: 'none' });
    const rs = await mx.deliver(message(['k@greet421.test']));
    assert.deepEqual(brief(rs), ['k@greet421.test temp 451']);
    assert.match(rs[0]?.text ?? '', /after the message was sent: deferred/);
    assert.equal(b.files().length, 0, 'not sent to the next MX as well');
  });

  test('queue.tls_policy: a domain that requires TLS is deferred by an MX without STARTTLS (4.7.4), never sent in plain text; other domains go on', async (t) => {
    const a = await sinkAt(t, IP.a, port);
    const b = await sinkAt(t, IP.b, port);
    const { mx } = transport(t, { tlsPolicy: { 'relay.test': 'required', '*.example.net': 'verify' } });
    const rs = await mx.deliver(message(['u@relay.test', 'v@implicit.test']));
    assert.deepEqual(brief(rs), ['u@relay.test temp 421', 'v@implicit.test ok 250']);
    assert.match(rs[0]?.text ?? '', /^4\.7\.4 TLS is required, but .* \(all 2 MX addresses of relay\.test tried\)$/);
    assert.deepEqual(a.rcpts(), ['<v@implicit.test>'], 'only the domain without a policy, in plain text (smtp-sink offers no STARTTLS)');
    assert.equal(b.files().length, 0);
  });
});
