import { BlockgateError } from '../common/errors.js';
import { ALLOC_BLOCK, AllocState, type ArrayFile } from '../disks/index.js';
import type { VolumeLayout } from '../mapper/index.js';
import { BlockCache, DEFAULT_CACHE_SIZE, type CacheOptions, type CacheStats, type WriteMode } from './block-cache.js';
import type { CowIo, SnapshotLink } from './cow.js';

export type CachePolicy = 'none' | 'write-through' | 'write-back';

/** What the data path knows about one volume: its layout and how to treat writes. */
export interface VolumeHandle {
  id: number;
  layout: VolumeLayout;
  cachePolicy: CachePolicy;
  /**
   * Set by a unit's I/O for one host and protocol: once revoked, requests a
   * quiesce held are refused when let go instead of reaching the volume.
   */
  fence?: { readonly revoked: boolean };
}

/** Runs before a write lands (copy-on-write snapshots copy the old bytes out here). */
export type WriteHook = (offset: number, length: number) => Promise<void>;

/**
 * How a run of a volume reads: 'data' (bytes on the array or dirty in the
 * cache), 'zero' (allocated, reads as zeroes), 'hole' (unallocated, reads as zeroes).
 */
export type AllocationState = 'data' | 'zero' | 'hole';

/** One run of a volume's allocation, in volume bytes. */
export interface AllocationRun {
  offset: number;
  length: number;
  state: AllocationState;
}

/** Reads and writes of a volume held by exclusive(): they bypass the hold the caller has. */
export interface ExclusiveAccess {
  read(offset: number, length: number, dest: Buffer): Promise<void>;
  write(offset: number, src: Buffer, fua: boolean): Promise<void>;
}

export interface ZeroOptions {
  /** Keep the blocks allocated (NBD NO_HOLE, SCSI WRITE SAME without UNMAP): they read back as 'zero', not 'hole'. */
  noHole: boolean;
  /** Refuse with NOT_SUPPORTED rather than write zero bytes (NBD FAST_ZERO). */
  fast: boolean;
  fua: boolean;
}

const stateOf = (state: AllocState): AllocationState => (state === AllocState.Data ? 'data' : state === AllocState.Zero ? 'zero' : 'hole');

export const revokedError = (): BlockgateError => new BlockgateError('REVOKED', 'the unit was withdrawn from this host over this protocol');

/** Per-volume I/O gate: counts requests in flight and can hold new ones (quiesce). */
interface Gate {
  inflight: number;
  held: number;
  waiters: (() => void)[];
  drained: (() => void)[];
}

/**
 * The block store sits between the mapper and the arrays. Requests arrive in
 * volume terms, are translated by the layout, and are served per segment.
 *
 * Control operations meet the data path here: quiesce (hold new I/O to a
 * volume and drain what is in flight), write hooks (snapshots), flush and
 * invalidate (scrub/copy working below the cache).
 */
export class BlockStore {
  private readonly arrays = new Map<number, ArrayFile>();
  private readonly gates = new Map<number, Gate>();
  /**
   * Modifying requests in flight that started while their volume had no gate,
   * by volume (the common path is not gated: gates exist only while a control
   * operation needs one). A gate made later waits for them too: a hold that
   * passed them reached its instant (snapshot linked, change maps swapped,
   * cutover) with their bytes still on the way; they landed after it, past
   * the new snapshot's copy-up, and their change marks went to the next
   * backup's map, so the backup that held their bytes did not copy them.
   */
  private readonly ungated = new Map<number, number>();
  /**
   * Thick volumes: every block stays allocated (trim keeps the space and the
   * bytes, zeroing never makes a hole). Kept here, not on the handles, so a
   * change reaches sessions that opened their unit before it.
   */
  private readonly thick = new Set<number>();
  private readonly writeHooks = new Map<number, WriteHook>();
  /** Copy-on-write snapshots by snapshot volume id: their shared regions read from the origin. */
  private readonly links = new Map<number, SnapshotLink>();
  /** How snapshot links reach the data path: host-view reads, writes below gates and hooks. */
  readonly cowIo: CowIo = {
    read: (vol, offset, length, dest) => this.readNow(vol, offset, length, dest) ?? Promise.resolve(),
    // Not left dirty in the cache: the copy must be on the array before its ownership bit is.
    write: (vol, offset, src) => this.writeNow({ ...vol, cachePolicy: 'none' }, offset, src, false),
    runs: (vol, offset, length) => this.allocationRuns(vol, offset, length, Number.MAX_SAFE_INTEGER),
    sync: async (vol) => {
      await Promise.all([...new Set(vol.layout.extents.map((e) => e.arrayId))].map((id) => this.getArray(id).flush()));
    },
  };
  /** One cache for every volume and connection: keyed by (array, block), so shared bytes have one copy. */
  readonly cache: BlockCache;

  constructor(opts: Partial<CacheOptions> = {}) {
    this.cache = new BlockCache((id) => this.getArray(id), { ...opts, size: opts.size ?? DEFAULT_CACHE_SIZE });
  }

  /** Dirty data is at its limit: writes go to the arrays until write-back completions make room. */
  get atDirtyLimit(): boolean {
    return this.cache.overDirtyLimit;
  }

  addArray(a: ArrayFile): void {
    this.arrays.set(a.id, a);
  }

  removeArray(id: number): void {
    this.cache.dropArray(id);
    this.arrays.delete(id);
  }

  getArray(id: number): ArrayFile {
    const a = this.arrays.get(id);
    if (!a) throw new BlockgateError('IO_ERROR', `array ${id} is not attached`);
    // A failed array serves nothing, cached or not, until the admin re-attaches it.
    if (a.fault) throw a.faultError();
    return a;
  }

  listArrays(): ArrayFile[] {
    return [...this.arrays.values()];
  }

  read(vol: VolumeHandle, offset: number, length: number, dest: Buffer): Promise<void> {
    return this.readFast(vol, offset, length, dest) ?? Promise.resolve();
  }

  /**
   * Like read(), but returns null when the bytes are already in `dest`
   * (every segment a cache hit): the hot path replies without a promise hop.
   */
  readFast(vol: VolumeHandle, offset: number, length: number, dest: Buffer): Promise<void> | null {
    if (this.gates.size > 0) {
      const gate = this.gates.get(vol.id);
      if (gate) return this.gated(gate, vol, () => this.readNow(vol, offset, length, dest) ?? Promise.resolve());
    }
    return this.readNow(vol, offset, length, dest);
  }

  write(vol: VolumeHandle, offset: number, src: Buffer, fua: boolean): Promise<void> {
    const gate = this.gates.get(vol.id);
    // The hook is looked up when the write runs, not when it arrives: a write held by a gate while a
    // snapshot was linked (a backup's consistency group) must copy up the snapshot's region first like
    // any later write, or its bytes land under the snapshot's shared region and the snapshot has them.
    const run = (): Promise<void> => {
      const hook = this.writeHooks.get(vol.id);
      return hook ? hook(offset, src.length).then(() => this.writeNow(vol, offset, src, fua)) : this.writeNow(vol, offset, src, fua);
    };
    return gate ? this.gated(gate, vol, run) : this.countUngated(vol.id, run());
  }

  /**
   * Like write(), but returns null when the write is complete at once: a
   * write-back write shorter than the write-around size, with no FUA, no
   * quiesce or write hook on the volume, room under the dirty limit, and
   * every block it touches idle in memory.
   * `src` is not referenced after null or after the promise settles.
   */
  writeFast(vol: VolumeHandle, offset: number, src: Buffer, fua: boolean): Promise<void> | null {
    if (
      fua ||
      vol.cachePolicy !== 'write-back' ||
      src.length >= this.cache.writeAroundMin ||
      this.cache.overDirtyLimit ||
      this.gates.has(vol.id) ||
      this.writeHooks.has(vol.id)
    ) {
      return this.write(vol, offset, src, fua);
    }
    const p = this.writeBackSegments(vol, offset, src);
    return p === null ? null : this.countUngated(vol.id, p);
  }

  private writeBackSegments(vol: VolumeHandle, offset: number, src: Buffer): Promise<void> | null {
    const ex = vol.layout.extents;
    if (ex.length === 1 && vol.layout.inRange(offset, src.length)) {
      // Single-extent volumes (the common case): no segment walk, no closure.
      return this.cache.write(this.getArray(ex[0]!.arrayId), ex[0]!.offset + offset, src, 0, src.length, 'back');
    }
    let pending: Promise<void>[] | null = null;
    vol.layout.forEachSegment(offset, src.length, (arrayId, arrayOffset, len, at) => {
      const p = this.cache.write(this.getArray(arrayId), arrayOffset, src, at, len, 'back');
      if (p) (pending ??= []).push(p);
    });
    const list = pending as Promise<void>[] | null;
    if (list === null) return null;
    return list.length === 1 ? list[0]! : Promise.all(list).then(() => undefined);
  }

  private readNow(vol: VolumeHandle, offset: number, length: number, dest: Buffer): Promise<void> | null {
    if (this.links.size > 0) {
      const link = this.links.get(vol.id);
      if (link) return this.readLinked(link, offset, length, dest);
    }
    return this.readPlain(vol, offset, length, dest);
  }

  /** Reads the volume's own extents. */
  private readPlain(vol: VolumeHandle, offset: number, length: number, dest: Buffer): Promise<void> | null {
    const cacheable = vol.cachePolicy !== 'none';
    const ex = vol.layout.extents;
    if (ex.length === 1 && vol.layout.inRange(offset, length)) {
      return this.cache.read(this.getArray(ex[0]!.arrayId), ex[0]!.offset + offset, length, dest, 0, cacheable);
    }
    let pending: Promise<void>[] | null = null;
    vol.layout.forEachSegment(offset, length, (arrayId, arrayOffset, len, at) => {
      const p = this.cache.read(this.getArray(arrayId), arrayOffset, len, dest, at, cacheable);
      if (p) (pending ??= []).push(p);
    });
    const list = pending as Promise<void>[] | null;
    if (list === null) return null;
    return list.length === 1 ? list[0]! : Promise.all(list).then(() => undefined);
  }

  /**
   * A snapshot read: own regions from the snapshot's extents, shared ones from
   * the origin. A shared region read from the origin is good only if it was
   * still shared when the read finished (the origin's overwrite waits for the
   * copy-up, which marks the region own first); otherwise it is read again
   * from the snapshot's own extents, which hold the same point-in-time bytes.
   */
  private async readLinked(link: SnapshotLink, offset: number, length: number, dest: Buffer): Promise<void> {
    const R = link.regionSize;
    const end = offset + length;
    for (;;) {
      const parts: Promise<void>[] = [];
      const shared: [number, number][] = [];
      for (let pos = offset; pos < end; ) {
        const own = link.isOwn(Math.floor(pos / R));
        let next = Math.min(end, (Math.floor(pos / R) + 1) * R);
        while (next < end && link.isOwn(Math.floor(next / R)) === own) next = Math.min(end, next + R);
        const d = dest.subarray(pos - offset, next - offset);
        const p = own ? this.readPlain(link.snapshot, pos, next - pos, d) : this.readNow(link.origin, pos, next - pos, d);
        if (p) parts.push(p);
        if (!own) shared.push([pos, next]);
        pos = next;
      }
      if (parts.length > 0) await Promise.all(parts);
      let changed = false;
      for (const [from, to] of shared) {
        for (let i = Math.floor(from / R); i * R < to; i++) if (link.isOwn(i)) changed = true;
      }
      if (!changed) return;
    }
  }

  /**
   * write-back: into the cache, acknowledged once in memory; a large write
   * goes around it (`BlockCache.writeAround`), and a write at the dirty limit
   * is made like a write-through one without the sync, both acknowledged once
   * the array has them. write-through,
   * none, and FUA on any policy: cached copies updated first (so a write-back
   * of older bytes cannot land after ours), then the array written, and with
   * FUA synced, before the acknowledgement.
   */
  private async writeNow(vol: VolumeHandle, offset: number, src: Buffer, fua: boolean): Promise<void> {
    const policy = vol.cachePolicy;
    if (policy === 'write-back' && !fua) {
      if (src.length >= this.cache.writeAroundMin) {
        // Adds no dirty bytes beyond its partial end blocks: it does not wait for dirty room.
        await Promise.all(vol.layout.translate(offset, src.length).map((g) => this.cache.writeAround(this.getArray(g.arrayId), g.arrayOffset, src, g.requestOffset, g.length)));
        return;
      }
      if (!this.cache.overDirtyLimit) {
        const p = this.writeBackSegments(vol, offset, src);
        if (p) await p;
        return;
      }
      // At the dirty limit the write does not wait for write-back to make room: it is made as a write-through
      // write without the sync (cached copies first, then the array), so dirty bytes stay bounded and the writer
      // pays one array write instead of a place in line behind the write-backs. The page cache below takes it
      // as it takes the peers' writes; FLUSH syncs the arrays as for any write-back write.
      this.cache.noteDirtyBypass();
    }
    const mode: WriteMode = policy === 'none' ? 'none' : 'through';
    const segs = vol.layout.translate(offset, src.length);
    // Loads that start from here on may read the array before our write lands (see directWrite).
    const since = this.cache.sequence;
    const applied: Promise<void>[] = [];
    for (const g of segs) {
      const p = this.cache.write(this.getArray(g.arrayId), g.arrayOffset, src, g.requestOffset, g.length, mode);
      if (p) applied.push(p);
    }
    if (applied.length > 0) await Promise.all(applied);
    try {
      await Promise.all(segs.map((g) => this.cache.directWrite(this.getArray(g.arrayId), g.arrayOffset, src, g.requestOffset, g.length, since)));
    } catch (err) {
      // Cached copies already hold bytes the array refused: drop them so nobody reads what is not there.
      await Promise.all(segs.map((g) => this.invalidate(g.arrayId, g.arrayOffset, g.length))).catch(() => undefined);
      throw err;
    }
    if (fua) await Promise.all([...new Set(segs.map((g) => g.arrayId))].map((id) => this.getArray(id).flush()));
  }

  /**
   * FLUSH: every write to this volume completed before the call is on its
   * arrays and fdatasync'ed when this resolves (dirty blocks of the volume's
   * arrays are written back first).
   */
  async flush(vol: VolumeHandle): Promise<void> {
    const ids = new Set(vol.layout.extents.map((e) => e.arrayId));
    await this.cache.writeBack(ids);
    await Promise.all([...ids].map((id) => this.getArray(id).flush()));
  }

  /** Writes back everything dirty and syncs every array (shutdown, protocol switch). */
  async flushAll(): Promise<void> {
    // A failed array's dirty blocks have nowhere to go (they were dropped when it failed).
    const healthy = this.listArrays().filter((a) => !a.fault);
    for (const a of this.listArrays()) if (a.fault) this.cache.dropArray(a.id);
    await this.cache.writeBack(new Set(healthy.map((a) => a.id)));
    await Promise.all(healthy.map((a) => a.flush()));
  }

  /** Writes back dirty cached bytes of an array range (before bulk work reads it below the cache). */
  async flushRange(arrayId: number, offset: number, length: number): Promise<void> {
    await this.cache.writeBack(new Set([arrayId]), { offset, length });
    await this.getArray(arrayId).flush();
  }

  /**
   * Drops any cached copy of these array bytes (they were rewritten below
   * the cache); dirty cached data in the range is discarded. Resolves when
   * no stale copy can be served.
   */
  invalidate(arrayId: number, offset: number, length: number): Promise<void> {
    const a = this.arrays.get(arrayId);
    if (!a) return Promise.resolve();
    return this.cache.invalidate(a, offset, length);
  }

  /** Keeps the array range in memory until unpinned (refused beyond the cache's pinned share). */
  pin(arrayId: number, offset: number, length: number): Promise<void> {
    return this.cache.pin(this.getArray(arrayId), offset, length);
  }

  unpin(arrayId: number, offset: number, length: number): void {
    this.cache.unpin(arrayId, offset, length);
  }

  /** Cache counters for the metrics endpoint. */
  stats(): CacheStats {
    return this.cache.stats();
  }

  /** Shutdown: write back, sync, stop the I/O route. Arrays stay open (the caller closes them). */
  async close(): Promise<void> {
    await this.flushAll();
    await this.cache.close();
  }

  // ---- allocation: trim, zero, allocation runs, prefetch -----------------------
  //
  // The arrays' allocation maps (disks/allocation.ts) say which blocks hold
  // data on the file; dirty cached blocks hold data the map does not know
  // about yet, so every question about holes asks both.

  /** TRIM: whole allocation blocks become holes (partial ones are left: TRIM is a hint, so a thick volume ignores it and keeps its space and bytes). */
  trim(vol: VolumeHandle, offset: number, length: number, fua: boolean): Promise<void> {
    if (this.thick.has(vol.id)) return Promise.resolve();
    return this.modify(
      vol,
      offset,
      length,
      // Only whole allocation blocks become holes (and read as zeroes).
      (off, len) => [Math.ceil(off / ALLOC_BLOCK) * ALLOC_BLOCK, Math.floor((off + len) / ALLOC_BLOCK) * ALLOC_BLOCK],
      (a, off, len) => {
        a.trim(off, len);
        return Promise.resolve();
      },
      fua,
    );
  }

  /** WRITE_ZEROES: blocks become ZERO (noHole, always on a thick volume) or holes; partial data blocks get zero bytes. */
  writeZeroes(vol: VolumeHandle, offset: number, length: number, opts: ZeroOptions): Promise<void> {
    const noHole = opts.noHole || this.thick.has(vol.id);
    return this.modify(
      vol,
      offset,
      length,
      (off, len) => [off, off + len],
      (a, off, len) => a.writeZeroes(off, len, noHole, opts.fast),
      opts.fua,
    );
  }

  /**
   * Runs a map-changing command like a write (gated, after the snapshot hook),
   * each array segment through the cache's change(): ordered with every other
   * request on the cache blocks it touches, and cached copies hold the
   * segment's `zeroed` range as zeroes once the change lands.
   */
  private modify(
    vol: VolumeHandle,
    offset: number,
    length: number,
    zeroed: (off: number, len: number) => [number, number],
    apply: (a: ArrayFile, off: number, len: number) => Promise<void>,
    fua: boolean,
  ): Promise<void> {
    const segs: [ArrayFile, number, number][] = [];
    vol.layout.forEachSegment(offset, length, (arrayId, arrayOffset, len) => segs.push([this.getArray(arrayId), arrayOffset, len]));
    const run = async (): Promise<void> => {
      const hook = this.writeHooks.get(vol.id);
      if (hook) await hook(offset, length);
      await Promise.all(
        segs.map(([a, off, len]) => {
          const [zFrom, zTo] = zeroed(off, len);
          return this.cache.change(a, off, len, zFrom, zTo, () => apply(a, off, len));
        }),
      );
      if (fua) await Promise.all([...new Set(segs.map((x) => x[0]))].map((a) => a.flush()));
    };
    const gate = this.gates.get(vol.id);
    return gate ? this.gated(gate, vol, run) : this.countUngated(vol.id, run());
  }

  /**
   * Allocation of [offset, offset+length): equal neighbours merged, at most
   * `max` runs (the last may end before the range does; the caller reports
   * what it got). Dirty cached blocks count as data.
   */
  allocationRuns(vol: VolumeHandle, offset: number, length: number, max: number): AllocationRun[] {
    const link = this.links.size > 0 ? this.links.get(vol.id) : undefined;
    if (link) return this.linkedRuns(link, offset, length, max);
    const out: AllocationRun[] = [];
    let full = false;
    let pos = offset;
    const add = (runLen: number, state: AllocationState): void => {
      if (full) return;
      const last = out[out.length - 1];
      if (last && last.state === state) last.length += runLen;
      else if (out.length < max) out.push({ offset: pos, length: runLen, state });
      else {
        full = true;
        return;
      }
      pos += runLen;
    };
    vol.layout.forEachSegment(offset, length, (arrayId, arrayOffset, len) => {
      if (!full) this.segmentRuns(arrayId, arrayOffset, len, add);
    });
    return out;
  }

  /**
   * Allocation runs of one array range as a reader sees it: the map's, except
   * where a dirty cached block holds newer bytes (its dirty span, widened to
   * allocation blocks, is data; the rest of the block was loaded as the map says).
   */
  private segmentRuns(arrayId: number, offset: number, length: number, add: (len: number, state: AllocationState) => void): void {
    const a = this.getArray(arrayId);
    const end = offset + length;
    if (!this.cache.hasDirty(arrayId, offset, length)) {
      a.allocationRuns(offset, length, (_off, runLen, state) => add(runLen, stateOf(state)));
      return;
    }
    const bs = this.cache.blockSize;
    const mapRuns = (from: number, to: number): void => {
      if (to > from) a.allocationRuns(from, to - from, (_off, runLen, state) => add(runLen, stateOf(state)));
    };
    for (let pos = offset; pos < end; ) {
      const index = Math.floor(pos / bs);
      const next = Math.min(end, (index + 1) * bs);
      const span = this.cache.dirtySpan(arrayId, index);
      if (!span) mapRuns(pos, next);
      else {
        const lo = Math.max(pos, index * bs + span[0] - (span[0] % ALLOC_BLOCK));
        const hi = Math.min(next, index * bs + Math.ceil(span[1] / ALLOC_BLOCK) * ALLOC_BLOCK);
        mapRuns(pos, Math.min(lo, next));
        if (hi > lo) add(hi - lo, 'data');
        mapRuns(Math.max(hi, pos), next);
      }
      pos = next;
    }
  }

  /** A snapshot's runs: own regions as its own extents say, shared ones as the origin's. */
  private linkedRuns(link: SnapshotLink, offset: number, length: number, max: number): AllocationRun[] {
    if (!link.snapshot.layout.inRange(offset, length)) {
      throw new BlockgateError('OUT_OF_RANGE', `range ${offset}+${length} is outside the volume (size ${link.snapshot.layout.size})`);
    }
    const R = link.regionSize;
    const out: AllocationRun[] = [];
    const end = offset + length;
    for (let pos = offset; pos < end && out.length <= max; ) {
      const i = Math.floor(pos / R);
      const next = Math.min(end, (i + 1) * R);
      const src = link.isOwn(i) ? { ...link.snapshot, id: -1 } : link.origin;
      for (const r of this.allocationRuns(src, pos, next - pos, max)) {
        const last = out[out.length - 1];
        if (last && last.state === r.state && last.offset + last.length === r.offset) last.length += r.length;
        else out.push({ ...r });
      }
      pos = next;
    }
    if (out.length > max) {
      out.length = max;
    }
    return out;
  }

  /** True when the whole range holds data (a sparse-aware read can send it whole, no hole runs). */
  allData(vol: VolumeHandle, offset: number, length: number): boolean {
    if (this.links.size > 0 && this.links.has(vol.id)) return this.allocationRuns(vol, offset, length, 2).every((r) => r.state === 'data');
    // Every sparse-aware read asks this: skip the segment walk for single-extent volumes.
    const ex = vol.layout.extents;
    if (ex.length === 1 && vol.layout.inRange(offset, length)) return this.dataIn(ex[0]!.arrayId, ex[0]!.offset + offset, length);
    let all = true;
    vol.layout.forEachSegment(offset, length, (arrayId, arrayOffset, len) => {
      if (all && !this.dataIn(arrayId, arrayOffset, len)) all = false;
    });
    return all;
  }

  /** Data as far as a reader can tell: on the file per the map, or newer in a dirty cached block. */
  private dataIn(arrayId: number, offset: number, length: number): boolean {
    const a = this.arrays.get(arrayId);
    // Not a question a failed array can answer: say "data" so the read itself runs and gets the array's error.
    if (!a || a.fault) return true;
    if (a.alloc.allData(offset, length)) return true;
    if (!this.cache.hasDirty(arrayId, offset, length)) return false;
    let all = true;
    this.segmentRuns(arrayId, offset, length, (_len, state) => {
      if (state !== 'data') all = false;
    });
    return all;
  }

  /** Prefetch (NBD CACHE, SCSI PRE-FETCH): reads the range's data blocks through, 1 MiB at a time, so the next read is served warm. */
  async prefetch(vol: VolumeHandle, offset: number, length: number): Promise<void> {
    const CHUNK = 1024 * 1024;
    // Reads as large as the cache's write-around size would go around it and leave nothing warm:
    // each chunk is read in pieces below that size, at once.
    const piece = Math.max(4096, Math.min(CHUNK, Math.floor(this.cache.writeAroundMin / 2)));
    const scratch = Buffer.allocUnsafe(Math.min(CHUNK, length));
    for (let pos = offset; pos < offset + length; pos += CHUNK) {
      const n = Math.min(CHUNK, offset + length - pos);
      if (!this.allData(vol, pos, n) && this.allocationRuns(vol, pos, n, 2).every((e) => e.state !== 'data')) continue;
      const parts: Promise<void>[] = [];
      for (let at = 0; at < n; at += piece) parts.push(this.read(vol, pos + at, Math.min(piece, n - at), scratch.subarray(at, Math.min(n, at + piece))));
      await Promise.all(parts);
    }
  }

  /**
   * Space (re)allocated to a volume or freed: reads as zeroes from now on, and
   * that is durable when this returns. Cached copies of the old owner's bytes
   * go too. Control path only (it blocks briefly).
   */
  discard(arrayId: number, offset: number, length: number, thick = false): void {
    this.cache.forget(arrayId, offset, length);
    this.getArray(arrayId).discardSync(offset, length, thick);
  }

  /** Marks a volume thick or thin for the data path (the manager's record is the truth; set at start and on change). */
  setThick(volumeId: number, thick: boolean): void {
    if (thick === this.thick.has(volumeId)) return;
    if (thick) this.thick.add(volumeId);
    else this.thick.delete(volumeId);
    this.provisioningGen++;
  }

  /** Moves whenever a volume turns thick or thin, so holders of cached capabilities know to ask again. */
  provisioningGen = 0;

  isThick(volumeId: number): boolean {
    return this.thick.has(volumeId);
  }

  /** A volume turned thick: the holes in its space become allocated zeroes, durably. Control path only. */
  reserve(arrayId: number, offset: number, length: number): void {
    this.getArray(arrayId).reserveSync(offset, length);
  }

  // ---- control hooks ------------------------------------------------------

  /**
   * Tracks a volume's in-flight I/O from now on. Volumes are tracked only
   * while some control operation needs it, so the common path pays one Map
   * miss.
   */
  track(volumeId: number): void {
    if (!this.gates.has(volumeId)) this.gates.set(volumeId, { inflight: 0, held: 0, waiters: [], drained: [] });
  }

  /** True while the volume's I/O is counted by a gate (a quiesce or exclusive is using it). */
  tracks(volumeId: number): boolean {
    return this.gates.has(volumeId);
  }

  untrack(volumeId: number): void {
    const g = this.gates.get(volumeId);
    if (g && g.held === 0 && g.inflight === 0) this.gates.delete(volumeId);
  }

  /**
   * Holds new I/O to the volume and resolves once what was in flight has
   * finished; the returned function releases the held requests. Nested holds
   * release when the last one does.
   */
  async quiesce(volumeId: number): Promise<() => void> {
    this.track(volumeId);
    const g = this.gates.get(volumeId)!;
    g.held++;
    // Re-checked after each wake: an exclusive() woken by the same drain may have started first.
    while (this.busy(g, volumeId)) await new Promise<void>((r) => g.drained.push(r));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--g.held === 0) {
        const w = g.waiters.splice(0);
        for (const wake of w) wake();
        this.untrack(volumeId);
      }
    };
  }

  /**
   * Runs `op` with the volume to itself: waits until nobody holds the volume,
   * holds new I/O to it from every session and protocol, waits for what is
   * in flight, then runs `op`, whose reads and writes pass the hold. One
   * exclusive at a time per volume; a quiesce() that arrives meanwhile waits
   * for `op` to finish. Write hooks (snapshots) still run before its writes.
   * Cost: every other request to the volume waits for the drain and for `op`.
   */
  async exclusive<T>(vol: VolumeHandle, op: (io: ExclusiveAccess) => Promise<T>): Promise<T> {
    let g: Gate;
    for (;;) {
      // Taken afresh after each wait: the gate may have been untracked and replaced meanwhile.
      this.track(vol.id);
      g = this.gates.get(vol.id)!;
      if (g.held === 0) break;
      await new Promise<void>((r) => g.waiters.push(r));
    }
    g.held++;
    // First in line for the drain, so a quiesce() woken by the same drain sees us in flight.
    while (this.busy(g, vol.id)) await new Promise<void>((r) => g.drained.unshift(r));
    g.inflight++;
    const io: ExclusiveAccess = {
      read: (offset, length, dest) => this.readNow(vol, offset, length, dest) ?? Promise.resolve(),
      write: async (offset, src, fua) => {
        const hook = this.writeHooks.get(vol.id);
        if (hook) await hook(offset, src.length);
        await this.writeNow(vol, offset, src, fua);
      },
    };
    try {
      return await op(io);
    } finally {
      g.inflight--;
      const woken = --g.held === 0 ? g.waiters.splice(0) : [];
      if (woken.length === 0) {
        if (g.inflight === 0 && g.drained.length > 0) for (const d of g.drained.splice(0)) d();
        this.untrack(vol.id);
      } else {
        // The requests woken now will count on this gate: it must outlive them, or
        // a later exclusive on a fresh gate would not wait for them. The last of
        // them to finish untracks it.
        g.drained.push(() => {
          if (this.gates.get(vol.id) === g) this.untrack(vol.id);
        });
        for (const wake of woken) wake();
      }
    }
  }

  /** Starts serving a copy-on-write snapshot: its shared regions read from the origin; writes to either copy up first. */
  linkSnapshot(link: SnapshotLink): void {
    this.links.set(link.snapshot.id, link);
    this.refreshCowHooks(link.snapshot.id);
    this.refreshCowHooks(link.origin.id);
  }

  /** The snapshot reads its own extents only from now on (it was materialised, or is being taken apart). */
  unlinkSnapshot(snapshotId: number): void {
    const link = this.links.get(snapshotId);
    if (!link) return;
    this.links.delete(snapshotId);
    this.refreshCowHooks(snapshotId);
    this.refreshCowHooks(link.origin.id);
  }

  snapshotLink(snapshotId: number): SnapshotLink | undefined {
    return this.links.get(snapshotId);
  }

  /** Snapshots that still read regions of this volume. */
  dependentSnapshots(volumeId: number): SnapshotLink[] {
    return [...this.links.values()].filter((l) => l.origin.id === volumeId);
  }

  /**
   * The write hook of a volume in copy-on-write links: snapshots of it copy
   * up the regions a change touches (reading it as hosts see it, so a chain
   * resolves), then, if it is itself a snapshot, it copies its own regions up.
   */
  private refreshCowHooks(volumeId: number): void {
    const asOrigin = this.dependentSnapshots(volumeId);
    const asSnapshot = this.links.get(volumeId);
    if (asOrigin.length === 0 && !asSnapshot) {
      this.writeHooks.delete(volumeId);
      return;
    }
    this.writeHooks.set(volumeId, async (offset, length) => {
      for (const l of asOrigin) await l.ownRange(offset, length);
      if (asSnapshot) await asSnapshot.ownRange(offset, length);
    });
  }

  setWriteHook(volumeId: number, hook: WriteHook | null): void {
    if (hook) this.writeHooks.set(volumeId, hook);
    else this.writeHooks.delete(volumeId);
  }

  /** Requests to the volume still in flight, whether they came through its gate or before it existed. */
  private busy(g: Gate, volumeId: number): boolean {
    return g.inflight > 0 || this.ungated.has(volumeId);
  }

  private countUngated(volumeId: number, work: Promise<void>): Promise<void> {
    this.ungated.set(volumeId, (this.ungated.get(volumeId) ?? 0) + 1);
    const done = (): void => {
      const n = this.ungated.get(volumeId)! - 1;
      if (n > 0) {
        this.ungated.set(volumeId, n);
        return;
      }
      this.ungated.delete(volumeId);
      const g = this.gates.get(volumeId);
      if (g && g.inflight === 0 && g.drained.length > 0) for (const d of g.drained.splice(0)) d();
    };
    return work.then(done, (err: unknown) => {
      done();
      throw err;
    });
  }

  private async gated<T>(g: Gate, vol: VolumeHandle, op: () => Promise<T>): Promise<T> {
    while (g.held > 0) await new Promise<void>((r) => g.waiters.push(r));
    // Held across a revoke (switch, migration): the session that sent it no longer has the unit.
    if (vol.fence?.revoked) throw revokedError();
    g.inflight++;
    try {
      return await op();
    } finally {
      if (--g.inflight === 0 && g.drained.length > 0) for (const d of g.drained.splice(0)) d();
    }
  }
}
