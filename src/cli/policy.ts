// `mxguard policy` (issue 14): only the Postfix policy delegation server (src/policy-service/),
// with the store and DNS of the daemon and no SMTP listener, spool or forwarder: for trying
// mxguard's checks behind an existing Postfix. Several may run beside `mxguard start` on one
// data_dir (the store is shared as `mxguard stdio` shares it). The log is the daemon's: log.format
// honoured, SIGHUP and SIGUSR1 reopen the file (logrotate), SIGHUP also reloads the config.
import type { Config } from '../config/schema.ts';
import { openStore } from '../store/index.ts';
import { ResolverForSettings } from '../dns/resolver.ts';
import { openLog } from '../util/log.ts';
import { readConfigAgain } from './reload-config.ts';
import { startPolicyService } from '../policy-service/server.ts';

/** Runs until SIGTERM or SIGINT (SIGHUP reloads `file`); resolves with the exit code. */
export async function runPolicyCommand(config: Config, listen?: string, file?: string): Promise<number> {
  if ((listen ?? config.policy.listen) === undefined) {
    console.error('mxguard policy: where? set policy.listen in the config, or give --listen host:port');
    return 1;
  }
  const logOutput = openLog(config.log);
  const log = logOutput.log;
  // The resolver keeps its cache across reloads unless the dns settings change.
  const resolvers = new ResolverForSettings();
  let store;
  let service;
  try {
    store = await openStore(config, log, { batchWrites: true });
    service = await startPolicyService({ config, log, store, dns: resolvers.get(config, log), ...(listen !== undefined ? { listen } : {}) });
  } catch (err) {
    log.fatal({ err: (err as Error).message }, 'policy service start-up failed');
    log.flush();
    await store?.close();
    console.error(`mxguard policy: ${(err as Error).message}`);
    return 1;
  }
  const running = service;
  const opened = store;
  const onHup = (): void => {
    logOutput.reopen();
    readConfigAgain(file, log, (next) => {
      running.reload(next, resolvers.get(next, log));
      logOutput.apply(next.log);
      log.info('configuration reloaded');
    });
  };
  const onUsr1 = (): void => logOutput.reopen();
  process.on('SIGHUP', onHup);
  process.on('SIGUSR1', onUsr1);
  const signal = await new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  log.info({ signal }, 'shutting down');
  // The service first: its answers and open transactions finish writing to the store.
  await running.close();
  await opened.close();
  process.off('SIGHUP', onHup);
  process.off('SIGUSR1', onUsr1);
  log.info('stopped');
  log.flush();
  return 0;
}
