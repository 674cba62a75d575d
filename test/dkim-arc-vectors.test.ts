// Public DKIM and ARC test vectors (issue 12) through mxguard's own DATA-phase code path: the
// `dmarc` check (src/policy/auth/message-auth.ts: mailauth in strict mode asking mxguard's
// DnsResolver through src/policy/auth/dns.ts), with the vectors' DNS records served by the
// in-process zone server (test/harness/dns-zone-server.ts) on loopback. Each message is given to
// the check as mxguard stores it: CRLF line ends, our Received field in front.
//
// DKIM (test/fixtures/dkim, dkimpy's test data):
//   - rfc6376.signed.msg carries two signatures of football.example.com: s=brisbane
//     (ed25519-sha256, RFC 8463 appendix A; its key is the RFC 8032 7.1 test key,
//     rfc8032_7_1.key, whose public half is derived here) and s=test (rsa-sha256, key test.txt,
//     1024 bits, so min_key_bits stays at the default 1024). Both must pass; with the body or a
//     signed header altered both must fail.
//   - test.message is signed here with test.private (rsa) and ed25519test.msg with
//     ed25519test.key (ed25519) — as dkimpy's own tests do — and verified against test.txt and
//     ed25519test.dns: pass. The rsa signature verified against the bad key records badk.txt
//     (k= names a hash algorithm, not a key type), badversion.txt ("v=DKIM1:" — a colon, not a
//     semicolon) and test_bad.txt (a truncated key) must not pass.
// ARC (test/fixtures/arc/arc-draft-validation-tests.yml, ValiMail's arc_test_suite): each
// scenario's txt-records are served, each case's message checked, and ctx.tx.auth.arc.result
// (absent: none) compared with the case's expected cv, case-insensitively. The suite's
// duplicate key (as_fields_b_head_case, twice) is kept as two cases, the second one named
// "as_fields_b_head_case#2". The signing suite (arc-draft-sign-tests.yml) is not run: mxguard
// verifies ARC, it never seals.
//
// A table of ARC passes per scenario group, with every failing case, is printed with
// t.diagnostic (every case with MXGUARD_ARC_VECTORS_VERBOSE=1). The ARC test fails when fewer
// cases pass than ARC_MIN_PASSING, when a case fails that is not in ARC_KNOWN_FAILURES, or when
// one of ARC_MUST_PASS fails.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { dkimSign } from 'mailauth';
import { isMap, isScalar, parseAllDocuments, type YAMLMap } from 'yaml';
import { DnsResolver } from '../src/dns/resolver.ts';
import { parseHeaderBlock } from '../src/mail/header-block.ts';
import { messageAuthCheck } from '../src/policy/auth/message-auth.ts';
import type { AuthResults } from '../src/policy/auth/results.ts';
import type { DataContext, MessageView } from '../src/policy/context.ts';
import type { Verdict } from '../src/policy/verdict.ts';
import { receivedHeader } from '../src/smtp/replies.ts';
import { startDnsZoneServer, type ZoneData } from './harness/dns-zone-server.ts';

const DKIM_DIR = new URL('./fixtures/dkim/', import.meta.url);
const ARC_FILE = new URL('./fixtures/arc/arc-draft-validation-tests.yml', import.meta.url);

/** dmarc: settings, with auth.trusted_arc (what the check's factory gives it). */
type Settings = Parameters<typeof messageAuthCheck>[0];
/** The schema's defaults (src/config/schema.ts `dmarc:`, `auth.trusted_arc`); every key of the vectors is 1024 bits or more. */
const SETTINGS: Settings = { enforce: 'none', fail_score: 3, quarantine_score: 6, dkim_fail_score: 1, trusted_arc: [], min_key_bits: 1024 };

const CLIENT_IP = '192.0.2.25';
const TIMEOUT_MS = 2000;

// --- the check, as the policy session runs it ------------------------------------------------

/** A stored message as the DATA checks see it (src/smtp/session.ts builds one from the spool). */
function messageView(buf: Buffer): MessageView {
  const h = parseHeaderBlock(buf);
  return {
    id: 'VECTOR1',
    size: buf.length,
    lines: buf.toString('latin1').split('\n').length - 1,
    headers: h.fields,
    headersTruncated: h.truncated,
    bodyOffset: h.bodyOffset,
    mayHaveField: (prefix) => h.fields.some((f) => f.key.startsWith(prefix)),
    read: async function* (start = 0) {
      // In two pieces, as the spool gives it: nothing may depend on one chunk.
      const rest = buf.subarray(start);
      const cut = Math.floor(rest.length / 2);
      if (cut > 0) yield rest.subarray(0, cut);
      yield rest.subarray(cut);
    },
  };
}

/** CRLF line ends (what SMTP DATA carries), our Received field in front. */
function asStored(text: string): Buffer {
  const received = receivedHeader({ helo: 'client.example.net', ip: CLIENT_IP, hostname: 'mx.example.test', protocol: 'ESMTP', id: 'VECTOR1', rcpts: ['bob@example.test'], date: new Date(Date.UTC(2026, 11, 2, 8, 0, 0)) });
  return Buffer.from(received + text.replace(/\r?\n/g, '\r\n'), 'utf8');
}

interface Run {
  readonly auth: AuthResults;
  readonly verdict?: Verdict;
  readonly error?: string;
}

async function runCheck(text: string, server: string, settings: Settings = SETTINGS): Promise<Run> {
  const dns = new DnsResolver({ servers: [server], timeoutMs: TIMEOUT_MS }); // fresh: nothing cached from another case
  const check = messageAuthCheck(settings, dns);
  const auth: AuthResults = {};
  const ctx: DataContext = {
    session: { sid: 'vectors', remoteIp: CLIENT_IP, remotePort: 40000, localIp: '127.0.0.1', localPort: 25, tls: false, helo: 'client.example.net', esmtp: true, earlyTalker: false, rcptCount: 1 },
    tx: { mailFrom: { address: 'sender@example.net', local: 'sender', domain: 'example.net', utf8: false }, params: {}, rcpts: [], auth },
    message: messageView(asStored(text)),
    signal: new AbortController().signal,
  };
  try {
    const verdict = await check.run(ctx);
    return { auth, verdict };
  } catch (err) {
    return { auth, error: err instanceof Error ? err.message : String(err) };
  }
}

// --- DKIM --------------------------------------------------------------------------------------

const dkimFile = (name: string): string => fs.readFileSync(new URL(name, DKIM_DIR), 'utf8');
/** A key record file's one line. */
const keyRecord = (name: string): string => dkimFile(name).trim();

/** An ed25519 private key (PEM) from its raw 32-octet seed, base64 (dkimpy's .key files). */
function ed25519Private(seedBase64: string): crypto.KeyObject {
  const seed = Buffer.from(seedBase64.trim(), 'base64');
  assert.equal(seed.length, 32);
  return crypto.createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]), format: 'der', type: 'pkcs8' });
}

/** The DKIM p= of an ed25519 key: the raw 32-octet public key, base64 (RFC 8463 section 4). */
function ed25519PublicRecord(seedBase64: string): string {
  const spki = crypto.createPublicKey(ed25519Private(seedBase64)).export({ type: 'spki', format: 'der' });
  return `v=DKIM1; k=ed25519; p=${spki.subarray(spki.length - 32).toString('base64')}`;
}

/** Bits of the RSA key of a DKIM key record. */
function rsaBits(record: string): number {
  const p = /(?:^|;)\s*p=([^;]*)/.exec(record)?.[1]?.replace(/\s+/g, '') ?? '';
  const key = crypto.createPublicKey({ key: Buffer.from(p, 'base64'), format: 'der', type: 'spki' });
  return key.asymmetricKeyDetails?.modulusLength ?? 0;
}

async function sign(message: string, domain: string, selector: string, privateKey: string): Promise<string> {
  const crlf = message.replace(/\r?\n/g, '\r\n');
  const r = await dkimSign(crlf, { signatureData: [{ signingDomain: domain, selector, privateKey, canonicalization: 'relaxed/relaxed' }] } as never);
  assert.deepEqual(r.errors, []);
  assert.match(r.signatures, /^DKIM-Signature: /);
  return r.signatures + crlf;
}

/** Results by selector: { brisbane: 'pass', test: 'pass' }. */
function dkimBySelector(auth: AuthResults): Record<string, string> {
  const out: Record<string, string> = {};
  for (const d of auth.dkim ?? []) out[/header\.s=([^\s;]+)/.exec(d.info)?.[1] ?? '?'] = d.result;
  return out;
}

test('DKIM vectors (dkimpy) through the dmarc check and mxguard resolver', { timeout: 60_000 }, async (t) => {
  const signed = dkimFile('rfc6376.signed.msg');
  // The signatures name d=football.example.com, s=brisbane (ed25519) and s=test (rsa).
  assert.match(signed, /a=ed25519-sha256;[^]*?d=football\.example\.com;[^]*?s=brisbane;/);
  assert.match(signed, /a=rsa-sha256;[^]*?d=football\.example\.com;[^]*?s=test;/);
  const brisbane = ed25519PublicRecord(dkimFile('rfc8032_7_1.key'));
  assert.equal(brisbane, 'v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=', 'the RFC 8463 appendix A key');
  const good = keyRecord('test.txt');
  assert.equal(rsaBits(good), 1024, 'test.txt is 1024 bits: min_key_bits 1024 (the default) accepts it');

  const rsaPrivate = dkimFile('test.private');
  const edPrivate = ed25519Private(dkimFile('ed25519test.key')).export({ type: 'pkcs8', format: 'pem' }) as string;
  const rsaSigned = await sign(dkimFile('test.message'), 'example.com', 'test', rsaPrivate);
  const edSigned = await sign(dkimFile('ed25519test.msg'), 'example.com', 'ed', edPrivate);

  const zone: ZoneData = {
    'brisbane._domainkey.football.example.com': [{ TXT: brisbane }],
    'test._domainkey.football.example.com': [{ TXT: good }],
    'test._domainkey.example.com': [{ TXT: good }],
    'ed._domainkey.example.com': [{ TXT: keyRecord('ed25519test.dns') }],
    'badk._domainkey.example.com': [{ TXT: keyRecord('badk.txt') }],
    'badversion._domainkey.example.com': [{ TXT: keyRecord('badversion.txt') }],
    'bad._domainkey.example.com': [{ TXT: keyRecord('test_bad.txt') }],
  };
  const cases: { name: string; message: string; expect: Record<string, 'pass' | 'fail' | 'not pass'>; verdict?: string }[] = [
    { name: 'rfc6376.signed.msg', message: signed, expect: { brisbane: 'pass', test: 'pass' }, verdict: 'continue' },
    { name: 'rfc6376.signed.msg, body altered', message: signed.replace('We lost the game.', 'We won the game.'), expect: { brisbane: 'fail', test: 'fail' }, verdict: 'tag DKIM_FAIL=1' },
    { name: 'rfc6376.signed.msg, Subject altered', message: signed.replace('Subject: Is dinner ready?', 'Subject: Is lunch ready?'), expect: { brisbane: 'fail', test: 'fail' } },
    { name: 'test.message signed with test.private, key test.txt', message: rsaSigned, expect: { test: 'pass' } },
    { name: 'ed25519test.msg signed with ed25519test.key, key ed25519test.dns', message: edSigned, expect: { ed: 'pass' } },
    { name: 'ed25519test.msg signed, body altered', message: edSigned.replace('This is a test message.', 'This is a changed message.'), expect: { ed: 'fail' } },
    // The same rsa signature, its key looked up under selectors that serve the bad key records.
    { name: 'test.message, key badk.txt', message: rsaSigned.replace('s=test;', 's=badk;'), expect: { badk: 'not pass' } },
    { name: 'test.message, key badversion.txt', message: rsaSigned.replace('s=test;', 's=badversion;'), expect: { badversion: 'not pass' } },
    { name: 'test.message, key test_bad.txt', message: rsaSigned.replace('s=test;', 's=bad;'), expect: { bad: 'not pass' } },
  ];
  for (const c of cases.slice(-3)) assert.notEqual(c.message, rsaSigned, `${c.name}: the selector was replaced`);

  const server = await startDnsZoneServer(zone);
  const failures: string[] = [];
  let passed = 0;
  let total = 0;
  try {
    for (const c of cases) {
      const r = await runCheck(c.message, server.server);
      const got = dkimBySelector(r.auth);
      if (c.verdict !== undefined) {
        const v = r.verdict;
        const gotVerdict = v?.kind === 'tag' ? `tag ${(v.tests ?? []).map((x) => `${x.name}=${x.score}`).join(' ')}` : (v?.kind ?? 'threw');
        if (gotVerdict !== c.verdict) failures.push(`${c.name}: verdict expected ${c.verdict}, got ${gotVerdict}`);
      }
      for (const [sel, want] of Object.entries(c.expect)) {
        total++;
        const g = got[sel] ?? 'absent';
        const ok = want === 'not pass' ? g !== 'pass' && g !== 'absent' : g === want;
        if (ok) passed++;
        else failures.push(`${c.name} s=${sel}: expected ${want}, got ${g}${r.error ? ` (threw: ${r.error})` : ''}`);
        const info = r.auth.dkim?.find((d) => d.info.includes(`header.s=${sel}`))?.info ?? '';
        t.diagnostic(`${ok ? 'ok  ' : 'FAIL'} ${c.name} s=${sel}: expected ${want}, got ${g} — ${info.replace(/\s+/g, ' ')}`);
      }
    }
  } finally {
    await server.stop();
  }
  t.diagnostic(`DKIM vectors: ${passed} of ${total} pass`);
  assert.deepEqual(failures, [], 'every DKIM vector gives its result');
});

// --- ARC ---------------------------------------------------------------------------------------

/**
 * Cases that pass now: 170 of 175 (measured when this file was written: mailauth 7.1.0, Node 24).
 * Raise it when more pass; never lower it to make the test pass.
 */
const ARC_MIN_PASSING = 170;
const ARC_TOTAL_CASES = 175;

/**
 * Cases that fail now, by name: the cause as found (the report of issue 12), and the result
 * RFC 8617 asks for, which mxguard gives and this test holds it to. All five are the suite's
 * expectations (written against the ARC drafts of 2017) differing from the RFC; mailauth in
 * strict mode follows the RFC.
 */
const ARC_KNOWN_FAILURES: Readonly<Record<string, { readonly cause: string; readonly rfc8617: string }>> = {
  cv_fail_i1_as_cv_fail: { cause: 'the suite expects no result (cv empty) for an ARC-Seal i=1 with cv=fail; RFC 8617 5.2 step 2 (and 4.1.3: i=1 is cv=none) makes the chain fail', rfc8617: 'fail' },
  cv_fail_i2_as2_fail: { cause: 'the suite expects no result for a newest ARC-Seal with cv=fail; RFC 8617 5.2 step 2: the chain fails', rfc8617: 'fail' },
  cv_fail_i2_as1_fail: { cause: 'as cv_fail_i1_as_cv_fail, in a chain of two', rfc8617: 'fail' },
  ams_fields_c_na: { cause: 'the AMS has no c= but was made with relaxed/relaxed; a missing c= is simple/simple (RFC 6376 3.5, which RFC 8617 4.1.2 keeps), so it does not verify; mailauth lenient mode retries relaxed (warning ams-c-default), strict mode does not', rfc8617: 'fail' },
  ams_fields_h_empty: { cause: 'the AMS signs no header field (h= empty): RFC 6376 5.4 / 6.1.1 require From in h=, so the AMS is invalid and the chain fails (mailauth: "From field not signed", both modes); the suite expects pass', rfc8617: 'fail' },
};

/** Cases whose failure would be a defect of the path: plain chains pass, broken ones fail, the key is found. */
const ARC_MUST_PASS = [
  'cv_empty',
  'cv_base1',
  'cv_pass_i1_1',
  'cv_pass_i2_1',
  'cv_pass_i5_1',
  'cv_fail_i1_ams_invalid',
  'cv_fail_i2_as2_invalid',
  'ams_fields_bh_mod_body',
  'ams_fields_b_head_unfold',
  'as_fields_b_head_case',
  'as_fields_b_head_case#2',
  'public_key_na',
];

interface ArcCase {
  readonly group: string;
  readonly name: string;
  readonly description: string;
  readonly message: string;
  readonly cv: string;
}

interface ArcGroup {
  readonly description: string;
  readonly zone: ZoneData;
  readonly cases: readonly ArcCase[];
}

function loadArc(): ArcGroup[] {
  // uniqueKeys: false — the suite has one key twice (as_fields_b_head_case); both are kept.
  const docs = parseAllDocuments(fs.readFileSync(ARC_FILE, 'utf8'), { uniqueKeys: false });
  return docs.map((doc, i) => {
    if (doc.errors.length > 0) throw new Error(`${ARC_FILE.pathname}: document ${i}: ${doc.errors[0]?.message}`);
    const top = doc.contents;
    assert.ok(isMap(top), `document ${i} is a mapping`);
    const description = String(top.get('description')).trim();
    const txt = (top.get('txt-records', true) as YAMLMap | undefined)?.toJSON() as Record<string, string> | undefined;
    const zone: ZoneData = Object.fromEntries(Object.entries(txt ?? {}).map(([name, text]) => [name, [{ TXT: String(text) }]]));
    const tests = top.get('tests', true);
    assert.ok(isMap(tests), `document ${i}: tests is a mapping`);
    const seen = new Set<string>();
    const cases = tests.items.map((pair): ArcCase => {
      const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
      let name = key;
      for (let n = 2; seen.has(name); n++) name = `${key}#${n}`;
      seen.add(name);
      const v = (pair.value as YAMLMap).toJSON() as Record<string, unknown>;
      return { group: description, name, description: String(v.description ?? ''), message: String(v.message ?? ''), cv: String(v.cv ?? '').trim().toLowerCase() };
    });
    return { description, zone, cases };
  });
}

interface ArcOutcome {
  readonly c: ArcCase;
  readonly got: string;
  readonly ok: boolean;
  readonly note: string;
  readonly sealers: readonly string[];
}

/** The d= of the newest ARC-Seal and ARC-Message-Signature of a message (highest i=), lower case. */
function newestArcDomains(message: string): { as?: string; ams?: string } {
  const unfolded = message.replace(/\r?\n[ \t]+/g, ' ');
  const out: { as?: string; ams?: string } = {};
  for (const [field, key] of [['arc-seal', 'as'], ['arc-message-signature', 'ams']] as const) {
    let best: { i: number; d: string } | undefined;
    for (const line of unfolded.split(/\r?\n/)) {
      if (!line.toLowerCase().startsWith(`${field}:`)) continue;
      const i = Number(/[:;\s]i\s*=\s*(\d+)/.exec(line)?.[1] ?? NaN);
      const d = /[:;\s]d\s*=\s*([^;\s]*)/.exec(line)?.[1] ?? '';
      if (Number.isFinite(i) && (best === undefined || i > best.i)) best = { i, d: d.toLowerCase() };
    }
    if (best) out[key] = best.d;
  }
  return out;
}

test('ARC validation vectors (ValiMail arc_test_suite) through the dmarc check and mxguard resolver', { timeout: 60_000 }, async (t) => {
  const groups = loadArc();
  const outcomes: ArcOutcome[] = [];
  for (const g of groups) {
    const server = await startDnsZoneServer(g.zone);
    try {
      for (const c of g.cases) {
        const r = await runCheck(c.message, server.server);
        const got = r.error !== undefined ? 'threw' : (r.auth.arc?.result ?? 'none');
        const note = r.error ?? (r.auth.arc?.info ?? '').replace(/\s+/g, ' ');
        outcomes.push({ c, got, ok: got === c.cv, note, sealers: r.auth.arc?.sealers ?? [] });
      }
    } finally {
      await server.stop();
    }
  }

  const passed = outcomes.filter((o) => o.ok);
  const failed = outcomes.filter((o) => !o.ok);
  t.diagnostic(`ARC validation suite: ${passed.length} of ${outcomes.length} pass`);
  for (const g of groups) {
    const mine = outcomes.filter((o) => o.c.group === g.description);
    const bad = mine.filter((o) => !o.ok);
    t.diagnostic(`${g.description.padEnd(36)} ${String(mine.length - bad.length).padStart(3)}/${String(mine.length).padEnd(3)}`);
    for (const o of process.env.MXGUARD_ARC_VECTORS_VERBOSE ? mine : bad) {
      const known = ARC_KNOWN_FAILURES[o.c.name];
      t.diagnostic(`    ${o.ok ? 'ok  ' : 'FAIL'} ${o.c.name} (${o.c.description}): expected ${o.c.cv || '(empty)'}, got ${o.got} — ${o.note}${!o.ok && known ? ` [known: ${known.cause}]` : ''}`);
    }
  }

  const names = new Set(outcomes.map((o) => o.c.name));
  assert.equal(outcomes.length, ARC_TOTAL_CASES, 'the suite has the cases this test was written for');
  assert.deepEqual(ARC_MUST_PASS.filter((n) => !names.has(n)), [], 'ARC_MUST_PASS names cases of the suite');
  assert.deepEqual(Object.keys(ARC_KNOWN_FAILURES).filter((n) => !names.has(n)), [], 'ARC_KNOWN_FAILURES names cases of the suite');
  assert.deepEqual(ARC_MUST_PASS.filter((n) => failed.some((o) => o.c.name === n)), [], 'cases that must pass');
  const offRfc = failed.filter((o) => ARC_KNOWN_FAILURES[o.c.name] !== undefined && ARC_KNOWN_FAILURES[o.c.name]?.rfc8617 !== o.got).map((o) => `${o.c.name}: RFC 8617 says ${ARC_KNOWN_FAILURES[o.c.name]?.rfc8617}, got ${o.got}`);
  assert.deepEqual(offRfc, [], 'known failures still give the result of RFC 8617');
  // What auth.trusted_arc is matched against: the d= of the newest ARC-Seal of a chain that
  // passed (RFC 8617 4.1.3: the sealer vouches), even where the AMS was signed by another domain.
  const wrongSealer = outcomes
    .filter((o) => o.got === 'pass')
    .filter((o) => o.sealers.join(',') !== (newestArcDomains(o.c.message).as ?? ''))
    .map((o) => `${o.c.name}: sealers [${o.sealers.join(', ')}], newest ARC-Seal d=${newestArcDomains(o.c.message).as}`);
  assert.deepEqual(wrongSealer, [], 'ctx.tx.auth.arc.sealers names the d= of the newest ARC-Seal of a passing chain');
  assert.deepEqual(outcomes.filter((o) => o.got !== 'pass' && o.sealers.length > 0).map((o) => o.c.name), [], 'no sealer is named for a chain that did not pass');
  const unexpected = failed.filter((o) => ARC_KNOWN_FAILURES[o.c.name] === undefined).map((o) => `${o.c.name}: expected ${o.c.cv}, got ${o.got}`);
  assert.deepEqual(unexpected, [], 'cases that fail and are not known to');
  assert.ok(passed.length >= ARC_MIN_PASSING, `${passed.length} of ${outcomes.length} pass; at least ${ARC_MIN_PASSING} did`);
});

// Found by this suite: auth.trusted_arc was matched against the newest ARC-Message-Signature's
// d=, not the ARC-Seal's (RFC 8617 4.1.3: the sealer is who vouches). ams_as_diff_s_d (AMS
// d=example.org, ARC-Seal d=example2.org, a chain that passes) parts the two: with a p=reject
// DMARC record for the author domain and enforce: reject, naming the sealer example2.org spares
// the message the refusal, and naming example.org (which signed the AMS but sealed nothing) does
// not. Failed on the old arcSealers().
test('auth.trusted_arc matches the ARC-Seal d= of the newest set (ams_as_diff_s_d)', { timeout: 30_000 }, async () => {
  const group = loadArc().find((g) => g.cases.some((c) => c.name === 'ams_as_diff_s_d'));
  assert.ok(group);
  const c = group.cases.find((x) => x.name === 'ams_as_diff_s_d') as ArcCase;
  const server = await startDnsZoneServer({ ...group.zone, '_dmarc.d1.example.org': [{ TXT: 'v=DMARC1; p=reject' }] });
  try {
    const bySealer = await runCheck(c.message, server.server, { ...SETTINGS, enforce: 'reject', trusted_arc: ['example2.org'] });
    assert.equal(bySealer.auth.arc?.result, 'pass');
    assert.equal(bySealer.auth.dmarc?.result, 'fail');
    const byAms = await runCheck(c.message, server.server, { ...SETTINGS, enforce: 'reject', trusted_arc: ['example.org'] });
    assert.deepEqual(
      { sealerTrusted: bySealer.verdict?.kind, amsDomainTrusted: byAms.verdict?.kind },
      { sealerTrusted: 'tag', amsDomainTrusted: 'reject' },
      'the sealer named in trusted_arc spares the message the refusal (DMARC_FAIL points only); the AMS signer alone does not',
    );
  } finally {
    await server.stop();
  }
});
