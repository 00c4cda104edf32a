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
