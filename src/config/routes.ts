// What a route's target may be (routes:, src/delivery/routes.ts chooses among them): the
// config validates it here, below the delivery code that uses it.

/** A route's target, as written: smtp://host:port, lmtp://host:port, maildir:DIR (with %d, %u), mx, or smarthost:NAME (smarthosts.NAME). */
export type RouteTarget = string;

/** Is `v` a target mxguard can deliver to? undefined when it is, else why not. */
export function targetError(v: string): string | undefined {
  if (v === 'mx') return undefined;
  const port = /^(smtp|lmtp):\/\/[^/]+:(\d+)$/.exec(v)?.[2];
  if (port !== undefined) return Number(port) >= 1 && Number(port) <= 65535 ? undefined : `"${v}": the port must be 1 to 65535`;
  if (/^maildir:.+/.test(v)) return undefined;
  if (/^smarthost:[A-Za-z0-9_.-]+$/.test(v)) return undefined;
  return `"${v}" is not smtp://host:port, lmtp://host:port, maildir:DIR, mx or smarthost:NAME`;
}

