import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AuthBusyError, HashRefusedError } from './errors.ts';
import { checkLimit, hashPassword, hashProblem, PasswordFile, passwordCheckCounts, threadPoolSize, usersFileProblems, verifyPassword } from './passwords.ts';

/** A hash line as `mxguard user add` writes it, with other scrypt parameters (the key is random: never right). */
function hashWith(n: number, r: number, p: number, keyBytes = 32): string {
  return `scrypt$${n}$${r}$${p}$${crypto.randomBytes(16).toString('base64')}$${crypto.randomBytes(keyBytes).toString('base64')}`;
}

test('hashProblem accepts what mxguard user add writes and refuses costlier or malformed hashes', async () => {
  assert.equal(hashProblem(await hashPassword('secret')), undefined);
  assert.equal(hashProblem(hashWith(65536, 8, 1)), undefined, 'twice the memory and work is the most');
  assert.equal(hashProblem(hashWith(32768, 8, 2)), undefined);
  assert.match(hashProblem(hashWith(1 << 20, 8, 1)) ?? '', /N=1048576 r=8 p=1 asks for 1024 MiB and 32\.0× the work/);
  assert.match(hashProblem(hashWith(32768, 32, 1)) ?? '', /asks for 128 MiB/);
  assert.match(hashProblem(hashWith(32768, 8, 16)) ?? '', /16\.0× the work/, 'p multiplies the time, not the memory');
  assert.match(hashProblem(hashWith(1000, 8, 1)) ?? '', /power of 2/);
  assert.match(hashProblem(hashWith(32768, 0, 1)) ?? '', /at least 1/);
  assert.match(hashProblem(hashWith(32768, 8, 1, 128)) ?? '', /a key of 128 octets/);
  assert.match(hashProblem('$2y$10$bcrypt') ?? '', /not a hash of `mxguard user add`/);
  assert.match(hashProblem(`scrypt$${'9'.repeat(40)}$8$1$c2FsdA==$a2V5`) ?? '', /not a hash/, 'absurd numbers are not parsed at all');
});

test('usersFileProblems names the refused lines by number; comments and other lines are left alone', async () => {
  const good = await hashPassword('pw');
  const text = `# users\nalice:${good}\nbob:${hashWith(1 << 20, 8, 1)}\n\ncarol:plain-text\n`;
  const problems = usersFileProblems(text);
  assert.deepEqual(
    problems.map((p) => [p.line, p.user]),
    [
      [3, 'bob'],
      [5, 'carol'],
    ],
  );
});

test('a hash with N=2^20 is never run: the check fails at once (HashRefusedError), without its 1 GiB', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-pw-'));
  try {
    const file = path.join(dir, 'users');
    fs.writeFileSync(file, `greedy:${hashWith(1 << 20, 8, 1)}\n`);
    const users = new PasswordFile(file);
    const peak0 = process.resourceUsage().maxRSS; // KiB
    const t0 = performance.now();
    await assert.rejects(users.verify('greedy', 'guess'), (err: unknown) => err instanceof HashRefusedError && err.user === 'greedy' && /N=1048576/.test(err.message));
    const ms = performance.now() - t0;
    const grewMiB = (process.resourceUsage().maxRSS - peak0) / 1024;
    // Run (the old code), it took 5.9 s and 1024 MiB more peak RSS here; refused, the check costs one ordinary check (~50-100 ms, 32 MiB).
    assert.ok(ms < 2000, `refused in ${ms.toFixed(0)} ms`);
    assert.ok(grewMiB < 512, `peak RSS grew ${grewMiB.toFixed(0)} MiB`);
    assert.equal(await verifyPassword('guess', hashWith(1 << 20, 8, 1)), false, 'verifyPassword refuses it too');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('at most checkLimit() checks run at once; one more is refused at once with AuthBusyError', async () => {
  assert.equal(checkLimit(4), Math.max(1, Math.min(4, threadPoolSize() - 2)), 'two pool threads stay free for the spool');
  assert.equal(checkLimit(100), Math.max(1, threadPoolSize() - 2));
  assert.equal(checkLimit(1), 1);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-pw-'));
  try {
    const file = path.join(dir, 'users');
    fs.writeFileSync(file, `alice:${await hashPassword('wonderland')}\n`);
    const users = new PasswordFile(file, 2);
    const limit = users.limit;
    const before = passwordCheckCounts().run;
    const running = Array.from({ length: limit }, () => users.verify('alice', 'guess'));
    assert.equal(passwordCheckCounts().running, limit);
    const t0 = performance.now();
    await assert.rejects(users.verify('alice', 'wonderland'), AuthBusyError);
    assert.ok(performance.now() - t0 < 1000, 'refused without waiting for a thread');
    assert.deepEqual(await Promise.all(running), new Array(limit).fill(false));
    assert.equal(passwordCheckCounts().running, 0);
    assert.equal(await users.verify('alice', 'wonderland'), true, 'free again once they are done');
    assert.equal(passwordCheckCounts().run - before, limit + 1, 'the refused one was not run');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
