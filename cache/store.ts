import { BlockgateError } from '../common/errors.js';
import { AllocState, type ArrayFile } from '../disks/index.js';
import type { VolumeLayout } from '../mapper/index.js';

export type CachePolicy = 'none' | 'write-through' | 'write-back';

/** What the data path knows about one volume: its layout and how to treat writes. */
export interface VolumeHandle {
  id: number;
  layout: VolumeLayout;
  cachePolicy: CachePolicy;
}

/**
 * The block store sits between the mapper and the arrays. Requests arrive in
 * volume terms, are translated by the layout, and are served per segment.
 */
export class BlockStore {
  private readonly arrays = new Map<number, ArrayFile>();

  addArray(a: ArrayFile): void {
    this.arrays.set(a.id, a);
  }

  removeArray(id: number): void {
    this.arrays.delete(id);
  }

  getArray(id: number): ArrayFile {
    const a = this.arrays.get(id);
    if (!a) throw new BlockgateError('IO_ERROR', `array ${id} is not attached`);
    return a;
  }

  listArrays(): ArrayFile[] {
    return [...this.arrays.values()];
  }

  read(vol: VolumeHandle, offset: number, length: number, dest: Buffer): Promise<void> {
    const pending: Promise<void>[] = [];
    vol.layout.forEachSegment(offset, length, (arrayId, arrayOffset, len, at) => {
      pending.push(this.getArray(arrayId).read(dest, at, len, arrayOffset));
    });
    return pending.length === 1 ? pending[0]! : Promise.all(pending).then(() => undefined);
  }

  async write(vol: VolumeHandle, offset: number, src: Buffer, fua: boolean): Promise<void> {
    const touched: ArrayFile[] = [];
    const pending: Promise<void>[] = [];
    vol.layout.forEachSegment(offset, src.length, (arrayId, arrayOffset, len, at) => {
      const a = this.getArray(arrayId);
      touched.push(a);
      pending.push(a.write(src, at, len, arrayOffset));
    });
    await (pending.length === 1 ? pending[0] : Promise.all(pending));
    if (fua) await Promise.all(touched.map((a) => a.flush()));
  }

  /** Every write to this volume completed before the call is durable when it resolves. */
  async flush(vol: VolumeHandle): Promise<void> {
    const ids = new Set(vol.layout.extents.map((e) => e.arrayId));
    await Promise.all([...ids].map((id) => this.getArray(id).flush()));
  }

  async flushAll(): Promise<void> {
    await Promise.all(this.listArrays().map((a) => a.flush()));
  }
}

// ---- allocation-aware commands (NBD TRIM, WRITE_ZEROES, BLOCK_STATUS, CACHE) ----
//
// Kept apart from read/write/flush above on purpose: those are being replaced
// by the RAM cache and worker engine. What these need from a cache: TRIM and
// WRITE_ZEROES must drop (or zero) cached blocks of the range before the map
// changes, and CACHE may fill the cache instead of reading through.

/** base:allocation flags, as NBD defines them. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;

/** One run of a volume's allocation status, in volume bytes. */
export interface StatusExtent {
  length: number;
  flags: number;
}

export interface ZeroOptions {
  /** Keep the blocks allocated (NBD NO_HOLE): report ZERO, not HOLE|ZERO. */
  noHole: boolean;
  /** Refuse with NOT_SUPPORTED rather than write zero bytes (NBD FAST_ZERO). */
  fast: boolean;
  fua: boolean;
}

const flagsOf = (state: AllocState): number =>
  state === AllocState.Data ? 0 : state === AllocState.Zero ? STATE_ZERO : STATE_HOLE | STATE_ZERO;

export interface BlockStore {
  trim(vol: VolumeHandle, offset: number, length: number, fua: boolean): Promise<void>;
  writeZeroes(vol: VolumeHandle, offset: number, length: number, opts: ZeroOptions): Promise<void>;
  blockStatus(vol: VolumeHandle, offset: number, length: number, maxExtents: number): StatusExtent[];
  allData(vol: VolumeHandle, offset: number, length: number): boolean;
  prefetch(vol: VolumeHandle, offset: number, length: number): Promise<void>;
  discard(arrayId: number, offset: number, length: number): void;
}

BlockStore.prototype.trim = async function trim(this: BlockStore, vol, offset, length, fua) {
  const touched = new Set<ArrayFile>();
  vol.layout.forEachSegment(offset, length, (arrayId, arrayOffset, len) => {
    const a = this.getArray(arrayId);
    a.trim(arrayOffset, len);
    touched.add(a);
  });
  if (fua) await Promise.all([...touched].map((a) => a.flush()));
};

BlockStore.prototype.writeZeroes = async function writeZeroes(this: BlockStore, vol, offset, length, opts) {
  const segs: [ArrayFile, number, number][] = [];
  vol.layout.forEachSegment(offset, length, (arrayId, arrayOffset, len) => segs.push([this.getArray(arrayId), arrayOffset, len]));
  await Promise.all(segs.map(([a, off, len]) => a.writeZeroes(off, len, opts.noHole, opts.fast)));
  if (opts.fua) await Promise.all([...new Set(segs.map((s) => s[0]))].map((a) => a.flush()));
};

/**
 * Allocation status of [offset, offset+length): equal neighbours merged, at
 * most `maxExtents` runs (the last may end before the range does; the caller
 * reports what it got).
 */
BlockStore.prototype.blockStatus = function blockStatus(this: BlockStore, vol, offset, length, maxExtents) {
  const out: StatusExtent[] = [];
  let full = false;
  vol.layout.forEachSegment(offset, length, (arrayId, arrayOffset, len) => {
    if (full) return;
    this.getArray(arrayId).allocationRuns(arrayOffset, len, (_off, runLen, state) => {
      if (full) return;
      const flags = flagsOf(state);
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += runLen;
      else if (out.length < maxExtents) out.push({ length: runLen, flags });
      else full = true;
    });
  });
  return out;
};

/** True when the whole range holds data (a READ can be one OFFSET_DATA chunk). */
BlockStore.prototype.allData = function allData(this: BlockStore, vol, offset, length) {
  // Every structured READ asks this: skip the segment walk for single-extent volumes.
  const ex = vol.layout.extents;
  if (ex.length === 1 && vol.layout.inRange(offset, length)) return this.getArray(ex[0]!.arrayId).alloc.allData(ex[0]!.offset + offset, length);
  let all = true;
  vol.layout.forEachSegment(offset, length, (arrayId, arrayOffset, len) => {
    if (all && !this.getArray(arrayId).alloc.allData(arrayOffset, len)) all = false;
  });
  return all;
};

/** CACHE: reads the range's data blocks through, 1 MiB at a time, so the next read is served warm. */
BlockStore.prototype.prefetch = async function prefetch(this: BlockStore, vol, offset, length) {
  const CHUNK = 1024 * 1024;
  const scratch = Buffer.allocUnsafe(Math.min(CHUNK, length));
  for (let pos = offset; pos < offset + length; pos += CHUNK) {
    const n = Math.min(CHUNK, offset + length - pos);
    if (!this.allData(vol, pos, n) && this.blockStatus(vol, pos, n, 2).every((e) => e.flags & STATE_ZERO)) continue;
    await this.read(vol, pos, n, scratch.subarray(0, n));
  }
};

/**
 * Space (re)allocated to a volume or freed: reads as zeroes from now on, and
 * that is durable when this returns. Control path only (it blocks briefly).
 */
BlockStore.prototype.discard = function discard(this: BlockStore, arrayId, offset, length) {
  this.getArray(arrayId).discardSync(offset, length);
};
