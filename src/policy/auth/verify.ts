// DKIM, ARC and DMARC of one message (mailauth, strict), as plain data: the part of the `dmarc`
// check that runs in its worker thread (src/policy/auth/worker.ts), or in the calling thread
// when there is none. Nothing here touches the session or the transaction.
import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import type { DnsResolver } from '../../dns/resolver.ts';
import { mailauthResolver } from './dns.ts';
import { dkimVerifyCached } from './mailauth-dkim.ts';
import type { AuthResults, SpfOutcome } from './results.ts';

const load = createRequire(import.meta.url);
type Mailauth = typeof import('mailauth');
const mailauth = (): Mailauth => load('mailauth') as Mailauth;

export interface VerifyInput {
  readonly ip: string;
  readonly spf?: SpfOutcome;
  readonly minKeyBits: number;
}

export type Verified = Pick<AuthResults, 'dkim' | 'arc' | 'dmarc'>;

/**
 * Who sealed the newest link of a chain that passed (the d= of its ARC-Seal, RFC 8617 4.1.3):
 * that intermediary vouches for what the message was when it got it. Nothing for a chain that
 * did not pass (mailauth fills its fields before it has checked them).
 */
export function arcSealers(arc: { status?: { result?: string }; chain?: readonly { 'arc-seal'?: { parsed?: { d?: { value?: unknown } } } }[] }): string[] {
  if (arc.status?.result !== 'pass') return [];
  const newest = arc.chain?.[arc.chain.length - 1];
  const d = newest?.['arc-seal']?.parsed?.d?.value;
  return typeof d === 'string' && d !== '' ? [d.toLowerCase()] : [];
}

export async function verifyMessage(message: Iterable<Buffer> | AsyncIterable<Buffer>, input: VerifyInput, dns: DnsResolver): Promise<Verified> {
  const resolver = mailauthResolver(dns) as never;
  const m = mailauth();
  const out: Verified = {};
  // mailauth's dkimVerify, with DKIM and ARC keys parsed once per record rather than per message.
  const dkim = await dkimVerifyCached(Readable.from(message), { resolver, minBitLength: input.minKeyBits, strict: true });
  out.dkim = (dkim.results ?? []).map((x) => ({ result: x.status.result, info: x.info, domain: (x.signingDomain ?? '').toLowerCase() }));
  const arc = await m.arc(dkim.arc as never, { resolver, minBitLength: input.minKeyBits, strict: true, ip: input.ip } as never);
  if (arc.info) out.arc = { result: arc.status.result, info: arc.info, sealers: arcSealers(arc as never) };
  if (dkim.headerFrom?.length) {
    const spf = input.spf;
    const dmarc = await m.dmarc({
      headerFrom: dkim.headerFrom,
      fromFields: dkim.fromFields,
      spfDomains: spf?.result === 'pass' && spf.identity === 'mailfrom' ? [spf.domain] : [],
      dkimDomains: (dkim.results ?? []).filter((x) => x.status.result === 'pass').map((x) => ({ ...(x.id ? { id: x.id } : {}), domain: x.signingDomain ?? '', aligned: x.status.aligned as string | false | undefined, underSized: x.status.underSized as number | undefined })),
      arcResult: arc,
      resolver,
      strict: true,
    } as never);
    if (dmarc) out.dmarc = { result: dmarc.status.result, info: dmarc.info, policy: dmarc.policy ?? dmarc.p ?? 'none', testMode: dmarc.testMode === true, domain: dmarc.domain };
  }
  return out;
}
