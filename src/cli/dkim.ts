// `mxguard dkim keygen DOMAIN SELECTOR [FILE] [BITS]`: a new RSA key for dkim.sign, written to FILE
// (mode 0600; default ./DOMAIN.SELECTOR.pem, never over an existing file), and the DNS TXT record
// to publish at SELECTOR._domainkey.DOMAIN, in zone-file form (long strings cut at 255 octets).
import fs from 'node:fs';
import { generateKey } from '../delivery/dkim-sign.ts';

export function dkimCommand(command: string, args: readonly string[]): string {
  if (command !== 'keygen') throw new Error(`unknown command "${command}": keygen DOMAIN SELECTOR [FILE] [BITS]`);
  const [domain, selector, file = `${domain}.${selector}.pem`, bitsText = '2048'] = args;
  if (!domain || !selector) throw new Error('keygen DOMAIN SELECTOR [FILE] [BITS]');
  const bits = Number(bitsText);
  if (!Number.isInteger(bits) || bits < 1024 || bits > 4096) throw new Error(`BITS must be 1024 to 4096 (2048 recommended), not "${bitsText}"`);
  const { privateKey, record } = generateKey(bits);
  fs.writeFileSync(file, privateKey, { mode: 0o600, flag: 'wx' }); // wx: an existing key is never overwritten
  const strings: string[] = [];
  for (let i = 0; i < record.length; i += 255) strings.push(`"${record.slice(i, i + 255)}"`);
  return [
    `private key written to ${file}; in the config:`,
    `  dkim: { sign: [{ domain: ${domain}, selector: ${selector}, key: ${fs.realpathSync(file)} }] }`,
    `publish in DNS:`,
    `${selector}._domainkey.${domain}. IN TXT ( ${strings.join(' ')} )`,
  ].join('\n');
}
