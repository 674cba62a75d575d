// The admin API on loopback: POP-before-SMTP's HTTP way in, end to end through a real RCPT.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';

const TOKEN = 'a-long-enough-test-token';

test('admin API: health, token, add/list/delete relayers, and the relay opens and closes with them', async () => {
  const app = await startTestApp({ admin: { listen: '127.0.0.1:0', token: TOKEN }, relay: { forward_from_ip: ['192.0.2.0/24'], forward_user: true } });
  try {
    const base = `http://127.0.0.1:${app.app.adminPort}`;
    const call = (method: string, p: string, token: string | null = TOKEN) => fetch(base + p, { method, headers: token === null ? {} : { authorization: `Bearer ${token}` } });
    const rcpt = async () => {
      const c = await RawClient.connect(app.port);
      await c.reply();
      c.send('EHLO client.test\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<x@far.test>\r\n');
      const r = (await c.replies(3))[2];
      c.close();
      return r;
    };
    assert.equal(await (await call('GET', '/healthz', null)).text(), 'ok\n');
    assert.equal((await call('GET', '/api/relayers', null)).status, 401);
    assert.equal((await call('GET', '/api/relayers', 'wrong-token-wrong-token')).status, 401);
    assert.equal(await rcpt(), '554 5.7.1 <x@far.test>: Relay access denied');
    const added = await call('POST', '/api/relayers/127.0.0.1');
    assert.equal(added.status, 200);
    assert.equal(await rcpt(), '250 2.1.5 Ok');
    assert.ok(app.logs().some((l) => l.msg === '(127.0.0.1) is recent'));
    const list = (await (await call('GET', '/api/relayers')).json()) as Array<{ ip: string; at: number }>;
    assert.deepEqual(list.map((r) => r.ip), ['127.0.0.1']);
    assert.equal((await call('DELETE', '/api/relayers/127.0.0.1')).status, 200);
    assert.equal(await rcpt(), '554 5.7.1 <x@far.test>: Relay access denied');
    assert.equal((await call('POST', '/api/relayers/not-an-ip')).status, 400);
    assert.equal((await call('POST', '/api/relayers/192.0.2.1?at=soon')).status, 400);
    assert.equal((await call('PUT', '/api/relayers/192.0.2.1')).status, 405);
  } finally {
    await app.stop();
  }
});

test('admin API: a malformed address is 400, not 500; IPv4-mapped IPv6 is stored as the IPv4 the SMTP side sees', async () => {
  const app = await startTestApp({ admin: { listen: '127.0.0.1:0', token: TOKEN }, relay: { forward_from_ip: ['192.0.2.0/24'], forward_user: true } });
  try {
    const base = `http://127.0.0.1:${app.app.adminPort}`;
    const call = (method: string, p: string) => fetch(base + p, { method, headers: { authorization: `Bearer ${TOKEN}` } });
    for (const bad of ['%zz', '%E0%A4%A', '127.0.0.1%', 'fe80::1%25eth0', '1.2.3.4.5', '%00']) {
      const r = await call('POST', `/api/relayers/${bad}`);
      assert.equal(r.status, 400, `POST ${bad}: ${r.status} ${await r.text()}`);
      assert.equal((await call('DELETE', `/api/relayers/${bad}`)).status, 400, `DELETE ${bad}`);
    }
    const added = await call('POST', '/api/relayers/::FFFF:127.0.0.1');
    assert.equal(added.status, 200);
    assert.equal(((await added.json()) as { ip: string }).ip, '127.0.0.1');
    await call('POST', '/api/relayers/0:0:0:0:0:ffff:c000:201');
    await call('POST', '/api/relayers/2001:DB8:0::1');
    const list = (await (await call('GET', '/api/relayers')).json()) as Array<{ ip: string }>;
    assert.deepEqual(list.map((r) => r.ip).sort(), ['127.0.0.1', '192.0.2.1', '2001:db8::1']);
    // The mapped form opened the relay for the client at 127.0.0.1.
    const c = await RawClient.connect(app.port);
    await c.reply();
    c.send('EHLO client.test\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<x@far.test>\r\n');
    assert.equal((await c.replies(3))[2], '250 2.1.5 Ok');
    c.close();
    assert.deepEqual(await (await call('DELETE', '/api/relayers/::ffff:127.0.0.1')).json(), { deleted: 1 });
  } finally {
    await app.stop();
  }
});
