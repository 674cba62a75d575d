// Picks the transport for the `deliver:` setting.
import type { Config } from '../config/schema.ts';
import type { Logger } from '../util/log.ts';
import type { Transport } from '../mail/transport.ts';
import { createSmtpTransport } from '../smtp-client/client.ts';
import { createMaildirTransport } from './maildir.ts';

export function createTransport(config: Config, log: Logger): Transport {
  const deliver = config.deliver ?? `maildir:${config.data_dir}/maildir`;
  if (deliver.startsWith('maildir:')) return createMaildirTransport({ dir: deliver.slice('maildir:'.length) });
  return createSmtpTransport({
    url: deliver,
    heloName: config.hostname,
    maxConnections: config.queue.connections,
    connectTimeoutMs: 30_000,
    commandTimeoutMs: 300_000,
    log,
  });
}
