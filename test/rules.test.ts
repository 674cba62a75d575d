// The Obtuse smtpd rules file (issue 4, Must show 2 and 5) through real SMTP sessions, with the
// client's reverse DNS served by a real dnsmasq: allow / deny (answers, then closes) / noto
// (refuses that recipient, the session goes on), %I %H %T expansion, KNOWN / UNKNOWN, noto_delay,
// IDENT (RFC 1413, asked of a real oidentd) for user@host sources and %U, and `mxguard check`
// naming a rules line that does not parse.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { withTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { startDnsmasq } from './harness/dns.ts';
import { startOidentd } from './harness/identd.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');
// Seed 004's example shape (test/fixtures/obtuse-example.rules), keyed to this test's client.
const RULES = `# internal network and mail hub
allow:192.168.1.0/24 192.168.2.25:ALL:ALL
# a spam source: refuse and hang up
deny:ALL:*@spammer.test:ALL:550 Mail from %I (%H) refused%C go away
# no reverse DNS: not for this domain
deny:UNKNOWN:ALL:*@strict.example.test:550 %I has no reverse DNS
# mail for us is welcome
allow:ALL:ALL:*@example.test *@strict.example.test
# anything else would be relaying
noto:ALL:ALL:ALL:550 Relaying denied%C %I may not send to %T through this host
`;

let dir = '';
let rulesFile = '';
let withPtr: Awaited<ReturnType<typeof startDnsmasq>>;
let withoutPtr: Awaited<ReturnType<typeof startDnsmasq>>;
before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-rules-'));
  rulesFile = path.join(dir, 'smtpd_check_rules');
  fs.writeFileSync(rulesFile, RULES);
  // 127.0.0.1 → client.example.test → 127.0.0.1: forward-confirmed, so KNOWN.
  [withPtr, withoutPtr] = await Promise.all([
    startDnsmasq({ records: { a: { 'client.example.test': ['127.0.0.1'] }, ptr: { '127.0.0.1': ['client.example.test'] } } }),
    startDnsmasq({ records: {} }),
  ]);
});
after(async () => {
  await withPtr?.stop();
  await withoutPtr?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

function config(dnsPort: number, extra: Record<string, unknown> = {}) {
  return { rules_file: rulesFile, dns: { servers: [`127.0.0.1:${dnsPort}`], timeout: '2s' }, ...extra };
}

async function open(app: TestApp, from: string): Promise<RawClient> {
  const c = await RawClient.connect(app.port);
  await c.reply();
  c.send(`EHLO client.example.test\r\nMAIL FROM:<${from}>\r\n`);
  await c.replies(2);
  return c;
}

test('allow, noto (the session goes on) and deny (answer, then 421 and close), with %I %H %T', async () => {
  await withTestApp(config(withPtr.port), async (app) => {
    const c = await open(app, 'friend@src.test');
    c.send('RCPT TO:<outside@far.test>\r\n');
    assert.equal(await c.reply(), '550 5.7.1 Relaying denied: 127.0.0.1 may not send to <outside@far.test> through this host');
    c.send('RCPT TO:<user@example.test>\r\n');
    assert.equal(await c.reply(), '250 2.1.5 Ok', 'noto keeps the session');
    c.send('DATA\r\n');
    assert.match(await c.reply(), /^354 /);
    c.send('Subject: allowed\r\n\r\nhi\r\n.\r\n');
    assert.match(await c.reply(), /^250 2\.0\.0 Ok: queued/);
    c.close();

    const d = await open(app, 'boss@spammer.test');
    d.send('RCPT TO:<user@example.test>\r\nRCPT TO:<other@example.test>\r\n');
    assert.deepEqual(await d.replies(2), ['550 5.7.1 Mail from 127.0.0.1 (client.example.test) refused: go away', '421 4.7.0 mx.example.test Service not available, closing transmission channel']);
    assert.ok(await d.closed(), 'deny ends the session; the pipelined RCPT is not answered');
    const lines = app.logs().filter((l) => l.check === 'rules_file').map((l) => String(l.msg));
    assert.ok(lines.some((m) => /noto by line 10 of /.test(m)), lines.join("\n"));
    assert.ok(lines.some((m) => /denied by line 4 of /.test(m)), lines.join("\n"));
  });
});

test('KNOWN / UNKNOWN follow the client\'s forward-confirmed reverse DNS', async () => {
  await withTestApp(config(withPtr.port), async (app) => {
    const c = await open(app, 'a@src.test');
    c.send('RCPT TO:<x@strict.example.test>\r\n');
    assert.equal(await c.reply(), '250 2.1.5 Ok', 'KNOWN: the deny:UNKNOWN rule does not apply');
    c.close();
  });
  await withTestApp(config(withoutPtr.port), async (app) => {
    const c = await open(app, 'a@src.test');
    c.send('RCPT TO:<x@strict.example.test>\r\n');
    assert.deepEqual(await c.replies(2), ['550 5.7.1 127.0.0.1 has no reverse DNS', '421 4.7.0 mx.example.test Service not available, closing transmission channel']);
    c.close();
  });
});

test('noto_delay holds the refusal back', async () => {
  await withTestApp(config(withPtr.port, { noto_delay: '700ms' }), async (app) => {
    const c = await open(app, 'a@src.test');
    const t0 = Date.now();
    c.send('RCPT TO:<outside@far.test>\r\n');
    assert.match(await c.reply(3000), /^550 5\.7\.1 Relaying denied/);
    assert.ok(Date.now() - t0 >= 680, `held ${Date.now() - t0} ms`);
    c.close();
  });
});

test('ident: true asks the client\'s real identd (oidentd): user@host sources and %U', async (t) => {
  const identd = await startOidentd();
  t.after(() => identd.stop());
  const me = os.userInfo().username; // oidentd names the owner of our client socket
  const identRules = path.join(dir, 'ident_rules');
  fs.writeFileSync(identRules, `noto:${me}@ALL:ALL:*@private.example.test:550 5.7.1 %U@%I may not write to %T\nallow:ALL:ALL:ALL\n`);
  const settings = { rules_file: identRules, ident: true, ident_port: identd.port, ident_timeout: '3s' };
  await withTestApp(config(withPtr.port, settings), async (app) => {
    const c = await open(app, 'friend@src.test');
    c.send('RCPT TO:<boss@private.example.test>\r\n');
    assert.equal(await c.reply(), `550 5.7.1 ${me}@127.0.0.1 may not write to <boss@private.example.test>`);
    c.send('RCPT TO:<user@example.test>\r\n');
    assert.equal(await c.reply(), '250 2.1.5 Ok');
    c.close();
    const asked = app.logs().find((l) => l.check === 'rules_file' && /smtp connection from /.test(String(l.msg)));
    // smtpd's log line names the IDENT user (the host stays UNKNOWN: no rule here needs its name).
    assert.match(String(asked?.msg), new RegExp(`^smtp connection from ${me}@UNKNOWN\\(127\\.0\\.0\\.1\\) attempted`));
  });
  // No identd answering (its port closed): no user, so the user@host rule cannot match.
  const closed = { ...settings, ident_port: identd.port };
  await identd.stop();
  await withTestApp(config(withPtr.port, closed), async (app) => {
    const c = await open(app, 'friend@src.test');
    c.send('RCPT TO:<boss@private.example.test>\r\n');
    assert.equal(await c.reply(), '250 2.1.5 Ok');
    c.close();
  });
});

test('mxguard check (and start) name a rules line that cannot parse, with its line number', () => {
  const bad = path.join(dir, 'bad.rules');
  fs.writeFileSync(bad, 'allow:ALL:ALL:ALL\n\n# fine so far\nmaybe:ALL:ALL:ALL\ndeny:ALL:ALL\n');
  const cfg = path.join(dir, 'bad.yaml');
  fs.writeFileSync(cfg, stringify({ data_dir: path.join(dir, 'var'), rules_file: bad }));
  const check = spawnSync(process.execPath, [MAIN, 'check', '-c', cfg], { encoding: 'utf8' });
  assert.equal(check.status, 1);
  assert.match(check.stderr, new RegExp(`${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:4:\\d+: rules_file: `));
  assert.match(check.stderr, new RegExp(`${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:5:\\d+: rules_file: `));
  const start = spawnSync(process.execPath, [MAIN, 'start', '-c', cfg], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(start.status, 1, 'mxguard refuses to start');
});
