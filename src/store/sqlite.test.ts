import { after } from 'node:test';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { storeContract } from './contract.ts';
import { SqliteStore } from './sqlite.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-sqlite-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
let n = 0;
storeContract('sqlite', async () => new SqliteStore(path.join(dir, `state-${++n}.db`)));
