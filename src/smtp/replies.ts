// Reply texts in one place, so the wording stays consistent and greppable.

import { rfc5322Date } from '../util/date.ts';

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
  return `Received: from ${from}\r\n\tby ${opts.hostname} (mxguard) with ${opts.protocol} id ${opts.id}${forPart};\r\n\t${rfc5322Date(opts.date.getTime())}\r\n`;
}

/** Multi-line reply: "250-a\r\n250-b\r\n250 c\r\n". */
export function multiline(code: number, lines: readonly string[]): string {
  return lines.map((l, i) => `${code}${i === lines.length - 1 ? ' ' : '-'}${l}\r\n`).join('');
}
