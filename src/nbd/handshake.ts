// The NBD fixed-newstyle handshake: greeting, STARTTLS, structured replies, metadata contexts, GO/INFO/LIST.
import { NbdProtocolError, NbdUnsupportedError } from './errors.js';
import {
  MAX_OPTION_REPLY, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS, NBD_FLAG_NO_ZEROES, NBD_IHAVEOPT, NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_MAGIC, NBD_MAX_STRING, NBD_OLDSTYLE_MAGIC, NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST, NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_REPLY_MAGIC, NBD_OPT_SET_META_CONTEXT, NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK, NBD_REP_ERR_TLS_REQD, NBD_REP_ERR_UNSUP, NBD_REP_FLAG_ERROR, NBD_REP_INFO,
  NBD_REP_META_CONTEXT, NBD_REP_SERVER, OPTION_ERROR_TEXT, OPTION_NAMES, OPTION_REPLY_HEADER_SIZE,
} from './protocol.js';
import { clientFlags, exportNameRequest, goRequest, metaContextRequest, optionRequest, readU64 } from './serializer.js';

/** What the handshake needs from a byte stream: exact reads and writes. */
export interface HandshakeIo {
  /** Resolves with exactly `n` bytes, or rejects (closed, timed out, aborted). */
  read(n: number): Promise<Buffer>;
  write(data: Buffer): void;
  /** Replaces the stream with TLS on top of it, after the server acknowledged STARTTLS. */
  startTls?(): Promise<void>;
}

export interface BlockSize {
  min: number;
  preferred: number;
  max: number;
}

export interface ExportInfo {
  exportName: string;
  size: number;
  /** Transmission flags (NBD_FLAG_*). */
  flags: number;
  /** Block size constraints; defaults (1, 4096, 32 MiB) when the server states none. */
  blockSize: BlockSize;
  /** True when the server sent NBD_INFO_BLOCK_SIZE. */
  blockSizeStated: boolean;
  description?: string;
  canonicalName?: string;
  structuredReplies: boolean;
  /** Negotiated metadata contexts: name → id. */
  metaContexts: Map<string, number>;
  tls: boolean;
}

export interface HandshakeOptions {
  exportName: string;
  /** Upgrade with NBD_OPT_STARTTLS first; refuse to go on in clear if the server cannot. */
  tls: boolean;
  /** Metadata contexts to negotiate (SET_META_CONTEXT) before GO. */
  metaContexts?: readonly string[];
  /** Where to describe the server in errors ("nbd+unix:///?socket=…"). */
  what: string;
}

const DEFAULT_BLOCK_SIZE: BlockSize = { min: 1, preferred: 4096, max: 32 * 1024 * 1024 };

interface OptionReply {
  type: number;
  data: Buffer;
}

function proto(message: string, what: string, hint?: string): NbdProtocolError {
  return new NbdProtocolError(`NBD handshake with ${what}: ${message}`, {
    hint: hint ?? 'check that the address points at an NBD server (qemu-nbd, QEMU) and look at its log',
  });
}

/** Reads the server greeting and answers with our client flags. */
export async function greet(io: HandshakeIo, what: string): Promise<void> {
  const g = await io.read(18);
  if (g.readBigUInt64BE(0) !== NBD_MAGIC) throw proto('not an NBD server (no NBDMAGIC greeting)', what);
  const second = g.readBigUInt64BE(8);
  if (second === NBD_OLDSTYLE_MAGIC) throw proto('server speaks the oldstyle protocol, which is not supported', what);
  if (second !== NBD_IHAVEOPT) throw proto('bad newstyle magic in greeting', what);
  const flags = g.readUInt16BE(16);
  if (!(flags & NBD_FLAG_FIXED_NEWSTYLE)) throw proto('server does not speak fixed-newstyle', what);
  io.write(clientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | (flags & NBD_FLAG_NO_ZEROES ? NBD_FLAG_C_NO_ZEROES : 0)));
  noZeroes.set(io, Boolean(flags & NBD_FLAG_NO_ZEROES));
}

const noZeroes = new WeakMap<HandshakeIo, boolean>();

async function readOptionReply(io: HandshakeIo, option: number, what: string): Promise<OptionReply> {
  const h = await io.read(OPTION_REPLY_HEADER_SIZE);
  if (h.readBigUInt64BE(0) !== NBD_OPT_REPLY_MAGIC) throw proto('bad option reply magic', what);
  const opt = h.readUInt32BE(8);
  if (opt !== option) throw proto(`reply to option ${opt} while waiting for ${OPTION_NAMES[option] ?? option}`, what);
  const type = h.readUInt32BE(12);
  const len = h.readUInt32BE(16);
  if (len > MAX_OPTION_REPLY) throw proto(`option reply of ${len} bytes to ${OPTION_NAMES[option]} (limit ${MAX_OPTION_REPLY})`, what);
  const data = len ? await io.read(len) : Buffer.alloc(0);
  return { type, data };
}

function optionError(option: number, reply: OptionReply, what: string, tls: boolean): Error {
  const text = OPTION_ERROR_TEXT[reply.type] ?? `error ${reply.type >>> 0}`;
  const msg = reply.data.length ? ` (server says: ${reply.data.toString('utf8')})` : '';
  if (reply.type === NBD_REP_ERR_TLS_REQD && !tls) {
    return new NbdProtocolError(`NBD server ${what} requires TLS${msg}`, {
      hint: 'use an nbds:// or nbds+unix:// URI with ?tls-certificates=DIR',
    });
  }
  return new NbdProtocolError(`NBD server ${what} refused ${OPTION_NAMES[option] ?? option}: ${text}${msg}`, {
    hint: 'check the export name and the server configuration',
  });
}

/** NBD_OPT_STARTTLS; the caller's io.startTls() then wraps the stream. Refuses to continue in clear. */
export async function startTls(io: HandshakeIo, what: string): Promise<void> {
  if (!io.startTls) throw new NbdUnsupportedError('TLS requested but this connection cannot upgrade to TLS');
  io.write(optionRequest(NBD_OPT_STARTTLS));
  const r = await readOptionReply(io, NBD_OPT_STARTTLS, what);
  if (r.type !== NBD_REP_ACK) {
    throw new NbdProtocolError(`NBD server ${what} does not offer TLS (${OPTION_ERROR_TEXT[r.type] ?? r.type}); refusing to send data in clear`, {
      hint: 'start the server with TLS credentials (qemu-nbd --tls-creds) or use an nbd:// URI without TLS',
    });
  }
  await io.startTls();
}

async function structuredReplies(io: HandshakeIo, what: string, tls: boolean): Promise<boolean> {
  io.write(optionRequest(NBD_OPT_STRUCTURED_REPLY));
  const r = await readOptionReply(io, NBD_OPT_STRUCTURED_REPLY, what);
  if (r.type === NBD_REP_ACK) return true;
  if (r.type === NBD_REP_ERR_TLS_REQD) throw optionError(NBD_OPT_STRUCTURED_REPLY, r, what, tls);
  if (r.type & NBD_REP_FLAG_ERROR) return false;
  throw proto(`unexpected reply type ${r.type} to NBD_OPT_STRUCTURED_REPLY`, what);
}

/** Collects NBD_REP_META_CONTEXT replies until ACK. */
async function metaContexts(
  io: HandshakeIo, option: number, exportName: string, queries: readonly string[], what: string, tls: boolean,
): Promise<Map<string, number>> {
  io.write(metaContextRequest(option, exportName, queries));
  const found = new Map<string, number>();
  for (;;) {
    const r = await readOptionReply(io, option, what);
    if (r.type === NBD_REP_ACK) return found;
    if (r.type & NBD_REP_FLAG_ERROR) throw optionError(option, r, what, tls);
    if (r.type !== NBD_REP_META_CONTEXT || r.data.length < 5) throw proto(`unexpected reply type ${r.type} to ${OPTION_NAMES[option]}`, what);
    found.set(r.data.toString('utf8', 4), r.data.readUInt32BE(0));
    if (found.size > 65536) throw proto('more than 65536 metadata contexts', what);
  }
}

/** NBD_OPT_GO or NBD_OPT_INFO: export size, flags and block sizes. */
async function goOrInfo(
  io: HandshakeIo, option: typeof NBD_OPT_GO | typeof NBD_OPT_INFO, exportName: string, what: string, tls: boolean,
): Promise<Pick<ExportInfo, 'size' | 'flags' | 'blockSize' | 'blockSizeStated' | 'description' | 'canonicalName'> | 'unsupported'> {
  io.write(goRequest(option, exportName, [NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION, NBD_INFO_NAME]));
  let size: number | undefined;
  let flags = 0;
  let blockSize = DEFAULT_BLOCK_SIZE;
  let blockSizeStated = false;
  let description: string | undefined;
  let canonicalName: string | undefined;
  for (;;) {
    const r = await readOptionReply(io, option, what);
    if (r.type === NBD_REP_ACK) break;
    if (r.type === NBD_REP_ERR_UNSUP) return 'unsupported';
    if (r.type & NBD_REP_FLAG_ERROR) throw optionError(option, r, what, tls);
    if (r.type !== NBD_REP_INFO || r.data.length < 2) throw proto(`unexpected reply type ${r.type} to ${OPTION_NAMES[option]}`, what);
    const info = r.data.readUInt16BE(0);
    const d = r.data;
    if (info === NBD_INFO_EXPORT) {
      if (d.length !== 12) throw proto(`NBD_INFO_EXPORT of ${d.length} bytes`, what);
      size = readU64(d, 2);
      flags = d.readUInt16BE(10);
    } else if (info === NBD_INFO_BLOCK_SIZE) {
      if (d.length !== 14) throw proto(`NBD_INFO_BLOCK_SIZE of ${d.length} bytes`, what);
      blockSize = { min: d.readUInt32BE(2), preferred: d.readUInt32BE(6), max: d.readUInt32BE(10) };
      blockSizeStated = true;
      if (blockSize.min < 1 || blockSize.preferred < blockSize.min || blockSize.max < blockSize.preferred) {
        throw proto(`inconsistent block sizes min ${blockSize.min}, preferred ${blockSize.preferred}, max ${blockSize.max}`, what);
      }
    } else if (info === NBD_INFO_DESCRIPTION) {
      description = d.toString('utf8', 2);
    } else if (info === NBD_INFO_NAME) {
      canonicalName = d.toString('utf8', 2);
    }
    // Unknown info types are ignored, as the protocol asks.
  }
  if (size === undefined) throw proto(`${OPTION_NAMES[option]} acknowledged without NBD_INFO_EXPORT`, what);
  if (size > Number.MAX_SAFE_INTEGER) throw proto(`export size ${size} is beyond 2^53`, what);
  return { size, flags, blockSize, blockSizeStated, description, canonicalName };
}

/** The pre-GO fallback: NBD_OPT_EXPORT_NAME ends option haggling with size and flags, no reply header. */
async function exportName(io: HandshakeIo, name: string, what: string): Promise<{ size: number; flags: number }> {
  io.write(exportNameRequest(NBD_OPT_EXPORT_NAME, name));
  const d = await io.read(10);
  if (!noZeroes.get(io)) await io.read(124);
  return { size: readU64(d, 0), flags: d.readUInt16BE(8) };
}

/** Full negotiation up to the transmission phase. */
export async function negotiate(io: HandshakeIo, opts: HandshakeOptions): Promise<ExportInfo> {
  await greet(io, opts.what);
  if (opts.tls) await startTls(io, opts.what);
  const structured = await structuredReplies(io, opts.what, opts.tls);
  let contexts = new Map<string, number>();
  const wanted = opts.metaContexts ?? [];
  if (wanted.length) {
    if (!structured) {
      throw new NbdUnsupportedError(`NBD server ${opts.what} has no structured replies, so no metadata contexts (${wanted.join(', ')})`);
    }
    contexts = await metaContexts(io, NBD_OPT_SET_META_CONTEXT, opts.exportName, wanted, opts.what, opts.tls);
    const missing = wanted.filter((c) => !contexts.has(c));
    if (missing.length) {
      throw new NbdUnsupportedError(`NBD export "${opts.exportName}" at ${opts.what} does not offer metadata context ${missing.map((m) => `"${m}"`).join(', ')}`, {
        hint: 'list what it offers with `virtcbt nbd info URI`; a dirty bitmap must be disabled and named in the export (qemu-nbd -B NAME, block-export-add bitmaps)',
      });
    }
  }
  const go = await goOrInfo(io, NBD_OPT_GO, opts.exportName, opts.what, opts.tls);
  if (go === 'unsupported') {
    if (wanted.length) throw new NbdUnsupportedError(`NBD server ${opts.what} lacks NBD_OPT_GO, needed with metadata contexts`);
    const e = await exportName(io, opts.exportName, opts.what);
    return {
      exportName: opts.exportName, size: e.size, flags: e.flags, blockSize: DEFAULT_BLOCK_SIZE, blockSizeStated: false,
      structuredReplies: structured, metaContexts: contexts, tls: opts.tls,
    };
  }
  if (!(go.flags & NBD_FLAG_HAS_FLAGS)) throw proto('transmission flags lack NBD_FLAG_HAS_FLAGS', opts.what);
  return { exportName: opts.exportName, ...go, structuredReplies: structured, metaContexts: contexts, tls: opts.tls };
}

export interface ExportListing {
  name: string;
  description: string;
}

export interface ServerDescription {
  tls: boolean;
  structuredReplies: boolean;
  export: ExportInfo;
  /** Every metadata context the export offers (LIST_META_CONTEXT without queries). */
  contexts: string[];
}

/** NBD_OPT_INFO + LIST_META_CONTEXT, then NBD_OPT_ABORT: what `nbd info` shows, without entering transmission. */
export async function describe(io: HandshakeIo, opts: Omit<HandshakeOptions, 'metaContexts'>): Promise<ServerDescription> {
  await greet(io, opts.what);
  if (opts.tls) await startTls(io, opts.what);
  const structured = await structuredReplies(io, opts.what, opts.tls);
  const contexts = structured
    ? [...(await metaContexts(io, NBD_OPT_LIST_META_CONTEXT, opts.exportName, [], opts.what, opts.tls)).keys()]
    : [];
  const info = await goOrInfo(io, NBD_OPT_INFO, opts.exportName, opts.what, opts.tls);
  if (info === 'unsupported') throw new NbdUnsupportedError(`NBD server ${opts.what} lacks NBD_OPT_INFO`);
  io.write(optionRequest(NBD_OPT_ABORT));
  return {
    tls: opts.tls, structuredReplies: structured, contexts,
    export: { exportName: opts.exportName, ...info, structuredReplies: structured, metaContexts: new Map(), tls: opts.tls },
  };
}

/** NBD_OPT_LIST, then NBD_OPT_ABORT. */
export async function listExports(io: HandshakeIo, opts: Pick<HandshakeOptions, 'tls' | 'what'>): Promise<ExportListing[]> {
  await greet(io, opts.what);
  if (opts.tls) await startTls(io, opts.what);
  io.write(optionRequest(NBD_OPT_LIST));
  const out: ExportListing[] = [];
  for (;;) {
    const r = await readOptionReply(io, NBD_OPT_LIST, opts.what);
    if (r.type === NBD_REP_ACK) break;
    if (r.type & NBD_REP_FLAG_ERROR) throw optionError(NBD_OPT_LIST, r, opts.what, opts.tls);
    if (r.type !== NBD_REP_SERVER || r.data.length < 4) throw proto(`unexpected reply type ${r.type} to NBD_OPT_LIST`, opts.what);
    const n = r.data.readUInt32BE(0);
    if (n > NBD_MAX_STRING || 4 + n > r.data.length) throw proto('bad export name length in NBD_OPT_LIST reply', opts.what);
    out.push({ name: r.data.toString('utf8', 4, 4 + n), description: r.data.toString('utf8', 4 + n) });
    if (out.length > 65536) throw proto('more than 65536 exports listed', opts.what);
  }
  io.write(optionRequest(NBD_OPT_ABORT));
  return out;
}
