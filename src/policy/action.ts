// The seeds' central question, "reject or tag?", answered per check by its settings:
// `action: reject | tempfail | score`. One helper turns a finding into the verdict that asks for.
import type { Verdict } from './verdict.ts';

export type CheckAction = 'reject' | 'tempfail' | 'score';

export interface ActionSetting {
  readonly action: CheckAction;
  /** Points added when action is score (and reported in X-Spam-Warning). */
  readonly score: number;
}

/**
 * A finding → reject (5xx), tempfail (4xx, same enhanced class) or a tag that adds score and an
 * `X-Spam-Warning` header (seed 002's "tag instead of reject").
 */
export function findingVerdict(check: string, setting: string, spec: ActionSetting, code: number, enhanced: string, text: string, tempCode = 450): Verdict {
  if (spec.action === 'score') {
    const clean = text.replace(/[\r\n]+/g, ' ');
    return { kind: 'tag', check, score: spec.score, headers: [`X-Spam-Warning: ${check}: ${clean}\r\n`], log: `${check}: ${clean} (scored ${spec.score})` };
  }
  if (spec.action === 'tempfail') return { kind: 'tempfail', check, code: tempCode, enhanced: '4' + enhanced.slice(1), text, setting };
  return { kind: 'reject', check, code, enhanced, text, setting };
}
