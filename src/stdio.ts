// `mxguard stdio`: one SMTP session on standard input and output, for inetd, systemd socket
// activation (Accept=yes), ucspi-tcp's tcpserver (seed 002: `tcpserver … rblsmtpd … mxguard
// stdio`) or socat. The launcher accepts the connection and limits concurrency; this process
// runs the same session, policy and spool code as the daemon, then exits.
//
// Many of these processes may run at once beside one `mxguard start` daemon on the same
// data_dir: they spool in shared mode (a queue file per message, complete before it appears;
// see queue/spool.ts) and signal the daemon (SIGUSR2), which delivers. Without a daemon, mail
// waits in the queue until one starts.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Config } from './config/schema.ts';
import { Session, type SessionDeps } from './smtp/session.ts';
import { loadTlsContext } from './smtp/server.ts';
import { connectionFromEnv, sameFile, stdioSocket } from './smtp/stdio-socket.ts';
import { PolicyEngine } from './policy/engine.ts';
import { buildChecks } from './policy/index.ts';
import { Spool } from './queue/spool.ts';
import { signalDaemon } from './queue/daemon-signal.ts';
import { openStore } from './store/index.ts';
import { createAuthenticator } from './auth/index.ts';
import { DnsResolver } from './dns/resolver.ts';
import { createLogger, type Logger } from './util/log.ts';

/**
 * Where stdio mode logs: log.file, else standard error — unless standard error is the client's
 * socket too (inetd, and systemd's default), then <data_dir>/stdio.log: a log line must never
 * reach the client.
 */
export function stdioLogger(config: Config): Logger {
  const file = config.log.file ?? (sameFile(0, 2) ? path.join(config.data_dir, 'stdio.log') : undefined);
  return createLogger(config.log.level, file, { fd: 2, sync: true, fields: { mode: 'stdio' }, format: config.log.format });
}

/** Runs the session to its end; resolves with the exit code. */
export async function runStdio(config: Config, log: Logger, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const socket = stdioSocket();
  const connection = connectionFromEnv(env, socket);
  if (!connection) {
    log.error('cannot tell the client address: no TCPREMOTEIP (tcpserver), REMOTE_ADDR (systemd) or SOCAT_PEERADDR, and standard input is not a TCP socket');
    await new Promise<void>((resolve) => socket.end(`421 4.3.0 ${config.hostname} Service not available: client address unknown\r\n`, resolve));
    return 1;
  }
  await fsp.mkdir(config.data_dir, { recursive: true });
  const spool = await Spool.open(path.join(config.data_dir, 'spool'), { shared: true });
  const store = await openStore(config, log);
  const dns = new DnsResolver({ servers: config.dns.servers, timeoutMs: config.dns.timeout, log });
  const authenticator = createAuthenticator(config);
  const signals: Array<Promise<void>> = [];
  const deps: SessionDeps = {
    config,
    policy: new PolicyEngine(buildChecks(config, store, dns, log), log),
    spool,
    log,
    tls: loadTlsContext(config),
    enqueue: (msg) => {
      const told = signalDaemon(config.data_dir, 'SIGUSR2').then((pid) => {
        if (pid === undefined) log.warn({ id: msg.envelope.id }, 'could not signal the mxguard daemon (none running, or it runs as another user): the message waits for its next queue scan');
      });
      signals.push(told);
    },
    store,
    dns,
    authenticator,
  };
  try {
    await new Promise<void>((resolve) => {
      const session = new Session(socket, connection, deps, resolve);
      void session.start();
    });
    await Promise.all(signals);
  } finally {
    spool.close();
    authenticator.close();
    await store.close();
  }
  return 0;
}
