// A real HAProxy (2.6, /usr/sbin/haproxy) in front of a test backend, sending the PROXY protocol
// header (v1 or v2) on every connection it forwards: for testing our PROXY support against the
// genuine article. It runs in the foreground (`haproxy -db -f CFG`) from its own temp dir, logs
// nothing to syslog, and is supervised like the other peers (processes.ts): tracked from spawn,
// stopped by PID, killed by the exit handler if a test run dies.
//
// Readiness: a second frontend, HTTP with `monitor-uri /ready` on its own port, answers 200 once
// HAProxy serves. Probing the TCP frontend itself would make HAProxy open a connection (with a
// PROXY header) to the test's backend, which the test would then see.
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { freePort, makeTempDir, probeFirstLine, waitReady, withPortRetry } from './peers.ts';
import { spawnDaemon, supervise } from './processes.ts';

export const HAPROXY = '/usr/sbin/haproxy';

export interface HaproxyOptions {
  /** Where HAProxy forwards connections (our server under test). */
  readonly backend: { host: string; port: number };
  /** `send-proxy` (text, v1) or `send-proxy-v2` (binary). */
  readonly sendProxy: 'v1' | 'v2';
  /** HAProxy's SMTP health check (`option smtpchk`, every 300 ms), with the PROXY header too. */
  readonly healthCheck?: boolean;
}

export interface HaproxyPeer {
  readonly name: string;
  /** The TCP frontend on 127.0.0.1: connect here to reach the backend through HAProxy. */
  readonly port: number;
  readonly pid: number;
  /** HAProxy's stdout and stderr so far (warnings, alerts). */
  log(): string;
  /** Ends HAProxy (by PID) and removes its temp dir; safe to call twice. */
  stop(): Promise<void>;
}

function haproxyConfig(opts: HaproxyOptions, port: number, monitorPort: number): string {
  const host = opts.backend.host;
  // HAProxy takes the last colon as the port separator; the ipv6@ prefix makes v6 unambiguous.
  const server = `${net.isIPv6(host) ? `ipv6@${host}` : host}:${opts.backend.port}`;
  return [
    'global',
    '  maxconn 256',
    '  # No "log" lines: nothing goes to syslog.',
    '',
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 60s',
    '  timeout server 60s',
    '',
    'frontend ready',
    '  mode http',
    `  bind 127.0.0.1:${monitorPort}`,
    '  monitor-uri /ready',
    '',
    'frontend smtp',
    `  bind 127.0.0.1:${port}`,
    '  default_backend mx',
    '',
    'backend mx',
    ...(opts.healthCheck ? ['  option smtpchk EHLO haproxy.test'] : []),
    `  server mx ${server} ${opts.sendProxy === 'v2' ? 'send-proxy-v2' : 'send-proxy'}${opts.healthCheck ? ' check inter 300ms check-send-proxy' : ''}`,
    '',
  ].join('\n');
}

function probeMonitor(port: number): Promise<boolean> {
  return probeFirstLine(port, (l) => /^HTTP\/1\.[01] 200 /.test(l), 'GET /ready HTTP/1.0\r\n\r\n');
}

/**
 * HAProxy on a free loopback port, forwarding to `backend` with a PROXY header. Retries with fresh
 * ports when another process took one between our check and HAProxy's bind.
 */
export function startHaproxy(opts: HaproxyOptions): Promise<HaproxyPeer> {
  return withPortRetry(async (port) => {
    let monitorPort = await freePort();
    while (monitorPort === port) monitorPort = await freePort();
    const dir = await makeTempDir('haproxy');
    const cfg = path.join(dir, 'haproxy.cfg');
    await fsp.writeFile(cfg, haproxyConfig(opts, port, monitorPort));
    const sp = spawnDaemon(HAPROXY, ['-db', '-f', cfg], { cwd: dir });
    // supervise() stops HAProxy and removes the dir when it never comes up.
    const stop = await supervise(sp, { ready: () => waitReady('haproxy', monitorPort, sp, () => '', probeMonitor), cleanup: () => fsp.rm(dir, { recursive: true, force: true }) });
    return { name: 'haproxy', port, pid: sp.pid, log: () => sp.output(), stop };
  });
}
