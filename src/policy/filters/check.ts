// The message filters as DATA checks: filters.mfilter (DMail's Mfilter language, mfilter.ts) and
// filters.rules (SpamAssassin's rule syntax, sa-rules.ts). Each compiles its files when the
// checks are built (start, SIGHUP: a file that does not parse is an error naming its line, and a
// reload keeps the old rules), then runs over the message at the end of DATA: points go to the
// transaction score under each rule's name (X-Spam-Status tests=), a reject is a 5xx at the end
// of DATA (never a bounce message), a drop is a discard.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { defineCheck, type Check, type CheckDeps } from '../check.ts';
import type { DataContext } from '../context.ts';
import { CONTINUE, type Verdict } from '../verdict.ts';
import { scanMessage } from './scan.ts';
import type { FilterEnvelope, FilterResult, ScanMessage } from './types.ts';

/** A compiled filter file (or set of files) that can judge a message. */
export interface MessageFilter {
  /** What this is, for logs and `mxguard check`: the file name(s). */
  readonly source: string;
  readonly rules: number;
  /** What compiled but will not work as the file's author may think ("eval: tests are not supported"). */
  readonly warnings: readonly string[];
  run(msg: ScanMessage, env: FilterEnvelope): FilterResult;
}

interface FilterSettings {
  readonly files: readonly string[];
  readonly scanSize: number;
  readonly onError: 'tempfail' | 'accept';
}

// The compilers are loaded when a filter is configured, not with the registry: `mxguard stdio`
// starts once per connection, and the two languages are some 3,000 lines it need not parse.
const load = createRequire(import.meta.url);
const mfilterModule = (): typeof import('./mfilter.ts') => load('./mfilter.ts') as typeof import('./mfilter.ts');
const rulesModule = (): typeof import('./sa-rules.ts') => load('./sa-rules.ts') as typeof import('./sa-rules.ts');

/** Reads and compiles filters.mfilter; throws FilterSyntaxError (file:line) or the read error. */
export function loadMfilter(file: string): MessageFilter {
  const program = mfilterModule().compileMfilter(fs.readFileSync(file, 'utf8'), file);
  return { source: file, rules: program.rules, warnings: [], run: (msg, env) => program.run(msg, env) };
}

/** Reads and compiles the filters.rules files (one rule set: meta rules may span files). */
export function loadRules(files: readonly string[]): MessageFilter {
  const set = rulesModule().compileRules(files.map((file) => ({ file, text: fs.readFileSync(file, 'utf8') })));
  return { source: files.join(', '), rules: set.rules, warnings: set.warnings, run: (msg, env) => set.run(msg, env) };
}

/** Every filter the config enables, compiled (for `mxguard check --sample` and the empty-message warning). */
export function loadFilters(filters: { mfilter?: string | undefined; rules: readonly string[] }): { name: string; filter: MessageFilter }[] {
  const out: { name: string; filter: MessageFilter }[] = [];
  if (filters.mfilter !== undefined) out.push({ name: 'mfilter', filter: loadMfilter(filters.mfilter) });
  if (filters.rules.length > 0) out.push({ name: 'filter_rules', filter: loadRules(filters.rules) });
  return out;
}

export function envelopeOf(ctx: Pick<DataContext, 'session' | 'tx'>): FilterEnvelope {
  return {
    mailFrom: ctx.tx.mailFrom.address,
    rcpts: ctx.tx.rcpts.map((r) => r.address),
    clientIp: ctx.session.remoteIp,
    ...(ctx.session.helo !== undefined ? { helo: ctx.session.helo } : {}),
  };
}

/** A filter's answer as a verdict: its action if it took one, else its points and headers as a tag. */
export function verdictOf(check: string, r: FilterResult): Verdict {
  const a = r.action;
  if (a?.kind === 'reject') {
    const text = a.reason.replace(/[\r\n]+/g, ' ').trim() || 'Message content rejected';
    return { kind: 'reject', check, code: 550, enhanced: '5.7.1', text, log: `${check}: rejected by ${a.rule}` };
  }
  if (a?.kind === 'discard') return { kind: 'discard', check, log: `${check}: dropped by ${a.rule}${a.reason ? ` (${a.reason})` : ''}` };
  if (a?.kind === 'accept') return { kind: 'accept', check, log: `${check}: accepted by ${a.rule}${a.reason ? ` (${a.reason})` : ''}` };
  if (r.hits.length === 0 && r.headers.length === 0) return CONTINUE;
  const score = r.hits.reduce((sum, h) => sum + h.score, 0);
  return { kind: 'tag', check, score, headers: r.headers, tests: r.hits.map((h) => ({ name: h.name, score: h.score })) };
}

function filterCheck(name: string, s: FilterSettings, filter: MessageFilter, deps: CheckDeps): Check<'data'> {
  for (const w of filter.warnings) deps.log?.warn({ check: name }, w);
  deps.log?.info({ check: name, source: filter.source, rules: filter.rules }, 'message filter loaded');
  return {
    name,
    phase: 'data',
    onError: s.onError,
    async run(ctx) {
      const msg = await scanMessage(ctx.message, s.scanSize);
      return verdictOf(name, filter.run(msg, envelopeOf(ctx)));
    },
  };
}

export const mfilter = defineCheck<FilterSettings, 'data'>({
  name: 'mfilter',
  phase: 'data',
  settings: (c) => (c.filters.mfilter === undefined ? undefined : { files: [c.filters.mfilter], scanSize: c.filters.scan_size, onError: c.filters.on_error }),
  create: (s, deps) => filterCheck('mfilter', s, loadMfilter(s.files[0] as string), deps),
});

export const filterRules = defineCheck<FilterSettings, 'data'>({
  name: 'filter_rules',
  phase: 'data',
  settings: (c) => (c.filters.rules.length === 0 ? undefined : { files: c.filters.rules, scanSize: c.filters.scan_size, onError: c.filters.on_error }),
  create: (s, deps) => filterCheck('filter_rules', s, loadRules(s.files), deps),
});
