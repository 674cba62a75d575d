// The queue manager (Postfix's qmgr), called the forwarder: takes committed messages from the spool and hands them to the downstream
// transport, at most queue.connections at a time. Temporary failures are retried on the
// queue.retry schedule until queue.max_age; permanent ones (and expired ones) bounce to the
// sender with an RFC 3464 DSN, never to the null sender. At start-up it resumes every message
// left in the spool, so nothing acknowledged is lost across a crash.
import fsp from 'node:fs/promises';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../util/log.ts';
import { DamagedSpoolFile, listQueue, messageBody, newQueueId, readQueueFile, type CommittedMessage, type DeliveryState, type Spool } from './spool.ts';
import type { Envelope } from '../mail/envelope.ts';
import { segmentPath, type JournalRef } from './journal.ts';
import { readAll, type MessageBody, type RcptResult, type Transport } from '../mail/transport.ts';
import { buildBounce, buildSuccessReport, type Bounce } from './dsn.ts';
import { metrics, type QueueStats } from '../util/metrics.ts';

interface Job {
  readonly envelope: Envelope;
  readonly size: number;
  /** CRC-32 of the message octets, checked when they are read back from disk. */
  readonly crc: number;
  rcpts: string[];
  attempts: number;
  /** The message octets while they are still in memory (first attempt only). */
  cached?: Buffer[];
  timer?: NodeJS.Timeout;
  nextAt: number;
  /** A .state file exists beside the spool file. */
  hasState: boolean;
  /** Set while the message lives in the journal (first attempt); else it has a queue file. */
  journal?: JournalRef;
  /** Reading the message back from disk found it damaged. */
  damaged?: DamagedSpoolFile;
}

/** Keep at most this many octets of queued messages in memory; the rest is read from disk. */
const CACHE_LIMIT = 64 * 1024 * 1024;

export class Forwarder {
  private readonly transport: Transport;
  private readonly spool: Spool;
  private config: Config;
  private readonly log: Logger;
  private readonly jobs = new Map<string, Job>();
  private readonly ready: Job[] = [];
  private readyHead = 0;
  private active = 0;
  private cachedBytes = 0;
  private stopped = false;
  private idle: (() => void) | undefined;
  private scanning: Promise<void> = Promise.resolve();

  constructor(opts: { transport: Transport; spool: Spool; config: Config; log: Logger }) {
    this.transport = opts.transport;
    this.spool = opts.spool;
    this.config = opts.config;
    this.log = opts.log.child({ component: 'forwarder' });
  }

  reload(config: Config): void {
    this.config = config;
    this.pump();
  }

  get queued(): number {
    return this.jobs.size;
  }

  /** The queue by state for the metrics: deferred (waiting for a retry timer) or active (ready or being delivered). */
  stats(): QueueStats {
    let active = 0;
    let deferred = 0;
    let activeOldest: number | undefined;
    let deferredOldest: number | undefined;
    for (const job of this.jobs.values()) {
      const at = job.envelope.receivedAt;
      if (job.timer !== undefined) {
        deferred++;
        if (deferredOldest === undefined || at < deferredOldest) deferredOldest = at;
      } else {
        active++;
        if (activeOldest === undefined || at < activeOldest) activeOldest = at;
      }
    }
    return { active: { count: active, oldestAt: activeOldest }, deferred: { count: deferred, oldestAt: deferredOldest } };
  }

  /** A freshly committed message: deliver as soon as a connection is free. */
  enqueue(msg: CommittedMessage): void {
    if (this.jobs.has(msg.envelope.id)) return; // a rescan found its file first
    let cached = msg.cached;
    if (cached && this.cachedBytes + msg.size > CACHE_LIMIT) cached = undefined;
    if (cached) this.cachedBytes += msg.size;
    const job: Job = { envelope: msg.envelope, size: msg.size, crc: msg.crc, rcpts: [...msg.envelope.rcpts], attempts: 0, cached, nextAt: Date.now(), hasState: false, journal: msg.journal };
    this.jobs.set(job.envelope.id, job);
    this.makeReady(job);
  }

  /**
   * Loads the spool directory: at start-up every queued message, later (SIGUSR1, after
   * `mxguard queue flush|delete`) new state from disk: deleted messages are dropped, and
   * deferred ones whose state file says "now" are retried now.
   */
  rescan(opts: { newOnly?: boolean } = {}): Promise<void> {
    // One scan at a time: two overlapping scans could both adopt a new file.
    const next = this.scanning.then(() => this.scan(opts));
    this.scanning = next.catch((err: unknown) => this.log.error({ err }, 'queue scan failed'));
    return next;
  }

  private async scan(opts: { newOnly?: boolean }): Promise<void> {
    const ids = new Set(await listQueue(this.spool.paths));
    const doneElsewhere = new Map<number, Set<string>>();
    // newOnly: just adopt the messages other processes (`mxguard stdio`) queued meanwhile.
    for (const [id, job] of opts.newOnly ? [] : this.jobs) {
      if (job.journal) {
        // `mxguard queue delete` marks journaled messages done in the segment's .done file.
        const seq = job.journal.seq;
        if (!doneElsewhere.has(seq)) doneElsewhere.set(seq, this.spool.journal.doneElsewhere(seq));
        if (doneElsewhere.get(seq)?.has(id)) this.drop(job);
      } else if (!ids.has(id)) this.drop(job);
    }
    for (const id of ids) {
      const known = this.jobs.get(id);
      if (known && (known.timer === undefined || opts.newOnly)) continue; // ready or being delivered
      if (this.spool.writing.has(id)) continue; // still being received
      let queued;
      try {
        queued = await readQueueFile(this.spool.paths, id);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        if (this.spool.writing.has(id) || this.jobs.has(id)) continue; // ours, and being written or moved right now
        // A file named <id> was complete when it was written (spool.ts): this one was acknowledged and is damaged.
        this.quarantine(id, err);
        continue;
      }
      const nextAt = queued.state?.nextAt ?? 0;
      // A message this process queued while the file was read is delivered from enqueue().
      if (!known && this.jobs.has(id)) continue;
      if (known) {
        if (nextAt < known.nextAt) {
          clearTimeout(known.timer);
          known.timer = undefined;
          this.schedule(known, nextAt);
        }
        continue;
      }
      const job: Job = {
        envelope: queued.envelope,
        size: queued.size,
        crc: queued.crc,
        rcpts: queued.state?.rcpts ?? [...queued.envelope.rcpts],
        attempts: queued.state?.attempts ?? 0,
        nextAt,
        hasState: queued.state !== undefined,
      };
      this.jobs.set(id, job);
      this.schedule(job, nextAt);
    }
  }

  /** Retries every deferred message now. */
  flush(): void {
    for (const job of this.jobs.values()) {
      if (job.timer) {
        clearTimeout(job.timer);
        job.timer = undefined;
        this.makeReady(job);
      }
    }
  }

  /**
   * Stops starting deliveries; waits up to graceMs for those under way, then closes the
   * transport (which cuts off the rest) and lets their attempts settle before the spool closes.
   */
  async stop(graceMs = 30_000): Promise<void> {
    this.stopped = true;
    for (const job of this.jobs.values()) if (job.timer) clearTimeout(job.timer);
    await this.whenIdle(graceMs);
    await this.transport.close();
    await this.whenIdle(2000);
  }

  private whenIdle(ms: number): Promise<void> {
    if (this.active === 0) return Promise.resolve();
    const done = new Promise<void>((r) => (this.idle = r));
    return Promise.race([done, new Promise<void>((r) => setTimeout(r, ms).unref())]);
  }

  private schedule(job: Job, at: number): void {
    job.nextAt = at;
    if (this.stopped) return; // the next start picks it up from the spool
    const wait = at - Date.now();
    if (wait <= 0) return this.makeReady(job);
    // setTimeout holds at most ~24.8 days; retry waits are far shorter, but be safe.
    job.timer = setTimeout(() => {
      job.timer = undefined;
      this.makeReady(job);
    }, Math.min(wait, 2 ** 31 - 1));
  }

  private makeReady(job: Job): void {
    this.ready.push(job);
    this.pump();
  }

  private pump(): void {
    while (!this.stopped && this.active < this.config.queue.connections && this.readyHead < this.ready.length) {
      const job = this.ready[this.readyHead++] as Job;
      if (this.readyHead > 1024 && this.readyHead * 2 > this.ready.length) {
        this.ready.splice(0, this.readyHead);
        this.readyHead = 0;
      }
      if (this.jobs.get(job.envelope.id) !== job) continue; // dropped meanwhile
      this.active++;
      void this.attempt(job)
        .catch((err: unknown) => {
          // A bug or an I/O error outside the transport: try again later rather than forget the job.
          this.log.error({ id: job.envelope.id, err }, 'delivery attempt failed');
          if (this.jobs.get(job.envelope.id) === job) this.schedule(job, Date.now() + (this.config.queue.retry[0] as number));
        })
        .finally(() => {
          this.active--;
          if (this.active === 0 && this.stopped) this.idle?.();
          this.pump();
        });
    }
  }

  /** The message as the transport reads it; damage found while reading is noted on the job. */
  private body(job: Job, stored = false): MessageBody {
    // As delivered: the policy's headers in front, the incoming fields it removed left out.
    const addHeaders = stored ? undefined : job.envelope.addHeaders;
    const cut = stored ? undefined : job.envelope.cut;
    const at = stored ? undefined : job.envelope.addHeadersAt;
    const opts = { cached: job.cached, crc: job.crc, onDamage: (err: DamagedSpoolFile) => (job.damaged = err), ...(cut ? { cut } : {}), ...(at ? { at } : {}) };
    const j = job.journal;
    if (j) return messageBody(segmentPath(this.spool.journal.dir, j.seq, 'log'), j.offset, job.size, addHeaders, opts);
    return messageBody(this.spool.queuePath(job.envelope.id), 0, job.size, addHeaders, opts);
  }

  /** The stored message octets (without the policy's edits), for moving a message out of the journal. */
  private async rawBody(job: Job): Promise<Buffer[]> {
    if (job.cached) return job.cached;
    const parts: Buffer[] = [];
    for await (const chunk of this.body(job, true).chunks()) parts.push(chunk);
    return parts;
  }

  private async attempt(job: Job): Promise<void> {
    const env = job.envelope;
    if (job.cached === undefined && job.journal === undefined) {
      // Read from disk: make sure an administrator did not delete it meanwhile.
      const exists = await fsp.access(this.spool.queuePath(env.id)).then(
        () => true,
        () => false,
      );
      if (!exists) return this.drop(job);
    }
    const started = Date.now();
    let results: RcptResult[];
    try {
      results = await this.transport.deliver({
        id: env.id,
        mailFrom: env.mailFrom,
        rcpts: job.rcpts,
        body: this.body(job),
        eightBit: env.eightBit,
        smtputf8: env.smtputf8,
        dsn: env.dsn,
        rcptDsn: env.rcptDsn,
        ...(env.dkim !== undefined ? { dkim: env.dkim } : {}),
      });
    } catch (err) {
      // Transports report trouble as results; an exception is a bug or an I/O error here.
      this.log.error({ id: env.id, err }, 'transport failed');
      results = job.rcpts.map((rcpt) => ({ rcpt, status: 'temp', code: 451, text: `4.3.0 local error: ${(err as Error).message}` }));
    }
    if (job.damaged) return this.setAsideDamaged(job);
    if (this.jobs.get(env.id) !== job) {
      // Deleted (`mxguard queue delete`) while this attempt was under way: nothing more to do.
      if (job.journal) this.spool.journal.done(job.journal, env.id);
      return;
    }
    job.attempts++;
    const now = Date.now();
    const failed: RcptResult[] = [];
    const deferred: RcptResult[] = [];
    let delivered = 0;
    for (const r of results) {
      const fields = { id: env.id, rcpt: r.rcpt, relay: r.relay ?? this.transport.name, status: r.status, reply: `${r.code} ${r.text}`, attempt: job.attempts, delay: (now - env.receivedAt) / 1000, took: now - started };
      if (r.status === 'ok') {
        delivered++;
        this.log.info(fields, 'delivered');
      } else if (r.status === 'perm') {
        this.log.info(fields, 'bounced');
        failed.push(r);
      } else deferred.push(r);
    }
    // A recipient the transport did not mention is retried: never assume delivery.
    const answered = new Set(results.map((r) => r.rcpt));
    for (const rcpt of job.rcpts) if (!answered.has(rcpt)) deferred.push({ rcpt, status: 'temp', code: 451, text: '4.3.0 no result from transport' });

    const expired = now - env.receivedAt >= this.config.queue.max_age;
    const bounced = failed.length;
    let expiredNow = 0;
    if (expired && deferred.length > 0) {
      for (const r of deferred) this.log.info({ id: env.id, rcpt: r.rcpt, reply: `${r.code} ${r.text}`, setting: 'queue.max_age' }, 'expired');
      failed.push(...deferred.map((r) => ({ ...r, status: 'perm' as const })));
      expiredNow = deferred.length;
      deferred.length = 0;
    }
    // Counted from the final lists, as they are logged: an expiring recipient is `expired` (not
    // deferred), one the transport gave no result for is deferred.
    metrics.delivery('delivered', delivered);
    metrics.delivery('bounced', bounced);
    metrics.delivery('expired', expiredNow);
    metrics.delivery('deferred', deferred.length);
    if (failed.length > 0) await this.bounce(job, failed, expired);
    // NOTIFY=SUCCESS that no downstream took on (it offered no DSN, or we delivered): ours to report.
    const succeeded = results.filter((r) => r.status === 'ok' && r.dsnAction !== undefined && env.rcptDsn?.[r.rcpt]?.notify?.includes('SUCCESS') === true);
    if (succeeded.length > 0) await this.notifySuccess(job, succeeded);

    if (deferred.length === 0) {
      this.release(job);
      this.jobs.delete(env.id);
      if (job.journal) this.spool.journal.done(job.journal, env.id);
      else this.spool.remove(env.id, job.hasState);
      return;
    }
    if (job.journal) {
      // A retry may be days away: give the message a queue file of its own, free the journal.
      try {
        await this.spool.moveOutOfJournal(env, await this.rawBody(job), job.size, job.crc);
      } catch (err) {
        this.log.error({ id: env.id, err: (err as Error).message }, 'could not move the message out of the journal; it stays there');
        this.release(job);
        this.schedule(job, now + (this.config.queue.retry[0] as number));
        return;
      }
      this.spool.journal.done(job.journal, env.id);
      job.journal = undefined;
    }
    this.release(job);
    const retry = this.config.queue.retry;
    const wait = retry[Math.min(job.attempts - 1, retry.length - 1)] as number;
    job.rcpts = deferred.map((r) => r.rcpt);
    const state: DeliveryState = { attempts: job.attempts, nextAt: now + wait, rcpts: job.rcpts, lastError: `${deferred[0]?.code} ${deferred[0]?.text}` };
    for (const r of deferred) this.log.info({ id: env.id, rcpt: r.rcpt, relay: r.relay ?? this.transport.name, reply: `${r.code} ${r.text}`, attempt: job.attempts, retryIn: wait / 1000 }, 'deferred');
    job.hasState = true;
    await this.spool.writeState(env.id, state).catch((err: Error) => this.log.warn({ id: env.id, err: err.message }, 'could not write delivery state'));
    this.schedule(job, state.nextAt);
  }

  /**
   * Queues a DSN to the sender for the failed recipients (never for the null sender, nor for a
   * recipient whose NOTIFY leaves out FAILURE: RFC 3461 4.1).
   */
  private async bounce(job: Job, failedAll: RcptResult[], expired: boolean): Promise<void> {
    const env = job.envelope;
    if (env.mailFrom === '' || !this.config.queue.bounce) {
      this.log.info({ id: env.id, rcpts: failedAll.map((r) => r.rcpt), setting: env.mailFrom === '' ? undefined : 'queue.bounce' }, 'no bounce sent');
      return;
    }
    const unwanted = failedAll.filter((r) => {
      const notify = env.rcptDsn?.[r.rcpt]?.notify;
      return notify !== undefined && !notify.includes('FAILURE');
    });
    if (unwanted.length > 0) this.log.info({ id: env.id, rcpts: unwanted.map((r) => r.rcpt), notify: unwanted.map((r) => env.rcptDsn?.[r.rcpt]?.notify?.join(',')) }, 'no bounce sent: NOTIFY');
    const failed = failedAll.filter((r) => !unwanted.includes(r));
    if (failed.length === 0) return;
    const body = this.body(job);
    // RET=FULL returns the whole message, up to RET_FULL_LIMIT (beyond it, the headers only).
    const full = env.dsn?.ret === 'FULL' && job.size <= RET_FULL_LIMIT ? await readAll(body) : undefined;
    const headers = full ? headerPart(full) : await readHeaderBlock(body);
    const dsn = buildBounce({
      reportingMta: this.config.hostname,
      original: { id: env.id, mailFrom: env.mailFrom, receivedAt: env.receivedAt, headers },
      failed,
      reason: expired ? 'delayed-expired' : 'failed',
      dsn: env.dsn,
      rcptDsn: env.rcptDsn,
      fullMessage: full,
    });
    await this.queueReport(job, dsn, 'sender non-delivery notification', 'could not queue the bounce');
  }

  /** Queues a success DSN (action delivered / relayed) for recipients that asked NOTIFY=SUCCESS. */
  private async notifySuccess(job: Job, delivered: RcptResult[]): Promise<void> {
    const env = job.envelope;
    if (env.mailFrom === '') return;
    const dsn = buildSuccessReport({
      reportingMta: this.config.hostname,
      original: { id: env.id, mailFrom: env.mailFrom, receivedAt: env.receivedAt, headers: await readHeaderBlock(this.body(job)) },
      delivered,
      dsn: env.dsn,
      rcptDsn: env.rcptDsn,
    });
    await this.queueReport(job, dsn, 'sender delivery status notification', 'could not queue the success notification');
  }

  private async queueReport(job: Job, dsn: Bounce, done: string, failed: string): Promise<void> {
    const env = job.envelope;
    const id = newQueueId();
    const writer = this.spool.begin(id, dsn.raw);
    const envelope: Envelope = {
      id,
      mailFrom: '',
      rcpts: dsn.rcpts,
      receivedAt: Date.now(),
      client: { ip: '127.0.0.1', helo: this.config.hostname, tls: false },
      eightBit: dsn.eightBit || undefined,
      smtputf8: dsn.smtputf8 || undefined,
    };
    try {
      const committed = await writer.commit(envelope);
      this.log.info({ id: env.id, bounce: id, to: env.mailFrom }, done);
      this.enqueue(committed);
    } catch (err) {
      await writer.abort().catch(() => undefined);
      this.log.error({ id: env.id, err }, failed);
    }
  }

  /** Frees the in-memory copy: later attempts read the file. */
  private release(job: Job): void {
    if (job.cached) {
      this.cachedBytes -= job.size;
      job.cached = undefined;
    }
  }

  private drop(job: Job): void {
    if (job.timer) clearTimeout(job.timer);
    this.release(job);
    if (job.journal) this.spool.journal.done(job.journal, job.envelope.id);
    this.jobs.delete(job.envelope.id);
    this.log.info({ id: job.envelope.id }, 'removed from queue');
  }

  /** A queue file that does not check out goes to spool/corrupt, with an error line; never deleted. */
  private quarantine(id: string, err: unknown): void {
    const kept = this.spool.quarantine(id);
    this.log.error({ id, err: (err as Error).message, kept: kept ?? 'could not be moved; left in place' }, 'damaged queue file set aside: not delivered');
  }

  /** The message read back from disk was damaged: nothing was delivered (no final dot); keep it aside. */
  private setAsideDamaged(job: Job): void {
    const env = job.envelope;
    if (job.timer) clearTimeout(job.timer);
    this.release(job);
    this.jobs.delete(env.id);
    if (job.journal) {
      const kept = this.spool.keepDamagedJournalRecord(env, job.journal);
      this.log.error({ id: env.id, err: job.damaged?.message, kept: kept ?? 'could not be copied' }, 'damaged journal record set aside: not delivered');
      this.spool.journal.done(job.journal, env.id);
    } else {
      this.quarantine(env.id, job.damaged);
    }
  }
}

/** RET=FULL returns messages up to this size whole (Postfix's bounce_size_limit is 50 kB). */
const RET_FULL_LIMIT = 256 * 1024;

/** The header block of a whole message (through the CRLF before the empty line). */
function headerPart(msg: Buffer): Buffer {
  const end = msg.indexOf('\r\n\r\n');
  return end === -1 ? msg : msg.subarray(0, end + 2);
}

/** The header block of a message (up to the first empty line, at most 64 KiB). */
export async function readHeaderBlock(body: MessageBody): Promise<Buffer> {
  const parts: Buffer[] = [];
  let len = 0;
  for await (const chunk of body.chunks()) {
    parts.push(chunk);
    len += chunk.length;
    const all = Buffer.concat(parts, len);
    const end = all.indexOf('\r\n\r\n');
    if (end !== -1) return all.subarray(0, end + 2);
    if (len > 65536) return all.subarray(0, 65536);
  }
  return Buffer.concat(parts, len);
}
