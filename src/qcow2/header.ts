// Reading the header of an existing qcow2 image (QEMU's docs/interop/qcow2.txt): magic, version, virtual size, the
// backing file name and the incompatible features (an external data file among them), from the first bytes of the
// file, without QEMU. Enough to tell a present, well-formed image from a missing, truncated or foreign one, and one
// whose data QEMU would read from another file; the image's tables are not read.
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { HEADER_LENGTH, MAX_BACKING_NAME, QCOW2_MAGIC } from './format.js';

export interface Qcow2Header {
  version: number;
  clusterBits: number;
  /** Virtual size in bytes. */
  size: number;
  /** The backing file name as stored (null: no backing file). */
  backing: string | null;
  /** The incompatible feature bits (version 3; 0 for version 2): QEMU refuses to open an image with a bit it does not know. */
  incompatibleFeatures: bigint;
  /** Incompatible feature bit 2: the guest data lives in another file, not in this one. */
  externalDataFile: boolean;
  /** That file's name, from the header extension that stores it (null when absent or unreadable). */
  dataFileName: string | null;
}

/** Incompatible feature bits QEMU 7.2 knows: dirty, corrupt, external data file, compression type, extended L2. */
export const KNOWN_INCOMPATIBLE = 0b11111n;
const INCOMPAT_DATA_FILE = 1n << 2n;
/** Header extension: the external data file's name. */
const EXT_DATA_FILE = 0x44415441;

/** The file is not a qcow2 image virtcbt can read, with what is wrong in `what` (e.g. "has no qcow2 magic"). */
export class Qcow2HeaderError extends Error {
  constructor(readonly what: string) {
    super(what);
  }
}

/** Header fields up to and including the virtual size (version 2 header: 72 bytes; version 3: at least 104). */
const FIXED = 32;
const V2_HEADER = 72;
/** Read at first: the header, its extensions and, as virtcbt and qemu-img write them, the backing file name. */
const FIRST_READ = 4096;

/**
 * Parses the header in `buf` (the file's first bytes). `more(offset, length)` reads a further range when the backing
 * file name lies beyond `buf`.
 */
export async function decodeQcow2Header(buf: Buffer, more: (offset: number, length: number) => Promise<Buffer>): Promise<Qcow2Header> {
  if (buf.length < FIXED) throw new Qcow2HeaderError(`is ${buf.length} bytes long, shorter than a qcow2 header`);
  if (buf.readUInt32BE(0) !== QCOW2_MAGIC) throw new Qcow2HeaderError('has no qcow2 magic (not a qcow2 image)');
  const version = buf.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw new Qcow2HeaderError(`has qcow2 version ${version} (only 2 and 3 exist)`);
  if (buf.length < V2_HEADER) throw new Qcow2HeaderError(`has a truncated qcow2 header (${buf.length} bytes)`);
  const backingOffset = buf.readBigUInt64BE(8);
  const backingSize = buf.readUInt32BE(16);
  const clusterBits = buf.readUInt32BE(20);
  const size = buf.readBigUInt64BE(24);
  // QEMU's own limits: clusters of 512 B to 2 MiB, a backing name in the first cluster of at most 1023 bytes.
  if (clusterBits < 9 || clusterBits > 21) throw new Qcow2HeaderError(`has an impossible cluster size (2^${clusterBits} bytes)`);
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new Qcow2HeaderError(`has an impossible virtual size (${size} bytes)`);
  let backing: string | null = null;
  if (backingOffset !== 0n) {
    const cluster = 2 ** clusterBits;
    if (backingSize === 0 || backingSize > MAX_BACKING_NAME || backingOffset + BigInt(backingSize) > BigInt(cluster)) {
      throw new Qcow2HeaderError(`has a bad backing file name field (${backingSize} bytes at offset ${backingOffset})`);
    }
    const at = Number(backingOffset);
    const name = at + backingSize <= buf.length ? buf.subarray(at, at + backingSize) : await more(at, backingSize);
    if (name.length < backingSize) throw new Qcow2HeaderError('is truncated inside its backing file name');
    backing = name.toString('utf8');
  }
  let incompatibleFeatures = 0n;
  let dataFileName: string | null = null;
  if (version === 3) {
    if (buf.length < HEADER_LENGTH) throw new Qcow2HeaderError(`has a truncated qcow2 header (${buf.length} bytes)`);
    incompatibleFeatures = buf.readBigUInt64BE(72);
    const headerLength = buf.readUInt32BE(100);
    if (headerLength < HEADER_LENGTH || headerLength > 2 ** clusterBits) throw new Qcow2HeaderError(`has an impossible header length (${headerLength} bytes)`);
    if (incompatibleFeatures & INCOMPAT_DATA_FILE) dataFileName = await extensionText(buf, more, headerLength, 2 ** clusterBits, EXT_DATA_FILE);
  }
  return { version, clusterBits, size: Number(size), backing, incompatibleFeatures, externalDataFile: (incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n, dataFileName };
}

/** The text of header extension `type` (the extensions follow the header, inside the first cluster), or null. */
async function extensionText(buf: Buffer, more: (offset: number, length: number) => Promise<Buffer>, from: number, cluster: number, type: number): Promise<string | null> {
  const bytes = async (at: number, length: number) => (at + length <= buf.length ? buf.subarray(at, at + length) : await more(at, length));
  for (let at = from; at + 8 <= cluster;) {
    const head = await bytes(at, 8);
    if (head.length < 8) return null;
    const t = head.readUInt32BE(0);
    const length = head.readUInt32BE(4);
    if (t === 0 || at + 8 + length > cluster) return null;
    if (t === type) {
      const text = await bytes(at + 8, length);
      return text.length === length ? text.toString('utf8') : null;
    }
    at += 8 + Math.ceil(length / 8) * 8;
  }
  return null;
}

/**
 * Reads the header of the image at `path`, never through a symlink (O_NOFOLLOW) and never waiting on a FIFO
 * (O_NONBLOCK); anything but a regular file is refused. Costs one or two small reads.
 */
export async function readQcow2Header(path: string): Promise<Qcow2Header> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    if (!(await fh.stat()).isFile()) throw new Qcow2HeaderError('is not a regular file');
    const read = async (offset: number, length: number) => {
      const b = Buffer.alloc(length);
      const { bytesRead } = await fh.read(b, 0, length, offset);
      return b.subarray(0, bytesRead);
    };
    return await decodeQcow2Header(await read(0, FIRST_READ), read);
  } finally {
    await fh.close();
  }
}
