// The transport the queue manager talks to: it splits a message's recipients by route
// (src/delivery/routes.ts) and hands each group to that route's transport, made on first use and
// kept: SMTP and LMTP downstreams with their connection pools, Maildirs, delivery by MX. Each
// result names the transport that gave it (RcptResult.relay), for the `delivered` log line.
import type { OutgoingMessage, RcptResult, Transport } from '../mail/transport.ts';
import type { RouteTable } from './routes.ts';
import { domainOf } from './routes.ts';

/** The router: a Transport whose route table a reload replaces (transports made stay, for targets still in use). */
export interface Router extends Transport {
  setTable(table: RouteTable): void;
  /** Makes the transport of `target` anew at its next use (its settings changed); the old one is closed with the router. */
  forget(target: string): void;
}

export function createRouter(initial: RouteTable, make: (target: string) => Transport): Router {
  let table = initial;
  const made = new Map<string, Transport>();
  /** Transports replaced by a reload: deliveries under way finish on them; closed with the router. */
  const retired: Transport[] = [];
  const transportFor = (target: string): Transport => {
    let t = made.get(target);
    if (!t) {
      t = make(target);
      made.set(target, t);
    }
    return t;
  };
  return {
    name: 'routes',
    setTable(next) {
      table = next;
    },
    forget(target) {
      const t = made.get(target);
      if (t === undefined) return;
      made.delete(target);
      retired.push(t);
    },
    async deliver(msg: OutgoingMessage): Promise<RcptResult[]> {
      const groups = new Map<string, string[]>();
      for (const rcpt of msg.rcpts) {
        const { target } = table.routeFor(domainOf(rcpt));
        const g = groups.get(target);
        if (g) g.push(rcpt);
        else groups.set(target, [rcpt]);
      }
      const parts = await Promise.all(
        [...groups].map(async ([target, rcpts]) => {
          // A transport reports trouble as results; one that throws (or cannot be made) must not
          // take the other routes' results with it: theirs would be retried, delivered again.
          try {
            const t = transportFor(target);
            const results = await t.deliver({ ...msg, rcpts });
            return results.map((r) => (r.relay === undefined ? { ...r, relay: t.name } : r));
          } catch (err) {
            return rcpts.map((rcpt): RcptResult => ({ rcpt, status: 'temp', code: 451, text: `4.3.0 local error: ${(err as Error).message}`, relay: target }));
          }
        }),
      );
      const byRcpt = new Map(parts.flat().map((r) => [r.rcpt, r]));
      // In the message's order; a recipient a transport did not mention is left to the queue manager (retried).
      return msg.rcpts.flatMap((rcpt) => byRcpt.get(rcpt) ?? []);
    },
    async close(): Promise<void> {
      await Promise.all([...made.values(), ...retired].map((t) => t.close()));
    },
  };
}
