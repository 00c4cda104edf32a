import { BlockgateError } from '../common/errors.js';
import type { ArrayFile } from '../disks/index.js';
import type { VolumeLayout } from '../mapper/index.js';

export type CachePolicy = 'none' | 'write-through' | 'write-back';

/** What the data path knows about one volume: its layout and how to treat writes. */
export interface VolumeHandle {
  id: number;
  layout: VolumeLayout;
  cachePolicy: CachePolicy;
}

/** Runs before a write lands (copy-on-write snapshots copy the old bytes out here). */
export type WriteHook = (offset: number, length: number) => Promise<void>;

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
  private readonly writeHooks = new Map<number, WriteHook>();

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
    const gate = this.gates.get(vol.id);
    if (gate) return this.gated(gate, () => this.readNow(vol, offset, length, dest));
    return this.readNow(vol, offset, length, dest);
  }

  write(vol: VolumeHandle, offset: number, src: Buffer, fua: boolean): Promise<void> {
    const gate = this.gates.get(vol.id);
    const hook = this.writeHooks.get(vol.id);
    const run = hook ? () => hook(offset, src.length).then(() => this.writeNow(vol, offset, src, fua)) : () => this.writeNow(vol, offset, src, fua);
    return gate ? this.gated(gate, run) : run();
  }

  private readNow(vol: VolumeHandle, offset: number, length: number, dest: Buffer): Promise<void> {
    const pending: Promise<void>[] = [];
    vol.layout.forEachSegment(offset, length, (arrayId, arrayOffset, len, at) => {
      pending.push(this.getArray(arrayId).read(dest, at, len, arrayOffset));
    });
    return pending.length === 1 ? pending[0]! : Promise.all(pending).then(() => undefined);
  }

  private async writeNow(vol: VolumeHandle, offset: number, src: Buffer, fua: boolean): Promise<void> {
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

  /** Drops any cached copy of these array bytes (they were rewritten below the cache). */
  invalidate(_arrayId: number, _offset: number, _length: number): void {
    // No cache yet: nothing held above the arrays.
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
    if (g.inflight > 0) await new Promise<void>((r) => g.drained.push(r));
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

  setWriteHook(volumeId: number, hook: WriteHook | null): void {
    if (hook) this.writeHooks.set(volumeId, hook);
    else this.writeHooks.delete(volumeId);
  }

  private async gated<T>(g: Gate, op: () => Promise<T>): Promise<T> {
    while (g.held > 0) await new Promise<void>((r) => g.waiters.push(r));
    g.inflight++;
    try {
      return await op();
    } finally {
      if (--g.inflight === 0 && g.drained.length > 0) for (const d of g.drained.splice(0)) d();
    }
  }
}
