import { test } from 'node:test';
import assert from 'node:assert/strict';
import { heloProblem } from './helo.ts';
import { configSchema } from '../../config/schema.ts';
import { PatternList } from '../../util/pattern.ts';

const settings = configSchema.parse({}).helo;
const ctx = { ourName: 'mx.example.test', ourIp: '192.0.2.25', clientIp: '198.51.100.7' };
const none = new PatternList([]);
const why = (name: string, s = settings, refused = none) => heloProblem(name, s, ctx, refused);

test('refused HELO names, each for its reason', () => {
  for (const n of ['localhost', 'LOCALHOST.localdomain', 'localhost.example.net', '127.0.0.1', '[127.0.0.1]', '[IPv6:::1]']) assert.match(why(n) ?? '', /localhost/, n);
  for (const n of ['mx.example.test', 'MX.EXAMPLE.TEST.', '192.0.2.25', '[192.0.2.25]']) assert.match(why(n) ?? '', /our name/, n);
  assert.match(why('198.51.100.7') ?? '', /brackets/);
  assert.match(why('[203.0.113.9]') ?? '', /not your address/);
  assert.match(why('workstation') ?? '', /fully qualified/);
  assert.match(why('bad_name.example.com') ?? '', /not a valid host name/);
  assert.match(why('-x.example.com') ?? '', /not a valid host name/);
  assert.match(why('a.dynamic.example.net', settings, new PatternList(['*.dynamic.example.net'])) ?? '', /reject_names/);
});

test('good names pass, and each test can be switched off', () => {
  for (const n of ['mail.sender.example', 'relay-1.example.org', '[198.51.100.7]', '[IPv6:2001:db8::1]'.replace('2001:db8::1', '::ffff:198.51.100.7')]) assert.equal(why(n), undefined, n);
  assert.equal(why('workstation', { ...settings, reject_invalid: false }), undefined);
  assert.equal(why('localhost', { ...settings, reject_localhost: false, reject_invalid: false }), undefined);
  assert.equal(why('198.51.100.7', { ...settings, reject_bare_ip: false, reject_invalid: false }), undefined);
});
