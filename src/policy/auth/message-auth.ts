// DKIM, ARC and DMARC of each message at the end of DATA (dmarc:, issue 12), with mailauth in
// strict mode (RFC 6376 / 8617 / DMARC as written: a body altered on the way is dkim=fail, not
// neutral) asking mxguard's own resolver. The SPF result found at MAIL (src/policy/auth/spf.ts)
// is the other half of DMARC. The results go on the transaction; the policy session writes them
// into our Authentication-Results field. What a fail does:
//   dkim fail                  dkim_fail_score points
//   dmarc fail                 fail_score points, and by dmarc.enforce:
//     quarantine               + quarantine_score for a p=quarantine or p=reject domain (spam)
//     reject                   550 5.7.1 for p=reject; quarantine's points instead under t=y
//                              (testing), none when an auth.trusted_arc sealer's chain passed
import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import { defineCheck, needDns, type Check } from '../check.ts';
import type { Config } from '../../config/schema.ts';
import type { DnsResolver } from '../../dns/resolver.ts';
import { CONTINUE, type TestHit, type Verdict } from '../verdict.ts';
import { mailauthResolver } from './dns.ts';
import type { AuthResults, DmarcOutcome } from './results.ts';

type Settings = NonNullable<Config['dmarc']> & { readonly trusted_arc: readonly string[] };

const load = createRequire(import.meta.url);
type Mailauth = typeof import('mailauth');
const mailauth = (): Mailauth => load('mailauth') as Mailauth;

/** What the results mean for the message (pure: unit-tested). */
export function messageAuthVerdict(r: AuthResults, s: Settings): Verdict {
  const tests: TestHit[] = [];
  if (s.dkim_fail_score !== 0 && (r.dkim ?? []).some((d) => d.result === 'fail')) tests.push({ name: 'DKIM_FAIL', score: s.dkim_fail_score });
  const d = r.dmarc;
  if (d?.result === 'fail') {
    if (s.fail_score !== 0) tests.push({ name: 'DMARC_FAIL', score: s.fail_score });
    const strong = d.policy === 'reject' || d.policy === 'quarantine';
    const trustedArc = r.arc?.result === 'pass' && r.arc.sealers.some((x) => s.trusted_arc.includes(x.toLowerCase()));
    const why = `dmarc: fail for ${d.domain} (p=${d.policy}${d.testMode ? ', t=y' : ''}${trustedArc ? ', trusted ARC chain' : ''})`;
    if (s.enforce === 'reject' && d.policy === 'reject' && !d.testMode && !trustedArc) {
      return { kind: 'reject', check: 'dmarc', code: 550, enhanced: '5.7.1', text: `Message rejected: ${d.domain} publishes a DMARC policy of reject, and this message fails it`, setting: 'dmarc.enforce', log: why };
    }
    if (s.enforce !== 'none' && strong && !trustedArc && s.quarantine_score !== 0) tests.push({ name: 'DMARC_QUARANTINE', score: s.quarantine_score });
    if (tests.length === 0) return { kind: 'continue', check: 'dmarc', log: why };
    return { kind: 'tag', check: 'dmarc', score: tests.reduce((a, t) => a + t.score, 0), tests, log: why };
  }
  if (tests.length === 0) return CONTINUE;
  return { kind: 'tag', check: 'dmarc', score: tests.reduce((a, t) => a + t.score, 0), tests };
}

export function messageAuthCheck(s: Settings, dns: DnsResolver): Check<'data'> {
  const resolver = mailauthResolver(dns) as never;
  return {
    name: 'dmarc',
    phase: 'data',
    // A DNS failure is temperror inside mailauth; what is left to fail is a bug or a stream error.
    onError: 'accept',
    async run(ctx) {
      const results = ctx.tx.auth;
      if (!results) return CONTINUE;
      const m = mailauth();
      const dkim = await m.dkimVerify(Readable.from(ctx.message.read()), { resolver, minBitLength: s.min_key_bits, strict: true });
      results.dkim = (dkim.results ?? []).map((x) => ({ result: x.status.result, info: x.info, domain: (x.signingDomain ?? '').toLowerCase() }));
      const arc = await m.arc((dkim as unknown as { arc: unknown }).arc as never, { resolver, minBitLength: s.min_key_bits, strict: true, ip: ctx.session.remoteIp } as never);
      const sealers = arcSealers(arc as never);
      if (arc.info) results.arc = { result: arc.status.result, info: arc.info, sealers };
      if (dkim.headerFrom?.length) {
        const spf = results.spf;
        const dmarc = await m.dmarc({
          headerFrom: dkim.headerFrom,
          fromFields: dkim.fromFields,
          spfDomains: spf?.result === 'pass' && spf.identity === 'mailfrom' ? [spf.domain] : [],
          dkimDomains: (dkim.results ?? []).filter((x) => x.status.result === 'pass').map((x) => ({ ...(x.id ? { id: x.id } : {}), domain: x.signingDomain ?? '', aligned: x.status.aligned as string | false | undefined, underSized: x.status.underSized as number | undefined })),
          arcResult: arc,
          resolver,
          strict: true,
        } as never);
        if (dmarc) {
          const out: DmarcOutcome = { result: dmarc.status.result, info: dmarc.info, policy: dmarc.policy ?? dmarc.p ?? 'none', testMode: dmarc.testMode === true, domain: dmarc.domain };
          results.dmarc = out;
        }
      }
      return messageAuthVerdict(results, s);
    },
  };
}

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

export const dmarc = defineCheck<Settings, 'data'>({
  name: 'dmarc',
  phase: 'data',
  needs: ['dns'],
  waives: { relayClients: true },
  settings: (c) => (c.dmarc === undefined ? undefined : { ...c.dmarc, trusted_arc: c.auth.trusted_arc }),
  create: (s, deps) => messageAuthCheck(s, needDns(deps, 'dmarc')),
});
