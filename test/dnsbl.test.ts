// DNS blocklists (issue 4, "DNS blocklists", Must show 1 and 4) through real SMTP sessions
// against real DNS: rbldnsd serves the lists, dnsmasq is mxguard's resolver (dns.servers) and
// forwards the list zones to it, with one zone that never answers and one that answers SERVFAIL.
// The test client is 127.0.0.1, so that is the address the ip4set zones list.
//
// Covered: a listed client refused at RCPT (smtp.delay_reject) with the list's TXT reason, or at
// connect without delay_reject; postscreen's weights and threshold, an allowlist pulling the sum
// down; the answers filter (and 127.255.255.x, "query refused", never counting); reply 4xx and
// action tempfail; action score → X-DNSBL in the delivered message; RHSBL on the sender's domain
// and on the HELO name; a list that times out (the reply waits at most dns.timeout, the mail is
// accepted) and one that answers SERVFAIL (accepted, logged); answers cached across sessions.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import type { ConfigInput } from '../src/config/schema.ts';
import { withTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { startDnsmasq, startRbldnsd, type DnsmasqPeer, type RbldnsdPeer } from './harness/dns.ts';
import { waitUntil } from './harness/peers.ts';

/** dns.timeout in the failure-mode tests. */
const TIMEOUT_MS = 1000;
/** Upper-bound slack for a loaded machine. */
const SLACK_MS = 1500;

/** No test may hang the run. */
const LIMIT = { timeout: 60_000 };

const BL_REASON = 'Listed in bl.test, see http://bl.test/lookup?ip=127.0.0.1';

let rbl: RbldnsdPeer;
let dm: DnsmasqPeer;

before(async () => {
  const me = ['127.0.0.1'];
  rbl = await startRbldnsd({
    ttl: 300,
    zones: {
      'bl.test': { type: 'ip4set', entries: me, txt: 'Listed in bl.test, see http://bl.test/lookup?ip=$' },
      'two.test': { type: 'ip4set', entries: me, txt: 'Two says $ is bad' },
      'three.test': { type: 'ip4set', entries: me },
      // A DNSWL answers 127.0.<category>.<trust>.
      'wl.test': { type: 'ip4set', entries: me, a: '127.0.10.2', txt: 'Allowlisted' },
      'only3.test': { type: 'ip4set', entries: me, a: '127.0.0.3', txt: 'Code 3 for $' },
      // Spamhaus's "you asked through a public resolver".
      'refusing.test': { type: 'ip4set', entries: me, a: '127.255.255.254', txt: 'Query refused' },
      'clean.test': { type: 'ip4set', entries: ['192.0.2.1'], txt: 'not you' },
      'dbl.test': { type: 'dnset', entries: ['spam-sender.test', 'spam-helo.test'], a: '127.0.1.2', txt: 'Domain $ is listed' },
    },
  });
  const zones = ['bl.test', 'two.test', 'three.test', 'wl.test', 'only3.test', 'refusing.test', 'clean.test', 'dbl.test'];
  dm = await startDnsmasq({
    forward: Object.fromEntries(zones.map((z) => [z, rbl.port])),
    timeout: ['slowbl.test'],
    servfail: ['sfbl.test'],
  });
});

after(async () => {
  await dm?.stop();
  await rbl?.stop();
});

/** The test app's settings: our dnsmasq as resolver, sender domains not looked up, these lists. */
function settings(dnsbl: NonNullable<ConfigInput['dnsbl']>, extra: Partial<ConfigInput> = {}): Partial<ConfigInput> {
  return { dns: { servers: [dm.server], timeout: '3s' }, mail_from: { require_domain: false }, dnsbl, ...extra };
}

interface Dialogue {
  /** banner, EHLO, MAIL, RCPT: first lines. */
  replies: string[];
  /** ms from connect to each reply. */
  at: number[];
}

/** Connect, EHLO, MAIL, RCPT one at a time (so each reply's time is its own), then QUIT. */
async function dialogue(app: TestApp, opts: { helo?: string; from?: string; to?: string } = {}): Promise<Dialogue> {
  const t0 = performance.now();
  const c = await RawClient.connect(app.port);
  const replies: string[] = [];
  const at: number[] = [];
  const next = async (send?: string): Promise<void> => {
    if (send !== undefined) c.send(send);
    replies.push(((await c.reply(10_000)).split('\n')[0] as string) ?? '');
    at.push(performance.now() - t0);
  };
  try {
    await next();
    await next(`EHLO ${opts.helo ?? 'client.example'}\r\n`);
    await next(`MAIL FROM:<${opts.from ?? 'a@src.test'}>\r\n`);
    await next(`RCPT TO:<${opts.to ?? 'u@example.test'}>\r\n`);
    c.send('QUIT\r\n');
    return { replies, at };
  } finally {
    c.close();
  }
}

/** The RCPT reply of a whole dialogue. */
async function rcptReply(app: TestApp, opts: { helo?: string; from?: string } = {}): Promise<string> {
  return (await dialogue(app, opts)).replies[3] as string;
}

/** The log lines of one check. */
function linesOf(app: TestApp, check: string): Array<Record<string, unknown>> {
  return app.logs().filter((l) => l.check === check);
}

function messages(app: TestApp, check: string): string[] {
  return linesOf(app, check).map((l) => String(l.msg));
}

test('a listed client is refused at RCPT with the list\'s TXT reason; an unlisted one passes', LIMIT, async () => {
  await withTestApp(settings({ zones: [{ zone: 'bl.test' }] }), async (app) => {
    const d = await dialogue(app);
    assert.match(d.replies[0] as string, /^220 /, 'greeted: the refusal waits for RCPT (smtp.delay_reject)');
    assert.match(d.replies[1] as string, /^250/);
    assert.equal(d.replies[2], '250 2.1.0 Ok');
    assert.equal(d.replies[3], `554 5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test; ${BL_REASON}`);
    const rcptLine = linesOf(app, 'dnsbl').find((l) => l.phase === 'rcpt');
    assert.ok(rcptLine, JSON.stringify(app.logs()));
    assert.equal(rcptLine.setting, 'dnsbl.zones');
    assert.equal(rcptLine.rcpt, 'u@example.test');
    assert.equal(rcptLine.from, 'a@src.test');
    assert.ok(messages(app, 'dnsbl').some((m) => m === 'dnsbl: client [127.0.0.1]: bl.test=127.0.0.2 (+1); sum 1, threshold 1'), JSON.stringify(messages(app, 'dnsbl')));
  });
  await withTestApp(settings({ zones: [{ zone: 'clean.test' }] }), async (app) => {
    assert.equal(await rcptReply(app), '250 2.1.5 Ok');
    assert.deepEqual(linesOf(app, 'dnsbl'), [], 'nothing answered: nothing to log');
  });
  await withTestApp(settings({ zones: [{ zone: 'bl.test' }] }, { smtp: { delay_reject: false } }), async (app) => {
    const c = await RawClient.connect(app.port);
    try {
      assert.equal(await c.reply(10_000), `554 5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test; ${BL_REASON}`, 'without delay_reject: instead of the banner');
      assert.ok(await c.closed(5000));
    } finally {
      c.close();
    }
  });
});

test('weights and threshold: two lists of weight 1 reach 2; an allowlist of weight -5 overrides them', LIMIT, async () => {
  const two = [
    { zone: 'two.test', weight: 1 },
    { zone: 'three.test', weight: 1 },
  ];
  await withTestApp(settings({ zones: two, threshold: 2 }), async (app) => {
    assert.equal(await rcptReply(app), '554 5.7.1 Service unavailable; client [127.0.0.1] blocked using two.test; Two says 127.0.0.1 is bad');
    assert.ok(messages(app, 'dnsbl').includes('dnsbl: client [127.0.0.1]: two.test=127.0.0.2 (+1), three.test=127.0.0.2 (+1); sum 2, threshold 2'));
  });
  await withTestApp(settings({ zones: [{ zone: 'two.test' }, { zone: 'three.test', weight: 2 }], threshold: 2 }), async (app) => {
    assert.equal(await rcptReply(app), '554 5.7.1 Service unavailable; client [127.0.0.1] blocked using three.test', 'the heaviest list names the reason (three.test has no TXT)');
  });
  await withTestApp(settings({ zones: two, threshold: 3 }), async (app) => {
    assert.equal(await rcptReply(app), '250 2.1.5 Ok', 'sum 2 stays under threshold 3');
    assert.ok(messages(app, 'dnsbl').includes('dnsbl: client [127.0.0.1]: two.test=127.0.0.2 (+1), three.test=127.0.0.2 (+1); sum 2, threshold 3'));
  });
  await withTestApp(settings({ zones: [...two, { zone: 'wl.test', weight: -5 }], threshold: 2 }), async (app) => {
    assert.equal(await rcptReply(app), '250 2.1.5 Ok', 'the allowlist wins');
    assert.ok(messages(app, 'dnsbl').includes('dnsbl: client [127.0.0.1]: two.test=127.0.0.2 (+1), three.test=127.0.0.2 (+1), wl.test=127.0.10.2 (-5); sum -3, threshold 2; allowlisted, scored -5'), JSON.stringify(messages(app, 'dnsbl')));
  });
});

test('answers filter: a list answering 127.0.0.3 counts only where 127.0.0.3 is asked for; 127.255.255.x never', LIMIT, async () => {
  await withTestApp(settings({ zones: [{ zone: 'only3.test', answers: ['127.0.0.2'] }] }), async (app) => {
    assert.equal(await rcptReply(app), '250 2.1.5 Ok');
    assert.ok(messages(app, 'dnsbl').includes('dnsbl: client [127.0.0.1]: only3.test=127.0.0.3 (not counted); sum 0, threshold 1'));
  });
  await withTestApp(settings({ zones: [{ zone: 'only3.test', answers: ['127.0.0.2-3'] }] }), async (app) => {
    assert.equal(await rcptReply(app), '554 5.7.1 Service unavailable; client [127.0.0.1] blocked using only3.test; Code 3 for 127.0.0.1');
  });
  await withTestApp(settings({ zones: [{ zone: 'refusing.test', weight: 5 }] }), async (app) => {
    assert.equal(await rcptReply(app), '250 2.1.5 Ok', '"query refused" is no listing');
    assert.ok(messages(app, 'dnsbl').includes('dnsbl: client [127.0.0.1]: refusing.test=127.255.255.254 (query refused by the list, not counted); sum 0, threshold 1'));
  });
});

test('reply 4xx per zone: 450 4.7.1 when every deciding list says 4xx; action tempfail', LIMIT, async () => {
  await withTestApp(settings({ zones: [{ zone: 'bl.test', reply: '4xx' }] }), async (app) => {
    assert.equal(await rcptReply(app), `450 4.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test; ${BL_REASON}`);
  });
  await withTestApp(settings({ zones: [{ zone: 'bl.test', reply: '4xx' }, { zone: 'two.test' }] }), async (app) => {
    assert.match(await rcptReply(app), /^554 5\.7\.1 Service unavailable; client \[127\.0\.0\.1\] blocked using bl\.test; /, 'one 5xx list among the deciding ones makes it 5xx');
  });
  await withTestApp(settings({ zones: [{ zone: 'bl.test' }], action: 'tempfail' }), async (app) => {
    assert.equal(await rcptReply(app), `450 4.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test; ${BL_REASON}`);
  });
});

test('action score: the mail is accepted and carries X-DNSBL naming the lists', LIMIT, async () => {
  await withTestApp(settings({ zones: [{ zone: 'bl.test' }, { zone: 'three.test' }, { zone: 'clean.test' }], action: 'score', score: 6 }), async (app) => {
    const c = await RawClient.connect(app.port);
    try {
      assert.match(await c.reply(10_000), /^220 /);
      c.send('EHLO client.example\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<tagged@example.test>\r\nDATA\r\n');
      const r = await c.replies(4, 10_000);
      assert.equal(r[2], '250 2.1.5 Ok');
      assert.match(r[3] as string, /^354 /);
      c.send('Subject: listed\r\n\r\nhello\r\n.\r\n');
      assert.match(await c.reply(10_000), /^250 2\.0\.0 Ok: queued/);
    } finally {
      c.close();
    }
    const [file] = await app.waitMaildir('tagged', 1);
    assert.ok(file, 'delivered');
    const head = fs.readFileSync(file, 'utf8').split('\r\n\r\n')[0] as string;
    // One header naming both lists (clean.test did not answer), folded at the comma: it is long.
    assert.match(head, new RegExp(`^X-DNSBL: bl\\.test \\(${BL_REASON.replace(/[.?/]/g, '\\$&')}\\),\r\n\tthree\\.test\r\n`, 'm'), head);
    assert.ok(messages(app, 'dnsbl').some((m) => m.endsWith('sum 2, threshold 1; scored 6')), JSON.stringify(messages(app, 'dnsbl')));
  });
});

test('RHSBL on the sender\'s domain: refused at RCPT; the null sender is not looked up', LIMIT, async () => {
  await withTestApp(settings({ rhsbl_sender: [{ zone: 'dbl.test' }] }), async (app) => {
    const d = await dialogue(app, { from: 'x@spam-sender.test' });
    assert.equal(d.replies[2], '250 2.1.0 Ok');
    assert.equal(d.replies[3], '554 5.7.1 Service unavailable; sender domain [spam-sender.test] blocked using dbl.test; Domain spam-sender.test is listed');
    const line = linesOf(app, 'rhsbl_sender').find((l) => l.phase === 'rcpt');
    assert.equal(line?.setting, 'dnsbl.rhsbl_sender');
    assert.equal(await rcptReply(app, { from: 'x@good.test' }), '250 2.1.5 Ok');
    assert.equal(await rcptReply(app, { from: '' }), '250 2.1.5 Ok');
    await rbl.sync();
    const asked = rbl.queries().map((q) => q.name);
    assert.ok(asked.includes('spam-sender.test.dbl.test') && asked.includes('good.test.dbl.test'));
    assert.ok(!asked.some((n) => n === 'dbl.test' || n.startsWith('.')), 'the null sender asks nothing');
  });
});

test('RHSBL on the HELO name: refused at RCPT; address literals are not looked up', LIMIT, async () => {
  await withTestApp(settings({ rhsbl_helo: [{ zone: 'dbl.test' }] }), async (app) => {
    const d = await dialogue(app, { helo: 'spam-helo.test' });
    assert.match(d.replies[1] as string, /^250/, 'EHLO itself is answered; the refusal waits for RCPT');
    assert.equal(d.replies[3], '554 5.7.1 Service unavailable; helo name [spam-helo.test] blocked using dbl.test; Domain spam-helo.test is listed');
    assert.equal(linesOf(app, 'rhsbl_helo').find((l) => l.phase === 'rcpt')?.setting, 'dnsbl.rhsbl_helo');
    assert.equal(await rcptReply(app, { helo: 'mail.good.test' }), '250 2.1.5 Ok');
    const before = (await rbl.sync(), rbl.queries().length);
    assert.equal(await rcptReply(app, { helo: '[127.0.0.1]' }), '250 2.1.5 Ok');
    await rbl.sync();
    assert.deepEqual(rbl.queries().slice(before), [], 'an address literal asks nothing');
  });
});

test('a list that times out delays the reply by at most dns.timeout and never refuses; RHSBL too', LIMIT, async (t) => {
  const zones = [{ zone: 'slowbl.test', weight: 5 }, { zone: 'bl.test' }];
  await withTestApp(settings({ zones, threshold: 2, rhsbl_sender: [{ zone: 'slowbl.test', weight: 5 }] }, { dns: { servers: [dm.server], timeout: `${TIMEOUT_MS}ms` } }), async (app) => {
    const packets = dm.stubPackets().blackhole;
    const t0 = performance.now();
    const c = await RawClient.connect(app.port);
    try {
      const banner = await c.reply(10_000);
      const bannerMs = performance.now() - t0;
      assert.match(banner, /^220 /);
      c.send('EHLO client.example\r\n');
      await c.reply(10_000);
      const t1 = performance.now();
      c.send('MAIL FROM:<a@src.test>\r\n');
      assert.equal(await c.reply(10_000), '250 2.1.0 Ok');
      const mailMs = performance.now() - t1;
      c.send('RCPT TO:<slow@example.test>\r\n');
      assert.equal(await c.reply(10_000), '250 2.1.5 Ok', 'the slow list (weight 5) does not count; bl.test alone (1) is under 2');
      const rcptMs = performance.now() - t0;
      c.send('DATA\r\n');
      assert.match(await c.reply(10_000), /^354 /);
      c.send('Subject: slow lists\r\n\r\nhello\r\n.\r\n');
      assert.match(await c.reply(10_000), /^250 2\.0\.0 Ok: queued/);
      t.diagnostic(`timeout: banner after ${bannerMs.toFixed(0)} ms, MAIL reply after ${mailMs.toFixed(0)} ms, RCPT reply ${rcptMs.toFixed(0)} ms after connect (dns.timeout ${TIMEOUT_MS} ms)`);
      assert.ok(bannerMs <= TIMEOUT_MS + SLACK_MS, `banner after ${bannerMs} ms`);
      assert.ok(mailMs <= TIMEOUT_MS + SLACK_MS, `MAIL reply after ${mailMs} ms`);
      assert.ok(rcptMs <= 2 * TIMEOUT_MS + SLACK_MS, `RCPT reply after ${rcptMs} ms`);
      assert.ok(bannerMs >= TIMEOUT_MS * 0.8, `the list really was waited for (${bannerMs} ms)`);
    } finally {
      c.close();
    }
    assert.equal((await app.waitMaildir('slow', 1)).length, 1, 'delivered');
    assert.ok(dm.stubPackets().blackhole > packets, 'the question really went to the silent upstream');
    assert.ok(messages(app, 'dnsbl').includes('dnsbl: client [127.0.0.1]: slowbl.test: timeout, not counted, bl.test=127.0.0.2 (+1); sum 1, threshold 2'), JSON.stringify(messages(app, 'dnsbl')));
    assert.ok(messages(app, 'rhsbl_sender').includes('rhsbl_sender: sender domain [src.test]: slowbl.test: timeout, not counted; sum 0, threshold 2'));
    const warned = await waitUntil(() => app.logs().some((l) => l.level === 40 && String(l.name ?? '').endsWith('.slowbl.test')), 3000);
    assert.ok(warned, 'the failed lookup is logged as a warning');
    assert.ok(!app.logs().some((l) => l.verdict === 'reject' || l.verdict === 'tempfail'), 'nothing refused');
  });
});

test('a list that answers SERVFAIL: accepted at once, logged', LIMIT, async (t) => {
  await withTestApp(settings({ zones: [{ zone: 'sfbl.test', weight: 5 }], rhsbl_helo: [{ zone: 'sfbl.test', weight: 5 }] }, { dns: { servers: [dm.server], timeout: `${TIMEOUT_MS}ms` } }), async (app) => {
    const packets = dm.stubPackets().servfail;
    const d = await dialogue(app, { helo: 'mail.good.test' });
    assert.equal(d.replies[3], '250 2.1.5 Ok');
    t.diagnostic(`servfail: RCPT reply ${(d.at[3] ?? 0).toFixed(0)} ms after connect`);
    assert.ok(dm.stubPackets().servfail > packets, 'the question reached the SERVFAIL upstream');
    assert.ok(messages(app, 'dnsbl').includes('dnsbl: client [127.0.0.1]: sfbl.test: servfail, not counted; sum 0, threshold 1'), JSON.stringify(messages(app, 'dnsbl')));
    assert.ok(messages(app, 'rhsbl_helo').includes('rhsbl_helo: helo name [mail.good.test]: sfbl.test: servfail, not counted; sum 0, threshold 1'));
    assert.ok(app.logs().some((l) => l.level === 40 && String(l.name ?? '').endsWith('.sfbl.test')), 'logged as a warning');
  });
});

test('answers are cached: a second session from the same client asks rbldnsd nothing', LIMIT, async () => {
  await withTestApp(settings({ zones: [{ zone: 'bl.test' }, { zone: 'clean.test' }] }), async (app) => {
    await rbl.sync();
    const before = rbl.queries().length;
    const first = await rcptReply(app);
    const second = await rcptReply(app);
    assert.equal(first, `554 5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test; ${BL_REASON}`);
    assert.equal(second, first, 'the same answer, reason included, from the cache');
    await rbl.sync();
    const asked = rbl.queries().slice(before).map((q) => `${q.type} ${q.name}`);
    assert.deepEqual(asked.sort(), ['A 1.0.0.127.bl.test', 'A 1.0.0.127.clean.test', 'TXT 1.0.0.127.bl.test'], 'each question once: the listing, its TXT, and the negative answer');
  });
});
