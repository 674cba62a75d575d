// DMail's ban lists (settings under ban:): ban.ip refuses clients (at connect; with
// smtp.delay_reject the answer comes at RCPT), ban.mailfrom and ban.rcptto refuse addresses by
// shell-style pattern (`*@aol.com`), ban.mailfrom_regex by regular expression (qmail's qregex /
// badmailfrom, on the linear-time engine of util/regex.ts). Each honours ban.action: reject, tempfail or score.
import { defineCheck, type Check } from '../check.ts';
import { CONTINUE } from '../verdict.ts';
import { findingVerdict, type ActionSetting } from '../action.ts';
import { AddressList } from '../../util/cidr.ts';
import { PatternList } from '../../util/pattern.ts';
import { linearRegex } from '../../util/regex.ts';

export function banIpCheck(ips: readonly string[], spec: ActionSetting): Check<'connect'> {
  const banned = new AddressList(ips);
  return {
    name: 'ban_ip',
    phase: 'connect',
    run: (ctx) => (banned.has(ctx.session.remoteIp) ? findingVerdict('ban_ip', 'ban.ip', spec, 554, '5.7.1', `Client host [${ctx.session.remoteIp}] blocked`) : CONTINUE),
  };
}

export function banMailFromCheck(patterns: readonly string[], regexes: readonly string[], spec: ActionSetting): Check<'mail'> {
  const globs = new PatternList(patterns);
  const res = regexes.map((r) => linearRegex(r, { ignoreCase: true }));
  return {
    name: 'ban_mailfrom',
    phase: 'mail',
    run(ctx) {
      const addr = ctx.mailFrom.address;
      const glob = globs.match(addr);
      if (glob !== undefined) return findingVerdict('ban_mailfrom', 'ban.mailfrom', spec, 550, '5.7.1', `<${addr}>: Sender address rejected: matches ${glob}`);
      const re = res.find((r) => r.test(addr));
      if (re) return findingVerdict('ban_mailfrom', 'ban.mailfrom_regex', spec, 550, '5.7.1', `<${addr}>: Sender address rejected`);
      return CONTINUE;
    },
  };
}

export function banRcptToCheck(patterns: readonly string[], spec: ActionSetting): Check<'rcpt'> {
  const globs = new PatternList(patterns);
  return {
    name: 'ban_rcptto',
    phase: 'rcpt',
    run(ctx) {
      const glob = globs.match(ctx.rcpt.address);
      return glob === undefined ? CONTINUE : findingVerdict('ban_rcptto', 'ban.rcptto', spec, 550, '5.7.1', `<${ctx.rcpt.address}>: Recipient address rejected: matches ${glob}`);
    },
  };
}

export const banIp = defineCheck({
  name: 'ban_ip',
  phase: 'connect',
  settings: ({ ban }) => (ban.ip.length > 0 ? ban : undefined),
  create: (ban) => banIpCheck(ban.ip, ban),
});

export const banMailFrom = defineCheck({
  name: 'ban_mailfrom',
  phase: 'mail',
  settings: ({ ban }) => (ban.mailfrom.length > 0 || ban.mailfrom_regex.length > 0 ? ban : undefined),
  create: (ban) => banMailFromCheck(ban.mailfrom, ban.mailfrom_regex, ban),
});

export const banRcptTo = defineCheck({
  name: 'ban_rcptto',
  phase: 'rcpt',
  settings: ({ ban }) => (ban.rcptto.length > 0 ? ban : undefined),
  create: (ban) => banRcptToCheck(ban.rcptto, ban),
});
