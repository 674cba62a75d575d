// `mxguard user add|delete|list`: the password file for SMTP AUTH (auth.users_file). The
// password is read from standard input (first line), never from the command line, where
// other users could see it in the process list.
import fs from 'node:fs';
import type { Config } from '../config/schema.ts';
import { formatConfigMessage, type ConfigMessage } from '../config/load.ts';
import { hashPassword, readUsers, userNameError, usersFileProblems, writeUsers } from '../auth/passwords.ts';

/**
 * The users file's lines that mxguard refuses to check a password against (a hash asking for
 * more memory or work than SCRYPT_MAX, or no hash at all), for `mxguard check` and `mxguard user`.
 * None when the file is not used (AUTH off, or Dovecot checks the passwords) or missing.
 */
export function usersFileMessages(config: Config): ConfigMessage[] {
  if (!config.auth.enabled || config.auth.dovecot_socket !== undefined) return [];
  const file = config.auth.users_file ?? `${config.data_dir}/users`;
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return [];
    return [{ file, line: 0, column: 0, key: 'auth.users_file', message: `cannot read it: ${code ?? (err as Error).message}` }];
  }
  return usersFileProblems(text).map((p) => ({ file, line: p.line, column: 1, key: 'auth.users_file', message: `user ${p.user}: ${p.message}` }));
}

function readPassword(): string {
  if (process.stdin.isTTY) process.stderr.write('Password (the line is shown as you type it): ');
  const line = fs.readFileSync(0, 'utf8').split('\n')[0]?.replace(/\r$/, '') ?? '';
  if (line === '') throw new Error('no password on standard input');
  return line;
}

/** Runs the command, then names on standard error every line of the file that would be refused (list: exit 1). */
export async function userCommand(config: Config, command: string, args: readonly string[], owner?: { uid: number; gid: number }): Promise<string> {
  const out = await runUserCommand(config, command, args, owner);
  const refused = usersFileMessages(config);
  for (const m of refused) process.stderr.write(`mxguard user: ${formatConfigMessage(m)}\n`);
  if (refused.length > 0 && command === 'list') process.exitCode = 1;
  return out;
}

async function runUserCommand(config: Config, command: string, args: readonly string[], owner: { uid: number; gid: number } | undefined): Promise<string> {
  const file = config.auth.users_file ?? `${config.data_dir}/users`;
  const users = readUsers(file);
  switch (command) {
    case 'add': {
      const [user] = args;
      if (user === undefined || args.length !== 1) throw new Error('usage: mxguard user add USER (password on standard input)');
      const bad = userNameError(user);
      if (bad) throw new Error(bad);
      const existed = users.has(user);
      users.set(user, await hashPassword(readPassword()));
      fs.mkdirSync(config.data_dir, { recursive: true });
      writeUsers(file, users, owner);
      return `${existed ? 'changed the password of' : 'added'} ${user}`;
    }
    case 'delete': {
      if (args.length === 0) throw new Error('usage: mxguard user delete USER [USER...]');
      const missing = args.filter((u) => !users.delete(u));
      writeUsers(file, users, owner);
      if (missing.length > 0) throw new Error(`no such user: ${missing.join(', ')}`);
      return `deleted ${args.join(', ')}`;
    }
    case 'list':
      return [...users.keys()].sort().join('\n');
    default:
      throw new Error(`unknown user command "${command}" (add, delete, list)`);
  }
}
