// Who may authenticate: the password file, or Dovecot's auth service (auth.dovecot_socket).
import type { Config } from '../config/schema.ts';
import { DovecotAuth } from './dovecot.ts';
import { PasswordFile } from './passwords.ts';

export { AuthBusyError, HashRefusedError } from './errors.ts';

export interface AuthClient {
  readonly ip: string;
  readonly localIp: string;
  /** TLS is on, or the client may authenticate in plaintext. */
  readonly secured: boolean;
}

export interface Authenticator {
  /**
   * true: the password is right; false: wrong user or password (never says which). Throws
   * AuthBusyError when too many checks run at once (auth.max_concurrent_checks), HashRefusedError
   * for a stored hash too costly to run (a failed check), anything else: backend down.
   */
  verify(user: string, password: string, client: AuthClient): Promise<boolean>;
  close(): void;
}

export function createAuthenticator(config: Config): Authenticator {
  const socket = config.auth.dovecot_socket;
  if (socket !== undefined) {
    const dovecot = new DovecotAuth(socket);
    return { verify: (u, p, c) => dovecot.verify(u, p, c), close: () => dovecot.close() };
  }
  // Only the password file's checks cost this process (scrypt in libuv's thread pool) and are
  // bounded; Dovecot checks in its own processes.
  const file = new PasswordFile(config.auth.users_file ?? `${config.data_dir}/users`, config.auth.max_concurrent_checks);
  return { verify: (u, p) => file.verify(u, p), close: () => undefined };
}
