// The greylisting key (issue 11): the client network, the sender normalised as postgrey does,
// the recipient. Normalising makes one sender one key however its mailing-list software varies
// the address per message; the network makes a mail pool that retries from a neighbouring
// address one client.
import { clientNetwork } from '../../util/cidr.ts';

/**
 * The sender as a greylist key: lower case; a BATV tag (`prvs=1234abcdef=user`,
 * `msprvs1=…=user`) removed; a `+extension` removed (VERP, mailing lists); every run of digits
 * standing alone replaced by `#` (postgrey's rule: `bounce-4711@` and `bounce-4712@` are one
 * sender). The null sender stays empty.
 */
export function normaliseSender(address: string): string {
  if (address === '') return '';
  const lower = address.toLowerCase();
  const at = lower.lastIndexOf('@');
  let local = at === -1 ? lower : lower.slice(0, at);
  const domain = at === -1 ? '' : lower.slice(at);
  const batv = /^(?:prvs|msprvs1|btv1)=[^=]*=(.+)$/.exec(local);
  if (batv) local = batv[1] as string;
  const plus = local.indexOf('+');
  if (plus > 0) local = local.slice(0, plus);
  local = local.replace(/\b\d+\b/g, '#');
  return local + domain;
}

/** The triplet key ("198.51.100.0/24|bounce-#@lists.example|bob@example.test"); undefined when the client address is not one. */
export function tripletKey(clientIp: string, sender: string, rcpt: string): string | undefined {
  const network = clientNetwork(clientIp);
  if (network === undefined) return undefined;
  return `${network}|${normaliseSender(sender)}|${rcpt.toLowerCase()}`;
}
