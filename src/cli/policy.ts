// `mxguard policy` (issue 14): only the Postfix policy delegation server (src/policy-service/),
// with the store and DNS of the daemon and no SMTP listener, spool or forwarder: for trying
// mxguard's checks behind an existing Postfix. Several may run beside `mxguard start` on one
// data_dir (the store is shared as `mxguard stdio` shares it). The log is the daemon's: log.format
// honoured, SIGHUP and SIGUSR1 reopen the file (logrotate), SIGHUP also reloads the config.
import type { Config } from '../config/schema.ts';
import { loadConfigFile } from '../config/load.ts';
import { openStore } from '../store/index.ts';
import { DnsResolver } from '../dns/resolver.ts';
import { openLog, type Logger } from '../util/log.ts';
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
  let dns = { settings: JSON.stringify(config.dns), resolver: resolverFor(config, log) };
  let store;
  let service;
  try {
    store = await openStore(config, log, { batchWrites: true });
    service = await startPolicyService({ config, log, store, dns: dns.resolver, ...(listen !== undefined ? { listen } : {}) });
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
    if (file === undefined) {
      log.info('SIGHUP: no config file to reload');
      return;
    }
    loadConfigFile(file).then(
      ({ config: next, warnings }) => {
        for (const w of warnings) log.warn({ file: w.file, line: w.line, key: w.key }, w.message);
        const settings = JSON.stringify(next.dns);
        if (settings !== dns.settings) dns = { settings, resolver: resolverFor(next, log) };
        running.reload(next, dns.resolver);
        logOutput.apply(next.log);
        log.info('configuration reloaded');
      },
      (err: Error) => log.error({ err: err.message }, 'reload failed; keeping the running configuration'),
    );
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

function resolverFor(config: Config, log: Logger): DnsResolver {
  return new DnsResolver({ servers: config.dns.servers, timeoutMs: config.dns.timeout, log });
}
