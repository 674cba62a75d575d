// Issue 14, Must show 3: the real daemon (`mxguard start`, a separate process) with the admin
// listener, greylisting on and a banned sender, given a scripted mix by swaks: N accepted, M
// refused and K greylisted sessions. /metrics (Prometheus' text format, parsed here) counts
// exactly what was sent; /api/history finds the refused one by sender with its verdict; releasing
// a greylisted transaction from the history lets the triplet's retry through.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { startMxguard, type MxguardProcess } from './harness/mxguard-process.ts';
import { startDnsZoneServer } from './harness/dns-zone-server.ts';
import { freePort, makeTempDir, runSwaks, waitUntil, type SwaksResult } from './harness/peers.ts';

const TOKEN = 'metrics-history-token-0123456789';
const N = 3; // accepted
const M = 2; // refused (banned sender)
const K = 2; // greylisted

interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

/** Prometheus' text format (0.0.4): one sample a line, `# HELP` / `# TYPE` comments. */
function parseMetrics(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types.set(type[1] as string, type[2] as string);
    if (line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)",?/g)) labels[l[1] as string] = (l[2] as string).replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    samples.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return { samples, types };
}

/** The value of the sample with exactly these labels (0 when there is none: a counter not yet counted). */
function valueOf(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number {
  const want = Object.entries(labels).sort();
  const hits = samples.filter((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === JSON.stringify(want));
  assert.ok(hits.length <= 1, `${name} ${JSON.stringify(labels)} twice`);
  return hits[0]?.value ?? 0;
}

/** The sum over every sample of a metric whose labels include these. */
function sumOf(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((n, s) => n + s.value, 0);
}

test('metrics count the scripted mix exactly; the history finds the refused sender; release from the history lets the greylisted retry through', { timeout: 120_000 }, async (t) => {
  const dir = await makeTempDir('metrics-history');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const [port, adminPort] = [await freePort(), await freePort()];
  // The senders' domains exist (mail_from.require_domain asks): a real DNS server on loopback.
  const zone = await startDnsZoneServer({
    'sender.test': [{ MX: [10, 'mx.sender.test'] }],
    'spam.test': [{ MX: [10, 'mx.spam.test'] }],
    'mx.sender.test': [{ A: '192.0.2.25' }],
    'mx.spam.test': [{ A: '192.0.2.26' }],
  });
  t.after(() => zone.stop());
  const mx: MxguardProcess = await startMxguard(
    dir,
    {
      hostname: 'mx.example.test',
      data_dir: path.join(dir, 'var'),
      local_domains: ['example.test'],
      // Loopback is not a relay client here, or greylisting would waive every test client.
      relay: { forward_from_ip: ['192.0.2.0/24'] },
      greylist: { when: 'always', allow_recipients: ['ok*@example.test'] },
      ban: { mailfrom: ['*@spam.test'] },
      // One session per address: the refusal below comes from 127.0.0.3, swaks from 127.0.0.1.
      limits: { max_connections_per_ip: 1 },
      admin: { listen: `127.0.0.1:${adminPort}`, token: TOKEN },
      history: { keep: 1000 },
      dns: { servers: [zone.server] },
    },
    port,
  );
  t.after(async () => {
    await mx.stop();
  });
  const admin = async (p: string, opts: { method?: string; token?: string | null } = {}): Promise<{ status: number; text: string; type: string | null }> => {
    const headers: Record<string, string> = opts.token === null ? {} : { authorization: `Bearer ${opts.token ?? TOKEN}` };
    const r = await fetch(`http://127.0.0.1:${adminPort}${p}`, { method: opts.method ?? 'GET', headers });
    return { status: r.status, text: await r.text(), type: r.headers.get('content-type') };
  };
  const json = async <T>(p: string, method = 'GET'): Promise<{ status: number; body: T }> => {
    const r = await admin(p, { method });
    return { status: r.status, body: JSON.parse(r.text) as T };
  };
  const scrape = async (): Promise<Sample[]> => {
    const r = await admin('/metrics');
    assert.equal(r.status, 200, r.text);
    assert.match(r.type ?? '', /^text\/plain; version=0\.0\.4/);
    return parseMetrics(r.text).samples;
  };
  const send = (from: string, to: string): Promise<SwaksResult> =>
    runSwaks(['--server', '127.0.0.1', '--port', String(port), '--helo', 'client.example.org', '--from', from, '--to', to, '--body', 'A message.', '--header', 'Subject: mix']);

  // The admin listener opens just after the SMTP one the harness waited for.
  const up = await waitUntil(() => fetch(`http://127.0.0.1:${adminPort}/healthz`).then((r) => r.ok, () => false), 10_000);
  assert.ok(up, 'the admin listener answers');
  assert.equal((await admin('/metrics', { token: null })).status, 401, '/metrics needs the token');
  assert.equal((await admin('/metrics', { token: 'wrong-token-wrong-token-0000000' })).status, 401);

  // --- the scripted mix --------------------------------------------------------------------
  // The harness's readiness probe (connect, close) was one session: wait for its end, then count from here.
  let before: Sample[] = [];
  assert.ok(await waitUntil(async () => sumOf((before = await scrape()), 'mxguard_sessions_total') >= 1, 10_000), 'the probe session ended');
  assert.equal(valueOf(before, 'mxguard_sessions_total', { end: 'quit' }), 0);
  for (let i = 0; i < N; i++) {
    const r = await send(`alice${i}@sender.test`, `ok${i}@example.test`);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /<- {2}250 2\.0\.0 Ok: queued as /);
  }
  for (let i = 0; i < M; i++) {
    const r = await send(`spammer${i}@spam.test`, `user${i}@example.test`);
    assert.match(r.stdout, /<\*\* 550 5\.7\.1 <spammer\d@spam\.test>: Sender address rejected/);
  }
  for (let i = 0; i < K; i++) {
    const r = await send(`carol${i}@sender.test`, `grey${i}@example.test`);
    assert.match(r.stdout, /<\*\* 451 4\.7\.1 Greylisted, please try again in 300 seconds/);
  }
  const all = N + M + K;

  // Delivery to the Maildir is asynchronous: wait for it in the metrics themselves (counted as
  // each recipient is delivered, a moment before the message leaves the queue).
  let s: Sample[] = [];
  const delivered = (x: Sample[]): boolean => valueOf(x, 'mxguard_delivery_attempts_total', { result: 'delivered' }) >= N && sumOf(x, 'mxguard_queue_messages') === 0;
  assert.ok(await waitUntil(async () => delivered((s = await scrape())), 20_000), 'the accepted messages were delivered');
  assert.equal(sumOf(before, 'mxguard_delivery_attempts_total'), 0);

  // --- /metrics: exactly what was sent ---------------------------------------------------------
  const expect: Array<[string, Record<string, string>, number]> = [
    ['mxguard_sessions_total', { end: 'quit' }, all],
    ['mxguard_transactions_total', { outcome: 'accepted' }, N],
    ['mxguard_transactions_total', { outcome: 'refused' }, M],
    ['mxguard_transactions_total', { outcome: 'tempfailed' }, K],
    ['mxguard_smtp_replies_total', { phase: 'connect', class: '2xx', code: '220' }, all],
    ['mxguard_smtp_replies_total', { phase: 'ehlo', class: '2xx', code: '250' }, all],
    ['mxguard_smtp_replies_total', { phase: 'mail', class: '2xx', code: '250' }, all], // the ban is answered at RCPT (smtp.delay_reject)
    ['mxguard_smtp_replies_total', { phase: 'rcpt', class: '2xx', code: '250' }, N],
    ['mxguard_smtp_replies_total', { phase: 'rcpt', class: '5xx', code: '550' }, M],
    ['mxguard_smtp_replies_total', { phase: 'rcpt', class: '4xx', code: '451' }, K],
    ['mxguard_smtp_replies_total', { phase: 'data', class: '3xx', code: '354' }, N],
    ['mxguard_smtp_replies_total', { phase: 'data_end', class: '2xx', code: '250' }, N],
    ['mxguard_smtp_replies_total', { phase: 'quit', class: '2xx', code: '221' }, all],
    ['mxguard_verdicts_total', { check: 'ban_mailfrom', verdict: 'reject' }, M],
    ['mxguard_verdicts_total', { check: 'ban_mailfrom', verdict: 'continue' }, N + K],
    ['mxguard_verdicts_total', { check: 'greylist', verdict: 'tempfail' }, K],
    ['mxguard_greylist_results_total', { result: 'greylisted' }, K],
    ['mxguard_greylist_results_total', { result: 'allowed' }, N],
    ['mxguard_greylist_pending', {}, K],
    ['mxguard_delivery_attempts_total', { result: 'delivered' }, N],
    ['mxguard_queue_messages', { state: 'active' }, 0],
    ['mxguard_queue_messages', { state: 'deferred' }, 0],
    ['mxguard_log_lines_dropped_total', {}, 0],
  ];
  // Counters: what the mix added; gauges: their value now.
  const gauge = (name: string): boolean => name === 'mxguard_greylist_pending' || name.startsWith('mxguard_queue_');
  for (const [name, labels, want] of expect) assert.equal(valueOf(s, name, labels) - (gauge(name) ? 0 : valueOf(before, name, labels)), want, `${name}${JSON.stringify(labels)}`);
  // Nothing else was counted: every session, reply and delivery is one of the above.
  const added = (name: string): number => sumOf(s, name) - sumOf(before, name);
  assert.equal(added('mxguard_sessions_total'), all);
  assert.equal(added('mxguard_smtp_replies_total'), all * 5 + 2 * N);
  assert.equal(added('mxguard_delivery_attempts_total'), N);
  assert.equal(added('mxguard_greylist_results_total'), N + K);
  // DNS: every question the server got was counted once, by type and result; the rest came from the cache.
  assert.equal(added('mxguard_dns_lookups_total'), zone.queries.length, JSON.stringify(zone.queries));
  for (const q of zone.queries) assert.ok(valueOf(s, 'mxguard_dns_lookups_total', { type: q.type, result: q.outcome === 'answer' ? 'ok' : q.outcome }) >= 1, JSON.stringify(q));
  assert.equal(valueOf(s, 'mxguard_build_info', { version: JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version as string, node: process.versions.node }), 1);
  assert.ok(s.some((x) => x.name === 'process_cpu_user_seconds_total'), 'the process metrics too');
  // Low cardinality: no client address, no mail address in any label.
  for (const x of s) for (const v of Object.values(x.labels)) assert.doesNotMatch(v, /@|127\.0\.0\.1|example\.|sender\.test/, `${x.name} ${JSON.stringify(x.labels)}`);

  // --- a connection refused before any session (limits.max_connections_per_ip) is counted too ---
  const rawClient = (): Promise<{ socket: net.Socket; text: () => string }> =>
    new Promise((resolve, reject) => {
      let text = '';
      const socket = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.3' }, () => resolve({ socket, text: () => text }));
      socket.setEncoding('latin1');
      socket.on('data', (d: string) => (text += d));
      socket.once('error', reject);
    });
  const held = await rawClient();
  t.after(() => held.socket.destroy());
  assert.ok(await waitUntil(() => /^220 /.test(held.text()), 5000), held.text());
  const extra = await rawClient();
  t.after(() => extra.socket.destroy());
  assert.ok(await waitUntil(() => /^421 /.test(extra.text()), 5000), extra.text());
  assert.match(extra.text(), /^421 4\.7\.0 mx\.example\.test Error: too many connections from 127\.0\.0\.3\r\n$/);
  const r421 = await scrape();
  assert.equal(valueOf(r421, 'mxguard_sessions_total', { end: 'refused' }) - valueOf(s, 'mxguard_sessions_total', { end: 'refused' }), 1);
  assert.equal(valueOf(r421, 'mxguard_smtp_replies_total', { phase: 'connect', class: '4xx', code: '421' }) - valueOf(s, 'mxguard_smtp_replies_total', { phase: 'connect', class: '4xx', code: '421' }), 1);
  assert.equal(sumOf(r421, 'mxguard_smtp_replies_total') - sumOf(s, 'mxguard_smtp_replies_total'), 2, 'the 421, and the held session\'s 220');
  held.socket.write('QUIT\r\n');
  assert.ok(await waitUntil(() => /221 /.test(held.text()), 5000), held.text());

  // --- /api/history ------------------------------------------------------------------------------
  interface Item {
    seq: number;
    at: number;
    sid: string;
    ip: string;
    helo?: string;
    mailFrom: string;
    rcpts: string[];
    refused: { rcpt: string; reply: string; check: string }[];
    id?: string;
    entries: { phase: string; check: string; verdict: string; reply?: string }[];
    score: number;
    reply?: string;
    outcome: string;
  }
  const refused = await json<{ items: Item[] }>('/api/history?sender=SPAMMER1@spam');
  assert.equal(refused.status, 200);
  assert.equal(refused.body.items.length, 1, 'case-insensitive piece of the sender');
  const r = refused.body.items[0] as Item;
  assert.equal(r.mailFrom, 'spammer1@spam.test');
  assert.equal(r.ip, '127.0.0.1');
  assert.equal(r.helo, 'client.example.org');
  assert.equal(r.outcome, 'refused');
  assert.match(r.reply ?? '', /^550 5\.7\.1 <spammer1@spam\.test>: Sender address rejected/);
  assert.deepEqual(r.refused, [{ rcpt: 'user1@example.test', reply: r.reply, check: 'ban_mailfrom' }]);
  assert.ok(r.entries.some((e) => e.phase === 'mail' && e.check === 'ban_mailfrom' && e.verdict === 'reject'), JSON.stringify(r.entries));
  assert.equal((await json<Item>(`/api/history/${r.seq}`)).body.mailFrom, 'spammer1@spam.test');
  const byCheck = await json<{ items: Item[] }>('/api/history?check=ban_mailfrom');
  assert.deepEqual(byCheck.body.items.map((i) => i.mailFrom), ['spammer1@spam.test', 'spammer0@spam.test'], 'newest first');
  const accepted = await json<{ items: Item[] }>('/api/history?outcome=accepted&limit=2');
  assert.equal(accepted.body.items.length, 2);
  assert.ok(accepted.body.items.every((i) => i.outcome === 'accepted' && i.id !== undefined));
  assert.equal((await json<{ items: Item[] }>('/api/history?ip=127.0.0.1&limit=1000')).body.items.length, all);
  assert.equal((await json<{ error: string }>('/api/history?outcome=spam')).status, 400);
  assert.equal((await json<{ error: string }>('/api/history?limit=5000')).status, 400);
  assert.equal((await admin('/api/history', { token: null })).status, 401);
  assert.equal((await json<{ error: string }>('/api/history/999999')).status, 404);

  // --- /api/stats ----------------------------------------------------------------------------------
  const stats = await json<{ now: number; minutes: Array<Record<string, number> & { t: number; byCheck: Record<string, number> }>; queue: Record<string, number> }>('/api/stats');
  assert.equal(stats.status, 200);
  assert.equal(stats.body.minutes.length, 60);
  const total = (k: string): number => stats.body.minutes.reduce((n, m) => n + (m[k] as number), 0);
  assert.deepEqual([total('accepted'), total('refused'), total('tempfailed')], [N, M, K]);
  assert.equal(stats.body.minutes.reduce((n, m) => n + (m.byCheck.ban_mailfrom ?? 0), 0), M);
  assert.equal(stats.body.minutes.reduce((n, m) => n + (m.byCheck.greylist ?? 0), 0), K);
  assert.deepEqual(stats.body.queue, { active: 0, deferred: 0, oldestAgeSeconds: 0 });

  // --- release from the history --------------------------------------------------------------------
  const grey = (await json<{ items: Item[] }>('/api/history?rcpt=grey0@example.test')).body.items;
  assert.equal(grey.length, 1);
  const g = grey[0] as Item;
  assert.deepEqual(g.refused.map((x) => [x.rcpt, x.check]), [['grey0@example.test', 'greylist']], 'the greylisted recipient is in the trace');
  assert.equal((await json<{ error: string }>(`/api/history/${r.seq}/release`, 'POST')).status, 409, 'nothing greylisted in the refused one');
  assert.equal((await json<{ error: string }>('/api/history/999999/release', 'POST')).status, 404);
  const stillGrey = await send('carol1@sender.test', 'grey1@example.test');
  assert.match(stillGrey.stdout, /451 4\.7\.1 Greylisted/, 'without a release, a retry now is still greylisted');
  const released = await json<{ released: string[] }>(`/api/history/${g.seq}/release`, 'POST');
  assert.equal(released.status, 200);
  assert.deepEqual(released.body, { released: ['127.0.0.0/24|carol0@sender.test|grey0@example.test'] });
  const retry = await send('carol0@sender.test', 'grey0@example.test');
  assert.equal(retry.code, 0, retry.stdout + retry.stderr);
  assert.match(retry.stdout, /<- {2}250 2\.0\.0 Ok: queued as /);
  const after = await scrape();
  assert.equal(valueOf(after, 'mxguard_transactions_total', { outcome: 'accepted' }), N + 1);
  assert.equal(valueOf(after, 'mxguard_greylist_results_total', { result: 'greylisted' }), K + 1);
  assert.equal(valueOf(after, 'mxguard_greylist_results_total', { result: 'known' }), 1, 'the released triplet passes as a known one');
  assert.equal(valueOf(after, 'mxguard_greylist_pending', {}), K - 1);
  const last = (await json<{ items: Item[] }>('/api/history?limit=1')).body.items[0] as Item;
  assert.deepEqual([last.mailFrom, last.rcpts, last.outcome], ['carol0@sender.test', ['grey0@example.test'], 'accepted']);
});
