// Volume limits (limits.rates, limits.fromip_max): one check per phase where a count is checked,
// each holding only the rules that bite there. Counts live in the store (Store.rateAdd, a
// sliding-window estimate shared by every host on one Redis); what is counted is what was let
// through, never what was refused:
//   connections    counted and checked at connect (counted first; taken back when over)
//   auth_failures  checked at AUTH, counted when a password fails (the auth stage `failed`)
//   messages       counted and checked at MAIL; taken back when the transaction ends with no
//                  message queued (Check.observe, event `not_queued`)
//   bytes          checked at MAIL (the count so far plus SIZE=), counted when the message is
//                  queued (Check.observe, event `accepted`)
//   recipients     counted and checked at RCPT; taken back when a later check refuses the recipient
//   bad_rcpts      checked at RCPT, counted when a check refuses a recipient as unknown (5.1.x)
// Over the limit a rule acts: tempfail (451 4.7.1, naming the rule and when to come back),
// reject (550 5.7.1), tarpit (the reply held `delay`) or score (points). An unreachable store is
// a 451 4.3.0 (the engine's answer to a check that throws), or with store.fail_open no limit.
import { defineCheck, type Check, type CheckDeps, type PolicyEvent } from '../check.ts';
import type { Store } from '../../store/store.ts';
import type { Phase, Verdict } from '../verdict.ts';
import type { SessionInfo } from '../context.ts';
import type { Address } from '../../mail/address.ts';
import type { Config } from '../../config/schema.ts';
import { CONTINUE } from '../verdict.ts';
import { metrics } from '../../util/metrics.ts';
import { AddressList } from '../../util/cidr.ts';
import { limitText, rateKey, rateRules, type KeyFacts, type RateRule } from './rules.ts';
import { FROMIP_MAX, type RateCount } from '../../config/rates.ts';

interface Settings {
  readonly rules: readonly RateRule[];
  readonly failOpen: boolean;
}

/** A rule with its exemptions built once. */
interface Rule extends RateRule {
  readonly exempt: AddressList;
  readonly setting: string;
}

function prepare(rules: readonly RateRule[]): Rule[] {
  return rules.map((r) => ({ ...r, exempt: new AddressList(r.except), setting: r.name === FROMIP_MAX ? 'limits.fromip_max' : `limits.rates.${r.name}` }));
}

function facts(session: SessionInfo, mailFrom?: Address, rcpt?: Address): KeyFacts {
  return { ip: session.remoteIp, helo: session.helo, authUser: session.authUser, sender: mailFrom?.address, senderDomain: mailFrom?.domain, rcpt: rcpt?.address };
}

/** The (rule, store key) pairs that apply to this client and these facts. */
function applicable(rules: readonly Rule[], f: KeyFacts): Array<[Rule, string]> {
  const out: Array<[Rule, string]> = [];
  for (const r of rules) {
    if (r.exempt.has(f.ip)) continue;
    const key = rateKey(r, f);
    if (key !== undefined) out.push([r, key]);
  }
  return out;
}

/**
 * What the rules over their limit say, together: the first refusal wins; tarpit delays and
 * score points add up. `over` lists the rules over the limit, in rule order.
 */
function verdictOf(check: string, phase: Phase, over: readonly Rule[]): Verdict {
  for (const r of over) metrics.rateHit(r.name);
  let delayMs = 0;
  let score = 0;
  const scored: Rule[] = [];
  for (const r of over) {
    if (r.action === 'tempfail' || r.action === 'reject') {
      const temp = r.action === 'tempfail';
      // AUTH has its own temporary code (RFC 4954): 454.
      const [code, enhanced] = temp ? (phase === 'auth' ? [454, '4.7.0'] : [451, '4.7.1']) : [550, '5.7.1'];
      const text = temp ? limitText(r) : limitText(r).replace(/, try again in \d+ seconds$/, '');
      return { kind: temp ? 'tempfail' : 'reject', check, code, enhanced, text, setting: r.setting, log: `rate limit ${r.name} reached`, ...(delayMs > 0 ? { delayMs } : {}) };
    }
    if (r.action === 'tarpit') delayMs += r.delay;
    else {
      score += r.score;
      scored.push(r);
    }
  }
  const names = over.map((r) => r.name).join(', ');
  if (scored.length > 0) {
    return { kind: 'tag', check, score, tests: scored.map((r) => ({ name: `rate_${r.name}`, score: r.score })), log: `rate limit ${names} reached`, ...(delayMs > 0 ? { delayMs } : {}) };
  }
  return delayMs > 0 ? { kind: 'continue', check, delayMs, log: `rate limit ${names} reached: reply held` } : CONTINUE;
}

/**
 * Counts one more for each pair and returns the rules now over their limit; for those that
 * refuse, the one is taken back (a refused connection or recipient is not counted).
 */
async function addAndCheck(store: Store, pairs: ReadonlyArray<[Rule, string]>): Promise<Rule[]> {
  const counts = await Promise.all(pairs.map(([r, key]) => store.rateAdd(key, 1, r.per)));
  const over = pairs.filter(([r], i) => (counts[i] ?? 0) > r.max);
  const refusing = over.some(([r]) => refuses(r));
  // Any refusal refuses the whole command: take back every count this command made.
  if (refusing) await Promise.all(pairs.map(([r, key]) => store.rateAdd(key, -1, r.per)));
  return over.map(([r]) => r);
}

/** The rules already at their limit (`next`: what this command would add). */
async function atLimit(store: Store, pairs: ReadonlyArray<[Rule, string]>, next: (r: Rule) => number): Promise<Rule[]> {
  const counts = await Promise.all(pairs.map(([r, key]) => store.rateGet(key, r.per)));
  return pairs.filter(([r], i) => (counts[i] ?? 0) + next(r) > r.max).map(([r]) => r);
}

/** Runs `fn`; with store.fail_open an unreachable store lets the command pass. */
async function guarded(failOpen: boolean, fn: () => Promise<Verdict>): Promise<Verdict> {
  try {
    return await fn();
  } catch (err) {
    if (failOpen) return CONTINUE;
    throw err;
  }
}

const refuses = (r: RateRule): boolean => r.action === 'tempfail' || r.action === 'reject';

const of = (rules: readonly Rule[], ...counts: RateCount[]) => rules.filter((r) => counts.includes(r.count));

export function ratesConnectCheck(s: Settings, store: Store): Check<'connect'> {
  const rules = of(prepare(s.rules), 'connections');
  return {
    name: 'rates_connect',
    phase: 'connect',
    run: (ctx) => guarded(s.failOpen, async () => verdictOf('rates_connect', 'connect', await addAndCheck(store, applicable(rules, facts(ctx.session))))),
  };
}

export function ratesAuthCheck(s: Settings, store: Store): Check<'auth'> {
  const rules = of(prepare(s.rules), 'auth_failures');
  return {
    name: 'rates_auth',
    phase: 'auth',
    async run(ctx) {
      const pairs = applicable(rules, facts(ctx.session));
      if (ctx.stage === 'start') return guarded(s.failOpen, async () => verdictOf('rates_auth', 'auth', await atLimit(store, pairs, () => 1)));
      // A failure is counted; a store that cannot count it changes nothing now.
      if (ctx.stage === 'failed') await Promise.all(pairs.map(([r, key]) => store.rateAdd(key, 1, r.per))).catch(() => undefined);
      return CONTINUE;
    },
  };
}

export function ratesMailCheck(s: Settings, store: Store): Check<'mail'> {
  const all = prepare(s.rules);
  const messages = of(all, 'messages');
  const bytes = of(all, 'bytes');
  // The messages this session's open transaction counted at MAIL, until it ends: queued, they
  // stay counted; not queued, they are taken back.
  const reserved = new WeakMap<SessionInfo, Array<[Rule, string]>>();
  const takeBack = (pairs: ReadonlyArray<[Rule, string]>) => Promise.all(pairs.map(([r, key]) => store.rateAdd(key, -1, r.per)));
  return {
    name: 'rates_mail',
    phase: 'mail',
    run(ctx) {
      const declared = Number(ctx.params.SIZE);
      const size = Number.isSafeInteger(declared) && declared > 0 ? declared : 0;
      const f = facts(ctx.session, ctx.mailFrom);
      return guarded(s.failOpen, async () => {
        // Messages are counted here, when the transaction begins, and taken back if it ends with
        // no message queued: one store call per message, and sessions in parallel cannot all pass
        // a limit they exceed together. Bytes are known only at the end: the count so far plus
        // this message's declared SIZE is checked here, and what was queued counted then.
        const pairs = applicable(messages, f);
        const [over, bytesOver] = await Promise.all([addAndCheck(store, pairs), atLimit(store, applicable(bytes, f), () => Math.max(size, 1))]);
        const verdict = verdictOf('rates_mail', 'mail', [...over, ...bytesOver]);
        const refused = verdict.kind === 'tempfail' || verdict.kind === 'reject';
        if (refused && !over.some(refuses)) await takeBack(pairs); // refused for bytes, counted all the same
        else if (!refused && pairs.length > 0) reserved.set(ctx.session, pairs);
        return verdict;
      });
    },
    async observe(e: PolicyEvent) {
      if (e.kind === 'not_queued') {
        const pairs = reserved.get(e.session);
        reserved.delete(e.session);
        if (pairs) await takeBack(pairs);
        return;
      }
      if (e.kind !== 'accepted') return;
      reserved.delete(e.session);
      const pairs = applicable(bytes, facts(e.session, e.mailFrom));
      await Promise.all(pairs.map(([r, key]) => store.rateAdd(key, e.size, r.per)));
    },
  };
}

/** A refusal that says the recipient does not exist (5.1.1 unknown user, 5.1.2 bad domain…): what bad_rcpts counts. */
function unknownRecipient(e: Extract<PolicyEvent, { kind: 'rcpt_refused' }>): boolean {
  return e.verdict.code >= 500 && e.verdict.enhanced.startsWith('5.1.');
}

export function ratesRcptCheck(s: Settings, store: Store): Check<'rcpt'> {
  const all = prepare(s.rules);
  const counted = of(all, 'recipients');
  const bad = of(all, 'bad_rcpts');
  // The recipient this session's last RCPT counted, until a later check's refusal takes it back.
  const lastCounted = new WeakMap<SessionInfo, { rcpt: Address; pairs: Array<[Rule, string]> }>();
  const takeBack = (pairs: ReadonlyArray<[Rule, string]>) => Promise.all(pairs.map(([r, key]) => store.rateAdd(key, -1, r.per)));
  return {
    name: 'rates_rcpt',
    phase: 'rcpt',
    run(ctx) {
      lastCounted.delete(ctx.session);
      return guarded(s.failOpen, async () => {
        const f = facts(ctx.session, ctx.tx.mailFrom, ctx.rcpt);
        const pairs = applicable(counted, f);
        // Too many unknown recipients already: no further RCPT (a dictionary attack); and the recipient count.
        const [badOver, over] = await Promise.all([atLimit(store, applicable(bad, f), () => 1), addAndCheck(store, pairs)]);
        const verdict = verdictOf('rates_rcpt', 'rcpt', [...badOver, ...over]);
        const refused = verdict.kind === 'tempfail' || verdict.kind === 'reject';
        if (refused && !over.some(refuses)) await takeBack(pairs); // refused for bad_rcpts, counted all the same
        else if (!refused && pairs.length > 0) lastCounted.set(ctx.session, { rcpt: ctx.rcpt, pairs });
        return verdict;
      });
    },
    async observe(e: PolicyEvent) {
      if (e.kind !== 'rcpt_refused') return;
      const ops: Promise<unknown>[] = [];
      // A check after this one refused the recipient this one counted: not counted after all.
      const last = lastCounted.get(e.session);
      if (last && last.rcpt === e.rcpt) {
        lastCounted.delete(e.session);
        ops.push(takeBack(last.pairs));
      }
      if (unknownRecipient(e)) for (const [r, key] of applicable(bad, facts(e.session, e.mailFrom, e.rcpt))) ops.push(store.rateAdd(key, 1, r.per));
      await Promise.all(ops);
    },
  };
}

function settingsFor(config: Config, ...counts: RateCount[]): Settings | undefined {
  const rules = rateRules(config.limits).filter((r) => counts.includes(r.count));
  return rules.length > 0 ? { rules, failOpen: config.store.fail_open } : undefined;
}

function needStore(deps: CheckDeps, name: string): Store {
  if (!deps.store) throw new Error(`${name} needs the store`);
  return deps.store;
}

export const ratesConnect = defineCheck<Settings, 'connect'>({
  name: 'rates_connect',
  phase: 'connect',
  needs: ['store'],
  waives: { relayClients: true },
  settings: (c) => settingsFor(c, 'connections'),
  create: (s, deps) => ratesConnectCheck(s, needStore(deps, 'rates_connect')),
});

export const ratesAuth = defineCheck<Settings, 'auth'>({
  name: 'rates_auth',
  phase: 'auth',
  needs: ['store'],
  waives: { relayClients: true },
  settings: (c) => settingsFor(c, 'auth_failures'),
  create: (s, deps) => ratesAuthCheck(s, needStore(deps, 'rates_auth')),
});

export const ratesMail = defineCheck<Settings, 'mail'>({
  name: 'rates_mail',
  phase: 'mail',
  needs: ['store'],
  waives: { relayClients: true },
  settings: (c) => settingsFor(c, 'messages', 'bytes'),
  create: (s, deps) => ratesMailCheck(s, needStore(deps, 'rates_mail')),
});

export const ratesRcpt = defineCheck<Settings, 'rcpt'>({
  name: 'rates_rcpt',
  phase: 'rcpt',
  needs: ['store'],
  waives: { relayClients: true },
  settings: (c) => settingsFor(c, 'recipients', 'bad_rcpts'),
  create: (s, deps) => ratesRcptCheck(s, needStore(deps, 'rates_rcpt')),
});
