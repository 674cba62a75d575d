// External content scanners (filters.scanners, issue 12): a program run on each message (exec),
// SpamAssassin's spamd, rspamd, clamd. Each scanner is one module here that turns a message and
// its envelope into a ScanResult; src/policy/scanners/check.ts runs the configured ones together
// at the end of DATA, each under its own timeout and size limit, and maps what each says, or its
// failure (its on_error, written out in the config), into one verdict.
import type { MessageView, SessionInfo, TransactionInfo } from '../context.ts';
import type { TestHit } from '../verdict.ts';

/** What a scanner is given: the stored message (our Received first), the envelope and the client. */
export interface ScanInput {
  readonly message: MessageView;
  readonly session: SessionInfo;
  readonly tx: TransactionInfo;
  /** Aborted at the scanner's timeout or scoring.data_timeout: stop, close sockets, kill the program. */
  readonly signal: AbortSignal;
}

export type ScanResult =
  /**
   * Let it through, with points (by rule: X-Spam-Status tests=) and header fields to add (each
   * ending CRLF); `warn`, when set, is logged at warn (something the scanner asked for was not done).
   */
  | { readonly kind: 'accept'; readonly tests?: readonly TestHit[]; readonly headers?: readonly string[]; readonly removeHeaders?: readonly string[]; readonly log?: string; readonly warn?: string }
  /** Refuse: 5xx (a virus, an explicit reject) or 4xx (the scanner asks the client to come back). */
  | { readonly kind: 'reject' | 'tempfail'; readonly code: number; readonly enhanced: string; readonly text: string; readonly log?: string };

export interface Scanner {
  scan(input: ScanInput): Promise<ScanResult>;
}

/** The stored message as one stream of chunks (for a socket or a program's standard input). */
export async function* messageChunks(message: MessageView): AsyncIterable<Buffer> {
  yield* message.read(0);
}
