import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { OwnershipMap, SnapshotLink } from '../../cache/index.js';
import { BlockgateError, badRequest, conflict } from '../../common/errors.js';
import { EXTENT_ALIGN } from '../../mapper/index.js';
import type { JobContext, JobRow } from '../jobs.js';
import type { JobView } from '../views.js';
import type { VolumeRow } from '../model.js';
import type { Operation } from '../state.js';
import type { OperationContext } from './context.js';
import { holdGroup, type HeldResult } from './consistency.js';

/** Copy-on-write granularity: one ownership byte per region. */
export const COW_REGION = EXTENT_ALIGN;

interface LinkRow {
  snapshot_id: number;
  origin_id: number;
  region: number;
}

type SnapParams = { source: string; sourceId: number; snapshot: string; snapshotId: number };
type MaterialiseParams = { snapshot: string; snapshotId: number };

/** Operations that would change or free an origin's bytes below the copy-on-write hook. */
const ORIGIN_GUARDED: ReadonlySet<Operation> = new Set(['scrub', 'copy', 'copy-image', 'break', 'deallocate', 'resize']);
/** Operations that would write a linked snapshot's own extents below its hook, or change its size. */
const SNAPSHOT_GUARDED: ReadonlySet<Operation> = new Set(['scrub', 'copy', 'copy-image', 'resize']);

/**
 * Snap (T11) by copy-on-write: creating a snapshot costs a quiesce, a flush
 * and one small file; regions are copied only when something is about to
 * change them (cache/cow.ts). Links persist in `cow_links` and the ownership
 * maps in DATA/snapshots/<snapshot id>.cow.
 */
export class SnapshotOperations {
  private readonly dir: string;

  constructor(private readonly c: OperationContext) {
    this.dir = path.join(c.dataDir, 'snapshots');
    const m = c.lifecycle;
    c.jobs.register<SnapParams>('snap', {
      // The snapshot is complete when its link row commits: nothing is left to do after a restart.
      onRestart: 'fail',
      run: async (ctx) => ({ snapshot: ctx.params.snapshot, copied: 0, shared: m.volumeById(ctx.params.snapshotId).size }),
    });
    c.jobs.register<MaterialiseParams>('materialise', {
      // Each region's copy is recorded in the persisted map: a restart carries on where it stopped.
      onRestart: 'resume',
      run: (ctx) => m.asJob(ctx.id, () => this.runMaterialise(ctx)),
    });
  }

  private mapPath(snapshotId: number): string {
    return cowMapPath(this.c.dataDir, snapshotId);
  }

  /** Re-links every snapshot at start-up, before hosts can write (start-up path). */
  async load(): Promise<void> {
    const { c } = this;
    await fs.promises.mkdir(this.dir, { recursive: true });
    const rows = c.db.prepare('SELECT snapshot_id, origin_id, region FROM cow_links ORDER BY snapshot_id').all() as LinkRow[];
    const live = new Set(rows.map((r) => `${r.snapshot_id}.cow`));
    // A snapshot whose creation did not commit, or that was unlinked just before a crash.
    for (const f of await fs.promises.readdir(this.dir)) if (f.endsWith('.cow') && !live.has(f)) await fs.promises.rm(path.join(this.dir, f), { force: true });
    for (const r of rows) {
      const snap = c.lifecycle.volumeById(r.snapshot_id);
      try {
        const map = await OwnershipMap.open(this.mapPath(r.snapshot_id), r.region, Math.ceil(snap.size / r.region));
        this.install(snap, c.lifecycle.volumeById(r.origin_id), map);
      } catch (e) {
        c.log.error({ op: 'snapshot.load', volume: snap.name, err: (e as Error).message }, 'snapshot cannot be linked to its origin');
        c.events.emit('volume.snapshot-failed', `volume/${snap.name}`, { volume: snap.name, error: (e as Error).message });
      }
    }
  }

  private install(snap: VolumeRow, origin: VolumeRow, map: OwnershipMap): void {
    const { lifecycle: m, dataPath } = this.c;
    const store = dataPath.store;
    store.linkSnapshot(new SnapshotLink(m.volumeHandle(snap), m.volumeHandle(origin), map, store.cowIo));
  }

  /** Refuses an operation that would change an origin's bytes (or a linked snapshot's) below the hook. */
  guard(v: VolumeRow, op: Operation): void {
    const store = this.c.dataPath.store;
    if (ORIGIN_GUARDED.has(op)) {
      const deps = store.dependentSnapshots(v.id).map((l) => this.c.lifecycle.volumeById(l.snapshot.id).name);
      if (deps.length > 0) {
        throw new BlockgateError(
          'CONFLICT',
          `cannot ${op} volume '${v.name}': copy-on-write snapshot(s) ${deps.map((d) => `'${d}'`).join(', ')} still read its unchanged regions; materialise them (POST /v1/volumes/<snapshot>/materialise) or take them apart first`,
          { volume: v.name, operation: op, snapshots: deps },
        );
      }
    }
    if (SNAPSHOT_GUARDED.has(op) && store.snapshotLink(v.id)) {
      throw new BlockgateError('CONFLICT', `cannot ${op} volume '${v.name}' while it is a copy-on-write snapshot; materialise it first, or break it`, {
        volume: v.name,
        operation: op,
      });
    }
  }

  /** Bytes a snapshot still reads from its origin, or null when it reads only its own extents. */
  cowView(volumeId: number, nameOf: (id: number) => string): { origin: string; sharedBytes: number } | null {
    const l = this.c.dataPath.store.snapshotLink(volumeId);
    if (!l) return null;
    let shared = 0;
    for (let i = 0; i < l.regions; i++) if (!l.isOwn(i)) shared += Math.min(l.regionSize, l.snapshot.layout.size - i * l.regionSize);
    return { origin: nameOf(l.origin.id), sharedBytes: shared };
  }

  /**
   * A snapshot being taken apart (break, materialised) stops reading its origin: the link row
   * goes at once, the map file once copies already running have landed.
   */
  detach(snapshotId: number): void {
    const { c } = this;
    void this.retire(snapshotId).catch((e: unknown) =>
      c.log.warn({ op: 'snapshot.detach', err: (e as Error).message }, 'snapshot map file left behind (removed at next start)'),
    );
  }

  /**
   * Takes a snapshot off its origin while hosts keep writing the origin, so its space can be
   * freed (a backup's snapshots): resolves once no copy-up can touch the snapshot again.
   */
  async retire(snapshotId: number): Promise<void> {
    const { c } = this;
    const link = c.dataPath.store.snapshotLink(snapshotId);
    c.db.prepare('DELETE FROM cow_links WHERE snapshot_id = ?').run(snapshotId);
    if (!link) return;
    c.dataPath.store.unlinkSnapshot(snapshotId);
    await link.retire();
    await fs.promises.rm(link.map.path, { force: true });
  }

  /** One snapshot of a mapped volume; the job it answers with has nothing left to do. */
  async snap(sourceName: string, snapshotName: string): Promise<{ job: JobView; snapshot: VolumeRow }> {
    const [r] = await this.snapGroup([{ volume: sourceName, snapshot: snapshotName }]);
    return r!;
  }

  /**
   * Snapshots of several volumes at one instant (a consistency group): every
   * source is held (new I/O waits, in-flight I/O drains), flushed, linked to
   * its snapshot, then all are released together. A write acknowledged
   * before the call is in every snapshot; none issued after it is in any.
   */
  async snapGroup(items: { volume: string; snapshot: string }[], opts: { duringHold?: () => void } = {}): Promise<{ job: JobView; snapshot: VolumeRow; pauseMs: number }[]> {
    const { c } = this;
    const m = c.lifecycle;
    const store = c.dataPath.store;
    if (items.length === 0) throw badRequest('name at least one volume to snapshot');
    const sources = items.map((it) => m.volume(it.volume));
    if (new Set(sources.map((s) => s.id)).size !== sources.length) throw badRequest('each volume appears once in a snapshot group');
    if (new Set(items.map((i) => i.snapshot)).size !== items.length) throw badRequest('snapshot names must be distinct');
    for (const s of sources) m.check(s, 'snap');
    for (const it of items) if (m.listVolumes().some((v) => v.name === it.snapshot && v.state !== 'free')) throw conflict(`volume '${it.snapshot}' already exists`);
    await fs.promises.mkdir(this.dir, { recursive: true });
    // Space and maps first, outside the hold: the pause covers only the flush and the link.
    const made: { src: VolumeRow; snap: VolumeRow; map: OwnershipMap }[] = [];
    try {
      for (let k = 0; k < items.length; k++) {
        const src = sources[k]!;
        const farm = src.farm_id === null ? undefined : ((c.db.prepare('SELECT name FROM farms WHERE id = ?').get(src.farm_id) as { name: string }).name);
        const snap = m.createVolume({ name: items[k]!.snapshot, size: src.size, farm, qualityClass: src.quality_class ?? undefined, configure: true });
        c.db.prepare('UPDATE volumes SET snapshot_of = ?, dirty = 1, image_id = ? WHERE id = ?').run(src.id, src.image_id, snap.id);
        const map = await OwnershipMap.create(this.mapPath(snap.id), COW_REGION, Math.ceil(src.size / COW_REGION));
        made.push({ src, snap: m.volumeById(snap.id), map });
      }
      await syncDir(this.dir);
    } catch (e) {
      for (const x of made) await this.undo(x.snap, x.map);
      throw e;
    }
    let held: HeldResult<JobRow[]>;
    try {
      held = await holdGroup(store, made.map((x) => m.volumeHandle(x.src)), () => {
        // The link rows commit before any held write goes on: from here the snapshots exist, crash or not.
        const jobs = c.db.transaction(() =>
          made.map((x) => {
            c.db.prepare('INSERT INTO cow_links (snapshot_id, origin_id, region, created_at) VALUES (?, ?, ?, ?)').run(x.snap.id, x.src.id, COW_REGION, new Date().toISOString());
            m.apply(m.volumeById(x.src.id), 'snap', { snapshot: x.snap.name });
            return c.jobs.submit('snap', { source: x.src.name, sourceId: x.src.id, snapshot: x.snap.name, snapshotId: x.snap.id }, [x.snap.id]);
          }),
        )();
        for (const x of made) this.install(x.snap, m.volumeById(x.src.id), x.map);
        // Still held: what the caller starts here (a backup's change maps) begins exactly at the snapshot.
        opts.duringHold?.();
        return jobs;
      });
    } catch (e) {
      for (const x of made) {
        c.dataPath.store.unlinkSnapshot(x.snap.id);
        c.db.prepare('DELETE FROM cow_links WHERE snapshot_id = ?').run(x.snap.id);
        await this.undo(x.snap, x.map);
      }
      throw e;
    }
    const out = made.map((x, k) => {
      c.events.emit('volume.snapshot', `volume/${x.src.name}`, { source: x.src.name, snapshot: x.snap.name, copyOnWrite: true, group: made.length > 1 ? made.map((y) => y.snap.name) : undefined });
      return { job: c.jobs.describe(held.value[k]!), snapshot: m.volumeById(x.snap.id), pauseMs: held.pauseMs };
    });
    return out;
  }

  /** Takes back a snapshot that never came to exist: nothing was written to its space. */
  private async undo(snap: VolumeRow, map: OwnershipMap): Promise<void> {
    const m = this.c.lifecycle;
    await map.close().catch(() => undefined);
    await fs.promises.rm(map.path, { force: true });
    const v = m.volumeById(snap.id);
    if (v.state === 'configured') m.breakVolume(v.name);
    m.setDirty(v.id, false);
    m.deallocate(v.name);
  }

  /** Copies every region the snapshot still shares, then drops the link: the origin is free again. */
  materialise(name: string): JobView {
    const { c } = this;
    const v = c.lifecycle.volume(name);
    if (!c.dataPath.store.snapshotLink(v.id)) throw conflict(`volume '${v.name}' is not a copy-on-write snapshot (nothing to materialise)`);
    const busy = c.jobs.activeOn(v.id);
    if (busy) throw new BlockgateError('ILLEGAL_STATE', `volume '${v.name}' is busy with job ${busy.id} (${busy.kind})`, { state: v.state, operation: 'materialise', job: busy.id, allowed: [] });
    return c.jobs.describe(c.jobs.submit('materialise', { snapshot: v.name, snapshotId: v.id }, [v.id]));
  }

  private async runMaterialise(ctx: JobContext<MaterialiseParams>): Promise<unknown> {
    const { c } = this;
    const link = c.dataPath.store.snapshotLink(ctx.params.snapshotId);
    if (!link) return { snapshot: ctx.params.snapshot, copied: 0 };
    const size = link.snapshot.layout.size;
    const shared: number[] = [];
    for (let i = 0; i < link.regions; i++) if (!link.isOwn(i)) shared.push(i);
    const bytesOf = (i: number): number => Math.min(link.regionSize, size - i * link.regionSize);
    const work = shared.reduce((s, i) => s + bytesOf(i), 0);
    const rate = c.dataPath.engine.rate;
    const started = Date.now();
    let done = 0;
    for (const i of shared) {
      if (ctx.signal.aborted) throw new BlockgateError('CONFLICT', 'operation cancelled', { cancelled: true });
      // Kept to the bulk rate like any bulk job; hosts' writes copy up on their own and never wait for this.
      const ahead = rate ? started + (done / rate) * 1000 - Date.now() : 0;
      if (ahead > 0) await sleep(ahead, undefined, { signal: ctx.signal }).catch(() => undefined);
      if (ctx.signal.aborted) throw new BlockgateError('CONFLICT', 'operation cancelled', { cancelled: true });
      await link.own(i);
      done += bytesOf(i);
      ctx.progress(done, work);
    }
    this.detach(ctx.params.snapshotId);
    c.events.emit('volume.materialised', `volume/${ctx.params.snapshot}`, { volume: ctx.params.snapshot, copied: done });
    return { snapshot: ctx.params.snapshot, copied: done };
  }
}

/** Where a snapshot's ownership map lives: DATA/snapshots/<snapshot id>.cow. */
export function cowMapPath(dataDir: string, snapshotId: number): string {
  return path.join(dataDir, 'snapshots', `${snapshotId}.cow`);
}

export async function syncDir(dir: string): Promise<void> {
  const h = await fs.promises.open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}
