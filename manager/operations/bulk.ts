import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockgateError, badRequest, conflict, notFound } from '../../common/errors.js';
import { ArrayFile, BULK_CHUNK, type ArrayRange } from '../../disks/index.js';
import { EXTENT_ALIGN } from '../../mapper/index.js';
import type { JobContext, JobRow } from '../jobs.js';
import type { JobView } from '../views.js';
import type { AccessMode, VolumeRow } from '../model.js';
import type { Lifecycle, OperationContext } from './context.js';
import { resolveImagePath } from './image-paths.js';

/** Images are attached to the store as read-only sources under ids no array uses. */
const IMAGE_ARRAY_BASE = 1_000_000_000;
/** Copy-on-write granularity of a snapshot: one bit per region. */
const COW_REGION = EXTENT_ALIGN;

export interface ImageRow {
  id: number;
  name: string;
  path: string;
  size: number;
  created_at: string;
}

/** A volume's bytes as array ranges, from the data path's own translate. */
export function rangesOf(m: Lifecycle, volumeId: number, length?: number): ArrayRange[] {
  const layout = m.layoutOf(volumeId);
  return layout.translate(0, length ?? layout.size).map((s) => ({ arrayId: s.arrayId, offset: s.arrayOffset, length: s.length }));
}

/** The ranges from stream offset `from` to the end. */
function sliceFrom(ranges: readonly ArrayRange[], from: number): ArrayRange[] {
  const out: ArrayRange[] = [];
  let base = 0;
  for (const r of ranges) {
    const end = base + r.length;
    if (end > from) {
      const skip = Math.max(0, from - base);
      out.push({ arrayId: r.arrayId, offset: r.offset + skip, length: r.length - skip });
    }
    base = end;
  }
  return out;
}

const total = (ranges: readonly ArrayRange[]): number => ranges.reduce((s, r) => s + r.length, 0);

/** SHA-256 of `length` bytes of a repeated byte, to check a scrub without keeping its pattern around. */
function patternDigest(pattern: number, length: number): string {
  const h = crypto.createHash('sha256');
  const chunk = Buffer.alloc(Math.min(BULK_CHUNK, Math.max(length, 1)), pattern);
  for (let done = 0; done < length; done += chunk.length) h.update(chunk.subarray(0, Math.min(chunk.length, length - done)));
  return h.digest('hex');
}

interface CowState {
  snapshotId: number;
  regions: number;
  copied: Uint8Array;
  inflight: Map<number, Promise<void>>;
  copyRegion(i: number): Promise<void>;
}

type ScrubParams = { volume: string; volumeId: number; pattern: number; verify: boolean };
type CopyParams = { source: string; sourceId: number; targets: { name: string; id: number }[]; verify: boolean };
type ImageCopyParams = { volume: string; volumeId: number; image: string; imageId: number; verify: boolean };
type CaptureParams = { image: string; volume: string; volumeId: number; file: string };
type SnapParams = { source: string; sourceId: number; snapshot: string; snapshotId: number };
type ActivateParams = {
  host: string;
  volume: string;
  volumeId: number;
  image: string | null;
  target: number;
  lun: number;
  mode: AccessMode | null;
};

/**
 * The storage manager's long operations (Scrub, Copy, image copy, Snap,
 * Activate), each a persisted job on the engine's bulk entry points. They work
 * below the cache: flush what is read, invalidate what is written.
 */
export class BulkOperations {
  private readonly cow = new Map<number, CowState>();

  private readonly m: Lifecycle;

  constructor(private readonly c: OperationContext) {
    this.m = c.lifecycle;
    const m = this.m;
    const jobs = c.jobs;
    jobs.register<ScrubParams>('scrub', {
      // Scrubbing is idempotent: a restart carries on from the last checkpoint.
      onRestart: 'resume',
      run: (ctx) => m.asJob(ctx.id, () => this.runScrub(ctx)),
    });
    jobs.register<CopyParams>('copy', {
      // Targets stay dirty (so must be scrubbed before reuse): failing is clean.
      onRestart: 'fail',
      run: (ctx) => m.asJob(ctx.id, () => this.runCopy(ctx)),
    });
    jobs.register<ImageCopyParams>('image-copy', {
      onRestart: 'fail',
      run: (ctx) => m.asJob(ctx.id, () => this.runImageCopy(ctx)),
      onFail: (p, _e, id) => m.asJob(id, () => this.failEdge(p.volumeId, 'copy-image-failed')),
    });
    jobs.register<CaptureParams>('image-capture', {
      onRestart: 'fail',
      run: (ctx) => m.asJob(ctx.id, () => this.runCapture(ctx)),
      // The image row is written only on success: a failed capture leaves only a partial file to remove.
      onFail: (p) => fs.promises.rm(p.file, { force: true }),
    });
    jobs.register<SnapParams>('snap', {
      // The copy-on-write bitmap lived in memory: the point in time is lost with it.
      onRestart: 'fail',
      run: (ctx) => m.asJob(ctx.id, () => this.runSnap(ctx)),
      onFail: (p, _e, id) => m.asJob(id, () => {
        if (this.cow.get(p.sourceId)?.snapshotId === p.snapshotId) {
          c.dataPath.store.setWriteHook(p.sourceId, null);
          this.cow.delete(p.sourceId);
        }
        this.failEdge(p.snapshotId, 'copy-image-failed');
      }),
    });
    jobs.register<ActivateParams>('activate', {
      onRestart: 'fail',
      run: (ctx) => m.asJob(ctx.id, () => this.runActivate(ctx)),
      onFail: (p, _e, id) => m.asJob(id, () => this.release(p.volumeId)),
    });
  }

  private failEdge(volumeId: number, op: 'copy-image-failed'): void {
    const v = this.m.volumeById(volumeId);
    if (v.state === 'configured') this.m.apply(v, op, {}, 'unconfigured');
  }

  private job(j: JobRow): JobView {
    return this.c.jobs.describe(j);
  }

  // ---- scrub ---------------------------------------------------------------

  /** Scrub (T14): overwrite with a byte pattern, read back and verify; clears the dirty mark. */
  scrub(name: string, opts: { pattern?: number | undefined; verify?: boolean | undefined } = {}): JobView {
    const v = this.m.volume(name);
    this.m.check(v, 'scrub');
    const pattern = opts.pattern ?? 0;
    if (!Number.isInteger(pattern) || pattern < 0 || pattern > 255) throw badRequest('pattern must be a byte value 0-255');
    return this.job(this.c.jobs.submit('scrub', { volume: v.name, volumeId: v.id, pattern, verify: opts.verify ?? true }, [v.id]));
  }

  private async runScrub(ctx: JobContext<ScrubParams>): Promise<unknown> {
    const { m, c } = this;
    const v = m.volumeById(ctx.params.volumeId);
    const ranges = rangesOf(m, v.id);
    const size = total(ranges);
    const resumed = ctx.resumeFrom as { written?: number } | undefined;
    // Resume at a chunk boundary at or before the checkpoint.
    const start = Math.floor((resumed?.written ?? 0) / BULK_CHUNK) * BULK_CHUNK;
    const work = ctx.params.verify ? 2 * size : size;
    const engine = c.dataPath.engine;
    await engine.scrub(sliceFrom(ranges, start), {
      pattern: ctx.params.pattern,
      verify: false,
      signal: ctx.signal,
      corrupt: m.faultArmed('bulk-corrupt'),
      onProgress: (done) => ctx.progress(start + done, work, { written: start + done }),
    });
    for (const r of ranges) await c.dataPath.store.invalidate(r.arrayId, r.offset, r.length);
    let verified = false;
    if (ctx.params.verify) {
      // Read back through the engine the whole volume, including what an earlier run wrote.
      const got = await engine.checksum(ranges, { signal: ctx.signal, onProgress: (done) => ctx.progress(size + done, work, { written: size }) });
      if (got !== patternDigest(ctx.params.pattern, size)) {
        throw new BlockgateError('IO_ERROR', `scrub of volume '${v.name}' did not verify: the read-back differs from the pattern`);
      }
      verified = true;
    }
    m.setDirty(v.id, false);
    c.events.emit('volume.scrubbed', `volume/${v.name}`, { volume: v.name, pattern: ctx.params.pattern, verified, resumedAt: start || undefined });
    return { bytes: size, pattern: ctx.params.pattern, verified, resumedAt: start };
  }

  // ---- copy ------------------------------------------------------------------

  /** Disk Copy (832): one unbound source onto many unbound targets, each at least as large. */
  copy(sourceName: string, targetNames: string[], opts: { verify?: boolean | undefined } = {}): JobView {
    const { m, c } = this;
    const src = m.volume(sourceName);
    m.check(src, 'copy');
    if (targetNames.length === 0) throw badRequest('name at least one target volume');
    if (new Set(targetNames).size !== targetNames.length || targetNames.includes(sourceName)) throw badRequest('targets must be distinct and differ from the source');
    const targets = targetNames.map((n) => m.volume(n));
    for (const t of targets) {
      m.check(t, 'copy');
      if (t.size < src.size) throw conflict(`target volume '${t.name}' (${t.size} bytes) is smaller than source '${src.name}' (${src.size} bytes)`);
      if (t.farm_id !== null && src.farm_id !== null && t.farm_id !== src.farm_id) {
        throw conflict(`target volume '${t.name}' belongs to another farm than source '${src.name}'`);
      }
    }
    const job = c.db.transaction(() => {
      // Marked before the first byte moves: a copy cut short still left data behind.
      for (const t of targets) m.setDirty(t.id, true);
      return c.jobs.submit(
        'copy',
        { source: src.name, sourceId: src.id, targets: targets.map((t) => ({ name: t.name, id: t.id })), verify: opts.verify ?? true },
        [src.id, ...targets.map((t) => t.id)],
      );
    })();
    return this.job(job);
  }

  private async runCopy(ctx: JobContext<CopyParams>): Promise<unknown> {
    const { m, c } = this;
    const src = m.volumeById(ctx.params.sourceId);
    await c.dataPath.store.flush(m.volumeHandle(src));
    const targets = ctx.params.targets.map((t) => rangesOf(m, t.id));
    const r = await c.dataPath.engine.copy(rangesOf(m, src.id), targets, {
      verify: ctx.params.verify,
      signal: ctx.signal,
      corrupt: m.faultArmed('bulk-corrupt'),
      onProgress: (d, t) => ctx.progress(d, t),
    });
    for (const t of targets) for (const x of t) await c.dataPath.store.invalidate(x.arrayId, x.offset, x.length);
    const set = c.db.prepare('UPDATE volumes SET image_id = ? WHERE id = ?');
    for (const t of ctx.params.targets) set.run(src.image_id, t.id);
    c.events.emit('volume.copied', `volume/${src.name}`, { source: src.name, targets: ctx.params.targets.map((t) => t.name), verified: r.verified });
    return { bytes: r.bytes, verified: r.verified };
  }

  // ---- images ----------------------------------------------------------------

  /** Registers an existing file under DATA/images (or an admin's image root) as an OS image. */
  async registerImage(name: string, file: string): Promise<ImageRow> {
    const { m, c } = this;
    const { path: abs, size } = await resolveImagePath(m, file);
    const st = { size };
    if (c.db.prepare('SELECT 1 FROM images WHERE name = ?').get(name)) throw conflict(`image '${name}' already exists`);
    c.db.transaction(() => {
      c.db.prepare('INSERT INTO images (name, path, size, created_at) VALUES (?, ?, ?, ?)').run(name, abs, st.size, new Date().toISOString());
      c.events.emit('image.registered', `image/${name}`, { image: name, size: st.size });
    })();
    c.log.info({ op: 'image.register', image: name, size: st.size }, 'image registered');
    return this.image(name);
  }

  image(name: string): ImageRow {
    const i = this.c.db.prepare('SELECT * FROM images WHERE name = ?').get(name) as ImageRow | undefined;
    if (!i) throw notFound('image', name);
    return i;
  }

  listImages(): ImageRow[] {
    return this.c.db.prepare('SELECT * FROM images ORDER BY id').all() as ImageRow[];
  }

  /**
   * Unregisters an image no queued or running copy reads. Its file stays
   * where it is (it is the admin's); volumes once copied from it keep their
   * bytes and show no image any more.
   */
  deleteImage(name: string): void {
    const { c } = this;
    const img = this.image(name);
    const jobs = (c.db.prepare("SELECT id, kind, params FROM jobs WHERE state IN ('queued', 'running') AND kind = 'image-copy'").all() as { id: number; params: string }[])
      .filter((j) => (JSON.parse(j.params) as { imageId?: number }).imageId === img.id)
      .map((j) => j.id);
    if (jobs.length) throw conflict(`image '${name}' is being copied by job ${jobs.join(', ')}; wait for it or cancel it first`, { jobs });
    c.db.transaction(() => {
      c.db.prepare('UPDATE volumes SET image_id = NULL WHERE image_id = ?').run(img.id);
      c.db.prepare('DELETE FROM images WHERE id = ?').run(img.id);
      c.events.emit('image.deleted', `image/${name}`, { image: name, file: img.path });
    })();
    c.log.info({ op: 'image.delete', image: name, file: img.path }, 'image unregistered (its file is kept)');
  }

  /**
   * Makes an image from a volume no host can write to (no mapped binding):
   * the volume's bytes are copied into images/NAME.img, which is registered
   * when the copy has verified.
   */
  captureImage(name: string, volumeName: string): JobView {
    const { m, c } = this;
    const v = m.volume(volumeName);
    if (c.db.prepare('SELECT 1 FROM images WHERE name = ?').get(name)) throw conflict(`image '${name}' already exists`);
    if (v.state === 'free' || v.state === 'allocated' || m.bindingsOfVolume(v.id).some((b) => b.mapped)) {
      throw new BlockgateError('ILLEGAL_STATE', `volume '${v.name}' is '${v.state}'; an image is made from a configured or unmapped volume`, {
        state: v.state,
        operation: 'capture-image',
        allowed: [],
      });
    }
    const busy = c.jobs.activeOn(v.id);
    if (busy) throw new BlockgateError('ILLEGAL_STATE', `volume '${v.name}' is busy with job ${busy.id} (${busy.kind})`, { state: v.state, operation: 'capture-image', job: busy.id, allowed: [] });
    const file = path.join(c.dataDir, 'images', `${name}.img`);
    if (fs.existsSync(file)) throw conflict(`a file already exists at ${file}`);
    return this.job(c.jobs.submit('image-capture', { image: name, volume: v.name, volumeId: v.id, file }, [v.id]));
  }

  private async runCapture(ctx: JobContext<CaptureParams>): Promise<unknown> {
    const { m, c } = this;
    const v = m.volumeById(ctx.params.volumeId);
    await fs.promises.mkdir(path.dirname(ctx.params.file), { recursive: true });
    await c.dataPath.store.flush(m.volumeHandle(v));
    const id = IMAGE_ARRAY_BASE - ctx.id;
    const f = new ArrayFile(id, `image:${ctx.params.image}`, ctx.params.file, v.size);
    await f.open(true);
    c.dataPath.store.addArray(f);
    let r;
    try {
      r = await c.dataPath.engine.copy(rangesOf(m, v.id), [[{ arrayId: id, offset: 0, length: v.size }]], {
        verify: true,
        signal: ctx.signal,
        onProgress: (d, t) => ctx.progress(d, t),
      });
    } finally {
      c.dataPath.store.removeArray(id);
      await f.close();
    }
    c.db.transaction(() => {
      c.db.prepare('INSERT INTO images (name, path, size, created_at) VALUES (?, ?, ?, ?)').run(ctx.params.image, ctx.params.file, v.size, new Date().toISOString());
      c.events.emit('image.registered', `image/${ctx.params.image}`, { image: ctx.params.image, size: v.size, fromVolume: v.name });
    })();
    return { image: ctx.params.image, bytes: r.bytes, verified: r.verified };
  }

  /** Copy image (T4, 709) onto a configured volume; a failure takes T5 to Un-configured. */
  copyImage(volumeName: string, imageName: string, opts: { verify?: boolean | undefined } = {}): JobView {
    const { m, c } = this;
    const v = m.volume(volumeName);
    m.check(v, 'copy-image');
    const img = this.image(imageName);
    if (img.size > v.size) throw conflict(`image '${img.name}' (${img.size} bytes) does not fit volume '${v.name}' (${v.size} bytes)`);
    const job = c.db.transaction(() => {
      m.setDirty(v.id, true);
      return c.jobs.submit('image-copy', { volume: v.name, volumeId: v.id, image: img.name, imageId: img.id, verify: opts.verify ?? true }, [v.id]);
    })();
    return this.job(job);
  }

  private async runImageCopy(ctx: JobContext<ImageCopyParams>): Promise<unknown> {
    const { m, c } = this;
    m.fault('copy-image');
    const v = m.volumeById(ctx.params.volumeId);
    const img = c.db.prepare('SELECT * FROM images WHERE id = ?').get(ctx.params.imageId) as ImageRow | undefined;
    if (!img) throw notFound('image', ctx.params.image);
    const r = await this.withImage(img, (arrayId) =>
      c.dataPath.engine.copy([{ arrayId, offset: 0, length: img.size }], [rangesOf(m, v.id, img.size)], {
        verify: ctx.params.verify,
        signal: ctx.signal,
        corrupt: m.faultArmed('bulk-corrupt'),
        onProgress: (d, t) => ctx.progress(d, t),
      }),
    );
    for (const x of rangesOf(m, v.id, img.size)) await c.dataPath.store.invalidate(x.arrayId, x.offset, x.length);
    c.db.transaction(() => {
      c.db.prepare('UPDATE volumes SET image_id = ? WHERE id = ?').run(img.id, v.id);
      m.apply(m.volumeById(v.id), 'copy-image', { image: img.name });
    })();
    return { bytes: r.bytes, verified: r.verified, image: img.name };
  }

  private async withImage<T>(img: ImageRow, fn: (arrayId: number) => Promise<T>): Promise<T> {
    // Checked again at use: the name may have been swapped for a link since it was registered.
    await resolveImagePath(this.m, img.path);
    const id = IMAGE_ARRAY_BASE + img.id;
    const f = new ArrayFile(id, `image:${img.name}`, img.path, img.size);
    await f.open(false);
    this.c.dataPath.store.addArray(f);
    try {
      return await fn(id);
    } finally {
      this.c.dataPath.store.removeArray(id);
      await f.close();
    }
  }

  // ---- snap ------------------------------------------------------------------

  /**
   * Snap (T11, split/join 726) by copy-on-write: the volume stays mapped.
   * The point in time is this call: I/O is held and drained, the volume
   * flushed, a write hook installed that saves old bytes of a region before
   * its first overwrite, then I/O resumes and a job copies the other regions.
   */
  async snap(sourceName: string, snapshotName: string): Promise<{ job: JobView; snapshot: VolumeRow }> {
    const { m, c } = this;
    const src = m.volume(sourceName);
    m.check(src, 'snap');
    if (this.cow.has(src.id)) throw new BlockgateError('ILLEGAL_STATE', `volume '${src.name}' already has a snapshot in progress`, { state: src.state, operation: 'snap', allowed: [] });
    const farm = src.farm_id === null ? undefined : (c.db.prepare('SELECT name FROM farms WHERE id = ?').get(src.farm_id) as { name: string }).name;
    const snap = m.createVolume({ name: snapshotName, size: src.size, farm, qualityClass: src.quality_class ?? undefined, configure: true });
    c.db.prepare('UPDATE volumes SET snapshot_of = ?, dirty = 1, image_id = ? WHERE id = ?').run(src.id, src.image_id, snap.id);
    const store = c.dataPath.store;
    const srcH = m.volumeHandle(src);
    const dstH = m.volumeHandle(m.volumeById(snap.id));
    const regions = Math.ceil(src.size / COW_REGION);
    const state: CowState = {
      snapshotId: snap.id,
      regions,
      copied: new Uint8Array(regions),
      inflight: new Map(),
      copyRegion: (i) => {
        if (state.copied[i]) return Promise.resolve();
        const running = state.inflight.get(i);
        if (running) return running;
        const p = (async () => {
          const off = i * COW_REGION;
          const len = Math.min(COW_REGION, src.size - off);
          const buf = Buffer.allocUnsafe(len);
          // Through the store, so a cache above the arrays is seen as the host sees it.
          await store.read(srcH, off, len, buf);
          await store.write(dstH, off, buf, false);
          state.copied[i] = 1;
        })().finally(() => state.inflight.delete(i));
        state.inflight.set(i, p);
        return p;
      },
    };
    const release = await store.quiesce(src.id);
    let job: JobRow;
    try {
      await store.flush(srcH);
      store.setWriteHook(src.id, async (offset, length) => {
        const first = Math.floor(offset / COW_REGION);
        const last = Math.floor((offset + Math.max(length, 1) - 1) / COW_REGION);
        for (let i = first; i <= last && i < regions; i++) await state.copyRegion(i);
      });
      this.cow.set(src.id, state);
      job = c.db.transaction(() => {
        m.apply(m.volumeById(src.id), 'snap', { snapshot: snap.name });
        // The source is listed so nothing else (unmap, another snap) runs on it meanwhile.
        return c.jobs.submit('snap', { source: src.name, sourceId: src.id, snapshot: snap.name, snapshotId: snap.id }, [src.id, snap.id]);
      })();
    } catch (e) {
      store.setWriteHook(src.id, null);
      this.cow.delete(src.id);
      throw e;
    } finally {
      release();
    }
    return { job: this.job(job), snapshot: m.volumeById(snap.id) };
  }

  private async runSnap(ctx: JobContext<SnapParams>): Promise<unknown> {
    const { m, c } = this;
    const state = this.cow.get(ctx.params.sourceId);
    if (!state || state.snapshotId !== ctx.params.snapshotId) throw new BlockgateError('INTERNAL', 'the snapshot point in time was lost (restart)');
    const src = m.volumeById(ctx.params.sourceId);
    const rate = c.dataPath.engine.rate;
    const started = Date.now();
    for (let i = 0; i < state.regions; i++) {
      if (ctx.signal.aborted) throw new BlockgateError('CONFLICT', 'operation cancelled', { cancelled: true });
      // The background copy keeps to the bulk rate like any bulk job; host writes (the hook) never wait for it.
      const ahead = rate ? started + ((i * COW_REGION) / rate) * 1000 - Date.now() : 0;
      if (ahead > 0) await sleep(ahead, undefined, { signal: ctx.signal }).catch(() => undefined);
      if (ctx.signal.aborted) throw new BlockgateError('CONFLICT', 'operation cancelled', { cancelled: true });
      await state.copyRegion(i);
      ctx.progress(Math.min((i + 1) * COW_REGION, src.size), src.size);
    }
    c.dataPath.store.setWriteHook(src.id, null);
    this.cow.delete(src.id);
    await c.dataPath.store.flush(m.volumeHandle(m.volumeById(ctx.params.snapshotId)));
    c.events.emit('volume.snapshot', `volume/${src.name}`, { source: src.name, snapshot: ctx.params.snapshot });
    return { snapshot: ctx.params.snapshot, bytes: src.size };
  }

  // ---- activate and release -------------------------------------------------

  /**
   * Activate (seed FIG. 6B): allocate → configure/meta → copy image → bind →
   * map as one job; any failure rolls the volume all the way back to free
   * (scrubbing what the image copy wrote).
   */
  activate(opts: {
    host: string;
    volume: string;
    size: number;
    qualityClass?: string | undefined;
    image?: string | undefined;
    target: number;
    lun: number;
    mode?: AccessMode | undefined;
  }): JobView {
    const { m, c } = this;
    const h = m.host(opts.host);
    const img = opts.image ? this.image(opts.image) : null;
    if (img && img.size > opts.size) throw conflict(`image '${img.name}' (${img.size} bytes) does not fit ${opts.size} bytes`);
    if (c.db.prepare('SELECT 1 FROM bindings WHERE host_id = ? AND target = ? AND lun = ?').get(h.id, opts.target, opts.lun)) {
      throw conflict(`unit ${opts.target}/${opts.lun} of host '${h.name}' is already bound`);
    }
    const farm = (c.db.prepare('SELECT name FROM farms WHERE id = ?').get(h.farm_id) as { name: string }).name;
    const job = c.db.transaction(() => {
      const v = m.createVolume({ name: opts.volume, size: opts.size, farm, qualityClass: opts.qualityClass });
      return c.jobs.submit(
        'activate',
        { host: h.name, volume: v.name, volumeId: v.id, image: img?.name ?? null, target: opts.target, lun: opts.lun, mode: opts.mode ?? null },
        [v.id],
      );
    })();
    return this.job(job);
  }

  private async runActivate(ctx: JobContext<ActivateParams>): Promise<unknown> {
    const { m, c } = this;
    const p = ctx.params;
    m.configure(p.volume);
    ctx.progress(1, 4);
    if (p.image) {
      m.fault('copy-image');
      const img = this.image(p.image);
      const v = m.volumeById(p.volumeId);
      m.setDirty(v.id, true);
      try {
        await this.withImage(img, (arrayId) =>
          c.dataPath.engine.copy([{ arrayId, offset: 0, length: img.size }], [rangesOf(m, v.id, img.size)], { verify: true, signal: ctx.signal, corrupt: m.faultArmed('bulk-corrupt') }),
        );
      } catch (e) {
        this.failEdge(v.id, 'copy-image-failed');
        throw e;
      }
      for (const x of rangesOf(m, v.id, img.size)) await c.dataPath.store.invalidate(x.arrayId, x.offset, x.length);
      c.db.transaction(() => {
        c.db.prepare('UPDATE volumes SET image_id = ? WHERE id = ?').run(img.id, v.id);
        m.apply(m.volumeById(v.id), 'copy-image', { image: img.name });
      })();
    }
    ctx.progress(2, 4);
    if (ctx.signal.aborted) throw new BlockgateError('CONFLICT', 'operation cancelled', { cancelled: true });
    const b = m.bind({ volume: p.volume, host: p.host, target: p.target, lun: p.lun, mode: p.mode ?? undefined, map: true });
    ctx.progress(4, 4);
    return { volume: p.volume, host: p.host, binding: b.id, target: b.target, lun: b.lun };
  }

  /**
   * Walks a volume from wherever it is back to free: unmap, unbind, break,
   * scrub (inline, when it holds data) and de-allocate. Activate's rollback.
   */
  async release(volumeId: number): Promise<void> {
    const { m, c } = this;
    for (const b of m.bindingsOfVolume(volumeId)) {
      if (b.mapped) await m.unmap(b.id);
      m.unbind(b.id);
    }
    let v = m.volumeById(volumeId);
    if (v.state === 'free') return;
    if (v.state !== 'unconfigured') v = m.breakVolume(v.name);
    if (v.dirty) {
      const ranges = rangesOf(m, v.id);
      await c.dataPath.engine.scrub(ranges, { pattern: 0, verify: true });
      for (const r of ranges) await c.dataPath.store.invalidate(r.arrayId, r.offset, r.length);
      m.setDirty(v.id, false);
    }
    m.deallocate(v.name);
  }
}
