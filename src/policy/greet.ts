// The selective greet delay (issue 11; Postfix postscreen's pregreet test, without its weakness):
// with smtp.greet_delay_for: suspicious only a client we have no reason to trust is made to wait
// for the banner, and one that waited without talking is remembered in the Store for
// smtp.greet_pass_ttl, so a good client pays once a day. Everything happens in the one
// connection: unlike postscreen, a client that passes is never asked to reconnect.
import type { ForwardConfirmedResult } from '../dns/resolver.ts';

export type GreetFor = 'all' | 'suspicious';

/** What is known of the client when the banner is due. */
export interface GreetFacts {
  /** In relay.forward_from_ip. */
  readonly relayClient: boolean;
  /** Passed the pregreet test within greet_pass_ttl (the Store said so). */
  readonly remembered: boolean;
  /** Its forward-confirmed reverse DNS; undefined when there was no resolver to ask. */
  readonly rdns: ForwardConfirmedResult['kind'] | undefined;
  /** The points the connect-phase checks gave it (DNSBL, ban.ip, rdns with action score). */
  readonly score: number;
}

/** Whether the client waits for its banner, and why (for the log and the trace). */
export interface GreetPlan {
  readonly wait: boolean;
  readonly why: string;
}

/**
 * The decision. `all` keeps the old behaviour (every client, every connection); `suspicious`
 * spares relay clients and remembered ones, and makes wait a client with points or without a
 * forward-confirmed reverse DNS (a DNS failure counts as not confirmed: the wait is the safe side).
 */
export function greetPlan(mode: GreetFor, facts: GreetFacts): GreetPlan {
  if (mode === 'all') return { wait: true, why: 'greet_delay_for: all' };
  if (facts.relayClient) return { wait: false, why: 'relay client' };
  if (facts.remembered) return { wait: false, why: 'passed before' };
  if (facts.score > 0) return { wait: true, why: `score ${facts.score}` };
  if (facts.rdns !== 'confirmed') return { wait: true, why: `reverse DNS ${facts.rdns ?? 'not looked up'}` };
  return { wait: false, why: 'forward-confirmed reverse DNS' };
}

/** The Store key of a client that passed (per address, as postscreen's cache). */
export function greetPassKey(ip: string): string {
  return `greet:${ip}`;
}
