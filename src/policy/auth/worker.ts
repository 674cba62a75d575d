// The `dmarc` check's worker thread: DKIM, ARC and DMARC (src/policy/auth/verify.ts) off the
// event loop that serves the SMTP sessions. Each request names the resolver configuration to use
// (dns.servers, dns.timeout); the worker keeps a resolver, with its cache, per configuration.
import { parentPort } from 'node:worker_threads';
import { DnsResolver } from '../../dns/resolver.ts';
import { verifyMessage, type VerifyInput } from './verify.ts';

/** Resolvers by configuration, the most recently used last; a few at most (tests make many). */
const resolvers = new Map<string, DnsResolver>();
const MAX_RESOLVERS = 8;

function resolverFor(servers: string[], timeoutMs: number): DnsResolver {
  const key = `${servers.join(',')}|${timeoutMs}`;
  let r = resolvers.get(key);
  if (r) resolvers.delete(key);
  else r = new DnsResolver({ servers, timeoutMs });
  resolvers.set(key, r);
  if (resolvers.size > MAX_RESOLVERS) resolvers.delete(resolvers.keys().next().value as string);
  return r;
}

parentPort?.on('message', (req: { id: number; message: Uint8Array; input: VerifyInput; servers: string[]; timeoutMs: number }) => {
  const m = req.message;
  verifyMessage([Buffer.from(m.buffer, m.byteOffset, m.byteLength)], req.input, resolverFor(req.servers, req.timeoutMs)).then(
    (result) => parentPort?.postMessage({ id: req.id, result }),
    (err: unknown) => parentPort?.postMessage({ id: req.id, error: err instanceof Error ? err.message : String(err) }),
  );
});
