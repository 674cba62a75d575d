import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { clamdResult, create, parseClamdReply, sanitiseVirusName } from './clamd.ts';
import type { ScannerSpec } from './check.ts';
import type { ScanInput } from './types.ts';

test('replies: OK, FOUND (named, sanitised), size limit, ERROR, nonsense', () => {
  assert.deepEqual(parseClamdReply(Buffer.from('stream: OK\0')), { clean: true });
  assert.deepEqual(parseClamdReply(Buffer.from('stream: Test.EICAR.Local.UNOFFICIAL FOUND\0')), { clean: false, virus: 'Test.EICAR.Local.UNOFFICIAL' });
  assert.deepEqual(parseClamdReply(Buffer.from('stream: Win.Trojan.Foo-1 FOUND\n')), { clean: false, virus: 'Win.Trojan.Foo-1' });
  assert.deepEqual(parseClamdReply(Buffer.from('stream: Bad Name\r\n550 x FOUND\0')), { clean: false, virus: 'Bad?Name??550?x' });
  assert.throws(() => parseClamdReply(Buffer.from('INSTREAM size limit exceeded. ERROR\0')), /StreamMaxLength/);
  assert.throws(() => parseClamdReply(Buffer.from('stream: Can\'t allocate memory ERROR\0')), /allocate memory ERROR/);
  assert.throws(() => parseClamdReply(Buffer.from('UNKNOWN COMMAND\0')), /unexpected reply/);
  assert.equal(sanitiseVirusName(''), 'unknown');
  assert.equal(sanitiseVirusName('x'.repeat(300)).length, 100);
});

test('results: a virus is 554 5.7.1 naming it; clean is a header', () => {
  assert.deepEqual(clamdResult({ clean: false, virus: 'Eicar' }, 'clamd'), { kind: 'reject', code: 554, enhanced: '5.7.1', text: 'Virus found: Eicar', log: 'clamd: Eicar FOUND' });
  assert.deepEqual(clamdResult({ clean: true }, 'av'), { kind: 'accept', headers: ['X-Virus-Scanned: clean (av)\r\n'] });
});

/** A fake clamd over a Unix socket (the protocol seen from the other side): records the stream, answers. */
test('INSTREAM framing over a Unix socket: length-prefixed chunks, then a zero-length one', async (t) => {
  const sockPath = `/tmp/mxg-clamd-unit-${process.pid}.sock`;
  let got = Buffer.alloc(0);
  const srv = net.createServer((c) => {
    c.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 14 && got.subarray(-4).equals(Buffer.alloc(4))) c.end('stream: OK\0');
    });
  });
  await new Promise<void>((r) => srv.listen(sockPath, r));
  t.after(() => srv.close());
  const body = Buffer.alloc(150_000, 'a');
  const input = {
    message: { id: 'x', size: body.length, read: async function* () { yield body; } },
    signal: new AbortController().signal,
  } as unknown as ScanInput;
  const spec = { type: 'clamd', address: sockPath, timeout: 1000, max_size: 1 << 20, on_oversize: 'skip' } as Extract<ScannerSpec, { type: 'clamd' }>;
  const r = await create(spec).scan(input);
  assert.equal(r.kind, 'accept');
  assert.equal(got.subarray(0, 10).toString('latin1'), 'zINSTREAM\0');
  let off = 10;
  const sizes: number[] = [];
  for (;;) {
    const n = got.readUInt32BE(off);
    off += 4 + n;
    if (n === 0) break;
    sizes.push(n);
  }
  assert.equal(off, got.length);
  assert.deepEqual(sizes, [65536, 65536, 150_000 - 131072]);
});

test('an aborted scan lets go at once', async (t) => {
  const srv = net.createServer(() => {}); // accepts, never answers
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.after(() => srv.close());
  const ac = new AbortController();
  const input = { message: { id: 'x', size: 1, read: async function* () { yield Buffer.from('a'); } }, signal: ac.signal } as unknown as ScanInput;
  const spec = { type: 'clamd', address: `127.0.0.1:${(srv.address() as net.AddressInfo).port}`, timeout: 1000, max_size: 1 << 20, on_oversize: 'skip' } as Extract<ScannerSpec, { type: 'clamd' }>;
  const p = create(spec).scan(input);
  setTimeout(() => ac.abort(), 50);
  await assert.rejects(p, /clamd: aborted/);
});
