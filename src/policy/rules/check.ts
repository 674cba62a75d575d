// rules_file (seed 004): the Obtuse smtpd rules file, checked at RCPT for each recipient as
// smtpd did (smtpd_addr_check() ran per RCPT with the client, MAIL FROM and RCPT TO).
//
//   allow → continue. In smtpd an allow rule answered the recipient "250" — but so did reaching
//           the end of the file without a match (address_check.c returns CHECK_FAILURE, "allow",
//           unless built with CHECK_ADDRESS_DENY_ON_FAILURE): smtpd had no other relay control,
//           the rules file was all of it and smtpd was an open relay without one. So an allow
//           rule never granted more than "no rule objected"; its only effect was to stop the
//           rules below it. Here "no rule objected" is `continue`, so allow is `continue` too:
//           it shields the recipient from later deny/noto lines, and local_domains and the relay
//           rules still decide. An `allow:ALL:ALL:ALL` line therefore cannot open the relay;
//           a network that may relay goes in relay.forward_from_ip as well.
//   deny  → the rule's reply, then the session is closed (smtpd: the reply, then
//           smtp_exit(EX_PROTOCOL), which sends "421 Service not available, closing
//           transmission channel" and hangs up). The verdict carries `closeSession: true`.
//   noto  → the rule's reply for this recipient; the session goes on (smtpd: state_change(RCPT,
//           ERROR), "Discarded bad recipient").
// deny and noto are held back `noto_delay` first (the verdict's delayMs; the session holds the
// reply that long). The log line is smtpd's syslog line, naming the rule's line and file.
import fs from 'node:fs';
import { defineCheck, needDns, type Check } from '../check.ts';
import type { Config } from '../../config/schema.ts';
import { parseRulesFile } from '../../config/rules-file.ts';
import { dnsRuleLookups } from './lookups.ts';
import { identLookup } from '../ident.ts';
import type { SessionInfo } from '../context.ts';
import { CONTINUE, reject, type RefusalVerdict, type Verdict } from '../verdict.ts';
import type { Rule } from '../../config/rules-file.ts';
import { matchRules, rulesNeed, type RuleLookups } from './match.ts';

export interface RulesCheckOptions {
  /** noto_delay: hold deny and noto replies back this long (0: answer at once). */
  notoDelayMs: number;
  /** The rules file, for the log lines. */
  file: string;
  /**
   * `ident: true`: an RFC 1413 lookup of the client's user. Called at most once per session and
   * only when a rule can use the answer (user@host sources, USER@…, %U); failures count as no user.
   */
  ident?: (session: SessionInfo) => Promise<string | undefined>;
}

/** A refusal that may close the session (`closeSession`, for deny). */
export type ClosingRefusal = RefusalVerdict;

export const RULES_CHECK = 'rules_file';

export function rulesCheck(rules: readonly Rule[], lookups: RuleLookups, opts: RulesCheckOptions): Check<'rcpt'> {
  const needs = rulesNeed(rules);
  if (needs.rbl && !lookups.rbl) {
    const line = rules.find((r) => rulesNeed([r]).rbl)?.line;
    throw new Error(`${opts.file}${line ? `:${line}` : ''}: an RBL.zone entry needs a DNS blocklist lookup and none is configured`);
  }
  const identAnswers = new WeakMap<SessionInfo, Promise<string | undefined>>();
  const identOf = (session: SessionInfo): Promise<string | undefined> => {
    const ident = opts.ident;
    if (!needs.ident || !ident) return Promise.resolve(undefined);
    let answer = identAnswers.get(session);
    if (!answer) {
      answer = ident(session).then(
        (u) => u || undefined,
        () => undefined,
      );
      identAnswers.set(session, answer);
    }
    return answer;
  };

  return {
    name: RULES_CHECK,
    phase: 'rcpt',
    async run(ctx): Promise<Verdict> {
      const session = ctx.session;
      const identUser = await identOf(session);
      const from = ctx.tx.mailFrom.address;
      const to = ctx.rcpt.address;
      const decision = await matchRules(
        rules,
        {
          ip: session.remoteIp,
          ...(session.clientHostname !== undefined ? { hostname: session.clientHostname } : {}),
          ...(identUser !== undefined ? { identUser } : {}),
          from,
          to,
        },
        lookups,
      );
      if (!decision) return CONTINUE;

      const who = `smtp connection from ${identUser ?? 'UNKNOWN'}@${decision.hostname ?? 'UNKNOWN'}(${session.remoteIp})`;
      const where = `line ${decision.line} of ${opts.file}`;
      if (decision.action === 'allow') {
        return { kind: 'continue', check: RULES_CHECK, log: `${who} MAIL FROM: <${from}> RCPT TO: <${to}>, allowed by ${where}` };
      }

      const reply = decision.reply ?? { code: 550, enhanced: '5.7.1', text: 'Recipient not allowed' };
      const verb = decision.action === 'deny' ? 'denied' : 'noto';
      const verdict: ClosingRefusal = {
        ...reject(RULES_CHECK, reply.code, reply.enhanced, reply.text, `${RULES_CHECK} line ${decision.line}`),
        log: `${who} attempted MAIL FROM: <${from}> RCPT TO: <${to}>, ${verb} by ${where}`,
      };
      if (opts.notoDelayMs > 0) verdict.delayMs = opts.notoDelayMs;
      if (decision.action === 'deny') verdict.closeSession = true;
      return verdict;
    },
  };
}

export type RulesFileSettings = Pick<Config, 'noto_delay' | 'ident' | 'ident_port' | 'ident_timeout'> & { readonly rules_file: string };

/** After tarpit, before relay_probe and local_domains: deny and noto apply to local mail too. */
export const rulesFile = defineCheck({
  name: RULES_CHECK,
  phase: 'rcpt',
  needs: ['dns'],
  settings: (config): RulesFileSettings | undefined =>
    config.rules_file === undefined
      ? undefined
      : { rules_file: config.rules_file, noto_delay: config.noto_delay, ident: config.ident, ident_port: config.ident_port, ident_timeout: config.ident_timeout },
  create(s, deps) {
    // Read again here (the loader validated it): SIGHUP picks up an edited rules file.
    const { rules } = parseRulesFile(fs.readFileSync(s.rules_file, 'utf8'), s.rules_file);
    const ident = s.ident ? (session: SessionInfo) => identLookup(session, { port: s.ident_port, timeoutMs: s.ident_timeout }) : undefined;
    return rulesCheck(rules, dnsRuleLookups(needDns(deps, RULES_CHECK)), { notoDelayMs: s.noto_delay, file: s.rules_file, ...(ident ? { ident } : {}) });
  },
});
