// Builds the ordered check list from the config: the restriction list is data, not code.
import type { Config } from '../config/schema.ts';
import type { AnyCheck } from './check.ts';
import type { Store } from '../store/store.ts';
import { earlyTalkerCheck } from './checks/early_talker.ts';
import { localDomainsCheck } from './checks/local_domains.ts';
import { maxRcptsCheck } from './checks/max_rcpts.ts';
import { relayCheck } from './checks/relay.ts';
import { tarpitCheck } from './checks/tarpit.ts';
import { relayProbeCheck, relayRulesAllow } from './checks/relay_probe.ts';
import { banIpCheck, banMailFromCheck, banRcptToCheck } from './checks/ban.ts';
import { heloCheck } from './checks/helo.ts';
import { nullSenderCheck, recipientsCheck } from './checks/recipients.ts';

export function buildChecks(config: Config, store?: Store): AnyCheck[] {
  const checks: AnyCheck[] = [];
  if (config.smtp.early_talker === 'reject') checks.push(earlyTalkerCheck());
  const ban = config.ban;
  if (ban.ip.length > 0) checks.push(banIpCheck(ban.ip, ban));
  checks.push(heloCheck(config));
  if (ban.mailfrom.length > 0 || ban.mailfrom_regex.length > 0) checks.push(banMailFromCheck(ban.mailfrom, ban.mailfrom_regex, ban));
  checks.push(maxRcptsCheck(config.limits.max_rcpts));
  checks.push(nullSenderCheck(config.mail_from.null_sender_max_rcpts));
  if (ban.rcptto.length > 0) checks.push(banRcptToCheck(ban.rcptto, ban));
  if (config.limits.tarpit_start > 0) checks.push(tarpitCheck(config.limits.tarpit_start, config.limits.tarpit_delay, config.limits.tarpit_except));
  const relay = relayCheck(config.relay, store, config.store.fail_open);
  // Before local_domains: user%victim.test@example.test must not pass as local mail.
  checks.push(relayProbeCheck(config.local_domains, [], relayRulesAllow(relay)));
  if (config.recipients.file !== undefined) checks.push(recipientsCheck(config.recipients.file, config.local_domains));
  checks.push(localDomainsCheck(config.local_domains));
  checks.push(relay);
  return checks;
}
