// Issue 9 item 16: `mxguard stdio` runs once per connection, so it loads only what its config
// needs: not the Redis client when the store is SQLite, not the daemon (app.ts, the forwarder,
// the admin API), not the other commands, not the regex engine when no pattern is configured.
// The start-up time itself is measured by `BENCH_STARTUP_ONLY=1 npm run bench` (bench/startup.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { makeTempDir } from './harness/peers.ts';

const MAIN = path.resolve(import.meta.dirname, '../bin/mxguard.js');

test('mxguard stdio with the SQLite store loads neither @redis/client nor the daemon, and still takes a message', { timeout: 60_000 }, async () => {
  const dir = await makeTempDir('stdio-startup');
  try {
    const trace = path.join(dir, 'loaded.txt');
    const hook = path.join(dir, 'trace.mjs');
    // Records every module the process loads (module.registerHooks, synchronous).
    fs.writeFileSync(
      hook,
      `import { registerHooks } from 'node:module';
       import fs from 'node:fs';
       const seen = [];
       registerHooks({ load(url, ctx, next) { seen.push(url); return next(url, ctx); } });
       process.on('exit', () => fs.writeFileSync(${JSON.stringify(trace)}, seen.join('\\n')));`,
    );
    const configFile = path.join(dir, 'mxguard.yaml');
    fs.writeFileSync(configFile, stringify({ hostname: 'mx.example.test', data_dir: path.join(dir, 'var'), local_domains: ['example.test'], log: { level: 'warn', file: path.join(dir, 'stdio.log') } }));
    const session = 'EHLO client.test\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\nSubject: s\r\n\r\nhi\r\n.\r\nQUIT\r\n';
    const out = await new Promise<{ err: Error | null; stdout: string; stderr: string }>((resolve) => {
      const child = execFile(process.execPath, ['--import', hook, MAIN, 'stdio', '-c', configFile], { env: { ...process.env, TCPREMOTEIP: '127.0.0.1' }, timeout: 30_000 }, (err, stdout, stderr) => resolve({ err, stdout, stderr }));
      child.stdin?.end(session);
    });
    assert.equal(out.err, null, out.stderr);
    assert.match(out.stdout, /^220 mx\.example\.test /);
    assert.match(out.stdout, /\r\n250 2\.0\.0 Ok: queued as \w+\r\n221 /);
    const loaded = fs.readFileSync(trace, 'utf8').split('\n');
    assert.ok(loaded.some((u) => u.endsWith('/src/store/sqlite.ts')), 'the trace works: the SQLite store was loaded');
    for (const heavy of ['/node_modules/@redis/', '/src/store/redis.ts', '/src/app.ts', '/src/queue/forwarder.ts', '/src/admin/server.ts', '/src/cli/relaytest.ts', '/src/cli/relay.ts', '/src/cli/queue.ts', '/node_modules/re2js/', '/src/policy/filters/mfilter.ts', '/src/policy/filters/sa-rules.ts', '/src/policy/filters/mime-text.ts']) {
      assert.deepEqual(loaded.filter((u) => u.includes(heavy)), [], `${heavy} was loaded`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
