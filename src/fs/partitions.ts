// MBR (with extended/logical partitions) and GPT partition tables, read through an Endpoint; hostile input is an error, never a hang.
import type { Endpoint } from '../copy/index.js';
import { crc32 } from './crc.js';
import { detectBytes } from './detect.js';
import { damaged } from './errors.js';
import { DiskReader } from './reader.js';

export interface Partition {
  /** The number Linux gives it: MBR primaries 1-4 by slot, logicals from 5; GPT entries from 1 by slot; 0 for a whole disk. */
  number: number;
  /** Byte offset and length on the disk. */
  offset: number;
  length: number;
  /** GPT: the type GUID (upper case, as sfdisk prints it); MBR: the type byte as two hex digits ("83"). */
  type: string;
  /** GPT: the partition's name and unique GUID. */
  name?: string;
  uuid?: string;
  /** MBR: the boot flag. */
  bootable?: boolean;
  /** MBR: an extended partition, which only holds logical ones (no filesystem of its own). */
  extended?: boolean;
  /** GPT attribute bits, as a decimal string (64 bits). */
  attrs?: string;
}

export interface PartitionTable {
  /** 'none': no table, the disk is one filesystem (or nothing known): one whole-disk region. */
  scheme: 'gpt' | 'mbr' | 'none';
  sectorSize: number;
  /** MBR: the disk signature ("0x1234abcd"); GPT: the disk GUID. */
  id?: string;
  partitions: Partition[];
  /** GPT: true when the primary header or its entries were damaged and the backup was used. */
  usedBackup?: boolean;
}

const SECTOR = 512;
/** More logical partitions than this is a chain gone wrong (Linux's own limit is far lower in practice). */
const MAX_LOGICAL = 256;
/** GPT entry arrays above this are absurd (the usual is 128 x 128 bytes = 16 KiB). */
const MAX_GPT_ENTRY_BYTES = 4 * 1024 * 1024;
const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);

export async function readPartitions(endpoint: Endpoint | DiskReader): Promise<PartitionTable> {
  const disk = endpoint instanceof DiskReader ? endpoint : new DiskReader(endpoint);
  const whole: PartitionTable = { scheme: 'none', sectorSize: SECTOR, partitions: [{ number: 0, offset: 0, length: disk.length, type: '' }] };
  if (disk.length < SECTOR) return whole;
  const head = await disk.read(0, Math.min(disk.length, 68 * 1024), 'partition table');
  // A filesystem written on the whole disk (ext4 has zeroes where an MBR would be; FAT has 55AA of its own).
  if (detectBytes(head) !== 'unknown') return whole;
  if (head.readUInt16LE(510) !== 0xaa55) return whole;
  const entries = mbrEntries(head, 0);
  if (!entries) return whole;
  if (entries.some((e) => e.type === 0xee)) {
    const gpt = await readGpt(disk);
    if (gpt) return gpt;
    throw damaged(disk.label, 'protective MBR found but no valid GPT header (primary and backup both damaged)');
  }
  return readMbr(disk, head, entries);
}

interface MbrEntry {
  slot: number;
  status: number;
  type: number;
  start: number;
  count: number;
}

/** The four entries of an MBR or EBR sector, or undefined when they cannot be a partition table. */
function mbrEntries(sector: Buffer, at: number): MbrEntry[] | undefined {
  const out: MbrEntry[] = [];
  for (let slot = 0; slot < 4; slot++) {
    const o = at + 446 + slot * 16;
    const status = sector[o];
    if (status !== 0 && status !== 0x80) return undefined;
    const type = sector[o + 4];
    const start = sector.readUInt32LE(o + 8);
    const count = sector.readUInt32LE(o + 12);
    if (type === 0 || count === 0) continue;
    out.push({ slot, status, type, start, count });
  }
  return out;
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

async function readMbr(disk: DiskReader, mbr: Buffer, entries: MbrEntry[]): Promise<PartitionTable> {
  const where = `${disk.label}, MBR`;
  const sectors = Math.floor(disk.length / SECTOR);
  const partitions: Partition[] = [];
  const inRange = (what: string, start: number, count: number) => {
    if (start === 0 || start + count > sectors) {
      throw damaged(where, `${what} (sectors ${start}+${count}) lies outside the disk's ${sectors} sectors`);
    }
  };
  let extended: MbrEntry | undefined;
  for (const e of entries) {
    inRange(`partition ${e.slot + 1}`, e.start, e.count);
    const isExt = EXTENDED_TYPES.has(e.type);
    if (isExt) {
      if (extended) throw damaged(where, 'two extended partitions');
      extended = e;
    }
    partitions.push({
      number: e.slot + 1,
      offset: e.start * SECTOR,
      length: e.count * SECTOR,
      type: hex2(e.type),
      bootable: e.status === 0x80,
      ...(isExt ? { extended: true } : {}),
    });
  }
  if (extended) {
    const seen = new Set<number>();
    let ebr = extended.start;
    let number = 5;
    for (;;) {
      if (seen.has(ebr)) throw damaged(where, `the chain of logical partitions loops back to sector ${ebr}`);
      if (seen.size >= MAX_LOGICAL) throw damaged(where, `more than ${MAX_LOGICAL} logical partitions: the chain is corrupt`);
      seen.add(ebr);
      if (ebr < extended.start || ebr >= extended.start + extended.count) {
        throw damaged(where, `a logical partition's table (sector ${ebr}) lies outside the extended partition`);
      }
      const sector = await disk.read(ebr * SECTOR, SECTOR, 'extended boot record');
      const list = sector.readUInt16LE(510) === 0xaa55 ? mbrEntries(sector, 0) : undefined;
      if (!list) {
        // An empty extended partition has an all-zero first EBR; anything else there is damage.
        if (ebr === extended.start && sector.every((x) => x === 0)) break;
        throw damaged(where, `sector ${ebr} should hold a logical partition's table but does not`);
      }
      const data = list.find((e) => !EXTENDED_TYPES.has(e.type));
      const next = list.find((e) => EXTENDED_TYPES.has(e.type));
      if (data) {
        const start = ebr + data.start;
        inRange(`logical partition ${number}`, start, data.count);
        if (start + data.count > extended.start + extended.count) {
          throw damaged(where, `logical partition ${number} ends past its extended partition`);
        }
        partitions.push({ number, offset: start * SECTOR, length: data.count * SECTOR, type: hex2(data.type), bootable: data.status === 0x80 });
        number++;
      }
      if (!next) break;
      ebr = extended.start + next.start;
    }
  }
  return { scheme: 'mbr', sectorSize: SECTOR, id: '0x' + mbr.readUInt32LE(440).toString(16).padStart(8, '0'), partitions };
}

/** A GUID from its mixed-endian on-disk form, upper case as sfdisk prints it. */
export function guid(b: Buffer, at: number): string {
  const h = (from: number, to: number, rev: boolean) => {
    const bytes = [...b.subarray(at + from, at + to)];
    return (rev ? bytes.reverse() : bytes).map(hex2).join('');
  };
  return [h(0, 4, true), h(4, 6, true), h(6, 8, true), h(8, 10, false), h(10, 16, false)].join('-').toUpperCase();
}

interface GptHeader {
  current: number;
  backup: number;
  firstUsable: number;
  lastUsable: number;
  diskGuid: string;
  entriesLba: number;
  count: number;
  entrySize: number;
  entriesCrc: number;
}

function parseGptHeader(b: Buffer, lba: number, sectors: number): GptHeader | string {
  if (b.toString('latin1', 0, 8) !== 'EFI PART') return 'no "EFI PART" signature';
  const size = b.readUInt32LE(12);
  if (size < 92 || size > b.length) return `header size ${size} is impossible`;
  const copy = Buffer.from(b.subarray(0, size));
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) !== b.readUInt32LE(16)) return 'header CRC mismatch';
  const num = (at: number) => Number(b.readBigUInt64LE(at));
  const h: GptHeader = {
    current: num(24),
    backup: num(32),
    firstUsable: num(40),
    lastUsable: num(48),
    diskGuid: guid(b, 56),
    entriesLba: num(72),
    count: b.readUInt32LE(80),
    entrySize: b.readUInt32LE(84),
    entriesCrc: b.readUInt32LE(88),
  };
  if (h.current !== lba) return `header says it is at sector ${h.current}, found at ${lba}`;
  if (h.entrySize < 128 || h.entrySize % 8 !== 0 || h.count * h.entrySize > MAX_GPT_ENTRY_BYTES) {
    return `absurd entry array (${h.count} entries of ${h.entrySize} bytes)`;
  }
  const entrySectors = Math.ceil((h.count * h.entrySize) / SECTOR);
  if (h.entriesLba < 2 || h.entriesLba + entrySectors > sectors) return `entry array (sector ${h.entriesLba}) lies outside the disk`;
  if (h.firstUsable > h.lastUsable || h.lastUsable >= sectors) return `usable range ${h.firstUsable}-${h.lastUsable} lies outside the disk's ${sectors} sectors`;
  return h;
}

async function readGpt(disk: DiskReader): Promise<PartitionTable | undefined> {
  const where = `${disk.label}, GPT`;
  const sectors = Math.floor(disk.length / SECTOR);
  const problems: string[] = [];
  for (const [lba, backup] of [[1, false], [sectors - 1, true]] as const) {
    const hb = await disk.read(lba * SECTOR, SECTOR, 'GPT header');
    const h = parseGptHeader(hb, lba, sectors);
    if (typeof h === 'string') {
      problems.push(`${backup ? 'backup' : 'primary'} header: ${h}`);
      continue;
    }
    const bytes = h.count * h.entrySize;
    const arr = await disk.read(h.entriesLba * SECTOR, bytes, 'GPT entries');
    if (crc32(arr) !== h.entriesCrc) {
      problems.push(`${backup ? 'backup' : 'primary'} entries: CRC mismatch`);
      continue;
    }
    const partitions: Partition[] = [];
    for (let i = 0; i < h.count; i++) {
      const e = arr.subarray(i * h.entrySize, (i + 1) * h.entrySize);
      if (e.subarray(0, 16).every((x) => x === 0)) continue;
      const first = Number(e.readBigUInt64LE(32));
      const last = Number(e.readBigUInt64LE(40));
      if (first > last || first < h.firstUsable || last > h.lastUsable) {
        throw damaged(where, `partition ${i + 1} (sectors ${first}-${last}) lies outside the usable sectors ${h.firstUsable}-${h.lastUsable}`);
      }
      let name = e.toString('utf16le', 56, 128);
      const nul = name.indexOf('\0');
      if (nul >= 0) name = name.slice(0, nul);
      partitions.push({
        number: i + 1,
        offset: first * SECTOR,
        length: (last - first + 1) * SECTOR,
        type: guid(e, 0),
        uuid: guid(e, 16),
        name,
        attrs: e.readBigUInt64LE(48).toString(),
      });
    }
    return { scheme: 'gpt', sectorSize: SECTOR, id: h.diskGuid, partitions, ...(backup ? { usedBackup: true } : {}) };
  }
  if (problems.length) throw damaged(where, problems.join('; '));
  return undefined;
}
