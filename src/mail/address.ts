// Mail addresses, shared by every folder: the parsed form of an RFC 5321 mailbox
// (local@domain), the parser smtp/ applies to MAIL and RCPT paths and policy/ to configured
// addresses, and the ESMTP parameters given with a path.

export interface Address {
  /** local@domain as given (domain lower-cased), '' for the null path. */
  address: string;
  local: string;
  /** Lower-cased; '' for the null path and for a bare <postmaster>. */
  domain: string;
  /** Needs SMTPUTF8 (non-ASCII octets). */
  utf8: boolean;
  /** An obsolete source route the client gave and we dropped ("@a.example,@b.example"): a relay-probe sign. */
  sourceRoute?: string;
}

/** The ESMTP parameters given with a MAIL or RCPT path (SIZE=…, BODY=…, NOTIFY=…); a bare keyword is true. */
export interface PathParams {
  [keyword: string]: string | true;
}

const ATEXT = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~\\-\\u0080-\\uFFFF]";
const DOT_ATOM = new RegExp(`^${ATEXT}+(\\.${ATEXT}+)*$`);
const QUOTED = /^"([\x20\x21\x23-\x5b\x5d-\x7e\u0080-\uffff]|\\[\x20-\x7e])*"$/;
const LABEL = '[A-Za-z0-9\\u0080-\\uFFFF]([A-Za-z0-9\\u0080-\\uFFFF-]{0,61}[A-Za-z0-9\\u0080-\\uFFFF])?';
const DOMAIN = new RegExp(`^${LABEL}(\\.${LABEL})*$`);
/** The longest mailbox (local@domain) taken, in octets: RFC 5321 4.5.3.1.3's path limit. */
export const MAX_MAILBOX = 256;
const ADDRESS_LITERAL = /^\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]$/;

/** Parses local@domain; returns an error text for a bad one. */
export function parseMailbox(mailbox: string, allowBarePostmaster = false): Address | string {
  // RFC 5321 4.5.3.1.3 bounds a whole path at 256 octets; the 64-octet local part of 4.5.3.1.1
  // is not enforced (4.5.3.1: accept longer where possible): VERP, SRS, BATV and list
  // addresses exceed it, and Postfix takes them.
  if (Buffer.byteLength(mailbox) > MAX_MAILBOX) return 'Address too long';
  const at = mailbox.lastIndexOf('@');
  if (at === -1) {
    if (allowBarePostmaster && mailbox.toLowerCase() === 'postmaster') {
      return { address: 'postmaster', local: 'postmaster', domain: '', utf8: false };
    }
    return 'Bad address syntax: no domain';
  }
  let local = mailbox.slice(0, at);
  const domain = mailbox.slice(at + 1);
  if (local === '') return 'Bad address syntax: local part';
  if (!DOT_ATOM.test(local)) {
    if (!QUOTED.test(local)) return 'Bad address syntax: local part';
    // "alice" is alice (RFC 5321 4.1.2): keep the quotes only where the local part needs them,
    // as Postfix does, so that both forms name the same mailbox and match the same rules. They
    // also stay around the routing characters % and ! (the relay-probe check names the form).
    const unquoted = local.slice(1, -1).replace(/\\(.)/g, '$1');
    if (DOT_ATOM.test(unquoted) && !/[%!]/.test(unquoted)) local = unquoted;
  }
  if (domain === '' || domain.length > 255) return 'Bad address syntax: domain';
  if (!DOMAIN.test(domain) && !ADDRESS_LITERAL.test(domain)) return 'Bad address syntax: domain';
  const lowerDomain = domain.toLowerCase();
  const utf8 = /[^\x00-\x7f]/.test(mailbox);
  return { address: `${local}@${lowerDomain}`, local, domain: lowerDomain, utf8 };
}
