// HELO/EHLO names (seed 001: "reject selected HELO/EHLO names"): most spam bots say localhost,
// our own name, our IP without brackets, or something that is no host name at all. Each test is
// switched on its own under helo:, and all answer with helo.action (reject, tempfail, score).
// Found at EHLO; with smtp.delay_reject (default) the refusal is given at RCPT, so the log shows
// sender and recipient. Clients in relay.forward_from_ip are not checked (Postfix's usual
// permit_mynetworks first): a local script saying HELO with the machine's short name is fine;
// an authenticated client's refusal is waived at RCPT (both declared in `waives` below).
// (helo.required, a client that never said HELO, is protocol: the session answers it at MAIL.)
import net from 'node:net';
import { defineCheck, type Check } from '../check.ts';
import type { Config } from '../../config/schema.ts';
import { CONTINUE } from '../verdict.ts';
import { findingVerdict } from '../action.ts';
import { PatternList } from '../../util/pattern.ts';
import { plainIp } from '../../util/cidr.ts';

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i;
const LOCALHOST = /^(localhost(\.localdomain)?|localhost\..*|localhost6(\.localdomain6)?|ip6-localhost|127\.\d+\.\d+\.\d+|\[127\.\d+\.\d+\.\d+\]|::1|\[ipv6:::1\])$/i;

/** Why a HELO name is refused, or undefined. Pure, for tests. */
export function heloProblem(name: string, s: Config['helo'], ctx: { ourName: string; ourIp: string; clientIp: string }, refused: PatternList): string | undefined {
  const lower = name.toLowerCase().replace(/\.$/, '');
  if (s.reject_localhost && LOCALHOST.test(lower)) return 'localhost is not your name';
  const literal = /^\[(?:ipv6:)?([0-9a-f:.]+)\]$/i.exec(lower)?.[1];
  if (s.reject_our_name && (lower === ctx.ourName.toLowerCase() || lower === ctx.ourIp || literal === ctx.ourIp)) return 'that is our name, not yours';
  if (literal !== undefined) {
    if (s.reject_literal_mismatch && net.isIP(literal) !== 0 && plainIp(literal) !== plainIp(ctx.clientIp)) return `address literal [${literal}] is not your address`;
    return refused.match(lower) !== undefined ? 'refused by helo.reject_names' : undefined;
  }
  if (s.reject_bare_ip && net.isIP(lower) !== 0) return 'an IP address must be in brackets';
  if (s.reject_invalid) {
    if (!lower.includes('.')) return 'need a fully qualified host name';
    if (!lower.split('.').every((l) => LABEL.test(l))) return 'not a valid host name';
  }
  if (refused.match(lower) !== undefined) return 'refused by helo.reject_names';
  return undefined;
}

export interface HeloSettings {
  readonly helo: Config['helo'];
  /** Our own name (`hostname`), which a client must not claim. */
  readonly hostname: string;
}

export function heloCheck(settings: HeloSettings): Check<'helo'> {
  const s = settings.helo;
  const refused = new PatternList(s.reject_names);
  return {
    name: 'helo',
    phase: 'helo',
    run(ctx) {
      const why = heloProblem(ctx.helo, s, { ourName: settings.hostname, ourIp: ctx.session.localIp, clientIp: ctx.session.remoteIp }, refused);
      return why === undefined ? CONTINUE : findingVerdict('helo', 'helo', s, 550, '5.7.1', `<${ctx.helo}>: Helo command rejected: ${why}`);
    },
  };
}

/** Always built: each test is switched on its own under helo:. */
export const helo = defineCheck({
  name: 'helo',
  phase: 'helo',
  waives: { relayClients: true, afterAuth: true },
  settings: (config): HeloSettings => ({ helo: config.helo, hostname: config.hostname }),
  create: (s) => heloCheck(s),
});
