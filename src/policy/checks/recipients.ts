// recipients.file: refuse unknown local recipients during the SMTP dialogue (seed 001, #2), so
// a forged sender never gets a bounce for mail to nobody. One address or @domain (catch-all)
// per line, # comments; the file is re-read when its mtime or size changes, so an
// administrator's edit counts at once. Runs for local domains only (relayed mail is not ours
// to judge) and before local_domains accepts.
import fs from 'node:fs';
import { defineCheck, type Check } from '../check.ts';
import { CONTINUE } from '../verdict.ts';
import { isLocalDomain } from './local_domains.ts';
import { asciiDomain } from '../../util/idna.ts';
import { parseMailbox } from '../../mail/address.ts';

export class RecipientList {
  readonly file: string;
  private stamp = '';
  private addresses = new Set<string>();
  private domains = new Set<string>();

  constructor(file: string) {
    this.file = file;
  }

  /** Re-reads the file when it changed; a file that cannot be read throws (→ 451, never accept). */
  private refresh(): void {
    const st = fs.statSync(this.file);
    const stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    if (stamp === this.stamp) return;
    const addresses = new Set<string>();
    const domains = new Set<string>();
    for (const raw of fs.readFileSync(this.file, 'utf8').split('\n')) {
      const line = raw.replace(/#.*/, '').trim().toLowerCase();
      if (line === '') continue;
      if (line.startsWith('@')) domains.add(asciiDomain(line.slice(1)));
      else addresses.add(canonical(line));
    }
    this.addresses = addresses;
    this.domains = domains;
    this.stamp = stamp;
  }

  /** Local parts compare case-insensitively, as every real mail store does; domains in ASCII form. */
  has(address: string, domain: string): boolean {
    this.refresh();
    return this.addresses.has(canonical(address)) || this.domains.has(asciiDomain(domain));
  }
}

/** local@domain lower-cased, with the domain in ASCII form and "alice" written alice (parseMailbox). */
function canonical(address: string): string {
  const parsed = parseMailbox(address);
  if (typeof parsed === 'string') return address.toLowerCase();
  return `${parsed.local.toLowerCase()}@${asciiDomain(parsed.domain)}`;
}

export function recipientsCheck(file: string, localDomains: readonly string[]): Check<'rcpt'> {
  const list = new RecipientList(file);
  const local = new Set(localDomains.map(asciiDomain));
  return {
    name: 'recipients',
    phase: 'rcpt',
    run(ctx) {
      const { rcpt } = ctx;
      if (!isLocalDomain(rcpt.domain, local) || rcpt.local.toLowerCase() === 'postmaster') return CONTINUE;
      return list.has(rcpt.address, rcpt.domain)
        ? CONTINUE
        : { kind: 'reject', check: 'recipients', code: 550, enhanced: '5.1.1', text: `<${rcpt.address}>: Recipient address rejected: User unknown`, setting: 'recipients.file' };
    },
  };
}

/** mail_from.null_sender_max_rcpts: a bounce goes to one address; more is a spammer's trick. */
export function nullSenderCheck(max: number): Check<'rcpt'> {
  return {
    name: 'null_sender',
    phase: 'rcpt',
    run: (ctx) =>
      ctx.tx.mailFrom.address === '' && ctx.tx.rcpts.length >= max
        ? { kind: 'reject', check: 'null_sender', code: 550, enhanced: '5.5.3', text: `Error: a message from <> may have at most ${max} recipient${max === 1 ? '' : 's'}`, setting: 'mail_from.null_sender_max_rcpts' }
        : CONTINUE,
  };
}

export const recipients = defineCheck({
  name: 'recipients',
  phase: 'rcpt',
  settings: (config) => (config.recipients.file !== undefined ? { file: config.recipients.file, localDomains: config.local_domains } : undefined),
  create: (s) => recipientsCheck(s.file, s.localDomains),
});

export const nullSender = defineCheck({
  name: 'null_sender',
  phase: 'rcpt',
  settings: (config) => config.mail_from.null_sender_max_rcpts,
  create: (max) => nullSenderCheck(max),
});
