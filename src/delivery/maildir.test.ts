import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createMaildirTransport, domainFolder, mailboxName, mailboxPath, uniqueName } from './maildir.ts';
import type { MessageBody, OutgoingMessage } from '../mail/transport.ts';

function bodyOf(raw: Buffer, chunkSize = 7): MessageBody {
  return {
    size: raw.length,
    async *chunks() {
      for (let i = 0; i < raw.length; i += chunkSize) yield raw.subarray(i, i + chunkSize);
    },
  };
}

async function tempDir(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mxg-maildir-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

test('mailboxName: local part, lower-cased, safe as a file name', () => {
  assert.equal(mailboxName('Alice@Example.Test'), 'alice');
  assert.equal(mailboxName('"a@b"@example.test'), 'a@b');
  assert.equal(mailboxName('"Alice"@example.test'), 'alice', 'a quoted local part names the folder of the unquoted one');
  assert.equal(mailboxName('"a\\"b"@example.test'), 'a"b');
  assert.equal(mailboxName('../etc@x'), '_._etc');
  assert.equal(mailboxName('.hidden@x'), '_hidden');
  assert.equal(mailboxName('a/b\\c@x'), 'a_b_c');
  assert.equal(mailboxName('nul\0ctl\x01\x7f@x'), 'nul_ctl__');
  assert.equal(mailboxName('@x'), '_');
  assert.equal(mailboxName(''), '_');
  assert.equal(mailboxName('..'), '_.');
  assert.equal(mailboxName('Ünïcode@x'), 'ünïcode');
  assert.ok(Buffer.byteLength(mailboxName('é'.repeat(300) + '@x')) <= 200);
});

test('uniqueName follows the Maildir pattern and never repeats', () => {
  const names = new Set<string>();
  for (let i = 0; i < 1000; i++) names.add(uniqueName());
  assert.equal(names.size, 1000);
  for (const n of names) assert.match(n, new RegExp(`^\\d+\\.M\\d+P${process.pid}Q\\d+\\.[^/:]+$`));
});

test('delivers each recipient byte-exact into <dir>/<mailbox>/new, after its Return-Path and Delivered-To', async (t) => {
  const dir = await tempDir(t);
  const tr = createMaildirTransport({ dir: path.join(dir, 'mail') });
  t.after(() => tr.close());
  const raw = Buffer.from('From: a@x.test\r\nSubject: hi\r\n\r\n.dot line\r\nbare\nlf kept\r\n8bit: \xe9\r\n', 'latin1');
  const msg: OutgoingMessage = { id: 'Q1', mailFrom: 'a@x.test', rcpts: ['Alice@example.test', 'bob@example.test', 'alice@other.test'], body: bodyOf(raw) };
  const results = await tr.deliver(msg);
  assert.deepEqual(results.map((r) => [r.rcpt, r.status, r.code]), [
    ['Alice@example.test', 'ok', 250],
    ['bob@example.test', 'ok', 250],
    ['alice@other.test', 'ok', 250],
  ]);
  const aliceNew = fs.readdirSync(path.join(dir, 'mail', 'alice', 'new'));
  assert.equal(aliceNew.length, 2);
  const copies = aliceNew.map((f) => fs.readFileSync(path.join(dir, 'mail', 'alice', 'new', f)).toString('latin1')).sort();
  assert.deepEqual(copies, [
    `Return-Path: <a@x.test>\r\nDelivered-To: Alice@example.test\r\n${raw.toString('latin1')}`,
    `Return-Path: <a@x.test>\r\nDelivered-To: alice@other.test\r\n${raw.toString('latin1')}`,
  ]);
  assert.equal(fs.readdirSync(path.join(dir, 'mail', 'bob', 'new')).length, 1);
  for (const box of ['alice', 'bob']) {
    assert.deepEqual(fs.readdirSync(path.join(dir, 'mail', box, 'tmp')), []);
    assert.ok(fs.statSync(path.join(dir, 'mail', box, 'cur')).isDirectory());
    assert.equal(fs.statSync(path.join(dir, 'mail', box, 'new')).mode & 0o777, 0o700);
  }
  const f = aliceNew[0] as string;
  assert.equal(fs.statSync(path.join(dir, 'mail', 'alice', 'new', f)).mode & 0o777, 0o600);
  assert.match(results[0]?.text ?? '', /^2\.0\.0 delivered to /);
});

test('an I/O error is temp for that recipient only, with the error text', async (t) => {
  const dir = await tempDir(t);
  // A plain file where a mailbox directory should go.
  fs.writeFileSync(path.join(dir, 'carol'), 'in the way');
  const tr = createMaildirTransport({ dir });
  const raw = Buffer.from('Subject: x\r\n\r\nbody\r\n');
  const results = await tr.deliver({ id: 'Q2', mailFrom: '', rcpts: ['carol@x.test', 'dave@x.test'], body: bodyOf(raw) });
  assert.equal(results[0]?.status, 'temp');
  assert.equal(results[0]?.code, 451);
  assert.match(results[0]?.text ?? '', /^4\.3\.0 maildir delivery to .*carol failed: .*(EEXIST|ENOTDIR)/);
  assert.equal(results[1]?.status, 'ok');
});

test('a body that fails mid-read leaves no file behind and is temp', async (t) => {
  const dir = await tempDir(t);
  const tr = createMaildirTransport({ dir });
  const body: MessageBody = {
    size: 100,
    async *chunks() {
      yield Buffer.from('Subject: x\r\n\r\n');
      throw new Error('spool read failed');
    },
  };
  const [r] = await tr.deliver({ id: 'Q3', mailFrom: 'a@x.test', rcpts: ['erin@x.test'], body });
  assert.equal(r?.status, 'temp');
  assert.match(r?.text ?? '', /spool read failed/);
  assert.deepEqual(fs.readdirSync(path.join(dir, 'erin', 'tmp')), []);
  assert.deepEqual(fs.readdirSync(path.join(dir, 'erin', 'new')), []);
});

test('a mailbox removed after first use is made again', async (t) => {
  const dir = await tempDir(t);
  const tr = createMaildirTransport({ dir });
  const raw = Buffer.from('Subject: x\r\n\r\nbody\r\n');
  assert.equal((await tr.deliver({ id: 'Q4', mailFrom: '', rcpts: ['f@x'], body: bodyOf(raw) }))[0]?.status, 'ok');
  await fsp.rm(path.join(dir, 'f'), { recursive: true });
  assert.equal((await tr.deliver({ id: 'Q5', mailFrom: '', rcpts: ['f@x'], body: bodyOf(raw) }))[0]?.status, 'ok');
  assert.equal(fs.readdirSync(path.join(dir, 'f', 'new')).length, 1);
});

test('%d and %u keep domains apart: postmaster@example.com and postmaster@example.org get a mailbox each; the null sender is Return-Path <>', async (t) => {
  const dir = await tempDir(t);
  const tr = createMaildirTransport({ dir: path.join(dir, '%d', '%u') });
  const raw = Buffer.from('Subject: x\r\n\r\nbody\r\n');
  const results = await tr.deliver({ id: 'Q6', mailFrom: '', rcpts: ['postmaster@Example.COM', 'postmaster@example.org'], body: bodyOf(raw) });
  assert.deepEqual(results.map((r) => r.status), ['ok', 'ok']);
  for (const [d, rcpt] of [['example.com', 'postmaster@Example.COM'], ['example.org', 'postmaster@example.org']] as const) {
    const box = path.join(dir, d, 'postmaster', 'new');
    const files = fs.readdirSync(box);
    assert.equal(files.length, 1, d);
    assert.equal(fs.readFileSync(path.join(box, files[0] as string), 'latin1'), `Return-Path: <>\r\nDelivered-To: ${rcpt}\r\nSubject: x\r\n\r\nbody\r\n`);
  }
});

test('mailboxPath and domainFolder: one safe path component each, whatever the address says', () => {
  assert.equal(mailboxPath('/m/%d/%u', 'Bob@Example.ORG'), '/m/example.org/bob');
  assert.equal(mailboxPath('/m', 'bob@example.org'), '/m/bob', 'without %d/%u: <dir>/<local part>, as before');
  assert.equal(mailboxPath('/m/%d', 'bob@example.org'), '/m/example.org');
  assert.equal(mailboxPath('/m/%d/%u', '../x@../../etc'), '/m/_._.._etc/_._x');
  assert.equal(domainFolder('a@.hidden'), '_hidden');
  assert.equal(domainFolder('a@b/c\\d'), 'b_c_d');
  assert.equal(domainFolder('nodomain'), '_');
});
