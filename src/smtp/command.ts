// Parsing of SMTP command lines and of the MAIL FROM / RCPT TO paths (RFC 5321 4.1, RFC 6531
// for SMTPUTF8). Pure functions over untrusted input: they return a result or an error reply,
// never throw.
import { isUtf8 } from 'node:buffer';
import { parseMailbox, type Address, type PathParams } from '../mail/address.ts';

export type Verb =
  | 'HELO'
  | 'EHLO'
  | 'MAIL'
  | 'RCPT'
  | 'DATA'
  | 'RSET'
  | 'NOOP'
  | 'QUIT'
  | 'VRFY'
  | 'EXPN'
  | 'HELP'
  | 'STARTTLS'
  | 'AUTH'
  | 'BDAT';

const VERBS = new Set<string>(['HELO', 'EHLO', 'MAIL', 'RCPT', 'DATA', 'RSET', 'NOOP', 'QUIT', 'VRFY', 'EXPN', 'HELP', 'STARTTLS', 'AUTH', 'BDAT']);

export interface Command {
  verb: Verb;
  /** Everything after the verb and one space, as sent. */
  arg: string;
}

export type ParsedCommand = { ok: true; command: Command } | { ok: false; unknown: string };

/** Splits a command line (without its CRLF) into verb and argument. */
export function parseCommandLine(line: string): ParsedCommand {
  const sp = line.indexOf(' ');
  const word = (sp === -1 ? line : line.slice(0, sp)).toUpperCase();
  if (!VERBS.has(word)) return { ok: false, unknown: word.slice(0, 32) };
  return { ok: true, command: { verb: word as Verb, arg: sp === -1 ? '' : line.slice(sp + 1) } };
}

export type ParsedPath =
  | { ok: true; address: Address; params: PathParams }
  | { ok: false; code: number; enhanced: string; text: string };


function syntax(text: string): ParsedPath {
  return { ok: false, code: 501, enhanced: '5.1.3', text };
}

/**
 * Parses the argument of MAIL ("FROM:<a@b> SIZE=10") or RCPT ("TO:<a@b>"). `keyword` is FROM
 * or TO. Accepts a space after the colon and a missing pair of angle brackets around a plain
 * address (common client sloppiness), rejects everything else that is not RFC 5321.
 */
export function parsePath(arg: string, keyword: 'FROM' | 'TO'): ParsedPath {
  const prefix = keyword + ':';
  if (arg.slice(0, prefix.length).toUpperCase() !== prefix) {
    return { ok: false, code: 501, enhanced: '5.5.4', text: `Syntax: ${keyword === 'FROM' ? 'MAIL FROM:<address>' : 'RCPT TO:<address>'}` };
  }
  let rest = arg.slice(prefix.length).replace(/^ +/, '');
  let path: string;
  if (rest.startsWith('<')) {
    const close = findPathEnd(rest);
    if (close === -1) return syntax('Bad address syntax: no closing ">"');
    path = rest.slice(1, close);
    rest = rest.slice(close + 1);
    if (rest !== '' && !rest.startsWith(' ')) return syntax('Bad address syntax after ">"');
  } else {
    const sp = rest.indexOf(' ');
    path = sp === -1 ? rest : rest.slice(0, sp);
    rest = sp === -1 ? '' : rest.slice(sp);
    if (path === '') return syntax('Bad address syntax: empty address');
  }
  const params = parseParams(rest.trim());
  if (params === undefined) return { ok: false, code: 501, enhanced: '5.5.4', text: 'Bad parameter syntax' };

  // Drop an obsolete source route: <@a.example,@b.example:user@c.example>.
  let sourceRoute: string | undefined;
  if (path.startsWith('@')) {
    const colon = path.indexOf(':');
    if (colon === -1) return syntax('Bad address syntax: broken source route');
    sourceRoute = path.slice(0, colon);
    path = path.slice(colon + 1);
  }
  if (path === '') {
    if (keyword === 'TO') return syntax('Bad recipient address syntax: empty address');
    return { ok: true, address: { address: '', local: '', domain: '', utf8: false }, params };
  }
  const address = parseMailbox(path, keyword === 'TO');
  if (typeof address === 'string') return syntax(address);
  if (sourceRoute !== undefined) address.sourceRoute = sourceRoute;
  return { ok: true, address, params };
}

function findPathEnd(s: string): number {
  let quoted = false;
  for (let i = 1; i < s.length; i++) {
    const c = s[i];
    if (quoted) {
      if (c === '\\') i++;
      else if (c === '"') quoted = false;
    } else if (c === '"') quoted = true;
    else if (c === '>') return i;
  }
  return -1;
}

/**
 * True when a command line's octets are not valid UTF-8 (RFC 6531 3.3 wants UTF-8 there; the
 * line is decoded lossily, so this must be asked of the raw octets). Postfix answers such a
 * line "500 5.5.2 Error: bad UTF-8 syntax".
 */
export function badUtf8(octets: Uint8Array): boolean {
  return !isUtf8(octets);
}

/** "SIZE=100 BODY=8BITMIME SMTPUTF8" → { SIZE: '100', BODY: '8BITMIME', SMTPUTF8: true }. */
export function parseParams(text: string): PathParams | undefined {
  const params: PathParams = {};
  if (text === '') return params;
  for (const word of text.split(/ +/)) {
    const eq = word.indexOf('=');
    const key = (eq === -1 ? word : word.slice(0, eq)).toUpperCase();
    if (!/^[A-Z0-9][A-Z0-9-]*$/.test(key)) return undefined;
    if (eq === -1) params[key] = true;
    else {
      const value = word.slice(eq + 1);
      if (value === '' || /[\x00-\x20=\x7f]/.test(value)) return undefined;
      params[key] = value;
    }
  }
  return params;
}

/** HELO/EHLO argument: a domain or address literal; we keep what was sent for the Received header. */
export function parseHeloArg(arg: string): { ok: true; name: string } | { ok: false; text: string } {
  const name = arg.trim();
  if (name === '') return { ok: false, text: 'Syntax: EHLO hostname' };
  if (name.length > 255 || /[\s\x00-\x1f\x7f]/.test(name)) return { ok: false, text: 'Bad HELO/EHLO name' };
  return { ok: true, name };
}
