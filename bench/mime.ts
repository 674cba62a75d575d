// Micro-bench for the message filters' text side (one core, no I/O):
//   1. MIME: messages/s of postal-mime (a maintained full parser) vs decodedText (our bounded
//      text-only decoder, src/policy/filters/mime-text.ts) on three generated messages.
//   2. Rules: µs per message for 100 generated SpamAssassin-like rules (header, body, uri) on a
//      1 KiB message, per regex engine option: re2js alone, re2js behind the literal prefilter
//      (what sa-rules.ts does; measured through compileRules().run()), V8's linear engine (/l),
//      and V8's backtracking RegExp (unsafe: the baseline only).
// Medians of 5 runs. `node bench/mime.ts`.
import v8 from 'node:v8';
import PostalMime from 'postal-mime';
import { RE2JS } from 're2js';
import { parseHeaderBlock } from '../src/mail/header-block.ts';
import { decodedText } from '../src/policy/filters/mime-text.ts';
import { compileRules, requiredLiterals } from '../src/policy/filters/sa-rules.ts';
import type { FilterEnvelope, ScanMessage } from '../src/policy/filters/types.ts';
import { generateRules } from './filter-rules.ts';
import { median } from './stats.ts';

const RUNS = 5;
const RUN_MS = Number(process.env.BENCH_RUN_MS ?? 300);

/** Calls per second of `fn`, each run lasting ~RUN_MS; the median of RUNS runs. */
async function rate(fn: () => unknown | Promise<unknown>, isAsync: boolean): Promise<number> {
  const rates: number[] = [];
  for (let r = 0; r < RUNS + 1; r++) {
    let n = 0;
    const t0 = performance.now();
    let t = t0;
    while (t - t0 < RUN_MS) {
      for (let i = 0; i < 20; i++) {
        if (isAsync) await fn();
        else fn();
      }
      n += 20;
      t = performance.now();
    }
    if (r > 0) rates.push((n * 1000) / (t - t0)); // run 0 warms up
  }
  return median(rates);
}

function scan(message: string): ScanMessage {
  const buf = Buffer.from(message.replace(/\r?\n/g, '\r\n'), 'utf8');
  const h = parseHeaderBlock(buf);
  return { headers: h.fields, headersTruncated: h.truncated, rawBody: buf.subarray(h.bodyOffset), bodyTruncated: false, size: buf.length, lines: 0 };
}

const WORDS = 'the meeting notes budget schedule report project review thanks please attached friday figures team office update draft question plan'.split(' ');
function prose(bytes: number, seed = 1): string {
  let s = seed;
  const out: string[] = [];
  let len = 0;
  let line = 0;
  while (len < bytes) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    const w = WORDS[s % WORDS.length] as string;
    out.push(w);
    len += w.length + 1;
    line += w.length + 1;
    if (line > 70) {
      out.push('\n');
      line = 0;
    }
  }
  return out.join(' ').replace(/ \n /g, '\n');
}

const HEAD = `Received: from mail.example.org (mail.example.org [198.51.100.1]) by mx.test with ESMTP id 4AbC
Subject: Re: meeting notes for friday
From: Alice Example <alice@example.org>
To: Bob <bob@example.net>
Date: Mon, 1 Dec 2026 10:00:00 +0000
Message-Id: <20261201100000.1234@example.org>
MIME-Version: 1.0
`;

function qp(text: string): string {
  return text.replace(/=/g, '=3D').replace(/é/g, '=C3=A9');
}

const plain1k = `${HEAD}Content-Type: text/plain; charset=utf-8\n\n${prose(1024 - HEAD.length - 45)}\n`;
const alt4k = `${HEAD}Content-Type: multipart/alternative; boundary="alt-1"

--alt-1
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

${qp(prose(1500, 2))} café
--alt-1
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

${qp(`<html><head><style>p{margin:0}</style></head><body><p>${prose(1900, 2).replace(/\n/g, '<br>\n')}</p><a href="http://example.org/x">link</a> café</body></html>`)}
--alt-1--
`;
const attachment = Buffer.from(Uint8Array.from({ length: 14_000 }, (_, i) => (i * 31 + (i >> 7)) & 0xff));
const att20k = `${HEAD}Content-Type: multipart/mixed; boundary="mix-1"

--mix-1
Content-Type: text/plain; charset=utf-8

${prose(800, 3)}
--mix-1
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename="report.pdf"
Content-Transfer-Encoding: base64

${attachment.toString('base64').replace(/.{76}/g, '$&\n')}
--mix-1--
`;

async function mimeTable(): Promise<void> {
  console.log('## MIME text: messages per second (one core, median of 5 runs)\n');
  console.log('| message | size | postal-mime 4.0.0 | decodedText | ratio |');
  console.log('|---|---:|---:|---:|---:|');
  for (const [name, text] of [['plain text', plain1k], ['multipart/alternative QP + HTML', alt4k], ['text + base64 attachment', att20k]] as const) {
    const buf = Buffer.from(text.replace(/\r?\n/g, '\r\n'));
    const base = scan(text);
    const postal = await rate(() => PostalMime.parse(buf), true);
    // A fresh ScanMessage each call: decodedText memoizes per message object.
    const ours = await rate(() => decodedText({ ...base }), false);
    console.log(`| ${name} | ${(buf.length / 1024).toFixed(1)} KiB | ${postal.toFixed(0)} | ${ours.toFixed(0)} | ${(ours / postal).toFixed(1)}× |`);
  }
}

interface Option {
  readonly name: string;
  compile(source: string, flags: string): { test(text: string): boolean } | null;
}

/** A Perl-ish /re/flags or m{re}flags from a generated rule, for the engines other than ours. */
function splitRegex(spec: string): { source: string; flags: string } {
  const m = /^(?:\/(.*)\/|m\{(.*)\})([a-z]*)$/.exec(spec) as RegExpExecArray;
  return { source: (m[1] ?? m[2]) as string, flags: m[3] as string };
}

async function rulesTable(): Promise<void> {
  const cf = generateRules();
  const env: FilterEnvelope = { mailFrom: 'alice@example.org', rcpts: ['bob@example.net'], clientIp: '198.51.100.1' };
  const ham = scan(plain1k);
  const spamText = plain1k.replace('Subject: Re: meeting notes for friday', 'Subject: FREE MONEY winner!!!').replace('the meeting', 'click here to claim your lottery prize at http://bit.ly/x act now, limited time');
  const spam = scan(spamText);
  const rules = compileRules([{ file: 'bench-100.cf', text: cf }]);
  const withoutLiteral = cf.split('\n').filter((l) => /^(?:body|header|uri) /.test(l)).filter((l) => {
    const spec = l.replace(/^\S+\s+\S+\s+/, '').replace(/^[^=]*=~\s*/, '');
    const { source, flags } = splitRegex(spec);
    return requiredLiterals(source, flags.includes('i')) === null;
  }).length;

  // The other options: the same rules on the same texts, by a small generic runner.
  v8.setFlagsFromString('--enable-experimental-regexp-engine');
  const options: Option[] = [
    { name: 're2js, no prefilter', compile: (s, f) => RE2JS.compile(s, f.includes('i') ? RE2JS.CASE_INSENSITIVE : 0) },
    {
      name: "V8 linear engine /l (refuses /i: text and literals lower-cased instead)",
      compile: (s, f) => {
        try {
          // eslint-disable-next-line no-invalid-regexp -- 'l' exists once the V8 flag above is set
          const re = new RegExp(f.includes('i') ? s.toLowerCase().replace(/\\d/g, '\\d') : s, 'l');
          return f.includes('i') ? { test: (t: string) => re.test(t.toLowerCase()) } : re;
        } catch {
          return null;
        }
      },
    },
    { name: 'V8 RegExp, no prefilter (backtracking: unsafe)', compile: (s, f) => new RegExp(s, f.replace('x', '')) },
  ];

  console.log('\n## 100 SpamAssassin-like rules on a 1 KiB message: µs per message (median of 5 runs)\n');
  const count = (kind: string): number => cf.split('\n').filter((l) => l.startsWith(`${kind} `)).length;
  console.log(`${rules.rules} rules (${count('body')} body, ${count('header')} header, ${count('uri')} uri); ${withoutLiteral} have no required literal. Decoded text cached (decodedText is memoized per message); its own cost is in the table above.\n`);
  console.log('| engine | ham µs | spam µs | patterns refused |');
  console.log('|---|---:|---:|---:|');
  for (const msg of [ham, spam]) decodedText(msg);
  const oursHam = 1e6 / (await rate(() => rules.run(ham, env), false));
  const oursSpam = 1e6 / (await rate(() => rules.run(spam, env), false));
  console.log(`| re2js + literal prefilter (sa-rules.ts, chosen) | ${oursHam.toFixed(1)} | ${oursSpam.toFixed(1)} | 0 |`);

  for (const opt of options) {
    let refused = 0;
    const compiled: { kind: string; header?: string; re: { test(text: string): boolean } }[] = [];
    for (const line of cf.split('\n')) {
      const m = /^(body|header|uri)\s+\S+\s+(.*)$/.exec(line);
      if (!m) continue;
      let spec = m[2] as string;
      let header: string | undefined;
      if (m[1] === 'header') {
        const h = /^(\S+)\s*=~\s*(.*)$/.exec(spec) as RegExpExecArray;
        header = (h[1] as string).toLowerCase();
        spec = h[2] as string;
      }
      const { source, flags } = splitRegex(spec);
      const re = opt.compile(source, flags);
      if (!re) refused++;
      else compiled.push({ kind: m[1] as string, header, re });
    }
    const runner = (msg: ScanMessage) => (): number => {
      const d = decodedText(msg);
      const lines = d.body.split('\n');
      let hits = 0;
      for (const r of compiled) {
        if (r.kind === 'header') {
          const name = (r.header as string).split(':')[0] as string;
          const value = msg.headers.filter((f) => f.key === name).map((f) => f.value).join('\n');
          if (r.re.test(value)) hits++;
        } else if (r.kind === 'body') {
          if (lines.some((l) => r.re.test(l))) hits++;
        } else if (d.uris.some((u) => r.re.test(u))) hits++;
      }
      return hits;
    };
    const h = 1e6 / (await rate(runner(ham), false));
    const s = 1e6 / (await rate(runner(spam), false));
    console.log(`| ${opt.name} | ${h.toFixed(1)} | ${s.toFixed(1)} | ${refused} |`);
  }
  const hits = rules.run(spam, env).hits.length;
  console.log(`\n(the spam message hits ${hits} rules, the ham ${rules.run(ham, env).hits.length})`);
}

await mimeTable();
await rulesTable();
