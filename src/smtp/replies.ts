// Reply texts in one place, so the wording stays consistent and greppable.

export function receivedHeader(opts: {
  helo: string | undefined;
  ip: string;
  hostname: string;
  protocol: string;
  id: string;
  rcpts: readonly string[];
  date: Date;
}): string {
  const from = `${opts.helo ?? 'unknown'} ([${opts.ip}])`;
  // Name the recipient only when there is one, so a Bcc list is not disclosed.
  const forPart = opts.rcpts.length === 1 ? `\r\n\tfor <${opts.rcpts[0]}>` : '';
  return `Received: from ${from}\r\n\tby ${opts.hostname} (mxguard) with ${opts.protocol} id ${opts.id}${forPart};\r\n\t${rfc5322Date(opts.date)}\r\n`;
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** "Sun, 22 Nov 2026 03:04:05 +0000". */
export function rfc5322Date(d: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${DAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}

/** Multi-line reply: "250-a\r\n250-b\r\n250 c\r\n". */
export function multiline(code: number, lines: readonly string[]): string {
  return lines.map((l, i) => `${code}${i === lines.length - 1 ? ' ' : '-'}${l}\r\n`).join('');
}
