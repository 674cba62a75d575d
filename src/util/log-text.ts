// log.format: text — pino's JSON line rendered as Postfix-like text, and the reader of both forms
// (for `mxguard report`).
//
//   TIMESTAMP HOST mxguard[PID]: QUEUEID: [warning: ]msg key=value ...
//
// The queue ID comes first when the line has one (so `grep QUEUEID` follows a message), else the
// session ID as `sid=SID`. Values with spaces, quotes, backslashes or control characters are
// quoted and escaped (\" \\ \n \r \t \xHH \u2028; bidi overrides too, so that a line cannot be
// made to read otherwise): an event is always exactly one line, whatever a client put in its HELO
// or addresses. A queued transaction is the one event rendered as several lines, each starting
// with its queue ID: the client line (what the connect logged, before the message had an ID), one
// line per check that did more than continue, and the `queued` line with the Message-ID.
import os from 'node:os';

/** A JSON value as pino writes it. */
type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

/** One of our log lines, read back from either format. Text values are strings; JSON keeps its types. */
export interface LogEvent {
  /** ISO 8601 time. */
  readonly time: string;
  /** pino's number: 10 trace … 60 fatal. */
  readonly level: number;
  readonly pid: number;
  readonly msg: string;
  /** Every other field (id and sid included). */
  readonly fields: Record<string, Json>;
  readonly format: 'json' | 'text';
}

const LEVEL_WORD: Record<number, string> = { 10: 'trace', 20: 'debug', 40: 'warning', 50: 'error', 60: 'fatal' };
const WORD_LEVEL: Record<string, number> = { trace: 10, debug: 20, warning: 40, error: 50, fatal: 60 };
/** Renamed for the text form (Postfix's own names), and back when read. */
const TEXT_KEY: Record<string, string> = { msgid: 'message-id', connectedAt: 'connected_at' };
const JSON_KEY: Record<string, string> = { 'message-id': 'msgid', connected_at: 'connectedAt' };
/** Envelope addresses are shown as Postfix does: from=<a@b>, the null sender from=<>. */
const ADDRESS_KEYS = new Set(['from', 'rcpt', 'to', 'rcpts', 'rcptsRefused']);
/** Fields that are the line's frame, not its content. */
const FRAME = new Set(['level', 'time', 'pid', 'msg', 'hostname']);
/** A queue ID (src/queue/spool.ts newQueueId: 14 of 0-9A-Z) as the first word of a line. Only our queue IDs are logged as `id`: IDs from outside (an MTA-STS policy's, sts_id) get other names, else a remote domain could lead a line with another message's ID. */
const QUEUE_ID = /^[0-9A-Z]{14}$/;

const NEEDS_QUOTES = /[\s"\\\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
const ESCAPED = /["\\\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
/** A message shown bare must not be mistaken for a key=value, an ID, a level or a quoted string when read back. */
const MSG_NEEDS_QUOTES = /[=\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"\\]|^\s|\s$|^$|^(?:[0-9A-Z]{14}|trace|debug|warning|error|fatal):|^sid=/;

function escapeChar(c: string): string {
  switch (c) {
    case '"':
      return '\\"';
    case '\\':
      return '\\\\';
    case '\n':
      return '\\n';
    case '\r':
      return '\\r';
    case '\t':
      return '\\t';
    default: {
      const code = c.charCodeAt(0);
      return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
    }
  }
}

/** `s` as one token: bare when it can be, else in double quotes with escapes. */
export function quoteValue(s: string): string {
  if (s !== '' && !NEEDS_QUOTES.test(s)) return s;
  return `"${s.replace(ESCAPED, escapeChar)}"`;
}

function scalar(v: Json): string {
  if (v === null) return 'null';
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return JSON.stringify(v);
}

const keyNames = new Map<string, string>();

/** The key as the text shows it: Postfix's name, else itself with anything odd made '_' (cached: keys come from our code). */
function keyName(key: string): string {
  let name = keyNames.get(key);
  if (name === undefined) {
    name = TEXT_KEY[key] ?? key.replace(/[^A-Za-z0-9_.-]/g, '_');
    if (keyNames.size < 1000) keyNames.set(key, name);
  }
  return name;
}

/** Appends ` key=value` for each field; objects are flattened to dotted keys (err.message=…). */
function appendFields(out: string[], fields: Record<string, Json>, prefix: string, skip: ReadonlySet<string> | undefined): void {
  for (const key in fields) {
    if (skip?.has(key)) continue;
    const v = fields[key] as Json;
    if (v === undefined) continue;
    const name = prefix + keyName(key);
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
      appendFields(out, v, `${name}.`, undefined);
      continue;
    }
    let text: string;
    if (ADDRESS_KEYS.has(key) && (typeof v === 'string' || Array.isArray(v))) {
      text = Array.isArray(v) ? v.map((a) => `<${scalar(a)}>`).join(',') : `<${v}>`;
    } else text = Array.isArray(v) ? v.map(scalar).join(',') : scalar(v);
    out.push(` ${name}=${quoteValue(text)}`);
  }
}

function head(o: Record<string, Json>, host: string): string {
  return `${typeof o.time === 'string' ? o.time : new Date().toISOString()} ${host} mxguard[${typeof o.pid === 'number' ? o.pid : process.pid}]: `;
}

function levelPrefix(o: Record<string, Json>): string {
  const word = typeof o.level === 'number' ? LEVEL_WORD[o.level] : undefined;
  return word === undefined ? '' : `${word}: `;
}

function msgText(msg: Json | undefined): string {
  const s = typeof msg === 'string' ? msg : msg === undefined ? '' : scalar(msg);
  return MSG_NEEDS_QUOTES.test(s) ? `"${s.replace(ESCAPED, escapeChar)}"` : s;
}

/** One event's line (without the head), with `lead` (an ID, or sid=) first. */
function eventLine(o: Record<string, Json>, skip: ReadonlySet<string>, lead: string): string {
  const out = [lead, levelPrefix(o), msgText(o.msg)];
  appendFields(out, o, '', skip);
  return out.join('');
}

const SKIP_ID = new Set([...FRAME, 'id']);
const SKIP_SID = new Set([...FRAME, 'sid']);
/** The queued line: its first fields and the client line's are not repeated. */
const SKIP_QUEUED = new Set([...SKIP_ID, 'msgid', 'from', 'size', 'helo', 'port', 'connectedAt']);

/** One entry of the trace's compact `checks` field: name:verdict[+score][(Nms)]. */
const ENTRY = /^([^:,]+):([a-z]+)([+-][0-9.e+-]+)?(?:\((\d+)ms\))?$/;

/** A queued (or DATA-refused) transaction: client line, its verdicts, then the transaction itself, each led by the queue ID. */
function transactionLines(o: Record<string, Json>, id: string, h: string): string {
  const lead = `${h}${id}: `;
  const client = [`${lead}client=${quoteValue(`unknown[${scalar(o.ip ?? '')}]:${scalar(o.port ?? 0)}`)}`];
  appendFields(client, { sid: o.sid ?? null, ...(o.helo !== undefined ? { helo: o.helo } : {}), ...(o.connectedAt !== undefined ? { connectedAt: o.connectedAt } : {}) }, '', undefined);
  let out = `${client.join('')}\n`;
  if (typeof o.checks === 'string') {
    for (const entry of o.checks.split(',')) {
      const m = ENTRY.exec(entry);
      if (!m || m[2] === 'continue') continue;
      const line = [`${lead}check=${quoteValue(m[1] as string)} verdict=${m[2] as string}`];
      if (m[3] !== undefined) line.push(` score=${m[3]}`);
      if (m[4] !== undefined) line.push(` ms=${m[4]}`);
      if (typeof o.sid === 'string') line.push(` sid=${quoteValue(o.sid)}`);
      out += `${line.join('')}\n`;
    }
  }
  const line = [lead, levelPrefix(o), o.outcome === 'accepted' ? 'queued' : 'transaction'];
  // The queued line leads with what Postfix's cleanup and qmgr show: message-id, from, size.
  const first: Record<string, Json> = {};
  for (const k of ['msgid', 'from', 'size']) if (o[k] !== undefined) first[k] = o[k] as Json;
  appendFields(line, first, '', undefined);
  appendFields(line, o, '', SKIP_QUEUED);
  return `${out}${line.join('')}\n`;
}

/** pino's JSON line (ending in \n) as text: one line, or several for a queued transaction. Never throws. */
export function jsonToText(json: string, host = HOST): string {
  let o: Record<string, Json>;
  try {
    const parsed = JSON.parse(json) as Json;
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
    o = parsed;
  } catch {
    // Not ours to read: kept, but as one safe line.
    return `${new Date().toISOString()} ${host} mxguard[${process.pid}]: ${quoteValue(json.replace(/\n$/, ''))}\n`;
  }
  const h = head(o, host);
  const id = typeof o.id === 'string' && QUEUE_ID.test(o.id) ? o.id : undefined;
  if (id !== undefined) {
    if (o.msg === 'transaction') return transactionLines(o, id, h);
    return `${h}${eventLine(o, SKIP_ID, `${id}: `)}\n`;
  }
  if (typeof o.sid === 'string' && o.sid !== '') return `${h}${eventLine(o, SKIP_SID, `sid=${quoteValue(o.sid)} `)}\n`;
  return `${h}${eventLine(o, FRAME, '')}\n`;
}

/** This host's name as the text lines give it (its first label, as syslog does). */
export const HOST = os.hostname().split('.')[0] || 'localhost';

const TEXT_LINE = /^(\S+) (\S+) mxguard\[(\d+)\]: (.*)$/;

function unescape(s: string): string {
  return s.replace(/\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)/g, (_, e: string) => {
    if (e.length > 1) return String.fromCharCode(parseInt(e.slice(1), 16));
    return e === 'n' ? '\n' : e === 'r' ? '\r' : e === 't' ? '\t' : e;
  });
}

/** Reads one token at `i` (bare, or quoted): its text and where the next begins. */
function token(s: string, i: number): { text: string; end: number } {
  if (s[i] === '"') {
    let j = i + 1;
    while (j < s.length && s[j] !== '"') j += s[j] === '\\' ? 2 : 1;
    return { text: unescape(s.slice(i + 1, j)), end: j + 1 };
  }
  const j = s.indexOf(' ', i);
  const end = j === -1 ? s.length : j;
  return { text: s.slice(i, end), end };
}

const KEY_AT = / ([A-Za-z0-9_.-]+)=/g;

function textValue(key: string, v: string): Json {
  if (ADDRESS_KEYS.has(key) && v.startsWith('<') && v.endsWith('>')) {
    if (key === 'rcpts' || key === 'rcptsRefused') return v === '' ? [] : v.slice(1, -1).split('>,<');
    return v.slice(1, -1);
  }
  return v;
}

/** One text line of ours back into its event; undefined for anything else. */
export function parseTextLine(line: string): LogEvent | undefined {
  const m = TEXT_LINE.exec(line);
  if (!m) return undefined;
  const fields: Record<string, Json> = {};
  let rest = m[4] as string;
  const first = /^([0-9A-Z]{14}): /.exec(rest) ?? /^sid=("(?:[^"\\]|\\.)*"|\S+) /.exec(rest);
  if (first) {
    if (first[0].startsWith('sid=')) fields.sid = token(first[1] as string, 0).text;
    else fields.id = first[1] as string;
    rest = rest.slice(first[0].length);
  }
  let level = 30;
  const lv = /^(trace|debug|warning|error|fatal): /.exec(rest);
  if (lv) {
    level = WORD_LEVEL[lv[1] as string] as number;
    rest = rest.slice(lv[0].length);
  }
  // The message: quoted, or bare up to the first " key=" (a bare message has no "=").
  let msg: string;
  let i: number;
  if (rest.startsWith('"')) {
    const t = token(rest, 0);
    msg = t.text;
    i = t.end;
  } else if (/^[A-Za-z0-9_.-]+=/.test(rest)) {
    msg = '';
    i = -1;
  } else {
    KEY_AT.lastIndex = 0;
    const k = KEY_AT.exec(rest);
    i = k ? k.index : rest.length;
    msg = rest.slice(0, i);
  }
  // key=value pairs, each after one space.
  while (i < rest.length) {
    const eq = rest.indexOf('=', i + 1);
    if (eq === -1) break;
    const rawKey = rest.slice(i + 1, eq);
    const t = token(rest, eq + 1);
    const key = JSON_KEY[rawKey] ?? rawKey;
    fields[key] = textValue(key, t.text);
    i = t.end;
  }
  return { time: m[1] as string, level, pid: Number(m[3]), msg, fields, format: 'text' };
}

/** One JSON line of ours (pino: level, time, pid, msg) back into its event; undefined for anything else. */
export function parseJsonLine(line: string): LogEvent | undefined {
  let o: unknown;
  try {
    o = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (o === null || typeof o !== 'object' || Array.isArray(o)) return undefined;
  const r = o as Record<string, Json>;
  if (typeof r.level !== 'number' || typeof r.msg !== 'string' || typeof r.pid !== 'number') return undefined;
  const time = typeof r.time === 'string' ? r.time : typeof r.time === 'number' ? new Date(r.time).toISOString() : undefined;
  if (time === undefined) return undefined;
  const fields: Record<string, Json> = {};
  for (const k in r) if (!FRAME.has(k)) fields[k] = r[k] as Json;
  return { time, level: r.level, pid: r.pid, msg: r.msg, fields, format: 'json' };
}

/** A line of ours in either format; undefined for other lines (another program's, a line cut by a full disk). */
export function parseLogLine(line: string): LogEvent | undefined {
  return line.startsWith('{') ? parseJsonLine(line) : parseTextLine(line);
}
