// What a password check can end in besides yes and no; the SMTP session answers each its own way.

/** Too many password checks are running at once (auth.max_concurrent_checks): 454, nothing checked. */
export class AuthBusyError extends Error {
  readonly limit: number;
  constructor(limit: number) {
    super(`${limit} password checks are running already`);
    this.name = 'AuthBusyError';
    this.limit = limit;
  }
}

/** The user's stored hash is one this mxguard will not run (see hashProblem): a failed check, and a warning. */
export class HashRefusedError extends Error {
  readonly user: string;
  constructor(user: string, why: string) {
    super(`the password hash of ${user} is refused: ${why}`);
    this.name = 'HashRefusedError';
    this.user = user;
  }
}
