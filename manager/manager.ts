import { AsyncLocalStorage } from 'node:async_hooks';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { BlockgateError, badRequest, conflict, notFound } from '../common/errors.js';
import type { BlockStore, CachePolicy } from '../cache/index.js';
import { ArrayFile, type Engine } from '../disks/index.js';
import { EXTENT_ALIGN, VolumeLayout, allocateExtents, freeExtents, type Extent } from '../mapper/index.js';
import { parseAddress } from '../common/address.js';
import { StatsRegistry, type Frontend, type Namespaces, type NamespaceChange, type NbdTlsKeys, type Unit } from '../target/index.js';
import { ConfigOperations } from './operations/config.js';
import { openDb, type Db } from './db.js';
import { EventLog } from './events.js';
import { JobQueue } from './jobs.js';
import { BindingOperations } from './operations/bindings.js';
import { BulkOperations } from './operations/bulk.js';
import { Inventory } from './operations/inventory.js';
import { Tracer } from './operations/trace.js';
import { IscsiAccess } from './operations/iscsi.js';
import { allowedOperations, transition, type Operation, type VolumeState } from './state.js';

/** The data path as the manager sees it: publish namespaces, attach arrays, manage listeners, bulk work. */
export interface DataPath {
  namespaces: Namespaces;
  store: BlockStore;
  /** Every protocol server (NBD, iSCSI): told of hosts, namespace changes and revocations, asked for addresses. */
  frontends: Frontend[];
  engine: Engine;
  /** TLS identities of the shared NBD listener (PSK keys live in DATA/tls/psk). */
  tls?: NbdTlsKeys | undefined;
  /** Per (host, volume) I/O counters the units record into; one is made if the caller has none. */
  stats?: StatsRegistry;
}

export interface ManagerOptions {
  dataDir: string;
  log: Logger;
  /**
   * Fault injection points for tests of the failure edges ('configure',
   * 'bind', 'map', 'copy-image', 'publish'): the named step fails as if the
   * array or the namespace side had refused it.
   */
  faults?: readonly string[] | undefined;
}

export type ShareMode = 'exclusive' | 'shared';
export type AccessMode = 'exclusive' | 'shared' | 'read-only';

export interface ArrayRow {
  id: number;
  name: string;
  path: string;
  size: number;
  quality_class: string;
  created_at: string;
}
export interface VolumeRow {
  id: number;
  name: string;
  farm_id: number | null;
  size: number;
  state: string;
  share_mode: ShareMode;
  serial: string;
  naa: string;
  ever_mapped: number;
  cache_policy: CachePolicy;
  dirty: number;
  scrubbed_at: string | null;
  image_id: number | null;
  quality_class: string | null;
  snapshot_of: number | null;
  created_at: string;
  updated_at: string;
}
export interface HostRow {
  id: number;
  name: string;
  farm_id: number;
  protocols: string;
  /** iSCSI CHAP mode ('one-way' | 'mutual'); the secrets are in DATA/iscsi/chap/<host>.json. */
  chap: string | null;
  default_protocol: string;
  nbd_tcp: string | null;
  require_tls: number;
  created_at: string;
}
export interface BindingRow {
  id: number;
  volume_id: number;
  host_id: number;
  target: number;
  lun: number;
  protocol: string;
  mode: AccessMode;
  mapped: number;
  created_at: string;
}
export interface ExtentRow {
  volume_id: number;
  seq: number;
  array_id: number;
  offset: number;
  length: number;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function checkName(kind: string, name: string): string {
  if (!NAME_RE.test(name)) {
    throw badRequest(`${kind} name '${name}' is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
  return name;
}

const now = (): string => new Date().toISOString();

/**
 * The storage manager: owns the control database and keeps the data path's
 * view (attached arrays, published namespaces, per-host listeners) equal to it.
 * Every change is one SQLite transaction; the data path is updated after commit.
 */
export class StorageManager {
  readonly db: Db;
  readonly dataDir: string;
  private readonly dp: DataPath;
  readonly log: Logger;
  /** Layouts are shared by every unit of a volume so translation is built once. */
  private readonly layouts = new Map<number, VolumeLayout>();
  /** Set once; replaced only when a saved configuration is imported into an empty appliance. */
  applianceId: string;
  readonly stats: StatsRegistry;
  readonly config: ConfigOperations;
  readonly events: EventLog;
  readonly jobs: JobQueue;
  readonly bindings: BindingOperations;
  readonly bulk: BulkOperations;
  readonly tracer: Tracer;
  readonly inventory: Inventory;
  readonly iscsi: IscsiAccess;
  private faults: ReadonlySet<string>;
  /** The job whose code is running (its own volumes are not "busy" to it). */
  private readonly currentJob = new AsyncLocalStorage<number>();

  get dataPath(): DataPath {
    return this.dp;
  }

  private constructor(db: Db, dp: DataPath, opts: ManagerOptions) {
    this.db = db;
    this.dp = dp;
    this.events = new EventLog(db);
    this.jobs = new JobQueue(db, this.events, opts.log);
    this.faults = new Set(opts.faults ?? []);
    this.bindings = new BindingOperations(this);
    this.bulk = new BulkOperations(this);
    this.tracer = new Tracer(this);
    this.inventory = new Inventory(this);
    this.iscsi = new IscsiAccess(this);
    this.config = new ConfigOperations(this);
    this.stats = dp.stats ?? new StatsRegistry();
    this.dataDir = opts.dataDir;
    this.log = opts.log;
    this.applianceId = this.setting('appliance_id') ?? this.initApplianceId();
  }

  /** Opens the control database and brings the data path up to match it. */
  static async open(dp: DataPath, opts: ManagerOptions): Promise<StorageManager> {
    await fs.promises.mkdir(path.join(opts.dataDir, 'arrays'), { recursive: true });
    await fs.promises.mkdir(path.join(opts.dataDir, 'sockets'), { recursive: true });
    const db = openDb(path.join(opts.dataDir, 'blockgate.db'));
    const m = new StorageManager(db, dp, opts);
    return m;
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
    for (const a of this.listArrays()) await this.attachArray(a, false);
    await this.iscsi.load();
    for (const h of this.listHosts()) {
      await this.openHostListeners(h);
      this.publishHost(h.id);
    }
    // Array files placed in the data directory while the appliance was down are adopted now.
    await this.inventory.discover();
    await this.jobs.start();
  }

  private async attachArray(row: ArrayRow, create: boolean): Promise<void> {
    const f = new ArrayFile(row.id, row.name, row.path, row.size);
    await f.open(create);
    this.dp.store.addArray(f);
  }

  hostSocketPath(host: string): string {
    return path.join(this.dataDir, 'sockets', `${host}.sock`);
  }

  /** Brings arrays and hosts written straight into the database (config import) onto the data path. */
  async attachRestored(arrays: ArrayRow[], hosts: HostRow[]): Promise<void> {
    await this.iscsi.load();
    for (const a of arrays) await this.attachArray(a, false);
    for (const h of hosts) {
      await this.openHostListeners(h);
      this.publishHost(h.id);
    }
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

  private farmName(id: number | null): string | null {
    if (id === null) return null;
    return (this.db.prepare('SELECT name FROM farms WHERE id = ?').get(id) as { name: string }).name;
  }

  // ---- arrays ------------------------------------------------------------

  async createArray(name: string, size: number, qualityClass = 'std'): Promise<ArrayRow> {
    checkName('array', name);
    if (size <= 0 || size % EXTENT_ALIGN !== 0) throw badRequest(`array size must be a positive multiple of ${EXTENT_ALIGN} bytes`);
    if (this.findArray(name)) throw conflict(`array '${name}' already exists`);
    const file = path.join(this.dataDir, 'arrays', `${name}.img`);
    if (fs.existsSync(file)) throw conflict(`a file already exists at ${file}`);
    const row: ArrayRow = { id: 0, name, path: file, size, quality_class: qualityClass, created_at: now() };
    // The file comes first: a row never names a file that could not be made.
    await this.attachNew(row);
    this.log.info({ op: 'array.create', array: name, size, qualityClass }, 'array created');
    return this.array(name);
  }

  private async attachNew(row: ArrayRow): Promise<void> {
    const f = new ArrayFile(-1, row.name, row.path, row.size);
    await f.open(true);
    await f.close();
    const id = Number(
      this.db
        .prepare('INSERT INTO arrays (name, path, size, quality_class, created_at) VALUES (?, ?, ?, ?, ?)')
        .run(row.name, row.path, row.size, row.quality_class, row.created_at).lastInsertRowid,
    );
    await this.attachArray({ ...row, id }, false);
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
  }): VolumeRow {
    checkName('volume', opts.name);
    const tx = this.db.transaction(() => {
      const existing = this.findVolume(opts.name);
      if (existing && existing.state !== 'free') throw conflict(`volume '${opts.name}' already exists`);
      const farmId = opts.farm ? this.farm(opts.farm).id : null;
      const extents = opts.layout ? this.placeLayout(opts.size, opts.layout) : this.placeAuto(opts.size, opts.qualityClass);
      this.resetSpace(extents);
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
            `INSERT INTO volumes (name, farm_id, size, state, share_mode, serial, naa, quality_class, created_at, updated_at)
             VALUES (?, ?, ?, 'free', ?, ?, ?, ?, ?, ?)`,
          )
          .run(opts.name, farmId, opts.size, opts.shareMode ?? 'exclusive', `tmp-${opts.name}`, `tmp-${opts.name}`, opts.qualityClass ?? null, t, t).lastInsertRowid,
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
    this.log.info({ op: 'volume.allocate', volume: v.name, size: v.size, extents: this.extentsOf(id).length }, 'volume allocated');
    if (opts.configure) return this.configure(v.name);
    return v;
  }

  /**
   * Allocate from the predefined volumes: the smallest configured volume that
   * belongs to no farm, was never bound and holds no data, at least `size`
   * bytes and of the quality class, is given to the farm. Predefined volumes
   * (and predefined meta volumes, with a layout) are ones an admin created
   * without a farm.
   */
  claimVolume(opts: { farm: string; size: number; qualityClass?: string | undefined }): VolumeRow {
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
      this.resetSpace(more);
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

  fault(point: string): void {
    if (this.faults.has(point)) throw new BlockgateError('IO_ERROR', `injected fault at '${point}'`);
  }


  /**
   * Space handed to a volume reads as zeroes until the volume writes it, and
   * that is durable before the volume exists: a new volume never sees what a
   * previous owner left there, even after a crash. (Freeing space should call
   * this too.)
   */
  private resetSpace(extents: readonly Extent[]): void {
    for (const e of extents) this.dp.store.discard(e.arrayId, e.offset, e.length);
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
      const extra = taken.get(a.id) ?? [];
      const [e] = allocateExtents(l.size, [{ arrayId: a.id, size: a.size, used: [...this.arrayExtents(a.id), ...extra] }]);
      if (!e || e.length !== l.size) throw new BlockgateError('NO_SPACE', `array '${l.array}' has no contiguous ${l.size} bytes free`);
      taken.set(a.id, [...extra, e]);
      return e;
    });
  }

  private placeAuto(size: number, qualityClass?: string): Extent[] {
    const arrays = this.listArrays().filter((a) => !qualityClass || a.quality_class === qualityClass);
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

  describeVolume(v: VolumeRow): Record<string, unknown> {
    const arrays = new Map(this.listArrays().map((a) => [a.id, a.name]));
    return {
      name: v.name,
      farm: this.farmName(v.farm_id),
      size: v.size,
      state: v.state,
      shareMode: v.share_mode,
      cachePolicy: v.cache_policy,
      serial: v.serial,
      naa: v.naa,
      meta: new Set(this.extentsOf(v.id).map((e) => e.arrayId)).size > 1,
      qualityClass: v.quality_class,
      everMapped: v.ever_mapped === 1,
      dirty: v.dirty === 1,
      scrubbedAt: v.scrubbed_at,
      image: v.image_id === null ? null : ((this.db.prepare('SELECT name FROM images WHERE id = ?').get(v.image_id) as { name: string } | undefined)?.name ?? null),
      snapshotOf: v.snapshot_of === null ? null : this.volumeById(v.snapshot_of).name,
      allowed: allowedOperations(v.state as VolumeState),
      job: this.jobs.activeOn(v.id)?.id ?? null,
      extents: this.extentsOf(v.id).map((e) => ({ array: arrays.get(e.arrayId), offset: e.offset, length: e.length })),
      createdAt: v.created_at,
      updatedAt: v.updated_at,
    };
  }

  // ---- hosts -------------------------------------------------------------

  async createHost(opts: { name: string; farm: string; nbdTcp?: string | undefined }): Promise<HostRow> {
    checkName('host', opts.name);
    if (this.findHost(opts.name)) throw conflict(`host '${opts.name}' already exists`);
    const farm = this.farm(opts.farm);
    if (opts.nbdTcp) parseAddress(opts.nbdTcp);
    const id = Number(
      this.db
        .prepare("INSERT INTO hosts (name, farm_id, nbd_tcp, protocols, created_at) VALUES (?, ?, ?, 'nbd,iscsi', ?)")
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

  describeHost(h: HostRow): Record<string, unknown> {
    return {
      name: h.name,
      farm: this.farmName(h.farm_id),
      protocols: h.protocols.split(','),
      defaultProtocol: h.default_protocol,
      nbd: {
        socket: this.hostSocketPath(h.name),
        tcp: h.nbd_tcp,
        sharedListenerDefault: this.setting('nbd.default_host') === h.name,
        requireTls: h.require_tls === 1,
        tlsPsk: this.dp.tls?.hasPsk(h.name) ?? false,
      },
      iscsi: this.iscsi.describe(h),
      units: this.bindingsOfHost(h.id).filter((b) => b.mapped).length,
      createdAt: h.created_at,
    };
  }

  /**
   * The host's live namespace as an admin (or a host's admin) wants to read
   * it; how each unit is reached comes from the frontends' address().
   */
  namespaceView(hostName: string): Record<string, unknown> {
    const h = this.host(hostName);
    const sock = this.hostSocketPath(h.name);
    const tcp = new Set<string>();
    const units = this.dp.namespaces.list(h.name).map((u) => {
      // iSCSI addresses only for hosts allowed to use iSCSI (the per-host protocols setting).
      const addresses = this.dp.frontends
        .filter((f) => f.protocol !== 'iscsi' || h.protocols.split(',').includes('iscsi'))
        .map((f) => f.address(h.name, u))
        .filter((a) => a !== null);
      const uris = addresses.flatMap((a) => a.uris);
      for (const uri of uris) if (uri.startsWith('nbd://')) tcp.add(new URL(uri).host);
      return {
        target: u.target,
        lun: u.lun,
        volume: u.volumeName,
        size: u.volume.layout.size,
        serial: u.serial,
        naa: u.naa,
        readOnly: u.readOnly,
        exportName: addresses.find((a) => a.exportName !== undefined)?.exportName ?? `${u.target}/${u.lun}`,
        uris,
      };
    });
    if (h.nbd_tcp) tcp.add(h.nbd_tcp);
    return { host: h.name, farm: this.farmName(h.farm_id), socket: sock, tcp: [...tcp], iscsi: this.iscsi.describe(h), units };
  }

  // ---- bindings ----------------------------------------------------------
  // The operations live in operations/bindings.ts; these are the manager's surface.

  bind(opts: { volume: string; host: string; target: number; lun: number; mode?: AccessMode | undefined; map?: boolean | undefined }): BindingRow {
    return this.bindings.bind(opts);
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
    const b = this.db.prepare('SELECT * FROM bindings WHERE id = ?').get(id) as BindingRow | undefined;
    if (!b) throw notFound('binding', id);
    return b;
  }

  listBindings(): BindingRow[] {
    return this.db.prepare('SELECT * FROM bindings ORDER BY id').all() as BindingRow[];
  }

  bindingsOfHost(hostId: number): BindingRow[] {
    return this.db.prepare('SELECT * FROM bindings WHERE host_id = ? ORDER BY target, lun').all(hostId) as BindingRow[];
  }

  bindingsOfVolume(volumeId: number): BindingRow[] {
    return this.db.prepare('SELECT * FROM bindings WHERE volume_id = ? ORDER BY id').all(volumeId) as BindingRow[];
  }

  describeBinding(b: BindingRow): Record<string, unknown> {
    return bindingRecord(b, this.volumeById(b.volume_id).name, this.hostById(b.host_id).name);
  }

  volumeHandle(v: VolumeRow): { id: number; layout: VolumeLayout; cachePolicy: CachePolicy } {
    return { id: v.id, layout: this.layoutOf(v.id), cachePolicy: v.cache_policy };
  }

  /** Recomputes a host's namespace from the database and hands it to the data path. */
  publishHost(hostId: number): void {
    const h = this.hostById(hostId);
    const units: Unit[] = this.bindingsOfHost(h.id)
      .filter((b) => b.mapped === 1)
      .map((b) => {
        const v = this.volumeById(b.volume_id);
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
        };
      });
    this.fault('publish');
    const previous = this.dp.namespaces.list(h.name);
    const before = previous.map((u) => `${u.target}/${u.lun}:${u.volume.id}`).join(',');
    this.dp.namespaces.publish(h.name, units);
    this.dp.namespaces.setRequireTls(h.name, h.require_tls === 1);
    this.tellFrontends(h.name, previous, units);
    const after = units.map((u) => `${u.target}/${u.lun}:${u.volume.id}`).sort().join(',');
    if (before.split(',').sort().join(',') !== after) {
      this.events.emit('namespace.changed', `host/${h.name}`, {
        host: h.name,
        units: units.map((u) => ({ target: u.target, lun: u.lun, volume: u.volumeName })),
      });
    }
  }

  /**
   * After a host's namespace is republished: sessions on units it lost are
   * revoked (their I/O fails from now on), then every frontend hears what
   * changed (SCSI unit attentions). Revocation is synchronous in effect: a
   * frontend stops serving the unit before revoke() returns its promise.
   */
  private tellFrontends(host: string, previous: readonly Unit[], next: readonly Unit[]): void {
    const key = (u: Unit): string => `${u.target}/${u.lun}`;
    const nextByKey = new Map(next.map((u) => [key(u), u]));
    const prevByKey = new Map(previous.map((u) => [key(u), u]));
    const removed = previous.filter((u) => nextByKey.get(key(u))?.volume.id !== u.volume.id);
    const added = next.filter((u) => prevByKey.get(key(u))?.volume.id !== u.volume.id);
    const resized = next.filter((u) => {
      const p = prevByKey.get(key(u));
      return p !== undefined && p.volume.id === u.volume.id && p.volume.layout.size !== u.volume.layout.size;
    });
    const changes: [NamespaceChange, Unit[]][] = [
      ['unmapped', removed],
      ['mapped', added],
      ['resized', resized],
    ];
    for (const f of this.dp.frontends) {
      for (const u of removed) {
        f.revoke(host, u).catch((err: unknown) => this.log.warn({ op: 'revoke', host, protocol: f.protocol, err }, 'revoking sessions failed'));
      }
      for (const [change, units] of changes) if (units.length > 0) f.namespaceChanged(host, change, units);
    }
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

  /**
   * Sets (or generates) a host's TLS pre-shared key; the PSK identity is the
   * host name. The key file is written first (0600), then the listener uses
   * it. Returns the key once, for the host's psk file.
   */
  async setHostPsk(name: string, keyHex?: string): Promise<{ identity: string; key: string }> {
    const h = this.host(name);
    const tls = this.dp.tls;
    if (!tls) throw new BlockgateError('NOT_SUPPORTED', 'TLS is not configured on this appliance');
    if (keyHex !== undefined && !/^(?:[0-9a-fA-F]{2}){16,64}$/.test(keyHex)) throw badRequest('key must be 16 to 64 bytes of hex');
    const key = keyHex !== undefined ? Buffer.from(keyHex, 'hex') : crypto.randomBytes(32);
    const file = path.join(tls.pskDir, `${h.name}.key`);
    await fs.promises.mkdir(tls.pskDir, { recursive: true, mode: 0o700 });
    await fs.promises.writeFile(`${file}.tmp`, `${key.toString('hex')}\n`, { mode: 0o600 });
    await fs.promises.rename(`${file}.tmp`, file);
    tls.setPsk(h.name, key);
    this.log.info({ op: 'host.psk', host: h.name }, 'host TLS key set');
    return { identity: h.name, key: key.toString('hex') };
  }

  async stop(): Promise<void> {
    await this.jobs.stop();
  }

  close(): void {
    this.db.close();
  }
}

/** An operation that failed part-way: its failure edge has been applied; the message says where the volume now is. */
export function failed(op: string, volume: string, cause: Error, state: string): BlockgateError {
  return new BlockgateError('OPERATION_FAILED', `${op} of volume '${volume}' failed (${cause.message}); volume is now '${state}'`, {
    operation: op,
    volume,
    state,
  });
}

/** A binding as the API and a saved configuration show it, with its volume and host by name. */
export function bindingRecord(b: BindingRow, volume: string, host: string) {
  return {
    id: b.id,
    volume,
    host,
    target: b.target,
    lun: b.lun,
    protocol: b.protocol,
    mode: b.mode,
    mapped: b.mapped === 1,
    createdAt: b.created_at,
  };
}

