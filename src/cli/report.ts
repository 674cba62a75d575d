// mxguard report [LOGFILE ...]: a pflogsumm-style summary of mxguard's own log lines, JSON or text
// (log.format), read from the files or standard input, gunzipped when they start with gzip's
// magic (1f 8b), whatever their name. Other lines are ignored.
//
// What is counted, from which line:
//   received / refused / tempfailed / greylisted / discarded — the `transaction` line (text: the
//     `queued` or `transaction` line), one per transaction; the refusing check is the first entry
//     of its `checks` with the verdict of its outcome (reject, tempfail);
//   the policy service's — the `transaction` lines of component=policy-service (Postfix's mail,
//     judged by `policy.listen`): counted apart, never in the SMTP totals;
//   delivered / bounced / deferred / expired — the forwarder's lines, one per recipient (deferred:
//     one per attempt, and the messages they belong to);
//   connections — `connect`; connections refused — the server's "connection refused/dropped" lines.
import { once } from 'node:events';
import fs from 'node:fs';
import readline from 'node:readline';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { parseLogLine, type LogEvent } from '../util/log-text.ts';

/** How many entries the "top" tables keep. */
const TOP = 10;

export interface HourRow {
  /** "2026-12-02 14:00" (UTC, as the log's timestamps). */
  hour: string;
  received: number;
  delivered: number;
  deferred: number;
  bounced: number;
  refused: number;
  tempfailed: number;
}

export interface Counted {
  count: number;
  check: string;
  reason: string;
}

/** Postfix's transactions judged by mxguard's policy service (component=policy-service). */
export interface PolicyServiceCounts {
  /** With a recipient accepted (Postfix went on with it). */
  accepted: number;
  refused: number;
  tempfailed: number;
  greylisted: number;
  discarded: number;
  aborted: number;
  refusedBy: Counted[];
  tempfailedBy: Counted[];
}

export interface Report {
  lines: number;
  ours: number;
  first?: string;
  last?: string;
  received: number;
  receivedBytes: number;
  delivered: number;
  deferred: number;
  deferredMessages: number;
  bounced: number;
  expired: number;
  /** 5xx at SMTP. */
  refused: number;
  /** 4xx at SMTP, greylisting included. */
  tempfailed: number;
  greylisted: number;
  discarded: number;
  aborted: number;
  connections: number;
  connectionsRefused: number;
  /** 5xx by check and reason, most first. */
  refusedBy: Counted[];
  /** 4xx by check and reason, most first. */
  tempfailedBy: Counted[];
  /** Connections refused before SMTP, by check. */
  connectionsRefusedBy: { check: string; count: number }[];
  topRefusedClients: { client: string; count: number }[];
  topRefusedSenders: { sender: string; count: number }[];
  perHour: HourRow[];
  /** The policy service's transactions: not in received, refused, tempfailed… above (those are mxguard's SMTP). */
  policyService: PolicyServiceCounts;
}

const str = (v: unknown): string => (typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' ? String(v) : '');
const num = (v: unknown): number => {
  const n = typeof v === 'number' ? v : typeof v === 'string' ? Number(v) : NaN;
  return Number.isFinite(n) ? n : 0;
};

/** The reply without its codes, addresses and counts, so that one reason is one row. */
export function reasonOf(reply: string): string {
  return reply
    .replace(/^[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3} )?/, '')
    .replace(/<[^>]*>/g, '<…>')
    .replace(/\b\d+ seconds\b/g, 'N seconds')
    .trim()
    .slice(0, 200);
}

/** The check that refused: the first entry of `checks` ("name:verdict…,…") with the outcome's verdict. */
export function refusingCheck(checks: string, verdict: 'reject' | 'tempfail'): string {
  for (const entry of checks.split(',')) {
    const m = /^([^:]+):([a-z]+)/.exec(entry);
    if (m && m[2] === verdict) return m[1] as string;
  }
  return 'smtp';
}

/** Adds up events one at a time (a log can be larger than memory). */
export class Summary {
  private lines = 0;
  private ours = 0;
  private first: string | undefined;
  private last: string | undefined;
  private readonly n = { received: 0, receivedBytes: 0, delivered: 0, deferred: 0, bounced: 0, expired: 0, refused: 0, tempfailed: 0, greylisted: 0, discarded: 0, aborted: 0, connections: 0, connectionsRefused: 0 };
  private readonly deferredIds = new Set<string>();
  private readonly refusedBy = new Map<string, Counted>();
  private readonly tempfailedBy = new Map<string, Counted>();
  private readonly connRefusedBy = new Map<string, number>();
  private readonly clients = new Map<string, number>();
  private readonly senders = new Map<string, number>();
  private readonly hours = new Map<string, HourRow>();
  private readonly policy = { accepted: 0, refused: 0, tempfailed: 0, greylisted: 0, discarded: 0, aborted: 0 };
  private readonly policyRefusedBy = new Map<string, Counted>();
  private readonly policyTempfailedBy = new Map<string, Counted>();

  /** One line of a log: ours (either format) is counted, any other only as read. */
  addLine(line: string): void {
    this.lines++;
    const ev = parseLogLine(line);
    if (ev) this.add(ev);
  }

  add(ev: LogEvent): void {
    this.ours++;
    if (this.first === undefined || ev.time < this.first) this.first = ev.time;
    if (this.last === undefined || ev.time > this.last) this.last = ev.time;
    const f = ev.fields;
    const isTransaction = ev.msg === 'transaction' || (ev.msg === 'queued' && ev.format === 'text' && f.outcome !== undefined);
    if (isTransaction) return this.transaction(ev);
    switch (ev.msg) {
      case 'connect':
        if (f.sid !== undefined) this.n.connections++;
        return;
      case 'delivered':
        this.n.delivered++;
        this.hour(ev).delivered++;
        return;
      case 'bounced':
        this.n.bounced++;
        this.hour(ev).bounced++;
        return;
      case 'expired':
        this.n.expired++;
        return;
      case 'deferred':
        this.n.deferred++;
        this.hour(ev).deferred++;
        if (typeof f.id === 'string' && this.deferredIds.size < 1_000_000) this.deferredIds.add(f.id);
        return;
    }
    if (ev.msg.startsWith('connection refused') || ev.msg.startsWith('connection dropped')) {
      this.n.connectionsRefused++;
      const check = str(f.check) || 'smtp';
      this.connRefusedBy.set(check, (this.connRefusedBy.get(check) ?? 0) + 1);
    }
  }

  /** One more row of a "by check and reason" table; the check. */
  private static countRefusal(table: Map<string, Counted>, f: LogEvent['fields'], verdict: 'reject' | 'tempfail'): string {
    const check = refusingCheck(str(f.checks), verdict);
    const reason = reasonOf(str(f.reply));
    const key = `${check}\u0000${reason}`;
    const row = table.get(key) ?? { count: 0, check, reason };
    row.count++;
    table.set(key, row);
    return check;
  }

  /** Postfix's transaction as the policy service judged it: its own counts. */
  private policyTransaction(ev: LogEvent): void {
    const outcome = str(ev.fields.outcome);
    const p = this.policy;
    if (outcome === 'accepted') p.accepted++;
    else if (outcome === 'discarded') p.discarded++;
    else if (outcome === 'refused') {
      p.refused++;
      Summary.countRefusal(this.policyRefusedBy, ev.fields, 'reject');
    } else if (outcome === 'tempfailed') {
      p.tempfailed++;
      if (Summary.countRefusal(this.policyTempfailedBy, ev.fields, 'tempfail') === 'greylist') p.greylisted++;
    } else p.aborted++;
  }

  private transaction(ev: LogEvent): void {
    const f = ev.fields;
    if (f.component === 'policy-service') return this.policyTransaction(ev);
    const outcome = str(f.outcome);
    if (outcome === 'accepted') {
      this.n.received++;
      this.n.receivedBytes += num(f.size);
      this.hour(ev).received++;
      return;
    }
    if (outcome === 'discarded') {
      this.n.discarded++;
      return;
    }
    if (outcome !== 'refused' && outcome !== 'tempfailed') {
      this.n.aborted++;
      return;
    }
    const refused = outcome === 'refused';
    const check = Summary.countRefusal(refused ? this.refusedBy : this.tempfailedBy, f, refused ? 'reject' : 'tempfail');
    if (refused) {
      this.n.refused++;
      this.hour(ev).refused++;
      const ip = str(f.ip);
      if (ip !== '') this.clients.set(ip, (this.clients.get(ip) ?? 0) + 1);
      const from = typeof f.from === 'string' ? f.from : undefined;
      if (from !== undefined) this.senders.set(from === '' ? '<>' : from, (this.senders.get(from === '' ? '<>' : from) ?? 0) + 1);
    } else {
      this.n.tempfailed++;
      this.hour(ev).tempfailed++;
      if (check === 'greylist') this.n.greylisted++;
    }
  }

  private hour(ev: LogEvent): HourRow {
    const key = `${ev.time.slice(0, 10)} ${ev.time.slice(11, 13)}:00`;
    let row = this.hours.get(key);
    if (!row) {
      row = { hour: key, received: 0, delivered: 0, deferred: 0, bounced: 0, refused: 0, tempfailed: 0 };
      this.hours.set(key, row);
    }
    return row;
  }

  result(): Report {
    const byCount = <T extends { count: number }>(a: T, b: T) => b.count - a.count;
    const top = <K extends string>(m: Map<string, number>, key: K) =>
      [...m].map(([k, count]) => ({ [key]: k, count }) as Record<K, string> & { count: number }).sort(byCount).slice(0, TOP);
    return {
      lines: this.lines,
      ours: this.ours,
      ...(this.first !== undefined ? { first: this.first } : {}),
      ...(this.last !== undefined ? { last: this.last } : {}),
      ...this.n,
      deferredMessages: this.deferredIds.size,
      refusedBy: [...this.refusedBy.values()].sort(byCount),
      tempfailedBy: [...this.tempfailedBy.values()].sort(byCount),
      connectionsRefusedBy: [...this.connRefusedBy].map(([check, count]) => ({ check, count })).sort(byCount),
      topRefusedClients: top(this.clients, 'client'),
      topRefusedSenders: top(this.senders, 'sender'),
      perHour: [...this.hours.values()].sort((a, b) => (a.hour < b.hour ? -1 : 1)),
      policyService: { ...this.policy, refusedBy: [...this.policyRefusedBy.values()].sort(byCount), tempfailedBy: [...this.policyTempfailedBy.values()].sort(byCount) },
    };
  }
}

/** The summary of these lines (for tests and small logs). */
export function summarize(lines: Iterable<string>): Report {
  const s = new Summary();
  for (const line of lines) s.addLine(line);
  return s.result();
}

function kB(bytes: number): string {
  return bytes < 1024 ? `${bytes} B` : bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(1)} kB` : `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** The report as pflogsumm prints it: grand totals, the refusals, the top offenders, per hour. */
export function formatReport(r: Report): string {
  const out: string[] = [];
  const pad = (n: number, w = 7) => String(n).padStart(w);
  out.push(`mxguard report: ${r.ours} of ${r.lines} lines are mxguard's${r.first ? `, ${r.first} to ${r.last}` : ''}`, '');
  out.push('Grand totals');
  const totals: [string, number, string?][] = [
    ['received', r.received, `(${kB(r.receivedBytes)})`],
    ['delivered', r.delivered, '(recipients)'],
    ['deferred', r.deferred, `(attempts, ${r.deferredMessages} messages)`],
    ['bounced', r.bounced, '(recipients)'],
    ['expired', r.expired, '(recipients, queue.max_age)'],
    ['refused', r.refused, '(5xx at SMTP)'],
    ['tempfailed', r.tempfailed, '(4xx at SMTP)'],
    ['greylisted', r.greylisted],
    ['discarded', r.discarded],
    ['connections', r.connections],
    ['conn. refused', r.connectionsRefused, '(before SMTP)'],
  ];
  for (const [name, n, note] of totals) out.push(`  ${pad(n)}  ${name.padEnd(14)}${note ?? ''}`.trimEnd());
  const table = (title: string, rows: readonly string[]) => {
    out.push('', title);
    if (rows.length === 0) out.push('  none');
    else out.push(...rows);
  };
  table('Refused (5xx) by check and reason', r.refusedBy.map((c) => `  ${pad(c.count)}  ${c.check.padEnd(16)} ${c.reason}`));
  table('Tempfailed (4xx) by check and reason', r.tempfailedBy.map((c) => `  ${pad(c.count)}  ${c.check.padEnd(16)} ${c.reason}`));
  if (r.connectionsRefusedBy.length > 0) table('Connections refused by check', r.connectionsRefusedBy.map((c) => `  ${pad(c.count)}  ${c.check}`));
  table('Top refused clients', r.topRefusedClients.map((c) => `  ${pad(c.count)}  ${c.client}`));
  table('Top refused senders', r.topRefusedSenders.map((c) => `  ${pad(c.count)}  ${c.sender}`));
  table('Per hour (UTC)', [
    `  ${'hour'.padEnd(16)} ${['received', 'delivered', 'deferred', 'bounced', 'refused', 'tempfailed'].map((h) => h.padStart(11)).join('')}`,
    ...r.perHour.map((h) => `  ${h.hour.padEnd(16)} ${[h.received, h.delivered, h.deferred, h.bounced, h.refused, h.tempfailed].map((n) => pad(n, 11)).join('')}`),
  ]);
  const p = r.policyService;
  if (p.accepted + p.refused + p.tempfailed + p.discarded + p.aborted > 0) {
    out.push('', "Policy service (Postfix's transactions; not in the totals above)");
    const policyTotals: [string, number][] = [
      ['accepted', p.accepted],
      ['refused', p.refused],
      ['tempfailed', p.tempfailed],
      ['greylisted', p.greylisted],
      ['discarded', p.discarded],
      ['aborted', p.aborted],
    ];
    for (const [name, n] of policyTotals) out.push(`  ${pad(n)}  ${name}`);
    if (p.refusedBy.length > 0) table('Policy service: refused (5xx) by check and reason', p.refusedBy.map((c) => `  ${pad(c.count)}  ${c.check.padEnd(16)} ${c.reason}`));
    if (p.tempfailedBy.length > 0) table('Policy service: tempfailed (4xx) by check and reason', p.tempfailedBy.map((c) => `  ${pad(c.count)}  ${c.check.padEnd(16)} ${c.reason}`));
  }
  return out.join('\n');
}

/** gzip's magic number, the first two octets of every gzip file (RFC 1952 2.3.1). */
const GZIP_MAGIC = [0x1f, 0x8b];

/**
 * `input` as it reads, gunzipped when it starts with gzip's magic (a rotated log, whatever its
 * name, or `cat mail.log.2.gz |`). Reads the first octets to decide; errors of `input` come
 * through the stream returned.
 */
export async function decompressed(input: Readable): Promise<Readable> {
  const chunks = input[Symbol.asyncIterator]() as AsyncIterator<Buffer | string>;
  let head = Buffer.alloc(0);
  let ended = false;
  while (head.length < GZIP_MAGIC.length) {
    const next = await chunks.next();
    if (next.done === true) {
      ended = true;
      break;
    }
    head = Buffer.concat([head, Buffer.from(next.value)]);
  }
  async function* all(): AsyncGenerator<Buffer> {
    if (head.length > 0) yield head;
    if (ended) return;
    for (;;) {
      const next = await chunks.next();
      if (next.done === true) return;
      yield Buffer.from(next.value);
    }
  }
  const raw = Readable.from(all(), { objectMode: false });
  if (head[0] !== GZIP_MAGIC[0] || head[1] !== GZIP_MAGIC[1]) return raw;
  const gunzip = zlib.createGunzip();
  raw.on('error', (err) => gunzip.destroy(err));
  return raw.pipe(gunzip);
}

/** Feeds every line of `input` (gunzipped when it starts with gzip's magic) to `summary`. */
async function readInto(summary: Summary, input: Readable): Promise<void> {
  // Log lines are bounded by us, but a foreign file need not be: a line is cut at 1 MiB.
  const rl = readline.createInterface({ input: await decompressed(input), crlfDelay: Infinity });
  for await (const line of rl) summary.addLine(line.length > 1 << 20 ? line.slice(0, 1 << 20) : line);
}

/** The file as a stream; throws here if it cannot be opened. */
async function openInput(file: string): Promise<Readable> {
  const stream = fs.createReadStream(file);
  await once(stream, 'open');
  return stream;
}

/** `mxguard report [LOGFILE ...] [--json]`: standard input when no file is given. */
export async function reportCommand(files: readonly string[], opts: { json?: boolean }, stdin: Readable = process.stdin): Promise<string> {
  const summary = new Summary();
  if (files.length === 0) await readInto(summary, stdin);
  for (const file of files) {
    try {
      await readInto(summary, await openInput(file));
    } catch (err) {
      throw new Error(`${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
    }
  }
  const r = summary.result();
  return opts.json ? JSON.stringify(r, null, 2) : formatReport(r);
}
