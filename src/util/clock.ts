// The process-wide clock for expiry arithmetic: the time that windows, TTLs and "is it still
// valid?" comparisons are made against (store rows, POP-before-SMTP logins, callout answers,
// the DNS cache). It is the wall clock (epoch ms, so it can be stored and compared with stored
// timestamps) plus an offset that only tests move: advanceClock() lets a test see something
// expire without sleeping. Timers (delays, tarpits, timeouts), log timestamps and queue IDs stay
// on real time and do not use it. mxguard run as a child process has its own clock, which a test
// cannot move; nor does Redis follow it (it expires keys itself).

let offsetMs = 0;

export const clock = {
  /** Epoch milliseconds, as Date.now(), moved forward by advanceClock(). */
  now(): number {
    return Date.now() + offsetMs;
  },
};

/** Tests only: moves the clock forward by `ms` (never back: time that passed stays passed). */
export function advanceClock(ms: number): void {
  if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`advanceClock: ${ms} is not a time to move forward by`);
  offsetMs += ms;
}

/** Tests only: back to the real time, for the next test (what was stored meanwhile is then in the future). */
export function resetClock(): void {
  offsetMs = 0;
}
