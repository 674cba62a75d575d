// The mxguard command line: start | stdio | check | queue | relay | user | relaytest.
import fs from 'node:fs';
import path from 'node:path';
import { Command } from 'commander';
import { ConfigError, checkConfigFile, defaultConfig, formatConfigMessage, loadConfigFile } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { openLog } from '../util/log.ts';
import { runStdio, stdioLogger } from '../stdio.ts';
import { becomeConfiguredUser, resolveRunAs } from '../util/privileges.ts';
import { readConfigAgain } from './reload-config.ts';
// Each command loads what it needs when it runs (dynamic imports below): `mxguard stdio` starts
// once per connection and must not pay for the daemon, the forwarder or the other commands.

// Spool fsyncs run in libuv's thread pool; the default 4 threads would serialise them.
process.env.UV_THREADPOOL_SIZE ??= '16';

/** The config file a command reads without -c: $MXGUARD_CONFIG, else this one when it exists; else the embedded defaults. */
const DEFAULT_CONFIG = '/etc/mxguard/mxguard.yaml';

/** -c FILE, else $MXGUARD_CONFIG, else /etc/mxguard/mxguard.yaml if there is one: every command of one server reads the same file. */
function configFile(file: string | undefined): string | undefined {
  if (file) return file;
  if (process.env.MXGUARD_CONFIG) return process.env.MXGUARD_CONFIG;
  return fs.existsSync(DEFAULT_CONFIG) ? DEFAULT_CONFIG : undefined;
}

async function loadConfig(file: string | undefined): Promise<Config> {
  const chosen = configFile(file);
  if (!chosen) return defaultConfig();
  return (await loadConfigFile(chosen)).config;
}

/** The config, and then, started as root with `user` configured, that user (before data_dir is touched: nothing in it may become root's). */
async function loadConfigAsUser(file: string | undefined, opts: { ownsLog?: boolean } = {}): Promise<Config> {
  const config = await loadConfig(file);
  becomeConfiguredUser(config, opts.ownsLog && config.log.file !== undefined ? [config.log.file] : []);
  return config;
}

async function start(file: string | undefined, runAs: { user?: string; group?: string } = {}): Promise<void> {
  /** -u and -g win over the file, at start and at every reload. */
  const withRunAs = (c: Config): Config => ({ ...c, ...(runAs.user !== undefined ? { user: runAs.user } : {}), ...(runAs.group !== undefined ? { group: runAs.group } : {}) });
  let config: Config;
  try {
    config = withRunAs(await loadConfig(file));
  } catch (err) {
    console.error(err instanceof ConfigError ? err.message : `mxguard: ${(err as Error).message}`);
    process.exit(1);
  }
  // SIGHUP and SIGUSR1 reopen the log file (logrotate); SIGHUP also applies new log.* settings.
  const logOutput = openLog(config.log);
  const log = logOutput.log;
  // The handlers go in before start-up, which may take a while on a big queue: without them a
  // SIGHUP (systemctl reload, logrotate) would end the process and a SIGUSR1 start the debugger.
  // Assigned once the App's code is loaded; the signal handlers below come first.
  // eslint-disable-next-line prefer-const
  let app: import('../app.ts').App | undefined;
  let started = false;
  let reloadWhenStarted = false;
  const reload = (): void =>
    readConfigAgain(file, log, (next) => {
      app?.reload(withRunAs(next));
      logOutput.apply(next.log);
    });
  process.on('SIGHUP', () => {
    logOutput.reopen();
    if (started) return reload();
    reloadWhenStarted = true;
    log.info('SIGHUP during start-up: the configuration is read again once started');
  });
  process.on('SIGUSR1', () => {
    logOutput.reopen();
    if (started) void app?.rescanQueue(); // start-up scans the queue anyway
  });
  process.on('SIGUSR2', () => {
    if (started) void app?.adoptNewMessages();
  });
  const { App } = await import('../app.ts');
  app = new App(config, log);
  try {
    await app.start();
  } catch (err) {
    log.fatal({ err }, 'start-up failed');
    log.flush();
    console.error(`mxguard: start-up failed: ${(err as Error).message}`);
    process.exit(1);
  }
  started = true;
  if (reloadWhenStarted) reload();
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    app.stop().then(
      () => {
        log.flush();
        process.exit(0);
      },
      (err: Error) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

const program = new Command();
const VERSION = (JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
program.name('mxguard').description('Anti-spam SMTP gateway').version(`mxguard ${VERSION}`, '-V, --version', 'print the version').showHelpAfterError();

program
  .command('start')
  .description('run the SMTP server and the forwarder (embedded defaults without -c)')
  .option('-c, --config <file>', 'YAML configuration file (default: $MXGUARD_CONFIG, else /etc/mxguard/mxguard.yaml, else the embedded defaults)')
  .option('-u, --user <user>', 'run as this user once the listeners are bound (overrides user:)')
  .option('-g, --group <group>', 'and this group (overrides group:)')
  .action((opts: { config?: string; user?: string; group?: string }) => start(opts.config, opts));

program
  .command('check')
  .description('validate a configuration file without starting (exit 0 = valid); with --sample, run the message filters over known-good mail (exit 1 if any would be refused)')
  .option('-c, --config <file>', 'YAML configuration file (default: $MXGUARD_CONFIG, else /etc/mxguard/mxguard.yaml)')
  .option('--sample <dir>', 'a Maildir or a folder of message files: list each message the filters would reject, drop or tag, and by which rule')
  .action(async (given: { config?: string; sample?: string }) => {
    const file = configFile(given.config);
    if (file === undefined) {
      console.error(`mxguard check: which file? -c FILE, $MXGUARD_CONFIG, or ${DEFAULT_CONFIG}`);
      process.exitCode = 1;
      return;
    }
    const opts = { ...given, config: file };
    const { usersFileMessages } = await import('./user.ts');
    const { filterProblems, emptyMessageWarnings, sampleReport } = await import('./filters.ts');
    let loaded: { config: Config; filters: ReturnType<typeof filterProblems>['filters'] } | undefined;
    const result = await checkConfigFile(opts.config, (config) => {
      const f = filterProblems(config);
      loaded = { config, filters: f.filters };
      return [...usersFileMessages(config), ...f.problems];
    });
    const out = [result.output];
    if (result.ok && loaded) out.push(...emptyMessageWarnings(loaded.filters).map((w) => formatConfigMessage(w, 'warning')));
    let ok = result.ok;
    if (result.ok && loaded && opts.sample !== undefined) {
      try {
        const report = sampleReport(loaded.config, loaded.filters, opts.sample);
        out.push(report.output);
        ok = report.ok;
      } catch (err) {
        out.push(`${opts.sample}: cannot read the sample: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
        ok = false;
      }
    }
    (ok ? console.log : console.error)(out.join('\n'));
    process.exitCode = ok ? 0 : 1;
  });

program
  .command('stdio')
  .description('one SMTP session on standard input/output, for inetd, systemd socket activation or tcpserver (honours TCPREMOTEIP, REMOTE_ADDR and RBLSMTPD); a running `mxguard start` delivers')
  .option('-c, --config <file>', 'YAML configuration file (default: $MXGUARD_CONFIG, else /etc/mxguard/mxguard.yaml, else the embedded defaults)')
  .action(async (opts: { config?: string }) => {
    let config: Config;
    try {
      config = await loadConfigAsUser(opts.config);
    } catch (err) {
      // Standard output is the client: a broken config is a temporary failure there.
      console.error(err instanceof ConfigError ? err.message : `mxguard: ${(err as Error).message}`);
      process.stdout.write('421 4.3.0 Service not available: configuration error\r\n');
      process.exit(1);
    }
    const log = stdioLogger(config);
    let code = 1;
    try {
      code = await runStdio(config, log);
    } catch (err) {
      log.fatal({ err }, 'stdio session failed');
    }
    log.flush();
    process.exit(code);
  });

const queue = program.command('queue').description('inspect and manage the spool').option('-c, --config <file>', 'YAML configuration file (default: $MXGUARD_CONFIG, else /etc/mxguard/mxguard.yaml, else the embedded defaults)');
const withQueueConfig = (fn: (config: Config, ...args: string[]) => Promise<string>) => {
  return async (...args: unknown[]) => {
    try {
      const config = await loadConfigAsUser(queue.opts<{ config?: string }>().config);
      console.log(await fn(config, ...(args.filter((a) => typeof a === 'string') as string[])));
    } catch (err) {
      console.error(`mxguard: ${(err as Error).message}`);
      process.exitCode = 1;
    }
  };
};
const queueFn = (name: 'queueList' | 'queueShow' | 'queueFlush' | 'queueDelete') => async (config: Config, ...args: string[]) => {
  const fn = (await import('./queue.ts'))[name] as (config: Config, ...args: string[]) => Promise<string>;
  return fn(config, ...args);
};
queue.command('list').description('list queued messages').action(withQueueConfig(queueFn('queueList')));
queue.command('show <id>').description('show one message: envelope, delivery state, headers').action(withQueueConfig(queueFn('queueShow')));
queue.command('flush').description('retry every deferred message now').action(withQueueConfig(queueFn('queueFlush')));
queue.command('delete <id>').description('remove a message from the queue').action(withQueueConfig(queueFn('queueDelete')));

type Owner = { uid: number; gid: number };

/** The usual step before a command touches data_dir: become the configured user (nothing is handed over). */
function dropRoot(config: Config): Owner | undefined {
  becomeConfiguredUser(config);
  return undefined;
}

/**
 * `mxguard NAME [-c FILE] <command> [args...]`: runs `fn`, prints its output; errors exit 1.
 * `prepare` gives root up before `fn` runs, or says to whom root hands what it writes.
 */
function subcommands(name: string, description: string, args: string, fn: (config: Config, command: string, args: readonly string[], owner: Owner | undefined) => Promise<string>, prepare: (config: Config) => Owner | undefined = dropRoot): void {
  program
    .command(name)
    .description(description)
    .option('-c, --config <file>', 'YAML configuration file (default: $MXGUARD_CONFIG, else /etc/mxguard/mxguard.yaml, else the embedded defaults)')
    .argument('<command>')
    .argument('[args...]', args)
    .action(async (command: string, rest: string[], opts: { config?: string }) => {
      try {
        const config = await loadConfig(opts.config);
        const out = await fn(config, command, rest, prepare(config));
        if (out !== '') console.log(out);
      } catch (err) {
        console.error(`mxguard ${name}: ${(err as Error).message}`);
        process.exitCode = 1;
      }
    });
}

/**
 * A users_file under data_dir is written as the user mxguard runs as (like the rest of data_dir);
 * one elsewhere (/etc/mxguard/users) by root, then given to that user to read.
 */
function usersFileOwner(config: Config): Owner | undefined {
  const file = path.resolve(config.auth.users_file ?? path.join(config.data_dir, 'users'));
  const inDataDir = !path.relative(path.resolve(config.data_dir), file).startsWith('..');
  if (inDataDir || process.getuid?.() !== 0) return dropRoot(config);
  return config.user === undefined ? undefined : resolveRunAs(config.user, config.group);
}

subcommands('relay', 'POP-before-SMTP relayers, as vsmtprelay: add IP [TICKS] | delete IP... | expire [N] | list [N] | dump | load [FILE]', 'IP addresses, ticks (epoch seconds) or minutes', async (c, cmd, args) => (await import('./relay.ts')).relayCommand(c, cmd, args));
subcommands('greylist', 'greylisting records: list | allow IP|CIDR... | release KEY (or IP SENDER RCPT) | delete KEY... | stats', 'keys as list shows them, addresses', async (c, cmd, args) => (await import('./greylist.ts')).greylistCommand(c, cmd, args));
subcommands('user', 'SMTP AUTH users in auth.users_file: add USER (password on standard input) | delete USER... | list', 'user names', async (c, cmd, args, owner) => (await import('./user.ts')).userCommand(c, cmd, args, owner), usersFileOwner);

program
  .command('report')
  .description("a pflogsumm-style summary of mxguard's log (JSON or text lines; other lines ignored): received, delivered, deferred, bounced, refused by check and reason, top refused clients and senders, greylisted, per hour")
  .argument('[logfiles...]', 'log files (.gz too); standard input when none')
  .option('--json', 'print the summary as JSON')
  .action(async (files: string[], opts: { json?: boolean }) => {
    try {
      console.log(await (await import('./report.ts')).reportCommand(files, opts));
    } catch (err) {
      console.error(`mxguard report: ${(err as Error).message}`);
      process.exitCode = 1;
    }
  });

program
  .command('explain')
  .description('run the whole policy for these facts (real DNS, the store read-only: nothing is written) and print each check, the replies, the score and the outcome; sends no mail')
  .option('-c, --config <file>', 'YAML configuration file (default: $MXGUARD_CONFIG, else /etc/mxguard/mxguard.yaml, else the embedded defaults)')
  .requiredOption('--ip <address>', 'the client address')
  .requiredOption('--helo <name>', 'the HELO/EHLO name')
  .requiredOption('--from <address>', 'the sender ("" for the null sender)')
  .requiredOption('--to <address>', 'a recipient (repeat for more)', (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
  .option('--auth <user>', 'the client authenticated as this user')
  .option('--message <file>', 'a message file: the DATA checks judge it')
  .option('--json', 'print the report as JSON')
  .action(async (opts: { config?: string; ip: string; helo: string; from: string; to: string[]; auth?: string; message?: string; json?: boolean }) => {
    try {
      const { explain, formatExplain } = await import('./explain.ts');
      const result = await explain(await loadConfigAsUser(opts.config), opts);
      console.log(opts.json ? JSON.stringify(result, null, 2) : formatExplain(result));
    } catch (err) {
      console.error(`mxguard explain: ${(err as Error).message}`);
      process.exitCode = 1;
    }
  });

program
  .command('policy')
  .description('run only the Postfix policy delegation server (check_policy_service) on policy.listen, with the config, store and DNS of the daemon; no SMTP listener')
  .option('-c, --config <file>', 'YAML configuration file (default: $MXGUARD_CONFIG, else /etc/mxguard/mxguard.yaml, else the embedded defaults)')
  .option('--listen <host:port>', 'listen here instead of policy.listen')
  .action(async (opts: { config?: string; listen?: string }) => {
    let config: Config;
    try {
      config = await loadConfigAsUser(opts.config, { ownsLog: true });
    } catch (err) {
      console.error(err instanceof ConfigError ? err.message : `mxguard policy: ${(err as Error).message}`);
      process.exit(1);
    }
    const { runPolicyCommand } = await import('./policy.ts');
    process.exitCode = await runPolicyCommand(config, opts.listen, configFile(opts.config));
  });

program
  .command('dkim')
  .description('DKIM signing keys: keygen DOMAIN SELECTOR [FILE] [BITS] writes a new RSA key (mode 0600) and prints the DNS TXT record')
  .argument('<command>')
  .argument('[args...]', 'DOMAIN SELECTOR [FILE] [BITS]')
  .action(async (command: string, rest: string[]) => {
    try {
      console.log((await import('./dkim.ts')).dkimCommand(command, rest));
    } catch (err) {
      console.error(`mxguard dkim: ${(err as Error).message}`);
      process.exitCode = 1;
    }
  });

program
  .command('relaytest')
  .description('probe an SMTP server with the classic open-relay tests (never DATA): HOST[:PORT] [--local-domain D] [--helo NAME] [--probe-domain D] [--timeout T]; exit 1 if any probe relayed, 2 if it could not test')
  .helpOption(false)
  .allowUnknownOption()
  .allowExcessArguments()
  .argument('[args...]', 'HOST[:PORT] and options; --help for details')
  .action(async (args: string[]) => {
    const { relaytestMain } = await import('./relaytest.ts');
    process.exitCode = await relaytestMain(args);
  });

await program.parseAsync(process.argv);
