// The policy model (DESIGN.md): every check returns a Verdict; the first final verdict of a
// phase wins, `tag` adds score and headers and lets the phase go on. Any verdict may ask that
// the reply be held back (`delayMs`, the tarpit); the delays of a phase add up.

export type Phase = 'connect' | 'helo' | 'auth' | 'mail' | 'rcpt' | 'data';

/** One contribution to the transaction score, under the name X-Spam-Status tests= shows. */
export interface TestHit {
  readonly name: string;
  readonly score: number;
}

export type Verdict = (
  | { kind: 'continue'; check?: string; log?: string }
  | { kind: 'accept'; check: string; log?: string }
  | {
      kind: 'reject' | 'tempfail';
      check: string;
      code: number;
      enhanced: string;
      text: string;
      setting?: string;
      log?: string;
      closeSession?: true;
      /** A RCPT refusal answered to DATA instead (the recipient is accepted): greylisting the null sender lets callouts through. */
      atData?: true;
      /** The store record the refusal is about (greylisting's key), so the history can release exactly it. */
      key?: string;
    }
  | {
      kind: 'tag';
      check: string;
      score: number;
      headers?: string[];
      /** Incoming header fields to drop (lower-case names): a DATA check may remove what it distrusts. */
      removeHeaders?: string[];
      /** The points by rule, for X-Spam-Status tests= (a filter file scores many rules); default: [check, score]. */
      tests?: readonly TestHit[];
      log?: string;
    }
  | { kind: 'discard'; check: string; log?: string }
) & { delayMs?: number };

export type FinalVerdict = Exclude<Verdict, { kind: 'continue' } | { kind: 'tag' }>;
export type RefusalVerdict = Extract<Verdict, { kind: 'reject' | 'tempfail' }>;

export const CONTINUE: Verdict = { kind: 'continue' };

export function reject(check: string, code: number, enhanced: string, text: string, setting?: string): RefusalVerdict {
  return { kind: code >= 500 ? 'reject' : 'tempfail', check, code, enhanced, text, setting };
}

/** The reply line for a refusal: "554 5.7.1 Relay access denied". */
export function refusalReply(v: RefusalVerdict): string {
  return `${v.code} ${v.enhanced} ${v.text}`;
}
