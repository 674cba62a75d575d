// What SIGHUP does to a long-running command (`mxguard start`, `mxguard policy`) besides
// reopening its log: read the config file again and apply it, or keep the running one.
import { loadConfigFile } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../util/log.ts';

/**
 * Reads `file` again and hands it to `apply`, which may throw to refuse it; a file that does not
 * load, or that `apply` refuses, is logged and the running configuration stays.
 */
export function readConfigAgain(file: string | undefined, log: Logger, apply: (next: Config) => void): void {
  if (!file) {
    log.info('SIGHUP: no config file to reload');
    return;
  }
  loadConfigFile(file).then(
    ({ config: next, warnings }) => {
      for (const w of warnings) log.warn({ file: w.file, line: w.line, key: w.key }, w.message);
      try {
        apply(next);
      } catch (err) {
        log.error({ err: (err as Error).message }, 'reload failed; keeping the running configuration');
      }
    },
    (err: Error) => log.error({ err: err.message }, 'reload failed; keeping the running configuration'),
  );
}
