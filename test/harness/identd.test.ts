// The IDENT client against a real identd (oidentd, see identd.ts): asked about a loopback
// connection the way the SMTP server asks (remote = the client's end, local = ours), it names the
// user owning the client socket; a port pair with no connection gets no name.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import { identLookup, type IdentQuery } from '../../src/smtp/ident.ts';
import { startOidentd, type IdentdPeer } from './identd.ts';
import { freePort, waitUntil } from './peers.ts';

const TIMEOUT_MS = 3000;

/** A listening server on 127.0.0.1 whose accepted sockets are handed out in order. */
async function listen(t: TestContext): Promise<{ port: number; accepted: () => Promise<net.Socket> }> {
  const waiting: net.Socket[] = [];
  const all = new Set<net.Socket>();
  const srv = net.createServer((s) => {
    all.add(s);
    s.on('error', () => undefined);
    waiting.push(s);
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        for (const s of all) s.destroy();
        srv.close(() => resolve());
      }),
  );
  const addr = srv.address();
  assert.ok(addr !== null && typeof addr === 'object');
  return {
    port: addr.port,
    accepted: async () => {
      assert.ok(await waitUntil(() => waiting.length > 0, 5000), 'no connection accepted');
      return waiting.shift() as net.Socket;
    },
  };
}

/** What the SMTP server would ask about its accepted socket `s`. */
function queryFor(s: net.Socket): IdentQuery {
  assert.ok(s.remoteAddress !== undefined && s.remotePort !== undefined && s.localAddress !== undefined && s.localPort !== undefined);
  return { remoteIp: s.remoteAddress, remotePort: s.remotePort, localIp: s.localAddress, localPort: s.localPort };
}

async function identd(t: TestContext): Promise<IdentdPeer> {
  const peer = await startOidentd();
  t.after(() => peer.stop());
  return peer;
}

test('oidentd names the owner of our own client socket, and nobody for an unused port pair', async (t) => {
  const peer = await identd(t);
  const server = await listen(t);
  const client = net.connect({ host: '127.0.0.1', port: server.port });
  t.after(() => client.destroy());
  await new Promise<void>((resolve, reject) => client.once('connect', resolve).once('error', reject));
  const accepted = await server.accepted();
  const q = queryFor(accepted);
  assert.equal(q.remotePort, client.localPort);

  const user = await identLookup(q, { port: peer.port, timeoutMs: TIMEOUT_MS });
  assert.equal(user, os.userInfo().username, peer.log());

  // The client's port with a local port nothing is connected to: oidentd says ERROR : NO-USER.
  const unused = await freePort();
  assert.equal(await identLookup({ ...q, localPort: unused }, { port: peer.port, timeoutMs: TIMEOUT_MS }), undefined);
  const said = new RegExp(`${q.remotePort} , ${unused} : ERROR : NO-USER`);
  assert.ok(await waitUntil(() => said.test(peer.log()), 5000), peer.log());
});

test('oidentd names another user for a socket that user owns (the tests run as root)', async (t) => {
  const peer = await identd(t);
  const server = await listen(t);
  // A client process running as nobody (65534) connects and stays until we are done.
  const script = `const s = require('node:net').connect(${server.port}, '127.0.0.1'); s.on('error', () => process.exit(1)); process.stdin.on('data', () => {}); process.stdin.on('end', () => process.exit(0));`;
  const child = spawn(process.execPath, ['-e', script], { uid: 65534, gid: 65534, stdio: ['pipe', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  t.after(async () => {
    child.stdin?.end();
    child.kill('SIGKILL');
    await exited;
  });
  const accepted = await server.accepted().catch((err: unknown) => assert.fail(`${String(err)}; client stderr: ${stderr}`));
  const user = await identLookup(queryFor(accepted), { port: peer.port, timeoutMs: TIMEOUT_MS });
  assert.equal(user, 'nobody', peer.log());
});
