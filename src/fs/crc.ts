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
const CRC16 = table(0xa001, 16);

/** Raw (not inverted) reflected CRC32C update, as ext4's ext4_chksum() chains it: seed in, state out. */
export function crc32cRaw(state: number, data: Uint8Array, start = 0, end = data.length): number {
  let c = state >>> 0;
  for (let i = start; i < end; i++) c = CRC32C[(c ^ data[i]) & 0xff] ^ (c >>> 8);
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
