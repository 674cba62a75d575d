import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseRulesFile, type Rule } from '../../config/rules-file.ts';
import { globMatch, matchRules, reverseZone, rulesNeed, type RuleInput, type RuleLookups } from './match.ts';

const rules = (text: string): Rule[] => parseRulesFile(text, 'rules').rules;

/** Fake DNS: PTR names by IP, name servers by domain; counts every question. */
function fakeLookups(ptr: Record<string, string> = {}, ns: Record<string, string[]> = {}, listed: string[] = []) {
  const calls = { hostname: [] as string[], nameservers: [] as string[], rbl: [] as string[] };
  const lookups: RuleLookups = {
    async hostname(ip) {
      calls.hostname.push(ip);
      if (ptr[ip] === 'FAIL') throw new Error('DNS timeout');
      return ptr[ip];
    },
    async nameservers(domain) {
      calls.nameservers.push(domain);
      const answer = ns[domain];
      if (answer?.[0] === 'FAIL') throw new Error('SERVFAIL');
      return answer ?? [];
    },
    async rbl(ip, zone) {
      calls.rbl.push(`${ip} ${zone}`);
      return listed.includes(`${ip} ${zone}`);
    },
  };
  return { lookups, calls };
}

const env = (ip: string, from = 'sender@example.net', to = 'user@example.com', extra: Partial<RuleInput> = {}): RuleInput => ({ ip, from, to, ...extra });

async function lineOf(text: string, input: RuleInput, lookups: RuleLookups = fakeLookups().lookups): Promise<number | undefined> {
  return (await matchRules(rules(text), input, lookups))?.line;
}

test('globMatch: * is the only wildcard, case is ignored', () => {
  assert.ok(globMatch('*.example.com', 'mx.EXAMPLE.com'));
  assert.ok(!globMatch('*.example.com', 'example.com'));
  assert.ok(globMatch('*', ''));
  assert.ok(globMatch('a*b*c', 'aXXbYYc'));
  assert.ok(!globMatch('a*b*c', 'aXXbYY'));
  assert.ok(globMatch('*%*', 'user%victim.test'));
  assert.ok(!globMatch('a?c', 'abc'), '? is literal, as in smtpd');
  assert.ok(globMatch('***', 'anything'));
  // No catastrophic backtracking.
  assert.ok(!globMatch('*a*a*a*a*a*a*a*a*a*a*b', 'a'.repeat(5000)));
});

test('the first matching rule wins; no match is undefined', async () => {
  const text = 'noto:10.0.0.1:ALL:ALL\nallow:10.0.0.0/8:ALL:ALL\ndeny:ALL:ALL:ALL';
  assert.equal(await lineOf(text, env('10.0.0.1')), 1);
  assert.equal(await lineOf(text, env('10.0.0.2')), 2);
  assert.equal(await lineOf(text, env('192.0.2.1')), 3);
  assert.equal(await lineOf('deny:10.0.0.0/8:ALL:ALL', env('192.0.2.1')), undefined);
  const d = await matchRules(rules(text), env('10.0.0.2'), fakeLookups().lookups);
  assert.equal(d?.action, 'allow');
  assert.equal(d?.reply, undefined);
  assert.equal(d?.rule.text, 'allow:10.0.0.0/8:ALL:ALL');
});

test('all three lists must match', async () => {
  const text = 'deny:10.0.0.0/8:*@spam.example:*@example.com';
  assert.equal(await lineOf(text, env('10.1.2.3', 'x@spam.example', 'u@example.com')), 1);
  assert.equal(await lineOf(text, env('192.0.2.1', 'x@spam.example', 'u@example.com')), undefined);
  assert.equal(await lineOf(text, env('10.1.2.3', 'x@ham.example', 'u@example.com')), undefined);
  assert.equal(await lineOf(text, env('10.1.2.3', 'x@spam.example', 'u@example.org')), undefined);
});

test('EXCEPT: a match is undone by the exception list, which may have its own exception', async () => {
  const text = 'noto:ALL EXCEPT 192.168.1.0/24 EXCEPT 192.168.1.66:ALL:ALL';
  assert.equal(await lineOf(text, env('198.51.100.1')), 1);
  assert.equal(await lineOf(text, env('192.168.1.7')), undefined);
  assert.equal(await lineOf(text, env('192.168.1.66')), 1);
  const to = 'noto:ALL:ALL:ALL EXCEPT *@example.com, *@example.org';
  assert.equal(await lineOf(to, env('198.51.100.1', 'a@b.test', 'x@example.org')), undefined);
  assert.equal(await lineOf(to, env('198.51.100.1', 'a@b.test', 'x@elsewhere.test')), 1);
});

test('networks, addresses and address globs: IPv4, IPv6 in brackets, IPv4-mapped clients', async () => {
  assert.equal(await lineOf('deny:192.0.2.0/24:ALL:ALL', env('::ffff:192.0.2.9')), 1);
  assert.equal(await lineOf('deny:192.0.2.9:ALL:ALL', env('192.0.2.9')), 1);
  assert.equal(await lineOf('deny:192.0.2.9:ALL:ALL', env('192.0.2.10')), undefined);
  assert.equal(await lineOf('deny:[2001:db8::/32]:ALL:ALL', env('2001:db8:1::25')), 1);
  assert.equal(await lineOf('deny:[2001:db8::/32]:ALL:ALL', env('2001:db9::25')), undefined);
  assert.equal(await lineOf('deny:[2001:DB8::1]:ALL:ALL', env('2001:db8:0:0::1')), 1);
  assert.equal(await lineOf('deny:0/0:ALL:ALL', env('203.0.113.5')), 1);
  assert.equal(await lineOf('deny:0/0:ALL:ALL', env('2001:db8::1')), undefined, '0/0 is all of IPv4');
  assert.equal(await lineOf('deny:192.168.*:ALL:ALL', env('192.168.44.1')), 1);
  assert.equal(await lineOf('deny:192.168.*:ALL:ALL', env('10.192.168.1')), undefined);
  assert.equal(await lineOf('deny:*:ALL:ALL', env('2001:db8::1')), 1);
});

test('host name patterns, KNOWN and UNKNOWN use the verified host name, looked up once and only when needed', async () => {
  const { lookups, calls } = fakeLookups({ '198.51.100.7': 'MX1.Spam.Example.NET.', '203.0.113.9': '192.0.2.1' });
  const text = 'allow:10.0.0.0/8:ALL:ALL\ndeny:*.spam.example.net:ALL:ALL\nnoto:UNKNOWN:ALL:ALL\nallow:KNOWN:ALL:ALL';
  assert.equal(await lineOf(text, env('10.0.0.1'), lookups), 1);
  assert.deepEqual(calls.hostname, [], 'an address rule matched: no PTR lookup');
  const d = await matchRules(rules(text), env('198.51.100.7'), lookups);
  assert.equal(d?.line, 2);
  assert.equal(d?.hostname, 'mx1.spam.example.net');
  assert.equal(await lineOf(text, env('192.0.2.50'), lookups), 3, 'no PTR: UNKNOWN');
  assert.equal(await lineOf(text, env('203.0.113.9'), lookups), 3, 'a PTR name that is an IP address is no name');
  assert.deepEqual(calls.hostname, ['198.51.100.7', '192.0.2.50', '203.0.113.9'], 'one lookup per call, however many rules ask');

  // The caller may already know the name (or that there is none): no lookup then.
  const known = fakeLookups();
  assert.equal(await lineOf(text, env('192.0.2.1', undefined, undefined, { hostname: 'a.b.spam.example.net' }), known.lookups), 2);
  assert.equal(await lineOf(text, env('192.0.2.1', undefined, undefined, { hostname: 'mail.example.org' }), known.lookups), 4);
  assert.equal(await lineOf(text, env('192.0.2.1', undefined, undefined, { hostname: null }), known.lookups), 3);
  assert.deepEqual(known.calls.hostname, []);
});

test('lookups are not made when no rule needs them, nor for a rule that cannot match anyway', async () => {
  const { lookups, calls } = fakeLookups();
  await matchRules(rules('allow:10.0.0.0/8:ALL:ALL\nnoto:ALL EXCEPT 192.0.2.0/24:*@spam.example:ALL:550 No'), env('198.51.100.1', 'a@ham.example'), lookups);
  assert.deepEqual(calls, { hostname: [], nameservers: [], rbl: [] });
  // The host pattern would need DNS, but the ToList (no DNS) fails first.
  await matchRules(rules('deny:*.example.net KNOWN:ALL:*@nowhere.test\ndeny:ALL:NS=*.bad.example:*@nowhere.test'), env('198.51.100.1'), lookups);
  assert.deepEqual(calls, { hostname: [], nameservers: [], rbl: [] });
  // Within a list, the entries that need no DNS go first.
  assert.equal(await lineOf('deny:*.example.net 198.51.100.0/24:ALL:ALL:550 Go away', env('198.51.100.1'), lookups), 1);
  assert.deepEqual(calls.hostname, []);
});

test('lookup errors propagate (the engine answers 451)', async () => {
  const { lookups } = fakeLookups({ '198.51.100.7': 'FAIL' }, { 'example.net': ['FAIL'] });
  await assert.rejects(matchRules(rules('deny:*.spam.example:ALL:ALL'), env('198.51.100.7'), lookups), /DNS timeout/);
  await assert.rejects(matchRules(rules('deny:ALL:*@NS=*.bad.example:ALL'), env('192.0.2.1'), lookups), /SERVFAIL/);
  // An earlier rule that matches without DNS means no lookup, so no error.
  assert.equal(await lineOf('allow:ALL:ALL:*@example.com\ndeny:*.spam.example:ALL:ALL', env('198.51.100.7'), lookups), 1);
  const noRbl: RuleLookups = { hostname: async () => undefined, nameservers: async () => [] };
  await assert.rejects(matchRules(rules('deny:RBL.bl.example:ALL:ALL'), env('192.0.2.1'), noRbl), /needs a DNS blocklist lookup/);
});

test('NS=: name servers of the sender/recipient domain, and of the client host or its reverse zone', async () => {
  const { lookups, calls } = fakeLookups(
    { '198.51.100.7': 'mx.spammer.example' },
    {
      'spammer.example': ['ns1.bulletproof.example.', '203.0.113.53'],
      'mx.spammer.example': ['ns1.bulletproof.example'],
      'example.com': ['ns.example.com'],
      '1.2.0.192.in-addr.arpa': ['ns.reverse.example'],
    },
  );
  assert.equal(await lineOf('deny:ALL:*@NS=*.bulletproof.example:ALL', env('192.0.2.1', 'x@spammer.example'), lookups), 1);
  assert.equal(await lineOf('deny:ALL:NS=203.0.113.0/24:ALL', env('192.0.2.1', 'x@spammer.example'), lookups), 1);
  assert.equal(await lineOf('deny:ALL:NS=203.0.113.0/24:ALL', env('192.0.2.1', 'x@example.com'), lookups), undefined);
  assert.equal(await lineOf('noto:ALL:ALL:NS=UNKNOWN', env('192.0.2.1', 'x@example.com', 'u@no-such.example'), lookups), 1);
  assert.equal(await lineOf('noto:ALL:ALL:*@NS=KNOWN', env('192.0.2.1', 'x@example.com', 'u@example.com'), lookups), 1);
  assert.equal(await lineOf('deny:NS=*.bulletproof.example:ALL:ALL', env('198.51.100.7'), lookups), 1, 'source: the host name');
  assert.equal(await lineOf('deny:NS=ns.reverse.example:ALL:ALL', env('192.0.2.1'), lookups), 1, 'source without a name: the reverse zone');
  assert.ok(calls.nameservers.includes('1.2.0.192.in-addr.arpa'));
  // The null sender and address literals have no zone to ask about.
  const before = calls.nameservers.length;
  assert.equal(await lineOf('deny:ALL:NS=UNKNOWN:ALL', env('192.0.2.1', ''), lookups), 1);
  assert.equal(await lineOf('deny:ALL:*@NS=UNKNOWN:ALL', env('192.0.2.1', 'x@[192.0.2.1]'), lookups), 1);
  assert.equal(calls.nameservers.length, before);
});

test('reverseZone: in-addr.arpa and ip6.arpa', () => {
  assert.equal(reverseZone('192.0.2.1'), '1.2.0.192.in-addr.arpa');
  assert.equal(reverseZone('::ffff:192.0.2.1'), '1.2.0.192.in-addr.arpa');
  assert.equal(reverseZone('2001:db8::1'), '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa');
  assert.equal(reverseZone('::1'), `1.${'0.'.repeat(31)}ip6.arpa`);
});

test('RBL.zone asks the blocklist about the client address', async () => {
  const { lookups, calls } = fakeLookups({}, {}, ['192.0.2.99 bl.example.org']);
  const text = 'noto:RBL.bl.example.org:ALL:ALL:550 Mail from %I in RBL being blocked';
  assert.equal(await lineOf(text, env('192.0.2.99'), lookups), 1);
  assert.equal(await lineOf(text, env('192.0.2.98'), lookups), undefined);
  assert.deepEqual(calls.rbl, ['192.0.2.99 bl.example.org', '192.0.2.98 bl.example.org']);
});

test('IDENT: user@host sources and USER@ addresses', async () => {
  const text = 'allow:root@10.0.0.1:ALL:ALL\nnoto:KNOWN@10.0.0.0/8:ALL EXCEPT USER@example.com:ALL:553 %U may only send as %U@example.com\nallow:ALL:ALL:ALL';
  assert.equal(await lineOf(text, env('10.0.0.1', 'x@example.com', 'y@example.org', { identUser: 'ROOT' })), 1);
  assert.equal(await lineOf(text, env('10.0.0.2', 'alice@example.com', 'y@example.org', { identUser: 'alice' })), 3);
  const d = await matchRules(rules(text), env('10.0.0.2', 'bob@example.com', 'y@example.org', { identUser: 'alice' }), fakeLookups().lookups);
  assert.equal(d?.line, 2);
  assert.equal(d?.reply?.text, 'alice may only send as alice@example.com');
  assert.equal(await lineOf(text, env('10.0.0.2', 'bob@example.com', 'y@example.org')), 3, 'no IDENT user: KNOWN@ does not match');
  // The IDENT user is compared literally, never as a pattern.
  assert.equal(await lineOf('deny:ALL:USER@example.com:ALL', env('10.0.0.2', 'bob@example.com', 'y@x.test', { identUser: '*' })), undefined);
});

test('address patterns: the last @ splits, a pattern without @ is the whole address, the null sender', async () => {
  assert.equal(await lineOf('deny:ALL:*%*@*:ALL', env('192.0.2.1', 'a%b@c.test')), 1);
  assert.equal(await lineOf('deny:ALL:ALL:*%*@*', env('192.0.2.1', 'x@y.test', '"a@b"@c.test')), undefined);
  assert.equal(await lineOf('deny:ALL:ALL:*@*@*', env('192.0.2.1', 'x@y.test', '"a@b"@c.test')), 1);
  assert.equal(await lineOf('deny:ALL:*spam*:ALL', env('192.0.2.1', 'xSPAMx@y.test')), 1);
  assert.equal(await lineOf('deny:ALL:*@*:ALL', env('192.0.2.1', '')), undefined, 'the null sender has no @');
  assert.equal(await lineOf('deny:ALL:*:ALL', env('192.0.2.1', '')), 1);
  assert.equal(await lineOf('deny:ALL:ALL:ALL', env('192.0.2.1', '')), 1);
  assert.equal(await lineOf('deny:ALL:ALL@Example.COM:ALL', env('192.0.2.1', 'Anyone@example.com')), 1);
  assert.equal(await lineOf('deny:ALL:postmaster@ALL:ALL', env('192.0.2.1', 'postmaster@anywhere.test')), 1);
  assert.equal(await lineOf('deny:ALL:ALL:*@[192.0.2.1]', env('192.0.2.1', 'x@y.test', 'u@[192.0.2.1]')), 1);
});

test('message expansion: %F %T %H %I %U, %C, %%; the default text is smtpd\'s', async () => {
  const { lookups, calls } = fakeLookups({ '198.51.100.7': 'mx.example.net' });
  const d = await matchRules(
    rules('noto:ALL:ALL:ALL:551 Sorry %H (%I), %U no relaying from %F to %T%C 100%%'),
    env('::ffff:198.51.100.7', 'a@example.net', 'b@victim.test', { identUser: 'joe' }),
    lookups,
  );
  assert.deepEqual(d?.reply, { code: 551, enhanced: '5.7.1', text: 'Sorry mx.example.net (198.51.100.7), joe no relaying from <a@example.net> to <b@victim.test>: 100%' });
  assert.equal(d?.hostname, 'mx.example.net');
  assert.deepEqual(calls.hostname, ['198.51.100.7']);

  const plain = await matchRules(rules('deny:ALL:ALL:ALL'), env('192.0.2.1', '', 'u@example.com'), fakeLookups().lookups);
  assert.deepEqual(plain?.reply, { code: 550, enhanced: '5.7.1', text: 'Mail from <> to <u@example.com> prohibited from your location (unknown ip=192.0.2.1)' });
  const withUser = await matchRules(rules('noto:ALL:ALL:ALL'), env('192.0.2.1', 'a@b.test', 'u@example.com', { identUser: 'joe', hostname: 'h.example' }), fakeLookups().lookups);
  assert.equal(withUser?.reply?.text, 'Mail from <a@b.test> to <u@example.com> prohibited from your location (joe@h.example ip=192.0.2.1)');

  const codes = await matchRules(rules('deny:ALL:ALL:ALL:451 4.7.1 Try later, %I'), env('192.0.2.1'), fakeLookups().lookups);
  assert.deepEqual(codes?.reply, { code: 451, enhanced: '4.7.1', text: 'Try later, 192.0.2.1' });
  const classOnly = await matchRules(rules('deny:ALL:ALL:ALL:450 Later'), env('192.0.2.1'), fakeLookups().lookups);
  assert.equal(classOnly?.reply?.enhanced, '4.7.1');
  const noText = await matchRules(rules('deny:ALL:ALL:ALL:554'), env('192.0.2.1', 'a@b.test', 'c@d.test', { hostname: null }), fakeLookups().lookups);
  assert.deepEqual(noText?.reply, { code: 554, enhanced: '5.7.1', text: 'Mail from <a@b.test> to <c@d.test> prohibited from your location (unknown ip=192.0.2.1)' });
});

test('message expansion: a failed %H lookup is "unknown", and the reply fits one 512-octet line', async () => {
  const { lookups } = fakeLookups({ '192.0.2.1': 'FAIL' });
  const d = await matchRules(rules('noto:192.0.2.0/24:ALL:ALL:550 No relaying for %H'), env('192.0.2.1'), lookups);
  assert.equal(d?.reply?.text, 'No relaying for unknown');
  const long = await matchRules(rules(`noto:ALL:ALL:ALL:550 ${'é'.repeat(300)} %T`), env('192.0.2.1', 'a@b.test', `${'x'.repeat(64)}@example.com`), fakeLookups().lookups);
  const line = `${long?.reply?.code} ${long?.reply?.enhanced} ${long?.reply?.text}\r\n`;
  assert.ok(Buffer.byteLength(line) <= 512, `${Buffer.byteLength(line)}`);
  assert.ok(!long?.reply?.text.includes('\uFFFD'));
});

test('rulesNeed: what the rules may ask for', () => {
  assert.deepEqual(rulesNeed(rules('allow:10.0.0.0/8:ALL:ALL\nnoto:ALL:ALL:ALL:550 relaying denied for %I')), { hostname: false, nameservers: false, rbl: false, ident: false });
  assert.deepEqual(rulesNeed(rules('noto:ALL:ALL:ALL')), { hostname: true, nameservers: false, rbl: false, ident: false }, 'the default text names the host');
  assert.deepEqual(rulesNeed(rules('deny:KNOWN@ALL:ALL:ALL:550 x')), { hostname: false, nameservers: false, rbl: false, ident: true });
  assert.deepEqual(rulesNeed(rules('deny:ALL:USER@ALL EXCEPT *@NS=x.example:ALL:550 %U')), { hostname: false, nameservers: true, rbl: false, ident: true });
  assert.deepEqual(rulesNeed(rules('deny:RBL.bl.example NS=KNOWN:ALL:ALL:550 x')), { hostname: true, nameservers: true, rbl: true, ident: false });
});
