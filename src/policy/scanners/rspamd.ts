// rspamd as a scanner (issue 12): one POST <url>/checkv2 per message, the stored message (our
// Received first) as the body and the envelope in rspamd's request headers: IP, Helo, Hostname
// (the client's host name, when the launcher found one), From ("<>" for the null sender), one
// Rcpt per recipient, Queue-Id, User (AUTH), Password (if configured). See rspamd's protocol
// page (https://rspamd.com/doc/developers/protocol.html).
//
// rspamd's action, mapped exactly (integrators often get this wrong: `soft reject` is never a
// 5xx, `greylist` is not `soft reject` but both mean "come back later"):
//   no action                      accept
//   greylist                       451 4.7.1 (rspamd's smtp_message, else "Try again later")
//   soft reject                    451 4.7.1 (rspamd's smtp_message, else "Try again later")
//   reject                         550 5.7.1 (rspamd's smtp_message, else "Spam message rejected")
//   add header                     accept, tagged: "X-Spam: Yes", the header rspamd's own milter adds
//   rewrite subject                accept, tagged: X-Spam: Yes and Subject replaced by rspamd's `subject`
//   anything else (discard, quarantine, custom actions)  an error: the scanner's on_error decides,
//                                  since mxguard cannot tell what the administrator meant by it.
// smtp_message is made one line of printable ASCII (at most 300 characters).
//
// The milter block (milter_headers module) is applied: each of add_headers is added (rspamd's
// `order` is not kept: our header fields go on top of the message); each of remove_headers
// removes every incoming field of that name (rspamd's index, "the Nth one", is not honoured).
// Fields named X-Spam-* are ours (scoring writes them from the whole score) and are not taken
// from rspamd. Envelope changes (change_from, add_rcpt, del_rcpt) are not applied, only logged.
//
// Points: rspamd's score joins the transaction score. Each rspamd symbol with non-zero points goes
// into X-Spam-Status tests= under its own name; what differs between their sum and rspamd's total
// (grow_factor, group limits) goes under the scanner's name, so the points add up to rspamd's
// score exactly. X-Spam-Rspamd shows rspamd's action, score and every symbol (0 points included).
import http from 'node:http';
import https from 'node:https';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ScannerSpec } from './check.ts';
import { fold } from '../scoring.ts';
import type { TestHit } from '../verdict.ts';
import { messageChunks, type Scanner, type ScanInput, type ScanResult } from './types.ts';

type RspamdSpec = Extract<ScannerSpec, { type: 'rspamd' }>;

export interface RspamdSymbol {
  readonly name: string;
  readonly score: number;
}

export interface RspamdReply {
  readonly action: string;
  readonly score: number;
  readonly required?: number;
  /** In rspamd's order. */
  readonly symbols: readonly RspamdSymbol[];
  /** messages.smtp_message, raw. */
  readonly smtpMessage?: string;
  /** The rewritten subject (action `rewrite subject`). */
  readonly subject?: string;
  /** milter.add_headers, flattened: one entry per field to add. */
  readonly addHeaders: readonly { readonly name: string; readonly value: string }[];
  /** milter.remove_headers: the names. */
  readonly removeHeaders: readonly string[];
  /** Other milter requests (change_from, add_rcpt...) we do not carry out: their names, for the log. */
  readonly ignored: readonly string[];
}

/** The largest reply read (a checkv2 answer is a few KiB; with every symbol's options maybe more). */
const MAX_REPLY = 4 * 1024 * 1024;
/** A header field name (RFC 5322 ftext). */
const FIELD_NAME = /^[\x21-\x39\x3b-\x7e]{1,76}$/;
/** A symbol name usable in tests= (anything else counts under the scanner's name). */
const SYMBOL_NAME = /^[A-Za-z0-9_.-]{1,80}$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A checkv2 JSON answer. Throws when it is not one (no action or score): rspamd could not check it. */
export function parseRspamdReply(body: string): RspamdReply {
  let j: unknown;
  try {
    j = JSON.parse(body);
  } catch {
    throw new Error(`rspamd: reply is not JSON: ${JSON.stringify(body.slice(0, 200))}`);
  }
  if (!isObject(j)) throw new Error('rspamd: reply is not a JSON object');
  if (typeof j.error === 'string') throw new Error(`rspamd: ${j.error.slice(0, 200)}`);
  if (typeof j.action !== 'string' || typeof j.score !== 'number' || !Number.isFinite(j.score)) throw new Error(`rspamd: reply without action and score: ${JSON.stringify(body.slice(0, 200))}`);
  const symbols: RspamdSymbol[] = [];
  if (isObject(j.symbols)) {
    for (const [key, s] of Object.entries(j.symbols)) {
      if (!isObject(s)) continue;
      // metric_score is what the symbol added to the total; score is the same for the default metric.
      const pts = typeof s.metric_score === 'number' ? s.metric_score : typeof s.score === 'number' ? s.score : 0;
      symbols.push({ name: typeof s.name === 'string' ? s.name : key, score: Number.isFinite(pts) ? pts : 0 });
    }
  }
  const messages = isObject(j.messages) ? j.messages : {};
  const addHeaders: { name: string; value: string }[] = [];
  const removeHeaders: string[] = [];
  const ignored: string[] = [];
  if (isObject(j.milter)) {
    for (const [key, v] of Object.entries(j.milter)) {
      if (key === 'add_headers' && isObject(v)) {
        for (const [name, spec] of Object.entries(v)) {
          // A string, {value, order}, or a list of those (several fields of one name).
          for (const one of Array.isArray(spec) ? spec : [spec]) {
            const value = typeof one === 'string' ? one : isObject(one) && typeof one.value === 'string' ? one.value : undefined;
            if (value !== undefined) addHeaders.push({ name, value });
          }
        }
      } else if (key === 'remove_headers' && isObject(v)) {
        removeHeaders.push(...Object.keys(v));
      } else ignored.push(key);
    }
  }
  return {
    action: j.action,
    score: j.score,
    ...(typeof j.required_score === 'number' ? { required: j.required_score } : {}),
    symbols,
    ...(typeof messages.smtp_message === 'string' ? { smtpMessage: messages.smtp_message } : {}),
    ...(typeof j.subject === 'string' ? { subject: j.subject } : {}),
    addHeaders,
    removeHeaders,
    ignored,
  };
}

/** rspamd's text for an SMTP reply: one line of printable ASCII, at most 300 characters; `fallback` if nothing is left. */
export function smtpText(s: string | undefined, fallback: string): string {
  const t = (s ?? '')
    .replace(/[\r\n\t]+/g, ' ')
    .replace(/[^\x20-\x7e]/g, '?')
    .replace(/ {2,}/g, ' ')
    .trim()
    .slice(0, 300)
    .trim();
  return t === '' ? fallback : t;
}

/** A header value from rspamd: its own folding kept (each continuation starts with white space), control characters dropped. */
function headerValue(value: string): string {
  const lines = value
    .replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g, '')
    .split(/\r?\n|\r/)
    .filter((l) => l.trim() !== '');
  return lines.map((l, i) => (i === 0 ? l.trim() : /^[ \t]/.test(l) ? l : ` ${l}`)).join('\r\n');
}

/** A Subject field holding `subject`: RFC 2047 (UTF-8, B) when it is not ASCII; folded at spaces, which stay. */
function subjectField(subject: string): string {
  const flat = subject.replace(/[\r\n]+/g, ' ').replace(/[\x00-\x08\x0a-\x1f\x7f]/g, '');
  if (/^[\x20-\x7e\t]*$/.test(flat)) {
    const words = flat.trim().split(/(?= )/);
    const lines: string[] = [];
    let line = `Subject: ${words[0] ?? ''}`;
    for (const w of words.slice(1)) {
      // Fold before a space (it stays: unfolding gives the subject back), never a blank line.
      if (line.length + w.length > 78 && w.trim() !== '') {
        lines.push(line);
        line = w;
      } else line += w;
    }
    lines.push(line);
    return lines.join('\r\n') + '\r\n';
  }
  // Encoded words of at most 45 octets of UTF-8 each (60 characters of base64), never splitting a character.
  const words: string[] = [];
  let cur = '';
  for (const ch of flat) {
    if (Buffer.byteLength(cur + ch, 'utf8') > 45) {
      words.push(cur);
      cur = '';
    }
    cur += ch;
  }
  if (cur !== '') words.push(cur);
  return `Subject: ${words.map((w) => `=?UTF-8?B?${Buffer.from(w, 'utf8').toString('base64')}?=`).join('\r\n ')}\r\n`;
}

/** rspamd's answer as a scan result (pure: unit-tested). `name` is the scanner's name (tests=, logs). */
export function mapRspamdReply(reply: RspamdReply, name: string): ScanResult {
  const symbols = reply.symbols.map((s) => `${s.name}(${s.score.toFixed(2)})`).join(',');
  // Two decimals, as rspamd writes them.
  const summary = `${reply.action}, score=${reply.score.toFixed(2)}${reply.required !== undefined ? ` required=${reply.required.toFixed(2)}` : ''}${symbols !== '' ? ` symbols=${symbols}` : ''}`;
  const log = `${name}: ${summary}${reply.ignored.length > 0 ? ` (milter requests not applied: ${reply.ignored.join(', ')})` : ''}`;
  switch (reply.action) {
    case 'reject':
      return { kind: 'reject', code: 550, enhanced: '5.7.1', text: smtpText(reply.smtpMessage, 'Spam message rejected'), log };
    case 'soft reject':
    case 'greylist':
      return { kind: 'tempfail', code: 451, enhanced: '4.7.1', text: smtpText(reply.smtpMessage, 'Try again later'), log };
    case 'no action':
    case 'add header':
    case 'rewrite subject':
      break;
    default:
      throw new Error(`rspamd: action "${reply.action.slice(0, 60)}" is not one mxguard can carry out (${summary.slice(0, 300)})`);
  }
  const tests: TestHit[] = [];
  for (const s of reply.symbols) if (s.score !== 0 && SYMBOL_NAME.test(s.name)) tests.push({ name: s.name, score: s.score });
  const rest = Math.round((reply.score - tests.reduce((sum, t) => sum + t.score, 0)) * 1000) / 1000;
  if (rest !== 0 || tests.length === 0) tests.push({ name, score: rest });
  const headers: string[] = [];
  const remove = new Set<string>();
  for (const r of reply.removeHeaders) if (FIELD_NAME.test(r)) remove.add(r.toLowerCase());
  for (const h of reply.addHeaders) {
    // X-Spam-* are ours, written from the whole transaction score.
    if (!FIELD_NAME.test(h.name) || h.name.toLowerCase().startsWith('x-spam-')) continue;
    const value = headerValue(h.value);
    headers.push(`${h.name}: ${value}\r\n`);
  }
  if (reply.action !== 'no action') headers.push('X-Spam: Yes\r\n');
  if (reply.action === 'rewrite subject' && reply.subject !== undefined) {
    remove.add('subject');
    headers.push(subjectField(reply.subject));
  }
  headers.push(fold('X-Spam-Rspamd', summary));
  return { kind: 'accept', tests, headers, ...(remove.size > 0 ? { removeHeaders: [...remove] } : {}), log };
}

/** A header value as octets (an SMTPUTF8 address goes as its UTF-8 bytes). */
function octets(s: string): string {
  return Buffer.from(s, 'utf8').toString('latin1');
}

/** The checkv2 request headers for this message: the envelope as rspamd reads it. */
export function requestHeaders(input: Pick<ScanInput, 'message' | 'session' | 'tx'>, password?: string): Record<string, string | string[]> {
  const { session, tx, message } = input;
  const h: Record<string, string | string[]> = {
    'Content-Length': String(message.size),
    IP: session.remoteIp.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, ''),
    From: tx.mailFrom.address === '' ? '<>' : octets(tx.mailFrom.address),
    Rcpt: tx.rcpts.map((r) => octets(r.address)),
    'Queue-Id': message.id,
  };
  if (session.helo !== undefined) h.Helo = octets(session.helo);
  if (typeof session.clientHostname === 'string' && session.clientHostname !== '') h.Hostname = session.clientHostname;
  if (session.authUser !== undefined) h.User = octets(session.authUser);
  if (password !== undefined) h.Password = password;
  return h;
}

/** POSTs the message; resolves with the HTTP status and the body. */
function post(url: URL, headers: Record<string, string | string[]>, input: ScanInput): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const mod = url.protocol === 'https:' ? https : http;
    // A fresh connection each time (agent: false): a kept-alive socket rspamd closed meanwhile
    // would fail a message that rspamd would have checked.
    const req = mod.request(url, { method: 'POST', headers, signal: input.signal, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (d: Buffer) => {
        size += d.length;
        if (size > MAX_REPLY) req.destroy(new Error(`rspamd: reply longer than ${MAX_REPLY} octets`));
        else chunks.push(d);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
      res.on('aborted', () => reject(new Error('rspamd: reply cut off')));
    });
    req.on('error', reject);
    pipeline(Readable.from(messageChunks(input.message)), req).catch(reject);
  });
}

export function create(spec: RspamdSpec): Scanner {
  const name = spec.name ?? spec.type;
  const url = new URL(spec.url.replace(/\/+$/, '') + '/checkv2');
  if (spec.password !== undefined && /[\r\n]/.test(spec.password)) throw new Error('rspamd: password has a line break');
  return {
    async scan(input: ScanInput): Promise<ScanResult> {
      const { status, body } = await post(url, requestHeaders(input, spec.password), input);
      if (status !== 200) throw new Error(`rspamd: HTTP ${status}: ${smtpText(body, '(no body)').slice(0, 200)}`);
      return mapRspamdReply(parseRspamdReply(body), name);
    },
  };
}
