import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { dkimSign } from 'mailauth';
import { clearKeyCache, dkimVerifyCached, sharedKeyCache } from './key-cache.ts';

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
