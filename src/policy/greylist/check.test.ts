// The greylisting check's counts (mxguard_greylist_results_total) when the store fails half-way:
// a real SQLite store in a temporary directory whose counterIncr (auto_allow's pass count) fails,
// as an unreachable store would.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { configSchema } from '../../config/schema.ts';
import { parseMailbox, type Address } from '../../mail/address.ts';
import { SqliteStore } from '../../store/sqlite.ts';
import type { Store } from '../../store/store.ts';
import { advanceClock, resetClock } from '../../util/clock.ts';
import { metrics, type GreylistResult } from '../../util/metrics.ts';
import type { RcptContext } from '../context.ts';
import { greylistCheck } from './check.ts';

function addr(mailbox: string): Address {
  const a = parseMailbox(mailbox, true);
  if (typeof a === 'string') throw new Error(`${mailbox}: ${a}`);
  return a;
}

function ctx(): RcptContext {
  return {
    session: { sid: 's', remoteIp: '203.0.113.5', remotePort: 1, localIp: '192.0.2.25', localPort: 25, tls: false, esmtp: true, earlyTalker: false, rcptCount: 0 },
    tx: { mailFrom: addr('alice@sender.test'), params: {}, rcpts: [] },
    rcpt: addr('bob@example.test'),
    score: 0,
  } as unknown as RcptContext;
}

async function greyCounts(): Promise<Record<string, number>> {
  const body = (await metrics.text()).body;
  const out: Record<string, number> = {};
  for (const m of body.matchAll(/^mxguard_greylist_results_total\{result="(\w+)"\} (\S+)$/gm)) out[m[1] as string] = Number(m[2]);
  return out;
}

for (const failOpen of [false, true]) {
  test(`a triplet that passes while the store fails at auto_allow is counted once, as error (store.fail_open ${failOpen})`, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-greycheck-'));
    const real = new SqliteStore(path.join(dir, 'state.db'));
    t.after(async () => {
      resetClock();
      await real.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });
    let failing = false;
    // The real store, but counterIncr fails once `failing` is set.
    const store = new Proxy(real, {
      get(target, prop) {
        if (prop === 'counterIncr' && failing) return () => Promise.reject(new Error('store unreachable'));
        const v = Reflect.get(target, prop, target) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    }) as Store;
    const greylist = configSchema.parse({ greylist: { when: 'always', auto_allow: 1 } }).greylist;
    assert.ok(greylist);
    const check = greylistCheck({ greylist, relay: { forward_user: false, forward_window: 0, relay_to: [] }, localDomains: ['example.test'], failOpen }, store, undefined, undefined);
    const before = await greyCounts();
    const first = await check.run(ctx());
    assert.equal(first.kind, 'tempfail');
    advanceClock(greylist.delay + 1000);
    failing = true;
    if (failOpen) assert.equal((await check.run(ctx())).kind, 'continue', 'fail_open: the recipient passes');
    else await assert.rejects(async () => check.run(ctx()), /store unreachable/);
    const after = await greyCounts();
    const added = (r: GreylistResult): number => (after[r] ?? 0) - (before[r] ?? 0);
    assert.deepEqual({ greylisted: added('greylisted'), passed: added('passed'), error: added('error') }, { greylisted: 1, passed: 0, error: 1 });
  });
}
