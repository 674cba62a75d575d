// The transaction score (issue 10): one sum per message, from the connect, HELO, MAIL, RCPT and
// DATA checks, read at the end of DATA against scoring.tag_at / tempfail_at / reject_at. The
// headers follow SpamAssassin's format so that existing Sieve and procmail rules keep working
// ("X-Spam-Flag: YES", "X-Spam-Status: Yes, score=7.5 required=5.0 tests=A,B").
import type { TestHit } from './verdict.ts';

export interface ScoringSettings {
  /** At this score the message is tagged as spam (X-Spam-Flag: YES). */
  readonly tag_at: number;
  /** At this score the message is refused at the end of DATA (550 5.7.1). */
  readonly reject_at: number;
  /** At this score (below reject_at) it is refused for now (451 4.7.1); undefined: never. */
  readonly tempfail_at?: number | undefined;
  /** Which messages get the X-Spam-* headers: every one (as SpamAssassin), spam only, or none. */
  readonly add_headers: 'all' | 'spam' | 'none';
}

/** Header names SpamAssassin (and we) write; an incoming copy is forged and is removed. */
export const SPAM_HEADER_PREFIX = 'x-spam-';

/** The points by name: a name that scored twice is summed, zero contributions left out. */
export function mergeTests(tests: readonly TestHit[]): TestHit[] {
  if (tests.length === 0) return [];
  const byName = new Map<string, number>();
  for (const t of tests) byName.set(t.name, (byName.get(t.name) ?? 0) + t.score);
  return [...byName].filter(([, score]) => score !== 0).map(([name, score]) => ({ name, score }));
}

/** SpamAssassin's score notation: one decimal. */
export function formatScore(n: number): string {
  if (Number.isInteger(n)) return `${n}.0`; // the common case (0 for most mail): no rounding, no toFixed
  return (Math.round(n * 10) / 10).toFixed(1);
}

/** A refusal the score asks for (reject_at, then tempfail_at), naming the largest contributors. */
export function scoreRefusal(score: number, tests: readonly TestHit[], s: ScoringSettings): string | undefined {
  const top = [...tests]
    .filter((t) => t.score > 0)
    .sort((a, b) => b.score - a.score || a.name.localeCompare(b.name))
    .slice(0, 3)
    .map((t) => `${t.name}=${formatScore(t.score)}`)
    .join(' ');
  const why = top === '' ? '' : `: ${top}`;
  if (score >= s.reject_at) return `550 5.7.1 Message refused as spam (score ${formatScore(score)}, limit ${formatScore(s.reject_at)})${why}`;
  if (s.tempfail_at !== undefined && score >= s.tempfail_at) return `451 4.7.1 Message deferred as likely spam (score ${formatScore(score)}, limit ${formatScore(s.tempfail_at)})${why}, try again later`;
  return undefined;
}

/** X-Spam-Flag (spam only), X-Spam-Score, X-Spam-Level and X-Spam-Status, each "Name: value\r\n". */
export function spamHeaders(score: number, tests: readonly TestHit[], s: ScoringSettings): string[] {
  const spam = score >= s.tag_at;
  if (s.add_headers === 'none' || (s.add_headers === 'spam' && !spam)) return [];
  const names = tests.map((t) => t.name).sort();
  const status = `${spam ? 'Yes' : 'No'}, score=${formatScore(score)} required=${formatScore(s.tag_at)} tests=${names.length > 0 ? names.join(',') : 'none'}`;
  const out: string[] = [];
  if (spam) out.push('X-Spam-Flag: YES\r\n');
  out.push(`X-Spam-Score: ${formatScore(score)}\r\n`);
  const stars = Math.min(50, Math.max(0, Math.floor(score)));
  if (stars > 0) out.push(`X-Spam-Level: ${'*'.repeat(stars)}\r\n`);
  out.push(fold('X-Spam-Status', status));
  return out;
}

/** Folds a long field at its commas and spaces (RFC 5322 2.2.3), lines under 78 octets where it can. */
export function fold(name: string, value: string): string {
  if (name.length + 2 + value.length <= 78) return `${name}: ${value}\r\n`;
  const words = value.split(/(?<=[, ])/);
  let line = `${name}:`;
  let out = '';
  let first = true;
  for (const w of words) {
    const piece = first ? ` ${w}` : w;
    if (!first && line.length + piece.length > 76 && line.trim() !== '') {
      out += line.replace(/ $/, '') + '\r\n';
      line = '\t' + w;
    } else line += piece;
    first = false;
  }
  return out + line.replace(/ $/, '') + '\r\n';
}
