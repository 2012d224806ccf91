// The qcow2 v3 on-disk structures virtcbt writes (QEMU's docs/interop/qcow2.txt): the header with
// its extensions and backing file name, and the layout of the tables behind the data. Pure code.

export const QCOW2_MAGIC = 0x514649fb;
/** Header length of a version 3 image without optional fields (a multiple of 8, as the spec asks). */
export const HEADER_LENGTH = 104;
/** Header extension: the backing file's format name. */
export const EXT_BACKING_FORMAT = 0xe2792aca;
/** Refcounts of 16 bits (refcount_order 4), QEMU's default. */
export const REFCOUNT_ORDER = 4;
/** L1 / L2 entry bit 63: the table or cluster has refcount exactly one (QEMU's check insists on it). */
export const FLAG_COPIED = 2n ** 63n;
/** Standard cluster descriptor bit 0: the cluster reads as zeroes (not from the backing file). */
export const FLAG_ZERO = 1n;
/** qemu-img's limit for a backing file name; it must fit in the first cluster after the header. */
export const MAX_BACKING_NAME = 1023;

export interface ImageGeometry {
  /** Virtual size in bytes. */
  size: number;
  clusterBits: number;
}

export function clusterSize(g: ImageGeometry): number {
  return 2 ** g.clusterBits;
}

/** Entries per L2 table (one cluster of 8-byte entries). */
export function l2Entries(g: ImageGeometry): number {
  return clusterSize(g) / 8;
}

/** L1 entries needed to map the whole virtual size. */
export function l1Size(g: ImageGeometry): number {
  const perL2 = l2Entries(g) * clusterSize(g);
  return Math.max(1, Math.ceil(g.size / perL2));
}

export interface HeaderFields extends ImageGeometry {
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  backing?: { name: string; format: string };
}

/**
 * The first cluster: header, the backing format extension when there is a backing file, the end
 * of extensions, then the backing file name (not NUL-terminated).
 */
export function encodeHeader(h: HeaderFields): Buffer {
  const cs = clusterSize(h);
  const buf = Buffer.alloc(cs);
  buf.writeUInt32BE(QCOW2_MAGIC, 0);
  buf.writeUInt32BE(3, 4);
  buf.writeUInt32BE(h.clusterBits, 20);
  buf.writeBigUInt64BE(BigInt(h.size), 24);
  buf.writeUInt32BE(0, 32); // no encryption
  buf.writeUInt32BE(l1Size(h), 36);
  buf.writeBigUInt64BE(BigInt(h.l1TableOffset), 40);
  buf.writeBigUInt64BE(BigInt(h.refcountTableOffset), 48);
  buf.writeUInt32BE(h.refcountTableClusters, 56);
  // nb_snapshots, snapshots_offset, incompatible/compatible/autoclear features: all zero.
  buf.writeUInt32BE(REFCOUNT_ORDER, 96);
  buf.writeUInt32BE(HEADER_LENGTH, 100);
  let pos = HEADER_LENGTH;
  if (h.backing) {
    const fmt = Buffer.from(h.backing.format, 'utf8');
    buf.writeUInt32BE(EXT_BACKING_FORMAT, pos);
    buf.writeUInt32BE(fmt.length, pos + 4);
    fmt.copy(buf, pos + 8);
    pos += 8 + Math.ceil(fmt.length / 8) * 8;
  }
  pos += 8; // end of the extension area: type 0, length 0 (already zero)
  if (h.backing) {
    const name = Buffer.from(h.backing.name, 'utf8');
    if (name.length === 0 || name.length > MAX_BACKING_NAME || pos + name.length > cs) {
      throw new RangeError(`backing file name of ${name.length} bytes does not fit a qcow2 header`);
    }
    name.copy(buf, pos);
    buf.writeBigUInt64BE(BigInt(pos), 8);
    buf.writeUInt32BE(name.length, 16);
  }
  return buf;
}

export interface MetadataLayout {
  /** Host cluster indexes (cluster 0 is the header). */
  l2Start: number;
  l1Start: number;
  l1Clusters: number;
  refcountTableStart: number;
  refcountTableClusters: number;
  refcountBlockStart: number;
  refcountBlocks: number;
  /** Clusters in the file, all with refcount one. */
  totalClusters: number;
}

/**
 * Where the tables go when `firstFree` clusters are in use (header and data) and `l2Tables` L2
 * tables are needed: L2 tables, the L1 table, the refcount table, then the refcount blocks, which
 * must count themselves too (hence the loop).
 */
export function layoutMetadata(g: ImageGeometry, firstFree: number, l2Tables: number): MetadataLayout {
  const cs = clusterSize(g);
  const perBlock = (cs * 8) / 2 ** REFCOUNT_ORDER;
  const l1Clusters = Math.ceil((l1Size(g) * 8) / cs);
  const fixed = firstFree + l2Tables + l1Clusters;
  let blocks = 1;
  let tableClusters = 1;
  for (;;) {
    const total = fixed + tableClusters + blocks;
    const needBlocks = Math.ceil(total / perBlock);
    const needTable = Math.ceil((needBlocks * 8) / cs);
    if (needBlocks <= blocks && needTable <= tableClusters) break;
    blocks = Math.max(blocks, needBlocks);
    tableClusters = Math.max(tableClusters, needTable);
  }
  const l2Start = firstFree;
  const l1Start = l2Start + l2Tables;
  const refcountTableStart = l1Start + l1Clusters;
  const refcountBlockStart = refcountTableStart + tableClusters;
  return {
    l2Start, l1Start, l1Clusters, refcountTableStart, refcountTableClusters: tableClusters,
    refcountBlockStart, refcountBlocks: blocks, totalClusters: refcountBlockStart + blocks,
  };
}

/** The refcount table and blocks of `layout`: every cluster of the file counted once. */
export function encodeRefcounts(g: ImageGeometry, layout: MetadataLayout): { table: Buffer; blocks: Buffer } {
  const cs = clusterSize(g);
  const perBlock = (cs * 8) / 2 ** REFCOUNT_ORDER;
  const table = Buffer.alloc(layout.refcountTableClusters * cs);
  const blocks = Buffer.alloc(layout.refcountBlocks * cs);
  for (let b = 0; b < layout.refcountBlocks; b++) {
    table.writeBigUInt64BE(BigInt((layout.refcountBlockStart + b) * cs), b * 8);
  }
  for (let c = 0; c < layout.totalClusters; c++) {
    const b = Math.floor(c / perBlock);
    blocks.writeUInt16BE(1, b * cs + (c % perBlock) * 2);
  }
  return { table, blocks };
}
