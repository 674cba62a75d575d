// `mxguard policy` (issue 14): only the Postfix policy delegation server (src/policy-service/),
// with the store and DNS of the daemon and no SMTP listener, spool or forwarder: for trying
// mxguard's checks behind an existing Postfix. Several may run beside `mxguard start` on one
// data_dir (the store is shared as `mxguard stdio` shares it).
import type { Config } from '../config/schema.ts';
import { loadConfigFile } from '../config/load.ts';
import { openStore } from '../store/index.ts';
import { DnsResolver } from '../dns/resolver.ts';
import { createLogger } from '../util/log.ts';
import { startPolicyService } from '../policy-service/server.ts';

/** Runs until SIGTERM or SIGINT (SIGHUP reloads `file`); resolves with the exit code. */
export async function runPolicyCommand(config: Config, listen?: string, file?: string): Promise<number> {
  if ((listen ?? config.policy.listen) === undefined) {
    console.error('mxguard policy: where? set policy.listen in the config, or give --listen host:port');
    return 1;
  }
  const log = createLogger(config.log.level, config.log.file);
  let store;
  let service;
  try {
    store = await openStore(config, log, { batchWrites: true });
    const dns = new DnsResolver({ servers: config.dns.servers, timeoutMs: config.dns.timeout, log });
    service = await startPolicyService({ config, log, store, dns, ...(listen !== undefined ? { listen } : {}) });
  } catch (err) {
    log.fatal({ err: (err as Error).message }, 'policy service start-up failed');
    log.flush();
    await store?.close();
    console.error(`mxguard policy: ${(err as Error).message}`);
    return 1;
  }
  const running = service;
  const opened = store;
  process.on('SIGHUP', () => {
    if (file === undefined) {
      log.info('SIGHUP: no config file to reload');
      return;
    }
    loadConfigFile(file).then(
      ({ config: next }) => {
        running.reload(next, new DnsResolver({ servers: next.dns.servers, timeoutMs: next.dns.timeout, log }));
        log.info('configuration reloaded');
      },
      (err: Error) => log.error({ err: err.message }, 'reload failed; keeping the running configuration'),
    );
  });
  const signal = await new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  log.info({ signal }, 'shutting down');
  await running.close();
  await opened.close();
  log.info('stopped');
  log.flush();
  return 0;
}
