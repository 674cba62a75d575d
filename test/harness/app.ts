// Runs mxguard in the test process on a free port, with its data in a temporary directory.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { App } from '../../src/app.ts';
import { configSchema, type Config, type ConfigInput } from '../../src/config/schema.ts';
import { Writable } from 'node:stream';
import { pino } from 'pino';

export interface TestApp {
  app: App;
  port: number;
  dir: string;
  config: Config;
  stop(): Promise<void>;
  /** Files delivered into the default Maildir for a local part. */
  maildir(local: string): string[];
  /** Waits until `count` files are in that Maildir (bounded). */
  waitMaildir(local: string, count: number, timeoutMs?: number): Promise<string[]>;
  /** Every log line so far, parsed (the test app logs at info level into memory). */
  logs(): Array<Record<string, unknown>>;
}

export async function startTestApp(overrides: Partial<ConfigInput> = {}, appOptions: ConstructorParameters<typeof App>[2] = {}): Promise<TestApp> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mxguard-test-'));
  const config = configSchema.parse({
    hostname: 'mx.example.test',
    listen: ['127.0.0.1:0'],
    local_domains: ['example.test', 'localhost'],
    data_dir: dir,
    deliver: `maildir:${path.join(dir, 'maildir')}`,
    ...overrides,
    // There is no DNS here: tests that check sender domains turn this on with a real dnsmasq.
    mail_from: { require_domain: false, ...overrides.mail_from },
  });
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      done();
    },
  });
  const app = new App(config, pino({ level: 'info' }, sink), appOptions);
  const bound = await app.start();
  const maildir = (local: string) => {
    const d = path.join(dir, 'maildir', local, 'new');
    return fs.existsSync(d) ? fs.readdirSync(d).map((f) => path.join(d, f)) : [];
  };
  return {
    app,
    port: (bound[0] as { port: number }).port,
    dir,
    config,
    maildir,
    logs: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>),
    async waitMaildir(local, count, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const files = maildir(local);
        if (files.length >= count || Date.now() > deadline) return files;
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async stop() {
      await app.stop(2000);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Runs `fn` against a fresh test app and stops it afterwards, pass or fail. */
export async function withTestApp(overrides: Partial<ConfigInput>, fn: (app: TestApp) => Promise<void>): Promise<void> {
  const app = await startTestApp(overrides);
  try {
    await fn(app);
  } finally {
    await app.stop();
  }
}
