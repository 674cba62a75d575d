// Hostile SMTP clients for the starvation load test (test/load.starvation.test.ts), run as a
// process of their own so that their work does not delay the test's legitimate client:
//
//   node starvation-clients.ts '{"kind":"flood","port":N,"seconds":S}'
//     one address (127.0.0.2) opening connections as fast as it can, never closing one (the
//     oldest are let go past `hold`, so the loopback ports do not run out);
//   node starvation-clients.ts '{"kind":"trickle","port":N,"seconds":S,"clients":200}'
//     `clients` sessions from as many addresses, each trickling one octet every 300 ms inside a
//     command line that never ends, reconnecting when cut off;
//   node starvation-clients.ts '{"kind":"auth","port":N,"clients":300}'
//     `clients` addresses, a new one every 10 ms, each EHLO and one AUTH PLAIN with a wrong password.
//
// Every address is on 127.0.0.0/8. Prints one JSON line of counts on standard output and exits.
import net from 'node:net';

interface Args {
  kind: 'flood' | 'trickle' | 'auth';
  port: number;
  seconds?: number;
  clients?: number;
  hold?: number;
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;

function connect(port: number, localAddress: string, allowHalfOpen = false): Promise<net.Socket | undefined> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress, allowHalfOpen, noDelay: true });
    s.once('connect', () => resolve(s));
    s.once('error', () => resolve(undefined));
  });
}

/** The i-th address of a /16 under 127.x, skipping .0 and .255. */
function address(block: number, i: number): string {
  return `127.0.${block + Math.floor(i / 250)}.${(i % 250) + 1}`;
}

async function flood(port: number, seconds: number, hold: number): Promise<Record<string, number>> {
  const end = Date.now() + seconds * 1000;
  const held: net.Socket[] = [];
  const counts = { opened: 0, failed: 0, refused421: 0, closedByServer: 0, greeted: 0 };
  const worker = async (): Promise<void> => {
    while (Date.now() < end) {
      const s = await connect(port, '127.0.0.2', true);
      if (!s) {
        counts.failed++;
        continue;
      }
      counts.opened++;
      let text = '';
      s.setEncoding('latin1');
      s.on('data', (d: string) => {
        const first = text === '';
        text += d;
        if (first && text.startsWith('421 ')) counts.refused421++;
        else if (first && text.startsWith('220 ')) counts.greeted++;
      });
      s.on('end', () => counts.closedByServer++);
      s.on('error', () => undefined);
      held.push(s);
      if (held.length > hold) held.shift()?.destroy();
    }
  };
  await Promise.all(Array.from({ length: 32 }, worker));
  for (const s of held) s.destroy();
  return counts;
}

async function trickle(port: number, seconds: number, clients: number): Promise<Record<string, number>> {
  const end = Date.now() + seconds * 1000;
  const counts = { sessions: 0, cutOff421: 0, refused: 0, failed: 0 };
  const one = async (ip: string): Promise<void> => {
    while (Date.now() < end) {
      const s = await connect(port, ip);
      if (!s) {
        counts.failed++;
        await new Promise((r) => setTimeout(r, 300));
        continue;
      }
      await new Promise<void>((done) => {
        let text = '';
        let drip: NodeJS.Timeout | undefined;
        const stop = setTimeout(() => s.destroy(), Math.max(0, end - Date.now()));
        s.setEncoding('latin1');
        s.on('data', (d: string) => {
          text += d;
          if (/^220 /.test(text) && !drip) {
            counts.sessions++;
            s.write('EHLO ');
            drip = setInterval(() => s.write('x'), 300);
          }
        });
        s.on('error', () => undefined);
        s.on('close', () => {
          clearInterval(drip);
          clearTimeout(stop);
          if (/\r\n421 4\.4\.2 /.test(text)) counts.cutOff421++;
          else if (/^421 /.test(text)) counts.refused++;
          done();
        });
      });
      if (Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, i) => one(address(3, i))));
  return counts;
}

/** Sends `line` and resolves with the next complete reply (multi-line aware), or '' when the connection ends. */
function exchange(s: net.Socket, state: { text: string; closed: boolean }, line?: string): Promise<string> {
  return new Promise((resolve) => {
    const check = (): boolean => {
      const m = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\r?\n/.exec(state.text);
      if (!m) return false;
      state.text = state.text.slice(m[0].length);
      resolve(m[0]);
      return true;
    };
    if (check()) return;
    if (state.closed) return resolve('');
    if (line !== undefined) s.write(line);
    const onData = (): void => {
      if (check()) cleanup();
    };
    const onClose = (): void => {
      cleanup();
      resolve('');
    };
    const cleanup = (): void => {
      s.off('data', onData);
      s.off('close', onClose);
    };
    s.on('data', onData);
    s.on('close', onClose);
  });
}

async function auth(port: number, clients: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = { connected: 0, failed: 0 };
  const one = async (ip: string): Promise<void> => {
    const s = await connect(port, ip);
    if (!s) {
      counts.failed = (counts.failed ?? 0) + 1;
      return;
    }
    counts.connected = (counts.connected ?? 0) + 1;
    const state = { text: '', closed: false };
    s.setEncoding('latin1');
    s.on('data', (d: string) => (state.text += d));
    s.on('error', () => undefined);
    s.on('close', () => (state.closed = true));
    const banner = await exchange(s, state);
    if (!banner.startsWith('220 ')) {
      counts[`banner ${banner.slice(0, 3) || 'closed'}`] = (counts[`banner ${banner.slice(0, 3) || 'closed'}`] ?? 0) + 1;
      s.destroy();
      return;
    }
    await exchange(s, state, 'EHLO attacker.test\r\n');
    const reply = await exchange(s, state, `AUTH PLAIN ${Buffer.from('\0alice\0wrong-password').toString('base64')}\r\n`);
    const code = reply.slice(0, 3) || 'closed';
    counts[code] = (counts[code] ?? 0) + 1;
    s.end('QUIT\r\n');
    setTimeout(() => s.destroy(), 2000).unref();
  };
  // One new address every 10 ms: all 300 within 3 s, without running into max_connections.
  await Promise.all(Array.from({ length: clients }, (_, i) => new Promise((r) => setTimeout(r, 10 * i)).then(() => one(address(4, i)))));
  return counts;
}

const result = args.kind === 'flood' ? await flood(args.port, args.seconds ?? 30, args.hold ?? 10_000) : args.kind === 'trickle' ? await trickle(args.port, args.seconds ?? 15, args.clients ?? 200) : await auth(args.port, args.clients ?? 300);
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);
