// The message as the filters see it (types.ts ScanMessage), built once per message from the
// DATA checks' view of the spool: the parsed header block and the start of the body, at most
// filters.scan_size octets of it. Both filter checks ask; the first builds, the other waits.
import type { MessageView } from '../context.ts';
import type { ScanMessage } from './types.ts';

const built = new WeakMap<MessageView, Promise<ScanMessage>>();

export function scanMessage(view: MessageView, scanSize: number): Promise<ScanMessage> {
  let p = built.get(view);
  if (!p) {
    p = build(view, scanSize);
    built.set(view, p);
  }
  return p;
}

async function build(view: MessageView, scanSize: number): Promise<ScanMessage> {
  const parts: Buffer[] = [];
  let got = 0;
  const bodySize = Math.max(0, view.size - view.bodyOffset);
  if (scanSize > 0 && bodySize > 0) {
    for await (const chunk of view.read(view.bodyOffset)) {
      const room = scanSize - got;
      parts.push(chunk.length > room ? chunk.subarray(0, room) : chunk);
      got += Math.min(chunk.length, room);
      if (got >= scanSize) break; // leaves the rest of a large message on disk, unread
    }
  }
  return {
    headers: view.headers,
    headersTruncated: view.headersTruncated,
    rawBody: parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts),
    bodyTruncated: bodySize > got,
    size: view.size,
    lines: view.lines,
  };
}

/** An empty message (no header, no body): a rule that matches it would match everything. */
export const EMPTY_MESSAGE: ScanMessage = { headers: [], headersTruncated: false, rawBody: Buffer.alloc(0), bodyTruncated: false, size: 0, lines: 0 };
