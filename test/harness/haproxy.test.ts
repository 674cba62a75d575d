// The HAProxy harness against a tiny backend, checked with our own PROXY parser: HAProxy sends
// the header as soon as the client connects (before the client writes, as SMTP needs: the server
// speaks first), names the client's real address and port, then relays the client's bytes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { once } from 'node:events';
import { parseProxyHeader, type ProxyHeader } from '../../src/smtp/proxy-protocol.ts';
import { startHaproxy } from './haproxy.ts';
import { isAlive, waitUntil } from './peers.ts';

interface Backend {
  readonly port: number;
  /** Bytes received per accepted connection, in accept order. */
  readonly received: Buffer[];
  readonly sockets: net.Socket[];
  close(): Promise<void>;
}

async function startBackend(): Promise<Backend> {
  const received: Buffer[] = [];
  const sockets: net.Socket[] = [];
  const srv = net.createServer((sock) => {
    const i = received.push(Buffer.alloc(0)) - 1;
    sockets.push(sock);
    sock.on('data', (d: Buffer) => (received[i] = Buffer.concat([received[i] as Buffer, d])));
    sock.on('error', () => undefined);
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const addr = srv.address() as net.AddressInfo;
  return {
    port: addr.port,
    received,
    sockets,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => srv.close(() => r()));
    },
  };
}


for (const version of ['v1', 'v2'] as const) {
  test(`haproxy send-proxy ${version}: header first, unprompted, then the client's bytes`, async (t) => {
    const backend = await startBackend();
    t.after(() => backend.close());
    const hap = await startHaproxy({ backend: { host: '127.0.0.1', port: backend.port }, sendProxy: version });
    t.after(() => hap.stop());

    const client = net.connect({ host: '127.0.0.1', port: hap.port });
    t.after(() => client.destroy());
    await once(client, 'connect');
    const clientPort = client.localPort;
    let fromServer = '';
    client.setEncoding('latin1');
    client.on('data', (d: string) => (fromServer += d));

    // The client has written nothing: the backend must still get the whole header.
    let header: ProxyHeader = { kind: 'incomplete' };
    const got = await waitUntil(() => {
      const b = backend.received[0];
      if (b !== undefined) header = parseProxyHeader(b);
      return header.kind !== 'incomplete';
    }, 5000);
    assert.ok(got, `no complete PROXY header without client data; got ${backend.received[0]?.toString('hex')}; haproxy:\n${hap.log()}`);
    assert.equal(backend.received.length, 1, 'one backend connection (the readiness probe does not reach it)');
    const h = header as ProxyHeader;
    assert.ok(h.kind === 'proxied', JSON.stringify(h));
    assert.equal(h.version, version === 'v1' ? 1 : 2);
    assert.deepEqual(h.source, { ip: '127.0.0.1', port: clientPort });
    assert.deepEqual(h.destination, { ip: '127.0.0.1', port: hap.port });
    assert.equal(backend.received[0]?.length, h.consumed, 'nothing after the header yet');

    // Server speaks first; then the client's bytes follow the header verbatim.
    backend.sockets[0]?.write('220 backend.test ESMTP\r\n');
    assert.ok(await waitUntil(() => fromServer.includes('\r\n'), 5000), 'banner relayed to the client');
    assert.equal(fromServer, '220 backend.test ESMTP\r\n');
    const payload = Buffer.from('EHLO client.test\r\n\x00\xff binary-safe\r\n', 'latin1');
    client.write(payload);
    assert.ok(await waitUntil(() => (backend.received[0]?.length ?? 0) >= h.consumed + payload.length, 5000), 'client bytes relayed');
    assert.deepEqual(backend.received[0]?.subarray(h.consumed), payload);

    const pid = hap.pid;
    await hap.stop();
    assert.ok(await waitUntil(() => !isAlive(pid), 5000), `haproxy pid ${pid} still alive after stop()`);
    await hap.stop(); // idempotent
  });
}

test('haproxy: a config it refuses fails startHaproxy with its output, leaving nothing running', async () => {
  const before = fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith('mxg-haproxy-')).length;
  await assert.rejects(startHaproxy({ backend: { host: 'no such host', port: 25 }, sendProxy: 'v1' }), /haproxy on 127\.0\.0\.1:\d+ exited/);
  const after = fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith('mxg-haproxy-')).length;
  assert.ok(after <= before, 'temp dir removed');
});
