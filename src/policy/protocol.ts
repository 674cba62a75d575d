// Protocol findings: what the SMTP session saw on the wire (src/smtp/protocol-findings.ts) rather
// than what a check found. Each has a setting under smtp: ignore, reject or score (issue 11:
// "add points when action: score, or refuse as today"); points join the transaction score like
// any tag (PolicySession.finding).
import type { Config } from '../config/schema.ts';
import { findingVerdict } from './action.ts';
import type { Verdict } from './verdict.ts';

export type ProtocolFinding = 'early_talker' | 'non_smtp_command' | 'bare_pipelining';

export type ProtocolSettings = Pick<Config['smtp'], ProtocolFinding | `${ProtocolFinding}_score`>;

/** The refusal of each finding. An early talker is refused like any connect finding (at RCPT with delay_reject); the others end the session (RFC 7504 521, postscreen's drop). */
const REFUSALS: Record<ProtocolFinding, [number, string, string]> = {
  early_talker: [554, '5.5.1', 'Error: protocol error: talked before greeting'],
  non_smtp_command: [521, '5.5.1', 'Error: non-SMTP command, closing connection'],
  bare_pipelining: [521, '5.5.1', 'Error: SMTP protocol synchronization, closing connection'],
};

/** What X-Spam-Warning says of a scored finding. */
const WARNINGS: Record<ProtocolFinding, string> = {
  early_talker: 'talked before greeting',
  non_smtp_command: 'non-SMTP command',
  bare_pipelining: 'commands pipelined without PIPELINING',
};

/** The verdict a finding gets under its setting; undefined for ignore. `detail` goes into the log. */
export function protocolVerdict(finding: ProtocolFinding, s: ProtocolSettings, detail?: string): Verdict | undefined {
  const action = s[finding];
  if (action === 'ignore') return undefined;
  const [code, enhanced, refusal] = REFUSALS[finding];
  const v = findingVerdict(finding, `smtp.${finding}`, { action, score: s[`${finding}_score`] }, code, enhanced, action === 'score' ? WARNINGS[finding] : refusal);
  if (detail === undefined) return v;
  return { ...v, log: `${finding}: ${detail}${v.kind === 'tag' ? ` (scored ${v.score})` : ''}` };
}
