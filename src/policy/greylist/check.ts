// The greylisting check (greylist:, issue 11), at RCPT, before any of the body is sent. A new
// triplet (client network, normalised sender, recipient) is answered 451 4.7.1 and remembered;
// a retry after greylist.delay and within retry_window passes, and its message carries
// X-Greylist. Real MTAs retry; most spamware does not.
//
// Who is never greylisted: relay clients (the registry's waiver), authenticated and
// POP-before-SMTP clients, a client a DNS allowlist vouched for (its score so far is below zero),
// greylist.allow_clients and allow_recipients, networks allowed by hand or by auto_allow (an
// allowance found is believed for ALLOWED_MEMO_MS without a store read). With
// `when: suspicious` (the default) only a transaction whose score so far reaches min_score is
// greylisted, and with retry_per_points a more suspicious one must retry more often (Greylite).
//
// The null sender is not refused at RCPT: a callout from another site (MAIL FROM:<> RCPT TO
// and QUIT) must get its answer. Its deferral is answered to DATA instead (`atData`).
import { defineCheck, type Check, type CheckDeps } from '../check.ts';
import type { Config } from '../../config/schema.ts';
import type { RcptContext } from '../context.ts';
import type { DnsResolver } from '../../dns/resolver.ts';
import type { Store } from '../../store/store.ts';
import type { Logger } from '../../util/log.ts';
import { CONTINUE, type Verdict } from '../verdict.ts';
import { AddressList, cidrError, clientNetwork } from '../../util/cidr.ts';
import { globMatches } from '../../util/pattern.ts';
import { asciiDomain, DomainSet } from '../../util/idna.ts';
import { isLocalDomain } from '../checks/local_domains.ts';
import { recentPopLogin } from '../checks/relay.ts';
import { decide, type GreySettings } from './decide.ts';
import { normaliseSender, spellsAddress } from './key.ts';
import { GreyStore, nowSec } from './store.ts';
import { clock } from '../../util/clock.ts';
import { metrics, type GreylistResult } from '../../util/metrics.ts';

interface Settings {
  readonly greylist: NonNullable<Config['greylist']>;
  readonly relay: Pick<Config['relay'], 'forward_user' | 'forward_window' | 'relay_to'>;
  readonly localDomains: readonly string[];
  readonly failOpen: boolean;
}

/** How long an allowed client network is taken as allowed without a store read (on util/clock.ts). */
export const ALLOWED_MEMO_MS = 10_000;
/** Networks remembered at most (then the memo starts again). */
const ALLOWED_MEMO_MAX = 10_000;

/** The header a message that was held up carries (postgrey's, with our name). */
export function greylistHeader(delayedSec: number): string {
  return `X-Greylist: delayed ${delayedSec} seconds by mxguard\r\n`;
}

export function greylistCheck(s: Settings, store: Store, dns: DnsResolver | undefined, log: Logger | undefined): Check<'rcpt'> {
  const g = s.greylist;
  const grey = new GreyStore(store);
  const secs: GreySettings = { delay: g.delay / 1000, retryWindow: g.retry_window / 1000, expire: g.expire / 1000 };
  const isAddress = (c: string): boolean => cidrError(c) === undefined;
  const allowIps = new AddressList(g.allow_clients.filter(isAddress));
  const allowNames = g.allow_clients.filter((c) => !isAddress(c));
  const allowRcpts = g.allow_recipients.map((p) => p.toLowerCase());
  const needName = g.by_domain || allowNames.length > 0;
  const local = new Set(s.localDomains.map(asciiDomain));
  const relayTo = new DomainSet(s.relay.relay_to);

  const recipientAllowed = (rcpt: string): boolean => allowRcpts.some((p) => (p.startsWith('@') ? rcpt.endsWith(p) : globMatches(p, rcpt)));

  /** The client's forward-confirmed name, or undefined (no resolver, none, or a DNS failure: no waiver on a guess). */
  const confirmedName = async (ip: string): Promise<string | undefined> => {
    if (!dns || !needName) return undefined;
    const r = await dns.forwardConfirmed(ip);
    return r.kind === 'confirmed' ? r.name.toLowerCase() : undefined;
  };

  const waived = async (ctx: RcptContext): Promise<string | undefined> => {
    const session = ctx.session;
    if (session.authUser !== undefined) return 'authenticated';
    if (ctx.score < 0) return 'allowlisted by DNS';
    if (recipientAllowed(ctx.rcpt.address.toLowerCase())) return 'greylist.allow_recipients';
    if (allowIps.has(session.remoteIp)) return 'greylist.allow_clients';
    if (s.relay.forward_user && (await recentPopLogin(store, session.remoteIp, s.relay.forward_window))) return 'POP-before-SMTP';
    return undefined;
  };

  /**
   * What stands for the client in its triplets: the SPF-passing sender domain, its confirmed
   * name's domain (by_domain; not for a generic name that spells out the address, as pools of
   * dynamic addresses have), or its /24.
   */
  const clientKey = (ctx: RcptContext, name: string | undefined, net: string): string => {
    const spf = ctx.tx.auth?.spf;
    if (g.spf_domain && spf?.result === 'pass' && spf.identity === 'mailfrom' && spf.domain !== '') return `spf:${spf.domain.toLowerCase()}`;
    if (g.by_domain && name !== undefined && !spellsAddress(name, ctx.session.remoteIp)) {
      const dot = name.indexOf('.');
      const parent = name.slice(dot + 1);
      if (dot > 0 && parent.includes('.')) return `dns:${parent}`;
    }
    return net;
  };

  // An allowed network is believed for ALLOWED_MEMO_MS without asking the store again: at a
  // thousand messages a second from one network that is one store read in ten thousand. An
  // allowance withdrawn (`mxguard greylist delete`, the admin API, another host) bites that late.
  const memo = new Map<string, number>();
  const allowedNet = async (net: string): Promise<boolean> => {
    const now = clock.now();
    const seen = memo.get(net);
    if (seen !== undefined && now >= seen && now - seen < ALLOWED_MEMO_MS) return true;
    const allowed = (await grey.allowed(net)) !== undefined;
    if (!allowed) memo.delete(net);
    else {
      if (memo.size >= ALLOWED_MEMO_MAX) memo.clear();
      memo.set(net, now);
    }
    return allowed;
  };

  const retriesFor = (score: number): number => (g.retry_per_points > 0 ? 1 + Math.floor(Math.max(0, score - g.min_score) / g.retry_per_points) : 1);

  /** Goes on, counted (mxguard_greylist_results_total). */
  const counted = (result: GreylistResult): Verdict => {
    metrics.greylist(result);
    return CONTINUE;
  };

  async function run(ctx: RcptContext): Promise<Verdict> {
    // Only mail we would take: a relay attempt is left to the relay check's 554, not delayed.
    if (!isLocalDomain(ctx.rcpt.domain, local) && !relayTo.has(ctx.rcpt.domain)) return CONTINUE;
    if (g.when === 'suspicious' && ctx.score < g.min_score) return counted('not_suspicious');
    if ((await waived(ctx)) !== undefined) return counted('allowed');
    const name = await confirmedName(ctx.session.remoteIp);
    if (name !== undefined && allowNames.some((p) => globMatches(p, name))) return counted('allowed');
    const net = clientNetwork(ctx.session.remoteIp);
    if (net === undefined) return CONTINUE; // not an IP address (mxguard stdio without one): nothing to key on
    const client = clientKey(ctx, name, net);
    // Allowed networks are networks, whatever keys the triplets (an administrator's allow, auto_allow).
    if (await allowedNet(net)) return counted('allowed');
    const key = g.mode === 'ip' ? client : `${client}|${normaliseSender(ctx.tx.mailFrom.address)}|${ctx.rcpt.address.toLowerCase()}`;
    const now = nowSec();
    const decision = decide(await grey.get(key), now, secs, retriesFor(ctx.score));
    await grey.put(key, decision.record, decision.kind === 'pass' ? g.expire : g.retry_window);
    if (decision.kind === 'defer') {
      metrics.greylist('greylisted');
      const text = `Greylisted, please try again in ${decision.retryIn} seconds`;
      return {
        kind: 'tempfail',
        check: 'greylist',
        code: 451,
        enhanced: '4.7.1',
        text,
        setting: 'greylist',
        log: `greylisted ${key}`,
        key,
        ...(ctx.tx.mailFrom.address === '' ? { atData: true as const } : {}),
      };
    }
    if (decision.delayed === 0) return counted('known');
    if (g.auto_allow > 0 && (await grey.countPass(net, g.auto_allow_window)) >= g.auto_allow) {
      await grey.allow(net, 'auto', g.expire);
      log?.info({ sid: ctx.session.sid, ip: ctx.session.remoteIp, check: 'greylist', net, setting: 'greylist.auto_allow' }, 'client network allowed: passed greylisting often enough');
    }
    // Counted once the store writes are done: if they fail, the recipient is counted `error` only.
    metrics.greylist('passed');
    return { kind: 'tag', check: 'greylist', score: 0, tests: [], headers: [greylistHeader(decision.delayed)], log: `greylisting passed ${key} after ${decision.delayed} s` };
  }

  return {
    name: 'greylist',
    phase: 'rcpt',
    async run(ctx) {
      try {
        return await run(ctx);
      } catch (err) {
        metrics.greylist('error');
        // The store is unreachable: store.fail_open lets the recipient pass ungreylisted; else 451 4.3.0 (the engine).
        if (!s.failOpen) throw err;
        log?.warn({ sid: ctx.session.sid, ip: ctx.session.remoteIp, check: 'greylist', err: (err as Error).message }, 'greylisting skipped: store unreachable (store.fail_open)');
        return CONTINUE;
      }
    },
  };
}

export const greylist = defineCheck<Settings, 'rcpt'>({
  name: 'greylist',
  phase: 'rcpt',
  needs: ['store'],
  waives: { relayClients: true },
  settings: (c) => (c.greylist === undefined ? undefined : { greylist: c.greylist, relay: c.relay, localDomains: c.local_domains, failOpen: c.store.fail_open }),
  create: (s, deps: CheckDeps) => {
    if (!deps.store) throw new Error('greylist needs the store');
    return greylistCheck(s, deps.store, deps.dns, deps.log);
  },
});
