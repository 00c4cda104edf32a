import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { BlockgateError, badRequest, conflict, notFound } from '../common/errors.js';
import type { BlockStore, CachePolicy } from '../cache/index.js';
import { ArrayFile } from '../disks/index.js';
import { EXTENT_ALIGN, VolumeLayout, allocateExtents, freeExtents, type Extent } from '../mapper/index.js';
import type { Namespaces, NbdServer, NbdTlsKeys, Unit } from '../target/index.js';
import { openDb, type Db } from './db.js';

/** The data path as the manager sees it: publish namespaces, attach arrays, manage listeners. */
export interface DataPath {
  namespaces: Namespaces;
  store: BlockStore;
  nbd: NbdServer;
  /** TLS identities of the shared NBD listener (PSK keys live in DATA/tls/psk). */
  tls?: NbdTlsKeys | undefined;
}

export interface ManagerOptions {
  dataDir: string;
  /** Shared NBD TCP listener address, for the URIs the namespace view prints. */
  nbdAddress?: { host: string; port: number } | undefined;
  log: Logger;
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
  created_at: string;
  updated_at: string;
}
export interface HostRow {
  id: number;
  name: string;
  farm_id: number;
  protocols: string;
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
interface ExtentRow {
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
  private readonly log: Logger;
  private readonly nbdAddress: { host: string; port: number } | undefined;
  /** Layouts are shared by every unit of a volume so translation is built once. */
  private readonly layouts = new Map<number, VolumeLayout>();
  readonly applianceId: string;

  private constructor(db: Db, dp: DataPath, opts: ManagerOptions) {
    this.db = db;
    this.dp = dp;
    this.dataDir = opts.dataDir;
    this.log = opts.log;
    this.nbdAddress = opts.nbdAddress;
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
    for (const h of this.listHosts()) {
      await this.openHostListeners(h);
      this.publishHost(h.id);
    }
  }

  private async attachArray(row: ArrayRow, create: boolean): Promise<void> {
    const f = new ArrayFile(row.id, row.name, row.path, row.size);
    await f.open(create);
    this.dp.store.addArray(f);
  }

  hostSocketPath(host: string): string {
    return path.join(this.dataDir, 'sockets', `${host}.sock`);
  }

  private async openHostListeners(h: HostRow): Promise<void> {
    const name = h.name;
    await this.dp.nbd.listenUnix(`unix:${name}`, this.hostSocketPath(name), () => name);
    if (h.nbd_tcp) {
      const { host, port } = parseAddress(h.nbd_tcp);
      await this.dp.nbd.listenTcp(`tcp:${name}`, host, port, () => name);
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
   * Allocates a volume. With `layout`, extents are taken in that order from the
   * named arrays (a predefined meta volume); otherwise from free space on
   * arrays of the quality class, summed across arrays when no one array has room.
   */
  createVolume(opts: {
    name: string;
    size: number;
    farm?: string | undefined;
    qualityClass?: string | undefined;
    shareMode?: ShareMode | undefined;
    layout?: { array: string; size: number }[] | undefined;
  }): VolumeRow {
    checkName('volume', opts.name);
    const tx = this.db.transaction(() => {
      if (this.findVolume(opts.name)) throw conflict(`volume '${opts.name}' already exists`);
      const farmId = opts.farm ? this.farm(opts.farm).id : null;
      const extents = opts.layout ? this.placeLayout(opts.size, opts.layout) : this.placeAuto(opts.size, opts.qualityClass);
      this.resetSpace(extents);
      const t = now();
      // Serial and NAA derive from the never-reused id, so insert first, then name it.
      const id = Number(
        this.db
          .prepare(
            `INSERT INTO volumes (name, farm_id, size, state, share_mode, serial, naa, created_at, updated_at)
             VALUES (?, ?, ?, 'configured', ?, ?, ?, ?, ?)`,
          )
          .run(opts.name, farmId, opts.size, opts.shareMode ?? 'exclusive', `tmp-${opts.name}`, `tmp-${opts.name}`, t, t).lastInsertRowid,
      );
      this.db.prepare('UPDATE volumes SET serial = ?, naa = ? WHERE id = ?').run(this.serialFor(id), this.naaFor(id), id);
      const ins = this.db.prepare('INSERT INTO extents (volume_id, seq, array_id, offset, length) VALUES (?, ?, ?, ?, ?)');
      extents.forEach((e, i) => ins.run(id, i, e.arrayId, e.offset, e.length));
      return id;
    });
    const id = tx();
    const v = this.volumeById(id);
    this.log.info({ op: 'volume.create', volume: v.name, size: v.size, extents: this.extentsOf(id).length }, 'volume created');
    return v;
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
        .prepare('INSERT INTO hosts (name, farm_id, nbd_tcp, created_at) VALUES (?, ?, ?, ?)')
        .run(opts.name, farm.id, opts.nbdTcp ?? null, now()).lastInsertRowid,
    );
    const h = this.hostById(id);
    try {
      await this.openHostListeners(h);
    } catch (e) {
      // The namespace side failed: undo the database side so nothing half-exists.
      await this.dp.nbd.closeListener(`unix:${h.name}`);
      this.db.prepare('DELETE FROM hosts WHERE id = ?').run(id);
      throw new BlockgateError('CONFLICT', `cannot open listener for host '${h.name}': ${(e as Error).message}`);
    }
    this.publishHost(id);
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
      units: this.bindingsOfHost(h.id).filter((b) => b.mapped).length,
      createdAt: h.created_at,
    };
  }

  /** The host's live namespace as an admin (or a host's admin) wants to read it. */
  namespaceView(hostName: string): Record<string, unknown> {
    const h = this.host(hostName);
    const sock = this.hostSocketPath(h.name);
    const tcp = h.nbd_tcp ? [h.nbd_tcp] : [];
    if (this.nbdAddress && this.setting('nbd.default_host') === h.name) {
      tcp.push(formatAddress(this.nbdAddress.host, this.nbdAddress.port));
    }
    const units = this.dp.namespaces.list(h.name).map((u) => {
      const exportName = `${u.target}/${u.lun}`;
      return {
        target: u.target,
        lun: u.lun,
        volume: u.volumeName,
        size: u.volume.layout.size,
        serial: u.serial,
        naa: u.naa,
        readOnly: u.readOnly,
        exportName,
        uris: [
          `nbd+unix:///${exportName}?socket=${sock}`,
          ...tcp.map((a) => `nbd://${a}/${exportName}`),
        ],
      };
    });
    return { host: h.name, farm: this.farmName(h.farm_id), socket: sock, tcp, units };
  }

  // ---- bindings ----------------------------------------------------------

  /** Binds a volume to a host at (target, lun); with `map`, also makes it visible at once. */
  bind(opts: { volume: string; host: string; target: number; lun: number; mode?: AccessMode | undefined; map?: boolean | undefined }): BindingRow {
    const tx = this.db.transaction(() => {
      const v = this.volume(opts.volume);
      const h = this.host(opts.host);
      const mode = opts.mode ?? (v.share_mode === 'shared' ? 'shared' : 'exclusive');
      if (v.farm_id !== null && v.farm_id !== h.farm_id) {
        throw conflict(`volume '${v.name}' belongs to another farm than host '${h.name}'`, { volume: v.name, host: h.name });
      }
      const taken = this.db.prepare('SELECT id FROM bindings WHERE host_id = ? AND target = ? AND lun = ?').get(h.id, opts.target, opts.lun);
      if (taken) throw conflict(`unit ${opts.target}/${opts.lun} of host '${h.name}' is already bound`);
      const others = this.db.prepare('SELECT * FROM bindings WHERE volume_id = ?').all(v.id) as BindingRow[];
      if (others.length > 0 && (v.share_mode !== 'shared' || mode === 'exclusive' || others.some((b) => b.mode === 'exclusive'))) {
        throw conflict(`volume '${v.name}' is exclusive and already bound`, { volume: v.name });
      }
      if (v.farm_id === null) this.db.prepare('UPDATE volumes SET farm_id = ? WHERE id = ?').run(h.farm_id, v.id);
      const id = Number(
        this.db
          .prepare('INSERT INTO bindings (volume_id, host_id, target, lun, mode, mapped, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
          .run(v.id, h.id, opts.target, opts.lun, mode, opts.map ? 1 : 0, now()).lastInsertRowid,
      );
      this.setVolumeState(v.id, opts.map ? 'mapped' : 'bound');
      if (opts.map) this.db.prepare('UPDATE volumes SET ever_mapped = 1 WHERE id = ?').run(v.id);
      return { id, hostId: h.id };
    });
    const { id, hostId } = tx();
    this.publishHost(hostId);
    const b = this.binding(id);
    this.log.info({ op: 'bind', volume: opts.volume, host: opts.host, target: b.target, lun: b.lun, mode: b.mode, mapped: !!b.mapped }, 'volume bound');
    return b;
  }

  setMapped(bindingId: number, mapped: boolean): BindingRow {
    const b = this.binding(bindingId);
    this.db.transaction(() => {
      this.db.prepare('UPDATE bindings SET mapped = ? WHERE id = ?').run(mapped ? 1 : 0, b.id);
      if (mapped) this.db.prepare('UPDATE volumes SET ever_mapped = 1 WHERE id = ?').run(b.volume_id);
      const anyMapped = this.db.prepare('SELECT 1 FROM bindings WHERE volume_id = ? AND mapped = 1').get(b.volume_id);
      this.setVolumeState(b.volume_id, anyMapped ? 'mapped' : mapped ? 'mapped' : 'unmapped');
    })();
    this.publishHost(b.host_id);
    this.log.info({ op: mapped ? 'map' : 'unmap', binding: b.id }, mapped ? 'unit mapped' : 'unit unmapped');
    return this.binding(b.id);
  }

  unbind(bindingId: number): void {
    const b = this.binding(bindingId);
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM bindings WHERE id = ?').run(b.id);
      const left = this.db.prepare('SELECT mapped FROM bindings WHERE volume_id = ?').all(b.volume_id) as { mapped: number }[];
      this.setVolumeState(b.volume_id, left.length === 0 ? 'unbound' : left.some((r) => r.mapped) ? 'mapped' : 'bound');
    })();
    this.publishHost(b.host_id);
    this.log.info({ op: 'unbind', binding: b.id }, 'volume unbound');
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

  describeBinding(b: BindingRow): Record<string, unknown> {
    return {
      id: b.id,
      volume: this.volumeById(b.volume_id).name,
      host: this.hostById(b.host_id).name,
      target: b.target,
      lun: b.lun,
      protocol: b.protocol,
      mode: b.mode,
      mapped: b.mapped === 1,
      createdAt: b.created_at,
    };
  }

  private setVolumeState(volumeId: number, state: string): void {
    this.db.prepare('UPDATE volumes SET state = ?, updated_at = ? WHERE id = ?').run(state, now(), volumeId);
  }

  /** Recomputes a host's namespace from the database and hands it to the data path. */
  private publishHost(hostId: number): void {
    const h = this.hostById(hostId);
    const units: Unit[] = this.bindingsOfHost(h.id)
      .filter((b) => b.mapped === 1)
      .map((b) => {
        const v = this.volumeById(b.volume_id);
        return {
          host: h.name,
          target: b.target,
          lun: b.lun,
          volume: { id: v.id, layout: this.layoutOf(v.id), cachePolicy: v.cache_policy },
          volumeName: v.name,
          serial: v.serial,
          naa: v.naa,
          readOnly: b.mode === 'read-only',
        };
      });
    this.dp.namespaces.publish(h.name, units);
    this.dp.namespaces.setRequireTls(h.name, h.require_tls === 1);
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

  close(): void {
    this.db.close();
  }
}

export function parseAddress(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw badRequest(`address '${s}' is not HOST:PORT`);
  return { host: (m[1] ?? m[2])!, port };
}

export function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
