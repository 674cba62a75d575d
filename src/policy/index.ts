// The checks, in order: one registry of check modules (src/policy/checks/, src/policy/rules/).
// Each module names its check, its phase, the slice of the config it reads (undefined: not
// enabled), the clients it waives and a factory that gets only that slice and the shared
// services. The order here is the order the engine runs them in, within each phase; docs/flow.md
// lists the same order ("Checks, in order"), and src/policy/registry.test.ts holds them together.
import type { Config } from '../config/schema.ts';
import type { AnyCheck, AnyCheckModule, Check, CheckDeps, PolicyEvent, Waivers } from './check.ts';
import { isSubmission, type PhaseContexts, type SessionInfo } from './context.ts';
import type { Store } from '../store/store.ts';
import type { Logger } from '../util/log.ts';
import type { DnsResolver } from '../dns/resolver.ts';
import type { Phase, Verdict } from './verdict.ts';
import { CONTINUE } from './verdict.ts';
import { AddressList } from '../util/cidr.ts';
import { banIp, banMailFrom, banRcptTo } from './checks/ban.ts';
import { dnsbl, rhsblHelo, rhsblSender } from './checks/dnsbl.ts';
import { rdns } from './checks/rdns.ts';
import { helo } from './checks/helo.ts';
import { senderDomain } from './checks/sender_domain.ts';
import { rblsmtpd } from './checks/rblsmtpd.ts';
import { maxRcpts } from './checks/max_rcpts.ts';
import { nullSender, recipients } from './checks/recipients.ts';
import { tarpit } from './checks/tarpit.ts';
import { rulesFile } from './rules/check.ts';
import { relayProbe } from './checks/relay_probe.ts';
import { recipientCallout } from './checks/recipient_callout.ts';
import { localDomains } from './checks/local_domains.ts';
import { relay } from './checks/relay.ts';
import { authFailures } from './checks/auth_failures.ts';
import { filterRules, mfilter } from './filters/check.ts';
import { greylist } from './greylist/check.ts';
import { scanners } from './scanners/check.ts';
import { spf } from './auth/spf.ts';
import { dmarc } from './auth/message-auth.ts';
import { ratesAuth, ratesConnect, ratesMail, ratesRcpt } from './rates/check.ts';
import { throttle } from './rates/throttle.ts';

export const REGISTRY: readonly AnyCheckModule[] = [
  // connect (early talking is judged after these, at the banner: a protocol finding, src/policy/protocol.ts)
  banIp,
  ratesConnect, // before the DNS checks: a connection flood costs no queries
  dnsbl, // after ban_ip: a banned client costs no query; the refusal waits for RCPT (smtp.delay_reject)
  rdns,
  // helo
  helo,
  rhsblHelo,
  // auth
  authFailures,
  ratesAuth,
  // mail
  banMailFrom,
  ratesMail,
  rhsblSender,
  senderDomain,
  spf, // with the other DNS checks of MAIL (all concurrent); fills the transaction's SPF result
  // rcpt
  rblsmtpd, // first: a non-empty RBLSMTPD (mxguard stdio) refuses every recipient
  maxRcpts,
  nullSender,
  banRcptTo,
  tarpit,
  ratesRcpt, // before the recipient checks: a client over bad_rcpts is not told which users exist
  rulesFile, // after tarpit, before relay_probe and local_domains: deny and noto apply to local mail too
  relayProbe, // before local_domains: user%victim.test@example.test must not pass as local mail
  recipients,
  recipientCallout, // after recipients.file (no network), before local_domains accepts
  greylist, // after the recipient checks (an unknown user gets its 550, not a 451), before local_domains accepts
  localDomains,
  relay,
  // data: all started at once, under scoring.data_timeout; their verdicts count in this order
  throttle, // first: its hold counts whatever the filters decide
  mfilter,
  filterRules,
  dmarc, // after the local rules (an Mfilter accept is the administrator's word), before the external scanners
  scanners, // last: the local rules' accept or reject is the administrator's word and comes first
];

/** The enabled checks, in registry order, each built from its own settings. */
export function buildChecks(config: Config, store?: Store, dns?: DnsResolver, log?: Logger): AnyCheck[] {
  const deps: CheckDeps = { ...(store ? { store } : {}), ...(dns ? { dns } : {}), ...(log ? { log } : {}) };
  const relayClients = new AddressList(config.relay.forward_from_ip);
  // A session's client is a relay client or not for its whole life: asked once, not per check.
  const known = new WeakMap<SessionInfo, boolean>();
  const isRelayClient = (session: SessionInfo): boolean => {
    let yes = known.get(session);
    if (yes === undefined) known.set(session, (yes = relayClients.has(session.remoteIp)));
    return yes;
  };
  const checks: AnyCheck[] = [];
  for (const m of REGISTRY) {
    const check = build(m, config, deps, isRelayClient);
    if (check) checks.push(check);
  }
  return checks;
}

function build(m: AnyCheckModule, config: Config, deps: CheckDeps, isRelayClient: (session: SessionInfo) => boolean): AnyCheck | undefined {
  if (m.needs?.includes('dns') && deps.dns === undefined) return undefined;
  if (m.needs?.includes('store') && deps.store === undefined) return undefined;
  const settings = m.settings(config);
  if (settings === undefined) return undefined;
  const check = m.create(settings, deps);
  if (check.name !== m.name || check.phase !== m.phase) throw new Error(`check module ${m.name} (${m.phase}) built ${check.name} (${check.phase})`);
  return m.waives === undefined ? check : withWaivers(check, m.waives, isRelayClient);
}

/**
 * The check with its module's waivers: relay clients skip it; `afterAuth` is for the session.
 * On a submission listener (listen: mode submission, submissions), where every sender has
 * authenticated before MAIL, the checks that judge the network (afterAuth: DNSBLs, reverse DNS,
 * HELO) never run, and those waived for relay clients are waived once the user has
 * authenticated (greylisting, SPF, DMARC, the sender domain), but never the volume limits and
 * the throttle; before AUTH the connection rates and the AUTH checks still count.
 */
function withWaivers(check: AnyCheck, waives: Waivers, isRelayClient: (session: SessionInfo) => boolean): AnyCheck {
  const inner = check as Check;
  // Volume limits and the throttle stay on for our users: a stolen password must not send without limit.
  const forUsersToo = check.name.startsWith('rates_') || check.name === 'throttle';
  const waived = (session: SessionInfo): boolean =>
    (waives.relayClients === true && (isRelayClient(session) || (!forUsersToo && isSubmission(session) && session.authUser !== undefined))) || (waives.afterAuth === true && isSubmission(session));
  const run = (ctx: PhaseContexts[Phase]): Verdict | Promise<Verdict> => (waived(ctx.session) ? CONTINUE : inner.run(ctx));
  // A waived client is not counted either (Check.observe).
  const observe = inner.observe && ((e: PolicyEvent) => (waived(e.session) ? undefined : inner.observe?.(e)));
  return { name: check.name, phase: check.phase, ...(check.concurrent ? { concurrent: true } : {}), ...(inner.onError ? { onError: inner.onError } : {}), ...(observe ? { observe } : {}), waives, run } as AnyCheck;
}
