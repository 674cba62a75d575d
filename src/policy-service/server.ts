// The Postfix policy delegation server (issue 14; SMTPD_POLICY_README): Postfix asks at
// `check_policy_service inet:host:port` and mxguard answers with its own policy, the same config,
// store and DNS as the daemon: greylisting, rate limits, relay rules, DNS blocklists, the rules
// file, HELO and sender checks. Administrators try mxguard behind the Postfix they have.
//
// One Postfix transaction (its `instance` attribute) is one offline policy session
// (src/policy/offline.ts): its first request runs connect, HELO and MAIL, each RCPT request one
// recipient, so several recipients of one message count as one transaction (rates, tarpit,
// score). Replies: a refusal is its SMTP reply ("action=550 5.7.1 …"), greylisting postgrey's
// DEFER_IF_PERMIT, a tag a PREPEND of one header not yet prepended in the transaction, else
// DUNNO. Only the checks' verdicts become actions: the offline session's own SMTP replies (bad
// sequence, an address its parser refuses, no recipients at DATA) are Postfix's business and
// answered DUNNO, since Postfix asks at DATA a transaction it never asked at RCPT (a
// permit_mynetworks client). At DATA and END-OF-MESSAGE the only refusal answered is one a check
// held for DATA (greylisting the null sender). The tarpit holds the reply so that the whole
// answer takes at most policy.max_delay (under Postfix's smtpd_policy_service_timeout).
// END-OF-MESSAGE (smtpd_end_of_data_restrictions) counts the message as queued; a transaction
// never heard of again is taken as queued when a recipient was accepted (Postfix asks no more
// after RCPT unless told to).
//
// Each connection has at most one request being answered: reading pauses until its reply is
// written and the socket's buffer drained, so a client that never reads holds a bounded amount.
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../config/schema.ts';
import { parseHostPort } from '../config/schema.ts';
import type { Store } from '../store/store.ts';
import type { DnsResolver } from '../dns/resolver.ts';
import type { Logger } from '../util/log.ts';
import { buildChecks } from '../policy/index.ts';
import { OfflineSession, type OfflineStep } from '../policy/offline.ts';
import { traceLogFields, type TransactionTrace } from '../policy/trace.ts';
import { PolicyRequestReader, TEMPORARY_FAILURE, actionReply, prependAction, refusalAction, tarpitWait, type PolicyRequest } from './protocol.ts';

/** Connections at once (Postfix keeps one per smtpd process; default_process_limit is 100). */
const MAX_CONNECTIONS = 512;
/** Transactions remembered at once; the oldest is ended past this. */
const MAX_INSTANCES = 10_000;
/** Requests of one connection waiting for their answers at most. */
const MAX_PENDING = 64;
/** A transaction not heard of for this long is over. */
const INSTANCE_IDLE_MS = 10 * 60_000;
/** After the answer to a broken request, the connection is dropped this soon if the client does not close it. */
const ERROR_LINGER_MS = 2000;
/** close() waits this long at most for the answers being judged, then as long for the transactions' ends. */
const CLOSE_WAIT_MS = 5000;

interface Instance {
  readonly session: OfflineSession;
  lastSeen: number;
  /** The connect-phase checks ran (on the first request). */
  connected: boolean;
  helo?: string;
  sender?: string;
  /** mxguard's parser refused `sender` (Postfix took it): no MAIL again until it changes. */
  senderUnparsed?: boolean;
  /** A reply that ended the whole transaction (a refusal at connect without delay_reject). */
  final?: string;
  /** Which check gave each refusal seen in the transaction (a held one is answered later). */
  readonly refusedBy: Map<string, string>;
  /** Headers already prepended (once per message, though each RCPT may ask). */
  readonly prepended: Set<string>;
  size: number;
  /** The requests of one instance run one after another. */
  queue: Promise<unknown>;
}

export interface PolicyService {
  readonly port: number;
  readonly host: string;
  /** Open policy connections now. */
  readonly connections: number;
  /** A new config (SIGHUP) for the transactions that begin from now on; the listen address needs a restart. */
  reload(next: Config, dns?: DnsResolver): void;
  close(): Promise<void>;
}

export interface PolicyServiceDeps {
  readonly config: Config;
  readonly log: Logger;
  readonly store?: Store;
  readonly dns?: DnsResolver;
  /** listen here instead of policy.listen ("host:port"). */
  readonly listen?: string;
  /** Each transaction's trace when it ends (the daemon's history), besides its `transaction` log line. */
  readonly onTrace?: (t: TransactionTrace) => void;
  /** Connections at once (512; a test sets fewer). */
  readonly maxConnections?: number;
}

/** One connection's state. */
interface Connection {
  readonly socket: net.Socket;
  /** Requests read and not yet answered. */
  pending: number;
  /** The answers, one after another. */
  chain: Promise<void>;
}

/** One decision: the action and the check behind it (for the log). */
interface Answer {
  readonly action: string;
  readonly check?: string;
  readonly delayMs: number;
}

export async function startPolicyService(deps: PolicyServiceDeps): Promise<PolicyService> {
  let config = deps.config;
  const listen = deps.listen ?? config.policy.listen;
  const hp = listen === undefined ? undefined : parseHostPort(listen);
  if (!hp) throw new Error(`policy service: no valid listen address (policy.listen: ${listen ?? 'not set'})`);
  const log = deps.log.child({ component: 'policy-service' });
  const instances = new Map<string, Instance>();
  /** Open connections, the least recently active first (re-inserted at each request). */
  const connections = new Map<net.Socket, Connection>();
  const maxConnections = deps.maxConnections ?? MAX_CONNECTIONS;
  /** Transactions being ended (their counts and traces written): close() waits for them. */
  const ending = new Set<Promise<void>>();
  /** Aborts the tarpit waits when the service closes. */
  const stopping = new AbortController();

  const endInstance = (key: string, inst: Instance): void => {
    instances.delete(key);
    if (!inst.session.inTransaction) return;
    // Postfix does not say whether the message was queued: with a recipient accepted, take it as queued.
    const queued = inst.session.recipients.length > 0;
    const done = inst.session.end(queued ? { size: inst.size } : undefined).catch((err: unknown) => log.warn({ err: (err as Error).message }, 'could not end a transaction'));
    ending.add(done);
    void done.finally(() => ending.delete(done));
  };

  const sweep = setInterval(() => {
    const now = Date.now();
    for (const [key, inst] of instances) if (now - inst.lastSeen > INSTANCE_IDLE_MS) endInstance(key, inst);
  }, 60_000);
  sweep.unref();

  const onTrace = (t: TransactionTrace): void => {
    log.info({ sid: t.sid, ...traceLogFields(t) }, 'transaction');
    deps.onTrace?.(t);
  };
  const servicesFor = (c: Config, dns: DnsResolver | undefined) => ({ config: c, checks: buildChecks(c, deps.store, dns, deps.log), log: deps.log, onTrace, ...(deps.store ? { store: deps.store } : {}), ...(dns ? { dns } : {}) });
  let services = servicesFor(config, deps.dns);

  const newInstance = (key: string, req: PolicyRequest, ip: string): Instance => {
    const name = req.get('client_name'); // Postfix's forward-confirmed name; "unknown": none
    const client = { ip, sid: `pf-${key}`, tls: (req.get('encryption_protocol') ?? '') !== '', ...(name !== undefined ? { clientName: name === 'unknown' || name === '' ? null : name } : {}) };
    return { session: new OfflineSession(client, services), lastSeen: Date.now(), connected: false, refusedBy: new Map(), prepended: new Set(), size: 0, queue: Promise.resolve() };
  };

  const instanceFor = (req: PolicyRequest, ip: string): [string, Instance] => {
    const key = req.get('instance') || `none-${Math.random().toString(36).slice(2)}`;
    let inst = instances.get(key);
    if (inst) {
      instances.delete(key); // re-inserted last: the map's order is the order of last use
    } else {
      inst = newInstance(key, req, ip);
      if (instances.size >= MAX_INSTANCES) {
        const [oldKey, old] = instances.entries().next().value as [string, Instance];
        endInstance(oldKey, old);
      }
    }
    instances.set(key, inst);
    inst.lastSeen = Date.now();
    return [key, inst];
  };

  /** The steps a request needs, in order; the first refusal among them is the answer. */
  const judge = async (req: PolicyRequest): Promise<Answer> => {
    if (req.get('request') !== 'smtpd_access_policy') return { action: TEMPORARY_FAILURE, delayMs: 0, check: 'policy_service' };
    const state = (req.get('protocol_state') ?? '').toUpperCase();
    const ip = req.get('client_address') ?? '';
    if (net.isIP(ip) === 0) return { action: 'DUNNO', delayMs: 0 }; // no client address (a local submission): nothing to judge
    if (state === 'VRFY' || state === 'ETRN') return { action: 'DUNNO', delayMs: 0 };
    const [key, inst] = instanceFor(req, ip);
    const run = inst.queue.then(() => judgeIn(key, inst, req, state));
    inst.queue = run.catch(() => undefined);
    // Without an instance attribute a request is a transaction of its own: nothing to keep.
    if (!req.get('instance')) void inst.queue.then(() => instances.get(key) === inst && endInstance(key, inst));
    return run;
  };

  const judgeIn = async (key: string, inst: Instance, req: PolicyRequest, state: string): Promise<Answer> => {
    const atData = state === 'DATA' || state === 'END-OF-MESSAGE';
    // A transaction ended by a refusal is refused at each request; at DATA only a DATA refusal is answered.
    if (inst.final !== undefined && !atData) return { action: refusalAction(inst.final, false), delayMs: 0 };
    const s = inst.session;
    const steps: OfflineStep[] = [];
    const user = req.get('sasl_username') ?? '';
    if (user !== '' && s.info.authUser === undefined) s.authenticated(user);
    const size = Number(req.get('size'));
    if (Number.isSafeInteger(size) && size > 0) inst.size = size;
    if (!inst.connected) {
      inst.connected = true;
      steps.push(await s.connect());
    }
    const helo = req.get('helo_name') ?? '';
    if (!s.closed && helo !== '' && helo !== inst.helo) {
      inst.helo = helo;
      steps.push(await s.helo(helo));
    }
    const needsMail = state === 'MAIL' || state === 'RCPT' || state === 'DATA' || state === 'END-OF-MESSAGE';
    const sender = req.get('sender') ?? '';
    const retryMail = !s.inTransaction && !(inst.senderUnparsed === true && sender === inst.sender);
    if (!s.closed && needsMail && (retryMail || sender !== inst.sender)) {
      if (s.inTransaction) await s.end();
      inst.sender = sender;
      const mail = await s.mail(sender, inst.size > 0 ? { SIZE: String(inst.size) } : {});
      inst.senderUnparsed = mail.protocol === true;
      steps.push(mail);
    }
    const rcpt = req.get('recipient') ?? '';
    if (!s.closed && state === 'RCPT' && s.inTransaction && rcpt !== '') steps.push(await s.rcpt(rcpt));
    // DATA, or END-OF-MESSAGE when Postfix does not ask at DATA: a refusal a RCPT check held for DATA.
    const dataStep = !s.closed && atData && s.inTransaction ? s.dataCommand() : undefined;
    if (dataStep) steps.push(dataStep);
    const delayMs = steps.reduce((sum, st) => sum + st.delayMs, 0);
    for (const st of steps) for (const e of st.checks) if (e.reply !== undefined && inst.refusedBy.size < 100) inst.refusedBy.set(e.reply, e.check);
    const closing = steps.find((st) => st.close);
    if (closing) inst.final = closing.reply;
    // Only the checks' verdicts are answered: the session's own SMTP replies (syntax, sequence, no
    // recipients) judge what Postfix already took. At RCPT the session answers the refusals held
    // for RCPT (delay_reject); asked earlier (smtpd_client_restrictions with smtpd_delay_reject=no),
    // the refusal a check found is the answer; at DATA only the refusal held for DATA.
    const verdict = (st: OfflineStep): boolean => st.refused && st.protocol !== true;
    let refused: OfflineStep | undefined;
    if (atData) refused = dataStep !== undefined && verdict(dataStep) ? dataStep : undefined;
    else refused = steps.find(verdict) ?? (state === 'RCPT' ? undefined : steps.find((st) => st.checks.some((e) => e.reply !== undefined)));
    if (state === 'END-OF-MESSAGE') {
      if (s.inTransaction) await s.end(refused ? undefined : { size: inst.size });
      instances.delete(key);
    }
    if (refused) {
      const entry = [...refused.checks].reverse().find((e) => e.reply !== undefined);
      const reply = refused.refused ? refused.reply : (entry?.reply ?? refused.reply);
      // A refusal held from an earlier step (delay_reject) is answered with no check running now.
      const check = inst.refusedBy.get(reply);
      // After the message (END-OF-MESSAGE) the reply goes as it is: a 4xx defers it there.
      const action = state === 'END-OF-MESSAGE' ? reply : refusalAction(reply, check === 'greylist');
      return { action, delayMs, ...(check !== undefined ? { check } : {}) };
    }
    if (state === 'RCPT' || state === 'DATA') {
      // One header per answer (Postfix's rule): the checks' own first, then X-Spam-Flag and X-Spam-Status (score and tests in one).
      const header = [...s.tagsSoFar().headers].sort((a, b) => headerRank(a) - headerRank(b)).find((h) => !inst.prepended.has(h));
      if (header !== undefined) {
        inst.prepended.add(header);
        return { action: prependAction(header), delayMs };
      }
    }
    return { action: 'DUNNO', delayMs };
  };

  /** Room for a new connection: the least recently active idle one is dropped (Postfix reconnects when it needs it). */
  const makeRoom = (): boolean => {
    if (connections.size < maxConnections) return true;
    for (const c of connections.values()) {
      if (c.pending > 0) continue;
      log.warn({ max: maxConnections, client: c.socket.remoteAddress }, 'too many policy connections: the longest idle one closed');
      connections.delete(c.socket);
      c.socket.destroy();
      return true;
    }
    return false;
  };

  const server = net.createServer((socket) => {
    if (stopping.signal.aborted) {
      socket.destroy();
      return;
    }
    if (!makeRoom()) {
      log.warn({ max: maxConnections }, 'too many policy connections, none idle: the new one closed');
      socket.destroy();
      return;
    }
    const conn: Connection = { socket, pending: 0, chain: Promise.resolve() };
    connections.set(socket, conn);
    const reader = new PolicyRequestReader();
    /** Reading goes on once every request read is answered and the answers left the buffer. */
    const resumeReading = (): void => {
      if (!socket.destroyed && conn.pending === 0 && !socket.writableNeedDrain && !stopping.signal.aborted) socket.resume();
    };
    socket.setTimeout(config.policy.idle_timeout);
    socket.on('timeout', () => socket.destroy());
    socket.on('error', () => socket.destroy());
    socket.on('drain', resumeReading);
    socket.on('close', () => {
      if (connections.get(socket) === conn) connections.delete(socket);
    });
    socket.on('data', (chunk: Buffer) => {
      connections.delete(socket); // re-inserted last: the map's order is the order of activity
      connections.set(socket, conn);
      for (const r of reader.feed(chunk)) {
        if (r.kind === 'error') {
          log.warn({ client: socket.remoteAddress, err: r.error }, 'bad policy request: connection closed');
          socket.pause();
          conn.chain = conn.chain.then(() => {
            socket.end(actionReply(TEMPORARY_FAILURE));
            // A client that does not close its side would keep the connection (and its slot) until idle_timeout.
            setTimeout(() => socket.destroy(), ERROR_LINGER_MS).unref();
          });
          return;
        }
        const req = r.request;
        if (++conn.pending > MAX_PENDING) {
          log.warn({ client: socket.remoteAddress, max: MAX_PENDING }, 'too many policy requests without reading the answers: connection closed');
          socket.destroy();
          return;
        }
        // Postfix waits for each answer; a client that pipelines still gets them in order.
        conn.chain = conn.chain.then(async () => {
          const t0 = performance.now();
          let answer: Answer;
          try {
            answer = await judge(req);
          } catch (err) {
            log.error({ err: (err as Error).message, instance: req.get('instance') }, 'policy request failed');
            answer = { action: TEMPORARY_FAILURE, delayMs: 0, check: 'policy_service' };
          }
          // The tarpit: the whole answer, judging included, within policy.max_delay.
          const wait = tarpitWait(answer.delayMs, config.policy.max_delay, performance.now() - t0);
          if (wait > 0) await sleep(wait, undefined, { signal: stopping.signal }).catch(() => undefined);
          log.info({ check: answer.check, action: answer.action, state: req.get('protocol_state'), instance: req.get('instance'), client: req.get('client_address'), from: req.get('sender'), rcpt: req.get('recipient'), ...(wait > 0 ? { delayMs: Math.round(wait) } : {}), ms: Math.round(performance.now() - t0) }, 'policy answer');
          conn.pending--;
          if (!socket.destroyed) socket.write(actionReply(answer.action));
          resumeReading();
        });
      }
      // No more requests until these are answered (a client that never reads fills no memory).
      if (conn.pending > 0) socket.pause();
    });
  });
  server.maxConnections = maxConnections + 16;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(hp.port, hp.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ err: err.message }, 'policy service error'));
  const addr = server.address() as net.AddressInfo;
  log.info({ listen: `${addr.address}:${addr.port}` }, 'policy service listening');
  return {
    port: addr.port,
    host: addr.address,
    reload(next, dns = deps.dns) {
      if (deps.listen === undefined && next.policy.listen !== config.policy.listen) log.warn({ key: 'policy.listen' }, 'setting changes on restart only');
      services = servicesFor(next, dns);
      config = next;
    },
    get connections() {
      return connections.size;
    },
    async close() {
      clearInterval(sweep);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // No new requests; the tarpit lets go; the answers being judged finish (bounded), then the connections go.
      stopping.abort();
      for (const c of connections.values()) c.socket.pause();
      const judged = Promise.allSettled([...[...connections.values()].map((c) => c.chain), ...[...instances.values()].map((i) => i.queue)]);
      await Promise.race([judged, sleep(CLOSE_WAIT_MS, undefined, { ref: false })]);
      for (const c of connections.values()) c.socket.destroy();
      await closed;
      // The transactions still open are ended (counted, traced) before the store may close.
      for (const [key, inst] of [...instances]) endInstance(key, inst);
      await Promise.race([Promise.allSettled([...ending]), sleep(CLOSE_WAIT_MS, undefined, { ref: false })]);
    },
  };
}

function headerRank(h: string): number {
  if (!/^X-Spam-/i.test(h)) return 0;
  return /^X-Spam-(Flag|Status):/i.test(h) ? 1 : 2;
}
