// filters.scanners as one DATA check, `scanners` (issue 12). The configured scanners all start
// at once at the end of DATA, each under its own `timeout` (and scoring.data_timeout, the DATA
// checks' common deadline), each given the message only up to its `max_size`. Their answers
// become one verdict:
//   - a refusal (5xx: a virus, an explicit reject) ends it at once, naming the scanner;
//   - else a 4xx refusal (a scanner asking the client to retry);
//   - else every scanner's points, tests and header fields, added up (one transaction score).
// A scanner that fails or times out counts as its on_error says: tempfail (451 4.7.1, the client
// retries) or accept (the message goes on without that scanner; logged at warn). No scanner's
// failure is ever silent, and which way it goes is written in the config, not in its code.
import { createRequire } from 'node:module';
import { defineCheck, type Check, type CheckDeps } from '../check.ts';
import type { Config } from '../../config/schema.ts';
import type { DataContext } from '../context.ts';
import { CONTINUE, type TestHit, type Verdict } from '../verdict.ts';
import type { Scanner, ScanResult } from './types.ts';
import type { Logger } from '../../util/log.ts';
import { metrics } from '../../util/metrics.ts';

export type ScannerSpec = Config['filters']['scanners'][number];

/** Each type's module exports `create(spec)`; loaded only when configured (`mxguard stdio` starts once per connection). */
const load = createRequire(import.meta.url);
export function createScanner(spec: ScannerSpec): Scanner {
  const mod = load(`./${spec.type}.ts`) as { create(spec: ScannerSpec): Scanner };
  return mod.create(spec);
}

export function scannerName(spec: ScannerSpec): string {
  return spec.name ?? spec.type;
}

/** A scanner's failure: its text for the log, whether it was the timeout. */
class ScannerTimeout extends Error {}

interface Outcome {
  readonly name: string;
  readonly result?: ScanResult;
  /** It failed (threw, timed out): its on_error decides. */
  readonly error?: string;
  readonly onError: 'tempfail' | 'accept';
  readonly skipped?: 'oversize';
}

/** Runs one scanner under its timeout; never throws. */
async function runOne(spec: ScannerSpec, scanner: Scanner, ctx: DataContext): Promise<Outcome> {
  const name = scannerName(spec);
  const onError = spec.on_error ?? 'tempfail';
  if (ctx.message.size > spec.max_size) {
    if (spec.on_oversize === 'tempfail') return { name, onError, result: { kind: 'tempfail', code: 452, enhanced: '4.3.4', text: `Message too large for the ${name} scanner, try again later`, log: `${name}: ${ctx.message.size} octets, over max_size ${spec.max_size}` } };
    return { name, onError, skipped: 'oversize' };
  }
  const timeout = new AbortController();
  const signal = AbortSignal.any([ctx.signal, timeout.signal]);
  let timer: NodeJS.Timeout | undefined;
  const t0 = performance.now();
  let failed: 'timeout' | 'error' | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      timeout.abort();
      reject(new ScannerTimeout(`no answer within ${spec.timeout} ms (timeout)`));
    }, spec.timeout);
  });
  try {
    const result = await Promise.race([scanner.scan({ message: ctx.message, session: ctx.session, tx: ctx.tx, signal }), late]);
    return { name, onError, result };
  } catch (err) {
    failed = err instanceof ScannerTimeout ? 'timeout' : 'error';
    return { name, onError, error: err instanceof Error ? err.message : String(err) };
  } finally {
    metrics.scanner(name, (performance.now() - t0) / 1000, failed);
    clearTimeout(timer);
    timeout.abort(); // a scanner still holding a socket or a child lets go of it
  }
}

/** The scanners' outcomes as one verdict (pure: unit-tested). */
export function combine(outcomes: readonly Outcome[], log?: Logger): Verdict {
  const tests: TestHit[] = [];
  const headers: string[] = [];
  const removeHeaders: string[] = [];
  let tempfail: Verdict | undefined;
  for (const o of outcomes) {
    if (o.error !== undefined) {
      if (o.onError === 'accept') {
        log?.warn({ check: 'scanners', scanner: o.name, err: o.error, onError: 'accept' }, 'scanner failed: message goes on without it (on_error: accept)');
        continue;
      }
      log?.error({ check: 'scanners', scanner: o.name, err: o.error, onError: 'tempfail' }, 'scanner failed: message refused for now (on_error: tempfail)');
      tempfail ??= { kind: 'tempfail', check: o.name, code: 451, enhanced: '4.7.1', text: `Message could not be scanned (${o.name}), try again later`, setting: 'filters.scanners' };
      continue;
    }
    if (o.skipped === 'oversize') {
      log?.info({ check: 'scanners', scanner: o.name }, 'scanner skipped: message over its max_size (on_oversize: skip)');
      continue;
    }
    const r = o.result as ScanResult;
    if (r.kind !== 'accept') {
      const refusal = { kind: r.kind, check: o.name, code: r.code, enhanced: r.enhanced, text: r.text, setting: 'filters.scanners', log: r.log ?? `${o.name}: ${r.kind === 'reject' ? 'rejected' : 'deferred'}` } as const;
      if (r.kind === 'reject') return refusal;
      tempfail ??= refusal;
      continue;
    }
    tests.push(...(r.tests ?? []));
    headers.push(...(r.headers ?? []));
    removeHeaders.push(...(r.removeHeaders ?? []));
    if (r.log) log?.info({ check: 'scanners', scanner: o.name }, r.log);
    if (r.warn) log?.warn({ check: 'scanners', scanner: o.name }, r.warn);
  }
  if (tempfail) return tempfail;
  if (tests.length === 0 && headers.length === 0 && removeHeaders.length === 0) return CONTINUE;
  const score = tests.reduce((sum, t) => sum + t.score, 0);
  return { kind: 'tag', check: 'scanners', score, tests, headers, ...(removeHeaders.length > 0 ? { removeHeaders } : {}) };
}

export function scannersCheck(specs: readonly ScannerSpec[], deps: CheckDeps): Check<'data'> {
  const scanners = specs.map((spec) => ({ spec, scanner: createScanner(spec) }));
  return {
    name: 'scanners',
    phase: 'data',
    // Each scanner's own on_error applies inside; what is left to fail here is nothing of theirs.
    onError: 'tempfail',
    async run(ctx) {
      const outcomes = await Promise.all(scanners.map(({ spec, scanner }) => runOne(spec, scanner, ctx)));
      return combine(outcomes, deps.log?.child({ sid: ctx.session.sid, ip: ctx.session.remoteIp }));
    },
  };
}

export const scanners = defineCheck<readonly ScannerSpec[], 'data'>({
  name: 'scanners',
  phase: 'data',
  settings: (c) => (c.filters.scanners.length > 0 ? c.filters.scanners : undefined),
  create: (specs, deps) => scannersCheck(specs, deps),
});
