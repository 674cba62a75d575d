// The admin HTTP API (admin.listen, loopback): today the relayers table, so a POP/IMAP server or
// a webmail can report a login ("the HTTP way in" of POP-before-SMTP), and a health check.
//   GET    /healthz                 200 "ok" (no token)
//   GET    /api/relayers            [{ "ip": "192.0.2.1", "at": 1795300000 }, …]
//   POST   /api/relayers/<ip>       a login from <ip> now (or ?at=<epoch seconds>)
//   DELETE /api/relayers/<ip>
//   GET    /api/greylist            {"triplets": [{"key", "record"}…], "allowed": [{"net", "at", "by"}…]}
//   GET    /api/greylist/stats      {"grey", "passed", "allowedAuto", "allowedAdmin"}
//   POST   /api/greylist/allow?net=<ip or cidr>    allow the client network(s) for greylist.expire
//   POST   /api/greylist/release?key=<key>         let a waiting triplet through now
//   DELETE /api/greylist?key=<key>
//   GET    /metrics                 Prometheus text format (src/util/metrics.ts), token too
//   /api/history…, /api/stats       the transaction history and per-minute counts (src/admin/history/api.ts)
//   GET    /dashboard/<file>        the web dashboard's static files, no token (src/admin/static.ts)
// Every /api call carries `Authorization: Bearer <admin.token>`; the comparison is constant-time.
// <ip> is stored as the SMTP side sees clients (IPv4-mapped IPv6 as IPv4, IPv6 canonical); one
// that is not an IP address (or a bad %-escape) is 400.
import http from 'node:http';
import net from 'node:net';
import crypto from 'node:crypto';
import { parseHostPort, type Config } from '../config/schema.ts';
import type { Store } from '../store/store.ts';
import type { Logger } from '../util/log.ts';
import { canonicalIp } from '../util/cidr.ts';
import { clock } from '../util/clock.ts';
import { GreyStore, networksToAllow } from '../policy/greylist/store.ts';
import { metrics, type QueueStats } from '../util/metrics.ts';
import { historyApi } from './history/api.ts';
import type { HistoryStore } from './history/store.ts';

/** What the running daemon adds to the admin API: the transaction history, the queue for /api/stats. */
export interface AdminExtras {
  readonly history?: HistoryStore;
  readonly queue?: () => QueueStats | undefined;
}
import { serveDashboard } from './static.ts';

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = typeof body === 'string' ? body + '\n' : JSON.stringify(body) + '\n';
  res.writeHead(status, { 'content-type': typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json' });
  res.end(text);
}

function authorized(req: http.IncomingMessage, token: string): boolean {
  const given = Buffer.from(/^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '');
  const want = Buffer.from(token);
  return given.length === want.length && crypto.timingSafeEqual(given, want);
}

export async function startAdmin(config: Config, store: Store, log: Logger, extras: AdminExtras = {}): Promise<{ port: number; close(): Promise<void> } | undefined> {
  const { listen, token } = config.admin;
  if (listen === undefined || token === undefined) return undefined;
  const hp = parseHostPort(listen) as { host: string; port: number };
  const server = http.createServer((req, res) => {
    void handle(req, res).catch((err: Error) => {
      log.warn({ err: err.message }, 'admin API error');
      if (!res.headersSent) send(res, err.name === 'StoreUnavailable' ? 503 : 500, { error: err.message });
    });
  });
  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    if (url.pathname === '/healthz' && req.method === 'GET') return send(res, 200, 'ok');
    // The dashboard's static files (no data in them, so no token): src/admin/static.ts.
    if (await serveDashboard(url.pathname, req.method ?? 'GET', res)) return;
    if (url.pathname === '/metrics') {
      if (!authorized(req, token as string)) return send(res, 401, { error: 'missing or wrong bearer token' });
      if (req.method !== 'GET') return send(res, 405, { error: 'method not allowed' });
      const m = await metrics.text();
      res.writeHead(200, { 'content-type': m.contentType });
      return void res.end(m.body);
    }
    if (!url.pathname.startsWith('/api/')) return send(res, 404, { error: 'not found' });
    if (!authorized(req, token as string)) return send(res, 401, { error: 'missing or wrong bearer token' });
    const h = extras.history ? await historyApi(url, req.method ?? 'GET', { history: extras.history, store, config, log, ...(extras.queue ? { queue: extras.queue } : {}) }) : undefined;
    if (h) return send(res, h.status, h.body);
    if (url.pathname === '/api/relayers' && req.method === 'GET') return send(res, 200, await store.relayerList());
    if (url.pathname.startsWith('/api/greylist')) return greylistApi(url, req.method ?? 'GET', res);
    const m = /^\/api\/relayers\/([^/]+)$/.exec(url.pathname);
    if (!m) return send(res, 404, { error: 'not found' });
    let raw: string;
    try {
      raw = decodeURIComponent(m[1] as string);
    } catch {
      return send(res, 400, { error: `"${m[1] as string}" is not an IP address (bad %-escape)` });
    }
    // As the SMTP side sees clients: IPv6 canonical, IPv4-mapped IPv6 (::ffff:192.0.2.1) as IPv4.
    const ip = canonicalIp(raw);
    if (ip === undefined) return send(res, 400, { error: `${JSON.stringify(raw)} is not an IP address` });
    if (req.method === 'POST') {
      const atText = url.searchParams.get('at');
      if (atText !== null && !/^\d{1,12}$/.test(atText)) return send(res, 400, { error: 'at must be epoch seconds' });
      const at = atText === null ? Math.floor(clock.now() / 1000) : Number(atText);
      await store.relayerAdd(ip, at, config.relay.relayers_keep);
      log.info({ check: 'forward_user', ip, via: 'admin' }, 'POP-before-SMTP login');
      return send(res, 200, { ip, at });
    }
    if (req.method === 'DELETE') return send(res, 200, { deleted: await store.relayerDelete([ip]) });
    return send(res, 405, { error: 'method not allowed' });
  }
  /** The greylisting records, as `mxguard greylist` shows and changes them. */
  async function greylistApi(url: URL, method: string, res: http.ServerResponse): Promise<void> {
    const grey = new GreyStore(store);
    const expire = config.greylist?.expire ?? 35 * 86_400_000;
    const key = url.searchParams.get('key');
    switch (`${method} ${url.pathname}`) {
      case 'GET /api/greylist':
        return send(res, 200, await grey.list());
      case 'GET /api/greylist/stats':
        return send(res, 200, await grey.stats());
      case 'POST /api/greylist/allow': {
        const nets = networksToAllow(url.searchParams.get('net') ?? '');
        if ('error' in nets) return send(res, 400, { error: nets.error });
        for (const n of nets) await grey.allow(n, 'admin', expire);
        log.info({ check: 'greylist', nets, via: 'admin' }, 'client networks allowed');
        return send(res, 200, { allowed: nets });
      }
      case 'POST /api/greylist/release':
        if (key === null) return send(res, 400, { error: 'release needs ?key= (as the list shows it)' });
        if (!(await grey.release(key, expire))) return send(res, 404, { error: `no such triplet: ${key}` });
        log.info({ check: 'greylist', key, via: 'admin' }, 'triplet released');
        return send(res, 200, { released: key });
      case 'DELETE /api/greylist':
        if (key === null) return send(res, 400, { error: 'delete needs ?key= (as the list shows it)' });
        return send(res, 200, { deleted: await grey.delete([key]) });
      default:
        return send(res, 404, { error: 'not found' });
    }
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(hp.port, hp.host, () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  log.info({ admin: `${hp.host}:${port}` }, 'admin API listening');
  return {
    port,
    // Kept-alive connections (a dashboard polling, a scraper) would hold close() open for as long
    // as they keep asking: requests under way get a second to finish, then every connection goes.
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeIdleConnections();
        setTimeout(() => server.closeAllConnections(), 1000).unref();
      }),
  };
}
