// SQLite schema of the change log (changelog.db), and the version stored in PRAGMA user_version.

/** Bump when the schema changes; open() refuses a file made by a newer virtcbt rather than misreading it. */
export const SCHEMA_VERSION = 3;

/** Table names that identify a file as a virtcbt change log (an unversioned file with other tables is not ours). */
export const SCHEMA_TABLES = ['domains', 'disks', 'pages', 'bitmaps', 'consumers', 'passes'] as const;

export const SCHEMA_SQL = `
-- One row per libvirt domain. generation = the generation currently being recorded (starts at 1; 0 means "never").
-- log_id = the identity of this change log (a random UUID from the enable that made the row until the disable that
-- deletes it): generations mean something only under one identity (schema version 3).
CREATE TABLE domains (
  id          INTEGER PRIMARY KEY,
  name        TEXT    NOT NULL UNIQUE,
  generation  INTEGER NOT NULL CHECK (generation >= 1),
  created_at  TEXT    NOT NULL,
  log_id      TEXT    NOT NULL
);
CREATE UNIQUE INDEX domains_by_log_id ON domains (log_id);

-- One row per tracked disk (domain + target such as vda). block_size = the bitmap granularity in bytes.
-- A consumer whose last generation is below floor gets a full pass; floor_reason/floor_at say why and when.
CREATE TABLE disks (
  id              INTEGER PRIMARY KEY,
  domain_id       INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
  target          TEXT    NOT NULL,
  block_size      INTEGER NOT NULL CHECK (block_size > 0),
  size_bytes      INTEGER NOT NULL CHECK (size_bytes >= 0),
  block_count     INTEGER NOT NULL CHECK (block_count >= 0),
  floor           INTEGER NOT NULL,
  floor_reason    TEXT    NOT NULL,
  floor_at        TEXT    NOT NULL,
  created_at      TEXT    NOT NULL,
  fold_count      INTEGER NOT NULL DEFAULT 0,
  last_fold_at      TEXT,
  last_fold_bitmap  TEXT,
  last_fold_extents INTEGER,
  last_fold_blocks  INTEGER,
  -- The image file (active layer) the disk's bitmaps live on; another file there means an external snapshot,
  -- block commit or copy moved the disk away from them (schema version 2).
  layer             TEXT,
  UNIQUE (domain_id, target)
);

-- Sparse per-block generations: one row per page of PAGE_BLOCKS blocks that has any changed block, the runs
-- encoded by page-codec.ts. A rowid table (not WITHOUT ROWID) so that a BLOB of a few KB stays inside its b-tree page
-- instead of spilling into an overflow page. max_generation lets a query skip pages with nothing new.
CREATE TABLE pages (
  id              INTEGER PRIMARY KEY,
  disk_id         INTEGER NOT NULL REFERENCES disks(id) ON DELETE CASCADE,
  page_no         INTEGER NOT NULL CHECK (page_no >= 0),
  max_generation  INTEGER NOT NULL,
  runs            BLOB    NOT NULL,
  UNIQUE (disk_id, page_no)
);

-- Which QEMU dirty bitmap records which generation of which disk, and how far it got.
CREATE TABLE bitmaps (
  disk_id     INTEGER NOT NULL REFERENCES disks(id) ON DELETE CASCADE,
  name        TEXT    NOT NULL,
  generation  INTEGER NOT NULL CHECK (generation >= 1),
  state       TEXT    NOT NULL CHECK (state IN ('creating', 'active', 'frozen', 'folded')),
  created_at  TEXT    NOT NULL,
  updated_at  TEXT    NOT NULL,
  folded_at   TEXT,
  PRIMARY KEY (disk_id, name)
);

-- Independent readers of the log. last = generation of the last completed pass (NULL = never).
CREATE TABLE consumers (
  id            INTEGER PRIMARY KEY,
  domain_id     INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
  name          TEXT    NOT NULL,
  last          INTEGER,
  created_at    TEXT    NOT NULL,
  last_pass_at  TEXT,
  UNIQUE (domain_id, name)
);

-- Passes: generation = P, since = the consumer's last when the pass began.
CREATE TABLE passes (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  consumer_id  INTEGER NOT NULL REFERENCES consumers(id) ON DELETE CASCADE,
  generation   INTEGER NOT NULL,
  since        INTEGER,
  state        TEXT    NOT NULL CHECK (state IN ('open', 'committed', 'aborted')),
  started_at   TEXT    NOT NULL,
  ended_at     TEXT
);
CREATE INDEX passes_by_consumer ON passes (consumer_id, state);
`;
