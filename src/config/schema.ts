// The configuration schema: one YAML file, every key listed here, nothing else accepted.
// Durations and sizes are written as strings ("2m", "25MB") and come out as milliseconds / bytes.
// Key names follow the seed documents (DESIGN.md, "Settings come from the seeds").
import os from 'node:os';
import net from 'node:net';
import { z } from 'zod';
import { parseDuration, parseSize } from '../util/units.ts';
import { cidrError, cidrHostBitsError, coversEverything } from '../util/cidr.ts';
import { asciiDomain } from '../util/idna.ts';
import { linearRegexError } from '../util/regex.ts';
import { FROMIP_MAX, KEYS_FOR, RATE_ACTIONS, RATE_COUNTS, RATE_KEYS } from './rates.ts';
import { targetError } from './routes.ts';

// The union messages are what load.ts shows (as "expected …, got X") for a value of the wrong type.
const duration = z.union([z.string(), z.number()], { error: 'a duration such as 30s, 2m, 1h or 5d' }).transform((v, ctx) => {
  const ms = typeof v === 'number' ? v * 1000 : parseDuration(v);
  if (ms === undefined || !Number.isFinite(ms) || ms < 0) {
    ctx.addIssue({ code: 'custom', message: `"${String(v)}" is not a duration (use e.g. 500ms, 30s, 2m, 1h, 5d)` });
    return z.NEVER;
  }
  return ms;
});

const size = z.union([z.string(), z.number().int().nonnegative()], { error: 'a size such as 64KB, 25MB or 1GB' }).transform((v, ctx) => {
  const bytes = typeof v === 'number' ? v : parseSize(v);
  if (bytes === undefined) {
    ctx.addIssue({ code: 'custom', message: `"${String(v)}" is not a size (use e.g. 64KB, 25MB, 1GB)` });
    return z.NEVER;
  }
  return bytes;
});

const cidr = z.string().superRefine((v, ctx) => {
  const err = cidrError(v) ?? cidrHostBitsError(v);
  if (err) ctx.addIssue({ code: 'custom', message: err });
});

/** relay.forward_from_ip: a network that takes in every client makes an open relay. */
const relayCidr = cidr.superRefine((v, ctx) => {
  const all = coversEverything(v);
  if (all) ctx.addIssue({ code: 'custom', message: `"${v}" takes in ${all}: every client could relay (an open relay); list your own networks` });
});

const hostPort = z.string().superRefine((v, ctx) => {
  if (!parseHostPort(v)) ctx.addIssue({ code: 'custom', message: `"${v}" is not host:port (e.g. 0.0.0.0:25, [::]:25)` });
});

/**
 * A listener's role: mx (mail from the world, as on port 25), submission (our users, port 587:
 * STARTTLS, AUTH before MAIL) or submissions (the same over implicit TLS, port 465, RFC 8314).
 */
export type ListenMode = 'mx' | 'submission' | 'submissions';
export interface Listener {
  readonly address: string;
  readonly mode: ListenMode;
}

/** A listen entry: "host:port" (mode mx), or { address: "host:port", mode }; always { address, mode } once parsed. */
const listener = z
  .union([hostPort, z.strictObject({ address: hostPort, mode: z.enum(['mx', 'submission', 'submissions']).default('mx') })], { error: 'host:port, or { address: host:port, mode: mx | submission | submissions }' })
  .transform((v): Listener => (typeof v === 'string' ? { address: v, mode: 'mx' } : v));

/** submission.senders: an address (local@domain) or every address of a domain (*@domain). */
const senderPattern = z
  .string()
  .regex(/^(\*|[^@\s]+)@[^@\s*]+$/, 'an address (user@example.com) or *@domain')
  .transform((v) => {
    const at = v.lastIndexOf('@');
    return `${v.slice(0, at).toLowerCase()}@${asciiDomain(v.slice(at + 1)).replace(/\.$/, '')}`;
  });

/** A domain name; an IDN may be written in Unicode (bücher.example) and is kept in its ASCII (xn--) form. */
const domain = z
  .string()
  .transform((d) => asciiDomain(d))
  .pipe(z.string().regex(/^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$/, 'not a domain name'))
  .transform((d) => d.replace(/\.$/, ''));

/** reject | tempfail | score, for a check whose finding is a matter of policy (seed 002: reject or tag?). */
const action = z.enum(['reject', 'tempfail', 'score']);

/** A regular expression for the linear-time engine (util/regex.ts): RE2 syntax. */
const regex = z.string().superRefine((v, ctx) => {
  const err = linearRegexError(v);
  if (err) ctx.addIssue({ code: 'custom', message: `not a regular expression: ${err}` });
});

/** One DNS list: its zone, weight, which answers count, and 5xx or 4xx when it decides. */
const dnsblZone = z.strictObject({
  zone: domain,
  /** Added to the sum when the list answers; negative for an allowlist (DNSWL). */
  weight: z.number().default(1),
  /** The A answers that count: addresses or ranges of the last octet, "127.0.0.2", "127.0.0.4-7". Default: any 127.0.0.0/8 answer. */
  answers: z.array(z.string().regex(/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}(-\d{1,3})?$/, 'an answer like 127.0.0.2 or 127.0.0.4-7')).default([]),
  /** When this list decides: a permanent (5xx) or temporary (4xx) refusal. */
  reply: z.enum(['5xx', '4xx']).default('5xx'),
});

const deliver = z.string().superRefine((v, ctx) => {
  // Not mx: mail for our own domains would come back to us.
  if (v === 'mx' || targetError(v) !== undefined) ctx.addIssue({ code: 'custom', message: `"${v}" is not smtp://host:port, lmtp://host:port or maildir:DIR` });
});

/**
 * routes: recipient domain (exact, *.domain for its subdomains, * for every other non-local
 * domain) → smtp://host:port, lmtp://host:port, maildir:DIR (%d domain, %u local part) or mx.
 * Keys are stored as ASCII (IDNA) lower case.
 */
/** A recipient-domain pattern (routes, queue.tls_policy): "*", "*.domain" or a domain, as ASCII lower case; undefined when it is none of those. */
function domainPattern(pattern: string): string | undefined {
  if (pattern === '*') return pattern;
  const wild = pattern.startsWith('*.');
  const d = domain.safeParse(wild ? pattern.slice(2) : pattern);
  return d.success ? (wild ? '*.' : '') + d.data.toLowerCase() : undefined;
}

const routes = z.record(z.string(), z.string()).transform((r, ctx) => {
  const out: Record<string, string> = {};
  for (const [pattern, target] of Object.entries(r)) {
    const key = domainPattern(pattern);
    if (key === undefined) ctx.addIssue({ code: 'custom', path: [pattern], message: `"${pattern}" is not a domain, *.domain or *` });
    const bad = targetError(target);
    if (bad) ctx.addIssue({ code: 'custom', path: [pattern], message: bad });
    out[key ?? pattern] = target;
  }
  return out;
});

/** A downstream MTA to talk to: smtp://host:port or lmtp://host:port. */
const downstream = z.string().superRefine((v, ctx) => {
  if (!/^(smtp|lmtp):\/\/[^/]+:\d+$/.test(v)) ctx.addIssue({ code: 'custom', message: `"${v}" is not smtp://host:port or lmtp://host:port` });
});

/** An envelope sender: "<>" or "" for the null sender, else local@domain (with or without <>). */
const envelopeSender = z.string().transform((v, ctx) => {
  const a = v.trim().replace(/^<(.*)>$/, '$1');
  if (a !== '' && !/^[^\s<>@\x00-\x1f\x7f]+@[^\s<>@\x00-\x1f\x7f]+$/.test(a)) {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not an address (local@domain), nor <> for the null sender` });
    return z.NEVER;
  }
  return a;
});

/** One limits.rates rule: at most `max` of `count` per `per` per `key`. */
const rateRule = z
  .strictObject({
    /** Names the rule in the refusal and the log line (setting: limits.rates.<name>). */
    name: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, _ . - only'),
    key: z.enum(RATE_KEYS),
    count: z.enum(RATE_COUNTS),
    /** A number; for bytes also a size (100MB). */
    max: size.refine((n) => n > 0, 'must be more than 0'),
    per: duration.refine((ms) => ms >= 1000, 'must be at least 1s'),
    action: z.enum(RATE_ACTIONS).default('tempfail'),
    /** Points added, for action: score. */
    score: z.number().default(1),
    /** How long each reply is held, for action: tarpit (up to one minute). */
    delay: duration.refine((ms) => ms <= 60_000, 'at most 1m').default(5000),
    /** Clients the rule does not count. */
    except: z.array(cidr).default([]),
  })
  .superRefine((r, ctx) => {
    if (!KEYS_FOR[r.count].includes(r.key)) ctx.addIssue({ code: 'custom', path: ['key'], message: `${r.count} cannot be counted per ${r.key}; use one of ${KEYS_FOR[r.count].join(', ')}` });
    // AUTH has no transaction to carry points into.
    if (r.count === 'auth_failures' && r.action === 'score') ctx.addIssue({ code: 'custom', path: ['action'], message: 'auth_failures cannot score (there is no message yet); use tempfail, reject or tarpit' });
  });

/** What every scanner entry has: a name for logs and tests=, its deadline, its size limit, what its failure means. */
const scannerCommon = {
  /** For logs and X-Spam-Status tests=; default: the type. Unique. */
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,40}$/, 'letters, digits, _ . - (at most 40)').optional(),
  /** The longest this scanner may take; it is stopped then and its on_error applies. */
  timeout: duration.refine((ms) => ms > 0, 'must be longer than 0').default(30_000),
  /** Larger messages are not given to it... */
  max_size: size.default(10 * 1024 * 1024),
  /** ...and go on unscanned (skip) or are refused for now (tempfail). */
  on_oversize: z.enum(['skip', 'tempfail']).default('skip'),
  /** When it fails or times out: tempfail (451, the client retries) or accept (the message goes on unscanned). Write it out: `mxguard check` warns where it is left to the default. */
  on_error: z.enum(['tempfail', 'accept']).optional(),
};

/** One entry of filters.scanners. */
const scanner = z.discriminatedUnion('type', [
  z.strictObject({
    type: z.literal('exec'),
    /** The program and its arguments (no shell, no PATH look-up: an absolute path). */
    command: z.array(z.string().min(1)).min(1).refine((c) => (c[0] as string).startsWith('/'), 'the program must be an absolute path (no PATH look-up)'),
    /** chasquid: the message on stdin, the envelope in the environment, exit 0 / 20 / other; qmail-queue: the message on fd 0, the envelope on fd 1, qmail-queue's exit codes. */
    protocol: z.enum(['chasquid', 'qmail-queue']).default('chasquid'),
    ...scannerCommon,
  }),
  z.strictObject({
    type: z.literal('spamd'),
    /** host:port, or the path of spamd's Unix socket. */
    address: z.string().min(1),
    /** SYMBOLS (rule names) or REPORT (rule names and descriptions). */
    command: z.enum(['SYMBOLS', 'REPORT']).default('SYMBOLS'),
    /** The SpamAssassin user whose preferences apply (spamc -u). */
    user: z.string().min(1).optional(),
    /** tag: SpamAssassin's points join the transaction score; reject: refuse at its required score as well. */
    action: z.enum(['tag', 'reject']).default('tag'),
    ...scannerCommon,
  }),
  z.strictObject({
    type: z.literal('rspamd'),
    /** The normal worker's base URL: http://127.0.0.1:11333 */
    url: z.string().regex(/^https?:\/\/.+/, 'an http:// URL'),
    /** Sent as the Password header (controller password), if rspamd wants one. */
    password: z.string().optional(),
    ...scannerCommon,
  }),
  z.strictObject({
    type: z.literal('clamd'),
    /** host:port, or the path of clamd's Unix socket. */
    address: z.string().min(1),
    ...scannerCommon,
  }),
]);

export const configSchema = z.strictObject({
  /** The Obtuse smtpd rules file (seed 004): [allow|deny|noto]:SourceList:FromList:ToList[:XXX message]. */
  rules_file: z.string().min(1).optional(),
  /** Hold deny and noto answers of the rules file back this long (smtpd's noto_delay). */
  noto_delay: duration.default(0),
  /** Ask the client's identd (RFC 1413) who is connecting, for the rules file's user@host sources, USER@… and %U; only when a rule uses them. */
  ident: z.boolean().default(false),
  /** Give up on the identd after this long (most clients run none: the connection is refused at once, or times out). */
  ident_timeout: duration.default(5000),
  /** The identd port (113; another only for tests). */
  ident_port: z.number().int().min(1).max(65535).default(113),
  /** Our name in the banner, EHLO reply and Received header. */
  hostname: domain.default(os.hostname().toLowerCase()),
  /** Where to take SMTP: "host:port" (an MX listener), or { address: "host:port", mode: mx | submission | submissions }. */
  listen: z.array(listener).min(1).default([{ address: '127.0.0.1:2525', mode: 'mx' }]),
  proxy_protocol: z
    .strictObject({
      /** Listen addresses (each also under `listen`) where every connection begins with a PROXY header, v1 or v2 (HAProxy's send-proxy, send-proxy-v2). */
      listen: z.array(hostPort).default([]),
      /** The proxies that may connect there; anyone else is dropped before the banner (the header could claim any address). */
      trusted: z.array(cidr).default(['127.0.0.1', '::1']),
      /** How long a proxy may take to send its header. */
      timeout: duration.default(10_000),
    })
    .prefault({}),
  /** Mail for these domains is ours to accept; everything else is relaying. */
  local_domains: z.array(domain).default(['localhost']),
  /** Where the spool and the state live; a relative path is taken from the config file's directory (embedded defaults: the directory mxguard is started in). */
  data_dir: z.string().min(1).default('./var'),
  /** Started as root, run as this user once the listeners are bound (seed 004's smtpd -u); data_dir is given to it. */
  user: z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$/, 'a user name or number').optional(),
  /** The group to run as (smtpd -g); default: the user's primary group. */
  group: z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$/, 'a group name or number').optional(),
  /** Where mail for the local domains goes. Default: maildir:<data_dir>/maildir. */
  deliver: deliver.optional(),
  /** Where mail for other domains goes, by recipient domain (src/delivery/routes.ts); relayed mail without a route goes by MX. */
  routes: routes.default({}),
  /**
   * Relays mail goes through (route target smarthost:NAME): an ISP's or a provider's submission
   * server, with TLS and a login. The password is read from password_file (its first line).
   */
  smarthosts: z
    .record(
      z.string().regex(/^[A-Za-z0-9_.-]+$/, 'a name of letters, digits, _ . -'),
      z.strictObject({
        /** smtp://host:port (587 with STARTTLS, usually). */
        url: downstream.refine((v) => v.startsWith('smtp://'), 'a smarthost is smtp://host:port'),
        /** required: STARTTLS or no delivery; verify: and a certificate valid for the host. */
        tls: z.enum(['required', 'verify']).default('required'),
        /** Extra trusted CAs (a PEM file) for tls: verify, when the smarthost's certificate is from a private CA. */
        ca: z.string().min(1).optional(),
        user: z.string().min(1).optional(),
        /** The password, on the file's first line (keep it mode 0600). */
        password_file: z.string().min(1).optional(),
      }),
    )
    .default({})
    .superRefine((hosts, ctx) => {
      for (const [name, h] of Object.entries(hosts)) {
        if ((h.user === undefined) !== (h.password_file === undefined)) ctx.addIssue({ code: 'custom', path: [name], message: 'user and password_file go together' });
      }
    }),
  dkim: z
    .strictObject({
      /** Sign our users' mail (authenticated or relay clients) whose From: is in one of these domains (or a subdomain): the key's PEM file, and the selector its public key is published under. */
      sign: z.array(z.strictObject({ domain, selector: z.string().regex(/^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/, 'a selector is a DNS label (or several)'), key: z.string().min(1) })).default([]),
    })
    .prefault({}),
  tls: z
    .strictObject({
      cert: z.string().min(1),
      key: z.string().min(1),
    })
    .optional(),
  smtp: z
    .strictObject({
      /** Text after our hostname in the 220 banner. */
      banner: z.string().default('ESMTP mxguard'),
      /** Wait this long before the banner; a client that talks first is an early talker. */
      greet_delay: duration.default(0),
      /** Who waits: every client on every connection (all), or only clients without a forward-confirmed reverse DNS or with connect-phase points, once per greet_pass_ttl (suspicious). */
      greet_delay_for: z.enum(['all', 'suspicious']).default('all'),
      /** greet_delay_for suspicious: a client that waited without talking is let through at once for this long (postscreen's cache); 0: never remembered. */
      greet_pass_ttl: duration.default(86_400_000),
      /** A client that talks before the banner while made to wait: refused (at RCPT with delay_reject), scored, or let be. */
      early_talker: z.enum(['ignore', 'reject', 'score']).default('reject'),
      early_talker_score: z.number().default(3),
      /** An HTTP-proxy or POP line as a command (GET, POST, CONNECT, USER …): 521 and the connection closed (reject), scored, or a plain 500 (ignore). */
      non_smtp_command: z.enum(['ignore', 'reject', 'score']).default('reject'),
      non_smtp_command_score: z.number().default(5),
      /** Commands sent before our reply where RFC 2920 forbids it (after HELO, or after EHLO, DATA …): 521 and closed (reject), scored, or let be. */
      bare_pipelining: z.enum(['ignore', 'reject', 'score']).default('ignore'),
      bare_pipelining_score: z.number().default(3),
      /** Bare CR, bare LF or NUL in a message: refuse it (550 5.5.2) or turn them into CRLF / drop them. */
      bare_lf: z.enum(['reject', 'normalize']).default('reject'),
      /** Answer the delayed verdicts of connect, HELO and MAIL at RCPT time (Postfix smtpd_delay_reject). */
      delay_reject: z.boolean().default(true),
    })
    .prefault({}),
  limits: z
    .strictObject({
      max_message_size: size.default(25 * 1024 * 1024),
      /** DMail max_rcpts: recipients per message. */
      max_rcpts: z.number().int().positive().default(100),
      /** Longest text line taken in DATA, octets including CRLF; 0 = no limit (lines are stored as sent, as Postfix does). */
      max_line_length: z
        .number()
        .int()
        .min(0)
        .superRefine((v, ctx) => {
          if (v > 0 && v < 80) ctx.addIssue({ code: 'custom', message: `must be 0 (no limit) or at least 80, got ${v}` });
        })
        .default(0),
      max_errors: z.number().int().positive().default(20),
      command_timeout: duration.default(300_000),
      data_timeout: duration.default(180_000),
      /** From our reply to the end of the next command line, however slowly it trickles (RFC 5321 4.5.3.2: at least 5m). */
      command_deadline: duration.refine((ms) => ms > 0, 'must be longer than 0').default(300_000),
      /** From 354 to the final dot, plus the time data_min_rate allows for the octets received (RFC 5321 4.5.3.2: 10m). */
      data_deadline: duration.refine((ms) => ms > 0, 'must be longer than 0').default(600_000),
      /** Octets per second a message may arrive at and still make its deadline (Postfix smtpd_min_data_rate); 0: no allowance. */
      data_min_rate: z.number().int().nonnegative().default(500),
      /** Stress mode (Postfix's) from this fraction of max_connections on: the stress deadlines apply to every session. */
      stress_at: z.number().gt(0).max(1).default(0.8),
      /** command_deadline in stress mode. */
      stress_command_deadline: duration.refine((ms) => ms > 0, 'must be longer than 0').default(10_000),
      /** data_deadline in stress mode. */
      stress_data_deadline: duration.refine((ms) => ms > 0, 'must be longer than 0').default(60_000),
      max_connections: z.number().int().positive().default(1000),
      max_connections_per_ip: z.number().int().positive().default(20),
      /** DMail tarpit_start: from this many recipients in a session on, each RCPT is answered more slowly (0 = off). */
      tarpit_start: z.number().int().nonnegative().default(0),
      /** How much slower each further recipient is answered (capped at one minute). */
      tarpit_delay: duration.default(1000),
      /** DMail tarpit_except: clients never tarpitted. */
      tarpit_except: z.array(cidr).default(['127.0.0.0/8', '::1']),
      /** DMail fromip_max: messages per hour from one client IP (0 = off); the rate rule named fromip_max. */
      fromip_max: z.number().int().nonnegative().default(0),
      /** DMail fromip_nolimit: clients fromip_max does not count. */
      fromip_nolimit: z.array(cidr).default(['127.0.0.0/8', '::1']),
      /** Volume limits (src/policy/rates/): counts kept in the store, shared by every host on one Redis. */
      rates: z.array(rateRule).default([]),
    })
    .prefault({})
    .superRefine((l, ctx) => {
      const seen = new Set<string>(l.fromip_max > 0 ? [FROMIP_MAX] : []);
      for (const [i, r] of l.rates.entries()) {
        if (seen.has(r.name)) ctx.addIssue({ code: 'custom', path: ['rates', i, 'name'], message: r.name === FROMIP_MAX ? `"${FROMIP_MAX}" is the rule limits.fromip_max makes; name this one otherwise` : `another rule is already named "${r.name}"` });
        seen.add(r.name);
      }
    }),
  /** qmail's spam throttle: the reply after DATA is held longer the faster a client sends. */
  throttle: z
    .strictObject({
      /** Messages per minute from one client IP above which its replies are held (0 = off). */
      rate: z.number().nonnegative().default(0),
      /** How much longer per message over the rate. */
      step: duration.default(2000),
      /** The longest hold: at most 5m, well inside the 10 minutes a sender waits for this reply (RFC 5321 4.5.3.2.6). */
      max: duration.refine((ms) => ms <= 300_000, 'at most 5m: a sender waits 10 minutes for the reply to its message, then gives up and sends it again').default(30_000),
      /** Clients never throttled. */
      except: z.array(cidr).default(['127.0.0.0/8', '::1']),
    })
    .prefault({}),
  relay: z
    .strictObject({
      /** DMail forward_from_ip: clients that may relay. Default: loopback only. */
      forward_from_ip: z.array(relayCidr).default(['127.0.0.0/8', '::1']),
      /** DMail forward_from: sender domains that may relay (a hole for anyone who forges them). */
      forward_from: z.array(domain).default([]),
      /** DMail relay_to: recipient domains we relay to (backup MX, partners). */
      relay_to: z.array(domain).default([]),
      /** DMail forward_user: clients that logged in to POP/IMAP lately may relay (POP-before-SMTP). */
      forward_user: z.boolean().default(false),
      /** DMail forward_window: how long after a POP/IMAP login. */
      forward_window: duration.default(120_000),
      /** How long a POP/IMAP login stays in the relayers table before it expires by itself. */
      relayers_keep: duration.default(86_400_000),
      /** DMail auth_allow relay: clients that authenticated with SMTP AUTH may relay. */
      auth_allow_relay: z.boolean().default(false),
      /** DMail hide_auth: do not offer AUTH to these clients (recentpop: recent POP/IMAP users, who may relay anyway). */
      hide_auth: z.array(z.enum(['recentpop'])).default([]),
      /** POP/IMAP server logs to follow: every successful login adds its client IP to the relayers table. */
      pop_logs: z.array(z.string().min(1)).default([]),
      /** A regular expression (RE2 syntax, linear-time) with a named group (?<ip>…) for a successful login line; default: Dovecot's and Courier's. */
      pop_log_pattern: z
        .string()
        .superRefine((v, ctx) => {
          if (!/\(\?P?<ip>/.test(v)) ctx.addIssue({ code: 'custom', message: 'needs a named group (?<ip>...) for the client address' });
          const err = linearRegexError(v);
          if (err) ctx.addIssue({ code: 'custom', message: `not a regular expression: ${err}` });
        })
        .optional(),
    })
    .prefault({}),
  submission: z
    .strictObject({
      /**
       * On a submission listener, the MAIL FROM addresses each user may use (Postfix's
       * reject_sender_login_mismatch): addresses and *@domain. A user not listed may use only the
       * address that is its login name; the null sender is always allowed.
       */
      senders: z.record(z.string().min(1), z.array(senderPattern)).default({}),
    })
    .prefault({}),
  auth: z
    .strictObject({
      /** Offer SMTP AUTH (PLAIN, LOGIN). */
      enabled: z.boolean().default(true),
      /** AUTH only over TLS (after STARTTLS), except for the clients in plaintext_from. */
      require_tls: z.boolean().default(true),
      /** Clients that may authenticate without TLS (default: loopback, e.g. a local webmail). */
      plaintext_from: z.array(cidr).default(['127.0.0.0/8', '::1']),
      /** The password file that `mxguard user add|delete|list` manages (scrypt hashes). Default: <data_dir>/users. */
      users_file: z.string().min(1).optional(),
      /** Check passwords with Dovecot's auth service instead: its auth client socket, a path or host:port. */
      dovecot_socket: z.string().min(1).optional(),
      /** ARC sealers (the d= of the newest ARC-Seal) whose passing chain overrides a DMARC fail: mailing lists you trust (dmarc.enforce). */
      trusted_arc: z.array(domain).default([]),
      /** Failed AUTH attempts from one IP within failure_window before AUTH is refused to it. */
      max_failures: z.number().int().positive().default(5),
      failure_window: duration.default(900_000),
      /** Each failed attempt is answered this much later (times the failures so far), to slow guessing. */
      failure_delay: duration.default(1000),
      /** Password-file checks (scrypt, 32 MiB each) at once; more AUTHs get 454 at once. Never more than UV_THREADPOOL_SIZE − 2, so the spool's fsyncs always find a thread. */
      max_concurrent_checks: z.number().int().positive().default(4),
    })
    .prefault({}),
  store: z
    .strictObject({
      /** sqlite: one file on this host (zero set-up); redis: shared by several mxguard hosts. */
      backend: z.enum(['sqlite', 'redis']).default('sqlite'),
      /** The SQLite file. Default: <data_dir>/state.db. */
      path: z.string().min(1).optional(),
      redis_url: z.string().regex(/^rediss?:\/\/.+/, 'not a redis:// URL').default('redis://127.0.0.1:6379'),
      /** Prefix of every key, so several installations can share one Redis. */
      redis_prefix: z.string().default('mxguard:'),
      /** While the store is unreachable: false = checks that need it answer 451 4.3.0; true = they let mail pass. */
      fail_open: z.boolean().default(false),
    })
    .prefault({}),
  recipients: z
    .strictObject({
      /** Valid local recipients, one address or @domain (catch-all) per line; re-read when it changes. Unset: every local address is taken. */
      file: z.string().min(1).optional(),
      /** Ask the downstream MTA whether a local recipient exists (RCPT TO, never DATA) and cache its answer: Postfix's reject_unverified_recipient, Exim's callout. Absent: off. */
      callout: z
        .strictObject({
          /** Whom to ask: smtp://host:port or lmtp://host:port. Default: deliver, when that is SMTP or LMTP. */
          target: downstream.optional(),
          // The TTLs: Exim keeps callout answers 24h / 2h; Postfix re-probes after 7d / 3h (in the
          // background, while it goes on using the old answer). We have no background refresh, so
          // positive_ttl is how long a deleted mailbox still gets mail, which then bounces: a day.
          // negative_ttl is how long a new mailbox is still refused: an hour (a spammer's list
          // of made-up names costs one probe per name per hour).
          /** Keep "this user exists" this long (0 = ask every time). */
          positive_ttl: duration.default(86_400_000),
          /** Keep "no such user" (a 5xx to RCPT) this long (0 = ask every time). */
          negative_ttl: duration.default(3_600_000),
          /** The longest a probe may take, connect to the answer to RCPT; past it the client gets 451 4.4.3 (never a 5xx). */
          timeout: duration.refine((ms) => ms > 0, 'must be longer than 0').default(30_000),
          /** MAIL FROM of the probe: "<>" (the null sender, as Exim's callout), or an address for a downstream that refuses <>. */
          sender: envelopeSender.default(''),
        })
        .optional(),
    })
    .prefault({}),
  mail_from: z
    .strictObject({
      /** Recipients a message from the null sender <> may have (a bounce goes to one address). */
      null_sender_max_rcpts: z.number().int().positive().default(1),
      /** The sender's domain must exist in DNS (MX, or A/AAAA) and not publish a null MX. */
      require_domain: z.boolean().default(true),
      action: action.default('reject'),
      score: z.number().default(3),
    })
    .prefault({}),
  rdns: z
    .strictObject({
      /** off; ptr: the client's address must have a PTR; confirmed: and that name must point back (tcpserver -p). */
      require: z.enum(['off', 'ptr', 'confirmed']).default('off'),
      /** The seed's "451 bad reverse DNS" is temporary: tempfail by default. */
      action: action.default('tempfail'),
      score: z.number().default(2),
    })
    .prefault({}),
  dnsbl: z
    .strictObject({
      /** DNS blocklists (and allowlists, with a negative weight) for the client's address. */
      zones: z.array(dnsblZone).default([]),
      /** Blocklists of domain names, asked about the sender's domain. */
      rhsbl_sender: z.array(dnsblZone).default([]),
      /** Blocklists of domain names, asked about the HELO name. */
      rhsbl_helo: z.array(dnsblZone).default([]),
      /** Refuse (or tag) when the weights of the lists that answered add up to this (postscreen's model). */
      threshold: z.number().default(1),
      /** reject / tempfail: refuse at the threshold (each zone's own `reply` says 4xx or 5xx); score: tag instead (X-DNSBL). */
      action: action.default('reject'),
      score: z.number().default(5),
    })
    .prefault({}),
  ban: z
    .strictObject({
      /** DMail ban_ip: clients refused (at connect; answered at RCPT with smtp.delay_reject). */
      ip: z.array(cidr).default([]),
      /** DMail ban_mailfrom: sender patterns, shell style (`*@aol.com`). */
      mailfrom: z.array(z.string().min(1)).default([]),
      /** Sender regular expressions (qmail's qregex / badmailfrom), case-insensitive. */
      mailfrom_regex: z.array(regex).default([]),
      /** DMail ban_rcptto: recipient patterns, shell style. */
      rcptto: z.array(z.string().min(1)).default([]),
      action: action.default('reject'),
      score: z.number().default(5),
    })
    .prefault({}),
  helo: z
    .strictObject({
      /** Refuse MAIL from a client that never said HELO/EHLO. */
      required: z.boolean().default(true),
      /** localhost, localhost.localdomain, 127.x, [::1]. */
      reject_localhost: z.boolean().default(true),
      /** Our own hostname, or our IP address (bare or as a literal). */
      reject_our_name: z.boolean().default(true),
      /** An IP address that is not in brackets. */
      reject_bare_ip: z.boolean().default(true),
      /** An address literal that is not the client's own address. */
      reject_literal_mismatch: z.boolean().default(true),
      /** A name that is not a valid host name, or has no dot. */
      reject_invalid: z.boolean().default(true),
      /** More names to refuse, shell-style patterns (`*.dynamic.example.net`). */
      reject_names: z.array(z.string().min(1)).default([]),
      action: action.default('reject'),
      score: z.number().default(3),
    })
    .prefault({}),
  queue: z
    .strictObject({
      /** Waits between delivery attempts; the last one repeats until max_age. */
      retry: z.array(duration).min(1).default([60_000, 300_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 14_400_000]),
      max_age: duration.default(5 * 86_400_000),
      /** Connections to the downstream MTA at once. */
      connections: z.number().int().positive().max(256).default(8),
      /** Bounce (RFC 3464 DSN) to the sender when the downstream refuses for good or max_age passes. */
      bounce: z.boolean().default(true),
      /** Look for messages `mxguard stdio` queued this often (it also signals the daemon, when it may). */
      scan_interval: duration.default(60_000),
      /** The port of the MX hosts mail is delivered to (route mx); another only in a lab or a test. */
      mx_port: z.number().int().min(1).max(65535).default(25),
      /** TLS to MX hosts: opportunistic (STARTTLS when offered, Postfix's "may"), verify (required, with a certificate valid for the MX name), none. */
      mx_tls: z.enum(['none', 'opportunistic', 'verify']).default('opportunistic'),
      /** Per recipient domain (a domain or *.domain), TLS to its MX hosts instead of mx_tls: none, opportunistic, required (STARTTLS or no delivery), verify. An MTA-STS policy in enforce still asks verify. */
      tls_policy: z
        .record(z.string(), z.enum(['none', 'opportunistic', 'required', 'verify']))
        .default({})
        .transform((r, ctx) => {
          const out: Record<string, 'none' | 'opportunistic' | 'required' | 'verify'> = {};
          for (const [pattern, mode] of Object.entries(r)) {
            const key = domainPattern(pattern);
            if (key === undefined || key === '*') ctx.addIssue({ code: 'custom', path: [pattern], message: `"${pattern}" is not a domain or *.domain (mx_tls is the default for the rest)` });
            else out[key] = mode;
          }
          return out;
        }),
      /** MTA-STS (RFC 8461) for delivery by MX: a receiving domain's policy decides which MX hosts may take its mail, over verified TLS. */
      mta_sts: z
        .strictObject({
          /** Look up and apply MTA-STS policies. */
          enabled: z.boolean().default(true),
          /** Extra trusted CAs (a PEM file, relative to the config file) for the policy fetch and for verified TLS to MX hosts; for a lab or a test. */
          ca: z.string().min(1).optional(),
          /** The HTTPS port of policy hosts (mta-sts.<domain>); another only in a lab or a test. */
          port: z.number().int().min(1).max(65535).default(443),
        })
        .prefault({}),
    })
    .prefault({}),
  scoring: z
    .strictObject({
      /** From this transaction score on, the message is tagged spam: X-Spam-Flag: YES (SpamAssassin's required score). */
      tag_at: z.number().default(5),
      /** From this score on, 550 5.7.1 at the end of DATA, naming the largest contributors. */
      reject_at: z.number().default(15),
      /** From this score on (below reject_at), 451 4.7.1: the sender retries later. Off unless set. */
      tempfail_at: z.number().optional(),
      /** Which messages get the X-Spam-* headers: all (as SpamAssassin), spam (from tag_at) or none. */
      add_headers: z.enum(['all', 'spam', 'none']).default('all'),
      /** The DATA checks together must answer within this; the reply never waits longer. */
      data_timeout: duration.default(30_000),
    })
    .prefault({})
    .superRefine((s, ctx) => {
      if (s.reject_at < s.tag_at) ctx.addIssue({ code: 'custom', path: ['reject_at'], message: `reject_at (${s.reject_at}) is below tag_at (${s.tag_at}): nothing would ever be tagged` });
      if (s.tempfail_at !== undefined && s.tempfail_at >= s.reject_at) ctx.addIssue({ code: 'custom', path: ['tempfail_at'], message: `tempfail_at (${s.tempfail_at}) must be below reject_at (${s.reject_at})` });
    }),
  /** SPF (RFC 7208) of the sender at MAIL FROM, or of the HELO name for the null sender (issue 12); absent: off. */
  spf: z
    .strictObject({
      /** What a `fail` gets: score (fail_score points, the default), tempfail, or reject (550 5.7.23, answered at RCPT with smtp.delay_reject). */
      fail: action.default('score'),
      fail_score: z.number().default(5),
      softfail_score: z.number().default(2),
      /** A broken SPF record (permerror) is the sender's mistake, not proof of forgery: a few points. */
      permerror_score: z.number().default(1),
      /** A DNS failure (temperror): accept (go on without a result, logged) or tempfail (451 4.7.24). */
      temperror: z.enum(['accept', 'tempfail']).default('accept'),
    })
    .optional(),
  /** DKIM, ARC and DMARC of each message at the end of DATA (issue 12); absent: off. */
  dmarc: z
    .strictObject({
      /** What a DMARC fail gets: none (points only, the default), quarantine (quarantine_score points, spam), reject (550 5.7.1, only for p=reject, not under t=y, not after a chain sealed by auth.trusted_arc). */
      enforce: z.enum(['none', 'quarantine', 'reject']).default('none'),
      /** Points for a DMARC fail (every enforce). */
      fail_score: z.number().default(3),
      /** Points for a DMARC fail of a p=quarantine or p=reject domain with enforce: quarantine (or reject that may not refuse). */
      quarantine_score: z.number().default(6),
      /** Points for a DKIM signature that fails (a body altered on the way, a forgery). */
      dkim_fail_score: z.number().default(1),
      /** Keys shorter than this fail (RFC 8301: 1024). */
      min_key_bits: z.number().int().min(512).default(1024),
    })
    .optional(),
  /** Greylisting (issue 11), decided at RCPT; absent: off. */
  greylist: z
    .strictObject({
      /** triplet: client network, sender, recipient (postgrey); ip: the client network alone (seed 001's per-IP). */
      mode: z.enum(['triplet', 'ip']).default('triplet'),
      /** Key a client with a forward-confirmed reverse DNS name by that name's domain, not its /24 (a pool of senders is one client); a generic name that spells out the address keeps the /24. */
      by_domain: z.boolean().default(false),
      /** How long a new triplet waits before a retry passes. */
      delay: duration.default(300_000),
      /** A retry must come within this of the first attempt, or the triplet starts over. */
      retry_window: duration.default(2 * 86_400_000),
      /** A passed triplet is remembered this long after its last use; an allowed network this long after it was allowed. */
      expire: duration.default(35 * 86_400_000),
      /** After this many greylisted triplets passed within auto_allow_window, the client network is allowed for `expire` (0 = never). */
      auto_allow: z.number().int().nonnegative().default(2),
      auto_allow_window: duration.default(86_400_000),
      /** always, or suspicious: only when the transaction score so far is at least min_score. */
      when: z.enum(['always', 'suspicious']).default('suspicious'),
      min_score: z.number().default(1),
      /** Greylite: one more retry demanded for each `retry_per_points` points above min_score (0 = one retry always). */
      retry_per_points: z.number().nonnegative().default(0),
      /** Clients never greylisted: IPs, CIDRs, or host-name patterns (`*.google.com`) matched on a forward-confirmed name only. */
      allow_clients: z.array(z.string().min(1)).default([]),
      /** Recipients never greylisted: addresses, @domain, or shell-style patterns (`postmaster@*`). */
      allow_recipients: z.array(z.string().min(1)).default([]),
      /** When SPF passes for the sender, its domain stands for the client network (pools pass on their first retry). */
      spf_domain: z.boolean().default(true),
    })
    .optional()
    .superRefine((g, ctx) => {
      if (g === undefined) return;
      if (g.delay >= g.retry_window) ctx.addIssue({ code: 'custom', path: ['retry_window'], message: `retry_window (${g.retry_window / 1000}s) must be longer than delay (${g.delay / 1000}s): no retry could pass` });
      for (const [i, c] of g.allow_clients.entries()) {
        if (/^[0-9a-f.:]+(\/\d+)?$/i.test(c) && (c.includes(':') || /^\d/.test(c))) {
          const err = cidrError(c) ?? cidrHostBitsError(c);
          if (err) ctx.addIssue({ code: 'custom', path: ['allow_clients', i], message: err });
        }
      }
    }),
  filters: z
    .strictObject({
      /** External scanners run on each message at the end of DATA, all at once (issue 12): exec, spamd, rspamd, clamd. */
      scanners: z
        .array(scanner)
        .default([])
        .superRefine((list, ctx) => {
          const seen = new Set<string>();
          list.forEach((sc, i) => {
            const name = sc.name ?? sc.type;
            if (seen.has(name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `a second scanner named "${name}": give each its own name` });
            seen.add(name);
          });
        }),
      /** DMail's msg_filter: a file of Mfilter rules, run on each message at the end of DATA. */
      mfilter: z.string().min(1).optional(),
      /** Files of SpamAssassin-syntax rules (header, body, rawbody, uri, full, meta, score, describe). */
      rules: z.array(z.string().min(1)).default([]),
      /** The filters read at most this much of a message body (SpamAssassin reads about 50 KB of body text). */
      scan_size: size.default(256 * 1024),
      /** When a filter fails or misses scoring.data_timeout: tempfail (451) or accept without its verdict. */
      on_error: z.enum(['tempfail', 'accept']).default('tempfail'),
    })
    .prefault({}),
  dns: z
    .strictObject({
      /** Resolvers to ask (IP:port, as Node can only use addresses); empty = the system's (/etc/resolv.conf). */
      servers: z
        .array(
          hostPort.superRefine((v, ctx) => {
            const hp = parseHostPort(v);
            if (hp && net.isIP(hp.host) === 0) ctx.addIssue({ code: 'custom', message: `"${v}": a DNS server is given by IP address, not by name` });
          }),
        )
        .default([]),
      /** Give up on one DNS question after this long: a timeout is never a reason to reject. */
      timeout: duration.default(5000),
    })
    .prefault({}),
  policy: z
    .strictObject({
      /** A Postfix policy delegation server here (host:port; Postfix: check_policy_service inet:host:port), run by `mxguard start` and `mxguard policy`. Off unless set. */
      listen: hostPort.optional(),
      /** Longest a reply is held (the tarpit): keep it under Postfix's smtpd_policy_service_timeout (100s). */
      max_delay: duration.default(90_000),
      /** A policy connection silent this long is closed (Postfix closes its own after smtpd_policy_service_max_idle, 300s). */
      idle_timeout: duration.refine((ms) => ms > 0, 'must be longer than 0').default(360_000),
    })
    .superRefine((p, ctx) => {
      // A connection held in the tarpit is silent: shorter, the idle timer would close it mid-wait.
      if (p.idle_timeout <= p.max_delay) ctx.addIssue({ code: 'custom', path: ['idle_timeout'], message: `must be longer than policy.max_delay (${p.max_delay / 1000}s)` });
    })
    .prefault({}),
  admin: z
    .strictObject({
      /** The admin HTTP API (host:port): loopback only, please. Off unless set. */
      listen: hostPort.optional(),
      /** The bearer token every API call must carry (Authorization: Bearer TOKEN). */
      token: z.string().min(16, 'use a token of at least 16 characters').optional(),
    })
    .prefault({})
    .superRefine((a, ctx) => {
      if (a.listen !== undefined && a.token === undefined) ctx.addIssue({ code: 'custom', path: ['token'], message: 'admin.listen needs admin.token' });
    }),
  /** The transaction history the admin API searches (/api/history): data_dir/history.sqlite, kept while the admin API runs. */
  history: z
    .strictObject({
      /** Transactions kept: the oldest beyond this are deleted (a ring on disk). */
      keep: z.number().int().min(1).max(100_000_000).default(100_000),
    })
    .prefault({}),
  log: z
    .strictObject({
      level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
      /** Log to this file instead of standard output. Reopened on SIGHUP and SIGUSR1 (logrotate). */
      file: z.string().optional(),
      /** json: one JSON object a line (pino); text: Postfix-like lines, the queue ID first (`grep QUEUEID` follows a message). */
      format: z.enum(['json', 'text']).default('json'),
    })
    .prefault({}),
}).superRefine((c, ctx) => {
  // Cross-section checks: they run once every section is valid.
  const addresses = c.listen.map((l) => l.address);
  c.proxy_protocol.listen.forEach((entry, i) => {
    if (!addresses.includes(entry)) ctx.addIssue({ code: 'custom', path: ['proxy_protocol', 'listen', i], message: `"${entry}" is not one of the listen addresses (${addresses.join(', ')})` });
    else if (c.listen.some((l) => l.address === entry && l.mode === 'submissions')) ctx.addIssue({ code: 'custom', path: ['proxy_protocol', 'listen', i], message: `"${entry}" is a submissions (implicit TLS) listener: the PROXY protocol is not supported there` });
  });
  c.listen.forEach((l, i) => {
    if (l.mode === 'submissions' && c.tls === undefined) ctx.addIssue({ code: 'custom', path: ['listen', i], message: `"${l.address}" has mode submissions (implicit TLS): it needs tls (cert and key)` });
    if (l.mode !== 'mx' && !c.auth.enabled) ctx.addIssue({ code: 'custom', path: ['listen', i], message: `"${l.address}" has mode ${l.mode}, which needs AUTH: auth.enabled is false` });
  });
  const targets: Array<[(string | number)[], string]> = [...Object.entries(c.routes).map(([p, t]): [(string | number)[], string] => [['routes', p], t]), ...(c.deliver !== undefined ? [[['deliver'], c.deliver] as [(string | number)[], string]] : [])];
  for (const [at, target] of targets) {
    const name = /^smarthost:(.+)$/.exec(target)?.[1];
    if (name !== undefined && !Object.hasOwn(c.smarthosts, name)) ctx.addIssue({ code: 'custom', path: at, message: `${target}: there is no smarthosts.${name}` });
  }
  const callout = c.recipients.callout;
  if (callout !== undefined && callout.target === undefined && !/^(smtp|lmtp):\/\//.test(c.deliver ?? '')) {
    const deliver = c.deliver === undefined ? 'the default Maildir' : c.deliver;
    ctx.addIssue({ code: 'custom', path: ['recipients', 'callout'], message: `needs a target (smtp://host:port or lmtp://host:port): deliver is ${deliver}, which cannot be asked about recipients` });
  }
});

export type Config = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;

export interface HostPort {
  host: string;
  port: number;
}

/** "127.0.0.1:25", "[::1]:25", "mx.example.test:25" → { host, port }. */
export function parseHostPort(text: string): HostPort | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  const host = m[1] ?? m[2];
  if (host === undefined) return undefined;
  return { host, port };
}
