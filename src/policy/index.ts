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
import { recipientCalloutCheck } from './checks/recipient_callout.ts';
import type { Logger } from '../util/log.ts';
import fs from 'node:fs';
import { parseRulesFile } from '../config/rules-file.ts';
import { rulesCheck } from './rules/check.ts';
import { dnsRuleLookups } from './rules/lookups.ts';
import type { DnsResolver } from '../dns/resolver.ts';
import { dnsblCheck, rhsblHeloCheck, rhsblSenderCheck } from './checks/dnsbl.ts';
import { senderDomainCheck } from './checks/sender_domain.ts';
import { rdnsCheck } from './checks/rdns.ts';
import { rblsmtpdCheck } from './checks/rblsmtpd.ts';
import { identLookup } from './ident.ts';
import type { SessionInfo } from './context.ts';

export function buildChecks(config: Config, store?: Store, dns?: DnsResolver, log?: Logger): AnyCheck[] {
  const checks: AnyCheck[] = [];
  if (config.smtp.early_talker === 'reject') checks.push(earlyTalkerCheck());
  const ban = config.ban;
  if (ban.ip.length > 0) checks.push(banIpCheck(ban.ip, ban));
  // After ban_ip (a banned client costs no query); the refusal waits for RCPT (smtp.delay_reject).
  if (dns && config.dnsbl.zones.length > 0) checks.push(dnsblCheck(config.dnsbl, dns));
  if (config.rdns.require !== 'off' && dns) checks.push(rdnsCheck(config, dns));
  checks.push(heloCheck(config));
  if (dns && config.dnsbl.rhsbl_helo.length > 0) checks.push(rhsblHeloCheck(config.dnsbl, dns));
  if (ban.mailfrom.length > 0 || ban.mailfrom_regex.length > 0) checks.push(banMailFromCheck(ban.mailfrom, ban.mailfrom_regex, ban));
  if (dns && config.dnsbl.rhsbl_sender.length > 0) checks.push(rhsblSenderCheck(config.dnsbl, dns));
  if (config.mail_from.require_domain && dns) checks.push(senderDomainCheck(config, dns));
  // First at RCPT: a non-empty RBLSMTPD (mxguard stdio) refuses every recipient.
  checks.push(rblsmtpdCheck());
  checks.push(maxRcptsCheck(config.limits.max_rcpts));
  checks.push(nullSenderCheck(config.mail_from.null_sender_max_rcpts));
  if (ban.rcptto.length > 0) checks.push(banRcptToCheck(ban.rcptto, ban));
  if (config.limits.tarpit_start > 0) checks.push(tarpitCheck(config.limits.tarpit_start, config.limits.tarpit_delay, config.limits.tarpit_except));
  if (config.rules_file !== undefined && dns) {
    // Read again here (the loader validated it): SIGHUP picks up an edited rules file.
    const { rules } = parseRulesFile(fs.readFileSync(config.rules_file, 'utf8'), config.rules_file);
    // After tarpit, before relay_probe and local_domains: deny and noto apply to local mail too.
    const ident = config.ident ? (s: SessionInfo) => identLookup(s, { port: config.ident_port, timeoutMs: config.ident_timeout }) : undefined;
    checks.push(rulesCheck(rules, dnsRuleLookups(dns), { notoDelayMs: config.noto_delay, file: config.rules_file, ...(ident ? { ident } : {}) }));
  }
  const relay = relayCheck(config.relay, store, config.store.fail_open);
  // Before local_domains: user%victim.test@example.test must not pass as local mail.
  checks.push(relayProbeCheck(config.local_domains, [], relayRulesAllow(relay)));
  if (config.recipients.file !== undefined) checks.push(recipientsCheck(config.recipients.file, config.local_domains));
  // After recipients.file (no network), before local_domains accepts. The store only caches here.
  if (config.recipients.callout !== undefined) checks.push(recipientCalloutCheck(config, { store, log }));
  checks.push(localDomainsCheck(config.local_domains));
  checks.push(relay);
  return checks;
}
