/**
 * Cache memory: fixed-size slots carved from a few large buffers, allocated
 * once. SharedArrayBuffers when an I/O route's worker threads read and write
 * slots in place, plain ArrayBuffers otherwise: V8 copies in and out of
 * shared memory with relaxed atomics, about twice the cost of memcpy (4 KiB
 * copy out 760 vs 400 ns; docs/bench/findings.md, session 6). Large so the
 * OS commits pages only as slots are first used (RSS tracks what the cache
 * really holds); fixed so the hot path never allocates.
 */
import { Worker } from 'node:worker_threads';

/** The smallest page size the memory is committed in. */
const PAGE = 4096;
/** Bytes a commit-ahead request covers: a few ms of the worker's faults, so a take never waits long behind one. */
const COMMIT_STEP = 4 * 1024 * 1024;

export class Slab {
  readonly slotSize: number;
  readonly slots: number;
  private readonly chunks: (ArrayBuffer | SharedArrayBuffer)[] = [];
  private readonly perChunk: number;
  private readonly views: (Buffer | undefined)[];
  private readonly free: number[] = [];
  /** 1 once a slot's pages are committed (see take). */
  private readonly committed: Uint8Array;
  /** Fresh slots to keep committed ahead of the lowest one taken (0: none; shared memory only). */
  private readonly aheadSlots: number;
  /** Slots below this have been given to the committer (or taken). */
  private asked = 0;
  private committer: Worker | null = null;

  /**
   * `commitAhead`: bytes of never-used slots a worker thread commits ahead of
   * use (shared memory only), so a fresh slot's page faults fall on that
   * thread instead of the event loop's hot path.
   */
  constructor(bytes: number, slotSize: number, shared = true, commitAhead = 0) {
    this.slotSize = slotSize;
    this.slots = Math.max(1, Math.floor(bytes / slotSize));
    // 64 MiB chunks: big enough to be few, small enough to stay under any engine cap.
    this.perChunk = Math.max(1, Math.floor((64 * 1024 * 1024) / slotSize));
    for (let left = this.slots; left > 0; left -= this.perChunk) {
      const n = Math.min(left, this.perChunk) * slotSize;
      this.chunks.push(shared ? new SharedArrayBuffer(n) : new ArrayBuffer(n));
    }
    this.views = new Array<Buffer | undefined>(this.slots);
    this.committed = new Uint8Array(this.slots);
    this.aheadSlots = shared ? Math.min(this.slots, Math.ceil(commitAhead / slotSize)) : 0;
    // Pop from the end: hand out low slots first so touched memory stays dense.
    for (let i = this.slots - 1; i >= 0; i--) this.free.push(i);
  }

  get freeCount(): number {
    return this.free.length;
  }

  /**
   * A free slot, or -1 when all are taken. The first time a slot is handed
   * out all its pages are committed at once: the cache fills a slot page by
   * page, and a page fault on fresh memory costs ~20 µs on a VM (guest and
   * host fault). Left to the writes, a fresh volume's 4 KiB random writes
   * took those faults one at a time, scattered over the run on the event loop;
   * 16 in one loop when the slot is first used measured far cheaper in total
   * although they are more faults (fresh 4k write QD32: 14k → 27–30k IOPS;
   * docs/bench/findings.md, session 5). With commit-ahead the worker has
   * usually faulted them in already and these writes cost nothing (fresh 4k
   * write QD1: the faults were 17 % of the loop's busy time; session 10).
   */
  take(): number {
    const s = this.free.length > 0 ? this.free.pop()! : -1;
    if (s >= 0 && this.committed[s] === 0) {
      this.committed[s] = 1;
      // The slot is ours alone and still all zero: a write per page commits it without changing a byte.
      const v = this.view(s);
      for (let o = 0; o < v.length; o += PAGE) v[o] = 0;
      // Asked again once half the window is used: a message per half window, not per slot.
      if (this.aheadSlots > 0 && this.asked - s <= this.aheadSlots >> 1) this.askAhead(s);
    }
    return s;
  }

  /**
   * Never-used slots are handed out lowest first (freed ones are reused
   * before them), so the next fresh slots are the ones after s: the
   * committer faults them in, a step at a time, up to a window past s.
   */
  private askAhead(s: number): void {
    if (this.asked <= s) this.asked = s + 1;
    const want = Math.min(this.slots, s + 1 + this.aheadSlots);
    const step = Math.max(1, Math.floor(COMMIT_STEP / this.slotSize));
    while (this.asked < want) {
      const c = Math.floor(this.asked / this.perChunk);
      const end = Math.min(want, this.asked + step, (c + 1) * this.perChunk);
      const off = (this.asked - c * this.perChunk) * this.slotSize;
      this.commitWorker().postMessage({ sab: this.chunks[c], offset: off, length: (end - this.asked) * this.slotSize });
      this.asked = end;
    }
  }

  private commitWorker(): Worker {
    if (!this.committer) {
      this.committer = new Worker(new URL('./slab-commit-worker.js', import.meta.url));
      // Commit-ahead is a hint: it never keeps the process alive, and a lost worker only costs the faults back.
      this.committer.unref();
      this.committer.on('error', () => {});
    }
    return this.committer;
  }

  async close(): Promise<void> {
    const w = this.committer;
    this.committer = null;
    if (w) await w.terminate();
  }

  give(slot: number): void {
    this.free.push(slot);
  }

  /** The slot's bytes (a Buffer over the slab's memory, made once per slot). */
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
