// The registry of checks (src/policy/index.ts) against the docs and the engine: unique names, the
// same order as docs/flow.md's "Checks, in order" table, nothing built for a disabled setting,
// and the engine running each phase's checks in registry order.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REGISTRY, buildChecks } from './index.ts';
import { PolicyEngine } from './engine.ts';
import type { SessionInfo } from './context.ts';
import type { Phase } from './verdict.ts';
import { configSchema, type ConfigInput } from '../config/schema.ts';
import type { DnsResolver } from '../dns/resolver.ts';
import type { Store } from '../store/store.ts';
import { silentLogger } from '../util/log.ts';

const PHASES: readonly Phase[] = ['connect', 'helo', 'auth', 'mail', 'rcpt', 'data'];
const docsFile = path.join(import.meta.dirname, '../../docs/flow.md');
/** Never asked: these tests build checks, they do not run DNS ones or the store's. */
const dns = {} as DnsResolver;
const store = {} as Store;

/** The rows of docs/flow.md's "Checks, in order" table: [phase, name]. */
function documentedChecks(): [string, string][] {
  const text = fs.readFileSync(docsFile, 'utf8');
  const start = text.indexOf('### Checks, in order');
  assert.ok(start >= 0, 'docs/flow.md has a "Checks, in order" section');
  const section = text.slice(start).split(/\n#{2,3} /)[0] ?? '';
  return [...section.matchAll(/^\| (\w+) \| `(\w+)` \|/gm)].map((m) => [m[1] ?? '', m[2] ?? '']);
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-registry-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function tmpFile(name: string, content: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, content);
  return file;
}

/** A config that switches every check on. */
function everything(): ConfigInput {
  return {
    hostname: 'mx.example.test',
    local_domains: ['example.test'],
    deliver: 'smtp://127.0.0.1:25',
    smtp: { early_talker: 'reject' },
    ban: { ip: ['192.0.2.1'], mailfrom: ['*@spam.test'], rcptto: ['nobody@example.test'] },
    dnsbl: { zones: [{ zone: 'bl.example' }], rhsbl_helo: [{ zone: 'dbl.example' }], rhsbl_sender: [{ zone: 'dbl.example' }] },
    rdns: { require: 'ptr' },
    mail_from: { require_domain: true },
    limits: {
      tarpit_start: 10,
      fromip_max: 100,
      rates: [
        { name: 'conns', key: 'client_ip', count: 'connections', max: 10, per: '1m' },
        { name: 'auth', key: 'client_net', count: 'auth_failures', max: 10, per: '1h' },
        { name: 'rcpts', key: 'sender', count: 'recipients', max: 100, per: '1h' },
      ],
    },
    throttle: { rate: 10 },
    rules_file: tmpFile('rules', 'allow:ALL:ALL:ALL\n'),
    recipients: { file: tmpFile('recipients', 'alice@example.test\n'), callout: {} },
    greylist: {},
    spf: {},
    dmarc: {},
    filters: { mfilter: tmpFile('mfilter.rul', 'if (exists("X-Foo")) spamdetect(1, "foo")\n'), rules: [tmpFile('local.cf', 'header FOO X-Foo =~ /x/\nscore FOO 1\n')], scanners: [{ type: 'exec', command: ['/bin/true'], on_error: 'accept' }] },
  };
}

test('every registry entry has a unique name and one phase', () => {
  const names = REGISTRY.map((m) => m.name);
  assert.equal(new Set(names).size, names.length, `duplicate check names: ${names.join(', ')}`);
  for (const m of REGISTRY) assert.ok(PHASES.includes(m.phase), `${m.name}: phase ${m.phase}`);
});

test('docs/flow.md lists the checks in registry order, with their phases', () => {
  assert.deepEqual(
    documentedChecks(),
    REGISTRY.map((m) => [m.phase, m.name]),
  );
});

test('with every setting on, each registry entry builds its check, in registry order', () => {
  const config = configSchema.parse(everything());
  const checks = buildChecks(config, store, dns, silentLogger);
  assert.deepEqual(
    checks.map((c) => [c.phase, c.name]),
    REGISTRY.map((m) => [m.phase, m.name]),
  );
});

test('disabled settings build no check; DNS checks need a resolver, AUTH throttling the store', () => {
  const off = configSchema.parse({
    hostname: 'mx.example.test',
    local_domains: ['example.test'],
    smtp: { early_talker: 'ignore' },
    rdns: { require: 'off' },
    mail_from: { require_domain: false },
    limits: { tarpit_start: 0 },
    auth: { enabled: false },
  });
  const always = ['helo', 'rblsmtpd', 'max_rcpts', 'null_sender', 'relay_probe', 'local_domains', 'relay'];
  assert.deepEqual(
    buildChecks(off, store, dns, silentLogger).map((c) => c.name),
    always,
  );
  for (const service of ['dns', 'store'] as const) {
    const without = buildChecks(configSchema.parse(everything()), service === 'store' ? undefined : store, service === 'dns' ? undefined : dns, silentLogger).map((c) => c.name);
    for (const m of REGISTRY) {
      if (m.needs?.includes(service)) assert.ok(!without.includes(m.name), `${m.name} is not built without the ${service}`);
      else assert.ok(without.includes(m.name), `${m.name} is built without the ${service}`);
    }
  }
});

test("the engine runs each phase's checks in registry order and knows the declared waivers", () => {
  const engine = new PolicyEngine(buildChecks(configSchema.parse(everything()), store, dns, silentLogger), silentLogger);
  for (const phase of PHASES) {
    assert.deepEqual(
      engine.checkNames(phase),
      REGISTRY.filter((m) => m.phase === phase).map((m) => m.name),
      phase,
    );
  }
  for (const m of REGISTRY) assert.equal(engine.waivedAfterAuth(m.name), m.waives?.afterAuth === true, m.name);
  assert.deepEqual(
    REGISTRY.filter((m) => m.waives?.afterAuth).map((m) => m.name),
    ['dnsbl', 'rdns', 'helo', 'rhsbl_helo'],
  );
});

test('a check that waives relay clients is skipped for them, and runs for others', async () => {
  const config = configSchema.parse({ hostname: 'mx.example.test', relay: { forward_from_ip: ['10.0.0.0/8'] } });
  const helo = buildChecks(config, undefined, undefined, silentLogger).find((c) => c.name === 'helo');
  assert.ok(helo && helo.phase === 'helo');
  const session = (ip: string): SessionInfo => ({ sid: 's', remoteIp: ip, remotePort: 1, localIp: '192.0.2.25', localPort: 25, tls: false, esmtp: true, earlyTalker: false, rcptCount: 0 });
  assert.equal((await helo.run({ session: session('10.1.2.3'), helo: 'localhost' })).kind, 'continue');
  assert.equal((await helo.run({ session: session('198.51.100.7'), helo: 'localhost' })).kind, 'reject');
});
