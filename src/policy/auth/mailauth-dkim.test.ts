import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { dkimSign } from 'mailauth';
import { clearKeyCache, dkimVerifyCached, headerEnd, sharedKeyCache } from './mailauth-dkim.ts';

function keyPair(): { privateKey: string; record: string } {
  const k = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const p = (k.publicKey.export({ type: 'spki', format: 'der' }) as Buffer).toString('base64');
  return { privateKey: k.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, record: `v=DKIM1; k=rsa; p=${p}` };
}

const a = keyPair();
const b = keyPair();
const message = 'From: <a@signer.test>\r\nTo: <b@example.test>\r\nSubject: key cache\r\n\r\nhello\r\n';

async function signed(privateKey: string): Promise<string> {
  const r = await dkimSign(message, { signatureData: [{ signingDomain: 'signer.test', selector: 's1', privateKey, canonicalization: 'relaxed/relaxed' }] } as never);
  return r.signatures + message;
}

test('a key record is parsed once for every message that uses it, and again when the record changes', async () => {
  clearKeyCache();
  let record = a.record;
  let asked = 0;
  const resolver = async (name: string, type: string): Promise<unknown> => {
    asked++;
    assert.equal(`${type} ${name}`, 'TXT s1._domainkey.signer.test');
    return [[record]];
  };
  const first = await sharedKeyCache(resolver).get('DKIM', 's1._domainkey.signer.test', 1024, { strict: true, hashAlgo: 'sha256' });
  const second = await sharedKeyCache(resolver).get('DKIM', 's1._domainkey.signer.test', 1024, { strict: true, hashAlgo: 'sha256' });
  assert.equal(asked, 2, 'DNS is asked for each message (its own cache keeps the TTL)');
  assert.equal(second.publicKey, first.publicKey, 'the same parsed key');
  assert.equal(typeof first.publicKey, 'object');
  assert.match(String(first.publicKey), /^-----BEGIN (RSA )?PUBLIC KEY-----/, 'it still reads as its PEM text');
  await assert.rejects(sharedKeyCache(resolver).get('DKIM', 's1._domainkey.signer.test', 4096, { strict: true, hashAlgo: 'sha256' }), /RSA key too short/, 'another minimum key size is another question');
  record = b.record;
  const rotated = await sharedKeyCache(resolver).get('DKIM', 's1._domainkey.signer.test', 1024, { strict: true, hashAlgo: 'sha256' });
  assert.notEqual(rotated.publicKey, first.publicKey, 'a changed record is parsed anew');
  record = 'v=DKIM1; k=rsa; p=';
  await assert.rejects(sharedKeyCache(resolver).get('DKIM', 's1._domainkey.signer.test', 1024, { strict: true, hashAlgo: 'sha256' }), /Missing key value/, 'a revoked key');
});

test('dkimVerifyCached: a signature passes with its key, fails once the key is rotated, and passes with the new one', async () => {
  clearKeyCache();
  let record = a.record;
  const resolver = async (): Promise<unknown> => [[record]];
  const opts = { resolver, minBitLength: 1024, strict: true };
  const byA = await signed(a.privateKey);
  const byB = await signed(b.privateKey);
  for (let i = 0; i < 3; i++) assert.equal((await dkimVerifyCached(Buffer.from(byA), opts)).results?.[0]?.status.result, 'pass', `message ${i + 1}`);
  record = b.record;
  assert.equal((await dkimVerifyCached(Buffer.from(byA), opts)).results?.[0]?.status.result, 'fail', 'the old key is gone');
  assert.equal((await dkimVerifyCached(Buffer.from(byB), opts)).results?.[0]?.status.result, 'pass');
  const r = await dkimVerifyCached(Buffer.from(byB), opts);
  assert.deepEqual(r.headerFrom, ['a@signer.test']);
});

test('headerEnd: an empty line after LF or CRLF, or a message that begins with one, across chunk edges', () => {
  const at = (s: string, seen = 0, p1?: number, p2?: number) => headerEnd(Buffer.from(s, 'latin1'), seen, p1, p2);
  assert.equal(at('A: b\r\n\r\nbody'), 8);
  assert.equal(at('A: b\n\nbody'), 6);
  assert.equal(at('A: b\r\nC: d\r\n'), -1);
  assert.equal(at('\r\nbody'), 2, 'an empty header section (CRLF)');
  assert.equal(at('\nbody'), 1, 'an empty header section (LF)');
  assert.equal(at('\nbody', 1, 0x0d), 1, 'a message that begins with CRLF, cut between CR and LF');
  assert.equal(at('\nbody', 3, 0x0d, 0x78), -1, 'CR LF after other bytes ends a line, not the header');
  assert.equal(at('\r\nbody', 6, 0x0d, 0x0a), -1, 'a chunk that starts with CRLF after CR LF… is a line end, not an empty line');
  assert.equal(at('\nbody', 6, 0x0d, 0x0a), 1, 'the last two bytes of the previous chunk were LF CR: this LF ends the header');
  assert.equal(at('\r\nbody', 6, 0x0a), 2, 'the previous chunk ended with LF');
});

test('the faster header split gives what mailauth\'s own does, for every way of cutting the message', async () => {
  clearKeyCache();
  const fixtures = path.resolve(import.meta.dirname, '../../../test/fixtures');
  const record = a.record;
  const resolver = async (): Promise<unknown> => [[record]];
  const opts = { resolver, minBitLength: 1024, strict: true };
  const messages: Buffer[] = [
    Buffer.from(await signed(a.privateKey)),
    Buffer.from((await signed(a.privateKey)).replace(/\r\n/g, '\n')),
    fs.readFileSync(path.join(fixtures, 'dkim/rfc6376.signed.msg')),
    fs.readFileSync(path.join(fixtures, 'dkim/test.message')),
    ...fs.readdirSync(path.join(fixtures, 'good-mail/cur')).map((f) => fs.readFileSync(path.join(fixtures, 'good-mail/cur', f))),
    Buffer.from('\r\nno header at all\r\n'),
    Buffer.from('\nno header at all\n'),
    Buffer.from('Subject: no body\r\n'),
    Buffer.from('Subject: x\r\n\r\n'),
    Buffer.from('Subject: lone CR\r\r\n\r\nbody\r\n'),
    Buffer.from('Subject: x\n\r\nbody\r\n'),
  ];
  const cuts = (m: Buffer, size: number): Buffer[] => {
    const out: Buffer[] = [];
    for (let i = 0; i < m.length; i += size) out.push(m.subarray(i, i + size));
    return out;
  };
  let compared = 0;
  for (const m of messages) {
    const want = await dkimVerifyCached(Readable.from([m]), opts, { originalSplit: true });
    for (const size of [1, 2, 3, 5, 64, m.length]) {
      const got = await dkimVerifyCached(Readable.from(cuts(m, size)), opts);
      assert.deepEqual(
        { results: got.results, headerFrom: got.headerFrom, headerBytes: got.headerBytes },
        { results: want.results, headerFrom: want.headerFrom, headerBytes: want.headerBytes },
        `${JSON.stringify(m.subarray(0, 40).toString('latin1'))}… in chunks of ${size}`,
      );
      compared++;
    }
  }
  assert.equal(compared, messages.length * 6);
});
