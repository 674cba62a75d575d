// What the SMTP session itself sees on the wire that no check can (checks never see sockets):
// lines of other protocols sent as commands, and commands sent before our reply where RFC 2920
// forbids it. The policy side (src/policy/protocol.ts) decides what each costs.

/**
 * Verbs of other protocols (postscreen's non_smtp_command and smtpd_forbidden_commands: an open
 * HTTP proxy relaying GET, POST, CONNECT; a POP3 client at the wrong port with USER, PASS).
 */
const NON_SMTP_VERBS = new Set(['GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'CONNECT', 'USER', 'PASS']);

/** The verb of a command line that is another protocol's, or undefined ("GET / HTTP/1.1" → GET). */
export function nonSmtpVerb(line: string): string | undefined {
  const sp = line.indexOf(' ');
  const word = (sp === -1 ? line : line.slice(0, sp)).toUpperCase();
  return NON_SMTP_VERBS.has(word) ? word : undefined;
}

/**
 * Commands after which the client must wait for our reply even with PIPELINING (RFC 2920 3.1:
 * EHLO, DATA, VRFY, EXPN, NOOP "can only appear as the last command in a group"; HELO likewise;
 * STARTTLS changes the channel). QUIT is left out: nothing after it is read.
 */
const LAST_IN_GROUP = new Set(['EHLO', 'HELO', 'DATA', 'VRFY', 'EXPN', 'NOOP', 'STARTTLS']);

/**
 * Did the client break the pipelining rules by sending more after this command line before our
 * reply? Without EHLO (before it, or after HELO) PIPELINING was never announced, so any command
 * followed by more is; after EHLO only the commands that must end a group count.
 */
export function barePipelining(line: string, esmtp: boolean): boolean {
  if (!esmtp) return true;
  const sp = line.indexOf(' ');
  return LAST_IN_GROUP.has((sp === -1 ? line : line.slice(0, sp)).toUpperCase());
}
