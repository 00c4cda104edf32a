import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { BlockgateError, badRequest, conflict, notFound } from '../../common/errors.js';
import { ArrayFile, BULK_CHUNK, type ArrayRange } from '../../disks/index.js';
import { VolumeLayout } from '../../mapper/index.js';
import type { VolumeHandle } from '../../cache/index.js';
import type { JobContext, JobRow } from '../jobs.js';
import type { JobView } from '../views.js';
import type { AccessMode, VolumeRow } from '../model.js';
import type { Lifecycle, OperationContext } from './context.js';
import { resolveImagePath } from './image-paths.js';

/** Images are attached to the store as read-only sources under ids no array uses. */
const IMAGE_ARRAY_BASE = 1_000_000_000;

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

type ScrubParams = { volume: string; volumeId: number; pattern: number; verify: boolean };
type CopyParams = { source: string; sourceId: number; targets: { name: string; id: number }[]; verify: boolean };
type ImageCopyParams = { volume: string; volumeId: number; image: string; imageId: number; verify: boolean };
type CaptureParams = { image: string; volume: string; volumeId: number; file: string };
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
    // Progress is in the volume's own bytes: with a read-back, each byte counts half when written, half when verified.
    const shown = (written: number, verified: number): number => (ctx.params.verify ? Math.floor((written + verified) / 2) : written);
    const engine = c.dataPath.engine;
    await engine.scrub(sliceFrom(ranges, start), {
      pattern: ctx.params.pattern,
      verify: false,
      signal: ctx.signal,
      corrupt: m.faultArmed('bulk-corrupt'),
      onProgress: (done) => ctx.progress(shown(start + done, 0), size, { written: start + done }),
    });
    for (const r of ranges) await c.dataPath.store.invalidate(r.arrayId, r.offset, r.length);
    let verified = false;
    if (ctx.params.verify) {
      // Read back through the engine the whole volume, including what an earlier run wrote.
      const got = await engine.checksum(ranges, { signal: ctx.signal, onProgress: (done) => ctx.progress(shown(size, done), size, { written: size }) });
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

  /**
   * Disk Copy (832): one source no host can be writing (configured, bound or
   * unmapped with no mapped binding, unbound, or a snapshot) onto many
   * configured or unbound targets, each at least as large. A mapped volume is
   * copied through a snapshot of it.
   */
  copy(sourceName: string, targetNames: string[], opts: { verify?: boolean | undefined } = {}): JobView {
    const { m, c } = this;
    const src = m.volume(sourceName);
    this.checkQuietSource(src, 'copy');
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

  /** A copy or capture reads below the hosts: refused while a host could be writing the source. */
  private checkQuietSource(v: VolumeRow, operation: string): void {
    const { m, c } = this;
    if (v.state === 'mapped' || m.bindingsOfVolume(v.id).some((b) => b.mapped)) {
      throw new BlockgateError(
        'ILLEGAL_STATE',
        `volume '${v.name}' is mapped: a host may be writing it while it is read; take a snapshot (POST /v1/volumes/${v.name}/snap) and ${operation} the snapshot`,
        { state: v.state, operation, allowed: ['snap'], volume: v.name },
      );
    }
    if (!['configured', 'bound', 'unmapped', 'unbound'].includes(v.state)) {
      throw new BlockgateError('ILLEGAL_STATE', `volume '${v.name}' is '${v.state}'; a ${operation} reads a configured, bound, unmapped or unbound volume or a snapshot`, {
        state: v.state,
        operation,
        allowed: [],
        volume: v.name,
      });
    }
    const busy = c.jobs.activeOn(v.id);
    if (busy) throw new BlockgateError('ILLEGAL_STATE', `volume '${v.name}' is busy with job ${busy.id} (${busy.kind})`, { state: v.state, operation, job: busy.id, allowed: [] });
  }

  /**
   * Where a volume's bytes read from now, as one layout: a copy-on-write
   * snapshot's shared regions resolve to its origin's extents (down a chain).
   */
  private sourceLayout(volumeId: number): VolumeLayout {
    const own = this.m.layoutOf(volumeId);
    const link = this.c.dataPath.store.snapshotLink(volumeId);
    if (!link) return own;
    const origin = this.sourceLayout(link.origin.id);
    const extents: { arrayId: number; offset: number; length: number }[] = [];
    for (let i = 0; i < link.regions; i++) {
      const at = i * link.regionSize;
      const len = Math.min(link.regionSize, own.size - at);
      for (const g of (link.isOwn(i) ? own : origin).translate(at, len)) {
        const last = extents[extents.length - 1];
        if (last && last.arrayId === g.arrayId && last.offset + last.length === g.arrayOffset) last.length += g.length;
        else extents.push({ arrayId: g.arrayId, offset: g.arrayOffset, length: g.length });
      }
    }
    return new VolumeLayout(extents);
  }

  /**
   * Copies [from, to) of a source layout onto targets by its allocation: data
   * runs move through the engine (read back when verifying), zero runs become
   * allocated zeroes, holes move nothing (the caller made the targets read as
   * holes first). Returns the bytes moved.
   */
  private async copyRuns(
    ctx: JobContext<unknown>,
    layout: VolumeLayout,
    from: number,
    to: number,
    targets: readonly VolumeHandle[],
    opts: { verify: boolean; zeroes: boolean; onProgress?: (done: number, total: number) => void },
  ): Promise<{ moved: number; zeroed: number }> {
    const { m, c } = this;
    const store = c.dataPath.store;
    const runs = store.allocationRuns({ id: -1, layout, cachePolicy: 'none' }, from, to - from, Number.MAX_SAFE_INTEGER);
    const data = runs.filter((r) => r.state === 'data');
    const streamOf = (l: VolumeLayout): ArrayRange[] =>
      data.flatMap((r) => l.translate(r.offset, r.length).map((g) => ({ arrayId: g.arrayId, offset: g.arrayOffset, length: g.length })));
    const moved = data.reduce((n, r) => n + r.length, 0);
    if (moved > 0) {
      await c.dataPath.engine.copy(
        streamOf(layout),
        targets.map((t) => streamOf(t.layout)),
        { verify: opts.verify, signal: ctx.signal, corrupt: m.faultArmed('bulk-corrupt'), onProgress: opts.onProgress },
      );
    }
    let zeroed = 0;
    if (opts.zeroes) {
      for (const r of runs) {
        if (r.state !== 'zero') continue;
        zeroed += r.length;
        for (const t of targets) await store.writeZeroes(t, r.offset, r.length, { noHole: true, fast: false, fua: false });
      }
    }
    return { moved, zeroed };
  }

  /** Every data run of the source is data on the target and nothing else is: holes and zeroes read as zeroes on both. */
  private sameAllocation(source: VolumeLayout, target: VolumeHandle, size: number): boolean {
    const store = this.c.dataPath.store;
    const dataOf = (h: VolumeHandle): string =>
      store
        .allocationRuns(h, 0, size, Number.MAX_SAFE_INTEGER)
        .filter((r) => r.state === 'data')
        .map((r) => `${r.offset}+${r.length}`)
        .join(',');
    return dataOf({ id: -1, layout: source, cachePolicy: 'none' }) === dataOf({ ...target, id: -1 });
  }

  /** Makes every byte of the range read as a hole on each target (durable; the targets serve no host). */
  private clearTargets(targets: readonly VolumeHandle[], from: number, length: number): void {
    const store = this.c.dataPath.store;
    for (const t of targets) for (const g of t.layout.translate(from, length)) store.discard(g.arrayId, g.arrayOffset, g.length);
  }

  private async runCopy(ctx: JobContext<CopyParams>): Promise<unknown> {
    const { m, c } = this;
    const store = c.dataPath.store;
    const src = m.volumeById(ctx.params.sourceId);
    const link = store.snapshotLink(src.id);
    let seen = link ? Uint8Array.from(link.map.own) : null;
    let layout = this.sourceLayout(src.id);
    // Whatever the source reads from is on its arrays before the engine reads below the cache.
    await store.flush({ id: -1, layout, cachePolicy: 'none' });
    const targets = ctx.params.targets.map((t) => m.volumeHandle(m.volumeById(t.id)));
    // Only the prefix the source fills: a larger target keeps its own tail, as a full copy always did.
    this.clearTargets(targets, 0, src.size);
    const toMove = store.allocationRuns({ id: -1, layout, cachePolicy: 'none' }, 0, src.size, Number.MAX_SAFE_INTEGER).reduce((n, r) => n + (r.state === 'data' ? r.length : 0), 0);
    ctx.progress(0, toMove);
    const r = await this.copyRuns(ctx, layout, 0, src.size, targets, { verify: ctx.params.verify, zeroes: true, onProgress: (d) => ctx.progress(d, toMove) });
    let { moved, zeroed } = r;
    // A host write to the origin of a snapshot source copies the region up and may then reach the origin's
    // arrays while the engine reads them: such regions are copied again from the snapshot's own extents.
    while (link && seen) {
      const now = Uint8Array.from(link.map.own);
      const redo: number[] = [];
      for (let i = 0; i < now.length; i++) if (now[i] && !seen[i]) redo.push(i);
      if (redo.length === 0) break;
      seen = now;
      layout = this.sourceLayout(src.id);
      for (const i of redo) {
        const at = i * link.regionSize;
        const len = Math.min(link.regionSize, src.size - at);
        this.clearTargets(targets, at, len);
        const again = await this.copyRuns(ctx, layout, at, at + len, targets, { verify: ctx.params.verify, zeroes: true });
        moved += again.moved;
        zeroed += again.zeroed;
      }
    }
    for (const t of targets) await store.flush(t);
    if (ctx.params.verify) {
      for (const t of targets) {
        if (!this.sameAllocation(layout, t, src.size)) throw new BlockgateError('IO_ERROR', `copy verify failed: the allocation of '${m.volumeById(t.id).name}' differs from the source's`);
      }
    }
    const set = c.db.prepare('UPDATE volumes SET image_id = ? WHERE id = ?');
    for (const t of ctx.params.targets) set.run(src.image_id, t.id);
    c.events.emit('volume.copied', `volume/${src.name}`, { source: src.name, targets: ctx.params.targets.map((t) => t.name), verified: ctx.params.verify, moved });
    return { bytes: src.size, moved, zeroed, verified: ctx.params.verify };
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
    this.checkQuietSource(v, 'capture-image');
    const file = path.join(c.dataDir, 'images', `${name}.img`);
    if (fs.existsSync(file)) throw conflict(`a file already exists at ${file}`);
    return this.job(c.jobs.submit('image-capture', { image: name, volume: v.name, volumeId: v.id, file }, [v.id]));
  }

  private async runCapture(ctx: JobContext<CaptureParams>): Promise<unknown> {
    const { m, c } = this;
    const v = m.volumeById(ctx.params.volumeId);
    await fs.promises.mkdir(path.dirname(ctx.params.file), { recursive: true });
    await c.dataPath.store.flush({ id: -1, layout: this.sourceLayout(v.id), cachePolicy: 'none' });
    const id = IMAGE_ARRAY_BASE - ctx.id;
    const f = new ArrayFile(id, `image:${ctx.params.image}`, ctx.params.file, v.size);
    await f.open(true);
    c.dataPath.store.addArray(f);
    let r;
    try {
      // The new file is sparse: only the volume's data runs are written into it, the rest reads as zeroes.
      const layout = this.sourceLayout(v.id);
      const image = { id: -1, layout: new VolumeLayout([{ arrayId: id, offset: 0, length: v.size }]), cachePolicy: 'none' as const };
      const toMove = c.dataPath.store.allocationRuns({ id: -1, layout, cachePolicy: 'none' }, 0, v.size, Number.MAX_SAFE_INTEGER).reduce((n, x) => n + (x.state === 'data' ? x.length : 0), 0);
      r = await this.copyRuns(ctx, layout, 0, v.size, [image], { verify: true, zeroes: false, onProgress: (d) => ctx.progress(d, toMove) });
    } finally {
      c.dataPath.store.removeArray(id);
      await f.close();
      // The image is a plain file: its allocation sidecar was only for the copy.
      await fs.promises.rm(`${ctx.params.file}.alloc`, { force: true });
    }
    c.db.transaction(() => {
      c.db.prepare('INSERT INTO images (name, path, size, created_at) VALUES (?, ?, ?, ?)').run(ctx.params.image, ctx.params.file, v.size, new Date().toISOString());
      c.events.emit('image.registered', `image/${ctx.params.image}`, { image: ctx.params.image, size: v.size, fromVolume: v.name });
    })();
    return { image: ctx.params.image, bytes: v.size, moved: r.moved, verified: true };
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
