// Checksums of on-disk structures: CRC32 (GPT), CRC32C (ext4 metadata_csum), CRC16 (ext4 gdt_csum).

function table(poly: number, bits: 16 | 32): Uint32Array {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ poly : c >>> 1;
    t[n] = bits === 32 ? c >>> 0 : c & 0xffff;
  }
  return t;
}

const CRC32 = table(0xedb88320, 32);
const CRC32C = table(0x82f63b78, 32);

/**
 * CRC32C eight bytes at a time ("slicing by 8"): SLICE[k][b] is the CRC of byte b followed by k
 * zero bytes, so eight table lookups replace eight dependent steps. ext4 checksums every inode,
 * extent block and directory block it reads; a scan's owner search reads every inode.
 */
const SLICE: Uint32Array[] = [CRC32C];
for (let k = 1; k < 8; k++) {
  const prev = SLICE[k - 1]!;
  SLICE.push(Uint32Array.from({ length: 256 }, (_, b) => (CRC32C[prev[b]! & 0xff]! ^ (prev[b]! >>> 8)) >>> 0));
}
const [S0, S1, S2, S3, S4, S5, S6, S7] = SLICE as [Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array];
const CRC16 = table(0xa001, 16);

/** Raw (not inverted) reflected CRC32C update, as ext4's ext4_chksum() chains it: seed in, state out. */
export function crc32cRaw(state: number, data: Uint8Array, start = 0, end = data.length): number {
  let c = state >>> 0;
  let i = start;
  for (; i + 8 <= end; i += 8) {
    const lo = c ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24));
    c = S7[lo & 0xff]! ^ S6[(lo >>> 8) & 0xff]! ^ S5[(lo >>> 16) & 0xff]! ^ S4[lo >>> 24]!
      ^ S3[data[i + 4]!]! ^ S2[data[i + 5]!]! ^ S1[data[i + 6]!]! ^ S0[data[i + 7]!]!;
  }
  for (; i < end; i++) c = CRC32C[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

/** The standard CRC32 (zlib, GPT). */
export function crc32(data: Uint8Array, start = 0, end = data.length): number {
  let c = 0xffffffff;
  for (let i = start; i < end; i++) c = CRC32[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** CRC16 (ANSI, reflected) update, as e2fsprogs' ext2fs_crc16 for gdt_csum. */
export function crc16(state: number, data: Uint8Array, start = 0, end = data.length): number {
  let c = state & 0xffff;
  for (let i = start; i < end; i++) c = (CRC16[(c ^ data[i]) & 0xff] ^ (c >>> 8)) & 0xffff;
  return c;
}
