// The process's Prometheus metrics (issue 14), one registry for the whole process so that the
// SMTP sessions, the checks, the resolver and the forwarder count without any plumbing; the admin
// listener serves it at /metrics (src/admin/server.ts).
//
// The counters sit on the hot path (several per message), so they are not prom-client's own
// `inc(labels)`, which builds a label hash string on every call: each is a Tally, nested Maps of
// plain numbers keyed by the label values, copied into its prom-client Counter only when
// Prometheus scrapes. Labels are low-cardinality by construction (phases, reply codes, check
// and rule names from the config, DNS types): never an IP or an address. A Tally keeps at most
// MAX_SERIES label combinations and counts the rest under "other", so a bug cannot blow it up.
import fs from 'node:fs';
import type { Registry } from 'prom-client';
import { logDropped } from './log.ts';

/** Label combinations one metric keeps at most; more are counted under "other". */
const MAX_SERIES = 500;
const OTHER = 'other';

/** How a session ended (mxguard_sessions_total{end}). */
export type SessionEnd = 'quit' | 'disconnect' | 'timeout' | 'deadline' | 'too_many_errors' | 'refused' | 'shutdown' | 'input_ended';

/** What greylisting did with one recipient (mxguard_greylist_results_total{result}). */
export type GreylistResult = 'greylisted' | 'passed' | 'known' | 'allowed' | 'not_suspicious' | 'error';

/** A delivery attempt's result for one recipient (mxguard_delivery_attempts_total{result}). */
export type DeliveryResult = 'delivered' | 'bounced' | 'expired' | 'deferred';

/** Counts per pair of label values, read out at scrape. */
export class Tally<A, B> {
  private readonly counts = new Map<A | typeof OTHER, Map<B | typeof OTHER, number>>();
  private series = 0;

  add(a: A, b: B, n = 1): void {
    let inner = this.counts.get(a);
    if (inner === undefined) {
      if (this.series >= MAX_SERIES) return this.addOther(n);
      inner = new Map();
      this.counts.set(a, inner);
    }
    const v = inner.get(b);
    if (v !== undefined) inner.set(b, v + n);
    else if (this.series >= MAX_SERIES) this.addOther(n);
    else {
      inner.set(b, n);
      this.series++;
    }
  }

  private addOther(n: number): void {
    let inner = this.counts.get(OTHER);
    if (inner === undefined) this.counts.set(OTHER, (inner = new Map()));
    inner.set(OTHER, (inner.get(OTHER) ?? 0) + n);
  }

  get(a: A, b: B): number {
    return this.counts.get(a)?.get(b) ?? 0;
  }

  *entries(): IterableIterator<[A | typeof OTHER, B | typeof OTHER, number]> {
    for (const [a, inner] of this.counts) for (const [b, n] of inner) yield [a, b, n];
  }
}

const NONE = '';

/** The queue by state, as the forwarder holds it (Forwarder.stats()). */
export interface QueueStats {
  readonly active: { readonly count: number; readonly oldestAt: number | undefined };
  readonly deferred: { readonly count: number; readonly oldestAt: number | undefined };
}

/** Scanner time buckets, in seconds (mxguard_scanner_duration_seconds). */
const SCANNER_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** One scanner's histogram: counts per bucket (cumulative at scrape), sum and count. */
interface HistogramCounts {
  readonly buckets: number[];
  sum: number;
  count: number;
}

export class Metrics {
  private readonly version: string;
  private readonly sessions = new Tally<SessionEnd, string>();
  private readonly replies = new Tally<string, number>();
  private readonly verdicts = new Tally<string, string>();
  private readonly transactions = new Tally<string, string>();
  private readonly greylistResults = new Tally<GreylistResult, string>();
  private readonly rateHits = new Tally<string, string>();
  private readonly scannerErrors = new Tally<string, string>();
  private readonly dnsLookups = new Tally<string, string>();
  private readonly dnsCacheHits = new Tally<string, string>();
  private readonly deliveries = new Tally<DeliveryResult, string>();
  private readonly scannerTimes = new Map<string, HistogramCounts>();
  private queueSource: (() => QueueStats | undefined) | undefined;
  private greylistSource: (() => Promise<number>) | undefined;
  private registryP: Promise<Registry> | undefined;

  constructor(version: string) {
    this.version = version;
  }

  /**
   * The prom-client registry, built at the first scrape: prom-client takes ~40 ms to load, which
   * `mxguard stdio` (a process per connection) and the CLI must not pay. The Node.js and process
   * metrics (CPU, memory, event loop lag) come with it, only where /metrics is served.
   */
  registry(): Promise<Registry> {
    this.registryP ??= import('prom-client').then((client) => this.build(client));
    return this.registryP;
  }

  private build(client: typeof import('prom-client')): Registry {
    const { Counter, Gauge } = client;
    const r = new client.Registry();
    client.collectDefaultMetrics({ register: r });
    new Gauge({ name: 'mxguard_build_info', help: 'mxguard version and Node.js version (always 1)', labelNames: ['version', 'node'], registers: [r] }).set({ version: this.version, node: process.versions.node }, 1);
    const counter = <A, B>(name: string, help: string, labelNames: string[], tally: Tally<A, B>, labels: (a: A | typeof OTHER, b: B | typeof OTHER) => Record<string, string>): void => {
      new Counter({
        name,
        help,
        labelNames,
        registers: [r],
        collect() {
          this.reset();
          for (const [a, b, n] of tally.entries()) this.inc(labels(a, b), n);
        },
      });
    };
    counter('mxguard_sessions_total', 'SMTP sessions ended, by how they ended', ['end'], this.sessions, (a) => ({ end: a }));
    counter('mxguard_smtp_replies_total', 'SMTP replies sent, by the command (phase) answered and the reply code', ['phase', 'class', 'code'], this.replies, (phase, code) =>
      typeof code === 'number' && code > 0 ? { phase: phase.toLowerCase(), class: `${Math.floor(code / 100)}xx`, code: String(code) } : { phase: phase.toLowerCase(), class: OTHER, code: OTHER },
    );
    counter('mxguard_verdicts_total', 'Verdicts of the policy checks, by check and verdict kind', ['check', 'verdict'], this.verdicts, (check, verdict) => ({ check, verdict }));
    counter('mxguard_transactions_total', 'SMTP transactions (MAIL to their end), by outcome', ['outcome'], this.transactions, (outcome) => ({ outcome }));
    counter('mxguard_greylist_results_total', 'Greylisting decisions per recipient', ['result'], this.greylistResults, (result) => ({ result }));
    counter('mxguard_rate_limit_hits_total', 'limits.rates rules found over their limit, by rule name', ['rule'], this.rateHits, (rule) => ({ rule }));
    counter('mxguard_scanner_errors_total', 'Content scanners that failed (error) or did not answer in time (timeout)', ['scanner', 'kind'], this.scannerErrors, (scanner, kind) => ({ scanner, kind }));
    counter('mxguard_dns_lookups_total', 'DNS queries sent (not answered from the cache), by type and result', ['type', 'result'], this.dnsLookups, (type, result) => ({ type, result }));
    counter('mxguard_dns_cache_hits_total', 'DNS lookups answered from the cache, by type', ['type'], this.dnsCacheHits, (type) => ({ type }));
    counter('mxguard_delivery_attempts_total', 'Delivery attempts per recipient, by result (delivered, bounced, expired: deferred past queue.max_age and bounced, deferred)', ['result'], this.deliveries, (result) => ({ result }));
    r.registerMetric(this.scannerHistogram() as unknown as Parameters<Registry['registerMetric']>[0]);
    new Counter({
      name: 'mxguard_log_lines_dropped_total',
      help: 'Log lines that could not be written (full disk, I/O error) and were dropped',
      registers: [r],
      collect() {
        this.reset();
        this.inc(logDropped());
      },
    });
    const queue = (): QueueStats | undefined => this.queueSource?.();
    new Gauge({
      name: 'mxguard_queue_messages',
      help: 'Messages in the queue, by state (active: waiting for or in delivery; deferred: waiting for a retry)',
      labelNames: ['state'],
      registers: [r],
      collect() {
        this.reset();
        const s = queue();
        if (s) for (const state of ['active', 'deferred'] as const) this.set({ state }, s[state].count);
      },
    });
    new Gauge({
      name: 'mxguard_queue_oldest_age_seconds',
      help: 'Age of the oldest message in the queue, by state (0 when none)',
      labelNames: ['state'],
      registers: [r],
      collect() {
        this.reset();
        const s = queue();
        const now = Date.now();
        if (s) for (const state of ['active', 'deferred'] as const) this.set({ state }, ageSeconds(s[state].oldestAt, now));
      },
    });
    const pending = (): Promise<number> | undefined => this.greylistSource?.();
    new Gauge({
      name: 'mxguard_greylist_pending',
      help: 'Greylisted triplets waiting for their retry (read from the store at scrape; the last value read while it is unreachable)',
      registers: [r],
      async collect() {
        try {
          const n = await pending();
          if (n !== undefined) this.set(n);
        } catch {
          // Store unreachable: the last value stands rather than a failed scrape.
        }
      },
    });
    return r;
  }

  /** mxguard_scanner_duration_seconds as a metric the registry renders (what prom-client's Histogram.get() returns). */
  private scannerHistogram(): { name: string; help: string; type: string; get(): unknown } {
    const name = 'mxguard_scanner_duration_seconds';
    const help = 'Time each content scanner took per message';
    const times = this.scannerTimes;
    return {
      name,
      help,
      type: 'histogram',
      get() {
        const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
        for (const [scanner, h] of times) {
          let cumulative = 0;
          SCANNER_BUCKETS.forEach((le, i) => {
            cumulative += h.buckets[i] as number;
            values.push({ labels: { le, scanner }, value: cumulative, metricName: `${name}_bucket` });
          });
          values.push({ labels: { le: '+Inf', scanner }, value: h.count, metricName: `${name}_bucket` });
          values.push({ labels: { scanner }, value: h.sum, metricName: `${name}_sum` });
          values.push({ labels: { scanner }, value: h.count, metricName: `${name}_count` });
        }
        return { name, help, type: 'histogram', values, aggregator: 'sum' };
      },
    };
  }

  session(end: SessionEnd): void {
    this.sessions.add(end, NONE);
  }

  /** One SMTP reply; `text` starts with its code (a multi-line reply counts once). */
  reply(phase: string, text: string): void {
    const code = (text.charCodeAt(0) - 48) * 100 + (text.charCodeAt(1) - 48) * 10 + (text.charCodeAt(2) - 48);
    this.replies.add(phase, code >= 200 && code <= 599 ? code : 0);
  }

  verdict(check: string, kind: string): void {
    this.verdicts.add(check, kind);
  }

  transaction(outcome: string): void {
    this.transactions.add(outcome, NONE);
  }

  greylist(result: GreylistResult): void {
    this.greylistResults.add(result, NONE);
  }

  rateHit(rule: string): void {
    this.rateHits.add(rule, NONE);
  }

  /** One scanner's run: its time, and whether it failed. */
  scanner(name: string, seconds: number, error?: 'timeout' | 'error'): void {
    let h = this.scannerTimes.get(name);
    if (h === undefined) {
      if (this.scannerTimes.size >= MAX_SERIES) return;
      h = { buckets: SCANNER_BUCKETS.map(() => 0), sum: 0, count: 0 };
      this.scannerTimes.set(name, h);
    }
    const i = SCANNER_BUCKETS.findIndex((le) => seconds <= le);
    if (i >= 0) (h.buckets[i] as number)++;
    h.sum += seconds;
    h.count++;
    if (error) this.scannerErrors.add(name, error);
  }

  /** A DNS query sent: `result` ok, nxdomain, nodata, or the error code (timeout, servfail…). */
  dnsLookup(type: string, result: string): void {
    this.dnsLookups.add(type, result);
  }

  dnsCacheHit(type: string): void {
    this.dnsCacheHits.add(type, NONE);
  }

  /** `n` recipients of one attempt ended so (none: nothing counted, no empty series). */
  delivery(result: DeliveryResult, n = 1): void {
    if (n > 0) this.deliveries.add(result, NONE, n);
  }

  /** The running App's queue, read at scrape; undefined when it stops. */
  setQueueSource(src: (() => QueueStats | undefined) | undefined): void {
    this.queueSource = src;
  }

  /** The greylisting store's count of waiting triplets, read at scrape; undefined when it stops. */
  setGreylistSource(src: (() => Promise<number>) | undefined): void {
    this.greylistSource = src;
  }

  /** The queue as the App's source tells it (the /api/stats side of the dashboard). */
  queue(): QueueStats | undefined {
    return this.queueSource?.();
  }

  /** The text format Prometheus scrapes, and its content type. */
  async text(): Promise<{ body: string; contentType: string }> {
    const r = await this.registry();
    return { body: await r.metrics(), contentType: r.contentType };
  }
}

function ageSeconds(at: number | undefined, now: number): number {
  return at === undefined ? 0 : Math.max(0, Math.round((now - at) / 1000));
}

function packageVersion(): string {
  try {
    // Read once at start; a missing package.json (a bundled copy) must not stop mail.
    const pkg = fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8');
    return (JSON.parse(pkg) as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** The process-wide metrics. */
export const metrics = new Metrics(packageVersion());
