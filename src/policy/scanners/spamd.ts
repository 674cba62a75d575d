// SpamAssassin's spamd as a scanner (issue 12): the SPAMC/1.5 protocol over TCP or a Unix
// socket, SYMBOLS or REPORT. spamd sees the envelope the way SpamAssassin reads it: our Received
// line (client IP, HELO, us) is already on top of the stored message, and X-Envelope-From and
// X-Envelope-To are put above it (SpamAssassin trusts X-Envelope-From only above the first
// Received). Those two fields go to spamd only, never into the delivered message.
//
// Points: with REPORT each SpamAssassin rule joins X-Spam-Status tests= under its own name with
// its points (what rounding in the report leaves over goes under the scanner's name, so the sum
// is SpamAssassin's score); SYMBOLS gives rule names without points, so SpamAssassin's score goes
// under the scanner's name (`spamd`). Either way an X-Spam-Spamd header, in SpamAssassin's own
// X-Spam-Status form, shows its verdict and every rule it hit (also those of 0 points, which
// tests= leaves out). action reject refuses (550 5.7.1) what spamd calls spam (at its own
// required_score); action tag leaves the decision to scoring.*.
import type { ScannerSpec } from './check.ts';
import { fold, formatScore } from '../scoring.ts';
import type { TestHit } from '../verdict.ts';
import type { Scanner, ScanInput, ScanResult } from './types.ts';
import { exchange, parseAddress, write } from './socket.ts';

type SpamdSpec = Extract<ScannerSpec, { type: 'spamd' }>;

export interface SpamdReply {
  readonly spam: boolean;
  readonly score: number;
  readonly required: number;
  /** Rule names hit, in spamd's order. */
  readonly rules: readonly string[];
  /** REPORT only: the points of each rule as the report shows them (one decimal). */
  readonly points?: readonly TestHit[];
}

/** A SpamAssassin rule name (anything else in a SYMBOLS list is dropped). */
const RULE_NAME = /^[A-Za-z0-9_]{1,60}$/;

/**
 * A SPAMD/1.x reply to SYMBOLS or REPORT. Throws on anything else, and on an EX_ code other than
 * 0 (EX_USAGE, EX_NOUSER, EX_TEMPFAIL...): spamd could not check the message.
 */
export function parseSpamdReply(raw: Buffer, command: 'SYMBOLS' | 'REPORT'): SpamdReply {
  const text = raw.toString('latin1');
  const headEnd = text.indexOf('\r\n\r\n');
  const firstEnd = text.indexOf('\r\n');
  const status = firstEnd === -1 ? text : text.slice(0, firstEnd);
  const m = /^SPAMD\/\d+\.\d+ (\d+) (\S.*)$/.exec(status);
  if (!m) throw new Error(`spamd: not a SPAMD reply: ${JSON.stringify(status.slice(0, 80))}`);
  if (m[1] !== '0') throw new Error(`spamd: ${(m[2] as string).slice(0, 80)} (code ${m[1]})`);
  if (headEnd === -1) throw new Error('spamd: reply without its header block');
  let spamLine: RegExpExecArray | null = null;
  let length: number | undefined;
  for (const line of text.slice(firstEnd + 2, headEnd).split('\r\n')) {
    const s = /^Spam:\s*(True|False|Yes|No)\s*;\s*(-?\d+(?:\.\d+)?)\s*\/\s*(-?\d+(?:\.\d+)?)\s*$/i.exec(line);
    if (s) spamLine = s;
    const l = /^Content-length:\s*(\d+)\s*$/i.exec(line);
    if (l) length = Number(l[1]);
  }
  if (!spamLine) throw new Error('spamd: reply without a Spam: line');
  const body = text.slice(headEnd + 4);
  if (length !== undefined && body.length < length) throw new Error(`spamd: reply cut short (${body.length} of ${length} octets)`);
  const spam = /^(true|yes)$/i.test(spamLine[1] as string);
  const score = Number(spamLine[2]);
  const required = Number(spamLine[3]);
  if (command === 'SYMBOLS') {
    const rules = body
      .trim()
      .split(',')
      .map((r) => r.trim())
      .filter((r) => RULE_NAME.test(r));
    return { spam, score, required, rules };
  }
  const points = parseReportTable(body);
  return { spam, score, required, rules: points.map((p) => p.name), points };
}

/**
 * The rules of a REPORT body: the lines under " pts rule name   description" and its "---- ---"
 * rule, each "  1.2 RULE_NAME  description" (descriptions go on over indented lines).
 */
export function parseReportTable(body: string): TestHit[] {
  const lines = body.split(/\r?\n/);
  const start = lines.findIndex((l) => /^-{3,}\s+-{3,}/.test(l));
  if (start === -1) return [];
  const out: TestHit[] = [];
  for (const line of lines.slice(start + 1)) {
    const m = /^\s*(-?\d+(?:\.\d+)?)\s+([A-Za-z0-9_]{1,60})(?:\s|$)/.exec(line);
    if (m) out.push({ name: m[2] as string, score: Number(m[1]) });
  }
  return out;
}

/** The fields put above the message for spamd: the envelope, as SpamAssassin reads it. */
export function envelopeFields(input: Pick<ScanInput, 'tx'>): string {
  const clean = (s: string): string => s.replace(/[\x00-\x1f\x7f]/g, '');
  const to = input.tx.rcpts.map((r) => `<${clean(r.address)}>`);
  return `X-Envelope-From: <${clean(input.tx.mailFrom.address)}>\r\n${fold('X-Envelope-To', to.join(', ') || '<>')}`;
}

/** A reply turned into what mxguard does with it (pure: unit-tested). */
export function spamdResult(reply: SpamdReply, name: string, action: 'tag' | 'reject'): ScanResult {
  const verdict = `${reply.spam ? 'Yes' : 'No'}, score=${formatScore(reply.score)} required=${formatScore(reply.required)} tests=${reply.rules.length > 0 ? reply.rules.join(',') : 'none'}`;
  const log = `${name}: ${verdict}`;
  if (action === 'reject' && reply.spam) {
    return { kind: 'reject', code: 550, enhanced: '5.7.1', text: `Message refused as spam by SpamAssassin (score ${formatScore(reply.score)}, required ${formatScore(reply.required)})`, log };
  }
  let tests: TestHit[];
  if (reply.points) {
    tests = [...reply.points];
    // The report rounds each rule to one decimal: the rest keeps the sum SpamAssassin's score.
    const rest = Math.round((reply.score - tests.reduce((s, t) => s + t.score, 0)) * 1000) / 1000;
    if (rest !== 0) tests.push({ name, score: rest });
  } else tests = [{ name, score: reply.score }];
  return { kind: 'accept', tests, headers: [fold('X-Spam-Spamd', verdict)], log };
}

export function create(spec: SpamdSpec): Scanner {
  const addr = parseAddress(spec.address, 'spamd');
  const name = spec.name ?? spec.type;
  const command = spec.command;
  if (spec.user !== undefined && /[\x00-\x20\x7f]/.test(spec.user)) throw new Error(`spamd: user "${spec.user}" has spaces or control characters`);
  return {
    async scan(input: ScanInput): Promise<ScanResult> {
      const envelope = Buffer.from(envelopeFields(input), 'latin1');
      const length = envelope.length + input.message.size;
      const head = `${command} SPAMC/1.5\r\nContent-length: ${length}\r\n${spec.user !== undefined ? `User: ${spec.user}\r\n` : ''}\r\n`;
      const raw = await exchange(addr, 'spamd', input.signal, async (sock) => {
        await write(sock, Buffer.concat([Buffer.from(head, 'latin1'), envelope]));
        for await (const chunk of input.message.read(0)) {
          if (input.signal.aborted) return;
          await write(sock, chunk);
        }
      });
      return spamdResult(parseSpamdReply(raw, command), name, spec.action);
    },
  };
}
