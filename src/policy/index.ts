// Builds the ordered check list from the config: the restriction list is data, not code.
import type { Config } from '../config/schema.ts';
import type { AnyCheck } from './check.ts';
import type { Store } from '../store/store.ts';
import { earlyTalkerCheck } from './checks/early_talker.ts';
import { localDomainsCheck } from './checks/local_domains.ts';
import { maxRcptsCheck } from './checks/max_rcpts.ts';
import { relayCheck } from './checks/relay.ts';
import { tarpitCheck } from './checks/tarpit.ts';

export function buildChecks(config: Config, store?: Store): AnyCheck[] {
  const checks: AnyCheck[] = [];
  if (config.smtp.early_talker === 'reject') checks.push(earlyTalkerCheck());
  checks.push(maxRcptsCheck(config.limits.max_rcpts));
  if (config.limits.tarpit_start > 0) checks.push(tarpitCheck(config.limits.tarpit_start, config.limits.tarpit_delay, config.limits.tarpit_except));
  checks.push(localDomainsCheck(config.local_domains));
  checks.push(relayCheck(config.relay, store, config.store.fail_open));
  return checks;
}
