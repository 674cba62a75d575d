// The IDENT client against a real identd (oidentd, see identd.ts): asked about a loopback
// connection the way the SMTP server asks (remote = the client's end, local = ours), it names the
// user owning the client socket; a port pair with no connection gets no name.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { identLookup, type IdentQuery } from '../../src/policy/ident.ts';
import { startOidentd, type IdentdPeer } from './identd.ts';
import { freePort, waitUntil } from './peers.ts';
import { deadline, killQuietly, whenGone } from './processes.ts';

const TIMEOUT_MS = 3000;
const BASH = '/bin/bash';
const NOBODY_UID = 65534;
const NOGROUP_GID = 65534;

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
  // A client process running as nobody (65534) opens the connection and holds it until its
  // stdin closes. It is the system's bash (its /dev/tcp), started from "/", not the project's
  // Node: a checkout in a directory nobody may enter (a 0700 home, `mktemp -d`) would make that
  // spawn fail with EACCES.
  const script = `exec 3<>/dev/tcp/127.0.0.1/${server.port} || exit 1; read -r _`;
  const child = spawn(BASH, ['-c', script], { uid: NOBODY_UID, gid: NOGROUP_GID, cwd: '/', stdio: ['pipe', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const gone = whenGone(child);
  t.after(async () => {
    child.stdin?.end();
    killQuietly(child.pid ?? 0, 'SIGKILL');
    await Promise.race([gone, deadline(5000)]);
  });
  // Fail at once, with the reason, when the client could not start or gave up.
  const ended = gone.then((g) => {
    throw new Error(`the client as nobody ended before connecting: ${g.spawnError?.message ?? `exit ${String(g.code ?? g.signal)}`}`);
  });
  const accepted = await Promise.race([server.accepted(), ended]).catch((err: unknown) => assert.fail(`${String(err)}; client stderr: ${stderr}`));
  assert.equal(fs.statSync(`/proc/${String(child.pid)}`).uid, NOBODY_UID, 'the client runs as nobody');
  const user = await identLookup(queryFor(accepted), { port: peer.port, timeoutMs: TIMEOUT_MS });
  assert.equal(user, 'nobody', peer.log());
});
