import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clientNetwork } from './cidr.ts';

test('clientNetwork: IPv4 /24, IPv6 /64 in canonical form, IPv4-mapped as IPv4, garbage undefined', () => {
  assert.equal(clientNetwork('198.51.100.77'), '198.51.100.0/24');
  assert.equal(clientNetwork('198.51.100.77', 16), '198.51.0.0/16');
  assert.equal(clientNetwork('2001:db8:1:2:3:4:5:6'), '2001:db8:1:2::/64');
  assert.equal(clientNetwork('2001:0DB8:0001:0002:ffff::1'), '2001:db8:1:2::/64');
  assert.equal(clientNetwork('::ffff:192.0.2.9'), '192.0.2.0/24');
  assert.equal(clientNetwork('0:0:0:0:0:ffff:c000:209'), '192.0.2.0/24');
  assert.equal(clientNetwork('::1'), '::/64');
  assert.equal(clientNetwork('not-an-ip'), undefined);
  assert.equal(clientNetwork('fe80::1%eth0'), undefined);
});
