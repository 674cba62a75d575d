// recipients.callout: ask the downstream MTA whether a local recipient exists before we answer
// RCPT (Postfix's reject_unverified_recipient, Exim's `verify = recipient/callout`), so mail for
// an unknown user is refused during SMTP with 550 5.1.1 and never accepted and bounced later to
// a sender that was most likely forged. For mail stores whose user list mxguard cannot read.
//
// - The probe is connect, EHLO/LHLO, MAIL FROM:<callout.sender>, RCPT TO:<rcpt>, QUIT: never
//   DATA (src/smtp-client/client.ts, the forwarder's own protocol code).
// - Its answer is cached in the Store: a 2xx for positive_ttl, a 5xx for negative_ttl, so mxguard
//   hosts that share Redis share the answers. Sessions asking about one address at once, in one
//   process, share one probe.
// - Only a 5xx to RCPT refuses. Anything else is trouble with the probe, not an answer about the
//   user — a 4xx, no connection, a timeout, a greeting, EHLO or MAIL FROM the downstream refuses
//   — and gets 451 4.4.3 and a warning; it is never cached and never a 5xx.
// - The Store is only a cache here: when it cannot be reached, the probe is made anyway (the
//   downstream is the authority; nothing is accepted unasked).
// - Local domains only (relayed mail is not ours to judge); postmaster is never asked about
//   (RFC 5321 4.5.1: always accepted). Runs after recipients.file, which costs no network.
import { defineCheck, type Check } from '../check.ts';
import type { Config } from '../../config/schema.ts';
import type { Store } from '../../store/store.ts';
import type { Logger } from '../../util/log.ts';
import { createSmtpProber, type ProbeResult, type RecipientProber } from '../../smtp-client/client.ts';
import { CONTINUE, type RefusalVerdict, type Verdict } from '../verdict.ts';
import { isLocalDomain } from './local_domains.ts';
import { asciiDomain } from '../../util/idna.ts';

const CHECK = 'recipient_callout';
const SETTING = 'recipients.callout';

export type CalloutSettings = NonNullable<Config['recipients']['callout']>;

/** The downstream's answer to RCPT TO, as cached: its code and one line of text. */
export interface CalloutAnswer {
  readonly code: number;
  readonly text: string;
}

// --- pure helpers ---------------------------------------------------------------------------

/** Whom to ask: callout.target, else deliver when that is smtp:// or lmtp://; undefined: nobody. */
export function calloutTarget(config: Pick<Config, 'deliver' | 'recipients'>): string | undefined {
  const target = config.recipients.callout?.target;
  if (target !== undefined) return target;
  return config.deliver !== undefined && /^(smtp|lmtp):\/\//.test(config.deliver) ? config.deliver : undefined;
}

/** The cache key: one per address, local part compared without case (as recipients.file does). */
export function calloutKey(address: string): string {
  return `callout:${address.toLowerCase()}`;
}

/** An answer is a 2xx or 5xx to RCPT itself; everything else says nothing about the user. */
export function probeAnswer(r: ProbeResult): CalloutAnswer | undefined {
  if (r.step !== 'rcpt') return undefined;
  return (r.code >= 200 && r.code < 300) || (r.code >= 500 && r.code < 600) ? { code: r.code, text: r.text } : undefined;
}

export function encodeAnswer(a: CalloutAnswer): string {
  return JSON.stringify({ code: a.code, text: a.text });
}

/** The cached answer, or undefined for a value this version did not write (a miss, asked again). */
export function decodeAnswer(raw: string): CalloutAnswer | undefined {
  try {
    const v: unknown = JSON.parse(raw);
    if (typeof v !== 'object' || v === null) return undefined;
    const { code, text } = v as Record<string, unknown>;
    if (typeof code !== 'number' || !Number.isInteger(code) || typeof text !== 'string') return undefined;
    if (!((code >= 200 && code < 300) || (code >= 500 && code < 600))) return undefined;
    return { code, text };
  } catch {
    return undefined;
  }
}

const ENHANCED = /^([245])\.(\d{1,3})\.(\d{1,3})\b\s*/;

/**
 * Our reply for a 5xx answer. An unknown user (5.1.x, or no enhanced code) is Postfix's
 * "550 5.1.1 <addr>: Recipient address rejected: User unknown", whatever the downstream's words;
 * any other permanent reason (5.2.2 mailbox full, 5.7.1 policy …) keeps its code, status and
 * text, so the sender sees the real reason.
 */
export function calloutRefusal(address: string, answer: CalloutAnswer): RefusalVerdict {
  const m = ENHANCED.exec(answer.text);
  if (m === null || m[1] !== '5' || m[2] === '1') {
    return { kind: 'reject', check: CHECK, code: 550, enhanced: '5.1.1', text: `<${address}>: Recipient address rejected: User unknown`, setting: SETTING };
  }
  const reason =
    answer.text
      .slice(m[0].length)
      .replace(/^<[^>]*>:?\s*/, '')
      .replace(/^Recipient address rejected:\s*/i, '')
      .slice(0, 200)
      .trim() || 'Mailbox unavailable';
  const code = answer.code >= 550 && answer.code <= 559 ? answer.code : 550;
  return { kind: 'reject', check: CHECK, code, enhanced: `5.${m[2]}.${m[3]}`, text: `<${address}>: Recipient address rejected: ${reason}`, setting: SETTING };
}

// --- the check ------------------------------------------------------------------------------

export interface CalloutOptions {
  /** The Store that caches answers; without one every RCPT is asked (coalesced still). */
  readonly store?: Store;
  /** Default: an SMTP/LMTP prober for calloutTarget(config), at most queue.connections at once. */
  readonly prober?: RecipientProber;
  /** For the warnings (a failed probe, an unreachable store); decisions go into the verdicts. */
  readonly log?: Logger;
}

/** A fresh answer, or trouble (the probe's own reply or error, for the log). */
type Lookup = { readonly answer: CalloutAnswer; readonly cached: boolean } | { readonly trouble: string };

/** What the callout reads of the config: its own settings, where to ask, and as whom. */
export type CalloutConfig = Pick<Config, 'recipients' | 'deliver' | 'hostname' | 'local_domains'> & { readonly queue: Pick<Config['queue'], 'connections'> };

export function recipientCalloutCheck(config: CalloutConfig, opts: CalloutOptions = {}): Check<'rcpt'> {
  const spec = config.recipients.callout;
  if (spec === undefined) throw new Error('recipients.callout is not set');
  const target = calloutTarget(config);
  if (target === undefined) throw new Error('recipients.callout needs a target: deliver is not smtp:// or lmtp://');
  const local = new Set(config.local_domains.map(asciiDomain));
  const { store, log } = opts;
  const prober =
    opts.prober ??
    createSmtpProber({ url: target, heloName: config.hostname, maxConnections: config.queue.connections, connectTimeoutMs: spec.timeout, commandTimeoutMs: spec.timeout, log });
  const inflight = new Map<string, Promise<Lookup>>();
  let lastStoreWarning = 0;

  const storeTrouble = (err: unknown, what: string): void => {
    const now = Date.now();
    if (now - lastStoreWarning < 10_000) return;
    lastStoreWarning = now;
    log?.warn({ check: CHECK, setting: SETTING, err: (err as Error).message }, `store unavailable (${what}): recipients are asked without the cache until it is back`);
  };

  /** One probe and, for an answer, its cache entry. Never rejects. */
  const probe = async (address: string, key: string): Promise<Lookup> => {
    const r = await prober.probe(spec.sender, address);
    const answer = probeAnswer(r);
    if (answer === undefined) return { trouble: `${prober.name} said ${r.code} ${r.text}${r.step === 'rcpt' ? '' : ` (at ${r.step === 'mail' ? 'MAIL FROM' : 'connect/greeting/EHLO'})`}` };
    const ttl = answer.code < 300 ? spec.positive_ttl : spec.negative_ttl;
    if (store && ttl > 0) await store.cacheSet(key, encodeAnswer(answer), ttl).catch((err: unknown) => storeTrouble(err, 'write'));
    return { answer, cached: false };
  };

  const lookup = async (address: string): Promise<Lookup> => {
    const key = calloutKey(address);
    let pending = inflight.get(key);
    if (pending === undefined && store) {
      const raw = await store.cacheGet(key).catch((err: unknown) => storeTrouble(err, 'read'));
      const answer = raw === undefined ? undefined : decodeAnswer(raw);
      if (answer) return { answer, cached: true };
      pending = inflight.get(key); // another session may have started one meanwhile
    }
    if (pending === undefined) {
      pending = probe(address, key).finally(() => inflight.delete(key));
      inflight.set(key, pending);
    }
    // The client waits at most `timeout`; a probe still running goes on and caches its answer.
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<Lookup>((resolve) => {
      timer = setTimeout(() => resolve({ trouble: `no answer from ${prober.name} within ${spec.timeout} ms` }), spec.timeout);
    });
    try {
      return await Promise.race([pending, late]);
    } finally {
      clearTimeout(timer);
    }
  };

  return {
    name: CHECK,
    phase: 'rcpt',
    async run(ctx): Promise<Verdict> {
      const { rcpt } = ctx;
      if (!isLocalDomain(rcpt.domain, local) || rcpt.local.toLowerCase() === 'postmaster') return CONTINUE;
      const r = await lookup(rcpt.address);
      if ('trouble' in r) {
        log?.warn({ sid: ctx.session.sid, ip: ctx.session.remoteIp, check: CHECK, setting: SETTING, rcpt: rcpt.address, err: r.trouble }, 'recipient callout failed; answering 451');
        return { kind: 'tempfail', check: CHECK, code: 451, enhanced: '4.4.3', text: `<${rcpt.address}>: Recipient address rejected: unverified address, try again later`, setting: SETTING, log: `recipient callout failed: ${r.trouble}` };
      }
      const how = r.cached ? 'cached answer' : `${prober.name} said`;
      const said = `${how} ${r.answer.code} ${r.answer.text}`;
      if (r.answer.code < 300) return { kind: 'continue', check: CHECK, log: `<${rcpt.address}>: recipient verified (${said})` };
      return { ...calloutRefusal(rcpt.address, r.answer), log: `Command RCPT refused: recipient callout: ${said}` };
    },
  };
}

/** After recipients.file (no network), before local_domains accepts. The store only caches here. */
export const recipientCallout = defineCheck({
  name: CHECK,
  phase: 'rcpt',
  settings: (config): CalloutConfig | undefined =>
    config.recipients.callout === undefined ? undefined : { recipients: config.recipients, deliver: config.deliver, hostname: config.hostname, local_domains: config.local_domains, queue: { connections: config.queue.connections } },
  create: (s, deps) => recipientCalloutCheck(s, deps),
});
