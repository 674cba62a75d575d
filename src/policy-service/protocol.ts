// Postfix's policy delegation protocol (SMTPD_POLICY_README): the client sends name=value lines,
// an empty line ends a request; the server answers "action=…" and an empty line; many requests
// per connection. Everything here comes from the network: lines, attributes and requests are
// bounded, and a request that breaks the rules is an error the server answers and closes on.

/** Longest attribute line taken, octets without the LF (Postfix's own lines are far shorter). */
export const MAX_LINE = 8192;
/** Attributes in one request at most (Postfix 3.x sends about 40). */
export const MAX_ATTRIBUTES = 128;
/** Octets in one request at most, its lines together (Postfix sends about 2 KiB). */
export const MAX_REQUEST = 64 * 1024;

/** One request: its attributes by name (a name given twice keeps its last value). */
export type PolicyRequest = ReadonlyMap<string, string>;

export type ReadResult = { kind: 'request'; request: PolicyRequest } | { kind: 'error'; error: string };

const NAME = /^[A-Za-z0-9_.-]{1,64}$/;

/**
 * Splits a byte stream into requests. feed() returns the requests completed by the chunk, in
 * order; after an error nothing more is read (the stream cannot be trusted: close it).
 */
export class PolicyRequestReader {
  private partial: Buffer[] = [];
  private partialLength = 0;
  private attrs = new Map<string, string>();
  /** Octets of the request being read so far. */
  private requestLength = 0;
  private failed = false;

  feed(chunk: Buffer): ReadResult[] {
    const out: ReadResult[] = [];
    if (this.failed) return out;
    let start = 0;
    for (;;) {
      const lf = chunk.indexOf(10, start);
      if (lf === -1) {
        const rest = chunk.subarray(start);
        this.partialLength += rest.length;
        if (this.partialLength > MAX_LINE) return this.fail(out, `line longer than ${MAX_LINE} octets`);
        if (this.requestLength + this.partialLength > MAX_REQUEST) return this.fail(out, `request longer than ${MAX_REQUEST} octets`);
        if (rest.length > 0) this.partial.push(Buffer.from(rest));
        return out;
      }
      let line = chunk.subarray(start, lf);
      start = lf + 1;
      if (this.partial.length > 0) {
        line = Buffer.concat([...this.partial, line]);
        this.partial = [];
      }
      this.partialLength = 0;
      if (line.length > MAX_LINE) return this.fail(out, `line longer than ${MAX_LINE} octets`);
      this.requestLength += line.length + 1;
      if (this.requestLength > MAX_REQUEST) return this.fail(out, `request longer than ${MAX_REQUEST} octets`);
      const text = line.toString('utf8').replace(/\r$/, '');
      if (text === '') {
        // An empty line before any attribute is a stray newline, not a request.
        if (this.attrs.size > 0) {
          out.push({ kind: 'request', request: this.attrs });
          this.attrs = new Map();
        }
        this.requestLength = 0;
        continue;
      }
      const eq = text.indexOf('=');
      const name = eq > 0 ? text.slice(0, eq) : '';
      if (!NAME.test(name)) return this.fail(out, `not a name=value line: ${JSON.stringify(text.slice(0, 60))}`);
      if (!this.attrs.has(name) && this.attrs.size >= MAX_ATTRIBUTES) return this.fail(out, `more than ${MAX_ATTRIBUTES} attributes in one request`);
      this.attrs.set(name, text.slice(eq + 1));
    }
  }

  private fail(out: ReadResult[], error: string): ReadResult[] {
    this.failed = true;
    this.partial = [];
    this.attrs = new Map();
    out.push({ kind: 'error', error });
    return out;
  }
}

/** What the server answers when it cannot judge: Postfix defers the mail unless a later restriction refuses it. */
export const TEMPORARY_FAILURE = 'DEFER_IF_PERMIT Service temporarily unavailable';

/** The reply octets for one action: "action=…" and the empty line, the action on one bounded line. */
export function actionReply(action: string): string {
  const clean = action.replace(/[\r\n\0]+/g, ' ').slice(0, 500);
  return `action=${clean}\n\n`;
}

/**
 * The action for an SMTP reply mxguard would give: a greylisting deferral is postgrey's
 * DEFER_IF_PERMIT (a later restriction may still refuse for good), any other refusal is its own
 * reply ("550 5.7.1 text", which Postfix sends as it is).
 */
export function refusalAction(reply: string, greylisted: boolean): string {
  if (greylisted && reply.startsWith('4')) return `DEFER_IF_PERMIT ${reply.replace(/^\d{3} (\d\.\d{1,3}\.\d{1,3} )?/, '')}`;
  return reply;
}

/**
 * How long to hold a reply the checks asked to hold `delayMs` (the tarpit) when judging took
 * `elapsedMs` already: the whole answer stays within `maxDelayMs` (under Postfix's timeout).
 */
export function tarpitWait(delayMs: number, maxDelayMs: number, elapsedMs: number): number {
  return Math.max(0, Math.min(delayMs, maxDelayMs - elapsedMs));
}

/** A header field to PREPEND: one line, folded lines joined (Postfix takes "Name: value"). */
export function prependAction(header: string): string {
  return `PREPEND ${header.replace(/\r?\n[ \t]+/g, ' ').replace(/\r?\n$/, '')}`;
}
