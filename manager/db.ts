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
  // 2: storage lifecycle (issue 6): scrub state, images, VMs, the job queue and the event log.
  `
  ALTER TABLE volumes ADD COLUMN dirty INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE volumes ADD COLUMN scrubbed_at TEXT;
  ALTER TABLE volumes ADD COLUMN image_id INTEGER;
  ALTER TABLE volumes ADD COLUMN quality_class TEXT;
  ALTER TABLE volumes ADD COLUMN snapshot_of INTEGER REFERENCES volumes(id);
  -- Volumes the demo seed or an earlier build bound and mapped were written by hosts.
  UPDATE volumes SET dirty = 1 WHERE ever_mapped = 1;
  CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size > 0),
    created_at TEXT NOT NULL
  );
  CREATE TABLE vms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    host_id INTEGER NOT NULL REFERENCES hosts(id),
    created_at TEXT NOT NULL
  );
  CREATE TABLE vm_bindings (
    vm_id INTEGER NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    binding_id INTEGER NOT NULL REFERENCES bindings(id) ON DELETE CASCADE,
    PRIMARY KEY (vm_id, binding_id)
  );
  CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    params TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    checkpoint TEXT,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
  );
  CREATE INDEX jobs_by_state ON jobs(state);
  -- Which volumes a job works on: jobs on one volume run one at a time.
  CREATE TABLE job_volumes (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    volume_id INTEGER NOT NULL,
    PRIMARY KEY (job_id, volume_id)
  );
  CREATE INDEX job_volumes_by_volume ON job_volumes(volume_id);
  CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    type TEXT NOT NULL,
    subject TEXT,
    data TEXT NOT NULL
  );
  `,
  // 3: a host may insist on TLS for NBD on TCP listeners (its own unix socket stays open).
  // 2: a host may insist on TLS for NBD on TCP listeners (its own unix socket stays open).
  `
  ALTER TABLE hosts ADD COLUMN require_tls INTEGER NOT NULL DEFAULT 0;
  `,
  // iSCSI (issue 10): the initiator names that are each host, its CHAP mode (secrets live in
  // DATA/iscsi/chap/<host>.json, mode 0600), SCSI reservations per volume; hosts may use both protocols.
  `
  CREATE TABLE host_initiators (
    iqn TEXT PRIMARY KEY,
    host_id INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL
  );
  CREATE INDEX host_initiators_by_host ON host_initiators(host_id);
  ALTER TABLE hosts ADD COLUMN chap TEXT CHECK (chap IN ('one-way', 'mutual'));
  UPDATE hosts SET protocols = 'nbd,iscsi' WHERE protocols = 'nbd';
  CREATE TABLE scsi_reservations (
    volume_id INTEGER PRIMARY KEY REFERENCES volumes(id) ON DELETE CASCADE,
    state TEXT NOT NULL
  );
  `,
  `
  -- iscsi2: thick provisioning (a thick volume's space is allocated-zero from the start and never a hole)
  ALTER TABLE volumes ADD COLUMN provisioning TEXT NOT NULL DEFAULT 'thin' CHECK (provisioning IN ('thin', 'thick'));
  `,
  `
  -- copies: copy-on-write snapshot links; each snapshot's region ownership map is DATA/snapshots/<snapshot_id>.cow
  CREATE TABLE cow_links (
    snapshot_id INTEGER PRIMARY KEY REFERENCES volumes(id),
    origin_id INTEGER NOT NULL REFERENCES volumes(id),
    region INTEGER NOT NULL,
    created_at TEXT NOT NULL
  );
  CREATE INDEX cow_links_by_origin ON cow_links(origin_id);
  `,
  `
  -- switch: a binding is served over nbd, iscsi or both; until now every binding was served over
  -- every protocol its host speaks, so that is what existing bindings (and the default of hosts
  -- speaking both) become.
  UPDATE bindings SET protocol = (
    SELECT CASE WHEN instr(h.protocols, 'nbd') > 0 AND instr(h.protocols, 'iscsi') > 0 THEN 'both'
                WHEN instr(h.protocols, 'iscsi') > 0 THEN 'iscsi' ELSE 'nbd' END
    FROM hosts h WHERE h.id = bindings.host_id);
  UPDATE hosts SET default_protocol = 'both' WHERE instr(protocols, 'nbd') > 0 AND instr(protocols, 'iscsi') > 0;
  `,
  `
  -- services: webhooks and their persisted delivery queue (issue 15 item 5); secrets live in DATA/webhooks/<id>.secret (0600)
  CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    classes TEXT NOT NULL,
    max_attempts INTEGER NOT NULL CHECK (max_attempts > 0),
    backoff_ms INTEGER NOT NULL CHECK (backoff_ms >= 0),
    created_at TEXT NOT NULL
  );
  CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id INTEGER NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    notice INTEGER NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created_at TEXT NOT NULL,
    finished_at TEXT
  );
  CREATE INDEX webhook_deliveries_by_state ON webhook_deliveries(webhook_id, state, id);
  `,
  `
  -- migrate: credentials issued to a host for one VM's disks at a migration (the secret is in DATA/credentials/<identity>.key, 0600)
  CREATE TABLE host_credentials (
    identity TEXT PRIMARY KEY,
    host_id INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    vm TEXT NOT NULL,
    protocol TEXT NOT NULL CHECK (protocol IN ('nbd', 'iscsi')),
    job_id INTEGER,
    created_at TEXT NOT NULL
  );
  CREATE INDEX host_credentials_by_host ON host_credentials(host_id, vm);
  `,
  `
  -- backups: the backup catalog (issue 15 items 1-4). One row per backup and one per volume in it; a volume's
  -- part is a sparse file in its farm's backup store, full or holding only the chunks changed since its parent.
  CREATE TABLE backups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    vm TEXT NOT NULL,
    host TEXT NOT NULL,
    farm TEXT,
    label TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('full', 'incr')),
    parent_id INTEGER REFERENCES backups(id),
    state TEXT NOT NULL CHECK (state IN ('running', 'complete', 'failed')),
    store TEXT NOT NULL,
    pause_ms REAL,
    error TEXT,
    created_at TEXT NOT NULL,
    finished_at TEXT
  );
  CREATE INDEX backups_by_vm ON backups(vm, created_at);
  CREATE TABLE backup_volumes (
    backup_id INTEGER NOT NULL REFERENCES backups(id) ON DELETE CASCADE,
    volume_id INTEGER NOT NULL,
    volume TEXT NOT NULL,
    size INTEGER NOT NULL,
    full INTEGER NOT NULL,
    allocated INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    file TEXT NOT NULL,
    PRIMARY KEY (backup_id, volume_id)
  );
  CREATE TABLE backup_policies (
    scope TEXT NOT NULL CHECK (scope IN ('vm', 'farm')),
    name TEXT NOT NULL,
    schedule TEXT,
    keep_last INTEGER CHECK (keep_last > 0),
    keep_daily_days INTEGER CHECK (keep_daily_days > 0),
    store TEXT,
    PRIMARY KEY (scope, name)
  );
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
