import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { connectionFromEnv } from './stdio-socket.ts';
import { rblsmtpdRefusal } from '../policy/checks/rblsmtpd.ts';
import type { SessionSocket } from './session.ts';

const pipe = Object.assign(new PassThrough(), { setTimeout: () => undefined }) as unknown as SessionSocket;

test('connectionFromEnv: tcpserver first, then systemd/CGI, then socat; invalid values are skipped', () => {
  assert.deepEqual(connectionFromEnv({ TCPREMOTEIP: '192.0.2.1', TCPREMOTEPORT: '4000', TCPLOCALIP: '198.51.100.2', TCPLOCALPORT: '25', TCPREMOTEHOST: 'Mail.Example.NET', REMOTE_ADDR: '203.0.113.9' }, pipe), {
    remoteIp: '192.0.2.1',
    remotePort: 4000,
    localIp: '198.51.100.2',
    localPort: 25,
    clientHostname: 'mail.example.net',
  });
  assert.equal(connectionFromEnv({ TCPREMOTEIP: 'not an ip', REMOTE_ADDR: '::ffff:203.0.113.9', REMOTE_PORT: '99999' }, pipe)?.remoteIp, '203.0.113.9');
  assert.equal(connectionFromEnv({ REMOTE_ADDR: '203.0.113.9', REMOTE_PORT: '99999' }, pipe)?.remotePort, 0, 'a port out of range is no port');
  assert.equal(connectionFromEnv({ SOCAT_PEERADDR: '2001:db8::1', SOCAT_PEERPORT: '5000' }, pipe)?.remoteIp, '2001:db8::1');
  assert.equal(connectionFromEnv({}, pipe), undefined, 'pipes name no peer');
  assert.equal(connectionFromEnv({ TCPREMOTEIP: '192.0.2.1', TCPREMOTEHOST: 'bad host\r\nname' }, pipe)?.clientHostname, undefined);
});

test('connectionFromEnv: RBLSMTPD is passed on as set, empty included', () => {
  assert.equal(connectionFromEnv({ TCPREMOTEIP: '192.0.2.1' }, pipe)?.rblsmtpd, undefined);
  assert.equal(connectionFromEnv({ TCPREMOTEIP: '192.0.2.1', RBLSMTPD: '' }, pipe)?.rblsmtpd, '');
  assert.equal(connectionFromEnv({ TCPREMOTEIP: '192.0.2.1', RBLSMTPD: '-go away' }, pipe)?.rblsmtpd, '-go away');
});

test('rblsmtpdRefusal: "-" means permanent; control characters cannot break the reply', () => {
  assert.deepEqual(rblsmtpdRefusal('-Blocked, see http://x.test/'), { permanent: true, text: 'Blocked, see http://x.test/' });
  assert.deepEqual(rblsmtpdRefusal('Busy'), { permanent: false, text: 'Busy' });
  assert.deepEqual(rblsmtpdRefusal('one\r\n250 ok\x00'), { permanent: false, text: 'one 250 ok' });
  assert.deepEqual(rblsmtpdRefusal('-'), { permanent: true, text: 'Message refused' });
  assert.equal(rblsmtpdRefusal('x'.repeat(1000)).text.length, 400);
});
