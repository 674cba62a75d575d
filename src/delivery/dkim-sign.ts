// DKIM signing of our users' mail (dkim.sign, issue 13), with the mailauth package: a message
// that an authenticated user or a relay client sent, whose From: is in a signing domain (or one
// of its subdomains), is marked at the end of DATA (Envelope.dkim) and signed when it is
// delivered, over the octets that leave (our Received and X-Spam-* fields included). Mail
// from the internet is never signed: a signature vouches for the message.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { dkimSign } from 'mailauth';
import { readAll, type MessageBody, type OutgoingMessage, type RcptResult, type Transport } from '../mail/transport.ts';

export interface SigningKey {
  readonly domain: string;
  readonly selector: string;
  /** PEM (PKCS#8 or PKCS#1 RSA, or Ed25519). */
  readonly privateKey: string;
}

/** The addr-spec of a From: field value ("Ann <ann@Example.COM>" → ann@Example.COM); undefined when there is none. */
export function fromAddress(value: string): string | undefined {
  const angle = /<([^<>]*)>\s*(?:\([^()]*\)\s*)?$/.exec(value);
  const addr = ((angle ? angle[1] : value) ?? '').trim().replace(/\s.*$/, '');
  const at = addr.lastIndexOf('@');
  return at <= 0 || at === addr.length - 1 ? undefined : addr;
}

/** The domain of a From: field value's address, lower case; undefined when there is none. */
export function fromDomain(value: string): string | undefined {
  const addr = fromAddress(value);
  return addr === undefined ? undefined : addr.slice(addr.lastIndexOf('@') + 1).toLowerCase();
}

/** The signing domain for a message whose From: domain is `from`: the domain itself, or the nearest parent that signs. */
export function signingDomainFor(from: string | undefined, domains: readonly string[]): string | undefined {
  if (from === undefined) return undefined;
  let best: string | undefined;
  for (const d of domains) {
    const dl = d.toLowerCase();
    if ((from === dl || from.endsWith(`.${dl}`)) && (best === undefined || dl.length > best.length)) best = dl;
  }
  return best;
}

/** Reads each key file; a key that cannot be read or parsed stops mxguard at start, naming it. */
export function loadSigningKeys(entries: readonly { domain: string; selector: string; key: string }[]): SigningKey[] {
  return entries.map((e) => {
    let pem: string;
    try {
      pem = fs.readFileSync(e.key, 'utf8');
      crypto.createPrivateKey(pem);
    } catch (err) {
      throw new Error(`dkim.sign: the key of ${e.domain} (${e.key}) cannot be used: ${(err as Error).message}`, { cause: err });
    }
    return { domain: e.domain.toLowerCase(), selector: e.selector, privateKey: pem };
  });
}

/**
 * A transport that signs the messages marked for a signing domain (OutgoingMessage.dkim) and
 * hands them on. A message that cannot be signed (a key mailauth refuses) is deferred, not sent
 * unsigned: its domain's DMARC policy may reject it unsigned.
 */
export function createSigningTransport(inner: Transport, keys: readonly SigningKey[]): Transport {
  const byDomain = new Map(keys.map((k) => [k.domain, k]));
  return {
    name: inner.name,
    async deliver(msg: OutgoingMessage): Promise<RcptResult[]> {
      const key = msg.dkim === undefined ? undefined : byDomain.get(msg.dkim);
      if (key === undefined) return inner.deliver(msg);
      const raw = await readAll(msg.body);
      const signed = await dkimSign(raw, { signatureData: [{ signingDomain: key.domain, selector: key.selector, privateKey: key.privateKey, canonicalization: 'relaxed/relaxed' }] } as never);
      if (!signed.signatures || signed.errors.length > 0) {
        const why = signed.errors.map((e) => e.err.message).join('; ') || 'no signature';
        return msg.rcpts.map((rcpt) => ({ rcpt, status: 'temp', code: 451, text: `4.3.0 DKIM signing for ${key.domain} failed: ${why}` }));
      }
      const head = Buffer.from(signed.signatures);
      const body: MessageBody = {
        size: head.length + raw.length,
        async *chunks() {
          yield head;
          yield raw;
        },
      };
      return inner.deliver({ ...msg, body });
    },
    close: () => inner.close(),
  };
}

/** A new key pair and the DNS record that publishes it (`mxguard dkim keygen`). */
export function generateKey(bits = 2048): { privateKey: string; record: string } {
  const k = crypto.generateKeyPairSync('rsa', { modulusLength: bits });
  const p = (k.publicKey.export({ type: 'spki', format: 'der' }) as Buffer).toString('base64');
  return { privateKey: k.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, record: `v=DKIM1; k=rsa; p=${p}` };
}
