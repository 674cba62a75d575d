import { test } from 'node:test';
import assert from 'node:assert/strict';
import { keyFromArgs, networksToAllow } from './store.ts';

test('networksToAllow: the /24 (/64) of an address or a narrower network; each /24 from /16; wider is refused', () => {
  assert.deepEqual(networksToAllow('198.51.100.77'), ['198.51.100.0/24']);
  assert.deepEqual(networksToAllow('198.51.100.64/26'), ['198.51.100.0/24']);
  assert.deepEqual(networksToAllow('198.51.100.0/23'), ['198.51.100.0/24', '198.51.101.0/24']);
  const wide = networksToAllow('10.1.0.0/16');
  assert.ok(Array.isArray(wide));
  assert.equal(wide.length, 256);
  assert.equal(wide[0], '10.1.0.0/24');
  assert.equal(wide[255], '10.1.255.0/24');
  assert.deepEqual(networksToAllow('203.0.255.1/22'), ['203.0.252.0/24', '203.0.253.0/24', '203.0.254.0/24', '203.0.255.0/24'], 'the base is masked, past 2^31 too');
  assert.deepEqual(networksToAllow('2001:db8:1:2::99'), ['2001:db8:1:2::/64']);
  assert.deepEqual(networksToAllow('2001:db8:1:4::/63'), ['2001:db8:1:4::/64', '2001:db8:1:5::/64']);
  assert.deepEqual(networksToAllow('::ffff:192.0.2.1'), ['192.0.2.0/24'], 'IPv4-mapped: as the SMTP side sees the client');
  assert.match((networksToAllow('10.0.0.0/8') as { error: string }).error, /wider than \/16/);
  assert.match((networksToAllow('2001:db8::/48') as { error: string }).error, /wider than \/56/);
  assert.match((networksToAllow('nonsense') as { error: string }).error, /not an IP address/);
  assert.match((networksToAllow('192.0.2.0/33') as { error: string }).error, /bad prefix/);
});

test('keyFromArgs: a key as list prints it, or IP SENDER RECIPIENT normalised as the check does', () => {
  assert.equal(keyFromArgs('triplet', ['198.51.100.0/24|a@b|c@d']), '198.51.100.0/24|a@b|c@d');
  assert.equal(keyFromArgs('triplet', ['198.51.100.9', '<Bounce-1234@Lists.Example>', 'Bob@Example.test']), '198.51.100.0/24|bounce-#@lists.example|bob@example.test');
  assert.equal(keyFromArgs('triplet', ['198.51.100.9', '<>', 'bob@example.test']), '198.51.100.0/24||bob@example.test');
  assert.equal(keyFromArgs('ip', ['198.51.100.9']), '198.51.100.0/24');
  assert.match((keyFromArgs('triplet', ['198.51.100.9', 'a@b']) as { error: string }).error, /IP SENDER RECIPIENT/);
  assert.match((keyFromArgs('triplet', ['nonsense', 'a@b', 'c@d']) as { error: string }).error, /as `list` shows it/);
});
