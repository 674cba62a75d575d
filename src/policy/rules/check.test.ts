// The seed 004 example rule set (test/fixtures/obtuse-example.rules) through a PolicyEngine, with
// the checks that follow rules_file in the real list: allow lets them decide, deny refuses and
// asks for the session to close, noto refuses that recipient only; both after noto_delay.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { PolicyEngine } from '../engine.ts';
import type { AnyCheck } from '../check.ts';
import type { RcptContext, SessionInfo } from '../context.ts';
import type { FinalVerdict } from '../verdict.ts';
import { localDomainsCheck } from '../checks/local_domains.ts';
import { relayCheck } from '../checks/relay.ts';
import { configSchema } from '../../config/schema.ts';
import { silentLogger } from '../../util/log.ts';
import type { Address } from '../../mail/address.ts';
import { parseRulesFile } from '../../config/rules-file.ts';
import type { RuleLookups } from './match.ts';
import { rulesCheck, type ClosingRefusal } from './check.ts';

const FILE = '/etc/mxguard/smtpd_check_rules';
const FIXTURE = new URL('../../../test/fixtures/obtuse-example.rules', import.meta.url);
const exampleRules = parseRulesFile(readFileSync(FIXTURE, 'utf8'), FILE).rules;

function session(ip: string, extra: Record<string, unknown> = {}): SessionInfo {
  return { sid: 's', remoteIp: ip, remotePort: 40000, localIp: '192.0.2.25', localPort: 25, tls: false, esmtp: true, earlyTalker: false, rcptCount: 0, ...extra };
}
function addr(a: string): Address {
  const at = a.lastIndexOf('@');
  return { address: a, local: at === -1 ? a : a.slice(0, at), domain: at === -1 ? '' : a.slice(at + 1), utf8: false };
}
function rcpt(s: SessionInfo, from: string, to: string): RcptContext {
  return { session: s, tx: { mailFrom: addr(from), params: {}, rcpts: [] }, rcpt: addr(to), score: 0 };
}

function fakeDns(ptr: Record<string, string>) {
  const asked: string[] = [];
  const lookups: RuleLookups = {
    async hostname(ip) {
      asked.push(ip);
      if (ptr[ip] === 'FAIL') throw new Error('DNS timeout');
      return ptr[ip];
    },
    async nameservers() {
      return [];
    },
  };
  return { lookups, asked };
}

function engineFor(lookups: RuleLookups, notoDelayMs = 0): PolicyEngine {
  const relay = configSchema.parse({ relay: { forward_from_ip: ['192.168.1.0/24', '192.168.2.25'] } }).relay;
  const checks: AnyCheck[] = [rulesCheck(exampleRules, lookups, { notoDelayMs, file: FILE }), localDomainsCheck(['example.com', 'mailhub.example.com']), relayCheck(relay, undefined)];
  return new PolicyEngine(checks, silentLogger);
}

const closing = (v: FinalVerdict | undefined): boolean => (v as ClosingRefusal | undefined)?.closeSession === true;

test('allow: the internal network and the mail hub relay, outsiders reach example.com; later checks decide', async () => {
  const { lookups, asked } = fakeDns({});
  const engine = engineFor(lookups, 5000);
  const internal = await engine.run('rcpt', rcpt(session('192.168.1.7'), 'alice@example.com', 'friend@elsewhere.test'));
  assert.equal(internal.final?.kind, 'accept');
  assert.equal(internal.final?.check, 'relay', 'the allow rule let relay decide');
  assert.equal(internal.delayMs, 0, 'no noto_delay for allow');
  const hub = await engine.run('rcpt', rcpt(session('192.168.2.25'), 'list@example.com', 'member@elsewhere.test'));
  assert.equal(hub.final?.check, 'relay');
  const inbound = await engine.run('rcpt', rcpt(session('198.51.100.7'), 'someone@elsewhere.test', 'alice@example.com'));
  assert.equal(inbound.final?.kind, 'accept');
  assert.equal(inbound.final?.check, 'local_domains');
  const toHub = await engine.run('rcpt', rcpt(session('198.51.100.7'), '', 'postmaster@mailhub.example.com'));
  assert.equal(toHub.final?.check, 'local_domains', 'bounces (null sender) to us are welcome');
  assert.deepEqual(asked, ['198.51.100.7', '198.51.100.7'], 'PTR only for outsiders, which the deny rule\'s host pattern needs');
});

test('noto: relaying is refused for that recipient with %I in the text, after noto_delay; the session stays', async () => {
  const { lookups } = fakeDns({});
  const result = await engineFor(lookups, 1500).run('rcpt', rcpt(session('198.51.100.7'), 'spammer@elsewhere.test', 'victim@victim.test'));
  const v = result.final;
  assert.ok(v && v.kind === 'reject', JSON.stringify(v));
  assert.equal(v.check, 'rules_file');
  assert.equal(v.code, 550);
  assert.equal(v.enhanced, '5.7.1');
  assert.equal(v.text, 'Relaying denied: 198.51.100.7 may not send to <victim@victim.test> through this host');
  assert.equal(v.setting, 'rules_file line 17');
  assert.equal(v.log, `smtp connection from UNKNOWN@UNKNOWN(198.51.100.7) attempted MAIL FROM: <spammer@elsewhere.test> RCPT TO: <victim@victim.test>, noto by line 17 of ${FILE}`);
  assert.equal(result.delayMs, 1500);
  assert.equal(closing(v), false, 'noto keeps the session');
});

test('deny: the spam source is refused and the session is to be closed, by address or by host name', async () => {
  const { lookups } = fakeDns({ '198.51.100.66': 'mx3.spam.example.net' });
  const engine = engineFor(lookups, 1500);
  const byIp = await engine.run('rcpt', rcpt(session('203.0.113.9'), 'a@b.test', 'alice@example.com'));
  const v = byIp.final;
  assert.ok(v && v.kind === 'reject', JSON.stringify(v));
  assert.equal(v.text, 'Mail from 203.0.113.9 (unknown) refused: go away');
  assert.equal(closing(v), true, 'deny closes the session');
  assert.equal(byIp.delayMs, 1500);
  assert.match(v.log ?? '', /, denied by line 11 of \/etc\/mxguard\/smtpd_check_rules$/);

  const byName = await engine.run('rcpt', rcpt(session('198.51.100.66'), 'a@b.test', 'alice@example.com'));
  assert.ok(byName.final?.kind === 'reject');
  assert.equal(byName.final.text, 'Mail from 198.51.100.66 (mx3.spam.example.net) refused: go away');
  assert.equal(byName.final.log, `smtp connection from UNKNOWN@mx3.spam.example.net(198.51.100.66) attempted MAIL FROM: <a@b.test> RCPT TO: <alice@example.com>, denied by line 11 of ${FILE}`);
  assert.equal(closing(byName.final), true);
});

test('a DNS failure a rule depends on is 451 from the engine, never a pass', async () => {
  const { lookups } = fakeDns({ '198.51.100.8': 'FAIL' });
  const result = await engineFor(lookups).run('rcpt', rcpt(session('198.51.100.8'), 'a@b.test', 'alice@example.com'));
  assert.equal(result.final?.kind, 'tempfail');
  assert.ok(result.final?.kind === 'tempfail' && result.final.code === 451);
});

test('allow returns continue with smtpd\'s log line; no rule matching is a plain continue', async () => {
  const { lookups } = fakeDns({});
  const check = rulesCheck(exampleRules, lookups, { notoDelayMs: 0, file: FILE });
  const v = await check.run(rcpt(session('192.168.1.7'), 'alice@example.com', 'friend@elsewhere.test'));
  assert.deepEqual(v, {
    kind: 'continue',
    check: 'rules_file',
    log: `smtp connection from UNKNOWN@UNKNOWN(192.168.1.7) MAIL FROM: <alice@example.com> RCPT TO: <friend@elsewhere.test>, allowed by line 8 of ${FILE}`,
  });
  const none = rulesCheck(parseRulesFile('deny:10.0.0.0/8:ALL:ALL', FILE).rules, lookups, { notoDelayMs: 0, file: FILE });
  assert.deepEqual(await none.run(rcpt(session('192.0.2.1'), 'a@b.test', 'c@d.test')), { kind: 'continue' });
});

test('ident: asked once per session and only when a rule can use the answer', async () => {
  const { lookups } = fakeDns({});
  const asked: string[] = [];
  const ident = async (s: SessionInfo) => {
    asked.push(s.remoteIp);
    return 'joe';
  };
  const userRules = parseRulesFile('noto:KNOWN@ALL:ALL:ALL:550 %U@%I may not', FILE).rules;
  const check = rulesCheck(userRules, lookups, { notoDelayMs: 0, file: FILE, ident });
  const s = session('192.0.2.1');
  const first = await check.run(rcpt(s, 'a@b.test', 'c@d.test'));
  await check.run(rcpt(s, 'a@b.test', 'e@d.test'));
  assert.ok(first.kind === 'reject' && first.text === 'joe@192.0.2.1 may not');
  assert.deepEqual(asked, ['192.0.2.1']);

  const failing = rulesCheck(userRules, lookups, { notoDelayMs: 0, file: FILE, ident: () => Promise.reject(new Error('ident timeout')) });
  assert.deepEqual(await failing.run(rcpt(session('192.0.2.3'), 'a@b.test', 'c@d.test')), { kind: 'continue' }, 'no IDENT answer: KNOWN@ does not match');

  const plain = rulesCheck(exampleRules, lookups, { notoDelayMs: 0, file: FILE, ident });
  await plain.run(rcpt(session('198.51.100.7'), 'a@b.test', 'c@d.test'));
  assert.deepEqual(asked, ['192.0.2.1'], 'no rule uses IDENT: no query');
});

test('a session that knows the client host name passes it; RBL entries need a blocklist lookup at construction', async () => {
  const { lookups, asked } = fakeDns({});
  const engine = engineFor(lookups);
  const v = (await engine.run('rcpt', rcpt(session('198.51.100.9', { clientHostname: 'relay.spam.example.net' }), 'a@b.test', 'u@example.com'))).final;
  assert.ok(v?.kind === 'reject' && v.text === 'Mail from 198.51.100.9 (relay.spam.example.net) refused: go away');
  assert.deepEqual(asked, []);
  assert.throws(() => rulesCheck(parseRulesFile('# x\nnoto:RBL.bl.example:ALL:ALL', FILE).rules, lookups, { notoDelayMs: 0, file: FILE }), /smtpd_check_rules:2: an RBL\.zone entry needs a DNS blocklist lookup/);
});
