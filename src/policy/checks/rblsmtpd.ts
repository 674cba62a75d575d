// rblsmtpd's RBLSMTPD variable (seed 002), honoured by `mxguard stdio` the way rblsmtpd does
// behind tcpserver: the launcher (tcpserver's rules, an earlier rblsmtpd, a wrapper script)
// sets it per client.
//   set and non-empty → every RCPT is refused with its text: 451 (temporary) by default, 553
//                       (permanent) when the text starts with '-', which is dropped;
//   set and empty     → the client is known good: the DNS blocklist checks (dnsbl,
//                       rhsbl_helo, rhsbl_sender) skip it (see dnsbl.ts);
//   unset             → nothing changes.
// rblsmtpd refused at RCPT too, so the client's MAIL FROM is logged. An authenticated client
// passes, as with Postfix's permit_sasl_authenticated before reject_rbl_client: a roaming user
// on a listed network still gets to send.
import { defineCheck, type Check } from '../check.ts';
import { CONTINUE } from '../verdict.ts';

/** The reply for an RBLSMTPD value: control characters go, so the text cannot break the reply. */
export function rblsmtpdRefusal(value: string): { permanent: boolean; text: string } {
  const permanent = value.startsWith('-');
  const text = (permanent ? value.slice(1) : value)
    .replace(/[\r\n]+/g, ' ')
    .replace(/[\x00-\x1f\x7f]/g, '')
    .trim()
    .slice(0, 400);
  return { permanent, text: text || 'Message refused' };
}

export function rblsmtpdCheck(): Check<'rcpt'> {
  return {
    name: 'rblsmtpd',
    phase: 'rcpt',
    run(ctx) {
      const value = ctx.session.rblsmtpd;
      if (!value || ctx.session.authUser !== undefined) return CONTINUE;
      const { permanent, text } = rblsmtpdRefusal(value);
      return permanent
        ? { kind: 'reject', check: 'rblsmtpd', code: 553, enhanced: '5.7.1', text, setting: 'RBLSMTPD' }
        : { kind: 'tempfail', check: 'rblsmtpd', code: 451, enhanced: '4.7.1', text, setting: 'RBLSMTPD' };
    },
  };
}

/** Always built: without RBLSMTPD (the daemon, or a launcher that sets none) it says continue. */
export const rblsmtpd = defineCheck({
  name: 'rblsmtpd',
  phase: 'rcpt',
  settings: () => ({}),
  create: () => rblsmtpdCheck(),
});
