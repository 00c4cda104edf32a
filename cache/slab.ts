/**
 * Cache memory: fixed-size slots carved from a few large SharedArrayBuffers,
 * allocated once. Shared so worker threads can read and write slots in place;
 * large so the OS commits pages only as slots are first used (RSS tracks what
 * the cache really holds); fixed so the hot path never allocates.
 */
export class Slab {
  readonly slotSize: number;
  readonly slots: number;
  private readonly chunks: SharedArrayBuffer[] = [];
  private readonly perChunk: number;
  private readonly views: (Buffer | undefined)[];
  private readonly free: number[] = [];

  constructor(bytes: number, slotSize: number) {
    this.slotSize = slotSize;
    this.slots = Math.max(1, Math.floor(bytes / slotSize));
    // 64 MiB chunks: big enough to be few, small enough to stay under any engine cap.
    this.perChunk = Math.max(1, Math.floor((64 * 1024 * 1024) / slotSize));
    for (let left = this.slots; left > 0; left -= this.perChunk) {
      this.chunks.push(new SharedArrayBuffer(Math.min(left, this.perChunk) * slotSize));
    }
    this.views = new Array<Buffer | undefined>(this.slots);
    // Pop from the end: hand out low slots first so touched memory stays dense.
    for (let i = this.slots - 1; i >= 0; i--) this.free.push(i);
  }

  get freeCount(): number {
    return this.free.length;
  }

  /** A free slot, or -1 when all are taken. */
  take(): number {
    return this.free.length > 0 ? this.free.pop()! : -1;
  }

  give(slot: number): void {
    this.free.push(slot);
  }

  /** The slot's bytes (a Buffer over the shared memory, made once per slot). */
  view(slot: number): Buffer {
    let v = this.views[slot];
    if (!v) {
      const c = Math.floor(slot / this.perChunk);
      v = Buffer.from(this.chunks[c]!, (slot - c * this.perChunk) * this.slotSize, this.slotSize);
      this.views[slot] = v;
    }
    return v;
  }
}
