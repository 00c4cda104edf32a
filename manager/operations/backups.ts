import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Cron } from 'croner';
import { BlockgateError, badRequest, conflict, notFound } from '../../common/errors.js';
import { ChangeMap, changeMaps } from '../../target/index.js';
import type { JobContext } from '../jobs.js';
import type { VolumeRow } from '../model.js';
import type { JobView } from '../views.js';
import type { CutoverStats } from '../cutover-stats.js';
import type { OperationContext } from './context.js';
import { syncDir, type SnapshotOperations } from './snapshots.js';

/** Changed-block tracking granularity: an incremental copies whole 64 KiB chunks. */
export const CHANGE_CHUNK = 64 * 1024;
/** Bytes read or written per step of a backup or restore. */
const STEP = 1024 * 1024;
const ZEROES = Buffer.alloc(STEP);
const CBT_MAGIC = 'BGCBT001';
const CBT_HEADER = 32;

export interface BackupRow {
  id: number;
  name: string;
  vm: string;
  host: string;
  farm: string | null;
  label: string;
  kind: 'full' | 'incr';
  parent_id: number | null;
  state: 'running' | 'complete' | 'failed';
  store: string;
  pause_ms: number | null;
  error: string | null;
  created_at: string;
  finished_at: string | null;
}

export interface BackupVolumeRow {
  backup_id: number;
  volume_id: number;
  volume: string;
  size: number;
  full: number;
  allocated: number;
  stored: number;
  checksum: string;
  file: string;
}

export interface BackupPolicy {
  schedule: string | null;
  keepLast: number | null;
  keepDailyDays: number | null;
  store: string | null;
}

export interface BackupView {
  id: number;
  name: string;
  vm: string;
  host: string;
  farm: string | null;
  label: string;
  kind: 'full' | 'incr';
  parent: number | null;
  state: 'running' | 'complete' | 'failed';
  pauseMs: number | null;
  error: string | null;
  createdAt: string;
  finishedAt: string | null;
  volumes: { volume: string; size: number; full: boolean; allocated: number; stored: number; checksum: string; file: string }[];
}

type BackupParams = { backupId: number; name: string; vm: string; volumeIds: number[] };
type RestoreParams = {
  backupId: number;
  volumes: string[];
  inPlace: boolean;
  host: string | null;
  target: number;
  suffix: string;
};

/** One volume's tracker: the map current since `base` (the backup it counts from), or no base when it cannot be trusted. */
interface Tracker {
  map: ChangeMap;
  base: number | null;
}

const stamp = (d: Date): string => d.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
/** Volume-state operations that change a volume's bytes below the data path: the next backup of it is full. */
const REWRITES = new Set(['scrub', 'copy', 'copy-image', 'resize', 'deallocate', 'break']);

/**
 * VM-consistent backups (issue 15 items 1–4): a consistency-group snapshot
 * of every volume of a VM, copied sparsely into the farm's backup store and
 * checksummed, a catalog in the control database, retention and cron
 * schedules, restore from a full or incremental chain, and changed-block
 * tracking so an incremental copies only the chunks hosts wrote.
 */
export class BackupOperations {
  private readonly trackers = new Map<number, Tracker>();
  private readonly crons = new Map<string, Cron>();
  private unsubscribe: (() => void) | null = null;
  constructor(
    private readonly c: OperationContext,
    private readonly snapshots: SnapshotOperations,
    /** Backups' consistency-group pauses and outcomes go to /metrics with the cutovers' (kind 'backup'). */
    private readonly stats: CutoverStats,
  ) {
    const m = c.lifecycle;
    c.jobs.register<BackupParams>('backup', {
      // The snapshots and files of an interrupted backup are taken away; the next backup starts afresh.
      onRestart: 'fail',
      run: (ctx) => m.asJob(ctx.id, () => this.runBackup(ctx)),
      onFail: (p, e, id) => m.asJob(id, () => this.failBackup(p, e)),
    });
    c.jobs.register<RestoreParams>('restore', {
      onRestart: 'fail',
      run: (ctx) => m.asJob(ctx.id, () => this.runRestore(ctx)),
    });
  }

  private get cbtDir(): string {
    return path.join(this.c.dataDir, 'cbt');
  }

  private cbtPath(volumeId: number): string {
    return path.join(this.cbtDir, `${volumeId}.cbt`);
  }

  /**
   * Start-up, before hosts can write: change maps saved by a clean shutdown
   * come back with their base; each file is then marked unclean (synced) so
   * a crash from here on makes the next backup of the volume full.
   */
  async load(): Promise<void> {
    const { c } = this;
    await fs.promises.mkdir(this.cbtDir, { recursive: true, mode: 0o700 });
    for (const v of c.lifecycle.listVolumes()) {
      if (v.state === 'free') continue;
      let t: Tracker = { map: new ChangeMap(CHANGE_CHUNK, v.size), base: null };
      const buf = await fs.promises.readFile(this.cbtPath(v.id)).catch(() => null);
      if (buf && buf.length >= CBT_HEADER && buf.toString('latin1', 0, 8) === CBT_MAGIC && buf[8] === 1) {
        const base = buf.readUInt32LE(12);
        const chunk = buf.readUInt32LE(16);
        const size = Number(buf.readBigUInt64LE(20));
        try {
          if (chunk === CHANGE_CHUNK && size === v.size && base > 0) t = { map: new ChangeMap(chunk, size, new Uint8Array(buf.subarray(CBT_HEADER))), base };
        } catch {
          // A map that does not fit the volume is no map: the next backup is full.
        }
      }
      if (buf) await writeSynced(this.cbtPath(v.id), Buffer.concat([header(false, 0, CHANGE_CHUNK, v.size)]));
      this.install(v.id, t);
    }
    for (const f of await fs.promises.readdir(this.cbtDir)) {
      const id = Number(f.replace(/\.cbt$/, ''));
      if (!this.trackers.has(id)) await fs.promises.rm(path.join(this.cbtDir, f), { force: true });
    }
    const idOf = c.db.prepare('SELECT id FROM volumes WHERE name = ?').pluck();
    this.unsubscribe = c.events.subscribe((e) => {
      if (e.type !== 'volume.state' || !REWRITES.has(String(e.data.operation))) return;
      const id = idOf.get(String(e.data.volume)) as number | undefined;
      if (id !== undefined) this.forget(id);
    });
    this.startSchedules();
  }

  private install(volumeId: number, t: Tracker): void {
    this.trackers.set(volumeId, t);
    changeMaps(this.c.dataPath.store).set(volumeId, t.map);
  }

  /** The volume's bytes changed in a way its map did not see: its next backup is full. */
  private forget(volumeId: number): void {
    const t = this.trackers.get(volumeId);
    if (t) t.base = null;
  }

  private tracker(v: VolumeRow): Tracker {
    let t = this.trackers.get(v.id);
    if (!t || t.map.size !== v.size) {
      t = { map: new ChangeMap(CHANGE_CHUNK, v.size), base: null };
      this.install(v.id, t);
    }
    return t;
  }

  /** Clean shutdown, after the protocol servers stopped: every map is saved with its base, marked clean. */
  async stop(): Promise<void> {
    this.unsubscribe?.();
    for (const cr of this.crons.values()) cr.stop();
    this.crons.clear();
    for (const [id, t] of this.trackers) {
      if (t.base === null) {
        await fs.promises.rm(this.cbtPath(id), { force: true });
        continue;
      }
      await writeSynced(this.cbtPath(id), Buffer.concat([header(true, t.base, t.map.chunk, t.map.size), t.map.bits]));
    }
  }

  // ---- policies and schedules ----------------------------------------------

  policy(scope: 'vm' | 'farm', name: string): BackupPolicy {
    if (scope === 'vm') this.vmRow(name);
    else this.farmExists(name);
    const r = this.c.db.prepare('SELECT * FROM backup_policies WHERE scope = ? AND name = ?').get(scope, name) as
      | { schedule: string | null; keep_last: number | null; keep_daily_days: number | null; store: string | null }
      | undefined;
    return { schedule: r?.schedule ?? null, keepLast: r?.keep_last ?? null, keepDailyDays: r?.keep_daily_days ?? null, store: r?.store ?? null };
  }

  setPolicy(scope: 'vm' | 'farm', name: string, p: Partial<BackupPolicy>): BackupPolicy {
    const cur = this.policy(scope, name);
    const next: BackupPolicy = { ...cur, ...Object.fromEntries(Object.entries(p).filter(([, v]) => v !== undefined)) };
    if (next.schedule !== null) {
      try {
        new Cron(next.schedule, { paused: true }).stop();
      } catch (e) {
        throw badRequest(`schedule '${next.schedule}' is not a cron expression: ${(e as Error).message}`);
      }
    }
    if (next.store !== null) {
      if (scope !== 'farm') throw badRequest('a backup store is set per farm');
      if (!path.isAbsolute(next.store)) throw badRequest(`backup store '${next.store}' must be an absolute path`);
    }
    this.c.db
      .prepare('INSERT OR REPLACE INTO backup_policies (scope, name, schedule, keep_last, keep_daily_days, store) VALUES (?, ?, ?, ?, ?, ?)')
      .run(scope, name, next.schedule, next.keepLast, next.keepDailyDays, next.store);
    this.c.events.emit('backup.policy', `${scope}/${name}`, { scope, name, ...next });
    this.startSchedules();
    return next;
  }

  /** One cron per policy with a schedule; each tick queues a backup of the VM (or of every VM of the farm). */
  private startSchedules(): void {
    for (const cr of this.crons.values()) cr.stop();
    this.crons.clear();
    const rows = this.c.db.prepare('SELECT scope, name, schedule FROM backup_policies WHERE schedule IS NOT NULL').all() as { scope: 'vm' | 'farm'; name: string; schedule: string }[];
    for (const r of rows) {
      const cr = new Cron(r.schedule, { protect: true, unref: true, catch: true }, () => this.tick(r.scope, r.name));
      this.crons.set(`${r.scope}/${r.name}`, cr);
    }
  }

  private tick(scope: 'vm' | 'farm', name: string): void {
    const { c } = this;
    const vms =
      scope === 'vm'
        ? [name]
        : (c.db.prepare('SELECT vms.name FROM vms JOIN hosts h ON h.id = vms.host_id JOIN farms f ON f.id = h.farm_id WHERE f.name = ? ORDER BY vms.name').all(name) as { name: string }[]).map(
            (r) => r.name,
          );
    for (const vm of vms) {
      // A VM with a backup still queued or running is skipped this tick rather than queued twice.
      if (c.db.prepare("SELECT 1 FROM backups WHERE vm = ? AND state = 'running'").get(vm)) continue;
      try {
        this.submit(vm, { label: 'scheduled' });
      } catch (e) {
        c.log.warn({ op: 'backup.schedule', vm, err: (e as Error).message }, 'scheduled backup not queued');
      }
    }
  }

  // ---- backup --------------------------------------------------------------

  private vmRow(name: string): { id: number; name: string; host_id: number } {
    const v = this.c.db.prepare('SELECT id, name, host_id FROM vms WHERE name = ?').get(name) as { id: number; name: string; host_id: number } | undefined;
    if (!v) throw notFound('vm', name);
    return v;
  }

  private farmExists(name: string): void {
    if (!this.c.db.prepare('SELECT 1 FROM farms WHERE name = ?').get(name)) throw notFound('farm', name);
  }

  private vmVolumes(vmId: number): VolumeRow[] {
    const ids = (this.c.db.prepare('SELECT DISTINCT b.volume_id AS id FROM vm_bindings vb JOIN bindings b ON b.id = vb.binding_id WHERE vb.vm_id = ? ORDER BY b.volume_id').all(vmId) as { id: number }[]).map(
      (r) => r.id,
    );
    return ids.map((id) => this.c.lifecycle.volumeById(id));
  }

  /** The farm's backup store (its policy's, else DATA/backups/<farm>). */
  private storeDir(farm: string | null): string {
    const p = farm ? (this.c.db.prepare("SELECT store FROM backup_policies WHERE scope = 'farm' AND name = ?").get(farm) as { store: string | null } | undefined) : undefined;
    return p?.store ?? path.join(this.c.dataDir, 'backups', farm ?? '_');
  }

  /** Queues a VM-consistent backup; its catalog row exists (state running) from now on. */
  submit(vmName: string, opts: { label?: string | undefined }): { job: JobView; backup: BackupView } {
    const { c } = this;
    const m = c.lifecycle;
    const vm = this.vmRow(vmName);
    const label = opts.label ?? 'manual';
    if (!/^[A-Za-z0-9][A-Za-z0-9_.]{0,31}$/.test(label)) throw badRequest(`label '${label}' is invalid: use 1-32 letters, digits, '.' or '_', starting with a letter or digit`);
    const volumes = this.vmVolumes(vm.id);
    if (volumes.length === 0) throw conflict(`vm '${vm.name}' has no volumes to back up`);
    for (const v of volumes) m.check(v, 'snap');
    const host = m.hostById(vm.host_id);
    const farm = m.findFarmName(host.farm_id);
    const t = new Date();
    const base = `${vm.name}-${label}-${stamp(t)}`;
    const { job, id } = c.db.transaction(() => {
      let name = base;
      for (let k = 2; c.db.prepare('SELECT 1 FROM backups WHERE name = ?').get(name); k++) name = `${base}-${k}`;
      const id = Number(
        c.db
          .prepare("INSERT INTO backups (name, vm, host, farm, label, kind, state, store, created_at) VALUES (?, ?, ?, ?, ?, 'full', 'running', ?, ?)")
          .run(name, vm.name, host.name, farm, label, this.storeDir(farm), t.toISOString()).lastInsertRowid,
      );
      const job = c.jobs.submit('backup', { backupId: id, name, vm: vm.name, volumeIds: volumes.map((v) => v.id) }, volumes.map((v) => v.id));
      return { job, id };
    })();
    return { job: c.jobs.describe(job), backup: this.describe(this.row(id)) };
  }

  private async runBackup(ctx: JobContext<BackupParams>): Promise<unknown> {
    const { c } = this;
    const m = c.lifecycle;
    const store = c.dataPath.store;
    const b = this.row(ctx.params.backupId);
    const volumes = ctx.params.volumeIds.map((id) => m.volumeById(id));
    // The parent an incremental counts from: this VM's newest complete backup.
    const parent = c.db.prepare("SELECT * FROM backups WHERE vm = ? AND state = 'complete' ORDER BY id DESC LIMIT 1").get(b.vm) as BackupRow | undefined;
    const dir = path.join(b.store, b.name);
    await fs.promises.mkdir(b.store, { recursive: true, mode: 0o700 });
    await fs.promises.chmod(b.store, 0o700);
    await fs.promises.mkdir(dir, { mode: 0o700 });
    const snaps = volumes.map((v, k) => ({ volume: v.name, snapshot: `bk${b.id}-${k}` }));
    // Swapped while the group is held: each old map holds exactly the writes the snapshot has since the parent.
    const since = new Map<number, Tracker>();
    const held = await this.snapshots.snapGroup(snaps, {
      duringHold: () => {
        for (const v of volumes) {
          const old = this.tracker(v);
          since.set(v.id, { map: old.map, base: old.base });
          this.install(v.id, { map: new ChangeMap(CHANGE_CHUNK, v.size), base: b.id });
        }
      },
    });
    const pauseMs = held[0]!.pauseMs;
    this.stats.pause(pauseMs);
    c.db.prepare('UPDATE backups SET pause_ms = ? WHERE id = ?').run(pauseMs, b.id);
    ctx.progress(0, volumes.reduce((s, v) => s + v.size, 0), { phase: 'copy' });
    const out: BackupVolumeRow[] = [];
    let done = 0;
    const totalBytes = volumes.reduce((s, v) => s + v.size, 0);
    try {
      for (let k = 0; k < volumes.length; k++) {
        const v = volumes[k]!;
        const snap = m.volume(snaps[k]!.snapshot);
        const t = since.get(v.id)!;
        const parentPart = parent ? this.partOf(parent.id, v.id) : undefined;
        // Incremental only when the map counts from the parent and the parent has this volume at this size.
        const changed = parent && t.base === parent.id && parentPart && parentPart.size === v.size ? t.map : null;
        const file = path.join(dir, `${v.name}.img`);
        const r = await this.copyOut(ctx, m.volumeHandle(snap), v.size, file, changed, (d) => ctx.progress(done + d, totalBytes));
        done += v.size;
        out.push({ backup_id: b.id, volume_id: v.id, volume: v.name, size: v.size, full: changed ? 0 : 1, allocated: r.allocated, stored: r.stored, checksum: r.checksum, file });
      }
      await syncDir(dir);
      await syncDir(b.store);
    } finally {
      for (const h of held) await c.jobs.wait(h.job.id);
      for (const s of snaps) await this.dropSnapshot(s.snapshot);
    }
    m.fault('backup-commit');
    const kind = out.some((p) => !p.full) ? 'incr' : 'full';
    c.db.transaction(() => {
      const ins = c.db.prepare('INSERT INTO backup_volumes (backup_id, volume_id, volume, size, full, allocated, stored, checksum, file) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)');
      for (const p of out) ins.run(p.backup_id, p.volume_id, p.volume, p.size, p.full, p.allocated, p.stored, p.checksum, p.file);
      c.db.prepare("UPDATE backups SET state = 'complete', kind = ?, parent_id = ?, finished_at = ? WHERE id = ?").run(kind, kind === 'incr' ? parent!.id : null, new Date().toISOString(), b.id);
      c.events.emit('backup.complete', `vm/${b.vm}`, { backup: b.name, id: b.id, vm: b.vm, kind, pauseMs });
    })();
    this.stats.outcome('backup', 'succeeded');
    const pruned = await this.applyRetention(b.vm);
    return {
      backup: b.name,
      id: b.id,
      kind,
      pauseMs,
      volumes: out.map((p) => ({ volume: p.volume, full: p.full === 1, size: p.size, allocated: p.allocated, stored: p.stored, checksum: p.checksum })),
      stored: out.reduce((s, p) => s + p.stored, 0),
      pruned,
    };
  }

  /**
   * Copies a snapshot into a sparse file: every data run (full) or only the
   * changed chunks (incremental, with a .chunks bitmap beside it), while the
   * SHA-256 of all the volume's bytes is taken in order.
   */
  private async copyOut(
    ctx: JobContext<BackupParams>,
    h: ReturnType<OperationContext['lifecycle']['volumeHandle']>,
    size: number,
    file: string,
    changed: ChangeMap | null,
    progress: (done: number) => void,
  ): Promise<{ allocated: number; stored: number; checksum: string }> {
    const store = this.c.dataPath.store;
    const hash = crypto.createHash('sha256');
    const f = await fs.promises.open(file, 'wx', 0o600);
    const buf = Buffer.allocUnsafe(STEP);
    let allocated = 0;
    let stored = 0;
    // Kept to the bulk rate (bytes read) like any bulk job: hosts' I/O to the arrays comes first.
    const rate = this.c.dataPath.engine.rate;
    const started = Date.now();
    try {
      await f.truncate(size);
      for (let pos = 0; pos < size; pos += STEP) {
        if (ctx.signal.aborted) throw new BlockgateError('CONFLICT', 'operation cancelled', { cancelled: true });
        const len = Math.min(STEP, size - pos);
        const runs = store.allocationRuns(h, pos, len, Number.MAX_SAFE_INTEGER);
        const data = runs.filter((r) => r.state === 'data');
        if (data.length === 0) {
          hash.update(ZEROES.subarray(0, len));
        } else {
          const ahead = rate ? started + (allocated / rate) * 1000 - Date.now() : 0;
          if (ahead > 0) await sleep(ahead, undefined, { signal: ctx.signal }).catch(() => undefined);
          const piece = buf.subarray(0, len);
          await store.read(h, pos, len, piece);
          hash.update(piece);
          for (const r of data) allocated += r.length;
          if (!changed) {
            for (const r of data) {
              await f.write(piece, r.offset - pos, r.length, r.offset);
              stored += r.length;
            }
          } else {
            for (let c0 = pos; c0 < pos + len; c0 += CHANGE_CHUNK) {
              const i = c0 / CHANGE_CHUNK;
              if (!changed.has(i)) continue;
              const cl = Math.min(CHANGE_CHUNK, size - c0);
              await f.write(piece, c0 - pos, cl, c0);
              stored += cl;
            }
          }
        }
        progress(pos + len);
      }
      await f.sync();
    } finally {
      await f.close();
    }
    // A changed chunk that now reads as zeroes is still listed: restore writes it as zeroes over the parent's bytes.
    if (changed) await writeSynced(`${file}.chunks`, Buffer.from(changed.bits));
    return { allocated, stored, checksum: hash.digest('hex') };
  }

  private async dropSnapshot(name: string): Promise<void> {
    const m = this.c.lifecycle;
    const v = m.listVolumes().find((x) => x.name === name && x.state !== 'free');
    if (v) {
      // Hosts are still writing the origin: the link goes first, safely, then the space.
      await this.snapshots.retire(v.id);
      if (v.state === 'configured') m.breakVolume(v.name);
      // The snapshot's own extents held copied-up bytes; new owners of that space read zeroes (allocation resets it).
      m.setDirty(v.id, false);
      m.deallocate(v.name);
    }
    if (m.listVolumes().some((x) => x.name === name && x.state === 'free')) {
      const row = this.c.db.prepare('SELECT id FROM volumes WHERE name = ?').get(name) as { id: number };
      this.c.db.transaction(() => {
        this.c.db.prepare('DELETE FROM job_volumes WHERE volume_id = ?').run(row.id);
        this.c.db.prepare('UPDATE volumes SET snapshot_of = NULL WHERE snapshot_of = ?').run(row.id);
        this.c.db.prepare('DELETE FROM volumes WHERE id = ?').run(row.id);
      })();
    }
  }

  /** A failed or interrupted backup: snapshots dropped, files removed, the changes it took given back to the maps. */
  private async failBackup(p: BackupParams, e: Error): Promise<void> {
    const { c } = this;
    const b = c.db.prepare('SELECT * FROM backups WHERE id = ?').get(p.backupId) as BackupRow | undefined;
    for (const v of c.lifecycle.listVolumes()) if (v.name.startsWith(`bk${p.backupId}-`)) await this.dropSnapshot(v.name);
    // The maps swapped at the snapshot count from this backup, which will not exist: the next one is full.
    for (const id of p.volumeIds) {
      const t = this.trackers.get(id);
      if (t && t.base === p.backupId) t.base = null;
    }
    this.stats.outcome('backup', 'failed');
    if (b) {
      await fs.promises.rm(path.join(b.store, b.name), { recursive: true, force: true });
      c.db.prepare("UPDATE backups SET state = 'failed', error = ?, finished_at = ? WHERE id = ?").run(e.message, new Date().toISOString(), b.id);
      c.events.emit('backup.failed', `vm/${b.vm}`, { backup: b.name, id: b.id, vm: b.vm, error: e.message });
    }
  }

  // ---- catalog -------------------------------------------------------------

  private row(id: number): BackupRow {
    const b = this.c.db.prepare('SELECT * FROM backups WHERE id = ?').get(id) as BackupRow | undefined;
    if (!b) throw notFound('backup', id);
    return b;
  }

  private partOf(backupId: number, volumeId: number): BackupVolumeRow | undefined {
    return this.c.db.prepare('SELECT * FROM backup_volumes WHERE backup_id = ? AND volume_id = ?').get(backupId, volumeId) as BackupVolumeRow | undefined;
  }

  private parts(backupId: number): BackupVolumeRow[] {
    return this.c.db.prepare('SELECT * FROM backup_volumes WHERE backup_id = ? ORDER BY volume').all(backupId) as BackupVolumeRow[];
  }

  describe(b: BackupRow): BackupView {
    return {
      id: b.id,
      name: b.name,
      vm: b.vm,
      host: b.host,
      farm: b.farm,
      label: b.label,
      kind: b.kind,
      parent: b.parent_id,
      state: b.state,
      pauseMs: b.pause_ms,
      error: b.error,
      createdAt: b.created_at,
      finishedAt: b.finished_at,
      volumes: this.parts(b.id).map((p) => ({ volume: p.volume, size: p.size, full: p.full === 1, allocated: p.allocated, stored: p.stored, checksum: p.checksum, file: p.file })),
    };
  }

  show(id: number): BackupView {
    return this.describe(this.row(id));
  }

  list(f: { vm?: string | undefined; label?: string | undefined; since?: string | undefined; state?: string | undefined; volume?: string | undefined } = {}): BackupView[] {
    const rows = this.c.db
      .prepare(
        `SELECT * FROM backups b WHERE (? IS NULL OR vm = ?) AND (? IS NULL OR label = ?) AND (? IS NULL OR created_at >= ?) AND (? IS NULL OR state = ?)
           AND (? IS NULL OR EXISTS (SELECT 1 FROM backup_volumes p WHERE p.backup_id = b.id AND p.volume = ?)) ORDER BY id`,
      )
      .all(f.vm ?? null, f.vm ?? null, f.label ?? null, f.label ?? null, f.since ?? null, f.since ?? null, f.state ?? null, f.state ?? null, f.volume ?? null, f.volume ?? null) as BackupRow[];
    return rows.map((b) => this.describe(b));
  }

  /** Deletes a backup and its files; refused while a later incremental counts from it. */
  async delete(id: number): Promise<void> {
    const b = this.row(id);
    if (b.state === 'running') throw conflict(`backup '${b.name}' is still being taken`);
    const kids = this.c.db.prepare('SELECT name FROM backups WHERE parent_id = ?').all(id) as { name: string }[];
    if (kids.length) throw conflict(`backup '${b.name}' is the parent of incremental backup(s) ${kids.map((k) => `'${k.name}'`).join(', ')}; delete them first`, { children: kids.map((k) => k.name) });
    await this.remove(b);
  }

  private async remove(b: BackupRow): Promise<void> {
    const { c } = this;
    // The row goes first: a crash between leaves stray files in the store, never a catalog entry without its files.
    c.db.transaction(() => {
      c.db.prepare('DELETE FROM backups WHERE id = ?').run(b.id);
      c.events.emit('backup.deleted', `vm/${b.vm}`, { backup: b.name, id: b.id, vm: b.vm });
    })();
    await fs.promises.rm(path.join(b.store, b.name), { recursive: true, force: true });
    // Maps counting from a backup that is gone cannot make an incremental any more.
    for (const t of this.trackers.values()) if (t.base === b.id) t.base = null;
  }

  /**
   * Retention of one VM (its policy, else its farm's): the newest `keepLast`
   * complete backups, the newest of each UTC day for `keepDailyDays` days, and
   * every backup a kept incremental counts from; the rest are deleted.
   */
  async applyRetention(vm: string): Promise<string[]> {
    const { c } = this;
    const own = c.db.prepare("SELECT * FROM backup_policies WHERE scope = 'vm' AND name = ?").get(vm) as { keep_last: number | null; keep_daily_days: number | null } | undefined;
    const farm = (c.db.prepare('SELECT farm FROM backups WHERE vm = ? ORDER BY id DESC LIMIT 1').get(vm) as { farm: string | null } | undefined)?.farm;
    const fp = farm ? (c.db.prepare("SELECT * FROM backup_policies WHERE scope = 'farm' AND name = ?").get(farm) as typeof own) : undefined;
    const keepLast = own?.keep_last ?? fp?.keep_last ?? null;
    const keepDays = own?.keep_daily_days ?? fp?.keep_daily_days ?? null;
    if (keepLast === null && keepDays === null) return [];
    const rows = c.db.prepare("SELECT * FROM backups WHERE vm = ? AND state = 'complete' ORDER BY id DESC").all(vm) as BackupRow[];
    const keep = new Set<number>();
    if (keepLast !== null) for (const r of rows.slice(0, keepLast)) keep.add(r.id);
    if (keepDays !== null) {
      const cutoff = Date.now() - keepDays * 86_400_000;
      const days = new Set<string>();
      for (const r of rows) {
        const day = r.created_at.slice(0, 10);
        if (Date.parse(r.created_at) >= cutoff && !days.has(day)) {
          days.add(day);
          keep.add(r.id);
        }
      }
    }
    const byId = new Map(rows.map((r) => [r.id, r]));
    for (const id of [...keep]) for (let p = byId.get(id)?.parent_id ?? null; p !== null; p = byId.get(p)?.parent_id ?? null) keep.add(p);
    const pruned: string[] = [];
    // Newest first: an incremental goes before the backup it counts from.
    for (const r of rows) {
      if (keep.has(r.id)) continue;
      await this.remove(r);
      pruned.push(r.name);
    }
    return pruned;
  }

  // ---- restore -------------------------------------------------------------

  /** Every volume part of `b` from the newest back to its full: what a restore of that volume reads. */
  private chain(b: BackupRow, volumeId: number): BackupVolumeRow[] {
    const out: BackupVolumeRow[] = [];
    for (let cur: BackupRow | undefined = b; cur; ) {
      const p = this.partOf(cur.id, volumeId);
      if (!p) throw conflict(`backup '${cur.name}' has no part for volume ${volumeId}: the chain is broken`);
      out.push(p);
      if (p.full) return out;
      cur = cur.parent_id === null ? undefined : (this.c.db.prepare('SELECT * FROM backups WHERE id = ?').get(cur.parent_id) as BackupRow | undefined);
    }
    throw conflict(`backup '${b.name}': the full backup its incremental chain starts from is gone`);
  }

  /**
   * Restores a backup's volumes (all, or those named): into new volumes
   * bound and mapped on `host`, or in place (the volumes' units are unmapped
   * while their bytes are rewritten, then mapped again).
   */
  restore(id: number, opts: { volumes?: string[] | undefined; inPlace?: boolean | undefined; host?: string | undefined; target?: number | undefined; suffix?: string | undefined }): JobView {
    const { c } = this;
    const m = c.lifecycle;
    const b = this.row(id);
    if (b.state !== 'complete') throw conflict(`backup '${b.name}' is ${b.state}; only a complete backup can be restored`);
    const parts = this.parts(b.id);
    const names = opts.volumes ?? parts.map((p) => p.volume);
    for (const n of names) if (!parts.some((p) => p.volume === n)) throw notFound(`volume in backup '${b.name}'`, n);
    const inPlace = opts.inPlace ?? false;
    const suffix = opts.suffix ?? `-r${b.id}`;
    if (inPlace) {
      if (opts.host !== undefined) throw badRequest('an in-place restore keeps the volumes where they are bound: leave host out');
      for (const n of names) {
        const v = m.volume(n);
        if (v.size !== parts.find((p) => p.volume === n)!.size) throw conflict(`volume '${n}' is not the size it was when backed up`);
      }
    } else {
      if (!opts.host) throw badRequest('name the host the restored volumes are bound to (host), or restore in place (inPlace: true)');
      m.host(opts.host);
      for (const n of names) if (m.listVolumes().some((v) => v.name === `${n}${suffix}` && v.state !== 'free')) throw conflict(`volume '${n}${suffix}' already exists`);
    }
    this.chainsOf(b, names);
    const volumeIds = inPlace ? names.map((n) => m.volume(n).id) : [];
    const params: RestoreParams = { backupId: b.id, volumes: names, inPlace, host: opts.host ?? null, target: opts.target ?? 0, suffix };
    return c.jobs.describe(c.jobs.submit('restore', params, volumeIds));
  }

  private chainsOf(b: BackupRow, names: string[]): Map<string, BackupVolumeRow[]> {
    const parts = this.parts(b.id);
    return new Map(names.map((n) => [n, this.chain(b, parts.find((p) => p.volume === n)!.volume_id)]));
  }

  private async runRestore(ctx: JobContext<RestoreParams>): Promise<unknown> {
    const { c } = this;
    const m = c.lifecycle;
    const b = this.row(ctx.params.backupId);
    const chains = this.chainsOf(b, ctx.params.volumes);
    const total = [...chains.values()].reduce((s, ch) => s + ch[0]!.size * 2, 0);
    let done = 0;
    // First every chain is read and checked against the catalog: nothing is created, unmapped or written before all match.
    const readers = new Map<string, ChainReader>();
    try {
      for (const [n, ch] of chains) {
        const r = await ChainReader.open(ch);
        readers.set(n, r);
        const hash = crypto.createHash('sha256');
        await r.each(ctx.signal, (_pos, piece) => {
          hash.update(piece);
          done += piece.length;
          ctx.progress(done, total);
        });
        const got = hash.digest('hex');
        if (got !== ch[0]!.checksum) {
          throw new BlockgateError('IO_ERROR', `backup '${b.name}' volume '${n}' does not match its catalog checksum (catalog ${ch[0]!.checksum.slice(0, 16)}…, files give ${got.slice(0, 16)}…): the backup is corrupt; nothing was restored`, {
            backup: b.name,
            volume: n,
          });
        }
      }
      const out: { volume: string; restoredAs: string; binding: number | null }[] = [];
      for (const [n, ch] of chains) {
        const r = readers.get(n)!;
        let dest: VolumeRow;
        let remap: number[] = [];
        if (ctx.params.inPlace) {
          dest = m.volume(n);
          remap = m.bindingsOfVolume(dest.id).filter((x) => x.mapped).map((x) => x.id);
          for (const id of remap) await m.unmap(id);
        } else {
          const farm = b.farm ?? undefined;
          dest = m.createVolume({ name: `${n}${ctx.params.suffix}`, size: ch[0]!.size, farm, configure: true });
        }
        const h = m.volumeHandle(dest);
        const store = c.dataPath.store;
        m.setDirty(dest.id, true);
        await r.each(ctx.signal, async (pos, piece, zero) => {
          if (zero) await store.writeZeroes(h, pos, piece.length, { noHole: false, fast: false, fua: false });
          else await store.write(h, pos, piece, false);
          done += piece.length;
          ctx.progress(done, total);
        });
        await store.flush(h);
        // Its map never saw these bytes: the next backup of the volume is full.
        this.forget(dest.id);
        let binding: number | null = null;
        if (ctx.params.inPlace) {
          for (const id of remap) m.map(id);
        } else {
          const host = m.host(ctx.params.host!);
          const used = new Set(m.bindingsOfHost(host.id).filter((x) => x.target === ctx.params.target).map((x) => x.lun));
          let lun = 0;
          while (used.has(lun)) lun++;
          binding = m.bind({ volume: dest.name, host: host.name, target: ctx.params.target, lun, map: true }).id;
        }
        out.push({ volume: n, restoredAs: dest.name, binding });
        c.events.emit('backup.restored', `volume/${dest.name}`, { backup: b.name, volume: n, restoredAs: dest.name, inPlace: ctx.params.inPlace });
      }
      return { backup: b.name, inPlace: ctx.params.inPlace, volumes: out };
    } finally {
      for (const r of readers.values()) await r.close();
    }
  }
}

/**
 * Reads one volume as of a backup from its chain of files: each chunk from
 * the newest part that holds it (an incremental's .chunks bitmap), else from
 * the full, where a region never written reads as zeroes.
 */
class ChainReader {
  private constructor(
    private readonly files: fs.promises.FileHandle[],
    private readonly maps: (ChangeMap | null)[],
    private readonly size: number,
  ) {}

  static async open(chain: BackupVolumeRow[]): Promise<ChainReader> {
    const files: fs.promises.FileHandle[] = [];
    const maps: (ChangeMap | null)[] = [];
    try {
      for (const p of chain) {
        const f = await fs.promises.open(p.file, 'r').catch((e: NodeJS.ErrnoException) => {
          throw new BlockgateError('IO_ERROR', `backup file ${p.file} cannot be opened (${e.code ?? e.message}); nothing was restored`);
        });
        files.push(f);
        if (p.full) maps.push(null);
        else {
          const bits = await fs.promises.readFile(`${p.file}.chunks`).catch(() => {
            throw new BlockgateError('IO_ERROR', `backup file ${p.file}.chunks is missing; nothing was restored`);
          });
          maps.push(new ChangeMap(CHANGE_CHUNK, p.size, new Uint8Array(bits)));
        }
      }
    } catch (e) {
      for (const f of files) await f.close();
      throw e;
    }
    return new ChainReader(files, maps, chain[0]!.size);
  }

  /** The volume's bytes in order, STEP at a time; `zero` when the whole piece is known to read as zeroes without reading it. */
  async each(signal: AbortSignal, fn: (pos: number, piece: Buffer, zero: boolean) => void | Promise<void>): Promise<void> {
    const buf = Buffer.allocUnsafe(STEP);
    for (let pos = 0; pos < this.size; pos += STEP) {
      if (signal.aborted) throw new BlockgateError('CONFLICT', 'operation cancelled', { cancelled: true });
      const len = Math.min(STEP, this.size - pos);
      const piece = buf.subarray(0, len);
      for (let c0 = pos; c0 < pos + len; c0 += CHANGE_CHUNK) {
        const i = c0 / CHANGE_CHUNK;
        const cl = Math.min(CHANGE_CHUNK, this.size - c0);
        let k = 0;
        while (this.maps[k] && !this.maps[k]!.has(i)) k++;
        const { bytesRead } = await this.files[k]!.read(piece, c0 - pos, cl, c0);
        if (bytesRead < cl) piece.fill(0, c0 - pos + bytesRead, c0 - pos + cl);
      }
      await fn(pos, piece, piece.equals(ZEROES.subarray(0, len)));
    }
  }

  async close(): Promise<void> {
    for (const f of this.files) await f.close().catch(() => undefined);
  }
}

function header(clean: boolean, base: number, chunk: number, size: number): Buffer {
  const h = Buffer.alloc(CBT_HEADER);
  h.write(CBT_MAGIC, 0, 'latin1');
  h[8] = clean ? 1 : 0;
  h.writeUInt32LE(base, 12);
  h.writeUInt32LE(chunk, 16);
  h.writeBigUInt64LE(BigInt(size), 20);
  return h;
}

/** Writes a file whole and durably (temporary name, sync, rename, sync the directory). */
async function writeSynced(file: string, data: Buffer): Promise<void> {
  const tmp = `${file}.tmp`;
  const f = await fs.promises.open(tmp, 'w', 0o600);
  try {
    await f.writeFile(data);
    await f.sync();
  } finally {
    await f.close();
  }
  await fs.promises.rename(tmp, file);
  await syncDir(path.dirname(file));
}
