// `mxguard user add|delete|list`: the password file for SMTP AUTH (auth.users_file). The
// password is read from standard input (first line), never from the command line, where
// other users could see it in the process list.
import fs from 'node:fs';
import type { Config } from '../config/schema.ts';
import { hashPassword, readUsers, userNameError, writeUsers } from '../auth/passwords.ts';

function readPassword(): string {
  if (process.stdin.isTTY) process.stderr.write('Password (the line is shown as you type it): ');
  const line = fs.readFileSync(0, 'utf8').split('\n')[0]?.replace(/\r$/, '') ?? '';
  if (line === '') throw new Error('no password on standard input');
  return line;
}

export async function userCommand(config: Config, command: string, args: readonly string[]): Promise<string> {
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
      writeUsers(file, users);
      return `${existed ? 'changed the password of' : 'added'} ${user}`;
    }
    case 'delete': {
      if (args.length === 0) throw new Error('usage: mxguard user delete USER [USER...]');
      const missing = args.filter((u) => !users.delete(u));
      writeUsers(file, users);
      if (missing.length > 0) throw new Error(`no such user: ${missing.join(', ')}`);
      return `deleted ${args.join(', ')}`;
    }
    case 'list':
      return [...users.keys()].sort().join('\n');
    default:
      throw new Error(`unknown user command "${command}" (add, delete, list)`);
  }
}
