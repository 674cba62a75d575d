// The transports behind `deliver:` and `routes:` (src/delivery/routes.ts): one router that
// hands each recipient to its route's transport, made on first use.
import fs from 'node:fs';
import os from 'node:os';
import { parseHostPort, type Config } from '../config/schema.ts';
import type { Logger } from '../util/log.ts';
import type { Transport } from '../mail/transport.ts';
import type { DnsResolver } from '../dns/resolver.ts';
import { createSmtpTransport } from '../smtp-client/client.ts';
import { createMaildirTransport } from './maildir.ts';
import { createMxTransport, type MxTransportOptions } from './mx.ts';
import { createRouter } from './router.ts';
import { createSigningTransport, loadSigningKeys } from './dkim-sign.ts';
import { routeTable, type RouteTable } from './routes.ts';

/** Where local domains' mail goes: `deliver`, or the embedded Maildir. */
export function deliverTarget(config: Config): string {
  return config.deliver ?? `maildir:${config.data_dir}/maildir`;
}

function tableOf(config: Config): RouteTable {
  return routeTable({ routes: config.routes, localDomains: [...config.local_domains, ...config.relay.relay_to], deliver: deliverTarget(config) });
}

/** The queue manager's transport; reload() takes a new config's routes, local domains and deliver. */
export interface Delivery extends Transport {
  reload(config: Config): void;
}

export function createTransport(config: Config, log: Logger, dns: DnsResolver): Delivery {
  // A transport is made on a route's first use, from the config of that moment; a reload that
  // changes a transport's settings (queue's for mx, a smarthost's) has it made anew at its next use.
  let current = config;
  let sts = mtaStsOf(config); // its CA file is read now: a bad one stops the start (or the reload)
  const router = createRouter(tableOf(config), (target) => {
    if (target.startsWith('maildir:')) return createMaildirTransport({ dir: target.slice('maildir:'.length) });
    if (target === 'mx') {
      return createMxTransport({
        dns,
        heloName: current.hostname,
        port: current.queue.mx_port,
        tls: current.queue.mx_tls,
        tlsPolicy: current.queue.tls_policy,
        deadMs: current.queue.retry[0] ?? 60_000,
        ...sts,
        maxConnections: current.queue.connections,
        connectTimeoutMs: 30_000,
        commandTimeoutMs: 300_000,
        self: selfOf(current),
        log,
      });
    }
    const smarthost = /^smarthost:(.+)$/.exec(target)?.[1];
    if (smarthost !== undefined) return smarthostTransport(current, smarthost, log);
    return createSmtpTransport({ url: target, heloName: current.hostname, maxConnections: current.queue.connections, connectTimeoutMs: 30_000, commandTimeoutMs: 300_000, log });
  });
  // Our users' mail is signed on its way out (dkim.sign; keys read now: a bad one stops the start).
  const keys = loadSigningKeys(config.dkim.sign);
  const out = keys.length > 0 ? createSigningTransport(router, keys) : router;
  const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);
  return Object.assign(out, {
    reload: (next: Config) => {
      const nextSts = mtaStsOf(next);
      if (!same([current.queue, current.hostname, current.listen], [next.queue, next.hostname, next.listen]) || !same(sts, nextSts)) router.forget('mx');
      for (const name of Object.keys(current.smarthosts)) if (!same(current.smarthosts[name], next.smarthosts[name])) router.forget(`smarthost:${name}`);
      current = next;
      sts = nextSts;
      router.setTable(tableOf(next));
    },
  });
}

/**
 * A smarthost (smarthosts.NAME): SMTP with STARTTLS required (or verified) and, with user and
 * password_file, AUTH. A password file that cannot be read defers the mail, naming the file.
 */
function smarthostTransport(config: Config, name: string, log: Logger): Transport {
  const h = config.smarthosts[name];
  const label = `smarthost:${name}`;
  const failing = (why: string): Transport => ({
    name: label,
    deliver: async (msg) => msg.rcpts.map((rcpt) => ({ rcpt, status: 'temp' as const, code: 451, text: `4.3.5 ${label}: ${why}` })),
    close: async () => undefined,
  });
  if (h === undefined) return failing('not configured (smarthosts)');
  let auth: { user: string; password: string } | undefined;
  let ca: string | undefined;
  try {
    ca = h.ca === undefined ? undefined : fs.readFileSync(h.ca, 'utf8');
  } catch (err) {
    return failing(`cannot read ${h.ca}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (h.user !== undefined && h.password_file !== undefined) {
    try {
      const password = (fs.readFileSync(h.password_file, 'utf8').split(/\r?\n/)[0] ?? '').trim();
      if (password === '') return failing(`${h.password_file} holds no password`);
      auth = { user: h.user, password };
    } catch (err) {
      return failing(`cannot read ${h.password_file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  const t = createSmtpTransport({ url: h.url, heloName: config.hostname, maxConnections: config.queue.connections, connectTimeoutMs: 30_000, commandTimeoutMs: 300_000, log, tls: { mode: h.tls, ...(ca !== undefined ? { ca } : {}) }, ...(auth ? { auth } : {}) });
  return { name: label, deliver: (msg) => t.deliver(msg), close: () => t.close() };
}

/** MTA-STS for the MX transport (queue.mta_sts); its CA file is read now: a bad one stops the start. */
function mtaStsOf(config: Config): Pick<MxTransportOptions, 'tlsCa' | 'mtaSts'> {
  const sts = config.queue.mta_sts;
  const ca = sts.ca === undefined ? undefined : fs.readFileSync(sts.ca, 'utf8');
  return {
    ...(ca !== undefined ? { tlsCa: ca } : {}),
    ...(sts.enabled ? { mtaSts: { port: sts.port, ...(ca !== undefined ? { ca } : {}) } } : {}),
  };
}

/**
 * Our own host name and the addresses we take mail on at the MX port: an MX that is one of them
 * would send the mail back to us (a wildcard listener stands for every interface address).
 */
/**
 * This host's interface addresses; none when the system will not say (a sandbox without netlink
 * sockets): the loop guard then knows us by name only, and MX delivery still works.
 */
function interfaceAddresses(): string[] {
  try {
    return Object.values(os.networkInterfaces()).flatMap((ifs) => (ifs ?? []).map((i) => i.address));
  } catch {
    return [];
  }
}

function selfOf(config: Config): { names: string[]; addresses: string[] } {
  const addresses: string[] = [];
  for (const l of config.listen) {
    const hp = parseHostPort(l.address);
    if (!hp || hp.port !== config.queue.mx_port) continue;
    if (hp.host === '0.0.0.0' || hp.host === '::') addresses.push(...interfaceAddresses());
    else addresses.push(hp.host);
  }
  return { names: [config.hostname], addresses };
}
