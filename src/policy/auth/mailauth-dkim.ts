// mailauth's DKIM verification made cheaper for a stream of messages (the `dmarc` check's worker).
//
// DKIM and ARC public keys parsed once, not once per message. mailauth looks a key record up and
// parses it anew for every message (a base64 check, createPublicKey, a PEM export and the key's
// details), and crypto.verify then parses that PEM again: about a quarter of the DKIM/DMARC
// worker's time on a stream of messages from one signer. Here the parsed key is kept beside the
// record it came from; each message still asks DNS (our resolver, with its cache and the record's
// TTL), and a record that changed (a rotated key) is parsed anew. Everything that changes
// mailauth's answer is part of the cache key, as in its own per-message cache (tools.js
// createKeyCache), which this one replaces for the DkimVerifier and its ARC data.
//
// This reaches into mailauth's lib/ (pinned: package.json); test/dkim-arc-vectors.test.ts runs
// the DKIM and ARC vectors through it.
import { createRequire } from 'node:module';
import type { KeyObject } from 'node:crypto';
import crypto from 'node:crypto';
import type { MailauthResolver } from './dns.ts';

const load = createRequire(import.meta.url);

interface KeyResult {
  publicKey: string | KeyObject;
  rr: string;
  [more: string]: unknown;
}

interface Tools {
  getPublicKey(type: string, name: string, minBitLength: number | undefined, resolver: MailauthResolver, options: { strict?: boolean; hashAlgo?: string }): Promise<KeyResult>;
  toALabel(name: string): string;
  writeToStream(stream: unknown, input: unknown): Promise<void>;
}

/** What this module touches of mailauth's DkimVerifier (a MessageParser, lib/dkim/message-parser.js). */
interface VerifierParts {
  state: string;
  headerBytes: number;
  headerChunks: Buffer[];
  emitHeaders(chunk: Buffer): Promise<void>;
  nextChunk(chunk: Buffer): Promise<void>;
  arc?: object;
  [more: string]: unknown;
}
type Verifier = new (o: unknown) => VerifierParts;

/**
 * Where the header section ends in `chunk`: the index just past the LF of the empty line, or -1.
 * mailauth's rule (message-parser.js processChunk): an LF after an LF or after CRLF, or a
 * message that begins with an empty line. `seen` header bytes came before this chunk, whose
 * last two were `p1` (the last) and `p2`.
 */
export function headerEnd(chunk: Buffer, seen: number, p1: number | undefined, p2: number | undefined): number {
  for (let i = chunk.indexOf(0x0a); i !== -1; i = chunk.indexOf(0x0a, i + 1)) {
    const b1 = i >= 1 ? chunk[i - 1] : p1;
    const b2 = i >= 2 ? chunk[i - 2] : i === 1 ? p1 : p2;
    const total = seen + i + 1;
    if (b1 === 0x0a || (b1 === 0x0d && b2 === 0x0a) || total === 1 || (total === 2 && b1 === 0x0d)) return i + 1;
  }
  return -1;
}

/**
 * mailauth's DkimVerifier with the header/body split done by searching for LFs: the original
 * looks at each header byte through a small array it copies every time (a thousand arrays for a
 * signed message's header, most of the worker's garbage). Same rule, same state (headerBytes,
 * headerChunks); src/policy/auth/mailauth-dkim.test.ts compares the two on every way of cutting messages.
 */
function fastSplit(Base: Verifier): Verifier {
  return class extends Base {
    #p1: number | undefined;
    #p2: number | undefined;
    async processChunk(input: Buffer): Promise<void> {
      let chunk = input;
      if (!chunk || !chunk.length) return;
      if (this.state === 'header') {
        const end = headerEnd(chunk, this.headerBytes, this.#p1, this.#p2);
        if (end === -1) {
          this.headerBytes += chunk.length;
          this.#p2 = chunk.length >= 2 ? chunk[chunk.length - 2] : this.#p1;
          this.#p1 = chunk[chunk.length - 1];
          this.headerChunks.push(chunk);
          return;
        }
        this.headerBytes += end;
        if (end === chunk.length) {
          await this.emitHeaders(chunk);
          return;
        }
        await this.emitHeaders(chunk.subarray(0, end));
        chunk = chunk.subarray(end);
      }
      await this.nextChunk(chunk);
    }
  };
}

let loaded: { tools: Tools; DkimVerifier: Verifier; OriginalVerifier: Verifier } | undefined;
/** mailauth's internals, loaded on first use (the worker thread loads them; the daemon may never). */
const mailauth = () => {
  if (loaded) return loaded;
  const OriginalVerifier = (load('mailauth/lib/dkim/dkim-verifier') as { DkimVerifier: Verifier }).DkimVerifier;
  return (loaded = { tools: load('mailauth/lib/tools') as Tools, DkimVerifier: fastSplit(OriginalVerifier), OriginalVerifier });
};

/** Keys parsed, by question; the oldest go first past MAX_KEYS. */
const parsed = new Map<string, { rr: string; result: Promise<KeyResult> }>();
const MAX_KEYS = 1000;

/** The record's text as mailauth reads it: the first TXT record's strings joined, no white space. */
function recordText(list: unknown): string {
  const first = Array.isArray(list) ? (list[0] as unknown) : undefined;
  return ([] as unknown[]).concat(first ?? []).join('').replace(/\s+/g, '');
}

/**
 * The key as a KeyObject that still reads as its PEM text (mailauth puts `publicKey.toString()`
 * in its results): crypto.verify takes a KeyObject without parsing it again.
 */
function asKeyObject(result: KeyResult): KeyResult {
  if (typeof result.publicKey !== 'string') return result;
  const pem = result.publicKey;
  const key = crypto.createPublicKey(pem);
  Object.defineProperty(key, 'toString', { value: () => pem });
  return { ...result, publicKey: key };
}

/** mailauth's key cache interface (createKeyCache), over keys parsed once per record. */
export function sharedKeyCache(resolver: MailauthResolver): { resolver: MailauthResolver; get: (type: string, name: string, minBitLength?: number, options?: { strict?: boolean; hashAlgo?: string }) => Promise<KeyResult> } {
  const t = mailauth().tools;
  // Within one message, one look-up per question (as mailauth's own cache).
  const asked = new Map<string, Promise<KeyResult>>();
  const lookUp = async (type: string, name: string, minBitLength: number | undefined, options: { strict?: boolean; hashAlgo?: string }, key: string): Promise<KeyResult> => {
    const list = await resolver(t.toALabel(name), 'TXT'); // a DNS failure is mailauth's to report, as it would be
    const rr = recordText(list);
    const known = parsed.get(key);
    if (known !== undefined && known.rr === rr) return known.result;
    const result = t.getPublicKey(type, name, minBitLength, async () => list, options).then(asKeyObject);
    result.catch(() => undefined); // a bad record fails each message that uses it, not the process
    parsed.delete(key);
    parsed.set(key, { rr, result });
    if (parsed.size > MAX_KEYS) parsed.delete(parsed.keys().next().value as string);
    return result;
  };
  return {
    resolver,
    get(type, name, minBitLength, options = {}) {
      const key = [!!options.strict, minBitLength || '', options.hashAlgo || '', name].join(':');
      let lookup = asked.get(key);
      if (!lookup) {
        lookup = lookUp(type, name, minBitLength, options, key);
        lookup.catch(() => undefined); // a prefetched look-up can fail before anything waits for it
        asked.set(key, lookup);
      }
      return lookup;
    },
  };
}

/** What verify.ts reads of mailauth's dkimVerify result (and, for the tests, the verifier's header split). */
export interface DkimVerified {
  readonly results?: Array<{ status: { result: string; aligned?: unknown; underSized?: unknown }; info: string; signingDomain?: string; id?: string }>;
  readonly headerFrom?: string[];
  readonly fromFields?: unknown;
  readonly arc?: unknown;
  readonly headerBytes?: number;
}

/**
 * mailauth's dkimVerify (lib/dkim/verify.js), with the shared key cache given to the verifier
 * and to the ARC data it collects (which m.arc() then verifies with it).
 */
export async function dkimVerifyCached(input: unknown, options: { resolver: MailauthResolver; minBitLength: number; strict: boolean }, opts: { originalSplit?: boolean } = {}): Promise<DkimVerified> {
  const { tools, DkimVerifier, OriginalVerifier } = mailauth();
  const verifier = new (opts.originalSplit ? OriginalVerifier : DkimVerifier)(options);
  const cache = sharedKeyCache(options.resolver);
  verifier.keyCache = cache;
  if (verifier.arc) Object.defineProperty(verifier.arc, 'keyCache', { value: cache, enumerable: false, configurable: true, writable: true });
  await tools.writeToStream(verifier, input);
  return { results: verifier.results as DkimVerified['results'], headerFrom: verifier.headerFrom as string[] | undefined, fromFields: verifier.fromFields, arc: verifier.arc, headerBytes: verifier.headerBytes };
}

/** Forgets every parsed key (tests). */
export function clearKeyCache(): void {
  parsed.clear();
}
