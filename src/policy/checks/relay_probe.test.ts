import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { PolicyEngine } from '../engine.ts';
import type { AnyCheck } from '../check.ts';
import type { RcptContext } from '../context.ts';
import type { FinalVerdict } from '../verdict.ts';
import { findProbe, probeReason, relayProbeCheck, relayRulesAllow, type MayRelay, type ProbeAddress } from './relay_probe.ts';
import { localDomainsCheck } from './local_domains.ts';
import { relayCheck } from './relay.ts';
import { parseMailbox, type Address } from '../../mail/address.ts';
import { parsePath } from '../../smtp/command.ts';
import { configSchema } from '../../config/schema.ts';
import { silentLogger } from '../../util/log.ts';

interface FixtureProbe {
  n: number;
  mail_from: string;
  rcpt_to: string;
}
const FIXTURE = JSON.parse(fs.readFileSync(path.resolve(import.meta.dirname, '../../../test/fixtures/open-relay-probes.json'), 'utf8')) as { probes: FixtureProbe[] };

const OUR_IP = '192.0.2.25';
const LOCAL = 'example.test';
const VICTIM = 'victim.test';

/** A template of the fixture with {to}, {from}, {domain} (foreign), {srv} and {ip} filled in. */
function expand(template: string, vars: { srv: string; ip: string }): string {
  return template.replaceAll('{to}', 'relaytest').replaceAll('{from}', 'antispam').replaceAll('{domain}', VICTIM).replaceAll('{srv}', vars.srv).replaceAll('{ip}', vars.ip);
}

/** An address as the parser would give it, the source route kept as the proposed Address.sourceRoute. */
type TestAddress = Address & { sourceRoute?: string };
function addr(mailbox: string, sourceRoute?: string): TestAddress {
  const a = parseMailbox(mailbox, true);
  if (typeof a === 'string') throw new Error(`${mailbox}: ${a}`);
  return sourceRoute === undefined ? a : { ...a, sourceRoute };
}

/** Splits a path the parser refuses, so probeReason can be asked about it anyway. */
function lenient(p: string): ProbeAddress {
  let rest = p;
  let sourceRoute: string | undefined;
  if (rest.startsWith('@')) {
    const colon = rest.indexOf(':');
    sourceRoute = rest.slice(0, colon);
    rest = rest.slice(colon + 1);
  }
  const at = rest.lastIndexOf('@');
  if (rest.endsWith('"') || at === -1) return { local: rest, domain: '', sourceRoute };
  return { local: rest.slice(0, at), domain: rest.slice(at + 1).toLowerCase(), sourceRoute };
}

function ctxFor(rcpt: TestAddress, opts: { ip?: string; localIp?: string; from?: string } = {}): RcptContext {
  return {
    session: { sid: 's', remoteIp: opts.ip ?? '203.0.113.5', remotePort: 1, localIp: opts.localIp ?? OUR_IP, localPort: 25, tls: false, esmtp: true, earlyTalker: false, rcptCount: 0 },
    tx: { mailFrom: addr(opts.from ?? 'antispam@sender.test'), params: {}, rcpts: [] },
    rcpt,
    score: 0,
  };
}

const relaySettings = (relay: Record<string, unknown>) => configSchema.parse({ relay }).relay;
/** Loopback is not a relay network here: only the rules given may relay. */
const CLOSED = { forward_from_ip: ['192.168.1.0/24'] };

function engine(opts: { probe?: boolean; mayRelay?: 'rules'; relay?: Record<string, unknown>; ourIps?: string[] } = {}): PolicyEngine {
  const relay = relayCheck(relaySettings(opts.relay ?? CLOSED), undefined);
  const checks: AnyCheck[] = [];
  if (opts.probe !== false) checks.push(relayProbeCheck([LOCAL], opts.ourIps ?? [OUR_IP], opts.mayRelay ? relayRulesAllow(relay) : undefined));
  checks.push(localDomainsCheck([LOCAL]), relay);
  return new PolicyEngine(checks, silentLogger);
}

async function decide(e: PolicyEngine, rcpt: TestAddress, opts?: Parameters<typeof ctxFor>[1]): Promise<FinalVerdict | undefined> {
  return (await e.run('rcpt', ctxFor(rcpt, opts))).final;
}

function assertRelayDenied(v: FinalVerdict | undefined, rcpt: string, what: string): void {
  assert.ok(v && v.kind === 'reject', `${what}: expected a refusal, got ${JSON.stringify(v)}`);
  assert.equal(v.code, 554, what);
  assert.equal(v.enhanced, '5.7.1', what);
  assert.equal(v.text, `<${rcpt}>: Relay access denied`, what);
}

test('the fixture holds the 16 nmap/Metasploit relay tests', () => {
  assert.deepEqual(
    FIXTURE.probes.map((p) => p.n),
    Array.from({ length: 16 }, (_, i) => i + 1),
  );
});

// Each of the 16 probes, with {srv} = one of our local domains and {ip} = our address or a
// foreign one: refused by the parser (501) or with 554 5.7.1 Relay access denied, never accepted.
for (const variant of [
  { name: 'ip ours', srv: LOCAL, ip: OUR_IP },
  { name: 'ip foreign', srv: LOCAL, ip: '198.51.100.9' },
  { name: 'srv not local', srv: 'mx.example.test', ip: OUR_IP },
]) {
  test(`every open-relay probe is refused (${variant.name})`, async () => {
    const protectedEngine = engine();
    const unprotected = engine({ probe: false });
    const syntax: number[] = [];
    const savedByCheck: number[] = [];
    for (const p of FIXTURE.probes) {
      const rcpt = expand(p.rcpt_to, variant);
      const what = `#${p.n} RCPT TO:<${rcpt}>`;
      // From probe 5 on, each one routes through the address itself: probeReason sees it.
      if (p.n >= 5) assert.ok(probeReason(lenient(rcpt), [OUR_IP]), `${what}: probeReason names it`);
      const parsed = parsePath(`TO:<${rcpt}>`, 'TO');
      if (!parsed.ok) {
        assert.equal(parsed.code, 501, what);
        syntax.push(p.n);
        continue;
      }
      const v = await decide(protectedEngine, parsed.address);
      assertRelayDenied(v, parsed.address.address, what);
      const without = await decide(unprotected, parsed.address);
      if (without?.kind === 'accept') {
        assert.equal(v?.check, 'relay_probe', what);
        savedByCheck.push(p.n);
      }
    }
    // The parser refuses these outright: a quoted address without a domain, no @ at all, an
    // unquoted second @.
    assert.deepEqual(syntax, [7, 8, 9, 11, 14]);
    // Without relay_probe, local_domains would accept these as local mail (percent hack and bang
    // path through one of our domains): the reason the check runs before it.
    assert.deepEqual(savedByCheck, variant.srv === LOCAL ? [6, 16] : []);
  });
}

test('probeReason names each probe form', () => {
  const r = (a: ProbeAddress) => probeReason(a, [OUR_IP]);
  assert.equal(r(addr('u%victim.test@example.test')), 'percent hack (%)');
  assert.equal(r(addr('victim.test!u@example.test')), 'bang path (!)');
  assert.equal(r(addr('"u@victim.test"@example.test')), 'quoted local part hides an address (@)');
  assert.equal(r(addr('"u%victim.test"@example.test')), 'quoted local part hides a percent hack (%)');
  assert.equal(r(addr('"victim.test!u"@example.test')), 'quoted local part hides a bang path (!)');
  assert.equal(r(addr('"u\\@victim.test"@example.test')), 'quoted local part hides an address (@)', 'a backslash-escaped @');
  assert.equal(r({ local: 'u@victim.test', domain: 'example.test' }), 'second @ in the local part');
  assert.equal(r(addr('u@[198.51.100.9]')), 'address literal [198.51.100.9] is not ours');
  assert.equal(r(addr('u@[IPv6:2001:db8::1]')), 'address literal [ipv6:2001:db8::1] is not ours');
  assert.equal(r(addr('u@victim.test', '@example.test,@[192.0.2.25]')), 'source route @example.test,@[192.0.2.25]:');
  assert.equal(r(addr('u%victim.test@[198.51.100.9]')), 'percent hack (%), address literal [198.51.100.9] is not ours');
  assert.equal(r(addr('U%VICTIM.TEST@EXAMPLE.TEST')), 'percent hack (%)', 'upper case');
  assert.deepEqual(findProbe(addr('a.test!b.test!u@example.test'))?.hosts, ['a.test', 'b.test']);
  assert.deepEqual(findProbe(addr('u%b.test%a.test@example.test'))?.hosts, ['b.test', 'a.test']);
  assert.deepEqual(findProbe(addr('"u@victim.test."@example.test'))?.hosts, ['victim.test'], 'trailing dot dropped');
  assert.deepEqual(findProbe(addr('victim.test!u%example.test@example.test'))?.hosts, ['victim.test', 'u', 'example.test'], 'mixed: every part may be a host');
});

test('legitimate addresses are not probes and are accepted as local', async () => {
  const e = engine();
  for (const a of [
    'alice@example.test',
    'first.last@example.test',
    'user+tag@example.test',
    'user+tag+more@example.test',
    'o-connor@example.test',
    'under_score@example.test',
    'a=b@example.test',
    "o'brien@example.test",
    'UPPER.Case@example.test',
    '"john smith"@example.test',
    '"very.unusual..name"@example.test',
    '"quoted\\"inside"@example.test',
    '"dots..twice"@example.test',
    '"a:b;c"@example.test',
    'postmaster',
  ]) {
    const rcpt = addr(a);
    assert.equal(probeReason(rcpt, [OUR_IP]), undefined, a);
    if (rcpt.domain !== '') assert.equal((await decide(e, rcpt))?.check, 'local_domains', a);
  }
  assert.equal(probeReason(addr(`postmaster@[${OUR_IP}]`), [OUR_IP]), undefined, 'our own address literal');
  assert.equal(probeReason(addr('u@[IPv6:0:0:0:0:0:0:0:1]'), ['::1']), undefined, 'IPv6 literal in another spelling');
  assert.equal(probeReason(addr('u@[127.0.0.1]'), ['::ffff:127.0.0.1']), undefined, 'IPv4-mapped');
});

test('the refusal: 554 5.7.1 <addr>: Relay access denied, the reason in the log, setting relay', async () => {
  const v = await decide(engine(), addr('u%victim.test@example.test'));
  assert.ok(v && v.kind === 'reject');
  assert.equal(v.check, 'relay_probe');
  assert.equal(v.setting, 'relay');
  assert.equal(`${v.code} ${v.enhanced} ${v.text}`, '554 5.7.1 <u%victim.test@example.test>: Relay access denied');
  assert.equal(v.log, 'Command RCPT refused (relay probe: percent hack (%); to victim.test)');
});

test('user%victim.test@example.test: accepted as local without the check, refused when it runs first, accepted when it runs too late', async () => {
  const rcpt = addr('user%victim.test@example.test');
  assert.equal((await decide(engine({ probe: false }), rcpt))?.kind, 'accept');
  assert.equal((await decide(engine(), rcpt))?.check, 'relay_probe');
  const late = new PolicyEngine([localDomainsCheck([LOCAL]), relayProbeCheck([LOCAL], [OUR_IP])], silentLogger);
  assert.equal((await decide(late, rcpt))?.check, 'local_domains', 'must be registered before local_domains');
});

test('routing that never leaves us is not relaying: it continues to local_domains', async () => {
  const e = engine();
  for (const a of ['alice%example.test@example.test', 'example.test!alice@example.test', '"alice@example.test"@example.test', `"alice@[${OUR_IP}]"@example.test`]) {
    assert.equal((await decide(e, addr(a)))?.check, 'local_domains', a);
  }
  assert.equal((await decide(e, addr('u@example.test', `@example.test,@[${OUR_IP}]`)))?.check, 'local_domains', 'source route through our own hosts');
  assertRelayDenied(await decide(e, addr('u@example.test', '@victim.test')), 'u@example.test', 'source route through a foreign host');
  assertRelayDenied(await decide(e, addr('a%example.test%victim.test@example.test')), 'a%example.test%victim.test@example.test', 'one foreign hop is enough');
  assertRelayDenied(await decide(e, addr('victim.test!u%example.test@example.test')), 'victim.test!u%example.test@example.test', 'mixed forms');
});

test('address literals: ours (configured or the one the client connected to) pass on, others are refused', async () => {
  const check = relayProbeCheck([LOCAL], [OUR_IP]);
  const kind = async (a: string, localIp = '127.0.0.1') => (await check.run(ctxFor(addr(a), { localIp }))).kind;
  assert.equal(await kind(`u@[${OUR_IP}]`), 'continue');
  assert.equal(await kind('u@[127.0.0.1]'), 'continue', 'the local address of the session');
  assert.equal(await kind('u@[127.0.0.1]', '::ffff:127.0.0.1'), 'continue');
  assert.equal(await kind('u@[IPv6:::1]', '::1'), 'continue');
  assert.equal(await kind('u@[198.51.100.9]'), 'reject');
  assert.equal(await kind('u@[IPv6:2001:db8::1]'), 'reject');
  assert.equal(await kind('u%victim.test@[127.0.0.1]'), 'reject', 'ours, but routed on');
});

test('a relay rule that covers every host the probe names lets it continue; nothing else does', async () => {
  const e = engine({ mayRelay: 'rules', relay: { ...CLOSED, relay_to: ['partner.test'] } });
  // relay_to: the destination is asked about, not the outer domain.
  assert.equal((await decide(e, addr('u%partner.test@example.test')))?.check, 'local_domains');
  assertRelayDenied(await decide(e, addr('u%victim.test@example.test')), 'u%victim.test@example.test', 'relay_to does not cover victim.test');
  assertRelayDenied(await decide(e, addr('u%victim.test%partner.test@example.test')), 'u%victim.test%partner.test@example.test', 'partner.test would pass it on to victim.test');
  // forward_from_ip: a client that may relay anyway.
  const lan = { ip: '192.168.1.7' };
  assert.equal((await decide(e, addr('u%victim.test@example.test'), lan))?.check, 'local_domains');
  const literal = await decide(e, addr('u@[198.51.100.9]'), lan);
  assert.ok(literal?.kind === 'accept' && literal.check === 'relay', 'the relay check accepts it, not the probe check');
  // forward_from (the sender domain).
  const ff = engine({ mayRelay: 'rules', relay: { ...CLOSED, forward_from: ['trusted.test'] } });
  assert.equal((await decide(ff, addr('victim.test!u@example.test'), { from: 'boss@trusted.test' }))?.check, 'local_domains');
  assert.equal((await decide(ff, addr('victim.test!u@example.test'), { from: 'boss@other.test' }))?.check, 'relay_probe');
});

test('mayRelay is asked about each foreign host, and may be async', async () => {
  const asked: string[] = [];
  const mayRelay: MayRelay = async (_ctx, destination) => {
    asked.push(destination);
    return destination !== 'victim.test';
  };
  const check = relayProbeCheck([LOCAL], [OUR_IP], mayRelay);
  assert.equal((await check.run(ctxFor(addr('u%a.test%example.test@example.test')))).kind, 'continue');
  assert.deepEqual(asked, ['a.test'], 'our own domains are not asked about');
  assert.equal((await check.run(ctxFor(addr('u@[198.51.100.9]')))).kind, 'continue');
  assert.equal((await check.run(ctxFor(addr('"u@victim.test"@example.test')))).kind, 'reject');
  assert.deepEqual(asked, ['a.test', '[198.51.100.9]', 'victim.test']);
});

// Source routes reach the policy only when the parser reports them: it strips
// <@a,@b:user@c> down to user@c. Proposed change to src/smtp/command.ts: Address gets
// `sourceRoute?: string` ("@a,@b"), set by parsePath when it drops a route.
test('parsePath reports the source route it strips (needs Address.sourceRoute in src/smtp/command.ts)', async () => {
  const parsed = parsePath('TO:<@victim.test,@[192.0.2.25]:relaytest@example.test>', 'TO');
  assert.ok(parsed.ok);
  assert.equal(parsed.address.address, 'relaytest@example.test');
  assert.equal((parsed.address as TestAddress).sourceRoute, '@victim.test,@[192.0.2.25]');
  assertRelayDenied(await decide(engine(), parsed.address), 'relaytest@example.test', 'routed through victim.test');
});
