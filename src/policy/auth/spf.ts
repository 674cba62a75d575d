// SPF (spf:, RFC 7208) at MAIL FROM (issue 12): is the client allowed to send for the sender's
// domain? For the null sender the HELO name is checked instead (RFC 7208 2.3), so bounces are
// judged too. mailauth evaluates the record, asking mxguard's own resolver (src/policy/auth/dns.ts).
// The result is kept on the transaction (greylisting keys a pool by its passing domain; the
// Authentication-Results field reports it) and, as the config says, scores or refuses:
//   fail       spf.fail: score (fail_score), tempfail (451 4.7.23) or reject (550 5.7.23)
//   softfail   softfail_score points;  permerror  permerror_score points
//   temperror  spf.temperror: accept (logged) or tempfail (451 4.7.24)
// A refusal at MAIL is answered at RCPT with smtp.delay_reject, as Postfix's policyd-spf does.
// Relay clients are not checked; nor is a client that authenticated (its mail is its own).
import { createRequire } from 'node:module';
import { defineCheck, needDns, type Check } from '../check.ts';
import type { Config } from '../../config/schema.ts';
import type { DnsResolver } from '../../dns/resolver.ts';
import { CONTINUE, type Verdict } from '../verdict.ts';
import { mailauthResolver } from './dns.ts';
import type { IprevOutcome, SpfOutcome, SpfResult } from './results.ts';
import type { MailContext } from '../context.ts';

type Settings = NonNullable<Config['spf']> & { readonly hostname: string; readonly timeoutMs: number };

// mailauth (and its dependencies) load only where SPF is configured: `mxguard stdio` starts once per connection.
const load = createRequire(import.meta.url);
type SpfFn = typeof import('mailauth/lib/spf/index.js').spf;
const spfOf = (): SpfFn => (load('mailauth/lib/spf/index.js') as { spf: SpfFn }).spf;

const RESULTS = new Set<SpfResult>(['pass', 'fail', 'softfail', 'neutral', 'none', 'temperror', 'permerror']);

/** The verdict for an SPF outcome (pure: unit-tested). */
export function spfVerdict(o: SpfOutcome, s: Pick<Settings, 'fail' | 'fail_score' | 'softfail_score' | 'permerror_score' | 'temperror'>, ip: string): Verdict {
  const log = `spf: ${o.result} for ${o.identity === 'helo' ? 'HELO' : 'MAIL FROM'} ${o.value} from [${ip}]${o.comment ? ` (${o.comment})` : ''}`;
  switch (o.result) {
    case 'fail': {
      if (s.fail === 'score') return s.fail_score !== 0 ? { kind: 'tag', check: 'spf', score: s.fail_score, tests: [{ name: 'SPF_FAIL', score: s.fail_score }], log } : { kind: 'continue', check: 'spf', log };
      const text = `Message rejected due to SPF policy: ${o.domain} does not designate [${ip}] as permitted sender`;
      return s.fail === 'reject'
        ? { kind: 'reject', check: 'spf', code: 550, enhanced: '5.7.23', text, setting: 'spf.fail', log }
        : { kind: 'tempfail', check: 'spf', code: 451, enhanced: '4.7.23', text, setting: 'spf.fail', log };
    }
    case 'softfail':
      return s.softfail_score !== 0 ? { kind: 'tag', check: 'spf', score: s.softfail_score, tests: [{ name: 'SPF_SOFTFAIL', score: s.softfail_score }], log } : { kind: 'continue', check: 'spf', log };
    case 'permerror':
      return s.permerror_score !== 0 ? { kind: 'tag', check: 'spf', score: s.permerror_score, tests: [{ name: 'SPF_PERMERROR', score: s.permerror_score }], log } : { kind: 'continue', check: 'spf', log };
    case 'temperror':
      if (s.temperror === 'tempfail') return { kind: 'tempfail', check: 'spf', code: 451, enhanced: '4.7.24', text: `SPF look-up for ${o.domain} failed, try again later`, setting: 'spf.temperror', log };
      return { kind: 'continue', check: 'spf', log };
    default:
      // pass, neutral, none: nothing to decide; the result is in the Authentication-Results field.
      return CONTINUE;
  }
}

export function spfCheck(s: Settings, dns: DnsResolver): Check<'mail'> {
  const resolver = mailauthResolver(dns);
  return {
    name: 'spf',
    phase: 'mail',
    concurrent: true,
    async run(ctx) {
      // iprev (RFC 8601 2.7.3) for the Authentication-Results field, asked beside SPF (the
      // resolver caches it for the session's later transactions and for the rdns check).
      const iprev = iprevOf(dns, ctx.session.remoteIp).then((r) => {
        if (ctx.auth) ctx.auth.iprev = r;
      });
      try {
        return await spfRun(ctx);
      } finally {
        await iprev;
      }
    },
  };

  async function spfRun(ctx: MailContext): Promise<Verdict> {
    if (ctx.session.authUser !== undefined) return CONTINUE;
    const sender = ctx.mailFrom.address;
    const helo = ctx.session.helo;
    if (sender === '' && (helo === undefined || helo.startsWith('['))) return CONTINUE; // nothing to check: no name
    const r = await spfOf()({ sender: sender === '' ? undefined : sender, ip: ctx.session.remoteIp, helo, mta: s.hostname, resolver: resolver as never, maxElapsedTime: s.timeoutMs * 4, strict: true });
    const result = (RESULTS.has(r.status.result as SpfResult) ? r.status.result : 'temperror') as SpfResult;
    const outcome: SpfOutcome = {
      result,
      domain: sender === '' ? (helo as string).toLowerCase() : ctx.mailFrom.domain.toLowerCase(),
      identity: sender === '' ? 'helo' : 'mailfrom',
      value: sender === '' ? (helo as string) : sender,
      ...(r.status.comment ? { comment: String(r.status.comment) } : {}),
    };
    if (ctx.auth) ctx.auth.spf = outcome;
    return spfVerdict(outcome, s, ctx.session.remoteIp);
  }
}

/** The client's iprev result; never throws (a DNS failure is temperror). */
async function iprevOf(dns: DnsResolver, ip: string): Promise<IprevOutcome> {
  try {
    const r = await dns.forwardConfirmed(ip);
    if (r.kind === 'confirmed') return { result: 'pass', name: r.name, ip };
    return r.kind === 'error' ? { result: 'temperror', ip } : { result: 'fail', ip };
  } catch {
    return { result: 'temperror', ip };
  }
}

/** dmarc: without spf: SPF is still evaluated (DMARC needs it) but gives no points and refuses nothing. */
const SPF_FOR_DMARC: NonNullable<Config['spf']> = { fail: 'score', fail_score: 0, softfail_score: 0, permerror_score: 0, temperror: 'accept' };

export const spf = defineCheck<Settings, 'mail'>({
  name: 'spf',
  phase: 'mail',
  needs: ['dns'],
  waives: { relayClients: true },
  settings: (c) => {
    const spec = c.spf ?? (c.dmarc ? SPF_FOR_DMARC : undefined);
    return spec === undefined ? undefined : { ...spec, hostname: c.hostname, timeoutMs: c.dns.timeout };
  },
  create: (s, deps) => spfCheck(s, needDns(deps, 'spf')),
});
