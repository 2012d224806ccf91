// The owner index of one ext filesystem: which inode owns which block, and a fingerprint of every
// in-use inode, kept by the scanner host between scans. ext4 has no reverse map, so without it an
// incremental scan reads every in-use inode table to find the owners of the changed blocks (256
// bytes per file, whatever changed). With it, a scan reads only what the changed extents name:
// changed inode-table slots, changed inode bitmaps, and the inodes owning changed mapping blocks;
// what it reads grows with the change, not with the filesystem.
//
// The index is only as good as the changed extents it is brought forward with: the caller keeps
// it for exactly the snapshot it describes (the hypervisor's token for its consumer position).
import { createHash } from 'node:crypto';
import { firstEndingAfter, hitTest, intersect, merge, subtract, type Extent } from '../../extent/index.js';
import { mapInode } from './blockmap.js';
import { type BlockOwner, type ExtFilesystem, type Ownership } from './filesystem.js';
import { BG_INODE_UNINIT } from './groups.js';
import type { GranuleDigests } from './granule-digests.js';
import type { Inode } from './inode.js';
import { INCOMPAT } from './superblock.js';
import { ByteReader, ByteWriter } from '../../util/byte-fields.js';

interface Entry {
  /** The slot's digest with its access time and checksum left out (fingerprint). */
  fp: string;
  /** Owned bytes as [offset, length, ...]: data runs, then mapping and attribute blocks. */
  runs: number[];
  /** Where in runs the mapping and attribute blocks begin. */
  meta: number;
}

/** Rough memory per indexed inode and per owned run, for the keeper's budget. */
const ENTRY_BYTES = 160;
const RUN_BYTES = 40;
const DIGEST_BYTES = 60;

/**
 * The slot's bytes without what changes when nothing that matters did: the access time (a read
 * of the file) and the checksums over it. Fields past the inode's extra size are in-inode extended
 * attributes (inline data continues there), so they are left in.
 */
function fingerprint(raw: Buffer, inodeSize: number): string {
  const b = Buffer.from(raw.subarray(0, inodeSize));
  b.fill(0, 8, 12); // i_atime
  b.fill(0, 124, 126); // i_checksum_lo
  if (inodeSize > 128) {
    const extra = b.readUInt16LE(128);
    if (extra >= 4) b.fill(0, 130, 132); // i_checksum_hi
    if (extra >= 16) b.fill(0, 140, 144); // i_atime_extra
  }
  return createHash('sha256').update(b).digest().toString('latin1', 0, 16);
}

async function entryOf(fs: ExtFilesystem, inode: Inode, raw: Buffer): Promise<Entry> {
  const bs = fs.sb.blockSize;
  const m = await mapInode(fs.sb, fs.disk, inode);
  const runs: number[] = [];
  for (const r of m.data) runs.push(r.physical * bs, r.count * bs);
  const meta = runs.length;
  for (const r of m.meta) runs.push(r.offset * bs, r.length * bs);
  return { fp: fingerprint(raw, fs.sb.inodeSize), runs, meta };
}

const sameRuns = (a: number[], b: number[]) => a.length === b.length && a.every((v, i) => v === b[i]);

function runsHit(runs: number[], hits: (start: number, end: number) => boolean, from = 0): boolean {
  for (let i = from; i < runs.length; i += 2) if (hits(runs[i]!, runs[i]! + runs[i + 1]!)) return true;
  return false;
}

/** A group's inode bitmap as it counts: bits past ipg - itable_unused cleared (never used). */
function effectiveBitmap(bitmap: Buffer, limit: number, ipg: number): Buffer {
  const out = Buffer.alloc(Math.ceil(ipg / 8));
  if (limit <= 0) return out;
  bitmap.copy(out, 0, 0, Math.min(out.length, Math.ceil(limit / 8)));
  for (let idx = limit; idx < Math.min(ipg, Math.ceil(limit / 8) * 8); idx++) out[idx >> 3]! &= ~(1 << (idx & 7));
  return out;
}

const bit = (b: Buffer | undefined, idx: number) => b !== undefined && ((b[idx >> 3]! >> (idx & 7)) & 1) === 1;

/** A group's limit on inodes in use: -1 when its inodes were never initialised, else ipg - itable_unused. */
function groupLimit(fs: ExtFilesystem, g: number): number {
  const gd = fs.groups[g]!;
  return gd.flags & BG_INODE_UNINIT ? -1 : Math.max(0, fs.sb.inodesPerGroup - gd.itableUnused);
}

function clipped(fs: ExtFilesystem, extents: readonly Extent[]): Extent[] {
  return merge(intersect(merge(extents), [{ offset: 0, length: fs.byteLength }]));
}

/**
 * An index would take more memory than it may (OwnerIndex.build/update's maxBytes): the caller reads
 * the inode tables instead. A guest's descriptors can understate its inodes in use, so the bound is
 * checked while the index grows, not only estimated before.
 */
export class OwnerIndexTooLarge extends Error {
  constructor(maxBytes: number) {
    super(`the owner index would take more than ${maxBytes} bytes`);
  }
}

const FILE_MAGIC = 'VCBTOIX1';

const entryBytes = (e: Entry) => ENTRY_BYTES + (e.runs.length / 2) * RUN_BYTES;

export class OwnerIndex {
  // The reverse map: every owned run, sorted by start; reach[i] is the furthest end of runs 0..i,
  // so the runs meeting a range are found by one binary search even where runs overlap (a shared
  // extended attribute block, or a damaged filesystem).
  /** Per regular file scanned in whole since its content last changed: its granule digests (granule-digests.ts). */
  private readonly digests = new Map<number, GranuleDigests>();
  private starts = new Float64Array(0);
  private ends = new Float64Array(0);
  private owners = new Uint32Array(0);
  private reach = new Float64Array(0);

  private constructor(
    /** What the index was built for (OwnerIndex.geometryOf): another geometry takes a new index. */
    readonly geometry: string,
    private readonly entries: Map<number, Entry>,
    /** Per group, the effective inode bitmap (effectiveBitmap) and limit (groupLimit) as indexed. */
    private readonly bitmaps: Map<number, Buffer>,
    private readonly limits: Int32Array,
  ) {
    this.reindex(new Map(entries));
  }

  /**
   * The filesystem's identity and layout: its UUID and checksum seed, sizes, and where each group's
   * inode bitmap and table lie. A resize or a new mkfs gives another geometry.
   */
  static geometryOf(fs: ExtFilesystem): string {
    const { sb } = fs;
    const h = createHash('sha256').update(sb.uuid);
    // Not needs_recovery: it comes and goes with every snapshot taken without the guest's freeze.
    h.update(JSON.stringify([sb.csumSeed, sb.blockSize, sb.blocksCount, sb.inodesCount, sb.inodesPerGroup, sb.inodeSize, sb.firstIno, sb.incompat & ~INCOMPAT.needs_recovery, sb.roCompat]));
    for (const gd of fs.groups) h.update(`${gd.inodeBitmap},${gd.inodeTable};`);
    return h.digest('hex');
  }

  /** Memory an index of this filesystem would take, from the counts of inodes in use (before building one). */
  static estimateBytes(fs: ExtFilesystem): number {
    let inUse = 0;
    for (const gd of fs.groups) if (!(gd.flags & BG_INODE_UNINIT)) inUse += Math.max(0, fs.sb.inodesPerGroup - gd.freeInodes);
    return inUse * (ENTRY_BYTES + 2 * RUN_BYTES) + fs.groups.length * Math.ceil(fs.sb.inodesPerGroup / 8);
  }

  /** Memory this index takes, roughly. */
  get bytes(): number {
    let b = 0;
    for (const m of this.bitmaps.values()) b += m.length;
    for (const d of this.digests.values()) b += d.size * DIGEST_BYTES;
    return this.entries.size * ENTRY_BYTES + this.starts.length * RUN_BYTES + b;
  }

  /**
   * Records a regular file's granule digests as a scan read it in whole at this index's state, or
   * (undefined) forgets them: a file not read in whole, or whose inode changed, has none.
   */
  setDigests(ino: number, digests: GranuleDigests | undefined): void {
    if (digests && this.entries.has(ino)) this.digests.set(ino, digests);
    else this.digests.delete(ino);
  }

  digestsOf(ino: number): GranuleDigests | undefined {
    return this.digests.get(ino);
  }

  /**
   * Reads every in-use inode (ExtFilesystem.inodeTables) and maps it, and answers `extents`'
   * ownership from the same pass. Any inode that does not parse or map fails it (FilesystemError):
   * an index with a hole would miss that inode's blocks for good. `signal` stops it between batches.
   */
  static async build(fs: ExtFilesystem, extents: readonly Extent[], opts: { signal?: AbortSignal; maxBytes?: number } = {}): Promise<{ index: OwnerIndex; ownership: Ownership }> {
    const { signal, maxBytes = Infinity } = opts;
    let bytes = 0;
    const { sb } = fs;
    const isz = sb.inodeSize;
    const ipg = sb.inodesPerGroup;
    const q = clipped(fs, extents);
    const hits = hitTest(q);
    const entries = new Map<number, Entry>();
    const parsed = new Map<number, { inode: Inode; slotHit: boolean }>();
    for await (const { g, i0, n, bitmap, tableAt, table } of fs.inodeTables()) {
      signal?.throwIfAborted();
      const limit = groupLimit(fs, g);
      for (let k = 0; k < n; k++) {
        const idx = i0 + k;
        if (idx >= limit || !bit(bitmap, idx)) continue;
        const raw = table.subarray(k * isz, (k + 1) * isz);
        if (raw.readUInt16LE(0) === 0) continue;
        const ino = g * ipg + idx + 1;
        const inode = fs.parse(ino, raw);
        const entry = await entryOf(fs, inode, raw);
        const { runs } = entry;
        entries.set(ino, entry);
        bytes += entryBytes(entry);
        if (bytes > maxBytes) throw new OwnerIndexTooLarge(maxBytes);
        const slot = tableAt + k * isz;
        const slotHit = hits(slot, slot + isz);
        if (slotHit || runsHit(runs, hits)) parsed.set(ino, { inode, slotHit });
      }
    }
    const bitmaps = new Map<number, Buffer>();
    const limits = new Int32Array(fs.groups.length);
    for (let g = 0; g < fs.groups.length; g++) {
      limits[g] = groupLimit(fs, g);
      if (limits[g]! < 0) continue;
      const raw = await fs.disk.readCached(fs.groups[g]!.inodeBitmap * sb.blockSize, sb.blockSize, 'inode bitmap');
      bitmaps.set(g, effectiveBitmap(raw, limits[g]!, ipg));
    }
    const index = new OwnerIndex(OwnerIndex.geometryOf(fs), entries, bitmaps, limits);
    const owners: BlockOwner[] = [...parsed].map(([ino, p]) => ({ ino, blocks: runsHit(entries.get(ino)!.runs, hits), inode: p.slotHit, parsed: p.inode }));
    return { index, ownership: { owners, unowned: index.unowned(fs, q) } };
  }

  /**
   * Brings the index forward by `extents`, every byte changed since the state it describes, and
   * answers their ownership (ExtFilesystem.ownership, with `changed` on each owner). Reads the
   * changed slots of inode tables, the changed inode bitmaps, and the inodes whose indexed blocks
   * changed (their mapping blocks may have). A FilesystemError, or OwnerIndexTooLarge beyond
   * `maxBytes`, leaves the index unusable: drop it.
   */
  async update(fs: ExtFilesystem, extents: readonly Extent[], maxBytes = Infinity): Promise<Ownership> {
    let grown = this.bytes;
    const { sb } = fs;
    const bs = sb.blockSize;
    const isz = sb.inodeSize;
    const ipg = sb.inodesPerGroup;
    const q = clipped(fs, extents);
    if (q.length === 0) return { owners: [], unowned: [] };
    const hits = hitTest(q);
    const bitmaps = new Map<number, Buffer>();
    const limits = new Int32Array(fs.groups.length);
    /** Inodes whose slot is read again: their slot changed, or whether they are in use did. */
    const again = new Set<number>();
    for (let g = 0; g < fs.groups.length; g++) {
      const gd = fs.groups[g]!;
      const limit = groupLimit(fs, g);
      limits[g] = limit;
      const at = gd.inodeBitmap * bs;
      if (limit !== this.limits[g] || (limit >= 0 && hits(at, at + bs))) {
        const now = limit < 0 ? Buffer.alloc(Math.ceil(ipg / 8)) : effectiveBitmap(await fs.disk.readCached(at, bs, 'inode bitmap'), limit, ipg);
        const before = this.bitmaps.get(g);
        for (let idx = 0; idx < ipg; idx++) if (bit(now, idx) !== bit(before, idx)) again.add(g * ipg + idx + 1);
        bitmaps.set(g, now);
      }
      // The changed slots of the group's table.
      const start = gd.inodeTable * bs;
      const end = start + ipg * isz;
      for (let i = firstEndingAfter(q, start); i < q.length && q[i]!.offset < end; i++) {
        const from = Math.floor((Math.max(q[i]!.offset, start) - start) / isz);
        const to = Math.ceil((Math.min(q[i]!.offset + q[i]!.length, end) - start) / isz);
        for (let idx = from; idx < to; idx++) again.add(g * ipg + idx + 1);
      }
    }
    const inUse = (ino: number) => {
      const g = Math.floor((ino - 1) / ipg);
      return bit(bitmaps.get(g) ?? this.bitmaps.get(g), (ino - 1) % ipg);
    };
    const slotOf = (ino: number) => {
      const g = Math.floor((ino - 1) / ipg);
      return fs.groups[g]!.inodeTable * bs + ((ino - 1) % ipg) * isz;
    };
    const changes = new Map<number, Entry | undefined>();
    const owners: BlockOwner[] = [];
    const look = async (ino: number, slotHit: boolean) => {
      const old = this.entries.get(ino);
      if (!inUse(ino)) {
        if (old) changes.set(ino, undefined);
        return;
      }
      const raw = await fs.disk.readCached(slotOf(ino), isz, 'inode');
      if (raw.readUInt16LE(0) === 0) {
        if (old) changes.set(ino, undefined);
        return;
      }
      const inode = fs.parse(ino, raw);
      // The same slot and no changed mapping block: the same mapping, not walked again (a reserved
      // inode's or a large ext3 file's indirect blocks would otherwise be read at every scan).
      const fp = fingerprint(raw, isz);
      const now: Entry = old && old.fp === fp && !runsHit(old.runs, hits, old.meta) ? old : await entryOf(fs, inode, raw);
      const changed = !old || old.fp !== now.fp || !sameRuns(old.runs, now.runs);
      if (changed) {
        grown += entryBytes(now) - (old ? entryBytes(old) : 0);
        if (grown > maxBytes) throw new OwnerIndexTooLarge(maxBytes);
        changes.set(ino, now);
      }
      const blocks = runsHit(now.runs, hits);
      if (blocks || slotHit || changed) owners.push({ ino, blocks, inode: slotHit, changed, parsed: inode });
    };
    for (const ino of [...again].sort((a, b) => a - b)) await look(ino, hits(slotOf(ino), slotOf(ino) + isz));
    // Inodes whose indexed blocks changed though their slot did not: data rewritten in place, or a
    // mapping block (extent tree node, indirect block) changed under them.
    for (const ino of [...this.ownersOf(q)].sort((a, b) => a - b)) if (!again.has(ino)) await look(ino, false);
    this.reindex(changes);
    for (const [g, b] of bitmaps) {
      if (limits[g]! < 0) this.bitmaps.delete(g);
      else this.bitmaps.set(g, b);
    }
    this.limits.set(limits);
    return { owners, unowned: this.unowned(fs, q) };
  }

  /**
   * The index as bytes (saved by the scanner host across a restart; see fromBytes). Little-endian:
   * the magic, the geometry, per-group limits and bitmaps, every entry (inode, fingerprint, runs),
   * every file's granule digests.
   */
  toBytes(): Buffer {
    const w = new ByteWriter();
    w.raw(Buffer.from(FILE_MAGIC, 'latin1'));
    w.str(this.geometry);
    w.u32(this.limits.length);
    for (const l of this.limits) w.i32(l);
    w.u32(this.bitmaps.size);
    for (const [g, b] of this.bitmaps) { w.u32(g); w.u32(b.length); w.raw(b); }
    w.u32(this.entries.size);
    for (const [ino, e] of this.entries) {
      w.u32(ino);
      w.raw(Buffer.from(e.fp, 'latin1'));
      w.u32(e.meta);
      w.u32(e.runs.length);
      for (const v of e.runs) w.f64(v);
    }
    w.u32(this.digests.size);
    for (const [ino, d] of this.digests) {
      w.u32(ino);
      w.u32(d.size);
      for (const [g, h] of d) { w.f64(g); w.raw(h); }
    }
    return w.done();
  }

  /**
   * An index from toBytes' bytes. The caller has checked where they come from (the scanner host
   * authenticates its saved file); they are still read defensively: anything out of shape throws.
   */
  static fromBytes(bytes: Buffer): OwnerIndex {
    const r = new ByteReader(bytes, 'the saved owner index');
    if (r.raw(FILE_MAGIC.length).toString('latin1') !== FILE_MAGIC) throw new Error('not a saved owner index');
    const geometry = r.str();
    const limits = new Int32Array(r.count(4));
    for (let i = 0; i < limits.length; i++) limits[i] = r.i32();
    const bitmaps = new Map<number, Buffer>();
    for (let n = r.count(8); n > 0; n--) bitmaps.set(r.u32(), Buffer.from(r.raw(r.u32())));
    const entries = new Map<number, Entry>();
    for (let n = r.count(28); n > 0; n--) {
      const ino = r.u32();
      const fp = r.raw(16).toString('latin1');
      const meta = r.u32();
      const runs: number[] = new Array(r.count(8));
      for (let i = 0; i < runs.length; i++) runs[i] = r.nonNegative();
      if (runs.length % 2 !== 0 || meta > runs.length || meta % 2 !== 0) throw new Error(`inode ${ino}: runs out of shape`);
      entries.set(ino, { fp, runs, meta });
    }
    const index = new OwnerIndex(geometry, entries, bitmaps, limits);
    for (let n = r.count(8); n > 0; n--) {
      const ino = r.u32();
      const d: GranuleDigests = new Map();
      for (let k = r.count(16); k > 0; k--) d.set(r.nonNegative(), Buffer.from(r.raw(8)));
      index.setDigests(ino, d);
    }
    r.end();
    return index;
  }

  /** Whether two indexes hold the same inodes, fingerprints, runs and bitmaps (a check that one brought forward equals one built afresh). */
  sameAs(other: OwnerIndex): boolean {
    if (this.geometry !== other.geometry || this.entries.size !== other.entries.size || this.bitmaps.size !== other.bitmaps.size) return false;
    for (const [ino, e] of this.entries) {
      const o = other.entries.get(ino);
      if (!o || o.fp !== e.fp || !sameRuns(o.runs, e.runs)) return false;
    }
    for (const [g, b] of this.bitmaps) if (!other.bitmaps.get(g)?.equals(b)) return false;
    const same = (a: ArrayLike<number>, b: ArrayLike<number>) => a.length === b.length && Array.prototype.every.call(a, (v: number, i: number) => v === b[i]);
    return same(this.limits, other.limits) && same(this.starts, other.starts) && same(this.ends, other.ends);
  }

  /** The inodes owning some of q (sorted, merged). */
  private ownersOf(q: readonly Extent[]): Set<number> {
    const out = new Set<number>();
    this.eachRunIn(q, (j) => out.add(this.owners[j]!));
    return out;
  }

  /** What of q no indexed inode and no fixed metadata holds (Ownership.unowned). */
  private unowned(fs: ExtFilesystem, q: readonly Extent[]): Extent[] {
    const owned: Extent[] = [];
    this.eachRunIn(q, (j) => owned.push({ offset: this.starts[j]!, length: this.ends[j]! - this.starts[j]! }));
    return subtract([...q], merge([...owned, ...fs.fixedMetadata()]));
  }

  private eachRunIn(q: readonly Extent[], fn: (run: number) => void): void {
    const n = this.starts.length;
    for (const e of q) {
      const a = e.offset;
      const b = e.offset + e.length;
      let lo = 0;
      let hi = n;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.reach[mid]! <= a) lo = mid + 1;
        else hi = mid;
      }
      for (let j = lo; j < n && this.starts[j]! < b; j++) if (this.ends[j]! > a) fn(j);
    }
  }

  /**
   * Applies changed entries (undefined: no longer in use) and rebuilds the reverse map: the kept runs
   * are already in order, the new ones are sorted and merged in.
   */
  private reindex(changes: Map<number, Entry | undefined>): void {
    const fresh: { s: number; e: number; o: number }[] = [];
    const addRuns = (ino: number, runs: number[]) => {
      for (let i = 0; i < runs.length; i += 2) if (runs[i + 1]! > 0) fresh.push({ s: runs[i]!, e: runs[i]! + runs[i + 1]!, o: ino });
    };
    for (const [ino, en] of changes) {
      // Its content may have changed with it: digests again only once a scan has read it.
      this.digests.delete(ino);
      if (en) {
        this.entries.set(ino, en);
        addRuns(ino, en.runs);
      } else this.entries.delete(ino);
    }
    fresh.sort((x, y) => x.s - y.s);
    const kept = this.owners.filter((o) => !changes.has(o)).length;
    const n = kept + fresh.length;
    const starts = new Float64Array(n);
    const ends = new Float64Array(n);
    const owners = new Uint32Array(n);
    const reach = new Float64Array(n);
    let i = 0;
    let f = 0;
    let furthest = 0;
    for (let k = 0; k < n; k++) {
      while (i < this.starts.length && changes.has(this.owners[i]!)) i++;
      const takeOld = i < this.starts.length && (f >= fresh.length || this.starts[i]! <= fresh[f]!.s);
      if (takeOld) {
        starts[k] = this.starts[i]!;
        ends[k] = this.ends[i]!;
        owners[k] = this.owners[i]!;
        i++;
      } else {
        starts[k] = fresh[f]!.s;
        ends[k] = fresh[f]!.e;
        owners[k] = fresh[f]!.o;
        f++;
      }
      furthest = Math.max(furthest, ends[k]!);
      reach[k] = furthest;
    }
    this.starts = starts;
    this.ends = ends;
    this.owners = owners;
    this.reach = reach;
  }
}
