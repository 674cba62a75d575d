// The sliding-window estimate both stores share (Store.rateAdd): the count of the current fixed
// window plus the previous window's count weighted by how much of it the sliding window still
// covers. Pure arithmetic, so the SQLite store and the Redis script reckon alike.

/** The fixed window `now` falls in. */
export function rateBucket(now: number, windowMs: number): number {
  return Math.floor(now / windowMs);
}

/**
 * The estimate at `now` from a stored pair: `cur` counted in window `bucket`, `prev` in the one
 * before. A bucket ahead of ours (another host's clock runs fast) counts as the current one.
 */
export function rateEstimate(now: number, windowMs: number, bucket: number, prev: number, cur: number): number {
  const b = rateBucket(now, windowMs);
  if (bucket >= b) {
    const elapsed = Math.min(1, Math.max(0, (now - bucket * windowMs) / windowMs));
    return prev * (1 - elapsed) + cur;
  }
  if (bucket === b - 1) return cur * (1 - (now - b * windowMs) / windowMs);
  return 0;
}
