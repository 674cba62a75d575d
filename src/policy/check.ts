// A check: one small module, one phase, one job. It names itself in every verdict and log line.
// Each check module exports a CheckModule (its name, phase, the slice of the config it reads, the
// clients it waives and a factory); src/policy/index.ts lists them, in order, in one registry.
import type { Phase, RefusalVerdict, Verdict } from './verdict.ts';
import type { PhaseContexts, SessionInfo } from './context.ts';
import type { Address } from '../mail/address.ts';
import type { Config } from '../config/schema.ts';
import type { DnsResolver } from '../dns/resolver.ts';
import type { Store } from '../store/store.ts';
import type { Logger } from '../util/log.ts';

/** Clients a check is not held against: a property of the check, declared in its module. */
export interface Waivers {
  /**
   * Clients in relay.forward_from_ip are not checked (Postfix's permit_mynetworks first): the
   * registry skips the check for them, so the check itself never reads the relay settings.
   */
  readonly relayClients?: boolean;
  /**
   * A refusal this check found before AUTH (held for smtp.delay_reject) is waived at RCPT once
   * the client has authenticated: it judges the network, not the user (Postfix evaluates these
   * after permit_sasl_authenticated).
   */
  readonly afterAuth?: boolean;
}

export interface Check<P extends Phase = Phase> {
  readonly name: string;
  readonly phase: P;
  /**
   * The check only asks (DNS) and changes nothing, so the engine may start it together with the
   * other such checks of its phase, before the checks ahead of it have decided: a phase then waits
   * for one DNS timeout, not one per check. Its verdict still counts in registry order.
   */
  readonly concurrent?: boolean;
  /**
   * What a failure of this DATA check means (it threw, or missed scoring.data_timeout): tempfail
   * (451, the client retries; the default) or accept (the message goes on without its verdict).
   */
  readonly onError?: 'tempfail' | 'accept';
  /** Copied from the check's module by the registry (buildChecks). */
  readonly waives?: Waivers;
  run(ctx: PhaseContexts[P]): Verdict | Promise<Verdict>;
  /**
   * Told what happened after the checks had their say (a message queued, a recipient refused),
   * for checks that count (limits.rates, the throttle). It cannot change the outcome; an error
   * is logged and forgotten.
   */
  observe?(event: PolicyEvent): void | Promise<void>;
}

/** What a check may be told after the fact (Check.observe). */
export type PolicyEvent =
  /** A message was committed to the queue: `size` octets as stored. */
  | { readonly kind: 'accepted'; readonly session: SessionInfo; readonly mailFrom: Address; readonly size: number }
  /** A RCPT was refused (by any check, or a refusal held from an earlier phase). */
  | { readonly kind: 'rcpt_refused'; readonly session: SessionInfo; readonly mailFrom: Address; readonly rcpt: Address; readonly verdict: RefusalVerdict }
  /** A transaction ended without a message queued: refused at MAIL, RCPT or DATA, discarded, or abandoned (RSET, QUIT, disconnect). */
  | { readonly kind: 'not_queued'; readonly session: SessionInfo };

export type AnyCheck = { [P in Phase]: Check<P> }[Phase];

/** The shared services a check may use; each check takes what it needs. */
export interface CheckDeps {
  readonly store?: Store;
  readonly dns?: DnsResolver;
  readonly log?: Logger;
}

/**
 * A check as data. `settings` picks the check's own slice of the config (undefined: the check is
 * not enabled and not built); `create` builds it from that slice alone and the shared services.
 */
export interface CheckModule<S, P extends Phase = Phase> {
  readonly name: string;
  readonly phase: P;
  /** Services without which the check is not built (the DNS checks need a resolver, AUTH throttling the store). */
  readonly needs?: readonly ('dns' | 'store')[];
  readonly waives?: Waivers;
  settings(config: Config): S | undefined;
  create(settings: S, deps: CheckDeps): Check<P>;
}

export type AnyCheckModule = { [P in Phase]: CheckModule<unknown, P> }[Phase];

/** A check module's typed declaration (keeps S and P for its own factory). */
export function defineCheck<S, P extends Phase>(m: CheckModule<S, P>): CheckModule<S, P> {
  return m;
}

/** The resolver of a check that declared `needs: ['dns']` (the registry never builds it without one). */
export function needDns(deps: CheckDeps, check: string): DnsResolver {
  if (deps.dns === undefined) throw new Error(`${check} needs a DNS resolver`);
  return deps.dns;
}
