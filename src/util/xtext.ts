// xtext (RFC 3461 4) and its UTF-8 forms (RFC 6533 3): the encodings of the DSN parameters
// ENVID and ORCPT. Pure functions over untrusted input: decoders return undefined for a
// malformed value, never throw.

/** xchar: "!" to "~" except "+" and "=". */
const XCHAR = /^[\x21-\x2a\x2c-\x3c\x3e-\x7e]$/;

/** Decodes xtext ("a+2Bb" → "a+b"); undefined when it is not xtext. Hex digits in either case. */
export function xtextDecode(s: string): string | undefined {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i] as string;
    if (c === '+') {
      const hex = s.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return undefined;
      out += String.fromCharCode(parseInt(hex, 16));
      i += 2;
    } else if (XCHAR.test(c)) {
      out += c;
    } else {
      return undefined;
    }
  }
  return out;
}

/** Encodes as xtext: "+", "=", controls, space and non-ASCII become +HH (UTF-8 octets). */
export function xtextEncode(s: string): string {
  let out = '';
  for (const byte of Buffer.from(s, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += XCHAR.test(c) ? c : `+${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** QCHAR of RFC 6533: printable ASCII except "+", "=" and "\". */
const QCHAR = /^[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]$/;

/**
 * Decodes utf-8-addr-xtext / utf-8-addr-unitext (RFC 6533 3): QCHARs, "\x{HEX}" escapes and,
 * with unitext, raw non-ASCII characters. Undefined when malformed.
 */
export function utf8AddrDecode(s: string, allowUnitext: boolean): string | undefined {
  let out = '';
  for (let i = 0; i < s.length; ) {
    const cp = s.codePointAt(i) as number;
    const ch = String.fromCodePoint(cp);
    if (ch === '\\') {
      const m = /^\\x\{([0-9A-Fa-f]{1,6})\}/.exec(s.slice(i, i + 11));
      if (!m) return undefined;
      const v = parseInt(m[1] as string, 16);
      if (v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return undefined;
      out += String.fromCodePoint(v);
      i += m[0].length;
      continue;
    }
    if (QCHAR.test(ch) || (allowUnitext && cp > 0x7f && cp !== 0xfffd && !(cp >= 0xd800 && cp <= 0xdfff))) out += ch;
    else return undefined;
    i += ch.length;
  }
  return out;
}

/**
 * Encodes an address for "utf-8;" (RFC 6533 3): "+", "=", "\", controls and space as \x{HEX};
 * non-ASCII as \x{HEX} too (utf-8-addr-xtext, 7-bit), or raw when unitext is allowed.
 */
export function utf8AddrEncode(s: string, unitext: boolean): string {
  let out = '';
  for (const ch of s) {
    const cp = ch.codePointAt(0) as number;
    if (QCHAR.test(ch) || (unitext && cp > 0x7f)) out += ch;
    else out += `\\x{${cp.toString(16).toUpperCase()}}`;
  }
  return out;
}
