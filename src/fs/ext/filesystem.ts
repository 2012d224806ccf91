// An ext2/3/4 filesystem read through an Endpoint: used-block map, inodes, directories, paths, file contents, block owners.
import type { Endpoint } from '../../copy/index.js';
import { hitTest, intersect, merge, subtract, type Extent } from '../../extent/index.js';
import { damaged, FilesystemError, unsupported } from '../errors.js';
import { DiskReader } from '../reader.js';
import { isFastSymlink, mapInode, rootLeafRuns, type InodeMap, type MappedRun } from './blockmap.js';
import { checkDirBlock, parseDirBlock, type DirEntry } from './dir.js';
import { BG_INODE_UNINIT, groupMetadataBlocks, readGroupDescs, type GroupDesc } from './groups.js';
import { EXT4_ENCRYPT_FL, EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, fileType, inodeChecksumOk, inodeCsumSeed, inodeXattr, parseInode, S_IFDIR, S_IFLNK, S_IFMT, type Inode } from './inode.js';
import { has, INCOMPAT, parseSuperblock, RO_COMPAT, type Superblock } from './superblock.js';
import { usedBlockRuns } from './usedmap.js';

export const ROOT_INO = 2;
/** Symlinks followed in one lookup before it counts as a loop (the kernel's limit is 40). */
const MAX_SYMLINKS = 40;
/** A path deeper than this is a directory loop in a damaged filesystem. */
const MAX_DEPTH = 4096;
/** File data is read in requests of this size (and handed out in chunks of it). */
const DATA_CHUNK = 1024 * 1024;

/** Buffers of one chunk each that `readChunks` fills in turn (one ring per reader at a time). */
export class ChunkRing {
  private readonly buffers: Buffer[];
  private at = 0;

  constructor(size = 2) {
    this.buffers = Array.from({ length: Math.max(2, size) }, () => Buffer.allocUnsafe(DATA_CHUNK));
  }

  /** How many buffers it turns through (at least two). */
  get size(): number {
    return this.buffers.length;
  }

  /** The next buffer's first `n` bytes (n ≤ 1 MiB), contents undefined. */
  next(n: number): Buffer {
    const b = this.buffers[this.at]!;
    this.at = (this.at + 1) % this.buffers.length;
    return b.subarray(0, n);
  }
}
/** Inode tables are read for block-owner walks in batches of this size. */
const ITABLE_BATCH = 4 * 1024 * 1024;
/** Inode-table batches read ahead of the one being parsed by blockOwners. */
const ITABLE_AHEAD = 4;
const XATTR_INDEX_SYSTEM = 7;
/** A directory entry's file type (filetype feature) by its code; 0 and unknown codes: read the inode. */
const ENTRY_TYPES: Record<number, WalkEntry['type'] | undefined> = { 1: 'file', 2: 'dir', 3: 'chardev', 4: 'blockdev', 5: 'fifo', 6: 'socket', 7: 'symlink' };

export interface ExtOpenOptions {
  /** Byte offset of the filesystem on the endpoint (a partition's start) and its length (to the end by default). */
  offset?: number;
  length?: number;
  /** For messages, e.g. "vda, partition 1". */
  label?: string;
}

export interface BlockOwner {
  ino: number;
  /** Its data or mapping blocks intersect the extents. */
  blocks: boolean;
  /** Its slot in the inode table does (its attributes, inline data or extent root changed). */
  inode: boolean;
  /**
   * Known only with an owner index (OwnerIndex.update): whether the inode or its mapping differs
   * from the index's (a slot that was merely written with its neighbours, or an access time, does not).
   */
  changed?: boolean;
  /** The inode as read. */
  parsed: Inode;
}

/** blockOwners and, of the extents asked about, what no inode owns (see ownership). */
export interface Ownership {
  owners: BlockOwner[];
  /**
   * The bytes of the extents (clipped to the filesystem) that no inode owns and no fixed metadata
   * holds (superblocks, descriptors, bitmaps, inode tables): free blocks, or blocks an inode
   * comes to own only later without their being written again (metadata still in an unreplayed
   * journal, an extent tree relinked), sorted and merged.
   */
  unowned: Extent[];
}

/** A stretch of one group's inode table (inodeTables): inodes i0 .. i0+n-1 of group g, by index in the group. */
export interface InodeTableBatch {
  g: number;
  i0: number;
  n: number;
  /** The group's inode bitmap (bit i: inode index i in use). */
  bitmap: Buffer;
  /** Byte offset of inode i0's slot. */
  tableAt: number;
  table: Buffer;
}

export interface WalkEntry {
  path: string;
  ino: number;
  type: ReturnType<typeof fileType>;
}

export class ExtFilesystem {
  private constructor(
    readonly disk: DiskReader,
    readonly sb: Superblock,
    readonly groups: GroupDesc[],
  ) {}

  static async open(source: Endpoint | DiskReader, opts: ExtOpenOptions = {}): Promise<ExtFilesystem> {
    const whole = source instanceof DiskReader ? source : new DiskReader(source);
    const offset = opts.offset ?? 0;
    const label = opts.label ?? (offset ? `${whole.label} at byte ${offset}` : whole.label);
    const disk = whole.sub(offset, opts.length ?? whole.length - offset, label);
    if (disk.length < 2048) throw damaged(label, `only ${disk.length} bytes: too small for an ext filesystem`);
    const sb = parseSuperblock(await disk.read(1024, 1024, 'superblock'), label, disk.length);
    const groups = await readGroupDescs(sb, disk);
    return new ExtFilesystem(disk, sb, groups);
  }

  get label(): string {
    return this.disk.label;
  }

  /** Bytes of the filesystem itself (blocks x block size), from its start. */
  get byteLength(): number {
    return this.sb.blocksCount * this.sb.blockSize;
  }

  /**
   * Every used block as byte extents relative to the filesystem's start (the caller adds the
   * partition's offset), sorted and merged. Reads only the superblock, descriptors and bitmaps.
   * Refused while the journal needs recovery, unless the caller accepts a map that may be stale.
   */
  async usedExtents(opts: { trustUnreplayedJournal?: boolean } = {}): Promise<Extent[]> {
    // A frozen ext4 has its journal flushed and this flag cleared (ext4_freeze): set, the copy was
    // not frozen and blocks allocated since the last checkpoint may be marked in the journal only.
    if (this.sb.needsRecovery && !opts.trustUnreplayedJournal) {
      throw unsupported(
        this.label,
        'the journal holds changes not yet written to the block bitmaps (needs_recovery: the filesystem was neither frozen nor cleanly unmounted when this copy was taken); its used-block map could miss blocks',
      );
    }
    const runs = await usedBlockRuns(this.sb, this.groups, this.disk);
    const bs = this.sb.blockSize;
    return runs.map((r) => ({ offset: r.offset * bs, length: r.length * bs }));
  }

  private inodeLocation(ino: number): number {
    if (!Number.isInteger(ino) || ino < 1 || ino > this.sb.inodesCount) {
      throw damaged(this.label, `inode number ${ino} outside 1..${this.sb.inodesCount}`);
    }
    const g = Math.floor((ino - 1) / this.sb.inodesPerGroup);
    const index = (ino - 1) % this.sb.inodesPerGroup;
    return this.groups[g].inodeTable * this.sb.blockSize + index * this.sb.inodeSize;
  }

  private get csum(): boolean {
    return has(this.sb.roCompat, RO_COMPAT.metadata_csum);
  }

  /** An inode from its raw slot, its checksum checked (metadata_csum). */
  parse(ino: number, raw: Buffer): Inode {
    if (this.csum && !inodeChecksumOk(raw.subarray(0, this.sb.inodeSize), ino, this.sb.csumSeed)) {
      throw damaged(this.label, `inode ${ino} checksum mismatch`);
    }
    return parseInode(ino, raw, this.sb.inodeSize, this.label);
  }

  async inode(ino: number): Promise<Inode> {
    const at = this.inodeLocation(ino);
    return this.parse(ino, await this.disk.readCached(at, this.sb.inodeSize, 'inode'));
  }

  /** Data runs and mapping blocks of an inode (block numbers). */
  async map(inode: Inode | number): Promise<InodeMap> {
    const i = typeof inode === 'number' ? await this.inode(inode) : inode;
    return mapInode(this.sb, this.disk, i);
  }

  async readdir(dir: Inode | number): Promise<DirEntry[]> {
    const inode = typeof dir === 'number' ? await this.inode(dir) : dir;
    if ((inode.mode & S_IFMT) !== S_IFDIR) throw new FilesystemError('damaged', `${this.label}: inode ${inode.ino} is not a directory`);
    const out: DirEntry[] = [];
    const fileTypeFeature = has(this.sb.incompat, INCOMPAT.filetype);
    if (inode.flags & EXT4_INLINE_DATA_FL) {
      // Inline directories: the parent's inode number, then entries; more entries in system.data.
      const parent = inode.iBlock.readUInt32LE(0);
      out.push({ name: '.', ino: inode.ino, type: 2 }, { name: '..', ino: parent, type: 2 });
      parseDirBlock(inode.iBlock.subarray(4, 60), fileTypeFeature, this.label, inode.ino, out);
      const more = inodeXattr(inode, XATTR_INDEX_SYSTEM, 'data', this.label);
      if (more && more.length) parseDirBlock(more, fileTypeFeature, this.label, inode.ino, out);
      return out;
    }
    const seed = this.csum ? inodeCsumSeed(this.sb.csumSeed, inode.ino, inode.generation) : undefined;
    let index = 0;
    for await (const chunk of this.readChunks(inode)) {
      for (let at = 0; at < chunk.length; at += this.sb.blockSize, index++) {
        const block = chunk.subarray(at, at + this.sb.blockSize);
        if (seed !== undefined) checkDirBlock(block, seed, this.label, inode.ino, index);
        parseDirBlock(block, fileTypeFeature, this.label, inode.ino, out);
      }
    }
    return out;
  }

  /** The inode a path names (absolute, '/'-separated), following symlinks on the way (and at the end unless `noFollow`). */
  async lookup(path: string, opts: { noFollow?: boolean } = {}): Promise<number> {
    let hops = 0;
    const walk = async (start: number, parts: string[], followLast: boolean): Promise<number> => {
      const stack: number[] = [start];
      for (let i = 0; i < parts.length; i++) {
        const part = parts[i];
        if (part === '' || part === '.') continue;
        const cur = stack[stack.length - 1];
        if (part === '..') {
          if (stack.length > 1) stack.pop();
          continue;
        }
        const entry = (await this.readdir(cur)).find((e) => e.name === part);
        if (!entry) throw new FilesystemError('damaged', `${this.label}: no ${part} in ${'/' + parts.slice(0, i).filter(Boolean).join('/')}`, { hint: 'check the path' });
        const child = await this.inode(entry.ino);
        const last = i === parts.length - 1;
        if ((child.mode & S_IFMT) === S_IFLNK && (!last || followLast)) {
          if (++hops > MAX_SYMLINKS) throw damaged(this.label, `too many levels of symbolic links in ${path}`);
          const target = (await this.readFile(child)).toString('utf8');
          const base = target.startsWith('/') ? [ROOT_INO] : stack.slice();
          const resolved = await walk(base[base.length - 1], target.split('/'), true);
          // The link's target stands in for the link; its own parent chain is not kept (.. after it goes to the link's directory).
          stack.push(resolved);
          continue;
        }
        stack.push(entry.ino);
        if (stack.length > MAX_DEPTH) throw damaged(this.label, `path ${path} deeper than ${MAX_DEPTH} levels`);
      }
      return stack[stack.length - 1];
    };
    return walk(ROOT_INO, path.split('/'), !opts.noFollow);
  }

  /**
   * A file's contents as chunks of at most 1 MiB, holes and uninitialised extents as zeroes; memory
   * stays bounded. With `ring`, chunks are read into its buffers in turn instead of fresh ones (no
   * allocation, no garbage per chunk): a chunk then stays valid only until the consumer has taken
   * `ring.size - 1` more. `onPiece` sees each stretch read from the disk (its byte offset in the
   * filesystem and its bytes, valid during the call): not inline data, holes or uninitialised extents.
   */
  /** `map`: the inode's map when the caller has it already (this.map(inode)), not made again. */
  async *readChunks(file: Inode | number, opts: { ring?: ChunkRing; onPiece?: (physical: number, bytes: Buffer) => void; map?: InodeMap } = {}): AsyncGenerator<Buffer> {
    const inode = typeof file === 'number' ? await this.inode(file) : file;
    const size = inode.size;
    if (inode.flags & EXT4_ENCRYPT_FL) throw unsupported(this.label, `inode ${inode.ino} is encrypted (fscrypt): its contents cannot be read`);
    if (inode.flags & EXT4_INLINE_DATA_FL || isFastSymlink(inode, this.sb)) {
      let data = Buffer.from(inode.iBlock.subarray(0, Math.min(60, size)));
      if (inode.flags & EXT4_INLINE_DATA_FL && size > 60) {
        const more = inodeXattr(inode, XATTR_INDEX_SYSTEM, 'data', this.label) ?? Buffer.alloc(0);
        data = Buffer.concat([data, more]);
      }
      if (data.length < size) throw damaged(this.label, `inode ${inode.ino}: inline data holds ${data.length} of its ${size} bytes`);
      if (size) yield data.subarray(0, size);
      return;
    }
    const bs = this.sb.blockSize;
    const { data } = opts.map ?? await this.map(inode);
    let pos = 0;
    let run = 0;
    while (pos < size) {
      const n = Math.min(DATA_CHUNK, size - pos);
      // Fill [pos, pos+n) from the runs that overlap it, read straight into place; the rest is zero
      // (holes, uninitialised extents): zero-filled only when there is such a rest.
      while (run < data.length && (data[run].logical + data[run].count) * bs <= pos) run++;
      const pieces: { at: number; phys: number; length: number }[] = [];
      let covered = 0;
      for (let r = run; r < data.length && data[r].logical * bs < pos + n; r++) {
        const m: MappedRun = data[r];
        if (m.uninit) continue;
        const from = Math.max(pos, m.logical * bs);
        const to = Math.min(pos + n, (m.logical + m.count) * bs);
        pieces.push({ at: from - pos, phys: m.physical * bs + (from - m.logical * bs), length: to - from });
        covered += to - from;
      }
      const out = opts.ring ? opts.ring.next(n) : covered === n ? Buffer.allocUnsafe(n) : Buffer.alloc(n);
      if (opts.ring && covered !== n) out.fill(0);
      for (const p of pieces) {
        await this.disk.readInto(out.subarray(p.at, p.at + p.length), p.phys, `data of inode ${inode.ino}`);
        opts.onPiece?.(p.phys, out.subarray(p.at, p.at + p.length));
      }
      yield out;
      pos += n;
    }
  }

  /** A whole file in memory (refused above `maxBytes`, 256 MiB unless given). */
  async readFile(file: Inode | number | string, maxBytes = 256 * 1024 * 1024): Promise<Buffer> {
    const inode = typeof file === 'string' ? await this.inode(await this.lookup(file)) : typeof file === 'number' ? await this.inode(file) : file;
    if (inode.size > maxBytes) throw new FilesystemError('unsupported', `${this.label}: inode ${inode.ino} has ${inode.size} bytes, more than ${maxBytes} read into memory at once`, { hint: 'read it with readChunks' });
    const parts: Buffer[] = [];
    for await (const c of this.readChunks(inode)) parts.push(c);
    return Buffer.concat(parts);
  }

  /**
   * Every path below the root, directories before their contents; a directory seen twice (a loop)
   * is an error. Directories are read `prefetch` at a time ahead of the one being listed (over a
   * network each read is a round trip), and an entry's type comes from the entry itself where the
   * filesystem stores it (filetype feature): only entries without one cost an inode read. An entry
   * that says "directory" over an inode that is not one is damage, found when it is read.
   */
  async *walk(opts: { prefetch?: number } = {}): AsyncGenerator<WalkEntry> {
    const ahead = Math.max(1, opts.prefetch ?? 16);
    const seen = new Set<number>([ROOT_INO]);
    interface Pending { path: string; ino: number; depth: number; entries?: Promise<DirEntry[]> }
    const queue: Pending[] = [{ path: '', ino: ROOT_INO, depth: 0 }];
    const start = (d: Pending) => {
      if (d.entries) return;
      d.entries = this.readdir(d.ino);
      // Awaited in turn below; a walk abandoned early leaves no unhandled rejection behind.
      d.entries.catch(() => undefined);
    };
    while (queue.length) {
      for (let i = 0; i < Math.min(ahead, queue.length); i++) start(queue[i]);
      const dir = queue.shift()!;
      const entries = await dir.entries!;
      for (const e of entries) {
        if (e.name === '.' || e.name === '..') continue;
        const path = `${dir.path}/${e.name}`;
        const type = ENTRY_TYPES[e.type] ?? fileType((await this.inode(e.ino)).mode);
        yield { path, ino: e.ino, type };
        if (type === 'dir') {
          if (seen.has(e.ino)) throw damaged(this.label, `directory ${path} (inode ${e.ino}) appears twice: directory loop`);
          if (dir.depth + 1 > MAX_DEPTH) throw damaged(this.label, `directories nested deeper than ${MAX_DEPTH}`);
          seen.add(e.ino);
          queue.push({ path, ino: e.ino, depth: dir.depth + 1 });
        }
      }
    }
  }

  /**
   * The inodes whose data or mapping blocks, or whose inode-table slot, intersect `extents` (byte
   * extents relative to the filesystem's start): a walk of every in-use inode. Memory stays bounded
   * (inode tables are read in 4 MiB batches); the work grows with the number of inodes.
   */
  async blockOwners(extents: readonly Extent[]): Promise<BlockOwner[]> {
    return (await this.ownership(extents)).owners;
  }

  /** blockOwners, and what of the extents no inode owns (Ownership.unowned). */
  async ownership(extents: readonly Extent[]): Promise<Ownership> {
    const bs = this.sb.blockSize;
    const q = merge(intersect(merge(extents), [{ offset: 0, length: this.byteLength }]));
    // The runs of every inode that owns some of q (all of its runs: q is cut by them at the end).
    const owned: Extent[] = [];
    const hits = hitTest(q);
    const out: BlockOwner[] = [];
    if (q.length === 0) return { owners: out, unowned: [] };
    const isz = this.sb.inodeSize;
    const ipg = this.sb.inodesPerGroup;
    for await (const { g, i0, n, bitmap, tableAt, table } of this.inodeTables()) {
      for (let k = 0; k < n; k++) {
        const idx = i0 + k;
        if (!((bitmap[idx >> 3] >> (idx & 7)) & 1)) continue;
        const ino = g * ipg + idx + 1;
        const slot = tableAt + k * isz;
        const inodeHit = hits(slot, slot + isz);
        const raw = table.subarray(k * isz, (k + 1) * isz);
        if (!inodeHit && this.ownsNoneOf(ino, raw, hits)) continue;
        const inode = this.parse(ino, raw);
        if (inode.mode === 0) continue;
        let blockHit = false;
        // Inodes below the first normal one (bad blocks, resize, journal) own blocks too; they are mapped the same way.
        const m = await mapInode(this.sb, this.disk, inode);
        for (const r of m.data) if (hits(r.physical * bs, (r.physical + r.count) * bs)) { blockHit = true; break; }
        if (!blockHit) for (const r of m.meta) if (hits(r.offset * bs, (r.offset + r.length) * bs)) { blockHit = true; break; }
        if (blockHit) {
          for (const r of m.data) owned.push({ offset: r.physical * bs, length: r.count * bs });
          for (const r of m.meta) owned.push({ offset: r.offset * bs, length: r.length * bs });
        }
        if (blockHit || inodeHit) out.push({ ino, blocks: blockHit, inode: inodeHit, parsed: inode });
      }
    }
    return { owners: out, unowned: subtract(q, merge([...owned, ...this.fixedMetadata()])) };
  }

  /**
   * The in-use part of every initialised group's inode table, in group order, in batches of at
   * most 4 MiB with the group's inode bitmap: inodes past ipg - itable_unused were never used (kept
   * only with group checksums), and past the bitmap's last set bit none is in use now, so neither
   * part is read (ext2/3 have no itable_unused). Reads run up to ITABLE_AHEAD batches ahead of the
   * one handed out (each is a round trip over a network), memory bounded by that window.
   */
  async *inodeTables(): AsyncGenerator<InodeTableBatch> {
    const bs = this.sb.blockSize;
    const isz = this.sb.inodeSize;
    const ipg = this.sb.inodesPerGroup;
    const perBatch = Math.max(1, Math.floor(ITABLE_BATCH / isz));
    const { disk, groups } = this;
    interface Planned extends Omit<InodeTableBatch, 'table'> { table: Promise<Buffer> }
    const plan = (async function* (): AsyncGenerator<Omit<InodeTableBatch, 'table'>> {
      for (let g = 0; g < groups.length; g++) {
        const gd = groups[g];
        if (gd.flags & BG_INODE_UNINIT) continue;
        const bitmap = await disk.readCached(gd.inodeBitmap * bs, bs, 'inode bitmap');
        let used = ipg - gd.itableUnused;
        while (used > 0 && !((bitmap[(used - 1) >> 3] >> ((used - 1) & 7)) & 1)) used--;
        for (let i0 = 0; i0 < used; i0 += perBatch) {
          yield { g, i0, n: Math.min(perBatch, used - i0), bitmap, tableAt: gd.inodeTable * bs + i0 * isz };
        }
      }
    })();
    const ahead: Planned[] = [];
    let planned = false;
    const fill = async () => {
      while (!planned && ahead.length < ITABLE_AHEAD) {
        const next = await plan.next();
        if (next.done) { planned = true; break; }
        const table = disk.read(next.value.tableAt, next.value.n * isz, 'inode table');
        table.catch(() => undefined); // awaited in turn below; one abandoned by an error must not go unhandled
        ahead.push({ ...next.value, table });
      }
    };
    for (await fill(); ahead.length > 0; await fill()) {
      const b = ahead.shift()!;
      yield { ...b, table: await b.table };
    }
  }

  /** Blocks fixed metadata holds, as byte extents: the start before group 0, superblocks, descriptors and their reserve, bitmaps, inode tables. */
  fixedMetadata(): Extent[] {
    const bs = this.sb.blockSize;
    const blocks = [{ offset: 0, length: this.sb.firstDataBlock + 1 }, ...groupMetadataBlocks(this.sb, this.groups)];
    return blocks.map((e) => ({ offset: e.offset * bs, length: e.length * bs }));
  }

  /**
   * blockOwners' fast path: true when the inode in `raw` (its checksum checked) keeps its whole
   * extent tree in the inode (depth 0, the common case) and neither those extents nor its extended
   * attribute block meet the query, so that it owns none of the blocks asked about; false when that
   * takes the full parse and map (deeper trees, block maps, inline data, a hit).
   */
  private ownsNoneOf(ino: number, raw: Buffer, hits: (start: number, end: number) => boolean): boolean {
    const flags = raw.readUInt32LE(32);
    if (!(flags & EXT4_EXTENTS_FL) || flags & EXT4_INLINE_DATA_FL || raw.readUInt16LE(0) === 0) return false;
    const runs = rootLeafRuns(raw.subarray(40, 100));
    if (!runs) return false;
    if (this.csum && !inodeChecksumOk(raw.subarray(0, this.sb.inodeSize), ino, this.sb.csumSeed)) return false; // the full path says which
    const bs = this.sb.blockSize;
    const acl = raw.readUInt32LE(104) + raw.readUInt16LE(118) * 2 ** 32;
    if (acl && hits(acl * bs, (acl + 1) * bs)) return false;
    for (let i = 0; i < runs.length; i += 2) if (hits(runs[i]! * bs, (runs[i]! + runs[i + 1]!) * bs)) return false;
    return true;
  }

  /** A symlink's target. */
  async readlink(file: Inode | number): Promise<string> {
    const inode = typeof file === 'number' ? await this.inode(file) : file;
    if ((inode.mode & S_IFMT) !== S_IFLNK) throw new FilesystemError('damaged', `${this.label}: inode ${inode.ino} is not a symlink`);
    return (await this.readFile(inode, 65536)).toString('utf8');
  }
}
