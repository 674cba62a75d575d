// The SMTP AUTH exchange (RFC 4954) for PLAIN (RFC 4616) and LOGIN, as a pure state machine:
// the session feeds it the AUTH argument and then each client line; it answers with a
// challenge to send, credentials to check, or an error reply. Never throws on client input.

export type SaslMechanism = 'PLAIN' | 'LOGIN';
export const MECHANISMS: readonly SaslMechanism[] = ['PLAIN', 'LOGIN'];

export interface SaslState {
  readonly mech: SaslMechanism;
  /** LOGIN: the user name, once given. */
  readonly user?: string;
}

export type SaslStep =
  | { kind: 'challenge'; text: string; state: SaslState }
  | { kind: 'done'; user: string; password: string }
  | { kind: 'error'; reply: string };

const CANCELLED = '501 5.7.0 Authentication cancelled';
const UNDECODABLE = '501 5.5.2 Cannot decode response';
const USERNAME = Buffer.from('Username:').toString('base64');
const PASSWORD = Buffer.from('Password:').toString('base64');

function decode(text: string): string | undefined {
  if (text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return undefined;
  return Buffer.from(text, 'base64').toString('utf8');
}

function plain(decoded: string): SaslStep {
  const parts = decoded.split('\0');
  if (parts.length !== 3) return { kind: 'error', reply: '501 5.5.2 Malformed PLAIN response' };
  const [authzid, user, password] = parts as [string, string, string];
  // Acting as another user (authzid) is not something we offer.
  if (authzid !== '' && authzid !== user) return { kind: 'error', reply: '535 5.7.8 Authentication credentials invalid' };
  if (user === '') return { kind: 'error', reply: '501 5.5.2 Malformed PLAIN response' };
  return { kind: 'done', user, password };
}

/** The AUTH command's argument: "PLAIN", "PLAIN <initial>", "LOGIN", "LOGIN <user>". */
export function saslStart(arg: string): SaslStep {
  const [mechText = '', initial, extra] = arg.split(' ');
  const mech = mechText.toUpperCase();
  if (mech === '' || extra !== undefined) return { kind: 'error', reply: '501 5.5.4 Syntax: AUTH mechanism [initial-response]' };
  if (mech !== 'PLAIN' && mech !== 'LOGIN') return { kind: 'error', reply: '504 5.5.4 Unrecognized authentication type' };
  if (initial === undefined) {
    return mech === 'PLAIN' ? { kind: 'challenge', text: '', state: { mech } } : { kind: 'challenge', text: USERNAME, state: { mech } };
  }
  if (initial === '*') return { kind: 'error', reply: CANCELLED };
  const decoded = initial === '=' ? '' : decode(initial); // "=" is an empty initial response
  if (decoded === undefined) return { kind: 'error', reply: UNDECODABLE };
  if (mech === 'PLAIN') return plain(decoded);
  return { kind: 'challenge', text: PASSWORD, state: { mech, user: decoded } };
}

/** One client line in answer to our 334 challenge. */
export function saslContinue(state: SaslState, line: string): SaslStep {
  if (line === '*') return { kind: 'error', reply: CANCELLED };
  const decoded = decode(line);
  if (decoded === undefined) return { kind: 'error', reply: UNDECODABLE };
  if (state.mech === 'PLAIN') return plain(decoded);
  if (state.user === undefined) return { kind: 'challenge', text: PASSWORD, state: { mech: 'LOGIN', user: decoded } };
  return { kind: 'done', user: state.user, password: decoded };
}
