import { AsyncLocalStorage } from 'node:async_hooks';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { BlockgateError, badRequest, conflict, notFound } from '../common/errors.js';
import type { CachePolicy } from '../cache/index.js';
import { ArrayFile, MAX_ARRAY_SIZE, type ArrayFault } from '../disks/index.js';
import { EXTENT_ALIGN, VolumeLayout, allocateExtents, freeExtents, type Extent } from '../mapper/index.js';
import { StatsRegistry, freshFences, type Frontend, type NamespaceChange, type Protocol, type Unit, type UnitFence } from '../target/index.js';
import { ArrayHealth, DEFAULT_OVERCOMMIT } from './array-health.js';
import type { ConfigDocument } from './operations/config.js';
import type { DataDirLock } from './data-dir-lock.js';
import { DB_FILE, hasConfiguration, hasRemains, inspectRemains, lostDatabase, moveAsideLostDatabase } from './data-dir.js';
import { openDb, type Db } from './db.js';
import { Ownership } from './ownership.js';
import { EventLog } from './events.js';
import { JobQueue } from './jobs.js';
import { bindingRecordOf, type BindingRecord } from './config-document.js';
import type { ArrayView, ConnectionDescriptor, HostView, JobView, NamespaceView, SwitchView, TlsCertificateView, VolumeView } from './views.js';
import { checkListenerAddress } from '../common/address.js';
import { connectionDescriptor } from './operations/descriptor.js';
import { CutoverStats } from './cutover-stats.js';
import { checkName, failed, formatAddress, parseAddress, protocolsOf, type AccessMode, type BindingProtocol, type ArrayRow, type BindingRow, type ExtentRow, type HostRow, type Provisioning, type ShareMode, type VolumeRow } from './model.js';
import { BindingOperations } from './operations/bindings.js';
import { ConfigOperations } from './operations/config.js';
import type { DataPath, Lifecycle, OperationContext } from './operations/context.js';
import { BulkOperations } from './operations/bulk.js';
import { SnapshotOperations } from './operations/snapshots.js';
import { BackupOperations } from './operations/backups.js';
import { Inventory } from './operations/inventory.js';
import { Migrations } from './operations/migration.js';
import { HostCredentials } from './operations/credentials.js';
import { Tracer } from './operations/trace.js';
import { Listing, type Page, type Paged } from './operations/listing.js';
import { IscsiAccess } from './operations/iscsi.js';
import { Services } from './services/index.js';
import { allowedOperations, transition, type Operation, type VolumeState } from './state.js';

export interface ManagerOptions {
  dataDir: string;
  log: Logger;
  /**
   * Fault injection points for tests of the failure edges ('configure',
   * 'bind', 'map', 'copy-image', 'publish'): the named step fails as if the
   * array or the namespace side had refused it.
   */
  faults?: readonly string[] | undefined;
  /** How often every array's file is re-checked (deleted, replaced, truncated) and file-system fill measured; 0 turns it off. */
  checkIntervalMs?: number | undefined;
  /** The data directory's lock, held by the caller; told the appliance id once it is known. */
  lock?: DataDirLock | undefined;
  /**
   * Restore mode: the control database is missing or empty and this saved
   * configuration is to be recreated in it before anything starts.
   */
  restore?: ConfigDocument | undefined;
  /** Directories besides DATA/images that image files may be registered from (admin setting). */
  imageRoots?: readonly string[] | undefined;
}

const now = (): string => new Date().toISOString();

/** Owner, group and mode of a host's unix socket (octal string, e.g. "0660"). */
export interface HostSocketAccess {
  mode?: string | undefined;
  uid?: number | undefined;
  gid?: number | undefined;
}

/**
 * The storage manager: owns the control database and keeps the data path's
 * view (attached arrays, published namespaces, per-host listeners) equal to it.
 * Every change is one SQLite transaction; the data path is updated after commit.
 */
export class StorageManager implements Lifecycle {
  readonly db: Db;
  readonly dataDir: string;
  /** The data directory's real path: what array identities and the lock name. */
  readonly dataDirReal: string;
  /** True when this start found no configuration and no array files: only then is the demo seeded. */
  freshDataDir = false;
  readonly ownership: Ownership;
  readonly imageRoots: readonly string[];
  private readonly lock: DataDirLock | undefined;
  private readonly dp: DataPath;
  readonly log: Logger;
  /** Layouts are shared by every unit of a volume so translation is built once. */
  private readonly layouts = new Map<number, VolumeLayout>();
  /** Per (host, unit, volume): the fences its published units carry, kept while the unit stays published. */
  private readonly fences = new Map<string, Record<Protocol, UnitFence>>();
  /** Set once; replaced only when a saved configuration is imported into an empty appliance. */
  applianceId: string;
  readonly stats: StatsRegistry;
  readonly config: ConfigOperations;
  readonly events: EventLog;
  readonly jobs: JobQueue;
  readonly bindings: BindingOperations;
  readonly bulk: BulkOperations;
  readonly snapshots: SnapshotOperations;
  /** VM-consistent backups, their catalog, schedules and restores (operations/backups.ts). */
  readonly backups: BackupOperations;
  readonly tracer: Tracer;
  readonly inventory: Inventory;
  /** VM migration between hosts (operations/migration.ts). */
  readonly migrations: Migrations;
  /** Credentials issued to hosts at migrations (fresh PSKs and CHAP secrets). */
  readonly credentials: HostCredentials;
  /** Backing-file faults, I/O error bursts and capacity warnings. */
  readonly health: ArrayHealth;
  readonly iscsi: IscsiAccess;
  /** The views of volumes, hosts and bindings, lists and single objects alike (operations/listing.ts). */
  readonly listing: Listing;
  /** Switch and migration outcomes and cutover pauses (/metrics). */
  readonly cutovers = new CutoverStats();
  /** Merged change notices, webhooks, host online/offline and the resource graph. */
  readonly services: Services;
  private faults: ReadonlySet<string>;
  /** The job whose code is running (its own volumes are not "busy" to it). */
  private readonly currentJob = new AsyncLocalStorage<number>();

  get dataPath(): DataPath {
    return this.dp;
  }

  private constructor(db: Db, dp: DataPath, opts: ManagerOptions, dataDirReal: string) {
    this.db = db;
    this.dataDirReal = dataDirReal;
    this.ownership = new Ownership(dataDirReal);
    this.lock = opts.lock;
    this.imageRoots = opts.imageRoots ?? [];
    this.dp = dp;
    this.events = new EventLog(db);
    this.jobs = new JobQueue(db, this.events, opts.log);
    this.faults = new Set(opts.faults ?? []);
    this.stats = dp.stats ?? new StatsRegistry();
    this.dataDir = opts.dataDir;
    this.log = opts.log;
    const ctx: OperationContext = { db, dataDir: opts.dataDir, dataPath: dp, events: this.events, jobs: this.jobs, log: opts.log, lifecycle: this };
    this.bindings = new BindingOperations(ctx);
    this.snapshots = new SnapshotOperations(ctx);
    this.backups = new BackupOperations(ctx, this.snapshots, this.cutovers);
    this.bulk = new BulkOperations(ctx);
    this.tracer = new Tracer(ctx);
    this.inventory = new Inventory(ctx);
    this.credentials = new HostCredentials(ctx);
    this.migrations = new Migrations(ctx, this.cutovers, this.credentials);
    this.iscsi = new IscsiAccess(this);
    this.listing = new Listing(ctx, {
      iscsiIdentity: (h, initiators) => this.iscsi.describe(h, initiators),
      cowView: (id, nameOf) => this.snapshots.cowView(id, nameOf),
    });
    this.config = new ConfigOperations(ctx);
    this.applianceId = this.setting('appliance_id') ?? this.initApplianceId();
    this.health = new ArrayHealth(this, opts.checkIntervalMs ?? 2000);
    this.services = new Services({
      db,
      dataDir: opts.dataDir,
      events: this.events,
      stats: this.stats,
      log: opts.log,
      setting: (k) => this.setting(k),
      hostExists: (h) => this.findHost(h) !== undefined,
      arrayState: (id) => (this.health.fault(id) ? 'failed' : 'online'),
    });
  }

  /**
   * Opens the control database. A missing, zero-length or empty database
   * over an appliance's remains (stamped arrays, allocation maps, a saved
   * configuration) is refused unless `restore` brings that appliance back.
   */
  static async open(dp: DataPath, opts: ManagerOptions): Promise<StorageManager> {
    for (const d of ['arrays', 'sockets', 'images']) await fs.promises.mkdir(path.join(opts.dataDir, d), { recursive: true });
    const dataDirReal = await fs.promises.realpath(opts.dataDir);
    const dbPath = path.join(opts.dataDir, DB_FILE);
    const st = await fs.promises.stat(dbPath).catch(() => null);
    let db: Db | null = null;
    let why = st ? 'a zero-length control database (blockgate.db)' : 'no control database (blockgate.db is missing)';
    if (st && st.size > 0) {
      db = openDb(dbPath);
      why = 'a control database with no configuration in it';
    }
    const empty = db === null || !hasConfiguration(db);
    const remains = empty ? await inspectRemains(opts.dataDir) : null;
    try {
      if (opts.restore && !empty) {
        throw conflict(`--restore recreates a configuration only where the control database is missing or empty; ${dbPath} holds one (serve without --restore)`);
      }
      if (!opts.restore && remains && hasRemains(remains)) throw lostDatabase(dataDirReal, why, remains);
    } catch (e) {
      db?.close();
      throw e;
    }
    if (db === null) {
      const moved = await moveAsideLostDatabase(opts.dataDir);
      if (moved.length) opts.log.warn({ op: 'db.lost', moved }, 'kept what was left of the lost control database aside');
      db = openDb(dbPath);
    }
    const m = new StorageManager(db, dp, opts, dataDirReal);
    m.freshDataDir = empty && remains !== null && remains.arrayFiles === 0 && !opts.restore;
    if (opts.restore) {
      // Rows only: start() opens the arrays and listeners as for any start.
      await m.config.import(opts.restore, { attach: false });
    }
    await m.lock?.setAppliance(m.applianceId);
    return m;
  }

  /** Records a new appliance id (a configuration import) where the data directory lock names its holder. */
  async noteApplianceId(): Promise<void> {
    await this.lock?.setAppliance(this.applianceId);
  }

  // ---- settings ----------------------------------------------------------

  setting(key: string): string | undefined {
    const row = this.db.prepare('SELECT value FROM settings WHERE key = ?').get(key) as { value: string } | undefined;
    return row?.value;
  }

  setSetting(key: string, value: string | null): void {
    if (value === null) this.db.prepare('DELETE FROM settings WHERE key = ?').run(key);
    else this.db.prepare('INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  private initApplianceId(): string {
    // 28 bits: fits the NAA locally-assigned designator beside a 32-bit volume id.
    const id = crypto.randomBytes(4).readUInt32BE(0).toString(16).padStart(8, '0').slice(1);
    this.setSetting('appliance_id', id);
    return id;
  }

  // ---- start-up ----------------------------------------------------------

  /** Attaches every array, publishes every namespace and opens every host's listeners. */
  async start(): Promise<void> {
    // First: what start-up itself changes (arrays discovered, jobs resumed) is in the first notice.
    await this.services.start();
    // One array that cannot be opened fails alone: the rest of the appliance starts and serves.
    for (const a of this.listArrays()) await this.attachOrFail(a);
    this.markThick();
    // Before any host can write: a write to an origin must copy up first.
    await this.snapshots.load();
    // Before any host can write too: change maps must see every write since the last backup.
    await this.backups.load();
    await this.iscsi.load();
    await this.credentials.load();
    for (const h of this.listHosts()) {
      await this.openHostListeners(h);
      this.publishHost(h.id);
    }
    // Array files placed in the data directory while the appliance was down are adopted now.
    await this.inventory.discover();
    await this.health.check();
    this.health.start();
    await this.jobs.start();
    this.config.startSaving();
  }

  private async attachArray(row: ArrayRow, create: boolean): Promise<ArrayFile> {
    const f = new ArrayFile(row.id, row.name, row.path, row.size);
    // Opened first so a missing, short or unreadable file is reported as such; no host sees it until claimed.
    await f.open(create);
    try {
      // The one place an array file is attached for hosts: it must be this appliance's.
      await this.ownership.claim(row, this.applianceId);
    } catch (e) {
      await f.close().catch(() => undefined);
      throw e;
    }
    this.health.watch(f);
    this.dp.store.addArray(f);
    return f;
  }

  /** Attaches an array, or puts it in the failed state (I/O to it gets EIO) when its file cannot be used. */
  private async attachOrFail(row: ArrayRow): Promise<void> {
    try {
      await this.attachArray(row, false);
    } catch (e) {
      const f = new ArrayFile(row.id, row.name, row.path, row.size);
      const d = (e as BlockgateError).details as { reason?: ArrayFault['reason']; errno?: string } | undefined;
      f.fail(d?.reason ?? 'unreadable', (e as Error).message, d?.errno);
      this.dp.store.addArray(f);
      this.health.failedToOpen(f);
    }
  }

  /**
   * Re-attach (the repair edge): after the admin restored the array's file,
   * it is opened again with every start-up check; on success the array and
   * its volumes serve again, with nothing cached from before. A file that
   * still fails the checks is refused (409) and the array stays failed.
   */
  async reattachArray(name: string): Promise<ArrayView> {
    const row = this.array(name);
    const store = this.dp.store;
    const old = store.listArrays().find((a) => a.id === row.id);
    if (old && !old.fault && old.isOpen && !(await old.verify())) return this.describeArray(this.array(name));
    // The old descriptor's map goes to the sidecar first: it knows which space belongs to whom.
    if (old) {
      store.cache.dropArray(row.id);
      await old.close().catch(() => undefined);
    }
    const f = new ArrayFile(row.id, row.name, row.path, row.size);
    try {
      await f.open(false);
    } catch (e) {
      const d = (e as BlockgateError).details as { reason?: ArrayFault['reason']; errno?: string } | undefined;
      const failedFile = new ArrayFile(row.id, row.name, row.path, row.size);
      failedFile.fail(d?.reason ?? 'unreadable', (e as Error).message, d?.errno);
      store.addArray(failedFile);
      this.health.failedToOpen(failedFile);
      throw new BlockgateError('CONFLICT', `array '${name}' cannot be attached: ${(e as Error).message}`, { array: name, reason: d?.reason ?? 'unreadable' });
    }
    store.removeArray(row.id);
    this.health.watch(f);
    store.addArray(f);
    this.health.cleared(row.id);
    const volumes = this.volumesOnArray(row.id);
    this.events.emit('array.attached', `array/${name}`, { array: name, volumes });
    this.log.info({ op: 'array.attach', array: name, volumes }, `array ${name} attached again; volumes ${volumes.join(', ') || '(none)'} serve again`);
    return this.describeArray(this.array(name));
  }

  /** Names of the volumes with extents on an array (for fault reports). */
  volumesOnArray(arrayId: number): string[] {
    return (
      this.db.prepare('SELECT DISTINCT v.name FROM extents e JOIN volumes v ON v.id = e.volume_id WHERE e.array_id = ? ORDER BY v.name').all(arrayId) as { name: string }[]
    ).map((r) => r.name);
  }

  hostSocketPath(host: string): string {
    return path.join(this.dataDir, 'sockets', `${host}.sock`);
  }

  /** Brings arrays and hosts written straight into the database (config import) onto the data path. */
  async attachRestored(arrays: ArrayRow[], hosts: HostRow[]): Promise<{ webhookSecrets: { webhook: string; secret: string }[] }> {
    await this.iscsi.load();
    for (const a of arrays) await this.attachOrFail(a);
    this.markThick();
    // As at start-up, before hosts can write: snapshot links (copy-up hooks), change maps, backup schedules.
    await this.snapshots.load();
    await this.backups.load();
    const webhookSecrets = await this.services.webhooks.adoptImported();
    for (const h of hosts) {
      await this.openHostListeners(h);
      this.publishHost(h.id);
    }
    return { webhookSecrets };
  }

  /** Tells the data path which volumes are thick (the database is the truth). */
  private markThick(): void {
    for (const v of this.db.prepare('SELECT id, provisioning FROM volumes').all() as { id: number; provisioning: string }[]) this.dp.store.setThick(v.id, v.provisioning === 'thick');
  }

  /** Every frontend opens what it gives the host of its own; if one fails, the ones before close theirs. */
  private async openHostListeners(h: HostRow): Promise<void> {
    const endpoints = { socket: this.hostSocketPath(h.name), nbdTcp: h.nbd_tcp };
    const opened: Frontend[] = [];
    try {
      for (const f of this.dp.frontends) {
        await f.hostAdded?.(h.name, endpoints);
        opened.push(f);
      }
    } catch (e) {
      for (const f of opened) await f.hostRemoved?.(h.name);
      throw e;
    }
    await this.applyHostSocketAccess(h.name);
  }

  // ---- farms -------------------------------------------------------------

  createFarm(name: string): { id: number; name: string } {
    checkName('farm', name);
    if (this.findFarm(name)) throw conflict(`farm '${name}' already exists`);
    const id = Number(this.db.prepare('INSERT INTO farms (name, created_at) VALUES (?, ?)').run(name, now()).lastInsertRowid);
    this.log.info({ op: 'farm.create', farm: name }, 'farm created');
    return { id, name };
  }

  findFarm(name: string): { id: number; name: string } | undefined {
    return this.db.prepare('SELECT id, name FROM farms WHERE name = ?').get(name) as { id: number; name: string } | undefined;
  }

  farm(name: string): { id: number; name: string } {
    const f = this.findFarm(name);
    if (!f) throw notFound('farm', name);
    return f;
  }

  listFarms(): { id: number; name: string; created_at: string }[] {
    return this.db.prepare('SELECT * FROM farms ORDER BY id').all() as { id: number; name: string; created_at: string }[];
  }

  findFarmName(id: number | null): string | null {
    if (id === null) return null;
    return (this.db.prepare('SELECT name FROM farms WHERE id = ?').get(id) as { name: string }).name;
  }

  // ---- arrays ------------------------------------------------------------

  /**
   * Creates an array file and its row. The file system is asked first (a
   * probe file the size of the array, removed at once: EFBIG means it cannot
   * hold such a file), then the map's size limit and the thin-provisioning
   * limit (setting `arrays.overcommit`: at most that many times the file
   * system's free space); a create that fails after that removes what it
   * made, files and row, so nothing is left behind.
   */
  async createArray(name: string, size: number, qualityClass = 'std'): Promise<ArrayRow> {
    checkName('array', name);
    if (size <= 0 || size % EXTENT_ALIGN !== 0) throw badRequest(`array size must be a positive multiple of ${EXTENT_ALIGN} bytes`);
    if (this.findArray(name)) throw conflict(`array '${name}' already exists`);
    const dir = path.join(this.dataDir, 'arrays');
    const file = path.join(dir, `${name}.img`);
    if (await fs.promises.stat(file).then(() => true, () => false)) throw conflict(`a file already exists at ${file}`);
    await this.checkArrayFits(dir, name, size);
    const row: ArrayRow = { id: 0, name, path: file, size, quality_class: qualityClass, created_at: now() };
    // A sidecar with no image beside it is a leftover of an earlier failed create: it describes nothing.
    await fs.promises.rm(`${file}.alloc`, { force: true });
    await this.attachNew(row);
    this.events.emit('array.created', `array/${name}`, { array: name, size, qualityClass });
    this.log.info({ op: 'array.create', array: name, size, qualityClass }, 'array created');
    return this.array(name);
  }

  /** The thin-provisioning limit: a new array may be at most this many times the file system's free space. */
  overcommit(): number {
    const v = Number(this.setting('arrays.overcommit'));
    return Number.isFinite(v) && v > 0 ? v : DEFAULT_OVERCOMMIT;
  }

  private async checkArrayFits(dir: string, name: string, size: number): Promise<void> {
    const probe = path.join(dir, `.${name}.probe-${process.pid}`);
    let h: fs.promises.FileHandle | null = null;
    try {
      h = await fs.promises.open(probe, 'wx', 0o600);
      await h.truncate(size);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      if (code === 'EFBIG' || code === 'EINVAL') {
        throw badRequest(`the file system holding ${dir} cannot hold a file of ${size} bytes (${code}); create a smaller array`, { errno: code, size });
      }
      if (code === 'ENOSPC' || code === 'EDQUOT') throw new BlockgateError('NO_SPACE', `the file system holding ${dir} is full (${code})`, { errno: code });
      throw new BlockgateError('IO_ERROR', `cannot create array files in ${dir}: ${code}`, { errno: code });
    } finally {
      await h?.close().catch(() => undefined);
      await fs.promises.rm(probe, { force: true });
    }
    if (size > MAX_ARRAY_SIZE) {
      throw badRequest(`array size ${size} exceeds the largest supported array (${MAX_ARRAY_SIZE} bytes)`, { size, max: MAX_ARRAY_SIZE });
    }
    const fsSpace = await this.health.space(dir);
    const ratio = this.overcommit();
    if (size > ratio * fsSpace.available) {
      throw new BlockgateError(
        'NO_SPACE',
        `array '${name}' (${size} bytes) would overcommit the file system holding ${dir}: ${fsSpace.available} bytes free, thin arrays may be at most ${ratio}x that (setting arrays.overcommit)`,
        { size, available: fsSpace.available, overcommit: ratio },
      );
    }
  }

  private async attachNew(row: ArrayRow): Promise<void> {
    let id = 0;
    try {
      // The file comes first: a row never names a file that could not be made.
      const f = new ArrayFile(-1, row.name, row.path, row.size);
      await f.open(true);
      await f.close();
      id = Number(
        this.db
          .prepare('INSERT INTO arrays (name, path, size, quality_class, created_at) VALUES (?, ?, ?, ?, ?)')
          .run(row.name, row.path, row.size, row.quality_class, row.created_at).lastInsertRowid,
      );
      await this.attachArray({ ...row, id }, false);
    } catch (e) {
      if (id) {
        this.dp.store.removeArray(id);
        this.db.prepare('DELETE FROM arrays WHERE id = ?').run(id);
      }
      await fs.promises.rm(row.path, { force: true });
      await fs.promises.rm(`${row.path}.alloc`, { force: true });
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EDQUOT') throw new BlockgateError('NO_SPACE', `cannot create array '${row.name}': the file system is full (${code})`, { errno: code });
      throw e;
    }
  }

  /** Registers an array file that already exists (found by discovery). */
  async adoptArray(name: string, file: string, size: number, qualityClass = 'std'): Promise<ArrayRow> {
    if (this.findArray(name)) throw conflict(`array '${name}' already exists`);
    const id = Number(
      this.db
        .prepare('INSERT INTO arrays (name, path, size, quality_class, created_at) VALUES (?, ?, ?, ?, ?)')
        .run(name, file, size, qualityClass, now()).lastInsertRowid,
    );
    try {
      await this.attachArray(this.array(name), false);
    } catch (e) {
      this.db.prepare('DELETE FROM arrays WHERE id = ?').run(id);
      throw e;
    }
    this.log.info({ op: 'array.adopt', array: name, size }, 'array discovered');
    return this.array(name);
  }

  findArray(name: string): ArrayRow | undefined {
    return this.db.prepare('SELECT * FROM arrays WHERE name = ?').get(name) as ArrayRow | undefined;
  }

  array(name: string): ArrayRow {
    const a = this.findArray(name);
    if (!a) throw notFound('array', name);
    return a;
  }

  listArrays(): ArrayRow[] {
    return this.db.prepare('SELECT * FROM arrays ORDER BY id').all() as ArrayRow[];
  }

  arrayUsage(a: ArrayRow): { used: number; free: number; freeExtents: Extent[] } {
    const used = this.arrayExtents(a.id);
    const free = freeExtents({ arrayId: a.id, size: a.size, used });
    return {
      used: used.reduce((s, e) => s + e.length, 0),
      free: free.reduce((s, e) => s + e.length, 0),
      freeExtents: free,
    };
  }

  /**
   * An array as the admin sees it: virtual size and what volumes hold of it,
   * what the file really occupies on its file system, that file system's
   * free space (thin arrays can outgrow it), and whether it is serving.
   */
  async describeArray(a: ArrayRow): Promise<ArrayView> {
    const u = this.arrayUsage(a);
    const fault = this.health.fault(a.id);
    const allocated = await fs.promises.stat(a.path).then(
      (st) => st.blocks * 512,
      () => null,
    );
    const space = await this.health.space(path.dirname(a.path)).catch(() => null);
    return {
      name: a.name,
      path: a.path,
      size: a.size,
      qualityClass: a.quality_class,
      state: fault ? 'failed' : 'online',
      ...(fault ? { fault: { reason: fault.reason, message: fault.message, since: fault.at } } : {}),
      used: u.used,
      free: u.free,
      allocated,
      fileSystem: space ? { size: space.size, available: space.available, usedPercent: space.usedPercent } : null,
      volumes: this.volumesOnArray(a.id),
    };
  }

  private arrayExtents(arrayId: number): Extent[] {
    return (this.db.prepare('SELECT array_id, offset, length FROM extents WHERE array_id = ?').all(arrayId) as ExtentRow[]).map(
      (r) => ({ arrayId: r.array_id, offset: r.offset, length: r.length }),
    );
  }

  // ---- volumes -----------------------------------------------------------

  /**
   * Allocate (Free → Allocated, T1). With `layout`, extents are taken in that
   * order from the named arrays (a predefined meta volume); otherwise from free
   * space on arrays of the quality class, summed across arrays into a meta
   * volume when no one array has room (the "on the fly" path). A volume left
   * in 'free' under the same name is allocated again under a new id, serial
   * and NAA.
   * With `configure`, the volume goes on to Configured (T2) at once.
   */
  createVolume(opts: {
    name: string;
    size: number;
    farm?: string | undefined;
    qualityClass?: string | undefined;
    shareMode?: ShareMode | undefined;
    layout?: { array: string; size: number }[] | undefined;
    configure?: boolean | undefined;
    provisioning?: Provisioning | undefined;
  }): VolumeRow {
    checkName('volume', opts.name);
    const thick = opts.provisioning === 'thick';
    const tx = this.db.transaction(() => {
      const existing = this.findVolume(opts.name);
      if (existing && existing.state !== 'free') throw conflict(`volume '${opts.name}' already exists`);
      const farmId = opts.farm ? this.farm(opts.farm).id : null;
      const extents = opts.layout ? this.placeLayout(opts.size, opts.layout) : this.placeAuto(opts.size, opts.qualityClass);
      this.resetSpace(extents, thick);
      const t = now();
      if (existing) {
        // The name is reused, never the identity: a host must not match new data to an old serial or NAA.
        transition(existing.state, 'allocate', existing.name);
        this.db.prepare('UPDATE volumes SET snapshot_of = NULL WHERE snapshot_of = ?').run(existing.id);
        this.db.prepare('DELETE FROM volumes WHERE id = ?').run(existing.id);
        this.layouts.delete(existing.id);
      }
      // Serial and NAA derive from the never-reused id, so insert first, then name it.
      const id = Number(
        this.db
          .prepare(
            `INSERT INTO volumes (name, farm_id, size, state, share_mode, serial, naa, quality_class, provisioning, created_at, updated_at)
             VALUES (?, ?, ?, 'free', ?, ?, ?, ?, ?, ?, ?)`,
          )
          .run(opts.name, farmId, opts.size, opts.shareMode ?? 'exclusive', `tmp-${opts.name}`, `tmp-${opts.name}`, opts.qualityClass ?? null, thick ? 'thick' : 'thin', t, t).lastInsertRowid,
      );
      this.db.prepare('UPDATE volumes SET serial = ?, naa = ? WHERE id = ?').run(this.serialFor(id), this.naaFor(id), id);
      const ins = this.db.prepare('INSERT INTO extents (volume_id, seq, array_id, offset, length) VALUES (?, ?, ?, ?, ?)');
      extents.forEach((e, i) => ins.run(id, i, e.arrayId, e.offset, e.length));
      this.layouts.delete(id);
      this.apply(this.volumeById(id), 'allocate');
      return id;
    });
    const id = tx();
    const v = this.volumeById(id);
    this.dp.store.setThick(id, thick);
    this.log.info({ op: 'volume.allocate', volume: v.name, size: v.size, extents: this.extentsOf(id).length }, 'volume allocated');
    if (opts.configure) return this.configure(v.name);
    return v;
  }

  /**
   * Clone on provisioning (issue 11 item 4): a new volume `name` as a copy of
   * `source`, as a job. A quiet source (no mapped binding) is copied by the
   * sparse copy job (allocated runs only). A mapped source is snapshotted
   * first (copy-on-write, one consistency group: every write acknowledged
   * before the call is in the clone), and the snapshot is materialised: it
   * becomes an independent volume named `name`.
   */
  async cloneVolume(name: string, source: string): Promise<{ job: JobView; volume: VolumeRow }> {
    checkName('volume', name);
    const src = this.volume(source);
    if (this.bindingsOfVolume(src.id).some((b) => b.mapped)) {
      const { job, snapshot } = await this.snapshots.snap(src.name, name);
      // The snap job has nothing left to copy; materialise refuses a volume a job still holds.
      await this.jobs.wait(job.id);
      return { job: this.snapshots.materialise(snapshot.name), volume: this.volumeById(snapshot.id) };
    }
    const farm = src.farm_id === null ? undefined : this.findFarmName(src.farm_id)!;
    const v = this.createVolume({ name, size: src.size, farm, qualityClass: src.quality_class ?? undefined, configure: true, provisioning: src.provisioning === 'thick' ? 'thick' : 'thin' });
    return { job: this.bulk.copy(src.name, [v.name]), volume: this.volumeById(v.id) };
  }

  /**
   * Allocate from the predefined volumes: the smallest configured volume that
   * belongs to no farm, was never bound and holds no data, at least `size`
   * bytes and of the quality class, is given to the farm. Predefined volumes
   * (and predefined meta volumes, with a layout) are ones an admin created
   * without a farm.
   */
  claimVolume(opts: { farm: string; size: number; qualityClass?: string | undefined }): VolumeRow {
    // Size 0 would match any predefined volume: a claim always asks for some bytes.
    if (!Number.isSafeInteger(opts.size) || opts.size <= 0) throw badRequest(`a claim asks for more than 0 bytes (got ${opts.size})`);
    const farm = this.farm(opts.farm);
    return this.db.transaction(() => {
      const v = this.db
        .prepare(
          `SELECT * FROM volumes v WHERE state = 'configured' AND farm_id IS NULL AND dirty = 0 AND size >= ?
             AND (? IS NULL OR quality_class = ? OR (quality_class IS NULL AND NOT EXISTS (
               SELECT 1 FROM extents e JOIN arrays a ON a.id = e.array_id WHERE e.volume_id = v.id AND a.quality_class <> ?)))
             AND NOT EXISTS (SELECT 1 FROM bindings b WHERE b.volume_id = v.id)
           ORDER BY size, id LIMIT 1`,
        )
        .get(opts.size, opts.qualityClass ?? null, opts.qualityClass ?? null, opts.qualityClass ?? null) as VolumeRow | undefined;
      if (!v) {
        throw new BlockgateError('NO_SPACE', `no predefined volume of at least ${opts.size} bytes${opts.qualityClass ? ` in class '${opts.qualityClass}'` : ''} is free`);
      }
      this.db.prepare('UPDATE volumes SET farm_id = ?, updated_at = ? WHERE id = ?').run(farm.id, now(), v.id);
      this.events.emit('volume.claimed', `volume/${v.name}`, { volume: v.name, farm: farm.name });
      this.log.info({ op: 'volume.claim', volume: v.name, farm: farm.name }, 'predefined volume claimed');
      return this.volumeById(v.id);
    })();
  }

  /**
   * Configure (Allocated → Configured): Make Meta Volume 708 for a volume
   * whose extents span arrays, a plain configure otherwise. The extents must
   * all sit on attached arrays; a failure takes the failure edge (T3).
   */
  configure(name: string): VolumeRow {
    const v = this.volume(name);
    this.check(v, 'configure');
    try {
      this.fault('configure');
      for (const e of this.extentsOf(v.id)) this.dp.store.getArray(e.arrayId);
    } catch (e) {
      this.apply(v, 'configure-failed', { error: (e as Error).message });
      throw failed('configure', v.name, e as Error, 'unconfigured');
    }
    this.apply(v, 'configure');
    return this.volumeById(v.id);
  }

  /** Break (→ Un-configured, T15): the meta volume is taken apart; its space is still held. */
  breakVolume(name: string): VolumeRow {
    const v = this.volume(name);
    this.apply(v, 'break');
    // A snapshot taken apart stops reading its origin (its data is no longer anyone's to read).
    this.snapshots.detach(v.id);
    return this.volumeById(v.id);
  }

  /**
   * De-allocate (Un-configured → Free, T16): the extents go back to their
   * arrays' free space. Refused while the volume may hold a tenant's data
   * (mapped, image-copied or copied onto since its last scrub).
   */
  deallocate(name: string): VolumeRow {
    const v = this.volume(name);
    this.check(v, 'deallocate');
    if (v.dirty) {
      throw new BlockgateError('ILLEGAL_STATE', `volume '${v.name}' holds data written since its last scrub; scrub it before de-allocating`, {
        state: v.state,
        operation: 'deallocate',
        allowed: ['scrub'],
        volume: v.name,
        dirty: true,
      });
    }
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM extents WHERE volume_id = ?').run(v.id);
      this.db.prepare('UPDATE volumes SET farm_id = NULL, image_id = NULL, ever_mapped = 0 WHERE id = ?').run(v.id);
      this.apply(v, 'deallocate');
    })();
    this.layouts.delete(v.id);
    return this.volumeById(v.id);
  }

  /** Forgets a free volume's record (its id, serial and NAA are never reused). */
  deleteVolume(name: string): void {
    const v = this.volume(name);
    if (v.state !== 'free') {
      throw new BlockgateError('ILLEGAL_STATE', `volume '${v.name}' is '${v.state}'; only a free volume can be deleted`, { state: v.state, operation: 'delete', allowed: [] });
    }
    this.db.transaction(() => {
      this.db.prepare('UPDATE volumes SET snapshot_of = NULL WHERE snapshot_of = ?').run(v.id);
      this.db.prepare('DELETE FROM volumes WHERE id = ?').run(v.id);
      this.events.emit('volume.deleted', `volume/${v.name}`, { volume: v.name });
    })();
    this.log.info({ op: 'volume.delete', volume: v.name }, 'volume deleted');
  }

  /** Grows a volume with extents from arrays of its quality class; hosts see the new size on reconnect. */
  resize(name: string, size: number): VolumeRow {
    const v = this.volume(name);
    this.check(v, 'resize');
    if (size < v.size) throw badRequest(`volume '${v.name}' can only grow: ${size} bytes < ${v.size} bytes`);
    if (size === v.size) return v;
    this.db.transaction(() => {
      const more = this.placeAuto(size - v.size, v.quality_class ?? undefined);
      // Grown space reads as zeroes, never as what an earlier owner left there.
      this.resetSpace(more, v.provisioning === 'thick');
      const seq0 = this.extentsOf(v.id).length;
      const ins = this.db.prepare('INSERT INTO extents (volume_id, seq, array_id, offset, length) VALUES (?, ?, ?, ?, ?)');
      more.forEach((e, i) => ins.run(v.id, seq0 + i, e.arrayId, e.offset, e.length));
      this.db.prepare('UPDATE volumes SET size = ? WHERE id = ?').run(size, v.id);
      this.apply(v, 'resize', { from: v.size, to: size });
    })();
    this.layouts.delete(v.id);
    for (const h of this.hostsMapping(v.id)) this.publishHost(h);
    return this.volumeById(v.id);
  }

  hostsMappingVolume(volumeId: number): number[] {
    return this.hostsMapping(volumeId);
  }

  private hostsMapping(volumeId: number): number[] {
    return (this.db.prepare('SELECT DISTINCT host_id FROM bindings WHERE volume_id = ? AND mapped = 1').all(volumeId) as { host_id: number }[]).map((r) => r.host_id);
  }

  /** Refuses `op` unless the table allows it and no job of another caller holds the volume. */
  check(v: VolumeRow, op: Operation): VolumeState {
    const next = transition(v.state, op, v.name);
    this.snapshots.guard(v, op);
    const job = this.jobs.activeOn(v.id);
    if (job && job.id !== this.currentJob.getStore()) {
      throw new BlockgateError('ILLEGAL_STATE', `volume '${v.name}' is busy with job ${job.id} (${job.kind}); wait for it or cancel it`, {
        state: v.state,
        operation: op,
        job: job.id,
        allowed: [],
      });
    }
    return next;
  }

  /** Applies a transition (inside the caller's transaction) and records it. */
  apply(v: VolumeRow, op: Operation, extra: Record<string, unknown> = {}, to?: VolumeState): VolumeState {
    const next = to ?? this.check(v, op);
    if (to) transition(v.state, op, v.name);
    this.db.prepare('UPDATE volumes SET state = ?, updated_at = ? WHERE id = ?').run(next, now(), v.id);
    this.events.emit('volume.state', `volume/${v.name}`, { volume: v.name, operation: op, from: v.state, to: next, ...extra });
    this.log.info({ op: `volume.${op}`, volume: v.name, from: v.state, to: next, ...extra }, `volume ${op}`);
    return next;
  }

  /** Runs `fn` as the job `jobId`, so the job's own volumes are not busy to it. */
  asJob<T>(jobId: number, fn: () => T): T {
    return this.currentJob.run(jobId, fn);
  }

  setDirty(volumeId: number, dirty: boolean): void {
    if (dirty) this.db.prepare('UPDATE volumes SET dirty = 1 WHERE id = ?').run(volumeId);
    else this.db.prepare('UPDATE volumes SET dirty = 0, scrubbed_at = ? WHERE id = ?').run(now(), volumeId);
  }

  /** Replaces the fault injection points (tests of the failure edges). */
  injectFaults(points: readonly string[]): void {
    this.faults = new Set(points);
  }

  /** True when a fault point is armed (for faults the data path injects itself, such as 'bulk-corrupt'). */
  faultArmed(point: string): boolean {
    return this.faults.has(point);
  }

  fault(point: string): void {
    // 'crash:POINT' is kill -9 of the appliance at that step (tests of restart recovery).
    if (this.faults.has(`crash:${point}`)) process.kill(process.pid, 'SIGKILL');
    if (this.faults.has(point)) throw new BlockgateError('IO_ERROR', `injected fault at '${point}'`);
  }


  /**
   * Space handed to a volume reads as zeroes until the volume writes it, and
   * that is durable before the volume exists: a new volume never sees what a
   * previous owner left there, even after a crash. (Freeing space should call
   * this too.) A thick volume's space is allocated (as zeroes) at once.
   */
  private resetSpace(extents: readonly Extent[], thick: boolean): void {
    for (const e of extents) this.dp.store.discard(e.arrayId, e.offset, e.length, thick);
  }

  /**
   * Thin ↔ thick. Turning thick allocates every hole of the volume (as zeroes,
   * durably) before it answers, so the space is the volume's from then on;
   * turning thin only lets later trims give space back. Live sessions follow
   * at once (the data path asks the store); SCSI hosts re-read the
   * provisioning pages when they next look (READ CAPACITY 16, VPD 0xB2).
   */
  setProvisioning(name: string, provisioning: Provisioning): VolumeRow {
    const v = this.volume(name);
    if (v.provisioning === provisioning) return v;
    const thick = provisioning === 'thick';
    if (thick) for (const e of this.extentsOf(v.id)) this.dp.store.reserve(e.arrayId, e.offset, e.length);
    this.db.prepare('UPDATE volumes SET provisioning = ?, updated_at = ? WHERE id = ?').run(provisioning, now(), v.id);
    this.dp.store.setThick(v.id, thick);
    // READ CAPACITY(16) data changed (LBPME/LBPRZ): SCSI hosts get CAPACITY DATA HAS CHANGED.
    for (const hostId of this.hostsMapping(v.id)) {
      const host = this.hostById(hostId).name;
      const units = this.dp.namespaces.list(host).filter((u) => u.volume.id === v.id);
      for (const f of this.dp.frontends) if (units.length > 0) f.namespaceChanged(host, 'resized', units);
    }
    this.events.emit('volume.provisioning', `volume/${v.name}`, { volume: v.name, provisioning });
    this.log.info({ op: 'volume.provisioning', volume: v.name, provisioning }, 'volume provisioning changed');
    return this.volumeById(v.id);
  }

  serialFor(id: number): string {
    return `BG${this.applianceId.toUpperCase()}${id.toString(16).toUpperCase().padStart(8, '0')}`;
  }

  /** NAA type 3 (locally assigned): 4-bit NAA, 28-bit appliance id, 32-bit volume id. */
  naaFor(id: number): string {
    return `3${this.applianceId}${id.toString(16).padStart(8, '0')}`;
  }

  private placeLayout(size: number, layout: { array: string; size: number }[]): Extent[] {
    if (layout.length === 0) throw badRequest('layout must name at least one array');
    const total = layout.reduce((s, l) => s + l.size, 0);
    if (total !== size) throw badRequest(`layout sizes add up to ${total} bytes, not the volume size ${size}`);
    const taken = new Map<number, Extent[]>();
    return layout.map((l) => {
      const a = this.array(l.array);
      const fault = this.health.fault(a.id);
      if (fault) throw conflict(`array '${a.name}' has failed (${fault.message}); repair it and attach it first`, { array: a.name, reason: fault.reason });
      const extra = taken.get(a.id) ?? [];
      const [e] = allocateExtents(l.size, [{ arrayId: a.id, size: a.size, used: [...this.arrayExtents(a.id), ...extra] }]);
      if (!e || e.length !== l.size) throw new BlockgateError('NO_SPACE', `array '${l.array}' has no contiguous ${l.size} bytes free`);
      taken.set(a.id, [...extra, e]);
      return e;
    });
  }

  private placeAuto(size: number, qualityClass?: string): Extent[] {
    // Failed arrays give no new space: their files are not there to hold it.
    const arrays = this.listArrays().filter((a) => (!qualityClass || a.quality_class === qualityClass) && !this.health.fault(a.id));
    if (arrays.length === 0) throw new BlockgateError('NO_SPACE', `no array of quality class '${qualityClass}'`);
    return allocateExtents(
      size,
      arrays.map((a) => ({ arrayId: a.id, size: a.size, used: this.arrayExtents(a.id) })),
    );
  }

  findVolume(name: string): VolumeRow | undefined {
    return this.db.prepare('SELECT * FROM volumes WHERE name = ?').get(name) as VolumeRow | undefined;
  }

  volume(name: string): VolumeRow {
    const v = this.findVolume(name);
    if (!v) throw notFound('volume', name);
    return v;
  }

  volumeById(id: number): VolumeRow {
    const v = this.db.prepare('SELECT * FROM volumes WHERE id = ?').get(id) as VolumeRow | undefined;
    if (!v) throw notFound('volume', id);
    return v;
  }

  listVolumes(): VolumeRow[] {
    return this.db.prepare('SELECT * FROM volumes ORDER BY id').all() as VolumeRow[];
  }

  extentsOf(volumeId: number): Extent[] {
    return (this.db.prepare('SELECT * FROM extents WHERE volume_id = ? ORDER BY seq').all(volumeId) as ExtentRow[]).map((r) => ({
      arrayId: r.array_id,
      offset: r.offset,
      length: r.length,
    }));
  }

  /** The volume's translation; the same object serves I/O and trace. */
  layoutOf(volumeId: number): VolumeLayout {
    let l = this.layouts.get(volumeId);
    if (!l) {
      l = new VolumeLayout(this.extentsOf(volumeId));
      this.layouts.set(volumeId, l);
    }
    return l;
  }

  describeVolume(v: VolumeRow): VolumeView {
    return this.listing.volumeViews([v])[0]!;
  }

  // ---- hosts -------------------------------------------------------------

  async createHost(opts: { name: string; farm: string; nbdTcp?: string | undefined; allowWildcard?: boolean | undefined }): Promise<HostRow> {
    checkName('host', opts.name);
    if (this.findHost(opts.name)) throw conflict(`host '${opts.name}' already exists`);
    const farm = this.farm(opts.farm);
    if (opts.nbdTcp !== undefined) checkListenerAddress(opts.nbdTcp, { allowWildcard: opts.allowWildcard });
    const id = Number(
      this.db
        .prepare("INSERT INTO hosts (name, farm_id, nbd_tcp, protocols, default_protocol, created_at) VALUES (?, ?, ?, 'nbd,iscsi', 'both', ?)")
        .run(opts.name, farm.id, opts.nbdTcp ?? null, now()).lastInsertRowid,
    );
    const h = this.hostById(id);
    try {
      await this.openHostListeners(h);
    } catch (e) {
      // The namespace side failed (and closed what it had opened): undo the database side so nothing half-exists.
      this.db.prepare('DELETE FROM hosts WHERE id = ?').run(id);
      throw new BlockgateError('CONFLICT', `cannot open listener for host '${h.name}': ${(e as Error).message}`);
    }
    this.publishHost(id);
    this.events.emit('host.created', `host/${h.name}`, { host: h.name, farm: farm.name });
    this.log.info({ op: 'host.create', host: h.name, farm: farm.name, nbdTcp: h.nbd_tcp }, 'host created');
    return h;
  }

  /**
   * Moves (or removes, with null) a host's own TCP listener. The host's
   * listeners are reopened, so its NBD sessions end; if the new address
   * cannot be opened the old one is opened again and the change refused.
   */
  async updateHost(name: string, opts: { nbdTcp?: string | null | undefined; allowWildcard?: boolean | undefined; socket?: HostSocketAccess | undefined }): Promise<HostRow> {
    const h = this.host(name);
    if (opts.socket !== undefined) await this.setHostSocketAccess(h, opts.socket);
    if (opts.nbdTcp === undefined || opts.nbdTcp === h.nbd_tcp) return h;
    if (opts.nbdTcp !== null) checkListenerAddress(opts.nbdTcp, { allowWildcard: opts.allowWildcard });
    for (const f of this.dp.frontends) await f.hostRemoved?.(h.name);
    this.db.prepare('UPDATE hosts SET nbd_tcp = ? WHERE id = ?').run(opts.nbdTcp, h.id);
    try {
      await this.openHostListeners(this.hostById(h.id));
    } catch (e) {
      this.db.prepare('UPDATE hosts SET nbd_tcp = ? WHERE id = ?').run(h.nbd_tcp, h.id);
      await this.openHostListeners(h);
      throw new BlockgateError('CONFLICT', `cannot open listener ${opts.nbdTcp} for host '${h.name}': ${(e as Error).message}; it keeps ${h.nbd_tcp ?? 'no TCP listener'}`);
    }
    this.publishHost(h.id);
    this.events.emit('host.updated', `host/${h.name}`, { host: h.name, nbdTcp: opts.nbdTcp });
    this.log.info({ op: 'host.update', host: h.name, nbdTcp: opts.nbdTcp, was: h.nbd_tcp }, 'host listener moved');
    return this.hostById(h.id);
  }

  /**
   * Who may open a host's unix socket (it proves the host by file permissions
   * alone): owner, group and mode, kept as setting `host.NAME.socket` so they
   * are applied again every time the socket is made (restart, listener move)
   * and travel with a config export. World access is refused: anyone could
   * then act as the host.
   */
  private async setHostSocketAccess(h: HostRow, access: HostSocketAccess): Promise<void> {
    const mode = access.mode === undefined ? undefined : parseInt(access.mode, 8);
    if (mode !== undefined && (mode & 0o007) !== 0) throw badRequest(`socket mode ${access.mode} gives every local user access, and so the identity of host '${h.name}'; use at most 0770`);
    const next = { ...this.hostSocketAccess(h.name), ...access };
    this.setSetting(`host.${h.name}.socket`, JSON.stringify(next));
    await this.applyHostSocketAccess(h.name);
    this.log.info({ op: 'host.socket', host: h.name, ...next }, 'host socket access changed');
  }

  hostSocketAccess(host: string): HostSocketAccess {
    const raw = this.setting(`host.${host}.socket`);
    return raw ? (JSON.parse(raw) as HostSocketAccess) : {};
  }

  private async applyHostSocketAccess(host: string): Promise<void> {
    const a = this.hostSocketAccess(host);
    const file = this.hostSocketPath(host);
    if (a.uid !== undefined || a.gid !== undefined) await fs.promises.chown(file, a.uid ?? -1, a.gid ?? -1);
    if (a.mode !== undefined) await fs.promises.chmod(file, parseInt(a.mode, 8));
  }

  findHost(name: string): HostRow | undefined {
    return this.db.prepare('SELECT * FROM hosts WHERE name = ?').get(name) as HostRow | undefined;
  }

  host(name: string): HostRow {
    const h = this.findHost(name);
    if (!h) throw notFound('host', name);
    return h;
  }

  hostById(id: number): HostRow {
    const h = this.db.prepare('SELECT * FROM hosts WHERE id = ?').get(id) as HostRow | undefined;
    if (!h) throw notFound('host', id);
    return h;
  }

  listHosts(): HostRow[] {
    return this.db.prepare('SELECT * FROM hosts ORDER BY id').all() as HostRow[];
  }

  describeHost(h: HostRow): HostView {
    return this.listing.hostViews([h])[0]!;
  }

  /**
   * The host's live namespace as an admin (or a host's admin) wants to read
   * it; how each unit is reached comes from the frontends' address().
   */
  namespaceView(hostName: string): NamespaceView {
    const h = this.host(hostName);
    const sock = this.hostSocketPath(h.name);
    const tcp = new Set<string>();
    const protocolOf = new Map(this.bindingsOfHost(h.id).map((b) => [`${b.target}/${b.lun}`, b.protocol as BindingProtocol]));
    const units = this.dp.namespaces.list(h.name).map((u) => {
      const descriptor = this.describeUnit(h, u, protocolOf.get(`${u.target}/${u.lun}`) ?? 'nbd');
      const uris = descriptor.addresses.flatMap((a) => a.uris);
      for (const uri of uris) if (uri.startsWith('nbd://')) tcp.add(new URL(uri).host);
      return {
        target: u.target,
        lun: u.lun,
        volume: u.volumeName,
        size: u.volume.layout.size,
        serial: u.serial,
        naa: u.naa,
        readOnly: u.readOnly,
        protocol: descriptor.protocol,
        exportName: descriptor.addresses.find((a) => a.exportName !== undefined)?.exportName ?? `${u.target}/${u.lun}`,
        uris,
        descriptor,
      };
    });
    if (h.nbd_tcp) tcp.add(h.nbd_tcp);
    return { host: h.name, farm: this.findFarmName(h.farm_id)!, socket: sock, tcp: [...tcp], iscsi: this.iscsi.describe(h), units };
  }

  /** The connection descriptor of a host's published unit (operations/descriptor.ts builds it). */
  describeUnit(h: HostRow, u: Unit, protocol: BindingProtocol): ConnectionDescriptor {
    const issued = { nbd: this.credentials.identityFor(h.id, u.volume.id, 'nbd'), iscsi: this.credentials.identityFor(h.id, u.volume.id, 'iscsi') };
    const src = { appliance: this.applianceId, frontends: this.dp.frontends, socket: this.hostSocketPath(h.name), tlsPsk: this.dp.tls?.hasPsk(h.name) ?? false, iscsi: this.iscsi.describe(h), issued };
    return connectionDescriptor(src, u, protocol);
  }

  /** The descriptor of a mapped binding as its host reaches it now (CONFLICT when it is not mapped). */
  bindingDescriptor(bindingId: number): ConnectionDescriptor {
    const b = this.binding(bindingId);
    const h = this.hostById(b.host_id);
    const u = this.dp.namespaces.list(h.name).find((x) => x.target === b.target && x.lun === b.lun);
    if (!b.mapped || !u) throw conflict(`binding ${b.id} is not mapped: its host cannot reach it`, { binding: b.id });
    return this.describeUnit(h, u, b.protocol as BindingProtocol);
  }

  /** The protocols this appliance serves (one per frontend). */
  offeredProtocols(): Protocol[] {
    return this.dp.frontends.map((f) => f.protocol);
  }

  // ---- bindings ----------------------------------------------------------
  // The operations live in operations/bindings.ts; these are the manager's surface.

  bind(opts: { volume: string; host: string; target: number; lun: number; mode?: AccessMode | undefined; map?: boolean | undefined; protocol?: BindingProtocol | undefined }): BindingRow {
    return this.bindings.bind(opts);
  }

  /** Re-assigns a volume to another host (operations/bindings.ts); the new binding and, when mapped, its descriptor. */
  async reassignVolume(volume: string, host: string, target: number, lun: number): Promise<{ binding: ReturnType<StorageManager['describeBinding']>; from: string; descriptor: ConnectionDescriptor | null; pauseMs: number }> {
    const r = await this.bindings.reassign(volume, host, target, lun);
    if (r.pauseMs > 0) this.cutovers.pause(r.pauseMs);
    return { binding: this.describeBinding(r.binding), from: r.from, descriptor: r.binding.mapped ? this.bindingDescriptor(r.binding.id) : null, pauseMs: r.pauseMs };
  }

  /** Switches a binding's protocol live (operations/bindings.ts) and hands back the host's new descriptor. */
  async switchProtocol(bindingId: number, protocol: BindingProtocol): Promise<SwitchView> {
    try {
      const r = await this.bindings.switchProtocol(bindingId, protocol);
      this.cutovers.outcome('switch', 'succeeded');
      if (r.pauseMs > 0) this.cutovers.pause(r.pauseMs);
      return { binding: this.describeBinding(r.binding), from: r.from, descriptor: r.binding.mapped ? this.bindingDescriptor(r.binding.id) : null, pauseMs: r.pauseMs };
    } catch (e) {
      if (!(e instanceof BlockgateError) || !['NOT_FOUND', 'BAD_REQUEST', 'CONFLICT'].includes(e.code)) this.cutovers.outcome('switch', 'failed');
      throw e;
    }
  }

  map(bindingId: number): BindingRow {
    return this.bindings.map(bindingId);
  }

  unmap(bindingId: number): Promise<BindingRow> {
    return this.bindings.unmap(bindingId);
  }

  setMapped(bindingId: number, mapped: boolean): Promise<BindingRow> {
    return this.bindings.setMapped(bindingId, mapped);
  }

  unbind(bindingId: number): void {
    this.bindings.unbind(bindingId);
  }

  binding(id: number): BindingRow {
    return this.bindings.binding(id);
  }

  /** All bindings, or those of one host and/or one volume (NOT_FOUND when the named one does not exist). */
  listBindings(filter: { host?: string | undefined; volume?: string | undefined } = {}): BindingRow[] {
    return this.bindings.list(filter);
  }

  /** A page of the bindings' views, of one host and/or one volume (NOT_FOUND when the named one does not exist). */
  pageBindings(filter: { host?: string | undefined; volume?: string | undefined }, page: Page<number> = {}): Paged<BindingRecord, number> {
    const hostId = filter.host === undefined ? null : this.host(filter.host).id;
    const volumeId = filter.volume === undefined ? null : this.volume(filter.volume).id;
    return this.listing.bindings({ hostId, volumeId }, page);
  }

  bindingsOfHost(hostId: number): BindingRow[] {
    return this.bindings.ofHost(hostId);
  }

  bindingsOfVolume(volumeId: number): BindingRow[] {
    return this.bindings.ofVolume(volumeId);
  }

  describeBinding(b: BindingRow): BindingRecord {
    return this.listing.bindingViews([b])[0]!;
  }

  volumeHandle(v: VolumeRow): { id: number; layout: VolumeLayout; cachePolicy: CachePolicy } {
    return { id: v.id, layout: this.layoutOf(v.id), cachePolicy: v.cache_policy };
  }

  /**
   * Recomputes a host's namespace from the database and hands it to the data
   * path. The namespace has changed when this returns; the promise resolves
   * once the sessions on units the host lost (over a protocol) are gone.
   */
  publishHost(hostId: number): Promise<void> {
    const h = this.hostById(hostId);
    const speaks = h.protocols.split(',');
    const units: Unit[] = this.bindingsOfHost(h.id)
      .filter((b) => b.mapped === 1)
      .map((b) => {
        const v = this.volumeById(b.volume_id);
        // A binding served over both reaches the host over what it speaks now.
        const protocols = protocolsOf(b.protocol).filter((p) => speaks.includes(p));
        return {
          host: h.name,
          target: b.target,
          lun: b.lun,
          volume: this.volumeHandle(v),
          volumeName: v.name,
          serial: v.serial,
          naa: v.naa,
          readOnly: b.mode === 'read-only',
          stats: this.stats.for(h.name, v.name),
          protocols,
          fences: this.fencesOf(h.name, b.target, b.lun, v.id, protocols),
        };
      });
    this.fault('publish');
    const previous = this.dp.namespaces.list(h.name);
    const shape = (us: readonly Unit[]): string => us.map((u) => `${u.target}/${u.lun}:${u.volume.id}:${u.protocols.join('+')}`).sort().join(',');
    const before = shape(previous);
    this.dp.namespaces.publish(h.name, units);
    this.dp.namespaces.setRequireTls(h.name, h.require_tls === 1);
    const revoked = this.tellFrontends(h.name, previous, units);
    if (before !== shape(units)) {
      this.events.emit('namespace.changed', `host/${h.name}`, {
        host: h.name,
        units: units.map((u) => ({ target: u.target, lun: u.lun, volume: u.volumeName, protocols: [...u.protocols] })),
      });
    }
    return revoked;
  }

  /**
   * The fences of a unit as published now: kept while the unit stays on a
   * protocol, fresh for a protocol it (re)joins after a revoke.
   */
  private fencesOf(host: string, target: number, lun: number, volumeId: number, protocols: readonly Protocol[]): Record<Protocol, UnitFence> {
    const key = `${host}\0${target}/${lun}\0${volumeId}`;
    const kept = this.fences.get(key) ?? freshFences();
    for (const p of protocols) if (kept[p].revoked) kept[p] = { revoked: false };
    this.fences.set(key, kept);
    return { ...kept };
  }

  /**
   * After a host's namespace is republished, per protocol: sessions on units
   * that left that protocol are fenced and revoked (their I/O, even what a
   * quiesce was holding, fails from now on), then the frontend hears what
   * changed (SCSI unit attentions). Revocation is synchronous in effect: a
   * frontend stops serving the unit before revoke() returns its promise.
   * Resolves when every revoked session is gone.
   */
  private tellFrontends(host: string, previous: readonly Unit[], next: readonly Unit[]): Promise<void> {
    const key = (u: Unit): string => `${u.target}/${u.lun}`;
    const revoking: Promise<void>[] = [];
    for (const f of this.dp.frontends) {
      const over = (units: readonly Unit[]): Unit[] => units.filter((u) => u.protocols.includes(f.protocol));
      const prev = over(previous);
      const nxt = over(next);
      const nextByKey = new Map(nxt.map((u) => [key(u), u]));
      const prevByKey = new Map(prev.map((u) => [key(u), u]));
      const removed = prev.filter((u) => nextByKey.get(key(u))?.volume.id !== u.volume.id);
      const added = nxt.filter((u) => prevByKey.get(key(u))?.volume.id !== u.volume.id);
      const resized = nxt.filter((u) => {
        const p = prevByKey.get(key(u));
        return p !== undefined && p.volume.id === u.volume.id && p.volume.layout.size !== u.volume.layout.size;
      });
      const changes: [NamespaceChange, Unit[]][] = [
        ['unmapped', removed],
        ['mapped', added],
        ['resized', resized],
      ];
      for (const u of removed) {
        u.fences[f.protocol].revoked = true;
        revoking.push(f.revoke(host, u).catch((err: unknown) => this.log.warn({ op: 'revoke', host, protocol: f.protocol, err }, 'revoking sessions failed')));
      }
      for (const [change, units] of changes) if (units.length > 0) f.namespaceChanged(host, change, units);
    }
    const stays = new Set(next.map((u) => `${key(u)}\0${u.volume.id}`));
    for (const u of previous) if (!stays.has(`${key(u)}\0${u.volume.id}`)) this.fences.delete(`${host}\0${key(u)}\0${u.volume.id}`);
    return Promise.all(revoking).then(() => undefined);
  }

  // ---- host TLS identity (NBD) -------------------------------------------

  /**
   * Requires TLS for a host on TCP listeners: plaintext INFO/GO there gets
   * NBD_REP_ERR_TLS_REQD. The host's own unix socket is left as it is (its
   * file permissions already prove the host).
   */
  setHostRequireTls(name: string, required: boolean): HostRow {
    const h = this.host(name);
    this.db.prepare('UPDATE hosts SET require_tls = ? WHERE id = ?').run(required ? 1 : 0, h.id);
    this.dp.namespaces.setRequireTls(h.name, required);
    this.log.info({ op: 'host.tls', host: h.name, requireTls: required }, 'host TLS requirement changed');
    return this.hostById(h.id);
  }

  /** The shared NBD listener's server certificate and the CA of hosts' client certificates (never a key). */
  tlsCertificates(): TlsCertificateView {
    const tls = this.dp.tls;
    if (!tls) throw new BlockgateError('NOT_SUPPORTED', 'TLS is not configured on this appliance');
    const { server, clientCa } = tls.certificates();
    return { server: server && certificateInfo(server), clientCa: clientCa && certificateInfo(clientCa) };
  }

  /** Replaces the listener's server certificate and key (DATA/tls/server-cert.pem, server-key.pem 0600). */
  async setTlsCertificate(cert: string, key: string): Promise<TlsCertificateView> {
    const tls = this.dp.tls;
    if (!tls) throw new BlockgateError('NOT_SUPPORTED', 'TLS is not configured on this appliance');
    const x = await tls.setServerCertificate(cert, key, (point) => this.fault(point));
    this.events.emit('tls.certificate.set', 'tls/certificate', { subject: x.subject, fingerprint256: x.fingerprint256, validTo: new Date(x.validTo).toISOString() });
    this.log.info({ op: 'tls.certificate', subject: x.subject, fingerprint256: x.fingerprint256 }, 'NBD TLS server certificate replaced');
    return this.tlsCertificates();
  }

  /**
   * Sets (or generates) a host's TLS pre-shared key; the PSK identity is the
   * host name. The key file is written first (0600), then the listener uses
   * it. Returns the key once, for the host's psk file.
   */
  async setHostPsk(name: string, keyHex?: string, how: 'create' | 'rotate' = 'create'): Promise<{ identity: string; key: string }> {
    const h = this.host(name);
    const tls = this.dp.tls;
    if (!tls) throw new BlockgateError('NOT_SUPPORTED', 'TLS is not configured on this appliance');
    // A create never replaces a key a host may be using: replacing is an explicit rotate.
    if (how === 'create' && tls.hasPsk(h.name)) throw conflict(`host '${h.name}' already has a TLS key; rotate it (POST /v1/hosts/${h.name}/tls/psk/rotate) to replace it`);
    if (how === 'rotate' && !tls.hasPsk(h.name)) throw notFound('TLS key of host', h.name);
    if (keyHex !== undefined && !/^(?:[0-9a-fA-F]{2}){16,64}$/.test(keyHex)) throw badRequest('key must be 16 to 64 bytes of hex');
    const key = keyHex !== undefined ? Buffer.from(keyHex, 'hex') : crypto.randomBytes(32);
    const file = path.join(tls.pskDir, `${h.name}.key`);
    await fs.promises.mkdir(tls.pskDir, { recursive: true, mode: 0o700 });
    await fs.promises.writeFile(`${file}.tmp`, `${key.toString('hex')}\n`, { mode: 0o600 });
    await fs.promises.rename(`${file}.tmp`, file);
    tls.setPsk(h.name, key);
    this.events.emit(`host.psk.${how}d`, `host/${h.name}`, { host: h.name });
    this.log.info({ op: `host.psk.${how}`, host: h.name }, how === 'create' ? 'host TLS key created' : 'host TLS key rotated');
    return { identity: h.name, key: key.toString('hex') };
  }

  /** Whether a host has a TLS key and since when; the key itself is shown only by create and rotate. */
  async hostPsk(name: string): Promise<{ identity: string; present: boolean; setAt: string | null }> {
    const h = this.host(name);
    const tls = this.dp.tls;
    if (!tls) throw new BlockgateError('NOT_SUPPORTED', 'TLS is not configured on this appliance');
    const st = tls.hasPsk(h.name) ? await fs.promises.stat(path.join(tls.pskDir, `${h.name}.key`)).catch(() => null) : null;
    return { identity: h.name, present: tls.hasPsk(h.name), setAt: st ? st.mtime.toISOString() : null };
  }

  /** Removes a host's TLS key: PSK handshakes naming it fail from now on (open sessions are left alone). */
  async deleteHostPsk(name: string): Promise<void> {
    const h = this.host(name);
    const tls = this.dp.tls;
    if (!tls) throw new BlockgateError('NOT_SUPPORTED', 'TLS is not configured on this appliance');
    if (!tls.hasPsk(h.name)) throw notFound('TLS key of host', h.name);
    tls.deletePsk(h.name);
    await fs.promises.rm(path.join(tls.pskDir, `${h.name}.key`), { force: true });
    this.events.emit('host.psk.deleted', `host/${h.name}`, { host: h.name });
    this.log.info({ op: 'host.psk.delete', host: h.name }, 'host TLS key removed');
  }

  // ---- removal: every noun can go, refused (409) while something uses it ----

  /** Removes a farm no host or volume belongs to. */
  deleteFarm(name: string): void {
    const f = this.farm(name);
    const hosts = (this.db.prepare('SELECT name FROM hosts WHERE farm_id = ? ORDER BY name').all(f.id) as { name: string }[]).map((r) => r.name);
    const volumes = (this.db.prepare('SELECT name FROM volumes WHERE farm_id = ? ORDER BY name').all(f.id) as { name: string }[]).map((r) => r.name);
    if (hosts.length || volumes.length) {
      const what = [hosts.length ? `hosts ${hosts.join(', ')}` : '', volumes.length ? `volumes ${volumes.join(', ')}` : ''].filter(Boolean).join(' and ');
      throw conflict(`farm '${name}' is in use by ${what}; delete or move them first`, { hosts, volumes });
    }
    this.db.prepare('DELETE FROM farms WHERE id = ?').run(f.id);
    this.events.emit('farm.deleted', `farm/${name}`, { farm: name });
    this.log.info({ op: 'farm.delete', farm: name }, 'farm deleted');
  }

  /**
   * Removes an array no volume has space on: it leaves the data path, then
   * its files (image, allocation map, identity) are removed, so start-up
   * discovery does not adopt it again.
   */
  async deleteArray(name: string): Promise<void> {
    const a = this.array(name);
    const volumes = this.volumesOnArray(a.id);
    if (volumes.length) throw conflict(`array '${name}' holds extents of volumes ${volumes.join(', ')}; de-allocate them first`, { volumes });
    const store = this.dp.store;
    const f = store.listArrays().find((x) => x.id === a.id);
    store.removeArray(a.id);
    await f?.close().catch(() => undefined);
    this.health.cleared(a.id);
    this.db.prepare('DELETE FROM arrays WHERE id = ?').run(a.id);
    for (const file of [a.path, `${a.path}.alloc`, `${a.path}.id`]) await fs.promises.rm(file, { force: true });
    this.events.emit('array.deleted', `array/${name}`, { array: name, file: a.path });
    this.log.info({ op: 'array.delete', array: name, file: a.path }, 'array deleted');
  }

  /**
   * Removes a host with no bindings and no VMs: its listeners close (the unix
   * socket file goes with them), every session it has on any protocol ends,
   * and its keys (TLS PSK, CHAP secrets) and initiator names are removed.
   */
  async deleteHost(name: string): Promise<void> {
    const h = this.host(name);
    const bindings = this.bindingsOfHost(h.id).map((b) => `${b.target}/${b.lun}`);
    const vms = (this.db.prepare('SELECT name FROM vms WHERE host_id = ? ORDER BY name').all(h.id) as { name: string }[]).map((r) => r.name);
    if (bindings.length || vms.length) {
      const what = [bindings.length ? `bindings at ${bindings.join(', ')}` : '', vms.length ? `VMs ${vms.join(', ')}` : ''].filter(Boolean).join(' and ');
      throw conflict(`host '${name}' still has ${what}; unbind and delete them first`, { bindings, vms });
    }
    await this.credentials.withdrawAll(h);
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM hosts WHERE id = ?').run(h.id);
      if (this.setting('nbd.default_host') === name) this.setSetting('nbd.default_host', null);
      this.setSetting(`host.${name}.socket`, null);
    })();
    this.dp.namespaces.drop(name);
    for (const f of this.dp.frontends) {
      await f.hostRemoved?.(name);
      await f.revoke(name, null);
    }
    await this.iscsi.forget(name);
    this.dp.tls?.deletePsk(name);
    if (this.dp.tls) await fs.promises.rm(path.join(this.dp.tls.pskDir, `${name}.key`), { force: true });
    await fs.promises.rm(this.hostSocketPath(name), { force: true });
    this.events.emit('host.deleted', `host/${name}`, { host: name });
    this.log.info({ op: 'host.delete', host: name }, 'host deleted');
  }

  async stop(): Promise<void> {
    this.services.stop();
    await this.health.stop();
    await this.jobs.stop();
    // After the protocol servers stopped: no write can come after the change maps are saved clean.
    await this.backups.stop();
    await this.config.stopSaving();
  }

  close(): void {
    this.db.close();
  }
}


function certificateInfo(x: crypto.X509Certificate): NonNullable<TlsCertificateView['server']> {
  return {
    subject: x.subject.replace(/\n/g, ', '),
    issuer: x.issuer.replace(/\n/g, ', '),
    subjectAltName: x.subjectAltName ?? null,
    serialNumber: x.serialNumber,
    validFrom: new Date(x.validFrom).toISOString(),
    validTo: new Date(x.validTo).toISOString(),
    fingerprint256: x.fingerprint256,
  };
}
