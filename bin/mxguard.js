#!/usr/bin/env node
// mxguard's command. It runs the TypeScript sources directly, which needs Node 24.
const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  console.error(`mxguard needs Node.js 24 or later (this is ${process.version}).`);
  console.error('Run it through npm, which uses the node@24 devDependency: npx mxguard start');
  process.exit(1);
}
// Keep compiled code between runs (in the system's temp dir, or $NODE_COMPILE_CACHE): it saves
// about a third of the start-up, which `mxguard stdio` pays once per connection.
const { enableCompileCache } = await import('node:module');
enableCompileCache?.();
await import('../src/cli/main.ts');
