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
import { defineCheck, needDns, type Check } from '../check.ts';
import type { Config } from '../../config/schema.ts';
import type { DnsResolver } from '../../dns/resolver.ts';
import { CONTINUE, type TestHit, type Verdict } from '../verdict.ts';
import { verifyMessage, type Verified } from './verify.ts';
import { authWorker } from './pool.ts';
import type { AuthResults } from './results.ts';

type Settings = NonNullable<Config['dmarc']> & { readonly trusted_arc: readonly string[] };

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

export function messageAuthCheck(s: Settings, dns: DnsResolver, opts: { inProcess?: boolean } = {}): Check<'data'> {
  const pool = opts.inProcess ? undefined : authWorker();
  return {
    name: 'dmarc',
    phase: 'data',
    // A DNS failure is temperror inside mailauth; what is left to fail is a bug, a stream error or a dead worker.
    onError: 'accept',
    async run(ctx) {
      const results = ctx.tx.auth;
      if (!results) return CONTINUE;
      const input = { ip: ctx.session.remoteIp, minKeyBits: s.min_key_bits, ...(results.spf ? { spf: results.spf } : {}) };
      let verified: Verified;
      if (pool) {
        // The worker gets the message, read afresh from the spool into one buffer of its own,
        // which is handed over rather than copied (a chunk may be a view of a larger buffer,
        // and posting a view copies the whole of it).
        const chunks: Buffer[] = [];
        let size = 0;
        for await (const c of ctx.message.read()) {
          chunks.push(c);
          size += c.length;
        }
        const message = Buffer.allocUnsafeSlow(size);
        let at = 0;
        for (const c of chunks) at += c.copy(message, at);
        verified = await pool.run(message, input, dns, ctx.signal);
      } else {
        verified = await verifyMessage(ctx.message.read(), input, dns);
      }
      if (verified.dkim) results.dkim = verified.dkim;
      if (verified.arc) results.arc = verified.arc;
      if (verified.dmarc) results.dmarc = verified.dmarc;
      return messageAuthVerdict(results, s);
    },
  };
}

export const dmarc = defineCheck<Settings, 'data'>({
  name: 'dmarc',
  phase: 'data',
  needs: ['dns'],
  waives: { relayClients: true },
  settings: (c) => (c.dmarc === undefined ? undefined : { ...c.dmarc, trusted_arc: c.auth.trusted_arc }),
  create: (s, deps) => messageAuthCheck(s, needDns(deps, 'dmarc')),
});
