// The folders of src/ import downward only (DESIGN.md, "Data flow"): a folder may import its own
// files and any folder of a LOWER layer below, never one of its own layer or above. The order is
// data, here; a new folder under src/ must be placed in it before this test passes. Every import
// counts: static, `export … from`, dynamic `import()`, and type-only ones (`import type`,
// `import('…').T`), since a type import is coupling too. Test files (`*.test.ts`) are not
// checked: a test may reach wherever it needs to.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import ts from 'typescript';

/** Top to bottom. Top-level files (src/app.ts, src/stdio.ts) are the folder "app". */
const LAYERS: readonly (readonly string[])[] = [
  ['cli'], // mxguard's commands
  ['app'], // src/app.ts and src/stdio.ts: one running mxguard, wired together
  ['smtp', 'admin', 'relayers', 'policy-service'], // the front doors: SMTP engine, admin HTTP, the POP-log watcher, Postfix's policy delegation
  ['policy'], // the checks and the policy engine
  ['store', 'queue', 'auth'], // shared state, the spool + queue manager (forwarder, DSN), AUTH
  ['delivery'], // the transports: Maildir, and the SMTP / LMTP one built on smtp-client
  ['smtp-client'], // our SMTP / LMTP client: forwarding and the recipient callout
  ['dns', 'config'], // the resolver; the YAML config and the rules file it reads
  ['mail', 'util'], // shared mail types (Address, Envelope, Transport) and small helpers
];

/**
 * Named imports that break the order knowingly, each with its reason. An entry that no longer
 * matches an import fails the test too, so the list stays true. Empty today.
 */
const EXCEPTIONS: readonly { from: string; to: string; reason: string }[] = [];

const SRC = path.resolve(import.meta.dirname, '../src');

interface ImportRef {
  /** The importing file, relative to the repository root: "src/policy/index.ts". */
  file: string;
  line: number;
  specifier: string;
  typeOnly: boolean;
}

/** Every relative import of one source text: static, re-export, dynamic and type-level. */
function importsOf(file: string, text: string): ImportRef[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: ImportRef[] = [];
  const add = (node: ts.Node, spec: ts.Expression | undefined, typeOnly: boolean): void => {
    if (spec === undefined || !ts.isStringLiteralLike(spec) || !spec.text.startsWith('.')) return;
    const line = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1;
    out.push({ file, line, specifier: spec.text, typeOnly });
  };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node)) {
      const clause = node.importClause;
      const allTypes =
        clause !== undefined &&
        (clause.isTypeOnly ||
          (clause.name === undefined &&
            clause.namedBindings !== undefined &&
            ts.isNamedImports(clause.namedBindings) &&
            clause.namedBindings.elements.length > 0 &&
            clause.namedBindings.elements.every((e) => e.isTypeOnly)));
      add(node, node.moduleSpecifier, allTypes);
    } else if (ts.isExportDeclaration(node)) {
      add(node, node.moduleSpecifier, node.isTypeOnly);
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      add(node, node.moduleReference.expression, node.isTypeOnly);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      add(node, node.arguments[0], false);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) {
      add(node, node.argument.literal as ts.Expression, true);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

/** The folder of a path under src/: its first directory, or "app" for a top-level file. */
function folderOf(srcRelative: string): string {
  const parts = srcRelative.split('/');
  return parts.length === 1 ? 'app' : (parts[0] ?? 'app');
}

function layerOf(folder: string): number {
  return LAYERS.findIndex((layer) => layer.includes(folder));
}

interface Violation {
  file: string;
  line: number;
  specifier: string;
  target: string;
  rule: string;
}

/**
 * Checks the imports of `files` (paths relative to the repository root, all under src/) against
 * LAYERS and the exceptions given. Returns the violations, and the exceptions no import used.
 */
function checkOrder(
  files: ReadonlyMap<string, string>,
  exceptions: readonly { from: string; to: string }[] = EXCEPTIONS,
): { violations: Violation[]; unusedExceptions: { from: string; to: string }[] } {
  const violations: Violation[] = [];
  const used = new Set<number>();
  for (const [file, text] of files) {
    const fromFolder = folderOf(path.posix.relative('src', file));
    const fromLayer = layerOf(fromFolder);
    if (fromLayer === -1) {
      violations.push({ file, line: 1, specifier: '', target: '', rule: `folder "${fromFolder}" is not declared in LAYERS (test/import-order.test.ts): place it in the order` });
      continue;
    }
    for (const ref of importsOf(file, text)) {
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(file), ref.specifier));
      const kind = ref.typeOnly ? 'type import' : 'import';
      const fail = (rule: string): void => {
        const i = exceptions.findIndex((e) => e.from === file && e.to === target);
        if (i !== -1) used.add(i);
        else violations.push({ file, line: ref.line, specifier: ref.specifier, target, rule: `${kind}: ${rule}` });
      };
      if (!target.startsWith('src/')) {
        fail(`${target} is outside src/ (the product must not import tests or tools)`);
        continue;
      }
      const toFolder = folderOf(path.posix.relative('src', target));
      if (toFolder === fromFolder) continue;
      const toLayer = layerOf(toFolder);
      if (toLayer === -1) fail(`folder "${toFolder}" is not declared in LAYERS`);
      else if (toLayer === fromLayer) fail(`${fromFolder}/ and ${toFolder}/ are siblings in one layer and must not import each other`);
      else if (toLayer < fromLayer) fail(`${fromFolder}/ (layer ${fromLayer}) must not import upward into ${toFolder}/ (layer ${toLayer})`);
    }
  }
  const unusedExceptions = exceptions.filter((_, i) => !used.has(i));
  return { violations, unusedExceptions };
}

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sourceFiles(p));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

function format(v: Violation): string {
  return v.specifier === '' ? `${v.file}: ${v.rule}` : `${v.file}:${v.line} imports '${v.specifier}' (${v.target}): ${v.rule}`;
}

test('src/ imports run downward only, in the declared folder order', () => {
  const root = path.dirname(SRC);
  const files = new Map<string, string>();
  for (const f of sourceFiles(SRC)) files.set(path.relative(root, f).split(path.sep).join('/'), fs.readFileSync(f, 'utf8'));
  assert.ok(files.size > 50, `found only ${files.size} source files under ${SRC}`);
  const { violations, unusedExceptions } = checkOrder(files);
  assert.deepEqual(violations.map(format), [], `imports against the order (${LAYERS.map((l) => l.join('/')).join(' → ')}):\n${violations.map(format).join('\n')}`);
  assert.deepEqual(unusedExceptions, [], 'exceptions in test/import-order.test.ts that no import uses any more: remove them');
});

test('every folder under src/ is placed in the order', () => {
  const folders = fs.readdirSync(SRC, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
  for (const f of folders) assert.notEqual(layerOf(f), -1, `src/${f}/ is not declared in LAYERS (test/import-order.test.ts)`);
});

test('the check fails on upward, sideways, undeclared and type-only imports, and honours named exceptions', () => {
  const files = new Map<string, string>([
    ['src/config/schema.ts', "import { x } from '../policy/index.ts';\n"],
    ['src/queue/spool.ts', "import type { T } from '../store/store.ts';\nexport type U = import('../smtp/session.ts').S;\n"],
    ['src/mail/envelope.ts', "export { y } from '../util/log.ts';\nconst m = await import('../dns/resolver.ts');\n"],
    ['src/util/log.ts', "import { p } from '../../test/harness/prng.ts';\n"],
    ['src/nowhere/a.ts', "import { z } from '../util/cidr.ts';\n"],
    ['src/policy/index.ts', "import { a } from './engine.ts';\nimport type { B } from '../mail/address.ts';\nimport { C } from '../smtp-client/client.ts';\n"],
    ['src/app.ts', "import { D } from './delivery/index.ts';\nimport { E } from './cli/main.ts';\n"],
  ]);
  const { violations } = checkOrder(files, []);
  const got = violations.map((v) => `${v.file}:${v.line} ${v.target} ${v.rule.split(':')[0]}`);
  assert.deepEqual(got, [
    'src/config/schema.ts:1 src/policy/index.ts import',
    'src/queue/spool.ts:1 src/store/store.ts type import',
    'src/queue/spool.ts:2 src/smtp/session.ts type import',
    'src/mail/envelope.ts:1 src/util/log.ts import',
    'src/mail/envelope.ts:2 src/dns/resolver.ts import',
    'src/util/log.ts:1 test/harness/prng.ts import',
    'src/nowhere/a.ts:1  folder "nowhere" is not declared in LAYERS (test/import-order.test.ts)',
    'src/app.ts:2 src/cli/main.ts import',
  ]);
  assert.ok(violations[0] !== undefined);
  assert.match(format(violations[0]), /^src\/config\/schema\.ts:1 imports '\.\.\/policy\/index\.ts' \(src\/policy\/index\.ts\): import: config\/ \(layer 7\) must not import upward into policy\/ \(layer 3\)$/);
  const excused = checkOrder(new Map([['src/config/schema.ts', "import { x } from '../policy/index.ts';\n"]]), [
    { from: 'src/config/schema.ts', to: 'src/policy/index.ts' },
    { from: 'src/config/load.ts', to: 'src/policy/index.ts' },
  ]);
  assert.deepEqual(excused.violations, []);
  assert.deepEqual(excused.unusedExceptions, [{ from: 'src/config/load.ts', to: 'src/policy/index.ts' }]);
});
