// Legitimate mail that Postfix takes and mxguard must take too (issue 9, "Legitimate mail refused
// or mangled"): long body lines, long VERP/SRS local parts, IDN local domains in Unicode, quoted
// local parts, RFC 6531's Received keywords, VRFY syntax, and invalid UTF-8 refused instead of
// passed on as U+FFFD. Real SMTP over loopback against an in-process mxguard delivering into
// Maildir; swaks as a real client; `mxguard check` as a real process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { stringify } from 'yaml';
import { withTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { runSwaks } from './harness/peers.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/cli/main.ts');

async function ehlo(t: TestApp): Promise<RawClient> {
  const c = await RawClient.connect(t.port);
  assert.match(await c.reply(), /^220 /);
  c.send('EHLO client.test\r\n');
  assert.match(await c.reply(), /^250-/);
  return c;
}

/** Sends one message (headers and body as given, CRLF line ends) and returns the final reply. */
async function send(c: RawClient, from: string, rcpts: string[], message: string | Buffer): Promise<string> {
  c.send(Buffer.from(`MAIL FROM:<${from}>${/[^\x00-\x7f]/.test(from + rcpts.join('')) ? ' SMTPUTF8' : ''}\r\n`, 'utf8'));
  assert.equal(await c.reply(), '250 2.1.0 Ok');
  for (const r of rcpts) {
    c.send(Buffer.from(`RCPT TO:<${r}>\r\n`, 'utf8'));
    assert.equal(await c.reply(), '250 2.1.5 Ok', r);
  }
  c.send('DATA\r\n');
  assert.match(await c.reply(), /^354 /);
  c.send(typeof message === 'string' ? Buffer.from(message, 'utf8') : message);
  c.send('.\r\n');
  return c.reply(10_000);
}

// --- item 1: body lines over 1000 octets ----------------------------------------------------

const LINE_1001 = 'a'.repeat(999) + '\r\n';
const LINE_5000 = 'b'.repeat(4998) + '\r\n';
const LONG_MESSAGE = `Subject: long lines\r\nMessage-ID: <long@client.test>\r\n\r\nshort\r\n${LINE_1001}${LINE_5000}end\r\n`;

test('body lines of 1001 and 5000 octets are taken by default and delivered unchanged', async () => {
  await withTestApp({}, async (t) => {
    assert.equal(t.config.limits.max_line_length, 0);
    const c = await ehlo(t);
    assert.match(await send(c, 'news@remote.test', ['longline@example.test'], LONG_MESSAGE), /^250 2\.0\.0 Ok: queued as /);
    c.close();
    const [file] = await t.waitMaildir('longline', 1);
    assert.ok(file, 'delivered into the Maildir');
    const stored = fs.readFileSync(file, 'latin1');
    assert.ok(stored.endsWith(LONG_MESSAGE), 'the message is stored octet for octet, long lines unfolded');
  });
});

test('with limits.max_line_length: 1000 a 1001-octet line is still refused', async () => {
  await withTestApp({ limits: { max_line_length: 1000 } }, async (t) => {
    const c = await ehlo(t);
    assert.equal(await send(c, 'news@remote.test', ['longline@example.test'], LONG_MESSAGE), '550 5.6.0 Error: message line longer than 1000 octets');
    // 1000 octets with the CRLF is still fine.
    assert.match(await send(c, 'news@remote.test', ['longline@example.test'], `Subject: ok\r\n\r\n${'c'.repeat(998)}\r\n`), /^250 /);
    c.close();
    assert.equal((await t.waitMaildir('longline', 1)).length, 1);
  });
});

// --- item 2: local parts over 64 octets ------------------------------------------------------

test('VERP and SRS addresses with local parts over 64 octets are taken, through swaks', { timeout: 60_000 }, async () => {
  // An SRS-rewritten list bounce address (94-octet local part) and a VERP recipient (80 octets).
  const srs = 'SRS0=x3Zq=TT=lists.example.org=announce-bounces+alice=example.test@forwarder.remote.test';
  const verp = 'announce-bounces+subscriber.with.a.long.name=subscriber-domain.example.net-12345@example.test';
  assert.ok(srs.indexOf('@') > 64 && verp.indexOf('@') > 64);
  await withTestApp({}, async (t) => {
    const r = await runSwaks(['--server', '127.0.0.1', '--port', String(t.port), '--helo', 'client.test', '--from', srs, '--to', verp, '--body', 'list mail'], { timeoutMs: 30_000 });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /<- {2}250 2\.1\.0 Ok/);
    const files = await t.waitMaildir(verp.slice(0, verp.indexOf('@')).toLowerCase(), 1);
    assert.equal(files.length, 1);
    assert.match(fs.readFileSync(files[0] as string, 'utf8'), /list mail/);
    // Still bounded: a 300-octet mailbox is refused.
    const c = await ehlo(t);
    c.send(`MAIL FROM:<${'x'.repeat(290)}@remote.test>\r\n`);
    assert.match(await c.reply(), /^501 5\.1\.3 /);
    c.close();
  });
});

// --- item 4: invalid UTF-8 in addresses ------------------------------------------------------

test('an address that is not valid UTF-8 gets 500 5.5.2, as Postfix answers, and nothing is passed on', async () => {
  await withTestApp({}, async (t) => {
    const c = await ehlo(t);
    // Latin-1 "ü" (0xFC) in the sender, with SMTPUTF8 declared.
    c.send(Buffer.concat([Buffer.from('MAIL FROM:<j'), Buffer.from([0xfc]), Buffer.from('rgen@remote.test> SMTPUTF8\r\n')]));
    assert.equal(await c.reply(), '500 5.5.2 Error: bad UTF-8 syntax');
    c.send('MAIL FROM:<jurgen@remote.test> SMTPUTF8\r\n');
    assert.equal(await c.reply(), '250 2.1.0 Ok');
    // A truncated two-octet sequence in the recipient.
    c.send(Buffer.concat([Buffer.from('RCPT TO:<b'), Buffer.from([0xc3]), Buffer.from('d@example.test>\r\n')]));
    assert.equal(await c.reply(), '500 5.5.2 Error: bad UTF-8 syntax');
    // Valid UTF-8 is fine.
    c.send(Buffer.from('RCPT TO:<bäd@example.test>\r\n', 'utf8'));
    assert.equal(await c.reply(), '250 2.1.5 Ok');
    c.send('DATA\r\n');
    assert.match(await c.reply(), /^354 /);
    c.send('Subject: x\r\n\r\nbody\r\n.\r\n');
    assert.match(await c.reply(), /^250 /);
    c.close();
    assert.equal((await t.waitMaildir('bäd', 1)).length, 1);
    assert.deepEqual(
      fs.readdirSync(path.join(t.dir, 'maildir')).filter((n) => n.includes('\ufffd')),
      [],
      'no mailbox named with U+FFFD',
    );
  });
});

// --- item 5: IDN local domains ---------------------------------------------------------------

test('local_domains and relay_to in Unicode form match mail to both the Unicode and the xn-- form', async () => {
  const overrides = { local_domains: ['bücher.example'], relay: { forward_from_ip: ['192.0.2.0/24'], relay_to: ['münchen.example'] } };
  await withTestApp(overrides, async (t) => {
    assert.deepEqual(t.config.local_domains, ['xn--bcher-kva.example']);
    const c = await ehlo(t);
    c.send('MAIL FROM:<sender@remote.test> SMTPUTF8\r\n');
    assert.equal(await c.reply(), '250 2.1.0 Ok');
    for (const rcpt of ['alice@bücher.example', 'alice@BÜCHER.example', 'alice@xn--bcher-kva.example', 'bob@münchen.example', 'bob@xn--mnchen-3ya.example']) {
      c.send(Buffer.from(`RCPT TO:<${rcpt}>\r\n`, 'utf8'));
      assert.equal(await c.reply(), '250 2.1.5 Ok', rcpt);
    }
    c.send('RCPT TO:<alice@buecher.example>\r\n');
    assert.equal(await c.reply(), '554 5.7.1 <alice@buecher.example>: Relay access denied');
    c.close();
  });
  // The ASCII form in the configuration matches the Unicode form on the wire too.
  await withTestApp({ local_domains: ['xn--bcher-kva.example'], relay: { forward_from_ip: ['192.0.2.0/24'] } }, async (t) => {
    const c = await ehlo(t);
    assert.match(await send(c, 'sender@remote.test', ['alice@bücher.example'], 'Subject: idn\r\n\r\nhallo\r\n'), /^250 2\.0\.0 Ok: queued as /);
    c.close();
    assert.equal((await t.waitMaildir('alice', 1)).length, 1);
  });
});

test('mxguard check takes local_domains and relay_to in Unicode form', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-idn-'));
  try {
    const cfg = path.join(dir, 'mx.yaml');
    fs.writeFileSync(cfg, stringify({ data_dir: path.join(dir, 'var'), local_domains: ['bücher.example', 'example.test'], relay: { relay_to: ['münchen.example'] } }));
    const check = spawnSync(process.execPath, [MAIN, 'check', '-c', cfg], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(check.status, 0, check.stdout + check.stderr);
    assert.match(check.stdout + check.stderr, /xn--bcher-kva\.example/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// --- item 7: the small ones ------------------------------------------------------------------

test('Received says UTF8SMTP (RFC 6531) for an SMTPUTF8 transaction, ESMTP otherwise', async () => {
  await withTestApp({}, async (t) => {
    const c = await ehlo(t);
    assert.match(await send(c, 'jürgen@remote.test', ['kw@example.test'], 'Subject: utf8\r\n\r\nx\r\n'), /^250 /);
    assert.match(await send(c, 'plain@remote.test', ['kw@example.test'], 'Subject: ascii\r\n\r\nx\r\n'), /^250 /);
    c.close();
    const texts = (await t.waitMaildir('kw', 2)).map((f) => fs.readFileSync(f, 'utf8'));
    const utf8 = texts.find((s) => s.includes('Subject: utf8')) as string;
    const ascii = texts.find((s) => s.includes('Subject: ascii')) as string;
    assert.match(utf8, /\(mxguard\) with UTF8SMTP id /);
    assert.match(ascii, /\(mxguard\) with ESMTP id /);
  });
});

test('Received says UTF8SMTPS for SMTPUTF8 over STARTTLS', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-tls-'));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=mx.example.test'], { stdio: 'ignore' });
    await withTestApp({ tls: { cert, key } }, async (t) => {
      const c = await ehlo(t);
      c.send('STARTTLS\r\n');
      assert.match(await c.reply(), /^220 /);
      await c.startTls();
      c.send('EHLO client.test\r\n');
      assert.match(await c.reply(), /^250-/);
      assert.match(await send(c, 'jürgen@remote.test', ['kws@example.test'], 'Subject: utf8 tls\r\n\r\nx\r\n'), /^250 /);
      c.close();
      const [file] = await t.waitMaildir('kws', 1);
      assert.match(fs.readFileSync(file as string, 'utf8'), /\(mxguard\) with UTF8SMTPS id /);
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('VRFY without an argument is 501 5.5.4; with one it stays 252', async () => {
  await withTestApp({}, async (t) => {
    const c = await ehlo(t);
    c.send('VRFY\r\n');
    assert.equal(await c.reply(), '501 5.5.4 Syntax: VRFY address');
    c.send('VRFY   \r\n');
    assert.equal(await c.reply(), '501 5.5.4 Syntax: VRFY address');
    c.send('VRFY alice\r\n');
    assert.match(await c.reply(), /^252 2\.0\.0 /);
    c.close();
  });
});

test('a quoted local part is the unquoted one: same Maildir folder, same recipients.file entry', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-rcpts-'));
  const file = path.join(dir, 'recipients');
  fs.writeFileSync(file, 'alice@example.test\n"bob"@example.test\n');
  try {
    await withTestApp({ recipients: { file } }, async (t) => {
      const c = await ehlo(t);
      c.send('MAIL FROM:<sender@remote.test>\r\n');
      assert.equal(await c.reply(), '250 2.1.0 Ok');
      for (const rcpt of ['"alice"@example.test', '"Bob"@example.test']) {
        c.send(`RCPT TO:<${rcpt}>\r\n`);
        assert.equal(await c.reply(), '250 2.1.5 Ok', rcpt);
      }
      c.send('RCPT TO:<"carol"@example.test>\r\n');
      assert.equal(await c.reply(), '550 5.1.1 <carol@example.test>: Recipient address rejected: User unknown');
      c.send('DATA\r\n');
      assert.match(await c.reply(), /^354 /);
      c.send('Subject: quoted\r\n\r\nx\r\n.\r\n');
      assert.match(await c.reply(), /^250 /);
      c.close();
      assert.equal((await t.waitMaildir('alice', 1)).length, 1);
      assert.equal((await t.waitMaildir('bob', 1)).length, 1);
      assert.deepEqual(
        fs.readdirSync(path.join(t.dir, 'maildir')).filter((n) => n.includes('"')),
        [],
        'no folder named with quotes',
      );
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
