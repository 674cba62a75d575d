// One structured logger (pino) for the whole process. Every decision is one line with a `check`
// field; the queue and delivery log with the queue ID under `id`.
import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Logs to `file`, else to file descriptor `fd` (standard output by default). `sync` writes each
 * line at once (for short-lived processes); `fields` go into every line.
 */
export function createLogger(level: string, file?: string, opts: { fd?: number; sync?: boolean; fields?: Record<string, unknown> } = {}): Logger {
  const sync = opts.sync ?? false;
  const destination = file ? pino.destination({ dest: file, mkdir: true, sync }) : pino.destination({ fd: opts.fd ?? 1, sync });
  return pino({ level, base: { pid: process.pid, ...opts.fields }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
}

/** A logger that writes nothing, for unit tests. */
export const silentLogger: Logger = pino({ level: 'silent' });
