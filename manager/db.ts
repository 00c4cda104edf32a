import Database from 'better-sqlite3';

export type Db = Database.Database;

/**
 * Schema versions, applied in order inside one transaction each and recorded
 * in PRAGMA user_version. Never edit a shipped migration: add the next one.
 */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
  CREATE TABLE farms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
  );
  CREATE TABLE arrays (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL CHECK (size > 0),
    quality_class TEXT NOT NULL DEFAULT 'std',
    created_at TEXT NOT NULL
  );
  -- AUTOINCREMENT: a volume id (and so its serial and NAA) is never reused.
  CREATE TABLE volumes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    farm_id INTEGER REFERENCES farms(id),
    size INTEGER NOT NULL CHECK (size > 0),
    state TEXT NOT NULL,
    share_mode TEXT NOT NULL DEFAULT 'exclusive' CHECK (share_mode IN ('exclusive', 'shared')),
    serial TEXT NOT NULL UNIQUE,
    naa TEXT NOT NULL UNIQUE,
    ever_mapped INTEGER NOT NULL DEFAULT 0,
    cache_policy TEXT NOT NULL DEFAULT 'write-back' CHECK (cache_policy IN ('none', 'write-through', 'write-back')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
  );
  CREATE TABLE extents (
    volume_id INTEGER NOT NULL REFERENCES volumes(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    array_id INTEGER NOT NULL REFERENCES arrays(id),
    offset INTEGER NOT NULL CHECK (offset >= 0),
    length INTEGER NOT NULL CHECK (length > 0),
    PRIMARY KEY (volume_id, seq)
  );
  CREATE INDEX extents_by_array ON extents(array_id, offset);
  CREATE TABLE hosts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    farm_id INTEGER NOT NULL REFERENCES farms(id),
    protocols TEXT NOT NULL DEFAULT 'nbd',
    default_protocol TEXT NOT NULL DEFAULT 'nbd',
    nbd_tcp TEXT,
    created_at TEXT NOT NULL
  );
  CREATE TABLE bindings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    volume_id INTEGER NOT NULL REFERENCES volumes(id),
    host_id INTEGER NOT NULL REFERENCES hosts(id),
    target INTEGER NOT NULL CHECK (target BETWEEN 0 AND 255),
    lun INTEGER NOT NULL CHECK (lun BETWEEN 0 AND 16383),
    protocol TEXT NOT NULL DEFAULT 'nbd',
    mode TEXT NOT NULL DEFAULT 'exclusive' CHECK (mode IN ('exclusive', 'shared', 'read-only')),
    mapped INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    UNIQUE (host_id, target, lun)
  );
  `,
  // 2: a host may insist on TLS for NBD on TCP listeners (its own unix socket stays open).
  `
  ALTER TABLE hosts ADD COLUMN require_tls INTEGER NOT NULL DEFAULT 0;
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** Opens (creating if needed) the control database in WAL mode and brings its schema up to date. */
export function openDb(path: string): Db {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  // FULL: a committed control change survives power loss, not just a process crash.
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  migrate(db);
  return db;
}

export function migrate(db: Db): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > MIGRATIONS.length) {
    throw new Error(`control database schema ${current} is newer than this blockgate (${MIGRATIONS.length})`);
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}
