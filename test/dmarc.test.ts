// DKIM, DMARC (and the SPF half of DMARC) through real SMTP (issue 12, Must show 3), against
// records a real dnsmasq serves on loopback. Messages are DKIM-signed in the test with a key
// made here and published as <selector>._domainkey TXT:
//   - a signed message passes (dkim=pass, dmarc=pass by DKIM alignment);
//   - the same with its body altered after signing is dkim=fail (RFC 8601; not "neutral") and
//     dmarc=fail: points with enforce none, 550 5.7.1 with enforce reject (p=reject only);
//   - a p=reject domain in testing (t=y) is never refused, only scored;
//   - an unsigned message whose SPF passes for an aligned MAIL FROM is dmarc=pass;
// and the Authentication-Results field is read field by field.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { dkimSign, sealMessage } from 'mailauth';
import type { ConfigInput } from '../src/config/schema.ts';
import { startTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { startDnsmasq, type DnsmasqPeer } from './harness/dns.ts';

const LIMIT = { timeout: 60_000 };
const CLIENT = '127.11.0.1';
const SELECTOR = 'sel1';
const keys = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const PRIVATE = keys.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
const PUBLIC = (keys.publicKey.export({ type: 'spki', format: 'der' }) as Buffer).toString('base64');

/** A TXT record's character-strings, each at most 255 octets. */
function chunks(text: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < text.length; i += 250) out.push(text.slice(i, i + 250));
  return out;
}

let dm: DnsmasqPeer;

before(async () => {
  const dkimKey = chunks(`v=DKIM1; k=rsa; p=${PUBLIC}`);
  dm = await startDnsmasq({
    records: {
      txt: {
        [`${SELECTOR}._domainkey.signed.test`]: [dkimKey],
        [`${SELECTOR}._domainkey.testing.test`]: [dkimKey],
        '_dmarc.signed.test': ['v=DMARC1; p=reject'],
        '_dmarc.testing.test': ['v=DMARC1; p=reject; t=y'],
        '_dmarc.spfok.test': ['v=DMARC1; p=reject'],
        [`${SELECTOR}._domainkey.lists.test`]: [dkimKey],
        'spfok.test': ['v=spf1 ip4:127.11.0.0/16 -all'],
      },
      a: { 'signed.test': ['192.0.2.80'], 'testing.test': ['192.0.2.81'], 'bounce.test': ['192.0.2.82'] },
    },
  });
});

after(async () => {
  await dm?.stop();
});

function app(dmarc: NonNullable<ConfigInput['dmarc']> = {}, trustedArc: string[] = []): Promise<TestApp> {
  return startTestApp({ dns: { servers: [dm.server], timeout: '3s' }, relay: { forward_from_ip: ['192.0.2.0/24'] }, dmarc, auth: { trusted_arc: trustedArc } });
}

async function signed(domain: string, body = 'The body that was signed.\r\n'): Promise<string> {
  const message = `From: Alice <alice@${domain}>\r\nTo: <bob@example.test>\r\nSubject: signed by ${domain}\r\nDate: Wed, 02 Dec 2026 08:00:00 +0000\r\nMessage-ID: <${crypto.randomUUID()}@${domain}>\r\n\r\n${body}`;
  // (The signature's settings go in signatureData: given at the top level, nothing is signed.)
  const r = await dkimSign(message, { signatureData: [{ signingDomain: domain, selector: SELECTOR, privateKey: PRIVATE, canonicalization: 'relaxed/relaxed' }] } as never);
  assert.deepEqual(r.errors, []);
  assert.match(r.signatures, /^DKIM-Signature: /);
  return r.signatures + message;
}

/** Sends `message` from `from`; the delivered copy, or the refusal. */
async function send(a: TestApp, from: string, message: string): Promise<{ reply: string; delivered?: string }> {
  const before = a.maildir('bob').length;
  const c = await RawClient.connect(a.port, '127.0.0.1', CLIENT);
  try {
    await c.reply(10_000);
    c.send('EHLO client.example.org\r\n');
    await c.reply();
    c.send(`MAIL FROM:<${from}>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n`);
    const [mail, rcpt, go] = await c.replies(3, 10_000);
    assert.match(`${mail} ${rcpt} ${go}`, /^250 .* 250 .* 354 /);
    c.send(`${message.replace(/\r\n\./g, '\r\n..')}\r\n.\r\n`);
    const reply = await c.reply(15_000);
    c.send('QUIT\r\n');
    if (!reply.startsWith('250')) return { reply };
    const files = await a.waitMaildir('bob', before + 1);
    const newest = files.map((f) => ({ f, t: fs.statSync(f).mtimeMs })).sort((x, y) => y.t - x.t)[0]?.f as string;
    return { reply, delivered: fs.readFileSync(newest, 'latin1') };
  } finally {
    c.close();
  }
}

/** The results in our Authentication-Results field, by method: { dkim: 'dkim=pass header.d=…', … }. */
function ourResults(message: string): Record<string, string> {
  const head = (message.split('\r\n\r\n')[0] as string).replace(/\r\n[ \t]+/g, ' ');
  const field = head.split('\r\n').find((l) => l.startsWith('Authentication-Results: mx.example.test;'));
  assert.ok(field, `no Authentication-Results of ours in:\n${head}`);
  const out: Record<string, string> = {};
  for (const part of field.slice('Authentication-Results: mx.example.test;'.length).split(';')) {
    const t = part.trim();
    out[t.split('=')[0] as string] = t;
  }
  return out;
}

test('a DKIM-signed message passes DKIM and DMARC; altered after signing it fails both, scored and not refused (enforce none)', LIMIT, async () => {
  const a = await app();
  try {
    const good = await send(a, 'alice@bounce.test', await signed('signed.test'));
    const r = ourResults(good.delivered as string);
    assert.match(r.dkim as string, /^dkim=pass .*header\.d=signed\.test.*header\.s=sel1/);
    assert.match(r.spf as string, /^spf=none .*smtp\.mailfrom=alice@bounce\.test$/);
    assert.match(r.dmarc as string, /^dmarc=pass .*header\.from=signed\.test/);
    assert.equal(r.iprev, 'iprev=fail policy.iprev=127.11.0.1', 'the client has no reverse DNS');
    assert.match(r.arc as string, /^arc=none/);
    assert.match(good.delivered as string, /X-Spam-Status: No, score=0\.0/);

    const altered = (await signed('signed.test')).replace('The body that was signed.', 'The body that was changed.');
    const bad = await send(a, 'alice@bounce.test', altered);
    const rb = ourResults(bad.delivered as string);
    assert.match(rb.dkim as string, /^dkim=fail /, 'a body hash mismatch is fail (RFC 8601), not neutral');
    assert.match(rb.dmarc as string, /^dmarc=fail .*header\.from=signed\.test/);
    assert.match(bad.delivered as string, /X-Spam-Status: No, score=4\.0 required=5\.0 tests=DKIM_FAIL,DMARC_FAIL\r\n/, 'points only: enforce none');
  } finally {
    await a.stop();
  }
});

test('enforce reject: p=reject is refused at the end of DATA; t=y and an SPF-aligned pass are not', LIMIT, async () => {
  const a = await app({ enforce: 'reject' });
  try {
    const altered = (await signed('signed.test')).replace('The body that was signed.', 'Changed on the way.');
    assert.equal((await send(a, 'alice@bounce.test', altered)).reply, '550 5.7.1 Message rejected: signed.test publishes a DMARC policy of reject, and this message fails it');
    const line = a.logs().find((l) => l.check === 'dmarc' && l.verdict === 'reject');
    assert.ok(line && line.setting === 'dmarc.enforce', JSON.stringify(line));

    const testing = (await signed('testing.test')).replace('The body that was signed.', 'Changed too.');
    const t = await send(a, 'alice@bounce.test', testing);
    assert.match(t.reply, /^250 /, 't=y: the domain is testing its policy, never refused');
    // DMARC's testing mode applies the next policy down: p=reject is taken as quarantine.
    assert.match(t.delivered as string, /tests=DKIM_FAIL,DMARC_FAIL,\s*DMARC_QUARANTINE\r\n/);
    assert.match(ourResults(t.delivered as string).dmarc as string, /^dmarc=fail .*policy\.dmarc=quarantine header\.from=testing\.test/);

    const unsigned = 'From: <news@spfok.test>\r\nTo: <bob@example.test>\r\nSubject: unsigned\r\n\r\nSPF is enough here.\r\n';
    const s = await send(a, 'news@spfok.test', unsigned);
    assert.match(s.reply, /^250 /);
    const rs = ourResults(s.delivered as string);
    assert.match(rs.spf as string, /^spf=pass .*smtp\.mailfrom=news@spfok\.test$/);
    assert.match(rs.dmarc as string, /^dmarc=pass .*header\.from=spfok\.test/);
    assert.equal(rs.dkim, 'dkim=none (message not signed)');
  } finally {
    await a.stop();
  }
});

test('a mailing list that changed a p=reject message and sealed it with ARC: refused, unless its sealer is in auth.trusted_arc', LIMIT, async () => {
  // The list adds a footer (the author's DKIM signature breaks) and seals what it received.
  const listed = (await signed('signed.test')).replace('The body that was signed.', 'The body that was signed.\r\n-- \r\nlists.test footer');
  const sealed = (await sealMessage(listed, { signingDomain: 'lists.test', selector: SELECTOR, privateKey: PRIVATE, cv: 'none', authResults: 'lists.test; dkim=pass header.d=signed.test; dmarc=pass header.from=signed.test' } as never)).toString('latin1');
  const message = sealed + listed;
  const strict = await app({ enforce: 'reject' });
  try {
    assert.match((await send(strict, 'list-bounces@lists.test', message)).reply, /^550 5\.7\.1 Message rejected: signed\.test publishes a DMARC policy of reject/);
  } finally {
    await strict.stop();
  }
  const trusting = await app({ enforce: 'reject' }, ['lists.test']);
  try {
    const r = await send(trusting, 'list-bounces@lists.test', message);
    assert.match(r.reply, /^250 /, 'the trusted sealer vouches for the original');
    const ar = ourResults(r.delivered as string);
    assert.match(ar.arc as string, /^arc=pass /);
    assert.match(ar.dmarc as string, /^dmarc=fail /, 'DMARC itself still fails: only its enforcement is waived');
    assert.doesNotMatch(r.delivered as string, /DMARC_QUARANTINE/);
  } finally {
    await trusting.stop();
  }
});
