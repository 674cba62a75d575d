// The 100-rule filter files of the benchmarks (bench/mime.ts, and the filter cells of
// bench/run.ts): shaped like real ones, so that the figures mean something for an administrator.

// ---------------------------------------------------------------------------------------------
// 100 rules shaped like SpamAssassin's stock ones: mostly case-insensitive phrases with \b,
// \s+ and alternations; some obfuscation classes; a few without any literal (the costly kind).

export function generateRules(): string {
  const lines: string[] = [];
  const phrases = ['free money', 'act now', 'limited time', 'click here', 'unsubscribe', 'winner', 'lottery', 'viagra', 'cialis', 'mortgage rates', 'work from home', 'weight loss', 'no prescription', 'best price', 'dear friend', 'credit card', 'bank account', 'wire transfer', 'urgent reply', 'investment opportunity'];
  const obf = (p: string): string => p.replace(/a/g, '[a@4]').replace(/i/g, '[i1!]').replace(/o/g, '[o0]').replace(/ /g, '\\s+');
  let n = 0;
  const add = (kind: string, spec: string): void => {
    lines.push(`${kind} R${String(n).padStart(3, '0')}_${kind.toUpperCase()} ${spec}`, `score R${String(n).padStart(3, '0')}_${kind.toUpperCase()} ${((n % 7) / 2 + 0.1).toFixed(1)}`);
    n++;
  };
  for (const p of phrases) add('body', `/\\b${p.replace(/ /g, '\\s+')}\\b/i`); // 20
  for (const p of phrases) add('body', `/${obf(p)}/i`); // 20
  for (const p of phrases.slice(0, 10)) add('header', `Subject =~ /\\b${p.replace(/ /g, '\\s+')}\\b/i`); // 10
  const hdr = [
    'From =~ /\\@(?:yahoo|hotmail|gmail)\\.(?:com|co\\.uk)\\b/i', 'From:name =~ /^(?:support|admin|security)\\s+team$/i',
    'Reply-To =~ /\\@.+\\.(?:ru|cn|top|xyz)$/i', 'To =~ /undisclosed.recipients/i', 'Received =~ /from\\s+\\[\\d+\\.\\d+\\.\\d+\\.\\d+\\]/',
    'Message-Id =~ /^<[0-9a-f]{32}\\@/', 'X-Mailer =~ /(?:the bat|mass ?mailer|atomic)/i', 'Subject =~ /^[A-Z\\s!]{20,}$/',
    'Subject =~ /\\$\\d{3,}/', 'Subject =~ /!{3,}/', 'Date =~ /\\b(?:19[0-9]{2}|20[3-9][0-9])\\b/', 'Content-Type =~ /charset="?(?:gb2312|big5|koi8-r)/i',
    'X-Priority =~ /^1\\b/', 'Precedence =~ /^bulk$/i', 'List-Unsubscribe =~ /mailto:/i', 'Subject =~ /\\bre:\\s/i',
    'From =~ /\\b(?:noreply|no-reply|mailer-daemon)\\@/i', 'To =~ /^(?:[^,]+,){10,}/', 'Subject =~ /\\b(?:urgent|important|attention)\\b/i',
    'X-Spam-Flag =~ /^yes$/i',
  ];
  for (const h of hdr) add('header', h); // 20
  const body = [
    '/\\$\\d{1,3}(?:,\\d{3})+(?:\\.\\d\\d)?/', '/[A-Z]{15,}/', '/\\d{3}[-.\\s]\\d{3}[-.\\s]\\d{4}/', '/(?:https?:\\/\\/)?bit\\.ly\\//i',
    '/\\b(?:100|hundred) ?% (?:free|guaranteed)\\b/i', '/\\bmillions? (?:of )?dollars\\b/i', '/\\b(?:order|buy) (?:now|today)\\b/i',
    '/\\byou (?:have been|were) selected\\b/i', '/\\bthis is not (?:a )?spam\\b/i', '/\\bremove me\\b/i', '/!{4,}/', '/\\b[0-9]{16}\\b/',
    '/\\bnigeria\\b/i', '/\\bdear (?:sir|madam|beneficiary)\\b/i', '/\\b(?:pharmacy|meds) online\\b/i',
  ];
  for (const b of body) add('body', b); // 15
  const uris = ['m{^https?://[^/]*\\.(?:ru|cn|top|xyz)(?:/|$)}i', 'm{^https?://\\d+\\.\\d+\\.\\d+\\.\\d+}', 'm{bit\\.ly/}i', 'm{\\.php\\?id=\\d+}i', 'm{^https?://[^/]+\\@}', 'm{redirect\\?url=}i', 'm{/wp-admin/}i', 'm{\\.exe$}i', 'm{^https?://(?:www\\.)?tinyurl\\.com}i', 'm{%[0-9a-f]{2}%[0-9a-f]{2}%[0-9a-f]{2}}i', 'm{login|verify|account}i', 'm{^http://}i', 'm{:\\d{4,5}/}', 'm{\\.(?:zip|rar)$}i', 'm{track(?:ing)?\\.}i'];
  for (const u of uris) add('uri', u); // 15
  return `${lines.join('\n')}\n`;
}

// ---------------------------------------------------------------------------------------------
// 100 Mfilter rules as a DMail administrator writes them: header phrase tests, wildcards, a few
// regular expressions and size tests, each scoring with spamdetect.

export function generateMfilter(): string {
  const lines: string[] = ['# 100 generated Mfilter rules (bench/filter-rules.ts)'];
  const words = ['free money', 'act now', 'limited time', 'click here', 'winner', 'lottery', 'viagra', 'cialis', 'mortgage', 'work from home', 'weight loss', 'prescription', 'best price', 'dear friend', 'credit card', 'bank account', 'wire transfer', 'urgent', 'investment', 'casino'];
  let n = 0;
  const add = (line: string): void => {
    lines.push(line);
    n++;
  };
  for (const w of words) add(`if (isin("Subject", "${w}")) spamdetect(${(n % 5) + 1}, "subject: ${w}")`); // 20
  for (const w of words) add(`if (isin("From", "${w.replace(/ /g, '')}")) spamdetect(2, "from: ${w}")`); // 20
  for (const w of words.slice(0, 10)) add(`if (match("Reply-To", "*${w.replace(/ /g, '')}*")) spamdetect(1, "reply-to: ${w}")`); // 10
  for (const w of words.slice(0, 10)) add(`if (exists("X-${w.replace(/ /g, '-')}")) spamdetect(1, "odd header")`); // 10
  for (const w of words.slice(10)) add(`if (regex("Subject", "\\b${w.replace(/ /g, '\\s+')}\\b")) spamdetect(3, "subject re: ${w}")`); // 10
  for (let i = 0; i < 10; i++) add(`if (lines() > ${1000 + i * 100}) and (isin("Subject", "${words[i] as string}")) spamdetect(1, "long and ${words[i] as string}")`); // 10
  for (let i = 0; i < 10; i++) add(`if (isin("To", "list${i}@")) and (!exists("List-Id")) spamdetect(2, "list without List-Id")`); // 10
  for (let i = 0; i < 10; i++) add(`if (isin("X-Mailer", "bulkmailer ${i}")) reject "bulk mailer ${i} refused"`); // 10
  if (n !== 100) throw new Error(`generated ${n} Mfilter rules`);
  return `${lines.join('\n')}\n`;
}
