// The IDENT client: reply parsing and sanitising, and lookups against tiny identds on loopback
// (well-behaved, mute, hanging up, flooding, absent). The real oidentd is in test/harness/identd.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { MAX_USER_LENGTH, identLookup, parseIdentReply } from './ident.ts';

test('parseIdentReply: USERID replies with and without spaces, with a charset, OTHER', () => {
  assert.equal(parseIdentReply('6193, 23 : USERID : UNIX : stjohns\r\n', 6193, 23), 'stjohns');
  assert.equal(parseIdentReply('6193,23:USERID:UNIX:stjohns', 6193, 23), 'stjohns');
  assert.equal(parseIdentReply('  6193 ,23 :USERID:  UNIX :root  \n', 6193, 23), 'root');
  assert.equal(parseIdentReply('6193\t,\t23\t:\tUSERID\t:\tUNIX\t:\tbob\r\n', 6193, 23), 'bob');
  assert.equal(parseIdentReply('6193 , 23 : userid : UNIX : bob', 6193, 23), 'bob');
  assert.equal(parseIdentReply('6193 , 23 : USERID : UNIX , US-ASCII : bob', 6193, 23), 'bob');
  assert.equal(parseIdentReply('6193,23:USERID:UNIX,UTF-8:j\xc3\xbcrgen', 6193, 23), 'j??rgen');
  assert.equal(parseIdentReply('6193 , 23 : USERID : OTHER : a1B2-c3.d4_e5+f', 6193, 23), 'a1B2-c3.d4_e5+f');
  // The user id is everything after the third colon, colons included.
  assert.equal(parseIdentReply('6193,23:USERID:OTHER:x:y', 6193, 23), 'x?y');
});

test('parseIdentReply: ERROR replies and malformed lines give undefined', () => {
  for (const err of ['NO-USER', 'HIDDEN-USER', 'INVALID-PORT', 'UNKNOWN-ERROR', 'X-WHATEVER']) {
    assert.equal(parseIdentReply(`6193 , 23 : ERROR : ${err}\r\n`, 6193, 23), undefined, err);
  }
  for (const bad of [
    '',
    '\r\n',
    'root',
    '6193 , 23',
    '6193 , 23 : USERID',
    '6193 , 23 : USERID : UNIX',
    '6193 , 23 : USERID : UNIX :',
    '6193 , 23 : USERID : UNIX :    ',
    '6193 , 23 : USERID : : root',
    '6193 , 23 : USERID : UN IX : root',
    '6193 , 23 : USERID : UNIX,UTF-8,X : root',
    '6193 , 23 : USER ID : UNIX : root',
    '6193 23 : USERID : UNIX : root',
    '6193 , 23, 1 : USERID : UNIX : root',
    '6193 , 0x17 : USERID : UNIX : root',
    'a , b : USERID : UNIX : root',
  ]) {
    assert.equal(parseIdentReply(bad, 6193, 23), undefined, JSON.stringify(bad));
  }
});

test('parseIdentReply: the port pair must be the one asked about, in that order', () => {
  assert.equal(parseIdentReply('23 , 6193 : USERID : UNIX : root', 6193, 23), undefined);
  assert.equal(parseIdentReply('6194 , 23 : USERID : UNIX : root', 6193, 23), undefined);
  assert.equal(parseIdentReply('6193 , 25 : USERID : UNIX : root', 6193, 23), undefined);
  assert.equal(parseIdentReply('06193 , 023 : USERID : UNIX : root', 6193, 23), 'root'); // same numbers
  assert.equal(parseIdentReply('123456 , 23 : USERID : UNIX : root', 123456, 23), undefined);
});

test('parseIdentReply: hostile user ids are rejected or neutralised', () => {
  const r = (id: string): string | undefined => parseIdentReply(`6193,23:USERID:UNIX:${id}\r\n`, 6193, 23);
  // Forbidden by the RFC: the whole answer goes.
  assert.equal(r('ro\0ot'), undefined);
  assert.equal(r('root\r250 ok'), undefined);
  assert.equal(parseIdentReply('6193,23:USERID:UNIX:root\n250 ok', 6193, 23), undefined);
  // Anything outside [A-Za-z0-9._+-] becomes '?'.
  assert.equal(r('bob smith'), 'bob?smith');
  assert.equal(r('<postmaster@example.com>'), '?postmaster?example.com?');
  assert.equal(r('%U$HOME`id`'), '?U?HOME?id?');
  assert.equal(r('a\tb\x7f\x1bc'), 'a?b??c');
  assert.equal(r('\xff\xfe'), '??');
  // Long ids are cut to 64 characters; the RFC's 512 octets and more are still read.
  const long = 'u'.repeat(600);
  assert.equal(r(long), 'u'.repeat(MAX_USER_LENGTH));
  assert.equal(r(long)?.length, 64);
  // A line over 1000 octets is no answer.
  assert.equal(r('u'.repeat(1000)), undefined);
});

// --- identLookup against tiny servers --------------------------------------------------------

interface Fake {
  readonly port: number;
  /** The query lines received, CRLF stripped. */
  readonly queries: string[];
  close(): Promise<void>;
}

/** A TCP server on 127.0.0.1 that hands each connection to `handle` (with its first line, if any). */
async function fakeIdentd(handle: (sock: net.Socket, query: string) => void, onConnect?: (sock: net.Socket) => void): Promise<Fake> {
  const queries: string[] = [];
  const socks = new Set<net.Socket>();
  const srv = net.createServer((sock) => {
    socks.add(sock);
    sock.on('close', () => socks.delete(sock));
    sock.on('error', () => undefined);
    if (onConnect !== undefined) return onConnect(sock);
    let buf = '';
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl === -1) return;
      const q = buf.slice(0, nl).replace(/\r$/, '');
      queries.push(q);
      handle(sock, q);
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const addr = srv.address();
  assert.ok(addr !== null && typeof addr === 'object');
  return {
    port: addr.port,
    queries,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of socks) s.destroy();
        srv.close(() => resolve());
      }),
  };
}

const Q = { remoteIp: '127.0.0.1', remotePort: 40001, localIp: '127.0.0.1', localPort: 25 };

test('identLookup: a well-behaved identd, asked from the local address', async (t) => {
  let peerAddr: string | undefined;
  const fake = await fakeIdentd((sock, q) => {
    peerAddr = sock.remoteAddress;
    const m = /^\s*(\d+)\s*,\s*(\d+)\s*$/.exec(q);
    sock.end(m === null ? `${q} : ERROR : INVALID-PORT\r\n` : `${m[1]} , ${m[2]} : USERID : UNIX : alice\r\n`);
  });
  t.after(() => fake.close());
  assert.equal(await identLookup(Q, { port: fake.port, timeoutMs: 1000 }), 'alice');
  assert.deepEqual(fake.queries, ['40001 , 25']);
  assert.equal(peerAddr, '127.0.0.1');
  // Dual-stack sockets report IPv4-mapped addresses: they work the same.
  assert.equal(await identLookup({ ...Q, remoteIp: '::ffff:127.0.0.1', localIp: '::FFFF:127.0.0.1' }, { port: fake.port, timeoutMs: 1000 }), 'alice');
  // Nonsense in the query is refused before anything goes on the wire.
  for (const bad of [{ ...Q, remoteIp: 'localhost' }, { ...Q, localIp: '::1' }, { ...Q, remotePort: 0 }, { ...Q, localPort: 65536 }, { ...Q, remotePort: 1.5 }]) {
    assert.equal(await identLookup(bad, { port: fake.port, timeoutMs: 1000 }), undefined, JSON.stringify(bad));
  }
  assert.equal(fake.queries.length, 2);
});

test('identLookup: ERROR replies and answers about another port pair give undefined', async (t) => {
  const fake = await fakeIdentd((sock, q) => {
    if (q.startsWith('40001')) sock.end(`${q} : ERROR : HIDDEN-USER\r\n`);
    else sock.end('1 , 2 : USERID : UNIX : mallory\r\n');
  });
  t.after(() => fake.close());
  assert.equal(await identLookup(Q, { port: fake.port, timeoutMs: 1000 }), undefined);
  assert.equal(await identLookup({ ...Q, remotePort: 40002 }, { port: fake.port, timeoutMs: 1000 }), undefined);
});

test('identLookup: a reply split over several packets, then the server keeps the line open', async (t) => {
  const fake = await fakeIdentd((sock, q) => {
    const reply = `${q} : USERID : UNIX : carol\r\n`;
    sock.write(reply.slice(0, 5));
    setTimeout(() => sock.write(reply.slice(5)), 20);
  });
  t.after(() => fake.close());
  assert.equal(await identLookup(Q, { port: fake.port, timeoutMs: 1000 }), 'carol');
});

test('identLookup: a mute identd costs no more than the timeout', async (t) => {
  const fake = await fakeIdentd(() => undefined);
  t.after(() => fake.close());
  const started = performance.now();
  assert.equal(await identLookup(Q, { port: fake.port, timeoutMs: 200 }), undefined);
  const took = performance.now() - started;
  assert.ok(took >= 190 && took < 200 + 150, `took ${took.toFixed(0)} ms`);
  assert.deepEqual(fake.queries, ['40001 , 25']);
});

test('identLookup: an identd that hangs up at once, or mid-line', async (t) => {
  const hangup = await fakeIdentd(() => undefined, (sock) => sock.destroy());
  t.after(() => hangup.close());
  const midLine = await fakeIdentd((sock, q) => sock.end(`${q} : USERID : UNIX : tru`));
  t.after(() => midLine.close());
  const started = performance.now();
  assert.equal(await identLookup(Q, { port: hangup.port, timeoutMs: 1000 }), undefined);
  assert.equal(await identLookup(Q, { port: midLine.port, timeoutMs: 1000 }), undefined);
  assert.ok(performance.now() - started < 500, 'did not wait for the timeout');
});

test('identLookup: a line that never ends, or is too long, is given up on', async (t) => {
  const flood = await fakeIdentd((sock) => {
    // 64 KiB chunks of a line without an end, until the client goes away.
    const chunk = 'x'.repeat(65536);
    const pump = (): void => {
      while (!sock.destroyed && sock.write(chunk));
      if (!sock.destroyed) sock.once('drain', pump);
    };
    pump();
  });
  t.after(() => flood.close());
  const long = await fakeIdentd((sock, q) => sock.end(`${q} : USERID : UNIX : ${'u'.repeat(1000)}\r\n`));
  t.after(() => long.close());
  const started = performance.now();
  assert.equal(await identLookup(Q, { port: flood.port, timeoutMs: 1000 }), undefined);
  assert.equal(await identLookup(Q, { port: long.port, timeoutMs: 1000 }), undefined);
  assert.ok(performance.now() - started < 500, 'did not wait for the timeout');
});

test('identLookup: a refused port, and a local address we do not have', async () => {
  const closed = await fakeIdentd(() => undefined);
  await closed.close(); // a port that was just free
  const started = performance.now();
  assert.equal(await identLookup(Q, { port: closed.port, timeoutMs: 1000 }), undefined);
  // 192.0.2.1 (TEST-NET-1) is not ours: binding to it fails, quietly.
  assert.equal(await identLookup({ ...Q, localIp: '192.0.2.1' }, { port: closed.port, timeoutMs: 1000 }), undefined);
  assert.ok(performance.now() - started < 500, 'did not wait for the timeout');
});
