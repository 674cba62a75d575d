// Loading the one YAML config file: parse, validate against configSchema, and report every
// problem at once, each at the exact line and column of the offending node, formatted like a
// compiler's diagnostics (FILE:LINE:COL: KEY: MESSAGE) so that editors can jump to them.
// Relative paths in the file are resolved against the file's own directory, not the cwd.
import fs from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseRulesFile, RulesError } from './rules-file.ts';
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';
import { z } from 'zod';
import { AddressList } from '../util/cidr.ts';
import { configSchema, parseHostPort, type Config } from './schema.ts';

/** One problem (or warning) in a config file. `line` and `column` are 1-based; 0 when the problem is the whole file. */
export interface ConfigMessage {
  file: string;
  line: number;
  column: number;
  /** Dotted path of the setting, e.g. `limits.max_rcpts` or `relay.forward_from_ip[1]`; '' for syntax errors. */
  key: string;
  message: string;
}

export interface LoadedConfig {
  config: Config;
  warnings: ConfigMessage[];
}

/** `FILE:LINE:COL: KEY: MESSAGE`, leaving out the parts that are empty; `severity` is put before KEY. */
export function formatConfigMessage(m: ConfigMessage, severity?: 'warning'): string {
  let out = m.line > 0 ? `${m.file}:${m.line}:${m.column}: ` : `${m.file}: `;
  if (severity) out += `${severity}: `;
  if (m.key) out += `${printable(m.key)}: `;
  return out + printable(m.message);
}

/** Control characters (a key can be any YAML string) escaped, so that each message stays on one line. */
function printable(s: string): string {
  return s.replace(/[\x00-\x1f\x7f\x85\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** The config cannot be used. `message` lists every problem, one per line. */
export class ConfigError extends Error {
  readonly problems: ConfigMessage[];

  constructor(problems: ConfigMessage[]) {
    super(problems.map((p) => formatConfigMessage(p)).join('\n'));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

type PathSeg = string | number;
type YamlDoc = Document.Parsed;

interface Pos {
  line: number;
  column: number;
}

// Deeper than any setting; the AST walks stop there so that hostile nesting cannot exhaust the stack.
const MAX_DEPTH = 64;

/** The embedded defaults (no config file), with relative paths resolved against `baseDir`. */
export function defaultConfig(baseDir: string = process.cwd()): Config {
  return finish(configSchema.parse({}), baseDir);
}

/** Reads and validates a config file. Throws ConfigError (also when the file cannot be read). */
export async function loadConfigFile(file: string): Promise<LoadedConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError([{ file, line: 0, column: 0, key: '', message: readErrorMessage(err) }]);
  }
  return parseConfigText(text, file, path.dirname(path.resolve(file)));
}

/**
 * Validates config text; `sourceName` names it in messages, relative paths are resolved against
 * `baseDir`. Throws ConfigError listing every problem found.
 */
export function parseConfigText(text: string, sourceName: string, baseDir: string = process.cwd()): LoadedConfig {
  const lines = new LineCounter();
  const at = (offset: number | undefined, key: string, message: string): ConfigMessage => {
    const p = offsetPos(lines, offset);
    return { file: sourceName, line: p.line, column: p.column, key, message };
  };

  // 1. YAML syntax.
  let doc: YamlDoc;
  try {
    doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, logLevel: 'error', uniqueKeys: true });
  } catch (err) {
    throw new ConfigError([at(0, '', `cannot parse this YAML: ${errorText(err)}`)]);
  }
  const keyIndex = indexKeys(doc);
  const warnings: ConfigMessage[] = doc.warnings.map((w) => at(w.pos[0], '', `YAML: ${w.message}`));
  if (doc.errors.length > 0) {
    const problems = doc.errors.map((e) => {
      const offset = e.pos[0];
      if (e.code === 'DUPLICATE_KEY') {
        const info = keyIndex.get(offset);
        if (info) {
          const first = info.firstOffset === undefined ? '' : ` (first set on line ${offsetPos(lines, info.firstOffset).line})`;
          return at(offset, formatKey(info.path), `duplicate key${first}`);
        }
      }
      if (e.code === 'MULTIPLE_DOCS') return at(offset, '', 'the file holds more than one YAML document (a --- line); the config is one document');
      return at(offset, '', `YAML syntax error: ${lowerFirst(e.message)}${syntaxHint(text, lines, offset)}`);
    });
    throw new ConfigError(sortMessages(problems));
  }

  // 2. The top level is a mapping of settings; an empty file means all defaults.
  const top = doc.contents;
  if (top !== null && !(isScalar(top) && top.value === null) && !isMap(top)) {
    const what = isSeq(top) ? 'a list' : isScalar(top) ? `the text ${describeValue(top.value)}` : 'an alias';
    throw new ConfigError([{ file: sourceName, line: 1, column: 1, key: '', message: `the config must be a mapping of settings (key: value lines), not ${what}` }]);
  }
  const structural = checkStructure(doc, (offset, p, msg) => at(offset, formatKey(p), msg));
  if (structural.length > 0) throw new ConfigError(sortMessages(structural));

  let data: unknown;
  try {
    data = isMap(top) ? doc.toJS({ maxAliasCount: 100 }) : {};
  } catch (err) {
    throw new ConfigError([at(0, '', `cannot read this YAML: ${errorText(err)}`)]);
  }
  data = dropEmptySections(data, configSchema);

  // 3. Schema validation, each issue mapped to its node.
  const problems: ConfigMessage[] = [];
  const result = configSchema.safeParse(data);
  if (!result.success) {
    for (const issue of result.error.issues) problems.push(...issueMessages(issue, doc, data, at));
  }

  // 4. Checks that need the file system, run on the raw values so they add to schema problems.
  const tls = isRecord(data) && isRecord(data['tls']) ? data['tls'] : undefined;
  for (const k of ['cert', 'key'] as const) {
    const v = tls?.[k];
    if (typeof v !== 'string' || v === '') continue;
    const file = path.resolve(baseDir, v);
    const node = locate(doc, ['tls', k]);
    const problem = tlsFileProblem(file);
    if (problem?.fatal) problems.push(at(nodeOffset(node), `tls.${k}`, problem.message));
    else if (problem) warnings.push(at(nodeOffset(node), `tls.${k}`, problem.message));
  }
  const logFile = isRecord(data) && isRecord(data['log']) ? data['log']['file'] : undefined;
  if (logFile === '') problems.push(at(nodeOffset(locate(doc, ['log', 'file'])), 'log.file', 'must not be empty (leave it out to log to standard output)'));

  if (problems.length > 0 || !result.success) throw new ConfigError(sortMessages(problems));

  const config = finish(result.data, baseDir);
  // The rules file is part of the configuration: a line that does not parse is an error at
  // that file's own line (mxguard check shows it; start refuses it; SIGHUP keeps the old one).
  if (config.rules_file !== undefined) {
    const where = nodeOffset(locate(doc, ['rules_file']));
    let text: string | undefined;
    try {
      text = fs.readFileSync(config.rules_file, 'utf8');
    } catch (err) {
      throw new ConfigError([at(where, 'rules_file', `cannot read ${config.rules_file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)]);
    }
    try {
      parseRulesFile(text, config.rules_file);
    } catch (err) {
      if (!(err instanceof RulesError)) throw err;
      throw new ConfigError(err.problems.map((p) => ({ file: p.file, line: p.line, column: p.column, key: 'rules_file', message: p.message })));
    }
  }

  // Files and directories mxguard must be able to use from the start.
  const unusable: ConfigMessage[] = [];
  if (config.recipients.file !== undefined) {
    const problem = recipientsFileProblem(config.recipients.file);
    if (problem) unusable.push(at(nodeOffset(locate(doc, ['recipients', 'file'])), 'recipients.file', problem));
  }
  const dataDirProblem = writableDirProblem(config.data_dir);
  if (dataDirProblem) unusable.push(at(nodeOffset(locate(doc, ['data_dir'])), 'data_dir', dataDirProblem));
  if (unusable.length > 0) throw new ConfigError(sortMessages(unusable));

  // 5. Warnings about a valid config.
  if (!config.tls) {
    config.listen.forEach(({ address }, i) => {
      if (isLoopbackListen(address)) return;
      const node = locate(doc, ['listen', i]);
      warnings.push(at(nodeOffset(node), `listen[${i}]`, `${address} is not a loopback address and tls is not configured: AUTH and STARTTLS unavailable`));
    });
  }
  if (config.relay.forward_from.length > 0) {
    // DMail's own warning: anyone can put these domains in MAIL FROM.
    warnings.push(
      at(
        nodeOffset(locate(doc, ['relay', 'forward_from'])),
        'relay.forward_from',
        `lets anyone who forges a sender @${config.relay.forward_from.join(', @')} relay through this server: a relaying hole (open relay lists will find it); prefer auth_allow_relay with SMTP AUTH`,
      ),
    );
  }
  const popPattern = config.relay.pop_log_pattern;
  if (popPattern !== undefined && !popPattern.startsWith('^')) {
    // Dovecot logs a failed login's user name verbatim: a name shaped like a login line would match.
    warnings.push(at(nodeOffset(locate(doc, ['relay', 'pop_log_pattern'])), 'relay.pop_log_pattern', 'is not anchored with ^: a failed login whose user name looks like a login line would match it and open the relay'));
  }
  if (config.admin.listen !== undefined && !isLoopbackListen(config.admin.listen)) {
    warnings.push(at(nodeOffset(locate(doc, ['admin', 'listen'])), 'admin.listen', `${config.admin.listen} is not a loopback address: the admin API is reachable from the network`));
  }
  // Which way a scanner's failure goes is the operator's call: say where it is left to the default.
  config.filters.scanners.forEach((s, i) => {
    if (s.on_error !== undefined) return;
    const key = `filters.scanners[${i}] (${s.name ?? s.type})`;
    warnings.push(at(nodeOffset(locate(doc, ['filters', 'scanners', i])), key, `on_error not set: a failure of this scanner will refuse mail for now (tempfail); write on_error: tempfail or accept`));
  });
  // A Maildir without %d that takes mail for several domains: postmaster@a and postmaster@b would share one mailbox.
  const shared = (target: string | undefined) => target !== undefined && target.startsWith('maildir:') && !target.includes('%d');
  const ours = config.local_domains.length + config.relay.relay_to.length;
  if (shared(config.deliver) && ours > 1) {
    warnings.push(at(nodeOffset(locate(doc, ['deliver'])), 'deliver', `${config.deliver} takes mail for ${ours} domains into one mailbox per local part (postmaster@ of each would share one): put %d in the path (maildir:/var/mail/%d/%u)`));
  }
  for (const [pattern, target] of Object.entries(config.routes)) {
    if (pattern.startsWith('*') && shared(target)) warnings.push(at(nodeOffset(locate(doc, ['routes'])), `routes.${pattern}`, `${target} takes mail for many domains into one mailbox per local part: put %d in the path`));
  }
  // Relayed mail that can never reach its recipients: the catch-all keeps it in a local Maildir.
  const catchAll = config.routes['*'];
  if (catchAll?.startsWith('maildir:')) warnings.push(at(nodeOffset(locate(doc, ['routes'])), 'routes.*', `relayed mail for every other domain goes into ${catchAll} and never reaches its recipients; route it to mx or a smarthost (or refuse relaying)`));
  const callout = locate(doc, ['recipients', 'callout']);
  if (callout.found && (callout.node === null || (isScalar(callout.node) && callout.node.value === null))) {
    // An empty section counts as left out (dropEmptySections): say so, since here that means off.
    warnings.push(at(nodeOffset(callout), 'recipients.callout', 'is empty, so recipient callouts are off; write "callout: {}" for callouts with the default settings'));
  }
  return { config, warnings: sortMessages(warnings) };
}

/**
 * For `mxguard check -c FILE`: never throws; `output` is the summary and warnings, or the problems.
 * `more` adds problems found in the files the config names (the users file, which the CLI checks).
 */
export async function checkConfigFile(file: string, more?: (config: Config) => ConfigMessage[]): Promise<{ ok: boolean; output: string }> {
  try {
    const { config, warnings } = await loadConfigFile(file);
    const problems = more?.(config) ?? [];
    if (problems.length > 0) throw new ConfigError(problems);
    const summary =
      `${file}: OK: listen ${config.listen.map((l) => (l.mode === 'mx' ? l.address : `${l.address} (${l.mode})`)).join(', ')}; local domains ${config.local_domains.join(', ') || '(none)'}; ` +
      `deliver ${config.deliver ?? '(none)'}; ${routesSummary(config)}`;
    const out = [summary, ...warnings.map((w) => formatConfigMessage(w, 'warning'))];
    return { ok: true, output: out.join('\n') };
  } catch (err) {
    if (err instanceof ConfigError) {
      const n = err.problems.length;
      const fileLevel = err.problems.every((p) => p.line === 0);
      return { ok: false, output: fileLevel ? err.message : `${err.message}\n${file}: ${n} problem${n === 1 ? '' : 's'}, config not usable` };
    }
    return { ok: false, output: `${file}: internal error while checking the config: ${errorText(err)}` };
  }
}

/** Where each kind of mail goes (src/delivery/routes.ts), for `mxguard check`. */
function routesSummary(config: Config): string {
  const parts = Object.entries(config.routes)
    .filter(([p]) => p !== '*')
    .map(([p, t]) => `${p} → ${t}`);
  const other = config.routes['*'] ?? 'mx';
  return `routes: ${[...parts, `local domains${config.relay.relay_to.length > 0 ? ' and relay_to' : ''} → deliver`, `any other domain (relayed mail) → ${other}`].join(', ')}`;
}

// ---------------------------------------------------------------------------------------------
// After validation: paths and the default delivery target.

function finish(parsed: Config, baseDir: string): Config {
  const config = structuredClone(parsed);
  config.data_dir = path.resolve(baseDir, config.data_dir);
  if (config.tls) {
    config.tls.cert = path.resolve(baseDir, config.tls.cert);
    config.tls.key = path.resolve(baseDir, config.tls.key);
  }
  if (config.log.file !== undefined) config.log.file = path.resolve(baseDir, config.log.file);
  config.store.path = config.store.path === undefined ? path.join(config.data_dir, 'state.db') : path.resolve(baseDir, config.store.path);
  config.auth.users_file = config.auth.users_file === undefined ? path.join(config.data_dir, 'users') : path.resolve(baseDir, config.auth.users_file);
  config.relay.pop_logs = config.relay.pop_logs.map((f) => path.resolve(baseDir, f));
  if (config.recipients.file !== undefined) config.recipients.file = path.resolve(baseDir, config.recipients.file);
  if (config.rules_file !== undefined) config.rules_file = path.resolve(baseDir, config.rules_file);
  if (config.filters.mfilter !== undefined) config.filters.mfilter = path.resolve(baseDir, config.filters.mfilter);
  config.filters.rules = config.filters.rules.map((f) => path.resolve(baseDir, f));
  if (config.auth.dovecot_socket !== undefined && config.auth.dovecot_socket.includes('/')) config.auth.dovecot_socket = path.resolve(baseDir, config.auth.dovecot_socket);
  if (config.deliver === undefined) {
    config.deliver = `maildir:${path.join(config.data_dir, 'maildir')}`;
  } else if (config.deliver.startsWith('maildir:')) {
    config.deliver = `maildir:${path.resolve(baseDir, config.deliver.slice('maildir:'.length))}`;
  }
  for (const [pattern, target] of Object.entries(config.routes)) {
    if (target.startsWith('maildir:')) config.routes[pattern] = `maildir:${path.resolve(baseDir, target.slice('maildir:'.length))}`;
  }
  config.dkim.sign = config.dkim.sign.map((s) => ({ ...s, key: path.resolve(baseDir, s.key) }));
  if (config.queue.mta_sts.ca !== undefined) config.queue.mta_sts.ca = path.resolve(baseDir, config.queue.mta_sts.ca);
  for (const h of Object.values(config.smarthosts)) {
    if (h.ca !== undefined) h.ca = path.resolve(baseDir, h.ca);
    if (h.password_file !== undefined) h.password_file = path.resolve(baseDir, h.password_file);
  }
  return config;
}

function tlsFileProblem(file: string): { fatal: boolean; message: string } | undefined {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch (err) {
    const code = errorCode(err);
    if (code === 'ENOENT' || code === 'ENOTDIR') return { fatal: true, message: `file ${file} does not exist` };
    // EACCES on a directory above it: mxguard may run as another user, so only warn.
    return { fatal: false, message: `cannot check ${file}: ${errorText(err)}` };
  }
  if (!stat.isFile()) return { fatal: true, message: `${file} is not a file` };
  try {
    fs.accessSync(file, fs.constants.R_OK);
  } catch {
    return { fatal: false, message: `${file} is not readable by this user` };
  }
  return undefined;
}

/** recipients.file must be a readable file: a directory or a missing file would refuse (451) every local recipient. */
function recipientsFileProblem(file: string): string | undefined {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch (err) {
    const code = errorCode(err);
    if (code === 'ENOENT' || code === 'ENOTDIR') return `${file} does not exist (every local recipient would get 451)`;
    return `cannot read ${file}: ${code ?? errorText(err)}`;
  }
  if (!stat.isFile()) return `${file} is ${stat.isDirectory() ? 'a directory' : 'not a regular file'}, not a list of recipients`;
  try {
    fs.accessSync(file, fs.constants.R_OK);
  } catch {
    return `${file} is not readable by this user`;
  }
  return undefined;
}

/**
 * data_dir must be a directory this user can write (spool, state, maildir), or be creatable: its
 * nearest existing ancestor a writable directory.
 */
function writableDirProblem(dir: string): string | undefined {
  let cur = dir;
  for (;;) {
    let stat: fs.Stats | undefined;
    try {
      stat = fs.statSync(cur);
    } catch (err) {
      const code = errorCode(err);
      if (code !== 'ENOENT') return `cannot use ${dir}: ${code === 'ENOTDIR' ? 'a part of the path is not a directory' : (code ?? errorText(err))}`;
    }
    if (stat) {
      if (!stat.isDirectory()) return cur === dir ? `${dir} is not a directory` : `cannot create ${dir}: ${cur} is not a directory`;
      try {
        fs.accessSync(cur, fs.constants.W_OK | fs.constants.X_OK);
      } catch (err) {
        const code = errorCode(err);
        const why = code === 'EROFS' ? 'is on a read-only file system' : 'is not writable by this user';
        return cur === dir ? `${dir} ${why}` : `cannot create ${dir}: ${cur} ${why}`;
      }
      return undefined;
    }
    const parent = path.dirname(cur);
    if (parent === cur) return `cannot create ${dir}`;
    cur = parent;
  }
}

const LOOPBACK = new AddressList(['127.0.0.0/8', '::1']);

function isLoopbackListen(entry: string): boolean {
  const host = parseHostPort(entry)?.host;
  if (host === undefined) return false;
  return host.toLowerCase() === 'localhost' || LOOPBACK.has(host);
}

// ---------------------------------------------------------------------------------------------
// The YAML tree: positions, keys, structure.

function offsetPos(lines: LineCounter, offset: number | undefined): Pos {
  if (offset === undefined) return { line: 1, column: 1 };
  const p = lines.linePos(offset);
  return { line: Math.max(1, p.line), column: Math.max(1, p.col) };
}

interface Located {
  /** The value node at the path, or (when not found) the deepest node on the way. */
  node: unknown;
  /** The key node of the last mapping entry passed. */
  keyNode: unknown;
  found: boolean;
}

function locate(doc: YamlDoc, keys: readonly PathSeg[]): Located {
  let cur: unknown = doc.contents;
  let keyNode: unknown = undefined;
  for (const seg of keys) {
    const target = isAlias(cur) ? cur.resolve(doc) : cur;
    if (isMap(target)) {
      const pair = target.items.findLast((p) => keyName(p.key) === String(seg));
      if (!pair) return { node: target, keyNode, found: false };
      keyNode = pair.key;
      cur = pair.value;
    } else if (isSeq(target) && typeof seg === 'number' && seg < target.items.length) {
      keyNode = undefined;
      cur = target.items[seg];
    } else {
      return { node: target ?? cur, keyNode, found: false };
    }
  }
  return { node: cur, keyNode, found: true };
}

/** Where to point for a value: the value node, or its key when the value is empty (`key:` and nothing). */
function nodeOffset(loc: Located): number | undefined {
  const { node, keyNode } = loc;
  const empty = node === null || node === undefined || (isScalar(node) && node.value === null && node.range?.[0] === node.range?.[1]);
  if (empty || !loc.found) return rangeStart(empty ? keyNode : node) ?? rangeStart(node) ?? rangeStart(keyNode);
  return rangeStart(node) ?? rangeStart(keyNode);
}

function rangeStart(node: unknown): number | undefined {
  if (node === null || typeof node !== 'object' || !('range' in node)) return undefined;
  const range = (node as { range?: unknown }).range;
  return Array.isArray(range) && typeof range[0] === 'number' ? range[0] : undefined;
}

function keyName(key: unknown): string | undefined {
  if (isScalar(key)) return String(key.value);
  if (key === null || key === undefined) return '';
  return undefined;
}

interface KeyInfo {
  path: PathSeg[];
  /** Offset of the first key of the same name in the same mapping, when this one repeats it. */
  firstOffset?: number;
}

/** Every mapping key by its start offset, to name the setting of a DUPLICATE_KEY error. */
function indexKeys(doc: YamlDoc): Map<number, KeyInfo> {
  const index = new Map<number, KeyInfo>();
  const walk = (node: unknown, at: PathSeg[], depth: number): void => {
    if (depth > MAX_DEPTH) return;
    if (isMap(node)) {
      const seen = new Map<string, number>();
      for (const pair of node.items) {
        const name = keyName(pair.key);
        const start = rangeStart(pair.key);
        if (name === undefined) continue;
        if (start !== undefined) index.set(start, { path: [...at, name], firstOffset: seen.get(name) });
        if (!seen.has(name) && start !== undefined) seen.set(name, start);
        walk(pair.value, [...at, name], depth + 1);
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, i) => walk(item, [...at, i], depth + 1));
    }
  };
  walk(doc.contents, [], 0);
  return index;
}

/** Things the schema cannot see once the YAML is plain data: keys that are lists or mappings, aliases to nothing. */
function checkStructure(doc: YamlDoc, at: (offset: number | undefined, p: PathSeg[], msg: string) => ConfigMessage): ConfigMessage[] {
  const problems: ConfigMessage[] = [];
  const walk = (node: unknown, p: PathSeg[], depth: number): void => {
    if (depth > MAX_DEPTH) return;
    if (isAlias(node)) {
      if (!node.resolve(doc)) problems.push(at(rangeStart(node), p, `alias *${node.source} refers to no anchor &${node.source} defined before it`));
    } else if (isMap(node)) {
      for (const pair of node.items) {
        const name = keyName(pair.key);
        if (name === undefined) {
          problems.push(at(rangeStart(pair.key), p, 'a key must be a plain name, not a list, mapping or alias'));
          continue;
        }
        walk(pair.value, [...p, name], depth + 1);
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, i) => walk(item, [...p, i], depth + 1));
    }
  };
  walk(doc.contents, [], 0);
  return problems;
}

/** A hint for the usual YAML trap in this file: an unquoted IPv6 listen address, read as a flow list. */
function syntaxHint(text: string, lines: LineCounter, offset: number): string {
  const lineNo = offsetPos(lines, offset).line;
  const start = lines.lineStarts[lineNo - 1] ?? 0;
  const end = text.indexOf('\n', start);
  const line = text.slice(start, end === -1 ? undefined : end);
  return /(^|[\s,-])\[[0-9a-fA-F:.]*\]:\d/.test(line) ? ' (put IPv6 addresses in quotes: "[::]:25")' : '';
}

// ---------------------------------------------------------------------------------------------
// Schema issues → messages.

type Issue = z.core.$ZodIssue;
type At = (offset: number | undefined, key: string, message: string) => ConfigMessage;

function issueMessages(issue: Issue, doc: YamlDoc, data: unknown, at: At): ConfigMessage[] {
  const keys = issue.path.filter((s): s is PathSeg => typeof s === 'string' || typeof s === 'number');
  const loc = locate(doc, keys);

  if (issue.code === 'unrecognized_keys') {
    const map = isAlias(loc.node) ? loc.node.resolve(doc) : loc.node;
    const known = knownKeys(keys);
    return issue.keys.map((name) => {
      const pair = isMap(map) ? map.items.find((p) => keyName(p.key) === name) : undefined;
      const offset = rangeStart(pair?.key) ?? nodeOffset(loc);
      return at(offset, formatKey([...keys, name]), unknownKeyMessage(name, known, keys));
    });
  }

  const parent = valueAt(data, keys.slice(0, -1));
  const last = keys.at(-1);
  const missing = last !== undefined && isRecord(parent) && !Object.hasOwn(parent, last);
  if (missing && issue.code === 'invalid_type') {
    // A required key that is not there: point at the mapping that should hold it.
    return [at(rangeStart(loc.node) ?? nodeOffset(loc), formatKey(keys), `required setting is missing`)];
  }
  const value = valueAt(data, keys);
  return [at(nodeOffset(loc), formatKey(keys), issueText(issue, value))];
}

function issueText(issue: Issue, value: unknown): string {
  const got = describeValue(value);
  switch (issue.code) {
    case 'invalid_type':
      return `expected ${expectedName(issue.expected)}, got ${got}`;
    case 'too_small': {
      const min = Number(issue.minimum);
      if (issue.origin === 'array' || issue.origin === 'set') return `must list at least ${min} ${min === 1 ? 'entry' : 'entries'}`;
      if (issue.origin === 'string') return min === 1 ? 'must not be empty' : `must be at least ${min} characters long`;
      if (!issue.inclusive) return min === 0 ? `must be greater than 0, got ${got}` : `must be greater than ${min}, got ${got}`;
      return `must be at least ${min}, got ${got}`;
    }
    case 'too_big': {
      const max = Number(issue.maximum);
      if (issue.origin === 'array' || issue.origin === 'set') return `must list at most ${max} ${max === 1 ? 'entry' : 'entries'}`;
      if (issue.origin === 'string') return `must be at most ${max} characters long`;
      return issue.inclusive ? `must be at most ${max}, got ${got}` : `must be less than ${max}, got ${got}`;
    }
    case 'invalid_value':
      return `expected one of ${issue.values.map((v) => String(v)).join(', ')}, got ${got}`;
    case 'invalid_format':
      return issue.message.startsWith('not ') ? `${got} is ${issue.message}` : `${issue.message}, got ${got}`;
    case 'invalid_union': {
      if (issue.message !== 'Invalid input') return `expected ${issue.message}, got ${got}`;
      const expected = new Set(issue.errors.flat().flatMap((e) => (e.code === 'invalid_type' ? [expectedName(e.expected)] : [])));
      return expected.size > 0 ? `expected ${[...expected].join(' or ')}, got ${got}` : `${got} is not valid here`;
    }
    case 'not_multiple_of':
      return `must be a multiple of ${String(issue.divisor)}, got ${got}`;
    default:
      return issue.message;
  }
}

function expectedName(expected: string): string {
  switch (expected) {
    case 'string':
      return 'a string';
    case 'number':
      return 'a number';
    case 'int':
      return 'a whole number';
    case 'boolean':
      return 'true or false';
    case 'array':
      return 'a list';
    case 'object':
      return 'a mapping (key: value lines)';
    default:
      return expected;
  }
}

/** How a mail administrator would name a YAML value in a message. */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'an empty value';
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (Array.isArray(value)) return 'a list';
  if (value instanceof Date) return `the date ${value.toISOString()}`;
  return 'a mapping';
}

function unknownKeyMessage(name: string, known: readonly string[], at: readonly PathSeg[]): string {
  const base = `unknown key "${name}"`;
  const near = closest(name, known);
  if (near) return `${base}, did you mean "${near}"?`;
  const elsewhere = sectionOf(name, at);
  if (elsewhere) return `${base}: it belongs under "${elsewhere}:"`;
  if (name === '<<') return `${base}: YAML merge keys are not supported`;
  return known.length > 0 ? `${base} (known keys here: ${known.join(', ')})` : base;
}

/** The closest known key within edit distance 2, comparing case-insensitively with - and _ the same. */
export function closest(name: string, known: readonly string[]): string | undefined {
  const norm = (s: string): string => s.toLowerCase().replaceAll('-', '_');
  let best: string | undefined;
  let bestDistance = 3;
  for (const k of known) {
    const d = editDistance(norm(name), norm(k));
    if (d < bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  return best;
}

/** Optimal-string-alignment distance: insertions, deletions, substitutions, adjacent transpositions. */
export function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 8) return Math.abs(a.length - b.length);
  const rows: number[][] = [];
  for (let i = 0; i <= a.length; i++) {
    const row: number[] = [];
    for (let j = 0; j <= b.length; j++) {
      if (i === 0 || j === 0) {
        row.push(i + j);
        continue;
      }
      const prev = rows[i - 1] ?? [];
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min((prev[j] ?? 0) + 1, (row[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, (rows[i - 2]?.[j - 2] ?? 0) + 1);
      row.push(d);
    }
    rows.push(row);
  }
  return rows[a.length]?.[b.length] ?? 0;
}

// ---------------------------------------------------------------------------------------------
// The schema's shape, for suggestions and empty sections.

/** The object schema inside defaults, optionals and transforms, if there is one. */
function objectSchema(schema: z.core.$ZodType | undefined): z.ZodObject | undefined {
  let cur = schema;
  for (let i = 0; cur && i < 16; i++) {
    if (cur instanceof z.ZodObject) return cur;
    if (cur instanceof z.ZodDefault || cur instanceof z.ZodPrefault || cur instanceof z.ZodOptional || cur instanceof z.ZodNullable) {
      cur = cur.def.innerType;
    } else if (cur instanceof z.ZodPipe) {
      cur = cur.def.in;
    } else {
      return undefined;
    }
  }
  return undefined;
}

function schemaAt(keys: readonly PathSeg[]): z.core.$ZodType | undefined {
  let cur: z.core.$ZodType | undefined = configSchema;
  for (const seg of keys) {
    const obj = objectSchema(cur);
    if (!obj || typeof seg !== 'string') return undefined;
    cur = obj.shape[seg];
  }
  return cur;
}

function knownKeys(keys: readonly PathSeg[]): string[] {
  const obj = objectSchema(schemaAt(keys));
  return obj ? Object.keys(obj.shape) : [];
}

/** `max_rcpts` written at the top level: the section it belongs in ("limits"), when that is unique. */
function sectionOf(name: string, at: readonly PathSeg[]): string | undefined {
  if (at.length > 0) return undefined;
  const sections = Object.entries(configSchema.shape).filter(([, s]) => objectSchema(s)?.shape[name] !== undefined);
  return sections.length === 1 ? sections[0]?.[0] : undefined;
}

/** Every key path of the schema, e.g. `limits.max_rcpts` (for the docs test). */
export function schemaKeyPaths(): string[] {
  const out: string[] = [];
  const walk = (obj: z.ZodObject, prefix: string): void => {
    for (const [k, s] of Object.entries(obj.shape)) {
      const inner = objectSchema(s);
      if (inner) walk(inner, `${prefix}${k}.`);
      else out.push(`${prefix}${k}`);
    }
  };
  walk(configSchema, '');
  return out;
}

/** `smtp:` with nothing under it (all its lines commented out) is the same as leaving the section out. */
function dropEmptySections(data: unknown, schema: z.core.$ZodType, depth = 0): unknown {
  const obj = objectSchema(schema);
  if (!obj || !isRecord(data) || depth > 8) return data;
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(data)) {
    const sub: z.core.$ZodType | undefined = Object.hasOwn(obj.shape, key) ? obj.shape[key] : undefined;
    const value = data[key];
    if (value === null && objectSchema(sub)) continue;
    Object.defineProperty(out, key, { value: sub ? dropEmptySections(value, sub, depth + 1) : value, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function valueAt(data: unknown, keys: readonly PathSeg[]): unknown {
  let cur = data;
  for (const seg of keys) {
    if (Array.isArray(cur) && typeof seg === 'number') cur = cur[seg];
    else if (isRecord(cur) && Object.hasOwn(cur, seg)) cur = cur[seg];
    else return undefined;
  }
  return cur;
}

function formatKey(keys: readonly PathSeg[]): string {
  let out = '';
  for (const seg of keys) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out === '' ? seg : `.${seg}`;
  }
  return out;
}

function sortMessages(list: ConfigMessage[]): ConfigMessage[] {
  return list.sort((a, b) => a.line - b.line || a.column - b.column);
}

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}

function errorCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function readErrorMessage(err: unknown): string {
  switch (errorCode(err)) {
    case 'ENOENT':
      return 'cannot read the config file: no such file';
    case 'EACCES':
    case 'EPERM':
      return 'cannot read the config file: permission denied';
    case 'EISDIR':
      return 'cannot read the config file: it is a directory';
    default:
      return `cannot read the config file: ${errorText(err)}`;
  }
}
