// Opens the Store the config names.
import type { Config } from '../config/schema.ts';
import type { Logger } from '../util/log.ts';
import { SqliteStore } from './sqlite.ts';
import type { Store } from './store.ts';

export type { Relayer, Store } from './store.ts';
export { StoreUnavailable } from './store.ts';

/** How long the daemon's SQLite writes wait to commit together (SqliteStore's commitEveryMs). */
export const DAEMON_COMMIT_EVERY_MS = 10;

/** `batchWrites`: the long-running daemon batches its SQLite commits; short processes do not. */
export async function openStore(config: Config, log?: Logger, opts: { batchWrites?: boolean } = {}): Promise<Store> {
  const s = config.store;
  // The Redis client (~100 ms to load) only when the config asks for it: `mxguard stdio` opens
  // the store once per connection.
  if (s.backend === 'redis') return (await import('./redis.ts')).RedisStore.open(s.redis_url, s.redis_prefix, log);
  return new SqliteStore(s.path ?? `${config.data_dir}/state.db`, {
    commitEveryMs: opts.batchWrites ? DAEMON_COMMIT_EVERY_MS : 0,
    onCommitError: (err) => log?.warn({ store: 'sqlite', err: err.message }, 'state store: a batch of writes could not be committed (counts and greylisting records of the last milliseconds lost)'),
  });
}
