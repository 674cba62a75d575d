// STARTTLS and AUTH corner cases of the SMTP client that a real server will not produce on
// demand, against small scripted servers; the real-server tests are test/smtp-client-tls.test.ts.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { authMechanisms, authPlainResponse, createSmtpTransport, isLoopbackAddress, type SmtpTransportOptions } from './client.ts';
import type { RcptResult } from '../mail/transport.ts';

test('authMechanisms reads AUTH and the old AUTH= form', () => {
  assert.deepEqual([...authMechanisms({ code: 250, lines: ['mx', 'PIPELINING', 'AUTH PLAIN login', 'AUTH=CRAM-MD5'] })], ['PLAIN', 'LOGIN', 'CRAM-MD5']);
  assert.deepEqual([...authMechanisms({ code: 250, lines: ['mx', 'AUTHX PLAIN', 'SIZE 10'] })], []);
  assert.deepEqual([...authMechanisms({ code: 250, lines: ['AUTH PLAIN'] })], [], 'the first line is the server name');
});

test('authPlainResponse is RFC 4616 with an empty authorization identity', () => {
  assert.equal(Buffer.from(authPlainResponse('alice', 'wonder land'), 'base64').toString(), '\0alice\0wonder land');
  assert.equal(Buffer.from(authPlainResponse('jöhn', 'pässword'), 'base64').toString('utf8'), '\0jöhn\0pässword');
});

test('isLoopbackAddress', () => {
  for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) assert.equal(isLoopbackAddress(a), true, a);
  for (const a of ['192.0.2.1', '128.0.0.1', '::2', '::ffff:192.0.2.1', undefined]) assert.equal(isLoopbackAddress(a), false, String(a));
});

test('bad tls and auth options are refused at once', () => {
  const base = { url: 'smtp://127.0.0.1:1', heloName: 'h', maxConnections: 1, connectTimeoutMs: 1000, commandTimeoutMs: 1000 };
  assert.throws(() => createSmtpTransport({ ...base, tls: { mode: 'sometimes' as never } }), /invalid tls mode/);
  assert.throws(() => createSmtpTransport({ ...base, tls: { mode: 'verify', servername: 'a b' } }), /invalid tls servername/);
  assert.throws(() => createSmtpTransport({ ...base, auth: { user: '', password: 'x' } }), /invalid auth/);
  assert.throws(() => createSmtpTransport({ ...base, auth: { user: 'a', password: 'x\0y' } }), /invalid auth/);
});

/** What the scripted server answers to a command line; null: the standard answer. */
type Script = (line: string) => string | null;

/**
 * A line-based fake SMTP server; sessions[i] lists the commands of connection i. After a 220 to
 * STARTTLS it answers the client's TLS hello with plain-text garbage and closes.
 */
async function fakeServer(t: TestContext, ehlo: string[], script: Script): Promise<{ port: number; sessions: string[][] }> {
  const sessions: string[][] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    const cmds: string[] = [];
    sessions.push(cmds);
    sock.on('error', () => undefined);
    sock.write('220 fake ESMTP\r\n');
    let buf = '';
    let inData = false;
    let tlsHello = false;
    sock.on('data', (d: Buffer) => {
      if (tlsHello) {
        sock.end('this is not TLS at all\r\n');
        return;
      }
      buf += d.toString('latin1');
      for (let i = buf.indexOf('\r\n'); i !== -1; i = buf.indexOf('\r\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (inData) {
          if (line === '.') {
            inData = false;
            sock.write('250 2.0.0 queued\r\n');
          }
          continue;
        }
        cmds.push(line);
        const custom = script(line);
        if (custom !== null) {
          tlsHello = line === 'STARTTLS' && custom.startsWith('220');
          if (custom !== '') sock.write(custom);
          continue;
        }
        const verb = line.split(' ')[0]?.toUpperCase();
        if (verb === 'EHLO') {
          const all = ['fake', ...ehlo];
          sock.write(all.map((l, k) => `250${k === all.length - 1 ? ' ' : '-'}${l}\r\n`).join(''));
        }
        else if (verb === 'DATA') {
          inData = true;
          sock.write('354 go\r\n');
        } else if (verb === 'QUIT') sock.end('221 bye\r\n');
        else sock.write('250 ok\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  const addr = server.address() as net.AddressInfo;
  return { port: addr.port, sessions };
}

async function deliverOne(t: TestContext, port: number, opts: Partial<SmtpTransportOptions>): Promise<RcptResult> {
  const tr = createSmtpTransport({ url: `smtp://127.0.0.1:${port}`, heloName: 'client.test', maxConnections: 1, connectTimeoutMs: 2000, commandTimeoutMs: 2000, ...opts });
  t.after(() => tr.close());
  const data = Buffer.from('Subject: x\r\n\r\nx\r\n');
  const [r] = await tr.deliver({
    id: 'Q1',
    mailFrom: 'a@b.test',
    rcpts: ['c@d.test'],
    body: {
      size: data.length,
      async *chunks() {
        yield data;
      },
    },
  });
  assert.ok(r);
  return r;
}

test('opportunistic: a failed handshake is retried once in plain text (as Postfix does); required fails 421 4.7.4', async (t) => {
  // After its 220 to STARTTLS the server speaks no TLS at all.
  const srv = await fakeServer(t, ['PIPELINING', 'STARTTLS'], (line) => (line === 'STARTTLS' ? '220 ready\r\n' : null));
  const r = await deliverOne(t, srv.port, { tls: { mode: 'opportunistic' } });
  assert.equal(r.status, 'ok', JSON.stringify(r));
  assert.equal(srv.sessions.length, 2);
  assert.deepEqual(srv.sessions[0], ['EHLO client.test', 'STARTTLS']);
  assert.ok(!srv.sessions[1]?.includes('STARTTLS'), 'the retry is plain text');
  assert.ok(srv.sessions[1]?.some((c) => c.startsWith('MAIL FROM:<a@b.test>')));

  const before = srv.sessions.length;
  const req = await deliverOne(t, srv.port, { tls: { mode: 'required' } });
  assert.equal(req.status, 'temp');
  assert.equal(req.code, 421);
  assert.match(req.text, /^4\.7\.4 TLS is required, but the TLS handshake with 127\.0\.0\.1:\d+ failed: /);
  assert.equal(srv.sessions.length, before + 1, 'no plain retry when TLS is required');
});

test('a reply pipelined after the 220 to STARTTLS (command injection) is never taken for one over TLS', async (t) => {
  const srv = await fakeServer(t, ['STARTTLS'], (line) => (line === 'STARTTLS' ? '220 ready\r\n250 injected\r\n' : null));
  const r = await deliverOne(t, srv.port, { tls: { mode: 'required' } });
  assert.equal(r.code, 421);
  assert.match(r.text, /^4\.7\.4 TLS is required, but the TLS handshake .* sent more after its 220 to STARTTLS/);
});

test('STARTTLS refused: opportunistic goes on in plain text, required fails 421 4.7.4', async (t) => {
  const srv = await fakeServer(t, ['STARTTLS'], (line) => (line === 'STARTTLS' ? '454 4.7.0 TLS not available\r\n' : null));
  const r = await deliverOne(t, srv.port, { tls: { mode: 'opportunistic' } });
  assert.equal(r.status, 'ok', JSON.stringify(r));
  assert.equal(srv.sessions.length, 1);
  const req = await deliverOne(t, srv.port, { tls: { mode: 'verify' } });
  assert.equal(req.code, 421);
  assert.match(req.text, /^4\.7\.4 TLS is required, but 127\.0\.0\.1:\d+ refused STARTTLS: 454 4\.7\.0 TLS not available$/);
});

test('AUTH LOGIN when PLAIN is not offered (loopback: plain text allowed); a refusal is 451 4.7.8', async (t) => {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const srv = await fakeServer(t, ['AUTH LOGIN CRAM-MD5'], (line) => {
    if (line === 'AUTH LOGIN') return '334 VXNlcm5hbWU6\r\n';
    if (line === b64('bob')) return '334 UGFzc3dvcmQ6\r\n';
    if (line === b64('secret')) return '235 2.7.0 ok\r\n';
    if (line === b64('wrong')) return '535 5.7.8 bad credentials\r\n';
    return null;
  });
  const ok = await deliverOne(t, srv.port, { auth: { user: 'bob', password: 'secret' } });
  assert.equal(ok.status, 'ok', JSON.stringify(ok));
  assert.deepEqual(srv.sessions[0]?.slice(0, 4), ['EHLO client.test', 'AUTH LOGIN', b64('bob'), b64('secret')]);
  const bad = await deliverOne(t, srv.port, { auth: { user: 'bob', password: 'wrong' } });
  assert.equal(bad.status, 'temp');
  assert.equal(bad.code, 451);
  assert.equal(bad.text, '4.7.8 authentication failed: 535 5.7.8 bad credentials');
  assert.ok(!srv.sessions[1]?.some((c) => c.startsWith('MAIL')), 'no MAIL after a failed AUTH');
});

test('AUTH set but neither PLAIN nor LOGIN offered: 451 4.7.0, nothing sent', async (t) => {
  const srv = await fakeServer(t, ['AUTH CRAM-MD5'], () => null);
  const r = await deliverOne(t, srv.port, { auth: { user: 'bob', password: 'secret' } });
  assert.equal(r.code, 451);
  assert.match(r.text, /^4\.7\.0 127\.0\.0\.1:\d+ offers neither AUTH PLAIN nor LOGIN \(AUTH CRAM-MD5\) over plain text$/);
  assert.deepEqual(srv.sessions[0], ['EHLO client.test']);
});

test('AUTH PLAIN is preferred when both are offered, with the initial response on the command line', async (t) => {
  const srv = await fakeServer(t, ['AUTH LOGIN PLAIN'], (line) => (line.startsWith('AUTH ') ? '235 2.7.0 ok\r\n' : null));
  const r = await deliverOne(t, srv.port, { auth: { user: 'bob', password: 'secret' } });
  assert.equal(r.status, 'ok', JSON.stringify(r));
  assert.equal(srv.sessions[0]?.[1], `AUTH PLAIN ${Buffer.from('\0bob\0secret').toString('base64')}`);
});
