// The DSN parameters of MAIL and RCPT (RFC 3461 4, RFC 6533 3) and the test whether a message
// needs SMTPUTF8 downstream (RFC 6531 3.2). Pure functions over untrusted input: a result or an
// error reply, never a throw.
import type { MessageDsn, NotifyKeyword, RcptDsn } from '../mail/envelope.ts';
import type { PathParams } from '../mail/address.ts';
import { utf8AddrDecode, xtextDecode } from '../util/xtext.ts';

/** Printable US-ASCII, which RFC 3461 asks of ENVID and of a non-UTF-8 ORCPT once decoded. */
const PRINTABLE = /^[\x20-\x7e]*$/;
/** RFC 3461 4.4: ENVID at most 100 characters; 4.2: ORCPT at most 500. */
const MAX_ENVID = 100;
const MAX_ORCPT = 500;

/** NOTIFY=NEVER or a comma list of SUCCESS, FAILURE, DELAY (any case, each once). */
export function parseNotify(value: string | true): NotifyKeyword[] | undefined {
  if (value === true) return undefined;
  const words = value.toUpperCase().split(',');
  const seen = new Set<NotifyKeyword>();
  for (const w of words) {
    if (w !== 'NEVER' && w !== 'SUCCESS' && w !== 'FAILURE' && w !== 'DELAY') return undefined;
    if (seen.has(w)) return undefined;
    seen.add(w);
  }
  if (seen.has('NEVER') && seen.size > 1) return undefined;
  return [...seen];
}

/**
 * ORCPT=addr-type;xtext (RFC 3461 4.2), or utf-8;utf-8-addr-xtext (RFC 6533 3; raw UTF-8, the
 * unitext form, only in an SMTPUTF8 transaction).
 */
export function parseOrcpt(value: string | true, smtputf8: boolean): RcptDsn['orcpt'] | undefined {
  if (value === true || value.length > MAX_ORCPT) return undefined;
  const semi = value.indexOf(';');
  if (semi <= 0) return undefined;
  const type = value.slice(0, semi);
  if (!/^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+$/.test(type)) return undefined;
  const rest = value.slice(semi + 1);
  if (rest === '') return undefined;
  if (type.toLowerCase() === 'utf-8') {
    const addr = utf8AddrDecode(rest, smtputf8);
    if (addr === undefined || /[\x00-\x1f\x7f]/.test(addr)) return undefined;
    return { type: 'utf-8', addr };
  }
  const addr = xtextDecode(rest);
  if (addr === undefined || !PRINTABLE.test(addr)) return undefined;
  return { type: type.toLowerCase(), addr };
}

/** RET=FULL|HDRS. */
export function parseRet(value: string | true): MessageDsn['ret'] | undefined {
  if (value === true) return undefined;
  const v = value.toUpperCase();
  return v === 'FULL' || v === 'HDRS' ? v : undefined;
}

/** ENVID=xtext: printable ASCII once decoded, at most 100 characters. */
export function parseEnvid(value: string | true): string | undefined {
  if (value === true) return undefined;
  const v = xtextDecode(value);
  if (v === undefined || v === '' || v.length > MAX_ENVID || !PRINTABLE.test(v)) return undefined;
  return v;
}

/** The per-message DSN request of MAIL's (already validated) parameters; undefined when none. */
export function messageDsnOf(params: PathParams): MessageDsn | undefined {
  const ret = params.RET === undefined ? undefined : parseRet(params.RET);
  const envid = params.ENVID === undefined ? undefined : parseEnvid(params.ENVID);
  if (ret === undefined && envid === undefined) return undefined;
  return { ...(ret ? { ret } : {}), ...(envid !== undefined ? { envid } : {}) };
}

export type RcptParamsResult = { ok: true; dsn?: RcptDsn } | { ok: false; reply: string };

/** Checks RCPT's parameters: NOTIFY and ORCPT are known (501 when malformed), anything else 555. */
export function parseRcptParams(params: PathParams, smtputf8: boolean): RcptParamsResult {
  let notify: NotifyKeyword[] | undefined;
  let orcpt: RcptDsn['orcpt'];
  for (const [key, value] of Object.entries(params)) {
    if (key === 'NOTIFY') {
      notify = parseNotify(value);
      if (notify === undefined) return { ok: false, reply: '501 5.5.4 Bad NOTIFY parameter syntax' };
    } else if (key === 'ORCPT') {
      orcpt = parseOrcpt(value, smtputf8);
      if (orcpt === undefined) return { ok: false, reply: '501 5.5.4 Bad ORCPT parameter syntax' };
    } else {
      return { ok: false, reply: `555 5.5.4 Unsupported option: ${key}` };
    }
  }
  if (notify === undefined && orcpt === undefined) return { ok: true };
  return { ok: true, dsn: { ...(notify ? { notify } : {}), ...(orcpt ? { orcpt } : {}) } };
}

/**
 * Watches a message's header block as DATA streams in for octets of 0x80 and above (a UTF-8
 * header, which needs SMTPUTF8 downstream). Input is the decoded message split anywhere; the
 * block ends at the first empty line (CRLF or bare LF).
 */
export class HeaderScan {
  /** An octet ≥ 0x80 was seen in the header block. */
  eightBit = false;
  /** The empty line that ends the header block was seen. */
  done = false;
  #lineStart = true;
  #crAtLineStart = false;

  feed(chunks: readonly Buffer[]): void {
    for (const chunk of chunks) {
      for (let i = 0; i < chunk.length && !this.done; i++) {
        const b = chunk[i] as number;
        if (b >= 0x80) this.eightBit = true;
        if (b === 10) {
          if (this.#lineStart) this.done = true;
          this.#lineStart = true;
          this.#crAtLineStart = false;
        } else if (b === 13 && this.#lineStart && !this.#crAtLineStart) {
          this.#crAtLineStart = true;
        } else {
          this.#lineStart = false;
          this.#crAtLineStart = false;
        }
      }
      if (this.done) return;
    }
  }
}
