// `mxguard check` and the message filters (issue 10): a filter file that does not parse is a
// problem at its own line; a rule that matches an empty message is flagged (DMail warns that a
// filter may "accidentally reject everything (!)"); and `--sample DIR` runs the filters over a
// folder of known-good mail and lists every message they would reject, drop or tag, and by which
// rule.
import fs from 'node:fs';
import path from 'node:path';
import type { Config } from '../config/schema.ts';
import type { ConfigMessage } from '../config/load.ts';
import { loadFilters, type MessageFilter } from '../policy/filters/check.ts';
import { EMPTY_MESSAGE } from '../policy/filters/scan.ts';
import { FilterSyntaxError, type FilterEnvelope, type FilterResult, type ScanMessage } from '../policy/filters/types.ts';
import { parseHeaderBlock } from '../mail/header-block.ts';
import { formatScore } from '../policy/scoring.ts';

type Loaded = { name: string; filter: MessageFilter }[];

/** Compiles the configured filters; a file that does not parse or cannot be read is a problem at its line. */
export function filterProblems(config: Config): { filters: Loaded; problems: ConfigMessage[] } {
  try {
    return { filters: loadFilters(config.filters), problems: [] };
  } catch (err) {
    if (err instanceof FilterSyntaxError) {
      const key = config.filters.mfilter === err.file ? 'filters.mfilter' : 'filters.rules';
      return { filters: [], problems: [{ file: err.file, line: err.line, column: err.col ?? 1, key, message: err.message.slice(err.message.indexOf(': ') + 2) }] };
    }
    const e = err as NodeJS.ErrnoException;
    const file = e.path ?? config.filters.mfilter ?? config.filters.rules[0] ?? '';
    return { filters: [], problems: [{ file, line: 0, column: 0, key: 'filters', message: `cannot read ${file}: ${e.code ?? e.message}` }] };
  }
}

const SAMPLE_ENV: FilterEnvelope = { mailFrom: '', rcpts: [], clientIp: '192.0.2.1' };

/** The filters' own warnings, and rules that match an empty message (no header, no body): they may match everything. */
export function emptyMessageWarnings(filters: Loaded): ConfigMessage[] {
  const out: ConfigMessage[] = [];
  for (const { name, filter } of filters) {
    for (const w of filter.warnings) {
      const m = /^(.*?):(\d+): (.*)$/.exec(w);
      out.push(m ? { file: m[1] as string, line: Number(m[2]), column: 1, key: name, message: m[3] as string } : { file: filter.source, line: 0, column: 0, key: name, message: w });
    }
    const r = filter.run(EMPTY_MESSAGE, SAMPLE_ENV);
    const where = (rule: string): { file: string; line: number } => {
      const m = /^(.*):(\d+)$/.exec(rule);
      return m ? { file: m[1] as string, line: Number(m[2]) } : { file: filter.source, line: 0 };
    };
    if (r.action && r.action.kind !== 'accept') {
      out.push({ ...where(r.action.rule), column: 1, key: name, message: `this rule ${r.action.kind === 'reject' ? 'rejects' : 'drops'} an empty message: make sure it does not match every message` });
    }
    for (const h of r.hits) if (h.score > 0) out.push({ file: filter.source, line: 0, column: 0, key: name, message: `rule ${h.name} (${formatScore(h.score)} points) matches an empty message` });
  }
  return out;
}

/** One message of the sample and what the filters would do with it. */
export interface SampleVerdict {
  readonly file: string;
  readonly outcome: 'reject' | 'drop' | 'tag' | 'pass';
  /** Which rule and filter decided (reject, drop), or the rules that scored. */
  readonly detail: string;
  readonly score: number;
}

/** The messages under `dir`: a Maildir (cur/ and new/, also in sub-folders) or one message per file. */
export function sampleFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, depth: number): void => {
    if (depth > 8) return;
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) {
        if (e.name !== 'tmp') walk(p, depth + 1); // Maildir tmp/ holds deliveries in progress
      } else if (e.isFile() && !e.name.startsWith('.') && !/^(dovecot|maildirsize|subscriptions)/.test(e.name)) out.push(p);
    }
  };
  walk(dir, 0);
  return out;
}

/** A message file as the filters would see it at the end of DATA (the body up to filters.scan_size). */
export function scanFile(bytes: Buffer, scanSize: number): ScanMessage {
  // Mail from a mailbox may have bare LF line ends: the filters expect CRLF, as SMTP delivers it.
  const crlf = bytes.includes('\r\n') ? bytes : Buffer.from(bytes.toString('latin1').replace(/\n/g, '\r\n'), 'latin1');
  const h = parseHeaderBlock(crlf);
  const body = crlf.subarray(h.bodyOffset);
  let lines = 0;
  for (let i = crlf.indexOf(10); i !== -1; i = crlf.indexOf(10, i + 1)) lines++;
  return { headers: h.fields, headersTruncated: h.truncated, rawBody: body.subarray(0, scanSize), bodyTruncated: body.length > scanSize, size: crlf.length, lines };
}

export function judgeSample(filters: Loaded, msg: ScanMessage): Omit<SampleVerdict, 'file'> {
  let score = 0;
  const scored: string[] = [];
  for (const { name, filter } of filters) {
    const r: FilterResult = filter.run(msg, SAMPLE_ENV);
    for (const h of r.hits) {
      score += h.score;
      if (h.score !== 0) scored.push(`${h.name}=${formatScore(h.score)}`);
    }
    const a = r.action;
    if (a?.kind === 'reject' || a?.kind === 'discard') {
      return { outcome: a.kind === 'reject' ? 'reject' : 'drop', detail: `${name} ${a.rule}${a.reason ? ` "${a.reason}"` : ''}`, score };
    }
    if (a?.kind === 'accept') break; // a filter's accept is final
  }
  return { outcome: scored.length > 0 ? 'tag' : 'pass', detail: scored.join(' '), score };
}

/** The `--sample` report, and whether every message came through unrejected. */
export function sampleReport(config: Config, filters: Loaded, dir: string): { ok: boolean; output: string } {
  const files = sampleFiles(dir);
  const verdicts: SampleVerdict[] = [];
  for (const file of files) {
    let bytes: Buffer;
    try {
      bytes = fs.readFileSync(file);
    } catch (err) {
      verdicts.push({ file, outcome: 'pass', detail: `unreadable: ${(err as NodeJS.ErrnoException).code ?? ''}`, score: 0 });
      continue;
    }
    verdicts.push({ file: path.relative(dir, file), ...judgeSample(filters, scanFile(bytes, config.filters.scan_size)) });
  }
  const s = config.scoring;
  const lines: string[] = [];
  let refused = 0;
  let tagged = 0;
  for (const v of verdicts) {
    if (v.outcome === 'reject' || v.outcome === 'drop') {
      refused++;
      lines.push(`${v.outcome.toUpperCase()} ${v.file}: by ${v.detail}`);
    } else if (v.outcome === 'tag') {
      const at = v.score >= s.reject_at ? `, at or over scoring.reject_at ${formatScore(s.reject_at)}: REJECTED` : v.score >= s.tag_at ? `, at or over scoring.tag_at ${formatScore(s.tag_at)}: tagged spam` : '';
      if (v.score >= s.reject_at) refused++;
      else tagged++;
      lines.push(`TAG ${v.file}: ${formatScore(v.score)} points (${v.detail})${at}`);
    }
  }
  if (filters.length === 0) lines.unshift('no filters configured (filters.mfilter, filters.rules)');
  const summary = `${dir}: ${verdicts.length} message${verdicts.length === 1 ? '' : 's'}: ${refused} would be refused, ${tagged} scored, ${verdicts.length - refused - tagged} untouched`;
  return { ok: refused === 0, output: [...lines, summary].join('\n') };
}
