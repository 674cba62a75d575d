// Clean-ups that run once the test file is done (last registered, first run), each whatever the
// others do: for a daemon, a mount or a temp dir several tests of a file share.
import { after } from 'node:test';

const cleanups: Array<() => Promise<unknown> | void> = [];
let hooked = false;

export function atEnd(cleanup: () => Promise<unknown> | void): void {
  if (!hooked) {
    hooked = true;
    after(async () => {
      for (const c of cleanups.reverse()) {
        try {
          await c();
        } catch (err) {
          console.error(`cleanup: ${(err as Error).message}`);
        }
      }
    });
  }
  cleanups.push(cleanup);
}
