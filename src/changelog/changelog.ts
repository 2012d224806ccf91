// The persisted change log: per block, the generation in which it last changed; per consumer, the generation of its
// last completed pass; and which QEMU dirty bitmap records which generation. Knows nothing of QMP or NBD.
//
// Generations: a domain's `generation` G is the one being recorded now. beginPass takes P = G and moves the domain to
// G + 1, so writes folded afterwards belong to the next pass. A consumer whose last pass was L sees every block with
// a generation above L (for pass P that is (L, P], plus blocks rewritten after P, which a block's single generation
// cannot tell apart); a consumer that never completed a pass, or whose L is below the disk's floor, gets everything.
// Whenever the log cannot prove what changed, it raises the floor: over-reporting costs bytes, under-reporting loses
// data.
import Database from 'better-sqlite3';
import { UsageError, VirtcbtError } from '../util/errors.js';
import type { Extent } from '../extent/index.js';
import {
  collectExtents, countBlocks, ExtentRangeError, forEachPageSlice, toBlockIntervals, type ExtentInput,
} from './extents.js';
import { newLogId } from './identity.js';
import { decodeRuns, encodeRuns, maxGeneration, mergeRuns, PageFormatError, type Run } from './page-codec.js';
import { SCHEMA_SQL, SCHEMA_TABLES, SCHEMA_VERSION } from './schema.js';

export type BitmapState = 'creating' | 'active' | 'frozen' | 'folded';
/** The states a caller may record; only `fold` marks a bitmap folded, because only it puts the blocks in the log. */
export type RecordableBitmapState = Exclude<BitmapState, 'folded'>;
export type PassState = 'open' | 'committed' | 'aborted';

export interface DomainInfo {
  name: string;
  generation: number;
  createdAt: string;
  /** The change log's identity (see identity.ts): generations compare only under the same one. */
  logId: string;
}

export interface DiskSpec {
  /** Bytes per block: the dirty bitmap's granularity (a power of two, 512 B to 2 GiB). */
  blockSize: number;
  sizeBytes: number;
}

export interface DiskInfo extends DiskSpec {
  domain: string;
  target: string;
  blockCount: number;
  /** A consumer whose last pass is below this generation gets a full pass. */
  floor: number;
  floorReason: string;
  floorAt: string;
  createdAt: string;
  /** Image file of the layer the disk's bitmaps sit on (null until the reconciler records it). */
  layer: string | null;
}

export interface UpsertDiskResult extends DiskInfo {
  created: boolean;
  /** Why the floor was raised by this call (a size or block-size change), if it was. */
  floorRaised?: string;
}

export interface BitmapRecord {
  target: string;
  name: string;
  generation: number;
  state: BitmapState;
  createdAt: string;
  updatedAt: string;
  foldedAt: string | null;
}

export interface ConsumerInfo {
  name: string;
  /** Generation of the last completed pass; null = never. */
  last: number | null;
  createdAt: string;
  lastPassAt: string | null;
}

export interface PassInfo {
  id: number;
  domain: string;
  /** The identity of the change log the pass's generations belong to. */
  logId: string;
  consumer: string;
  /** P: the pass covers changes up to and including this generation. */
  generation: number;
  /** The consumer's last generation when the pass began (null = never): the pass covers (since, P]. */
  since: number | null;
  state: PassState;
  startedAt: string;
  endedAt: string | null;
}

export interface DiskChanges {
  target: string;
  blockSize: number;
  sizeBytes: number;
  /** Everything may have changed: extents is the whole disk (the caller narrows it to allocated extents). */
  full: boolean;
  /** Why the pass is full. */
  reason?: string;
  /** Half-open, sorted, merged. */
  extents: Extent[];
}

export interface FoldResult {
  /** The bitmap was folded before: nothing was done. */
  alreadyFolded: boolean;
  /** The generation the blocks were tagged with (the bitmap's). */
  generation: number;
  /** Merged block ranges and blocks marked, and pages rewritten. */
  extents: number;
  blocks: number;
  pages: number;
  /** Set when an unreadable page made the fold raise the floor. */
  floorRaised?: string;
}

export interface CommitResult {
  consumer: string;
  generation: number;
  /** The consumer's last generation after the commit. */
  last: number;
  /** False when a newer pass of the same consumer was committed first: last stays where it was. */
  moved: boolean;
}

export interface DiskStatus extends DiskInfo {
  foldCount: number;
  lastFold: { at: string; bitmap: string; extents: number; blocks: number } | null;
  /** Rows and BLOB bytes the disk's pages take. */
  storedPages: number;
  storedBytes: number;
}

export interface DomainStatus {
  domain: string;
  logId: string;
  generation: number;
  createdAt: string;
  disks: DiskStatus[];
  consumers: ConsumerInfo[];
  openPasses: PassInfo[];
  bitmaps: BitmapRecord[];
  lastFoldAt: string | null;
}

export interface NewBitmap {
  target: string;
  name: string;
}

export interface OpenOptions {
  /** Clock for timestamps (tests pin it). */
  now?: () => Date;
  /** How long to wait for another process's write transaction. */
  busyTimeoutMs?: number;
}

/** The change-log file is not a readable SQLite database, or not one virtcbt made. The file was not modified. */
export class ChangeLogCorruptError extends VirtcbtError {
  constructor(readonly file: string, what: string, cause?: unknown) {
    super(`change log ${file} ${what}`, {
      cause,
      hint: `Stop virtcbtd, move ${file} aside (for example to ${file}.broken) and start it again: a new, empty change log is created and the next pass of every consumer will be full`,
    });
  }
}

const DB_PAGE_SIZE = 1024;
const CONSUMER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const TARGET_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const STATE_ORDER: Record<BitmapState, number> = { creating: 0, active: 1, frozen: 2, folded: 3 };
/** Closed passes kept per consumer for `getPass` and for clear "already committed" errors; older ones are dropped. */
const CLOSED_PASSES_KEPT = 20;

interface DomainRow { id: number; name: string; generation: number; created_at: string; log_id: string }
interface DiskRow {
  id: number; domain_id: number; target: string; block_size: number; size_bytes: number; block_count: number;
  floor: number; floor_reason: string; floor_at: string; created_at: string; fold_count: number;
  last_fold_at: string | null; last_fold_bitmap: string | null; last_fold_extents: number | null; last_fold_blocks: number | null;
  layer: string | null;
}
interface BitmapRow {
  disk_id: number; target: string; name: string; generation: number; state: BitmapState;
  created_at: string; updated_at: string; folded_at: string | null;
}
interface ConsumerRow { id: number; domain_id: number; name: string; last: number | null; created_at: string; last_pass_at: string | null }
interface PassRow {
  id: number; consumer_id: number; domain: string; log_id: string; consumer: string; generation: number; since: number | null;
  state: PassState; started_at: string; ended_at: string | null;
}

function validateConsumerName(name: unknown, domain?: string): asserts name is string {
  if (typeof name !== 'string' || !CONSUMER_NAME.test(name)) {
    throw new UsageError(
      `consumer name ${JSON.stringify(name)} is not valid: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
      { domain, hint: 'Pick another name; nothing was changed' },
    );
  }
}

function validateDomainName(name: unknown): asserts name is string {
  // libvirt allows almost anything; refuse only what cannot be a domain name at all.
  // eslint-disable-next-line no-control-regex
  if (typeof name !== 'string' || name.length === 0 || name.length > 1024 || /[\u0000-\u001f/]/.test(name)) {
    throw new UsageError(`domain name ${JSON.stringify(name)} is not valid`, { hint: 'Use the libvirt domain name as `virsh list --all` shows it' });
  }
}

function validateTarget(target: unknown, domain: string): asserts target is string {
  if (typeof target !== 'string' || !TARGET_NAME.test(target)) {
    throw new UsageError(`disk target ${JSON.stringify(target)} is not valid`, {
      domain, hint: 'Use the <target dev=...> name from the domain XML, such as vda',
    });
  }
}

function prepareStatements(db: Database.Database) {
  return {
    domain: db.prepare<[string], DomainRow>('SELECT id, name, generation, created_at, log_id FROM domains WHERE name = ?'),
    domains: db.prepare<[], DomainRow>('SELECT id, name, generation, created_at, log_id FROM domains ORDER BY name'),
    insertDomain: db.prepare('INSERT INTO domains (name, generation, created_at, log_id) VALUES (?, 1, ?, ?)'),
    setGeneration: db.prepare('UPDATE domains SET generation = ? WHERE id = ?'),
    deleteDomain: db.prepare('DELETE FROM domains WHERE id = ?'),

    disk: db.prepare<[number, string], DiskRow>('SELECT * FROM disks WHERE domain_id = ? AND target = ?'),
    disks: db.prepare<[number], DiskRow>('SELECT * FROM disks WHERE domain_id = ? ORDER BY target'),
    insertDisk: db.prepare(`INSERT INTO disks (domain_id, target, block_size, size_bytes, block_count, floor, floor_reason, floor_at, created_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`),
    deleteDisk: db.prepare('DELETE FROM disks WHERE id = ?'),
    resizeDisk: db.prepare('UPDATE disks SET block_size = ?, size_bytes = ?, block_count = ? WHERE id = ?'),
    setFloor: db.prepare('UPDATE disks SET floor = ?, floor_reason = ?, floor_at = ? WHERE id = ?'),
    foldStats: db.prepare(`UPDATE disks SET fold_count = fold_count + 1, last_fold_at = ?, last_fold_bitmap = ?,
      last_fold_extents = ?, last_fold_blocks = ? WHERE id = ?`),
    diskStorage: db.prepare<[number], { n: number; bytes: number | null }>('SELECT count(*) AS n, sum(length(runs)) AS bytes FROM pages WHERE disk_id = ?'),

    page: db.prepare<[number, number], { runs: Buffer }>('SELECT runs FROM pages WHERE disk_id = ? AND page_no = ?'),
    deletePage: db.prepare('DELETE FROM pages WHERE disk_id = ? AND page_no = ?'),
    // The oldest generation anyone can still ask about: a consumer's last pass, an open pass's start (or, for a
    // consumer's first pass, its generation: after the commit the consumer asks from there).
    horizon: db.prepare<[number, number], { t: number | null }>(`SELECT min(x) AS t FROM (
        SELECT last AS x FROM consumers WHERE domain_id = ? AND last IS NOT NULL
        UNION ALL
        SELECT coalesce(p.since, p.generation) FROM passes p JOIN consumers c ON c.id = p.consumer_id
          WHERE c.domain_id = ? AND p.state = 'open')`),
    upsertPage: db.prepare(`INSERT INTO pages (disk_id, page_no, max_generation, runs) VALUES (?, ?, ?, ?)
      ON CONFLICT (disk_id, page_no) DO UPDATE SET max_generation = excluded.max_generation, runs = excluded.runs`),
    newerPages: db.prepare<[number, number], { page_no: number; runs: Buffer }>(
      'SELECT page_no, runs FROM pages WHERE disk_id = ? AND max_generation > ? ORDER BY page_no'),
    deletePages: db.prepare('DELETE FROM pages WHERE disk_id = ?'),

    bitmap: db.prepare<[number, string], BitmapRow>(
      'SELECT b.*, d.target FROM bitmaps b JOIN disks d ON d.id = b.disk_id WHERE b.disk_id = ? AND b.name = ?'),
    domainBitmaps: db.prepare<[number], BitmapRow>(
      'SELECT b.*, d.target FROM bitmaps b JOIN disks d ON d.id = b.disk_id WHERE d.domain_id = ? ORDER BY d.target, b.generation, b.created_at, b.name'),
    unfoldedUpTo: db.prepare<[number, number], BitmapRow>(`SELECT b.*, d.target FROM bitmaps b JOIN disks d ON d.id = b.disk_id
      WHERE d.domain_id = ? AND b.state != 'folded' AND b.generation <= ? ORDER BY d.target, b.generation LIMIT 1`),
    insertBitmap: db.prepare(`INSERT INTO bitmaps (disk_id, name, generation, state, created_at, updated_at)
      VALUES (?, ?, ?, ?, ?, ?)`),
    setBitmapState: db.prepare('UPDATE bitmaps SET state = ?, updated_at = ? WHERE disk_id = ? AND name = ?'),
    markFolded: db.prepare("UPDATE bitmaps SET state = 'folded', updated_at = ?, folded_at = ? WHERE disk_id = ? AND name = ?"),
    deleteBitmap: db.prepare('DELETE FROM bitmaps WHERE disk_id = ? AND name = ?'),

    consumer: db.prepare<[number, string], ConsumerRow>('SELECT * FROM consumers WHERE domain_id = ? AND name = ?'),
    consumers: db.prepare<[number], ConsumerRow>('SELECT * FROM consumers WHERE domain_id = ? ORDER BY name'),
    insertConsumer: db.prepare('INSERT INTO consumers (domain_id, name, last, created_at) VALUES (?, ?, NULL, ?)'),
    deleteConsumer: db.prepare('DELETE FROM consumers WHERE id = ?'),
    setConsumerLast: db.prepare('UPDATE consumers SET last = ?, last_pass_at = ? WHERE id = ?'),
    touchConsumer: db.prepare('UPDATE consumers SET last_pass_at = ? WHERE id = ?'),

    pass: db.prepare<[number], PassRow>(`SELECT p.*, c.name AS consumer, d.name AS domain, d.log_id AS log_id FROM passes p
      JOIN consumers c ON c.id = p.consumer_id JOIN domains d ON d.id = c.domain_id WHERE p.id = ?`),
    openPassesAll: db.prepare<[], PassRow>(`SELECT p.*, c.name AS consumer, d.name AS domain, d.log_id AS log_id FROM passes p
      JOIN consumers c ON c.id = p.consumer_id JOIN domains d ON d.id = c.domain_id WHERE p.state = 'open' ORDER BY p.id`),
    openPassesOf: db.prepare<[number], PassRow>(`SELECT p.*, c.name AS consumer, d.name AS domain, d.log_id AS log_id FROM passes p
      JOIN consumers c ON c.id = p.consumer_id JOIN domains d ON d.id = c.domain_id
      WHERE p.state = 'open' AND d.id = ? ORDER BY p.id`),
    insertPass: db.prepare(`INSERT INTO passes (consumer_id, generation, since, state, started_at) VALUES (?, ?, ?, 'open', ?)`),
    closePass: db.prepare('UPDATE passes SET state = ?, ended_at = ? WHERE id = ?'),
    pruneClosed: db.prepare(`DELETE FROM passes WHERE consumer_id = ? AND state != 'open' AND id NOT IN
      (SELECT id FROM passes WHERE consumer_id = ? AND state != 'open' ORDER BY id DESC LIMIT ${CLOSED_PASSES_KEPT})`),
  };
}

type Statements = ReturnType<typeof prepareStatements>;

export class ChangeLog {
  private readonly now: () => Date;
  private readonly st: Statements;

  private constructor(readonly path: string, private readonly db: Database.Database, opts: OpenOptions) {
    this.now = opts.now ?? (() => new Date());
    this.st = prepareStatements(db);
  }

  /**
   * Opens (creating if missing) the change log at `path`. Checks the file with PRAGMA quick_check before writing
   * anything to it: a file that is not a healthy virtcbt change log raises ChangeLogCorruptError and stays untouched.
   */
  static open(path: string, opts: OpenOptions = {}): ChangeLog {
    let db: Database.Database;
    try {
      db = new Database(path, { timeout: opts.busyTimeoutMs ?? 5000 });
    } catch (cause) {
      throw new VirtcbtError(`cannot open change log ${path}: ${(cause as Error).message}`, {
        cause, hint: 'Check that the state directory exists and is writable by virtcbtd',
      });
    }
    try {
      ChangeLog.checkAndInit(path, db);
      // WAL: readers (status, queries) never block the folding writer. synchronous=FULL: every commit is on disk
      // before it returns; a fold or commit is rare and small, and the reconciler removes the QEMU bitmap right
      // after a fold commits, so a fold lost to a power cut after that would be a change lost.
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      return new ChangeLog(path, db, opts);
    } catch (err) {
      db.close();
      throw err;
    }
  }

  private static checkAndInit(path: string, db: Database.Database): void {
    const sqliteFailure = (cause: unknown): never => {
      const code = (cause as { code?: string }).code ?? '';
      if (code === 'SQLITE_NOTADB' || code.startsWith('SQLITE_CORRUPT')) {
        throw new ChangeLogCorruptError(path, `is not a readable SQLite database (${(cause as Error).message})`, cause);
      }
      throw new VirtcbtError(`cannot read change log ${path}: ${(cause as Error).message}`, {
        cause, hint: 'Check the file\'s permissions and the disk it is on; nothing was changed',
      });
    };
    let version: number;
    let tables: string[];
    try {
      const check = db.pragma('quick_check') as { quick_check: string }[];
      if (check.length !== 1 || check[0].quick_check !== 'ok') {
        const detail = check.slice(0, 3).map((r) => r.quick_check).join('; ');
        throw new ChangeLogCorruptError(path, `failed SQLite's integrity check: ${detail}`);
      }
      version = db.pragma('user_version', { simple: true }) as number;
      tables = (db.prepare("SELECT name FROM sqlite_schema WHERE type = 'table'").all() as { name: string }[]).map((r) => r.name);
    } catch (err) {
      if (err instanceof VirtcbtError) throw err;
      return sqliteFailure(err);
    }
    if (version > SCHEMA_VERSION) {
      throw new VirtcbtError(`change log ${path} has schema version ${version}, newer than this virtcbt understands (${SCHEMA_VERSION})`, {
        hint: 'Run the virtcbt version that wrote it, or move the file aside to start a new change log (every consumer\'s next pass will be full)',
      });
    }
    if (version === 0) {
      const foreign = tables.filter((t) => !t.startsWith('sqlite_'));
      if (foreign.length > 0) throw new ChangeLogCorruptError(path, `is an SQLite database but not a virtcbt change log (tables: ${foreign.join(', ')})`);
      // 1 KiB database pages (set before WAL, which fixes the page size): page BLOBs run from a few bytes to tens of
      // KB, and a BLOB of 1.4–4 KB fits only once in a 4 KiB page, leaving up to half of it empty. With 1 KiB pages
      // a large BLOB goes to overflow pages that SQLite fills exactly, and the small local parts pack densely.
      // Measured (bench/changelog-fold.ts): 1% scattered 3.47 → 3.26 bytes per changed block, ten generations of
      // 0.1% each 6.6 → 4.9; reads and folds touch whole BLOBs, so the deeper overflow chains cost little.
      if (tables.length === 0) db.pragma(`page_size = ${DB_PAGE_SIZE}`);
      db.pragma('journal_mode = WAL');
      db.transaction(() => {
        db.exec(SCHEMA_SQL);
        db.pragma(`user_version = ${SCHEMA_VERSION}`);
      }).immediate();
      return;
    }
    const missing = SCHEMA_TABLES.filter((t) => !tables.includes(t));
    if (missing.length > 0) throw new ChangeLogCorruptError(path, `lacks tables ${missing.join(', ')}`);
    // Each step in its own transaction: a crash between two leaves a file of the version before.
    if (version < 2) {
      db.transaction(() => {
        db.exec('ALTER TABLE disks ADD COLUMN layer TEXT');
        db.pragma('user_version = 2');
      }).immediate();
    }
    if (version < 3) {
      // Every domain tracked so far gets an identity of its own. Backups recorded before have none, which counts
      // as another identity: each chain starts over with one full backup (its reason says why).
      db.transaction(() => {
        db.exec('ALTER TABLE domains ADD COLUMN log_id TEXT');
        const setId = db.prepare('UPDATE domains SET log_id = ? WHERE id = ?');
        for (const { id } of db.prepare('SELECT id FROM domains').all() as { id: number }[]) setId.run(newLogId(), id);
        db.exec('CREATE UNIQUE INDEX domains_by_log_id ON domains (log_id)');
        db.pragma('user_version = 3');
      }).immediate();
    }
  }

  private stamp(): string {
    return this.now().toISOString();
  }

  // ---------------------------------------------------------------- look-ups that throw clear errors

  private requireDomain(name: string): DomainRow {
    validateDomainName(name);
    const row = this.st.domain.get(name);
    if (!row) {
      throw new UsageError(`domain ${name} is not in the change log`, {
        domain: name, hint: 'Enable tracking for it with `virtcbt enable DOMAIN`, or check the name with `virtcbt status`',
      });
    }
    return row;
  }

  private requireDisk(d: DomainRow, target: string): DiskRow {
    validateTarget(target, d.name);
    const row = this.st.disk.get(d.id, target);
    if (!row) {
      throw new UsageError(`disk ${target} is not tracked`, {
        domain: d.name, disk: target, hint: 'Check the disk targets with `virtcbt status DOMAIN`',
      });
    }
    return row;
  }

  private requireConsumer(d: DomainRow, name: string): ConsumerRow {
    validateConsumerName(name, d.name);
    const row = this.st.consumer.get(d.id, name);
    if (!row) {
      throw new UsageError(`consumer ${name} does not exist`, {
        domain: d.name, hint: `Add it with \`virtcbt consumer add ${d.name} ${name}\` (its first pass will be full)`,
      });
    }
    return row;
  }

  private requirePass(id: number): PassRow {
    if (!Number.isSafeInteger(id) || id <= 0) throw new UsageError(`pass id ${JSON.stringify(id)} is not valid`, { hint: 'Use the id `pass begin` printed' });
    const row = this.st.pass.get(id);
    if (!row) {
      throw new UsageError(`pass ${id} does not exist (it never did, or it was closed long ago, or its consumer was removed)`, {
        hint: 'List open passes with `virtcbt status`',
      });
    }
    return row;
  }

  private requireBitmap(d: DomainRow, disk: DiskRow, name: string): BitmapRow {
    const row = this.st.bitmap.get(disk.id, name);
    if (!row) {
      throw new UsageError(`bitmap ${name} is not recorded in the change log`, {
        domain: d.name, disk: disk.target, hint: 'Record it with recordBitmap before folding or changing it',
      });
    }
    return row;
  }

  // ---------------------------------------------------------------- domains

  /**
   * Adds the domain if it is new (generation 1, a new change-log identity); returns it either way. A domain removed
   * and added again gets a new identity: its generations start over and mean something else.
   */
  ensureDomain(name: string): DomainInfo {
    validateDomainName(name);
    return this.db.transaction(() => {
      if (!this.st.domain.get(name)) this.st.insertDomain.run(name, this.stamp(), newLogId());
      return domainInfo(this.st.domain.get(name)!);
    }).immediate();
  }

  listDomains(): DomainInfo[] {
    return this.st.domains.all().map(domainInfo);
  }

  /** Deletes the domain with its disks, pages, bitmaps, consumers and passes. */
  removeDomain(name: string): void {
    this.db.transaction(() => { this.st.deleteDomain.run(this.requireDomain(name).id); }).immediate();
  }

  currentGeneration(domain: string): number {
    return this.requireDomain(domain).generation;
  }

  /** The identity of the domain's change log (see identity.ts). */
  logId(domain: string): string {
    return this.requireDomain(domain).log_id;
  }

  // ---------------------------------------------------------------- disks

  /**
   * Adds a disk (floor = current generation: every consumer's first pass of it is full), or updates its size and
   * block size. A change of either raises the floor: the log's blocks no longer line up with the disk.
   */
  upsertDisk(domain: string, target: string, spec: DiskSpec): UpsertDiskResult {
    return this.db.transaction((): UpsertDiskResult => {
      const d = this.requireDomain(domain);
      validateTarget(target, domain);
      const { blockSize, sizeBytes } = spec;
      if (!Number.isSafeInteger(blockSize) || blockSize < 512 || blockSize > 2 ** 31 || (blockSize & (blockSize - 1)) !== 0) {
        throw new UsageError(`block size ${blockSize} is not a power of two between 512 B and 2 GiB`, { domain, disk: target });
      }
      if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
        throw new UsageError(`disk size ${sizeBytes} is not a byte count`, { domain, disk: target });
      }
      const blockCount = Math.ceil(sizeBytes / blockSize);
      const existing = this.st.disk.get(d.id, target);
      const at = this.stamp();
      if (!existing) {
        this.st.insertDisk.run(d.id, target, blockSize, sizeBytes, blockCount, d.generation, 'disk added to the change log', at, at);
        return { ...diskInfo(d.name, this.st.disk.get(d.id, target)!), created: true };
      }
      const changes: string[] = [];
      if (existing.block_size !== blockSize) changes.push(`block size changed from ${existing.block_size} to ${blockSize} bytes`);
      if (existing.size_bytes !== sizeBytes) changes.push(`disk size changed from ${existing.size_bytes} to ${sizeBytes} bytes`);
      if (changes.length === 0) return { ...diskInfo(d.name, existing), created: false };
      this.st.resizeDisk.run(blockSize, sizeBytes, blockCount, existing.id);
      const reason = changes.join('; ');
      this.raiseFloorRow(d, existing, reason);
      return { ...diskInfo(d.name, this.st.disk.get(d.id, target)!), created: false, floorRaised: reason };
    }).immediate();
  }

  /** Records the image file (active layer) the disk's bitmaps sit on; see DiskInfo.layer. */
  setDiskLayer(domain: string, target: string, layer: string): void {
    this.db.transaction(() => {
      const d = this.requireDomain(domain);
      const disk = this.requireDisk(d, target);
      this.db.prepare('UPDATE disks SET layer = ? WHERE id = ?').run(layer, disk.id);
    }).immediate();
  }

  /** Forgets a disk that left the domain, with its blocks and bitmap records; added again, it starts full. */
  removeDisk(domain: string, target: string): void {
    this.db.transaction(() => {
      const d = this.requireDomain(domain);
      this.st.deleteDisk.run(this.requireDisk(d, target).id);
    }).immediate();
  }

  listDisks(domain: string): DiskInfo[] {
    const d = this.requireDomain(domain);
    return this.st.disks.all(d.id).map((r) => diskInfo(d.name, r));
  }

  /**
   * floor = current generation, with the reason and time kept for `status`: every consumer's next pass of this disk
   * is full. Use it whenever changes may have gone unrecorded (bitmap lost or inconsistent, disk moved or resized).
   */
  raiseFloor(domain: string, target: string, reason: string): DiskInfo {
    return this.db.transaction(() => {
      const d = this.requireDomain(domain);
      const disk = this.requireDisk(d, target);
      if (typeof reason !== 'string' || reason.trim() === '') throw new UsageError('raiseFloor needs a reason for `status` to show', { domain, disk: target });
      this.raiseFloorRow(d, disk, reason);
      return diskInfo(d.name, this.st.disk.get(d.id, target)!);
    }).immediate();
  }

  private raiseFloorRow(d: DomainRow, disk: DiskRow, reason: string): void {
    this.st.setFloor.run(d.generation, reason, this.stamp(), disk.id);
    // Every stored generation is <= G = the new floor, and a query only asks for generations above a consumer's last,
    // which is >= floor when the query is not full: nothing stored can be asked for again. Dropping it frees the
    // space and also clears any unreadable page.
    this.st.deletePages.run(disk.id);
  }

  // ---------------------------------------------------------------- bitmaps

  /**
   * Records a QEMU bitmap that records generation `generation` of a disk. A new record must carry the domain's
   * current generation (a bitmap starts recording now; an older generation would hide its writes from consumers
   * that already passed it). Recording an existing bitmap again updates its state (forward only).
   */
  recordBitmap(domain: string, target: string, name: string, generation: number, state: RecordableBitmapState): BitmapRecord {
    return this.db.transaction(() => {
      const d = this.requireDomain(domain);
      const disk = this.requireDisk(d, target);
      checkBitmapName(name, domain, target);
      checkRecordableState(state, domain, target);
      const existing = this.st.bitmap.get(disk.id, name);
      if (existing) {
        if (existing.generation !== generation) {
          throw new UsageError(`bitmap ${name} is recorded with generation ${existing.generation}, not ${generation}`, {
            domain, disk: target, hint: 'A bitmap keeps the generation it was created in; forget it and record a new one',
          });
        }
        this.setStateRow(d, disk, existing, state);
      } else {
        if (generation !== d.generation) {
          throw new UsageError(`bitmap ${name} would record generation ${generation}, but the domain is recording generation ${d.generation}`, {
            domain, disk: target, hint: 'Read the generation with currentGeneration() in the same step that creates the bitmap',
          });
        }
        const at = this.stamp();
        this.st.insertBitmap.run(disk.id, name, generation, state, at, at);
      }
      return bitmapRecord(this.st.bitmap.get(disk.id, name)!);
    }).immediate();
  }

  /** Moves a recorded bitmap forward: creating → active → frozen. */
  setBitmapState(domain: string, target: string, name: string, state: RecordableBitmapState): BitmapRecord {
    return this.db.transaction(() => {
      const d = this.requireDomain(domain);
      const disk = this.requireDisk(d, target);
      checkRecordableState(state, domain, target);
      const row = this.requireBitmap(d, disk, name);
      this.setStateRow(d, disk, row, state);
      return bitmapRecord(this.st.bitmap.get(disk.id, name)!);
    }).immediate();
  }

  /** After a rotation in QEMU: per disk, the new bitmap is active and the old one frozen, in one transaction. */
  markRotated(domain: string, rotations: readonly { target: string; active: string; frozen: string }[]): void {
    this.db.transaction(() => {
      const d = this.requireDomain(domain);
      for (const r of rotations) {
        const disk = this.requireDisk(d, r.target);
        this.setStateRow(d, disk, this.requireBitmap(d, disk, r.frozen), 'frozen');
        this.setStateRow(d, disk, this.requireBitmap(d, disk, r.active), 'active');
      }
    }).immediate();
  }

  private setStateRow(d: DomainRow, disk: DiskRow, row: BitmapRow, state: RecordableBitmapState): void {
    if (row.state === state) return;
    if (STATE_ORDER[state] < STATE_ORDER[row.state]) {
      throw new UsageError(`bitmap ${row.name} is ${row.state} and cannot go back to ${state}`, {
        domain: d.name, disk: disk.target, hint: 'A bitmap only moves forward (creating, active, frozen, folded); forget it and record a new one',
      });
    }
    this.st.setBitmapState.run(state, this.stamp(), disk.id, row.name);
  }

  listBitmaps(domain: string, target?: string): BitmapRecord[] {
    const d = this.requireDomain(domain);
    if (target !== undefined) this.requireDisk(d, target);
    return this.st.domainBitmaps.all(d.id).filter((b) => target === undefined || b.target === target).map(bitmapRecord);
  }

  /** Same as listBitmaps. */
  bitmaps(domain: string, target?: string): BitmapRecord[] {
    return this.listBitmaps(domain, target);
  }

  /**
   * Drops a bitmap's record once QEMU no longer has it. Idempotent: returns false when there was no record.
   * Forgetting a bitmap that was active or frozen but never folded loses its changes, so it raises the floor
   * (unless the floor already is at the current generation). A `creating` bitmap never held changes the log relies
   * on: the previous bitmap keeps recording until the rotation is recorded.
   */
  forgetBitmap(domain: string, target: string, name: string): { forgotten: boolean; floorRaised?: string } {
    return this.db.transaction(() => {
      const d = this.requireDomain(domain);
      const disk = this.requireDisk(d, target);
      const row = this.st.bitmap.get(disk.id, name);
      if (!row) return { forgotten: false };
      this.st.deleteBitmap.run(disk.id, name);
      if ((row.state === 'active' || row.state === 'frozen') && disk.floor < d.generation) {
        const reason = `bitmap ${name} (generation ${row.generation}) was dropped while ${row.state}, before it was folded`;
        this.raiseFloorRow(d, disk, reason);
        return { forgotten: true, floorRaised: reason };
      }
      return { forgotten: true };
    }).immediate();
  }

  // ---------------------------------------------------------------- fold

  /**
   * Marks every block touched by `extents` (bytes, rounded outward to blocks) with the bitmap's generation, keeping
   * any newer generation already there, and marks the bitmap folded — all in one SQLite transaction, so a crash
   * leaves either the whole fold or none of it. Folding a folded bitmap does nothing. The bitmap must be recorded as
   * frozen: folding one that still records would lose the writes that follow. Cost: O(extents + runs in the pages
   * touched).
   */
  fold(domain: string, target: string, bitmapName: string, extents: readonly ExtentInput[]): FoldResult {
    return this.db.transaction((): FoldResult => {
      const d = this.requireDomain(domain);
      const disk = this.requireDisk(d, target);
      const bm = this.requireBitmap(d, disk, bitmapName);
      if (bm.state === 'folded') return { alreadyFolded: true, generation: bm.generation, extents: 0, blocks: 0, pages: 0 };
      if (bm.state !== 'frozen') {
        throw new VirtcbtError(`bitmap ${bitmapName} is ${bm.state}, not frozen: folding a bitmap that still records would lose the writes that follow`, {
          domain, disk: target, hint: 'Disable it in QEMU (rotate) and record it as frozen, then fold it',
        });
      }
      let intervals: number[];
      try {
        intervals = toBlockIntervals(extents, disk.block_size, disk.size_bytes);
      } catch (err) {
        if (!(err instanceof ExtentRangeError)) throw err;
        throw new VirtcbtError(`cannot fold bitmap ${bitmapName}: ${err.message}`, {
          domain, disk: target, cause: err,
          hint: 'The disk size in the change log is stale: call upsertDisk with the current size (which raises the floor), then fold again',
        });
      }
      const gen = bm.generation;
      // Every query asks for generations above some consumer's last pass (or is full): runs at or below the oldest
      // such generation can never be reported again, so the pages a fold rewrites anyway are pruned of them. This
      // keeps the log the size of the consumers' window, not of the disk's whole history. With no consumer that has
      // passed, every pass is full and nothing needs keeping.
      const horizon = this.st.horizon.get(d.id, d.id)?.t ?? d.generation;
      let pages = 0;
      const unreadable: number[] = [];
      forEachPageSlice(intervals, gen, (pageNo, add) => {
        const row = this.st.page.get(disk.id, pageNo);
        let old: Run[] = [];
        if (row) {
          try {
            old = decodeRuns(row.runs);
          } catch (err) {
            if (!(err instanceof PageFormatError)) throw err;
            unreadable.push(pageNo);
          }
        }
        let merged = mergeRuns(old, add);
        if (merged.some((r) => r.generation <= horizon)) merged = mergeRuns([], merged.filter((r) => r.generation > horizon));
        pages++;
        if (merged.length === 0) {
          if (row) this.st.deletePage.run(disk.id, pageNo);
          return;
        }
        const blob = encodeRuns(merged);
        this.st.upsertPage.run(disk.id, pageNo, maxGeneration(merged), Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength));
      });
      const at = this.stamp();
      const blocks = countBlocks(intervals);
      this.st.markFolded.run(at, at, disk.id, bitmapName);
      this.st.foldStats.run(at, bitmapName, intervals.length / 2, blocks, disk.id);
      let floorRaised: string | undefined;
      if (unreadable.length > 0) {
        floorRaised = `change-log page${unreadable.length > 1 ? 's' : ''} ${unreadable.join(', ')} could not be read during a fold`;
        this.raiseFloorRow(d, disk, floorRaised);
      }
      return { alreadyFolded: false, generation: gen, extents: intervals.length / 2, blocks, pages, ...(floorRaised ? { floorRaised } : {}) };
    }).immediate();
  }

  // ---------------------------------------------------------------- consumers

  addConsumer(domain: string, name: string): ConsumerInfo {
    return this.db.transaction(() => {
      const d = this.requireDomain(domain);
      validateConsumerName(name, domain);
      if (this.st.consumer.get(d.id, name)) {
        throw new UsageError(`consumer ${name} already exists`, { domain, hint: 'Pick another name, or remove the old consumer first' });
      }
      this.st.insertConsumer.run(d.id, name, this.stamp());
      return consumerInfo(this.st.consumer.get(d.id, name)!);
    }).immediate();
  }

  /**
   * Keeps the changes after `generation` answerable (folds prune what no consumer can ask for
   * again) under the consumer-like name `name`, which reads as a consumer whose last pass was at
   * `generation` and holds the log's history from there as any consumer does; removeConsumer
   * drops it. For a sync that resumes an interrupted seed: it asks for the changes since that
   * seed's instant (passChangesSincePin), which nothing else would keep.
   */
  pinHistory(domain: string, name: string, generation: number): ConsumerInfo {
    return this.db.transaction(() => {
      const d = this.requireDomain(domain);
      validateConsumerName(name, domain);
      if (!Number.isSafeInteger(generation) || generation < 0 || generation > d.generation) {
        throw new UsageError(`generation ${generation} is not one of the change log of ${domain} (0 to ${d.generation})`, { domain });
      }
      if (!this.st.consumer.get(d.id, name)) this.st.insertConsumer.run(d.id, name, this.stamp());
      const c = this.st.consumer.get(d.id, name)!;
      this.st.setConsumerLast.run(generation, this.stamp(), c.id);
      return consumerInfo(this.st.consumer.get(d.id, name)!);
    }).immediate();
  }

  /** Removes the consumer and its passes (open ones too). */
  removeConsumer(domain: string, name: string): void {
    this.db.transaction(() => {
      const d = this.requireDomain(domain);
      this.st.deleteConsumer.run(this.requireConsumer(d, name).id);
    }).immediate();
  }

  listConsumers(domain: string): ConsumerInfo[] {
    return this.st.consumers.all(this.requireDomain(domain).id).map(consumerInfo);
  }

  // ---------------------------------------------------------------- passes

  /**
   * Starts a pass: P = the domain's generation, and the domain moves to P + 1, in one transaction. `newBitmaps` are
   * the bitmaps the caller rotates to: they are recorded `creating` with generation P + 1 in the same transaction.
   * Every disk with an active bitmap must be rotated (listed), or that bitmap would go on recording writes after
   * the pass under generation P.
   */
  beginPass(domain: string, consumer: string, opts: { newBitmaps?: readonly NewBitmap[] } = {}): PassInfo {
    return this.db.transaction((): PassInfo => {
      const d = this.requireDomain(domain);
      const c = this.requireConsumer(d, consumer);
      const P = d.generation;
      const next = P + 1;
      const rotated = new Map<string, string>();
      for (const nb of opts.newBitmaps ?? []) {
        const disk = this.requireDisk(d, nb.target);
        checkBitmapName(nb.name, domain, nb.target);
        if (rotated.has(nb.target)) throw new UsageError(`disk ${nb.target} is listed twice in newBitmaps`, { domain, disk: nb.target });
        if (this.st.bitmap.get(disk.id, nb.name)) {
          throw new UsageError(`bitmap ${nb.name} is already recorded`, { domain, disk: nb.target, hint: 'Rotate to a bitmap with a new name' });
        }
        rotated.set(nb.target, nb.name);
      }
      for (const b of this.st.domainBitmaps.all(d.id)) {
        if (b.state === 'active' && !rotated.has(b.target)) {
          throw new VirtcbtError(`disk ${b.target} has active bitmap ${b.name} that this pass does not rotate`, {
            domain, disk: b.target, hint: `Pass {target: '${b.target}', name: NEW} in newBitmaps and rotate to it in QEMU`,
          });
        }
      }
      this.st.setGeneration.run(next, d.id);
      const at = this.stamp();
      for (const [target, name] of rotated) this.st.insertBitmap.run(this.st.disk.get(d.id, target)!.id, name, next, 'creating', at, at);
      const id = Number(this.st.insertPass.run(c.id, P, c.last, at).lastInsertRowid);
      return passInfo(this.st.pass.get(id)!);
    }).immediate();
  }

  getPass(id: number): PassInfo {
    return passInfo(this.requirePass(id));
  }

  /**
   * The pass's changes per disk: blocks with generation in (since, P], or the whole disk when the consumer never
   * completed a pass or its last generation is below the disk's floor. Refuses while a bitmap of generation <= P is
   * not folded yet: its changes would be missing.
   *
   * Blocks with a generation above P are included too. A block keeps only the generation it last changed in, so a
   * block written in (since, P] and again after P (a bitmap of P + 1 folded while this pass is open) carries P + 1:
   * leaving it out would lose the first write from this pass. Copying a block that changed only after P costs bytes,
   * never data. In the reconciler's order (fold P's bitmap, then ask) nothing above P exists yet and this is exactly
   * (since, P].
   */
  passChanges(passId: number): DiskChanges[] {
    return this.changesOfPass(passId, (p) => p.since);
  }

  /**
   * The pass's changes per disk as passChanges gives them, but since the generation `pin` holds
   * (pinHistory) instead of its consumer's last pass: what a sync resuming a seed interrupted at
   * that generation must copy again below where the seed got to. Only a pin (or consumer) keeps
   * that history from being pruned, hence the name rather than a generation. Whole disks where
   * the pin is below the floor (full).
   */
  passChangesSincePin(passId: number, pin: string): DiskChanges[] {
    return this.changesOfPass(passId, (p) => {
      const since = this.st.consumer.get(this.requireDomain(p.domain).id, pin)?.last;
      if (since === undefined || since === null) throw new UsageError(`no pin ${pin} of domain ${p.domain} holds a generation`, { domain: p.domain });
      return since;
    });
  }

  private changesOfPass(passId: number, since: (p: PassRow) => number | null): DiskChanges[] {
    return this.db.transaction(() => {
      const p = this.requirePass(passId);
      if (p.state !== 'open') {
        throw new UsageError(`pass ${passId} is ${p.state}`, { domain: p.domain, hint: 'Begin a new pass' });
      }
      const d = this.requireDomain(p.domain);
      this.checkAllFolded(d, p.generation, `pass ${passId} of consumer ${p.consumer}`);
      return this.st.disks.all(d.id).map((disk) => this.diskChanges(disk, p.consumer, since(p)));
    })();
  }

  /**
   * Preview: what the consumer's next pass would contain so far, over (last, G]. Writes still only in QEMU's
   * active bitmaps are not in it yet.
   */
  changes(domain: string, consumer: string): DiskChanges[] {
    return this.db.transaction(() => {
      const d = this.requireDomain(domain);
      const c = this.requireConsumer(d, consumer);
      return this.st.disks.all(d.id).map((disk) => this.diskChanges(disk, c.name, c.last));
    })();
  }

  /** Moves the consumer's last generation to P (if P is newer) and closes the pass. */
  commitPass(passId: number): CommitResult {
    return this.db.transaction((): CommitResult => {
      const p = this.requirePass(passId);
      if (p.state !== 'open') {
        throw new UsageError(`pass ${passId} is already ${p.state}; the consumer was not moved`, {
          domain: p.domain, hint: 'Begin a new pass',
        });
      }
      const d = this.requireDomain(p.domain);
      this.checkAllFolded(d, p.generation, `committing pass ${passId} of consumer ${p.consumer}`);
      const c = this.requireConsumer(d, p.consumer);
      const at = this.stamp();
      const moved = c.last === null || p.generation > c.last;
      if (moved) this.st.setConsumerLast.run(p.generation, at, c.id);
      else this.st.touchConsumer.run(at, c.id);
      this.st.closePass.run('committed', at, p.id);
      this.st.pruneClosed.run(c.id, c.id);
      return { consumer: c.name, generation: p.generation, last: moved ? p.generation : c.last!, moved };
    }).immediate();
  }

  /** Closes the pass without moving the consumer. */
  abortPass(passId: number): PassInfo {
    return this.db.transaction(() => {
      const p = this.requirePass(passId);
      if (p.state !== 'open') throw new UsageError(`pass ${passId} is already ${p.state}`, { domain: p.domain });
      this.st.closePass.run('aborted', this.stamp(), p.id);
      this.st.pruneClosed.run(p.consumer_id, p.consumer_id);
      return passInfo(this.st.pass.get(p.id)!);
    }).immediate();
  }

  /** Open passes, of one domain or of all. */
  openPasses(domain?: string): PassInfo[] {
    const rows = domain === undefined ? this.st.openPassesAll.all() : this.st.openPassesOf.all(this.requireDomain(domain).id);
    return rows.map(passInfo);
  }

  private checkAllFolded(d: DomainRow, upTo: number, what: string): void {
    const b = this.st.unfoldedUpTo.get(d.id, upTo);
    if (b) {
      throw new VirtcbtError(`${what}: bitmap ${b.name} (generation ${b.generation}) is ${b.state}, not folded yet, so its changes are not in the log`, {
        domain: d.name, disk: b.target,
        hint: 'Rotate and fold it first (the reconciler does), or drop it with forgetBitmap if QEMU lost it (that raises the floor)',
      });
    }
  }

  /** Changes of one disk after generation `since` (null = never passed: full). */
  private diskChanges(disk: DiskRow, consumer: string, since: number | null): DiskChanges {
    const base = { target: disk.target, blockSize: disk.block_size, sizeBytes: disk.size_bytes };
    const full = (reason: string): DiskChanges => ({ ...base, full: true, reason, extents: disk.size_bytes > 0 ? [{ offset: 0, length: disk.size_bytes }] : [] });
    if (since === null) return full(`consumer ${consumer} has no completed pass`);
    if (since < disk.floor) {
      return full(`floor raised to generation ${disk.floor} at ${disk.floor_at} (${disk.floor_reason}), after consumer ${consumer}'s last pass at generation ${since}`);
    }
    try {
      const rows = this.st.newerPages.all(disk.id, since).map((r) => ({ pageNo: r.page_no, runs: r.runs }));
      return { ...base, full: false, extents: collectExtents(rows, since, Infinity, disk.block_size, disk.size_bytes) };
    } catch (err) {
      if (!(err instanceof PageFormatError)) throw err;
      return full(`a page of the change log could not be read (${err.message})`);
    }
  }

  // ---------------------------------------------------------------- status and housekeeping

  status(domain: string): DomainStatus {
    return this.db.transaction((): DomainStatus => {
      const d = this.requireDomain(domain);
      const disks = this.st.disks.all(d.id).map((r): DiskStatus => {
        const storage = this.st.diskStorage.get(r.id)!;
        return {
          ...diskInfo(d.name, r),
          foldCount: r.fold_count,
          lastFold: r.last_fold_at === null ? null : {
            at: r.last_fold_at, bitmap: r.last_fold_bitmap ?? '', extents: r.last_fold_extents ?? 0, blocks: r.last_fold_blocks ?? 0,
          },
          storedPages: storage.n,
          storedBytes: storage.bytes ?? 0,
        };
      });
      const folds = disks.map((k) => k.lastFold?.at).filter((x): x is string => x !== undefined).sort();
      return {
        domain: d.name,
        logId: d.log_id,
        generation: d.generation,
        createdAt: d.created_at,
        disks,
        consumers: this.st.consumers.all(d.id).map(consumerInfo),
        openPasses: this.st.openPassesOf.all(d.id).map(passInfo),
        bitmaps: this.st.domainBitmaps.all(d.id).map(bitmapRecord),
        lastFoldAt: folds.length > 0 ? folds[folds.length - 1] : null,
      };
    })();
  }

  /** Copies the WAL into the database file and truncates it (the daemon may call this when idle). */
  checkpoint(): void {
    this.db.pragma('wal_checkpoint(TRUNCATE)');
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function checkBitmapName(name: unknown, domain: string, target: string): asserts name is string {
  // QEMU allows up to 1023 bytes; control characters would only confuse logs and status output.
  // eslint-disable-next-line no-control-regex
  if (typeof name !== 'string' || name.length === 0 || name.length > 1023 || /[\u0000-\u001f]/.test(name)) {
    throw new UsageError(`bitmap name ${JSON.stringify(name)} is not valid`, { domain, disk: target });
  }
}

function checkRecordableState(state: unknown, domain: string, target: string): asserts state is RecordableBitmapState {
  if (state === 'folded') {
    throw new UsageError('a bitmap is marked folded only by fold(), which puts its blocks in the log', { domain, disk: target });
  }
  if (state !== 'creating' && state !== 'active' && state !== 'frozen') {
    throw new UsageError(`bitmap state ${JSON.stringify(state)} is not one of creating, active, frozen`, { domain, disk: target });
  }
}

function domainInfo(r: DomainRow): DomainInfo {
  return { name: r.name, generation: r.generation, createdAt: r.created_at, logId: r.log_id };
}

function diskInfo(domain: string, r: DiskRow): DiskInfo {
  return {
    domain, target: r.target, blockSize: r.block_size, sizeBytes: r.size_bytes, blockCount: r.block_count,
    floor: r.floor, floorReason: r.floor_reason, floorAt: r.floor_at, createdAt: r.created_at, layer: r.layer,
  };
}

function bitmapRecord(r: BitmapRow): BitmapRecord {
  return {
    target: r.target, name: r.name, generation: r.generation, state: r.state,
    createdAt: r.created_at, updatedAt: r.updated_at, foldedAt: r.folded_at,
  };
}

function consumerInfo(r: ConsumerRow): ConsumerInfo {
  return { name: r.name, last: r.last, createdAt: r.created_at, lastPassAt: r.last_pass_at };
}

function passInfo(r: PassRow): PassInfo {
  return {
    id: r.id, domain: r.domain, logId: r.log_id, consumer: r.consumer, generation: r.generation, since: r.since,
    state: r.state, startedAt: r.started_at, endedAt: r.ended_at,
  };
}
