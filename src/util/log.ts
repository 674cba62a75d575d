// One structured logger (pino) for the whole process. Every decision is one line with a `check`
// field; the queue and delivery log with the queue ID under `id`.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, file?: string): Logger {
  const destination = file ? pino.destination({ dest: file, mkdir: true, sync: false }) : pino.destination({ fd: 1, sync: false });
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
}

/** A logger that writes nothing, for unit tests. */
export const silentLogger: Logger = pino({ level: 'silent' });
