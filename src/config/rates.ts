// The words of limits.rates (issue 11): the keys a count can be kept by, the counts, the
// actions, and which keys make sense for which count. The schema validates rules with them and
// src/policy/rates/ counts by them; they live here, below both, as the config's vocabulary.
export const RATE_KEYS = ['client_ip', 'client_net', 'sender', 'sender_domain', 'rcpt', 'auth_user', 'helo'] as const;
export const RATE_COUNTS = ['connections', 'messages', 'recipients', 'bytes', 'bad_rcpts', 'auth_failures'] as const;
export const RATE_ACTIONS = ['tempfail', 'tarpit', 'reject', 'score'] as const;

export type RateKey = (typeof RATE_KEYS)[number];
export type RateCount = (typeof RATE_COUNTS)[number];
export type RateAction = (typeof RATE_ACTIONS)[number];

/**
 * The keys each count can be kept by: what is known where the count happens. A connection is
 * counted before HELO (the client alone); a failed AUTH names no user that is sure to exist;
 * a message has many recipients, so per-recipient counts are only of recipients.
 */
export const KEYS_FOR: Readonly<Record<RateCount, readonly RateKey[]>> = {
  connections: ['client_ip', 'client_net'],
  auth_failures: ['client_ip', 'client_net', 'helo'],
  messages: ['client_ip', 'client_net', 'sender', 'sender_domain', 'auth_user', 'helo'],
  bytes: ['client_ip', 'client_net', 'sender', 'sender_domain', 'auth_user', 'helo'],
  recipients: RATE_KEYS,
  bad_rcpts: RATE_KEYS,
};

/** The name of the rule limits.fromip_max stands for. */
export const FROMIP_MAX = 'fromip_max';
