// Guest-agent wire format as pure code: requests, replies, and finding the sync reply behind its 0xFF delimiter.
import { randomInt } from 'node:crypto';
import { parseJsonLine } from '../qmp/index.js';
import { AgentProtocolError } from './errors.js';

/**
 * Sent before guest-sync-delimited: a byte that is never valid UTF-8 makes the agent drop any
 * half-read request left by an earlier client, and the agent puts the same byte before its sync
 * reply so the client can find where the fresh stream starts.
 */
export const SYNC_DELIMITER = 0xff;

export type AgentReply = { kind: 'return'; id?: unknown; value: unknown } | { kind: 'error'; id?: unknown; error: { class?: string; desc: string } };

/** A random sync id: the reply to an earlier, abandoned sync can never match it. */
export function newSyncId(): number {
  return randomInt(1, 2 ** 47);
}

/** The bytes that resync the agent: the delimiter, then guest-sync-delimited {id}. */
export function encodeSync(id: number): Buffer {
  return Buffer.concat([Buffer.from([SYNC_DELIMITER]), encodeAgentCommand('guest-sync-delimited', { id })]);
}

export function encodeAgentCommand(command: string, args?: Record<string, unknown>, id?: string | number): Buffer {
  const msg: Record<string, unknown> = { execute: command };
  if (args !== undefined) msg.arguments = args;
  if (id !== undefined) msg.id = id;
  return Buffer.from(JSON.stringify(msg) + '\n', 'utf8');
}

/**
 * True if `line` is the reply to guest-sync-delimited {id}: the text after its last 0xFF byte
 * parses to `{"return": id}`. Anything else (stale replies, the agent's complaint about the
 * delimiter, a previous client's leftovers) is not, and is dropped by the caller.
 */
export function isSyncReply(line: Uint8Array, id: number): boolean {
  const at = Buffer.from(line.buffer, line.byteOffset, line.byteLength).lastIndexOf(SYNC_DELIMITER);
  if (at < 0) return false;
  try {
    const v = parseJsonLine(line.subarray(at + 1));
    return typeof v === 'object' && v !== null && (v as { return?: unknown }).return === id;
  } catch {
    return false;
  }
}

/** Parses one reply line outside a sync (a stray delimiter in front is tolerated). */
export function parseAgentReply(line: Uint8Array): AgentReply | undefined {
  let start = 0;
  while (start < line.length && line[start] === SYNC_DELIMITER) start++;
  let v: unknown;
  try {
    v = parseJsonLine(line.subarray(start));
  } catch (err) {
    throw new AgentProtocolError(err instanceof Error ? err.message.replace(/^peer/, 'guest agent') : String(err), { cause: err });
  }
  if (v === undefined) return undefined;
  return toReply(v);
}

/** Sorts a parsed agent message into return / error. */
export function toReply(v: unknown): AgentReply {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new AgentProtocolError(`guest agent sent ${JSON.stringify(v)?.slice(0, 120)}, not a reply object`);
  }
  const o = v as Record<string, unknown>;
  if ('return' in o) return o.id === undefined ? { kind: 'return', value: o.return } : { kind: 'return', id: o.id, value: o.return };
  const e = o.error;
  if (typeof e === 'object' && e !== null && typeof (e as { desc?: unknown }).desc === 'string') {
    const cls = (e as { class?: unknown }).class;
    const error = { class: typeof cls === 'string' ? cls : undefined, desc: (e as { desc: string }).desc };
    return o.id === undefined ? { kind: 'error', error } : { kind: 'error', id: o.id, error };
  }
  throw new AgentProtocolError(`guest agent sent a message that is neither return nor error: ${JSON.stringify(v).slice(0, 120)}`);
}
