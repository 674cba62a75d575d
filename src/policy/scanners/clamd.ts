// ClamAV's clamd as a scanner (issue 12): zINSTREAM over TCP or a Unix socket. The stored message
// (our Received on top) goes in chunks, each after its length as 4 octets big-endian, ended by a
// chunk of length 0. `stream: OK` lets it through with an X-Virus-Scanned field; `stream: NAME
// FOUND` refuses it, 554 5.7.1 naming the virus; anything else (an ERROR, clamd's StreamMaxLength
// exceeded, no answer) is a failure and the scanner's on_error decides.
import type { ScannerSpec } from './check.ts';
import type { Scanner, ScanInput, ScanResult } from './types.ts';
import { exchange, parseAddress, write } from './socket.ts';

type ClamdSpec = Extract<ScannerSpec, { type: 'clamd' }>;

/** Pieces of the message sent in one INSTREAM chunk (clamd reads each whole into memory). */
const CHUNK = 64 * 1024;

export type ClamdReply = { readonly clean: true } | { readonly clean: false; readonly virus: string };

/** A virus name as it may appear in a reply line and a log: printable ASCII without spaces, bounded. */
export function sanitiseVirusName(name: string): string {
  const s = name.replace(/[^A-Za-z0-9._:/+-]/g, '?').slice(0, 100);
  return s === '' ? 'unknown' : s;
}

/** clamd's answer to zINSTREAM (NUL- or newline-ended). Throws on an ERROR or anything unknown. */
export function parseClamdReply(raw: Buffer): ClamdReply {
  const text = raw.toString('latin1').replace(/[\0\r\n]+$/, '');
  if (/INSTREAM size limit exceeded/i.test(text)) throw new Error("clamd: message over clamd's StreamMaxLength (INSTREAM size limit exceeded); raise StreamMaxLength or lower this scanner's max_size");
  // Without an IDSESSION the reply is "stream: ..."; a session would prefix "N: ".
  const m = /^(?:\d+: )?stream: (.*)$/s.exec(text);
  if (!m) throw new Error(`clamd: unexpected reply ${JSON.stringify(text.slice(0, 120))}`);
  const what = m[1] as string;
  if (what === 'OK') return { clean: true };
  const found = /^(.+) FOUND$/s.exec(what);
  if (found) return { clean: false, virus: sanitiseVirusName(found[1] as string) };
  throw new Error(`clamd: ${JSON.stringify(what.slice(0, 120))}`);
}

export function clamdResult(reply: ClamdReply, name: string): ScanResult {
  if (reply.clean) return { kind: 'accept', headers: [`X-Virus-Scanned: clean (${name})\r\n`] };
  return { kind: 'reject', code: 554, enhanced: '5.7.1', text: `Virus found: ${reply.virus}`, log: `${name}: ${reply.virus} FOUND` };
}

/**
 * clamd answers "INSTREAM size limit exceeded" and closes at once; when that answer is lost to
 * the reset of the connection (our writes were still on their way), a reset while sending is
 * what is left: the error says what it almost always means.
 */
function overLimit(err: Error): Error {
  if (!/EPIPE|ECONNRESET|connection closed while sending/.test(err.message)) return err;
  return new Error(`${err.message}: clamd closed the connection before the whole message was sent, probably over its StreamMaxLength (INSTREAM size limit); raise StreamMaxLength or lower this scanner's max_size`, { cause: err });
}

export function create(spec: ClamdSpec): Scanner {
  const addr = parseAddress(spec.address, 'clamd');
  const name = spec.name ?? spec.type;
  return {
    async scan(input: ScanInput): Promise<ScanResult> {
      const raw = await exchange(addr, 'clamd', input.signal, async (sock) => {
        await write(sock, 'zINSTREAM\0');
        for await (const data of input.message.read(0)) {
          for (let off = 0; off < data.length; off += CHUNK) {
            if (input.signal.aborted || sock.destroyed) return;
            const piece = data.subarray(off, off + CHUNK);
            const len = Buffer.alloc(4);
            len.writeUInt32BE(piece.length);
            await write(sock, Buffer.concat([len, piece]));
          }
        }
        await write(sock, Buffer.alloc(4)); // the zero-length chunk: the end
      }).catch((err: Error) => {
        throw overLimit(err);
      });
      return clamdResult(parseClamdReply(raw), name);
    },
  };
}
