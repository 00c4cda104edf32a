import fs from 'node:fs';
import { BlockgateError } from '../common/errors.js';

/**
 * Allocation truth for one array: a state byte per ALLOC_BLOCK of the file.
 *
 * Granularity is 4 KiB: it is the preferred block size every client we serve
 * uses (qemu, libnbd, fio, ext4), so aligned writes never need padding, and the
 * map costs 256 KiB per GiB of array (held in RAM, persisted beside the array).
 * 64 KiB would shrink the map 16x but turn every 4 KiB write into a fresh block
 * into a 64 KiB padded write, and report holes 16x more coarsely.
 *
 * The map, not the file, decides what a read returns: UNALLOCATED and ZERO
 * blocks read as zeroes without touching the file. Node has no fallocate, so
 * trimmed or zeroed blocks keep their old bytes in the file (no hole punching);
 * since the map never says DATA for them again until they are rewritten in
 * full (or padded with zeroes), the old bytes are unreachable.
 */
export const ALLOC_BLOCK = 4096;

/**
 * The largest array the map supports: 4 TiB is a 1 GiB map held in RAM. An
 * 8 TiB map (2 Gi entries) went past what one read call may move and killed
 * the process with a native assertion at start; larger arrays are refused at
 * create and fail (that array only) at attach.
 */
export const MAX_ARRAY_SIZE = 4 * 1024 ** 4;
/** Sidecar reads and writes move at most this much per call. */
const IO_CHUNK = 64 * 1024 * 1024;

export const enum AllocState {
  /** Never written since the space was (re)allocated, or trimmed: a hole that reads as zeroes. */
  Unallocated = 0,
  /** Zeroed with NO_HOLE: reads as zeroes, but counts as allocated. */
  Zero = 1,
  /** Holds data written by the volume that owns this space. */
  Data = 2,
}

/** Sidecar file layout: a 4 KiB header, then one state byte per block. */
const HEADER = 4096;
const MAGIC = 'BGALLOC1';
/** Persistence unit: one page of the map covers 16 MiB of array. */
const PAGE = 4096;

export type RunVisitor = (offset: number, length: number, state: AllocState) => void;

/**
 * Crash safety (who writes what when):
 * - A write marks its blocks DATA in memory only when its bytes are in the
 *   file (so a concurrent read never sees stale bytes); a partial write into a
 *   non-DATA block first writes the whole block padded with zeroes, and reads
 *   of that block wait for it.
 * - The map reaches the disk only in `persist` steps that a flush runs AFTER
 *   the array's fdatasync, using a copy of the dirty pages taken BEFORE that
 *   fdatasync started. So a persisted DATA entry always covers bytes that are
 *   already durable (never another volume's leftovers), and every write a
 *   flush acknowledges has its DATA entry durable before the reply.
 * - `discardSync` (space handed to a new volume) persists at once, on the
 *   control path, and patches queued page copies so an older copy can never
 *   resurrect DATA over the discarded range.
 */
export class AllocationMap {
  readonly path: string;
  private states: Uint8Array;
  private fd = -1;
  /** Pages changed since the last snapshot. */
  private dirty = new Set<number>();
  /** Page copies taken by flushes that have not been written yet. */
  private readonly queued = new Set<Map<number, Uint8Array>>();
  /** Blocks being padded with zeroes by a partial write; reads and writes of them wait. */
  private readonly pending = new Map<number, Promise<void>>();
  /** Serialises page writes so they land in snapshot order. */
  private chain: Promise<void> = Promise.resolve();
  private handle: fs.promises.FileHandle | null = null;

  private constructor(path: string, blocks: number) {
    this.path = path;
    this.states = new Uint8Array(blocks);
  }

  get blocks(): number {
    return this.states.length;
  }

  /**
   * Opens the sidecar, or creates it. A missing (or empty) sidecar beside a
   * file that has blocks on disk is an array from before allocation tracking:
   * all DATA, so nothing written is lost. A sidecar that exists but cannot be
   * read whole (foreign magic, other block size, fewer entries than the
   * array has blocks, a read error) is refused: guessing would either hide
   * data (holes where data is) or expose leftovers (data where holes are).
   * Start-up / control path only.
   */
  static async open(path: string, arraySize: number, fileHasData: boolean): Promise<AllocationMap> {
    if (arraySize > MAX_ARRAY_SIZE) {
      throw new BlockgateError('BAD_REQUEST', `array size ${arraySize} exceeds the largest supported array (${MAX_ARRAY_SIZE} bytes: its allocation map is held in RAM)`);
    }
    const blocks = Math.ceil(arraySize / ALLOC_BLOCK);
    const m = new AllocationMap(path, blocks);
    let h: fs.promises.FileHandle;
    let existing = true;
    try {
      h = await fs.promises.open(path, fs.constants.O_RDWR);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw mapError(path, 'cannot open', e);
      existing = false;
      h = await fs.promises.open(path, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600).catch((e2: unknown) => {
        throw mapError(path, 'cannot create', e2);
      });
    }
    try {
      const size = existing ? (await h.stat()).size : 0;
      if (size === 0) {
        if (fileHasData) m.states.fill(AllocState.Data);
        await m.writeAll(h);
      } else {
        const head = Buffer.alloc(HEADER);
        await readFully(h, head, 0, HEADER, 0, path);
        if (head.toString('latin1', 0, 8) !== MAGIC || head.readUInt32LE(8) !== ALLOC_BLOCK) {
          throw new BlockgateError('IO_ERROR', `allocation map ${path} is corrupt (no ${MAGIC} header with ${ALLOC_BLOCK}-byte blocks)`, { reason: 'map-corrupt' });
        }
        const n = head.readUInt32LE(12);
        if (n < blocks || size < HEADER + blocks) {
          throw new BlockgateError('IO_ERROR', `allocation map ${path} is truncated: it covers ${Math.min(n, Math.max(0, size - HEADER))} blocks, the array has ${blocks}`, {
            reason: 'map-truncated',
          });
        }
        await readFully(h, m.states, 0, blocks, HEADER, path);
        // Keep the header's block count current (the array may have grown).
        if (n !== blocks && blocks > 0) await m.writeHeader(h);
      }
    } catch (e) {
      await h.close().catch(() => undefined);
      throw e;
    }
    m.fd = h.fd;
    m.handle = h;
    return m;
  }

  private async writeHeader(h: fs.promises.FileHandle): Promise<void> {
    const head = Buffer.alloc(HEADER);
    head.write(MAGIC, 0, 'latin1');
    head.writeUInt32LE(ALLOC_BLOCK, 8);
    head.writeUInt32LE(this.states.length, 12);
    await h.write(head, 0, HEADER, 0);
  }

  private async writeAll(h: fs.promises.FileHandle): Promise<void> {
    try {
      await this.writeHeader(h);
      for (let done = 0; done < this.states.length; ) {
        const { bytesWritten } = await h.write(this.states, done, Math.min(IO_CHUNK, this.states.length - done), HEADER + done);
        done += bytesWritten;
      }
      await h.datasync();
    } catch (e) {
      throw mapError(this.path, 'cannot write', e);
    }
  }

  /** Grows the map with the array; new space is unallocated. */
  async grow(arraySize: number): Promise<void> {
    const blocks = Math.ceil(arraySize / ALLOC_BLOCK);
    if (blocks <= this.states.length) return;
    const next = new Uint8Array(blocks);
    next.set(this.states);
    this.states = next;
    await this.writeAll(this.handle!);
  }

  state(block: number): AllocState {
    return this.states[block] as AllocState;
  }

  /** True when every block of [offset, offset+length) holds DATA and none is being padded. */
  allData(offset: number, length: number): boolean {
    if (length === 0) return true;
    const s = this.states;
    const last = Math.floor((offset + length - 1) / ALLOC_BLOCK);
    for (let b = Math.floor(offset / ALLOC_BLOCK); b <= last; b++) if (s[b] !== AllocState.Data) return false;
    return true;
  }

  /** Visits maximal runs of equal state over [offset, offset+length), clipped to the range. */
  runs(offset: number, length: number, visit: RunVisitor): void {
    if (length === 0) return;
    const s = this.states;
    const end = offset + length;
    let pos = offset;
    let b = Math.floor(offset / ALLOC_BLOCK);
    while (pos < end) {
      const st = s[b] as AllocState;
      let nb = b + 1;
      while (nb * ALLOC_BLOCK < end && s[nb] === st) nb++;
      const runEnd = Math.min(nb * ALLOC_BLOCK, end);
      visit(pos, runEnd - pos, st);
      pos = runEnd;
      b = nb;
    }
  }

  /** Sets the state of every block wholly inside [offset, offset+length); returns how many changed. */
  setFull(offset: number, length: number, state: AllocState): number {
    const first = Math.ceil(offset / ALLOC_BLOCK);
    const end = Math.floor((offset + length) / ALLOC_BLOCK);
    return this.setBlocks(first, end, state);
  }

  setBlocks(first: number, end: number, state: AllocState): number {
    const s = this.states;
    let changed = 0;
    for (let b = first; b < end; b++) {
      if (s[b] !== state) {
        s[b] = state;
        changed++;
        this.dirty.add(Math.floor(b / PAGE));
      }
    }
    return changed;
  }

  get hasDirty(): boolean {
    return this.dirty.size > 0;
  }

  // ---- partial-block padding -------------------------------------------

  get anyPending(): boolean {
    return this.pending.size > 0;
  }

  /** Resolves when no block of the range is being padded. */
  async waitPending(offset: number, length: number): Promise<void> {
    if (this.pending.size === 0 || length === 0) return;
    const last = Math.floor((offset + length - 1) / ALLOC_BLOCK);
    for (let b = Math.floor(offset / ALLOC_BLOCK); b <= last; b++) {
      const p = this.pending.get(b);
      if (p) await p.catch(() => undefined);
    }
  }

  isPending(offset: number, length: number): boolean {
    if (this.pending.size === 0 || length === 0) return false;
    const last = Math.floor((offset + length - 1) / ALLOC_BLOCK);
    for (let b = Math.floor(offset / ALLOC_BLOCK); b <= last; b++) if (this.pending.has(b)) return true;
    return false;
  }

  /** Marks `block` DATA now and gates it on `work` (the padded write). */
  beginPad(block: number, work: Promise<void>): void {
    this.setBlocks(block, block + 1, AllocState.Data);
    const p = work.finally(() => {
      if (this.pending.get(block) === p) this.pending.delete(block);
    });
    this.pending.set(block, p);
  }

  // ---- persistence --------------------------------------------------------

  /** Copies the dirty pages (call before the array's fdatasync starts). */
  snapshot(): Map<number, Uint8Array> {
    const snap = new Map<number, Uint8Array>();
    for (const page of this.dirty) {
      const from = page * PAGE;
      snap.set(page, this.states.slice(from, Math.min(from + PAGE, this.states.length)));
    }
    this.dirty.clear();
    return snap;
  }

  /**
   * Writes a snapshot once `after` (the array's fdatasync) has succeeded, then
   * syncs the sidecar. Steps run in the order they were queued.
   */
  persist(snap: Map<number, Uint8Array>, after: Promise<void>): Promise<void> {
    if (snap.size === 0) {
      const step = this.chain.then(() => after);
      this.chain = step.catch(() => undefined);
      return step;
    }
    this.queued.add(snap);
    const step = this.chain
      .then(() => after)
      .then(() => this.writePages(snap))
      .then(() => datasync(this.fd))
      .catch((e: unknown) => {
        // The pages never reached the disk: keep them dirty for the next flush.
        for (const page of snap.keys()) this.dirty.add(page);
        throw e;
      })
      .finally(() => this.queued.delete(snap));
    this.chain = step.catch(() => undefined);
    return step;
  }

  private async writePages(snap: Map<number, Uint8Array>): Promise<void> {
    for (const [page, bytes] of snap) await pwrite(this.fd, bytes, HEADER + page * PAGE);
  }

  /**
   * Returns the range to UNALLOCATED (or, for a thick owner, to ZERO: reads as
   * zeroes but stays allocated) and makes that durable before returning.
   * Control path only (space handed to a new volume, or freed): it blocks like
   * the control database's own synchronous commit does, and it must, because a
   * crash must never leave DATA over space a new owner can read.
   */
  discardSync(offset: number, length: number, state: AllocState.Unallocated | AllocState.Zero = AllocState.Unallocated): void {
    this.rewriteSync(offset, length, (bytes, lo, hi) => bytes.fill(state, lo, hi));
  }

  /**
   * Allocates the holes of a range (UNALLOCATED → ZERO), leaving data alone,
   * durably (a volume turned thick). Control path only. Both states read as
   * zeroes, so a write racing this sees the same bytes either way.
   */
  reserveSync(offset: number, length: number): void {
    this.rewriteSync(offset, length, (bytes, lo, hi) => {
      for (let i = lo; i < hi; i++) if (bytes[i] === AllocState.Unallocated) bytes[i] = AllocState.Zero;
    });
  }

  /** Applies `change` to the range in memory and in queued page copies (so an older copy cannot undo it), then writes and syncs it. */
  private rewriteSync(offset: number, length: number, change: (bytes: Uint8Array, lo: number, hi: number) => void): void {
    const first = Math.floor(offset / ALLOC_BLOCK);
    const end = Math.min(Math.ceil((offset + length) / ALLOC_BLOCK), this.states.length);
    if (end <= first) return;
    change(this.states, first, end);
    for (const snap of this.queued) {
      for (const [page, bytes] of snap) {
        const lo = Math.max(first, page * PAGE);
        const hi = Math.min(end, page * PAGE + bytes.length);
        if (lo < hi) change(bytes, lo - page * PAGE, hi - page * PAGE);
      }
    }
    const bytes = this.states.subarray(first, end);
    let done = 0;
    while (done < bytes.length) done += fs.writeSync(this.fd, bytes, done, bytes.length - done, HEADER + first + done);
    fs.fdatasyncSync(this.fd);
  }

  /** Writes every dirty page and syncs (shutdown). */
  async close(): Promise<void> {
    if (!this.handle) return;
    const snap = this.snapshot();
    await this.persist(snap, Promise.resolve()).catch(() => undefined);
    const h = this.handle;
    this.handle = null;
    this.fd = -1;
    await h.close();
  }

  /** Counts blocks per state (tests and the trace API). */
  census(): Record<'unallocated' | 'zero' | 'data', number> {
    const c = { unallocated: 0, zero: 0, data: 0 };
    for (const s of this.states) {
      if (s === AllocState.Data) c.data++;
      else if (s === AllocState.Zero) c.zero++;
      else c.unallocated++;
    }
    return c;
  }
}

/** Reads exactly `length` bytes in bounded calls; a short file is a truncated map. */
async function readFully(h: fs.promises.FileHandle, buf: Uint8Array, off: number, length: number, position: number, path: string): Promise<void> {
  for (let done = 0; done < length; ) {
    const { bytesRead } = await h.read(buf, off + done, Math.min(IO_CHUNK, length - done), position + done).catch((e: unknown) => {
      throw mapError(path, 'cannot read', e);
    });
    if (bytesRead === 0) throw new BlockgateError('IO_ERROR', `allocation map ${path} is truncated`, { reason: 'map-truncated' });
    done += bytesRead;
  }
}

/** A sidecar failure as a stable error: no space is NO_SPACE, the rest IO_ERROR. */
function mapError(path: string, what: string, e: unknown): BlockgateError {
  if (e instanceof BlockgateError) return e;
  const code = (e as NodeJS.ErrnoException).code;
  const noSpace = code === 'ENOSPC' || code === 'EDQUOT';
  return new BlockgateError(noSpace ? 'NO_SPACE' : 'IO_ERROR', `${what} allocation map ${path}: ${code ?? (e as Error).message}`, { errno: code, reason: 'map-unreadable' });
}

function pwrite(fd: number, buf: Uint8Array, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number): void => {
      fs.write(fd, buf, done, buf.length - done, position + done, (err, n) => {
        if (err) return reject(new BlockgateError('IO_ERROR', `allocation map write failed: ${err.code ?? err.message}`));
        if (done + n < buf.length) return step(done + n);
        resolve();
      });
    };
    step(0);
  });
}

function datasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.fdatasync(fd, (err) => (err ? reject(new BlockgateError('IO_ERROR', `allocation map sync failed: ${err.code ?? err.message}`)) : resolve()));
  });
}
