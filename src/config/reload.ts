// What a reload (SIGHUP) does with each setting. Every top-level key of the config is named here,
// either as applied by a reload or as needing a restart (a reload that changes one of those says
// so, by name, and keeps the running value). src/config/reload.test.ts fails when a key is added
// to the schema without being placed here, so no setting is ever silently ignored by a reload.
import type { Config } from './schema.ts';

/** Settings a reload applies, and how (new sessions use them; running ones finish with theirs). */
export const APPLIED_ON_RELOAD: Readonly<Record<string, string>> = {
  rules_file: 'read again',
  noto_delay: 'new sessions',
  ident: 'new sessions',
  ident_timeout: 'new sessions',
  ident_port: 'new sessions',
  hostname: 'new sessions and deliveries',
  'proxy_protocol.trusted': 'new connections',
  'proxy_protocol.timeout': 'new connections',
  local_domains: 'new sessions',
  deliver: 'the next delivery',
  routes: 'the next delivery',
  smarthosts: 'the next delivery (a changed smarthost gets a new connection pool)',
  tls: 'certificate and key read again (a renewed certificate)',
  smtp: 'new sessions',
  limits: 'new sessions',
  throttle: 'new sessions',
  relay: 'new sessions (pop_logs: the watcher starts anew)',
  submission: 'new sessions',
  auth: 'new sessions (a new password checker when changed)',
  recipients: 'new sessions',
  mail_from: 'new sessions',
  rdns: 'new sessions',
  dnsbl: 'new sessions',
  ban: 'new sessions',
  helo: 'new sessions',
  queue: 'the forwarder (retries, bounces, MX delivery; scan_interval re-armed)',
  scoring: 'new sessions',
  spf: 'new sessions',
  dmarc: 'new sessions',
  greylist: 'new sessions',
  filters: 'new sessions (rules read again)',
  dns: 'a new resolver (its cache starts empty)',
  admin: 'the admin listener is started anew when it changes (a new token, a new address)',
  history: 'keep: the ring is trimmed to the new size',
  'policy.max_delay': 'the next policy request',
  'policy.idle_timeout': 'the next policy connection',
  log: 'level and format at once; a new file is opened',
};

/** Settings read once at start: a reload that changes one keeps the running value and says a restart is needed. */
export const RESTART_ONLY: Readonly<Record<string, string>> = {
  listen: 'the listeners are bound at start (before root is given up)',
  'proxy_protocol.listen': 'part of the listeners',
  data_dir: 'the spool and the state are opened at start',
  user: 'root is given up at start',
  group: 'root is given up at start',
  store: 'the store is opened at start',
  dkim: 'signing keys are read at start',
  'policy.listen': 'the policy service is bound at start',
};

/** The value at a dotted path (proxy_protocol.listen). */
function at(config: Config, key: string): unknown {
  let v: unknown = config;
  for (const part of key.split('.')) v = (v as Record<string, unknown> | undefined)?.[part];
  return v;
}

/** The restart-only settings that differ between the running config and the reloaded one. */
export function restartOnlyChanges(running: Config, next: Config): string[] {
  return Object.keys(RESTART_ONLY).filter((key) => JSON.stringify(at(running, key)) !== JSON.stringify(at(next, key)));
}

/** `next` with the running value of every restart-only setting: what a reload applies. */
export function withRunningRestartOnly(running: Config, next: Config): Config {
  const out = structuredClone(next) as unknown as Record<string, unknown>;
  for (const key of Object.keys(RESTART_ONLY)) {
    const parts = key.split('.');
    let target = out;
    for (const part of parts.slice(0, -1)) target = target[part] as Record<string, unknown>;
    const value = at(running, key);
    const last = parts[parts.length - 1] as string;
    if (value === undefined) delete target[last];
    else target[last] = structuredClone(value);
  }
  return out as unknown as Config;
}
