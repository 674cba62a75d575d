// Replays the regression corpus (test/fixtures/regressions/README.md): every input that once
// broke mxguard, through the real SMTP server or the real spool start-up of an mxguard in this
// process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startTestApp, withTestApp, type TestApp } from './harness/app.ts';
import { RawClient } from './harness/smtp-talk.ts';
import { DataDecoder } from '../src/smtp/data-decoder.ts';

const CORPUS = path.join(import.meta.dirname, 'fixtures', 'regressions');

function fixture(name: string): Buffer {
  return fs.readFileSync(path.join(CORPUS, name));
}

/** The delivered copies in rcpt's Maildir, each cut at its "Message-ID:" (our Received header goes). */
function deliveredFrom(app: TestApp): Buffer[] {
  return app.maildir('rcpt').map((f) => {
    const data = fs.readFileSync(f);
    return data.subarray(data.indexOf('Message-ID: <'));
  });
}

for (const name of ['data-block-boundary.eml', 'data-dot-line-998.eml']) {
  test(`regression ${name}: the DATA decoder gives it back byte for byte, however the reads fall`, () => {
    // Over SMTP the reads fall where the network puts them; here a read may hold several output
    // blocks at once, as it does when input piles up behind a slow spool write.
    const text = fixture(name);
    const wire = Buffer.concat([Buffer.from(text.toString('latin1').replace(/^\./gm, '..'), 'latin1'), Buffer.from('.\r\n')]);
    for (const piece of [wire.length, 65536, 7919]) {
      const d = new DataDecoder({ normalize: false, maxLineLength: 1000, maxSize: 1 << 26 });
      const out: Buffer[] = [];
      let end = -1;
      for (let i = 0; i < wire.length && end === -1; i += piece) {
        const r = d.feed(wire.subarray(i, i + piece));
        out.push(...d.take());
        if (r !== -1) end = i + r;
      }
      assert.equal(end, wire.length, `${name} in reads of ${piece}: end of data`);
      assert.equal(d.failed, false, `${name}: ${JSON.stringify(d.problems)}`);
      assert.ok(Buffer.concat(out).equals(text), `${name} in reads of ${piece}: output differs`);
    }
  });

  test(`regression ${name}: acknowledged and delivered byte for byte`, async () => {
    const text = fixture(name);
    await withTestApp({ limits: { max_message_size: 4 * 1024 * 1024 } }, async (app) => {
      const c = await RawClient.connect(app.port);
      try {
        await c.reply();
        c.send('EHLO regress.test\r\nMAIL FROM:<sender@regress.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n');
        const r = await c.replies(4);
        assert.match(r[3] as string, /^354/);
        // Dot-stuffed as a client sends it, in network-sized pieces.
        const wire = Buffer.concat([Buffer.from(text.toString('latin1').replace(/^\./gm, '..'), 'latin1'), Buffer.from('.\r\n')]);
        for (let i = 0; i < wire.length; i += 1448) c.send(wire.subarray(i, i + 1448));
        assert.match(await c.reply(), /^250 2\.0\.0 Ok: queued as /);
      } finally {
        c.close();
      }
      const [copy, ...more] = await app.waitMaildir('rcpt', 1).then(() => deliveredFrom(app));
      assert.equal(more.length, 0);
      assert.ok(copy?.equals(text), `${name} arrived changed`);
    });
  });
}

test('regression journal-damaged-record-header.log: the records behind the damaged one are delivered, the segment kept, the offset logged', async () => {
  const expect = JSON.parse(fixture('journal-damaged-record-header.json').toString()) as { delivered: string[]; damagedOffset: number };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-regress-'));
  const journal = path.join(dir, 'spool', 'journal');
  fs.mkdirSync(journal, { recursive: true });
  fs.writeFileSync(path.join(journal, '0000000001.log'), fixture('journal-damaged-record-header.log'));
  const app = await startTestApp({ data_dir: dir }); // delivers into app.maildir()
  try {
    await app.waitMaildir('rcpt', expect.delivered.length);
    const got = deliveredFrom(app).map((b) => /^Message-ID: <([^@]+)@/.exec(b.toString('latin1'))?.[1]);
    assert.deepEqual(got.sort(), [...expect.delivered].sort());
    const corrupt = fs.readdirSync(path.join(dir, 'spool', 'corrupt'));
    assert.equal(corrupt.length, 1);
    assert.ok(fs.readFileSync(path.join(dir, 'spool', 'corrupt', corrupt[0] as string)).equals(fixture('journal-damaged-record-header.log')));
    assert.ok(app.logs().some((l) => l.level === 50 && l.offset === expect.damagedOffset), 'an error line with the byte offset');
  } finally {
    await app.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('regression queue-file-*: damaged acknowledged queue files go to spool/corrupt, never delivered or deleted; the intact one is delivered', async () => {
  const damaged = ['queue-file-truncated-trailer', 'queue-file-short-write', 'queue-file-over-long-trailer'];
  for (const name of [...damaged, 'queue-file-intact']) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-regress-'));
    const queue = path.join(dir, 'spool', 'queue');
    fs.mkdirSync(queue, { recursive: true });
    fs.writeFileSync(path.join(queue, 'MXREGRESSQUEUE'), fixture(name));
    const app = await startTestApp({ data_dir: dir }); // delivers into app.maildir()
    try {
      if (damaged.includes(name)) {
        const corrupt = path.join(dir, 'spool', 'corrupt', 'MXREGRESSQUEUE');
        assert.ok(fs.existsSync(corrupt), `${name}: set aside in spool/corrupt`);
        assert.ok(fs.readFileSync(corrupt).equals(fixture(name)), `${name}: kept as it was`);
        assert.ok(app.logs().some((l) => l.level === 50 && l.id === 'MXREGRESSQUEUE'), `${name}: an error line`);
        assert.deepEqual(app.maildir('rcpt'), [], `${name}: not delivered`);
      } else {
        await app.waitMaildir('rcpt', 1);
        assert.equal(deliveredFrom(app).length, 1, `${name}: delivered`);
      }
    } finally {
      await app.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
});

test('regression half-close-after-quit.smtp: the client that half-closes after "." and QUIT reads 250 and 221', async () => {
  await withTestApp({}, async (app) => {
    const socket = net.connect({ port: app.port, host: '127.0.0.1', allowHalfOpen: true });
    let got = '';
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => (got += d));
    const closed = new Promise<void>((r) => socket.on('close', () => r()));
    await new Promise<void>((r) => socket.once('connect', () => r()));
    socket.end(fixture('half-close-after-quit.smtp')); // one write, then FIN
    await Promise.race([closed, new Promise((r) => setTimeout(r, 10_000))]);
    socket.destroy();
    assert.match(got, /\r\n250 2\.0\.0 Ok: queued as [0-9A-Z]{14}\r\n221 /, got);
    await app.waitMaildir('rcpt', 1);
    assert.equal(app.maildir('rcpt').length, 1);
  });
});
