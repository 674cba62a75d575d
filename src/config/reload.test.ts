import { test } from 'node:test';
import assert from 'node:assert/strict';
import { configSchema } from './schema.ts';
import { APPLIED_ON_RELOAD, RESTART_ONLY, restartOnlyChanges, withRunningRestartOnly } from './reload.ts';
import { defaultConfig } from './load.ts';

test('every top-level setting is either applied by a reload or named as restart-only', () => {
  const placed = new Set([...Object.keys(APPLIED_ON_RELOAD), ...Object.keys(RESTART_ONLY)].map((k) => k.split('.')[0]));
  const keys = Object.keys(configSchema.shape);
  assert.deepEqual(keys.filter((k) => !placed.has(k)), [], 'settings a reload would ignore without a word');
  assert.deepEqual([...placed].filter((k) => !keys.includes(k as string)), [], 'no setting that does not exist');
  const both = Object.keys(APPLIED_ON_RELOAD).filter((k) => k in RESTART_ONLY);
  assert.deepEqual(both, []);
  // A key split by parts (proxy_protocol) has each of its parts placed.
  for (const top of ['proxy_protocol', 'policy']) {
    const parts = Object.keys((configSchema.shape[top as 'proxy_protocol'] as unknown as { unwrap(): { shape: object } }).unwrap().shape);
    for (const p of parts) assert.ok(`${top}.${p}` in APPLIED_ON_RELOAD || `${top}.${p}` in RESTART_ONLY, `${top}.${p} is placed`);
  }
});

test('restartOnlyChanges names the restart-only settings that changed, nothing else', () => {
  const a = defaultConfig();
  assert.deepEqual(restartOnlyChanges(a, { ...a, hostname: 'other.example' }), []);
  assert.deepEqual(restartOnlyChanges(a, { ...a, listen: [{ address: '127.0.0.1:25', mode: 'mx' }], user: 'mxguard' }), ['listen', 'user']);
  assert.deepEqual(restartOnlyChanges(a, { ...a, proxy_protocol: { ...a.proxy_protocol, listen: ['127.0.0.1:2525'] } }), ['proxy_protocol.listen']);
  assert.deepEqual(restartOnlyChanges(a, { ...a, proxy_protocol: { ...a.proxy_protocol, trusted: ['10.0.0.1'] } }), []);
});

test('withRunningRestartOnly keeps the running restart-only values and takes the rest from the new config', () => {
  const a = { ...defaultConfig(), user: 'mxguard' };
  const next = { ...a, hostname: 'new.example', data_dir: '/elsewhere', proxy_protocol: { ...a.proxy_protocol, listen: ['127.0.0.1:2525'], timeout: 5 } };
  delete (next as { user?: string }).user;
  const applied = withRunningRestartOnly(a, next);
  assert.equal(applied.hostname, 'new.example');
  assert.equal(applied.data_dir, a.data_dir);
  assert.equal(applied.user, 'mxguard');
  assert.deepEqual(applied.proxy_protocol, { ...a.proxy_protocol, timeout: 5 });
  assert.deepEqual(restartOnlyChanges(a, applied), []);
});
