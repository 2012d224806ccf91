// NBD wire constants (magics, options, commands, reply types, flags), as the NBD protocol document numbers them.

/** "NBDMAGIC": the first 8 bytes a server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": follows NBDMAGIC in the newstyle handshake and starts every option request. */
export const NBD_IHAVEOPT = 0x49484156454f5054n;
/** Oldstyle servers send this instead of IHAVEOPT; we do not speak oldstyle (QEMU dropped it too). */
export const NBD_OLDSTYLE_MAGIC = 0x00420281861253n;
/** Starts every option reply. */
export const NBD_OPT_REPLY_MAGIC = 0x3e889045565a9n;

/** Transmission request header magic (28-byte header). */
export const NBD_REQUEST_MAGIC = 0x25609513;
/** Simple reply header magic (16-byte header). */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
/** Structured reply chunk header magic (20-byte header). */
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_HEADER_SIZE = 16;
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
export const OPTION_REPLY_HEADER_SIZE = 20;

// Handshake flags (server → client, 16 bits).
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
/** Server will not send the 124 zero bytes after NBD_OPT_EXPORT_NAME's reply. */
export const NBD_FLAG_NO_ZEROES = 1 << 1;

// Client flags (client → server, 32 bits).
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Options.
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

export const OPTION_NAMES: Record<number, string> = {
  1: 'NBD_OPT_EXPORT_NAME', 2: 'NBD_OPT_ABORT', 3: 'NBD_OPT_LIST', 5: 'NBD_OPT_STARTTLS',
  6: 'NBD_OPT_INFO', 7: 'NBD_OPT_GO', 8: 'NBD_OPT_STRUCTURED_REPLY',
  9: 'NBD_OPT_LIST_META_CONTEXT', 10: 'NBD_OPT_SET_META_CONTEXT',
};

// Option reply types. Bit 31 marks an error.
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = 0x80000001;
export const NBD_REP_ERR_POLICY = 0x80000002;
export const NBD_REP_ERR_INVALID = 0x80000003;
export const NBD_REP_ERR_PLATFORM = 0x80000004;
export const NBD_REP_ERR_TLS_REQD = 0x80000005;
export const NBD_REP_ERR_UNKNOWN = 0x80000006;
export const NBD_REP_ERR_SHUTDOWN = 0x80000007;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = 0x80000008;
export const NBD_REP_ERR_TOO_BIG = 0x80000009;

export const OPTION_ERROR_TEXT: Record<number, string> = {
  [NBD_REP_ERR_UNSUP]: 'option not supported by the server',
  [NBD_REP_ERR_POLICY]: 'refused by server policy',
  [NBD_REP_ERR_INVALID]: 'invalid option request',
  [NBD_REP_ERR_PLATFORM]: 'not supported on the server platform',
  [NBD_REP_ERR_TLS_REQD]: 'server requires TLS',
  [NBD_REP_ERR_UNKNOWN]: 'export not known to the server',
  [NBD_REP_ERR_SHUTDOWN]: 'server is shutting down',
  [NBD_REP_ERR_BLOCK_SIZE_REQD]: 'server requires block size negotiation',
  [NBD_REP_ERR_TOO_BIG]: 'request too big',
};

// NBD_INFO_* items inside NBD_REP_INFO (and requested by NBD_OPT_INFO/GO).
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// Transmission flags (16 bits, sent with the export size).
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
/** Writes flushed on one connection are visible on all: several connections may be used. */
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// Commands.
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

export const COMMAND_NAMES: Record<number, string> = {
  0: 'READ', 1: 'WRITE', 2: 'DISC', 3: 'FLUSH', 4: 'TRIM', 5: 'CACHE', 6: 'WRITE_ZEROES', 7: 'BLOCK_STATUS',
};

// Command flags (16 bits).
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
/** Don't fragment: the READ reply must be one data chunk (we never ask for it). */
export const NBD_CMD_FLAG_DF = 1 << 2;
/** BLOCK_STATUS: return only one extent. */
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured reply flags and chunk types. Bit 15 of the type marks an error chunk.
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR_BIT = 1 << 15;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

// Errno values on the wire (the protocol fixes them; they are not the host's errno).
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

export const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM (operation not permitted)', 5: 'EIO (input/output error)', 12: 'ENOMEM (out of memory)',
  22: 'EINVAL (invalid argument)', 28: 'ENOSPC (no space left)', 75: 'EOVERFLOW (value too large)',
  95: 'ENOTSUP (not supported)', 108: 'ESHUTDOWN (server shutting down)',
};

// base:allocation extent flags.
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;
// qemu:dirty-bitmap:NAME extent flags.
export const NBD_STATE_DIRTY = 1 << 0;

export const CONTEXT_BASE_ALLOCATION = 'base:allocation';
export const CONTEXT_ALLOCATION_DEPTH = 'qemu:allocation-depth';
export const CONTEXT_DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';

/** Longest export name or metadata context name the protocol allows (bytes). */
export const NBD_MAX_STRING = 4096;
/**
 * Largest option reply payload we accept. Real replies are a few names of at most 4 KiB;
 * anything bigger is a broken or hostile server, and we refuse rather than allocate it.
 */
export const MAX_OPTION_REPLY = 64 * 1024;
/**
 * Largest BLOCK_STATUS chunk we accept: QEMU sends at most 128 Ki descriptors (1 MiB) per
 * chunk; 4 MiB leaves room for other servers and bounds what a bogus length can cost.
 */
export const MAX_BLOCK_STATUS_CHUNK = 4 * 1024 * 1024;
/** Largest error message in an error chunk (the protocol limits strings to 4096 bytes). */
export const MAX_ERROR_MESSAGE = NBD_MAX_STRING;
/**
 * Read/write payload limit when the server states none: the protocol document's advice is that
 * clients stay at or below 32 MiB unless told otherwise.
 */
export const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;

export function describeErrno(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}
