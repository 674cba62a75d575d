// Volume limits (limits.rates, DMail's fromip_max): the rules as data and the small pure parts
// of them: which keys make sense for which counts, the store key of a rule for one client or
// sender, the rule DMail's names stand for, and the reply that names the limit. The counting
// itself is src/policy/rates/check.ts; the store keeps each count as a sliding-window estimate
// (Store.rateAdd).
import { clientNetwork } from '../../util/cidr.ts';

import { FROMIP_MAX, type RateAction, type RateCount, type RateKey } from '../../config/rates.ts';

export interface RateRule {
  readonly name: string;
  readonly key: RateKey;
  readonly count: RateCount;
  readonly max: number;
  /** The window, ms. */
  readonly per: number;
  readonly action: RateAction;
  /** Points, for action score. */
  readonly score: number;
  /** How long each reply is held, for action tarpit. */
  readonly delay: number;
  /** Clients (CIDRs) the rule is not held against. */
  readonly except: readonly string[];
}

/** The facts a key is made of; each is there when its phase has it. */
export interface KeyFacts {
  readonly ip: string;
  readonly helo?: string | undefined;
  readonly authUser?: string | undefined;
  /** The sender address ('' for the null sender) and its domain. */
  readonly sender?: string | undefined;
  readonly senderDomain?: string | undefined;
  readonly rcpt?: string | undefined;
}

/**
 * The store key of a rule for these facts, or undefined when the rule does not apply (no such
 * fact: an unauthenticated client has no auth_user; the null sender has no sender to count by).
 * The rule's name is part of it, so two rules never share a count.
 */
export function rateKey(rule: Pick<RateRule, 'name' | 'key'>, f: KeyFacts): string | undefined {
  const v = keyValue(rule.key, f);
  return v === undefined || v === '' ? undefined : `rate:${rule.name}:${v}`;
}

function keyValue(key: RateKey, f: KeyFacts): string | undefined {
  switch (key) {
    case 'client_ip':
      return f.ip;
    case 'client_net':
      return clientNetwork(f.ip) ?? f.ip;
    case 'sender':
      return f.sender?.toLowerCase();
    case 'sender_domain':
      return f.senderDomain?.toLowerCase();
    case 'rcpt':
      return f.rcpt?.toLowerCase();
    case 'auth_user':
      return f.authUser;
    case 'helo':
      return f.helo?.toLowerCase();
  }
}

/** The rules in force: limits.rates, and limits.fromip_max (when not 0) as the rule DMail meant. */
export function rateRules(limits: { readonly rates: readonly RateRule[]; readonly fromip_max: number; readonly fromip_nolimit: readonly string[] }): RateRule[] {
  const rules = [...limits.rates];
  if (limits.fromip_max > 0) {
    rules.push({ name: FROMIP_MAX, key: 'client_ip', count: 'messages', max: limits.fromip_max, per: 3_600_000, action: 'tempfail', score: 0, delay: 0, except: limits.fromip_nolimit });
  }
  return rules;
}

/** "1h", "90s", "2d": a window as people write it. */
export function windowText(ms: number): string {
  for (const [unit, n] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms >= n && ms % n === 0) return `${ms / n}${unit}`;
  }
  return `${ms}ms`;
}

const KEY_TEXT: Record<RateKey, string> = {
  client_ip: 'client address',
  client_net: 'client network',
  sender: 'sender',
  sender_domain: 'sender domain',
  rcpt: 'recipient',
  auth_user: 'user',
  helo: 'HELO name',
};

/**
 * The refusal text: which limit, and when to come back. The count is an estimate over a sliding
 * window; after one window at most the old traffic has left it, so that is the time given.
 */
export function limitText(rule: RateRule): string {
  const seconds = Math.ceil(rule.per / 1000);
  return `Rate limit ${rule.name} reached (${rule.max} ${rule.count.replace('_', ' ')} per ${windowText(rule.per)} per ${KEY_TEXT[rule.key]}), try again in ${seconds} seconds`;
}
