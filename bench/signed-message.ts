// The variants cell's message (issue 12, "Must show" 4): about 1 KiB, DKIM-signed for src.test
// (the bench's sender domain) with a key made here, and the DNS a receiver needs to judge it:
// src.test's SPF record (loopback may send), its DMARC record (p=reject) and the DKIM key. The
// message goes to smtp-source -F, which sends each line with CRLF, so it is signed as CRLF text
// and written with LF.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { dkimSign } from 'mailauth';
import type { DnsRecords } from '../test/harness/dns.ts';

const SELECTOR = 'bench';

export async function signedMessage(dir: string): Promise<{ file: string; records: DnsRecords }> {
  const keys = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const privateKey = keys.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  const publicKey = (keys.publicKey.export({ type: 'spki', format: 'der' }) as Buffer).toString('base64');
  const line = 'The quick brown fox jumps over the lazy dog, and the benchmark counts how often.';
  const body = Array.from({ length: 11 }, (_, i) => `${String(i).padStart(2, '0')} ${line}`).join('\r\n') + '\r\n';
  const head = 'From: Bench <bench@src.test>\r\nTo: <user@example.test>\r\nSubject: signed benchmark message\r\nDate: Wed, 02 Dec 2026 08:00:00 +0000\r\nMessage-ID: <bench@src.test>\r\n';
  const message = `${head}\r\n${body}`;
  const signed = await dkimSign(message, { signatureData: [{ signingDomain: 'src.test', selector: SELECTOR, privateKey, canonicalization: 'relaxed/relaxed' }] } as never);
  if (!signed.signatures) throw new Error(`could not sign the benchmark message: ${JSON.stringify(signed.errors)}`);
  const file = path.join(dir, 'signed-1k.eml');
  fs.writeFileSync(file, (signed.signatures + message).replace(/\r\n/g, '\n'));
  const dkim = `v=DKIM1; k=rsa; p=${publicKey}`;
  const chunks: string[] = [];
  for (let i = 0; i < dkim.length; i += 250) chunks.push(dkim.slice(i, i + 250));
  return {
    file,
    records: {
      txt: {
        'src.test': ['v=spf1 ip4:127.0.0.0/8 -all'],
        '_dmarc.src.test': ['v=DMARC1; p=reject'],
        [`${SELECTOR}._domainkey.src.test`]: [chunks],
      },
    },
  };
}
