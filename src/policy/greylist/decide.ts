// The greylisting decision for one triplet (issue 11), pure: the record the Store keeps, the time
// now, the settings → pass, or defer and for how long, and the record to write back. No timer,
// no clock of its own: the caller gives `now` (util/clock.ts in the check, any instant in tests).
//
// A grey record is born at the first attempt. A retry after `delay` and within `retry_window`
// of the first attempt passes; it then stays white until `expire` after its last use. A retry
// after the window has closed starts over: it never passes (the qpsmtpd#172 class of bug).

export interface GreySettings {
  /** Seconds a new triplet waits before a retry may pass (postgrey: 300). */
  readonly delay: number;
  /** Seconds after the first attempt within which the retry must come (postgrey: 2 days). */
  readonly retryWindow: number;
  /** Seconds a passed triplet stays white after its last use (postgrey: 35 days). */
  readonly expire: number;
}

/** What the Store keeps per triplet, in seconds since the epoch. */
export interface GreyRecord {
  /** The first attempt of the current grey period. */
  readonly first: number;
  /** When the triplet last passed (it is white since), or undefined while it is grey. */
  readonly passed?: number;
  /** Retries after the delay that were still refused (a suspicious client must retry more than once). */
  readonly tries?: number;
}

export type GreyDecision =
  | { readonly kind: 'pass'; readonly record: GreyRecord; /** Seconds the message was held up (0 once white). */ readonly delayed: number }
  | { readonly kind: 'defer'; readonly record: GreyRecord; /** Seconds until a retry may pass. */ readonly retryIn: number };

/**
 * `retries`: how many retries after the delay it takes to pass (Greylite: more for a more
 * suspicious client); each refused one must again wait `delay`. Default one.
 */
export function decide(record: GreyRecord | undefined, now: number, s: GreySettings, retries = 1): GreyDecision {
  if (record?.passed !== undefined && now - record.passed <= s.expire) {
    return { kind: 'pass', record: { first: record.first, passed: now }, delayed: 0 };
  }
  // No record, a white one that expired, or a grey one whose retry window closed: start over.
  if (record === undefined || record.passed !== undefined || now - record.first > s.retryWindow) {
    return { kind: 'defer', record: { first: now }, retryIn: s.delay };
  }
  const waited = now - record.first;
  const tries = record.tries ?? 0;
  // The n-th retry may pass from n delays after the first attempt on (and not before).
  const due = s.delay * (tries + 1);
  if (waited < due) return { kind: 'defer', record, retryIn: due - waited };
  if (tries + 1 < retries) return { kind: 'defer', record: { first: record.first, tries: tries + 1 }, retryIn: s.delay };
  return { kind: 'pass', record: { first: record.first, passed: now }, delayed: waited };
}
