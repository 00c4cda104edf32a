import fs from 'node:fs';
import nodePath from 'node:path';
import { BlockgateError } from '../common/errors.js';

/**
 * Allocation truth for one array: a state per ALLOC_BLOCK of the file.
 *
 * Granularity is 4 KiB: it is the preferred block size every client we serve
 * uses (qemu, libnbd, fio, ext4), so aligned writes never need padding. 64 KiB
 * would shrink the map 16x but turn every 4 KiB write into a fresh block into
 * a 64 KiB padded write, and report holes 16x more coarsely.
 *
 * The map, not the file, decides what a read returns: UNALLOCATED and ZERO
 * blocks read as zeroes without touching the file. Node has no fallocate, so
 * trimmed or zeroed blocks keep their old bytes in the file (no hole punching);
 * since the map never says DATA for them again until they are rewritten in
 * full (or padded with zeroes), the old bytes are unreachable.
 *
 * Cost grows with what is written, not with the array: the states live in
 * leaves of LEAF_BLOCKS (4 KiB of states, 16 MiB of array), made on the first
 * change inside them. A leaf that was never made holds its array's default
 * state (UNALLOCATED, or DATA for an array from before allocation tracking).
 * A 64 TiB array with nothing written costs a header in RAM and on disk.
 */
export const ALLOC_BLOCK = 4096;

/**
 * The largest array the map supports. RAM and sidecar grow with the leaves
 * written, so the limit is only where arithmetic stays exact (block numbers
 * in doubles, leaf numbers in the sidecar's 32-bit tags) with a wide margin;
 * the file system's own limit (ext4: 16 TiB) is usually met first.
 */
export const MAX_ARRAY_SIZE = 1024 ** 5;
/** Sidecar reads move at most this much per call. */
const IO_CHUNK = 16 * 1024 * 1024;

export const enum AllocState {
  /** Never written since the space was (re)allocated, or trimmed: a hole that reads as zeroes. */
  Unallocated = 0,
  /** Zeroed with NO_HOLE: reads as zeroes, but counts as allocated. */
  Zero = 1,
  /** Holds data written by the volume that owns this space. */
  Data = 2,
}

/** Blocks per leaf: a leaf is one 4 KiB page of states and covers 16 MiB of array. */
const LEAF = 4096;
/**
 * Sidecar layout (BGALLOC2): a 4 KiB header, then slots appended in the
 * order leaves were first persisted. A slot is an 8-byte tag ('BGLF', leaf
 * number) and the leaf's states. A slot, once given to a leaf, stays its own.
 */
const HEADER = 4096;
const MAGIC = 'BGALLOC2';
/** The first format: one state byte per block after the header, covering the whole array. */
const MAGIC_V1 = 'BGALLOC1';
const TAG = 8;
const SLOT = TAG + LEAF;
const TAG_MAGIC = 0x464c4742; // 'BGLF' little-endian
/** The leaf number of a slot given up (a first persist torn before its tag landed). */
const NO_LEAF = 0xffffffff;

export type RunVisitor = (offset: number, length: number, state: AllocState) => void;

/**
 * Crash safety (who writes what when):
 * - A write marks its blocks DATA in memory only when its bytes are in the
 *   file (so a concurrent read never sees stale bytes); a partial write into a
 *   non-DATA block first writes the whole block padded with zeroes, and reads
 *   of that block wait for it.
 * - The map reaches the disk only in `persist` steps that a flush runs AFTER
 *   the array's fdatasync, using a copy of the dirty leaves taken BEFORE that
 *   fdatasync started. So a persisted DATA entry always covers bytes that are
 *   already durable (never another volume's leftovers), and every write a
 *   flush acknowledges has its DATA entry durable before the reply.
 * - `discardSync` (space handed to a new volume) persists at once, on the
 *   control path, and patches queued leaf copies so an older copy can never
 *   resurrect DATA over the discarded range.
 * - Slots: a leaf first persisted gets a new slot at the end of the sidecar,
 *   tag and states in one write. Every byte of a torn slot is safe: a slot
 *   whose tag did not land is ignored (its leaf was never persisted, so its
 *   durable state is the default), and states stored XOR the leaf's default,
 *   so bytes that did not land (zeroes) read as the default, the leaf's
 *   durable state before its first persist. The header's slot count lags one
 *   persist step (it is written in the step after the slots it counts were
 *   synced); a file shorter than it counts is a truncated map and is refused.
 */
export class AllocationMap {
  readonly path: string;
  private size: number;
  /** Leaves made so far, by leaf number; an absent leaf holds its default state. */
  private readonly leaves = new Map<number, Uint8Array>();
  /** Leaves below this number default to DATA (an array from before tracking); the rest to UNALLOCATED. */
  private legacyLeaves = 0;
  /** Sidecar slot of every leaf persisted at least once. */
  private readonly slots = new Map<number, number>();
  private nextSlot = 0;
  /** Slots handed out by flushes whose sync has not succeeded yet. */
  private readonly unsynced = new Set<number>();
  /** The slot count the sidecar's header says. */
  private headerSlots = 0;
  /** One-entry lookup cache: I/O tends to stay inside one 16 MiB leaf. */
  private lastKey = -1;
  private lastLeaf: Uint8Array | undefined = undefined;
  private fd = -1;
  /** Leaves changed since the last snapshot. */
  private dirty = new Set<number>();
  /** Leaf copies taken by flushes that have not been written yet. */
  private readonly queued = new Set<Map<number, Uint8Array>>();
  /** Blocks being padded with zeroes by a partial write; reads and writes of them wait. */
  private readonly pending = new Map<number, Promise<void>>();
  /** Serialises sidecar writes so they land in snapshot order. */
  private chain: Promise<void> = Promise.resolve();
  private handle: fs.promises.FileHandle | null = null;

  private constructor(path: string, blocks: number) {
    this.path = path;
    this.size = blocks;
  }

  get blocks(): number {
    return this.size;
  }

  /** Leaves held in RAM (each LEAF bytes): what the map costs, for tests and the scale bench. */
  get leafCount(): number {
    return this.leaves.size;
  }

  /**
   * Opens the sidecar, or creates it. A missing (or empty) sidecar beside a
   * file that has blocks on disk is an array from before allocation tracking:
   * all DATA, so nothing written is lost. A first-format sidecar is read and
   * rewritten in the current one (a new file renamed over it, so a crash
   * leaves one or the other whole). A sidecar that cannot be read whole
   * (foreign magic, other block size, fewer entries than the array has
   * blocks, a read error) is refused: guessing would either hide data (holes
   * where data is) or expose leftovers (data where holes are).
   * Start-up / control path only.
   */
  static async open(path: string, arraySize: number, fileHasData: boolean): Promise<AllocationMap> {
    if (arraySize > MAX_ARRAY_SIZE) {
      throw new BlockgateError('BAD_REQUEST', `array size ${arraySize} exceeds the largest supported array (${MAX_ARRAY_SIZE} bytes)`);
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
        if (fileHasData) m.legacyLeaves = Math.ceil(blocks / LEAF);
        await m.writeHeader(h);
        await h.datasync().catch((e: unknown) => {
          throw mapError(path, 'cannot write', e);
        });
      } else {
        const head = Buffer.alloc(HEADER);
        await readFully(h, head, 0, HEADER, 0, path);
        const magic = head.toString('latin1', 0, 8);
        if (magic === MAGIC_V1 && head.readUInt32LE(8) === ALLOC_BLOCK) {
          await m.loadV1(h, head, size);
          await h.close();
          h = await m.rewrite();
        } else if (magic === MAGIC && head.readUInt32LE(8) === ALLOC_BLOCK && head.readUInt32LE(12) === LEAF) {
          await m.load(h, head, size);
          // Keep the header's block count current (the array may have grown).
          if (Number(head.readBigUInt64LE(16)) !== blocks) await m.writeHeader(h);
        } else {
          throw new BlockgateError('IO_ERROR', `allocation map ${path} is corrupt (no ${MAGIC} header with ${ALLOC_BLOCK}-byte blocks)`, { reason: 'map-corrupt' });
        }
      }
    } catch (e) {
      await h.close().catch(() => undefined);
      throw e;
    }
    m.fd = h.fd;
    m.handle = h;
    return m;
  }

  /** Reads the slots: every one the header counts must be there and well formed; later ones may be torn. */
  private async load(h: fs.promises.FileHandle, head: Buffer, size: number): Promise<void> {
    const counted = head.readUInt32LE(28);
    this.legacyLeaves = head.readUInt32LE(24);
    const have = Math.floor((size - HEADER) / SLOT);
    if (have < counted) {
      throw new BlockgateError('IO_ERROR', `allocation map ${this.path} is truncated: it holds ${have} of its ${counted} leaves`, { reason: 'map-truncated' });
    }
    const leafEnd = Math.ceil(this.size / LEAF);
    const per = Math.floor(IO_CHUNK / SLOT);
    const buf = Buffer.allocUnsafe(per * SLOT);
    const torn: number[] = [];
    for (let first = 0; first < have; first += per) {
      const n = Math.min(per, have - first);
      await readFully(h, buf, 0, n * SLOT, HEADER + first * SLOT, this.path);
      for (let i = 0; i < n; i++) {
        const slot = first + i;
        const at = i * SLOT;
        const leaf = buf.readUInt32LE(at + 4);
        const tagged = buf.readUInt32LE(at) === TAG_MAGIC;
        if (tagged && leaf === NO_LEAF) continue;
        if (!tagged || leaf >= leafEnd || this.leaves.has(leaf)) {
          // Past the count a slot may be one whose tag never landed: its leaf was never persisted.
          if (slot >= counted && !tagged) {
            torn.push(slot);
            continue;
          }
          throw new BlockgateError('IO_ERROR', `allocation map ${this.path} is corrupt (slot ${slot} is not a leaf of this array)`, { reason: 'map-corrupt' });
        }
        const states = new Uint8Array(LEAF);
        states.set(buf.subarray(at + TAG, at + SLOT));
        const def = this.defaultOf(leaf);
        if (def !== 0) for (let j = 0; j < LEAF; j++) states[j]! ^= def;
        this.leaves.set(leaf, states);
        this.slots.set(leaf, slot);
      }
    }
    // A partial slot at the end is a first persist that never finished: give it up too.
    this.nextSlot = Math.ceil((size - HEADER) / SLOT);
    if (this.nextSlot > have) torn.push(have);
    this.headerSlots = counted;
    // Torn slots are marked given up before later slots get counted past them.
    if (torn.length > 0) {
      const mark = Buffer.alloc(TAG);
      mark.writeUInt32LE(TAG_MAGIC, 0);
      mark.writeUInt32LE(NO_LEAF, 4);
      try {
        for (const slot of torn) await writeFully(h, mark, HEADER + slot * SLOT);
        await h.datasync();
      } catch (e) {
        throw mapError(this.path, 'cannot write', e);
      }
    }
  }

  /** Reads a first-format sidecar (a byte per block): leaves with anything but holes are kept. */
  private async loadV1(h: fs.promises.FileHandle, head: Buffer, size: number): Promise<void> {
    const n = head.readUInt32LE(12);
    const blocks = this.size;
    if (n < blocks || size < HEADER + blocks) {
      throw new BlockgateError('IO_ERROR', `allocation map ${this.path} is truncated: it covers ${Math.min(n, Math.max(0, size - HEADER))} blocks, the array has ${blocks}`, {
        reason: 'map-truncated',
      });
    }
    const buf = new Uint8Array(IO_CHUNK);
    for (let done = 0; done < blocks; ) {
      const len = Math.min(IO_CHUNK, blocks - done);
      await readFully(h, buf, 0, len, HEADER + done, this.path);
      for (let off = 0; off < len; off += LEAF) {
        const part = buf.subarray(off, Math.min(off + LEAF, len));
        if (!part.some((s) => s !== AllocState.Unallocated)) continue;
        const states = new Uint8Array(LEAF);
        states.set(part);
        this.leaves.set((done + off) / LEAF, states);
      }
      done += len;
    }
  }

  /**
   * Writes every leaf into a new sidecar and renames it over the old one
   * (format migration). Returns the handle on the new file.
   */
  private async rewrite(): Promise<fs.promises.FileHandle> {
    const tmp = `${this.path}.new`;
    const h = await fs.promises.open(tmp, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600).catch((e: unknown) => {
      throw mapError(tmp, 'cannot create', e);
    });
    try {
      let slot = 0;
      const slotBuf = Buffer.alloc(SLOT);
      for (const [leaf, states] of [...this.leaves].sort((a, b) => a[0] - b[0])) {
        this.encode(leaf, states, slotBuf);
        await writeFully(h, slotBuf, HEADER + slot * SLOT);
        this.slots.set(leaf, slot++);
      }
      this.nextSlot = slot;
      await this.writeHeader(h);
      await h.datasync();
      await fs.promises.rename(tmp, this.path);
      const dir = await fs.promises.open(nodePath.dirname(this.path), 'r');
      await dir.sync().finally(() => dir.close());
    } catch (e) {
      await h.close().catch(() => undefined);
      await fs.promises.rm(tmp, { force: true });
      throw mapError(this.path, 'cannot rewrite', e);
    }
    return h;
  }

  private async writeHeader(h: fs.promises.FileHandle): Promise<void> {
    const head = this.header();
    await writeFully(h, head, 0);
  }

  private header(): Buffer {
    const head = Buffer.alloc(HEADER);
    head.write(MAGIC, 0, 'latin1');
    head.writeUInt32LE(ALLOC_BLOCK, 8);
    head.writeUInt32LE(LEAF, 12);
    head.writeBigUInt64LE(BigInt(this.size), 16);
    head.writeUInt32LE(this.legacyLeaves, 24);
    this.headerSlots = this.syncedSlots();
    head.writeUInt32LE(this.headerSlots, 28);
    return head;
  }

  /** A slot image of `states`: tag, then states XOR the leaf's default (so zeroes that never landed read as the default). */
  private encode(leaf: number, states: Uint8Array, out: Buffer): void {
    out.writeUInt32LE(TAG_MAGIC, 0);
    out.writeUInt32LE(leaf, 4);
    out.set(states, TAG);
    const def = this.defaultOf(leaf);
    if (def !== 0) for (let j = TAG; j < SLOT; j++) out[j]! ^= def;
  }

  /** Grows the map with the array; new space is unallocated. Control path. */
  async grow(arraySize: number): Promise<void> {
    const blocks = Math.ceil(arraySize / ALLOC_BLOCK);
    if (blocks <= this.size) return;
    this.size = blocks;
    try {
      await this.writeHeader(this.handle!);
      await this.handle!.datasync();
    } catch (e) {
      throw mapError(this.path, 'cannot write', e);
    }
  }

  /** Slots below this are all synced: what the header may count. */
  private syncedSlots(): number {
    let n = this.nextSlot;
    for (const s of this.unsynced) if (s < n) n = s;
    return n;
  }

  private defaultOf(leaf: number): AllocState {
    return leaf < this.legacyLeaves ? AllocState.Data : AllocState.Unallocated;
  }

  private leafAt(leaf: number): Uint8Array | undefined {
    if (leaf === this.lastKey) return this.lastLeaf;
    const l = this.leaves.get(leaf);
    this.lastKey = leaf;
    this.lastLeaf = l;
    return l;
  }

  private makeLeaf(leaf: number): Uint8Array {
    const l = new Uint8Array(LEAF);
    const def = this.defaultOf(leaf);
    if (def !== 0) l.fill(def);
    this.leaves.set(leaf, l);
    this.lastKey = leaf;
    this.lastLeaf = l;
    return l;
  }

  state(block: number): AllocState {
    const leaf = Math.floor(block / LEAF);
    const l = this.leafAt(leaf);
    return l ? (l[block - leaf * LEAF] as AllocState) : this.defaultOf(leaf);
  }

  /** True when every block of [offset, offset+length) holds DATA. */
  allData(offset: number, length: number): boolean {
    return this.every(offset, length, true);
  }

  /** True when no block of [offset, offset+length) holds DATA (it all reads as zeroes). */
  noData(offset: number, length: number): boolean {
    return this.every(offset, length, false);
  }

  /** Whether every block of the range holds DATA (`data`), or none does. */
  private every(offset: number, length: number, data: boolean): boolean {
    if (length === 0) return true;
    const endBlock = Math.floor((offset + length - 1) / ALLOC_BLOCK) + 1;
    for (let b = Math.floor(offset / ALLOC_BLOCK); b < endBlock; ) {
      const leaf = Math.floor(b / LEAF);
      const base = leaf * LEAF;
      const stop = Math.min(base + LEAF, endBlock);
      const l = this.leafAt(leaf);
      if (!l) {
        if ((this.defaultOf(leaf) === AllocState.Data) !== data) return false;
      } else {
        for (let i = b - base, e = stop - base; i < e; i++) if ((l[i] === AllocState.Data) !== data) return false;
      }
      b = stop;
    }
    return true;
  }

  /** Visits maximal runs of equal state over [offset, offset+length), clipped to the range. */
  runs(offset: number, length: number, visit: RunVisitor): void {
    if (length === 0) return;
    const end = offset + length;
    const endBlock = Math.ceil(end / ALLOC_BLOCK);
    let pos = offset;
    let b = Math.floor(offset / ALLOC_BLOCK);
    while (pos < end) {
      const st = this.state(b);
      let nb = this.runEnd(b, endBlock, st);
      while (nb < endBlock && this.state(nb) === st) nb = this.runEnd(nb, endBlock, st);
      const runEnd = Math.min(nb * ALLOC_BLOCK, end);
      visit(pos, runEnd - pos, st);
      pos = runEnd;
      b = nb;
    }
  }

  /** The first block after `b` (whose state is `st`), within b's leaf and below `endBlock`, not in state `st`. */
  private runEnd(b: number, endBlock: number, st: AllocState): number {
    const leaf = Math.floor(b / LEAF);
    const base = leaf * LEAF;
    const stop = Math.min(base + LEAF, endBlock);
    const l = this.leafAt(leaf);
    if (!l) return stop;
    let i = b - base + 1;
    const e = stop - base;
    while (i < e && l[i] === st) i++;
    return base + i;
  }

  /** Sets the state of every block wholly inside [offset, offset+length); returns how many changed. */
  setFull(offset: number, length: number, state: AllocState): number {
    const first = Math.ceil(offset / ALLOC_BLOCK);
    const end = Math.floor((offset + length) / ALLOC_BLOCK);
    return this.setBlocks(first, end, state);
  }

  setBlocks(first: number, end: number, state: AllocState): number {
    let changed = 0;
    end = Math.min(end, this.size);
    for (let b = first; b < end; ) {
      const leaf = Math.floor(b / LEAF);
      const base = leaf * LEAF;
      const stop = Math.min(base + LEAF, end);
      let l = this.leafAt(leaf);
      if (!l && this.defaultOf(leaf) !== state) l = this.makeLeaf(leaf);
      if (l) {
        let n = 0;
        for (let i = b - base, e = stop - base; i < e; i++) {
          if (l[i] !== state) {
            l[i] = state;
            n++;
          }
        }
        if (n > 0) {
          changed += n;
          this.dirty.add(leaf);
        }
      }
      b = stop;
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

  /** Copies the dirty leaves (call before the array's fdatasync starts). */
  snapshot(): Map<number, Uint8Array> {
    const snap = new Map<number, Uint8Array>();
    for (const leaf of this.dirty) snap.set(leaf, this.leaves.get(leaf)!.slice());
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
      .then(() => this.writeLeaves(snap))
      .then(() => datasync(this.fd))
      .then(() => {
        for (const leaf of snap.keys()) this.unsynced.delete(this.slots.get(leaf)!);
      })
      .catch((e: unknown) => {
        // The leaves never reached the disk: keep them dirty for the next flush.
        for (const leaf of snap.keys()) this.dirty.add(leaf);
        throw e;
      })
      .finally(() => this.queued.delete(snap));
    this.chain = step.catch(() => undefined);
    return step;
  }

  private async writeLeaves(snap: Map<number, Uint8Array>): Promise<void> {
    // The count of slots synced by earlier steps rides along: it lands with this step's sync.
    if (this.syncedSlots() !== this.headerSlots) await pwrite(this.fd, this.header(), 0);
    for (const [leaf, states] of snap) {
      let slot = this.slots.get(leaf);
      if (slot === undefined) {
        slot = this.nextSlot++;
        this.slots.set(leaf, slot);
        this.unsynced.add(slot);
      }
      const buf = Buffer.allocUnsafe(SLOT);
      this.encode(leaf, states, buf);
      await pwrite(this.fd, buf, HEADER + slot * SLOT);
    }
  }

  /**
   * Returns the range to UNALLOCATED (or, for a thick owner, to ZERO: reads as
   * zeroes but stays allocated) and makes that durable before returning.
   * Control path only (space handed to a new volume, or freed): it blocks like
   * the control database's own synchronous commit does, and it must, because a
   * crash must never leave DATA over space a new owner can read.
   */
  discardSync(offset: number, length: number, state: AllocState.Unallocated | AllocState.Zero = AllocState.Unallocated): void {
    this.rewriteSync(offset, length, state === AllocState.Unallocated, (l, lo, hi) => l.fill(state, lo, hi));
  }

  /**
   * Allocates the holes of a range (UNALLOCATED → ZERO), leaving data alone,
   * durably (a volume turned thick). Control path only. Both states read as
   * zeroes, so a write racing this sees the same bytes either way.
   */
  reserveSync(offset: number, length: number): void {
    this.rewriteSync(offset, length, false, (l, lo, hi) => {
      for (let i = lo; i < hi; i++) if (l[i] === AllocState.Unallocated) l[i] = AllocState.Zero;
    });
  }

  /**
   * Applies `change` to the range in memory and in queued leaf copies (so an
   * older copy cannot undo it), then writes and syncs the changed states.
   * `toHoles` says the change only makes holes: a leaf never made (or never
   * persisted) with an UNALLOCATED default is then already right, on disk too.
   */
  private rewriteSync(offset: number, length: number, toHoles: boolean, change: (states: Uint8Array, lo: number, hi: number) => void): void {
    const first = Math.floor(offset / ALLOC_BLOCK);
    const end = Math.min(Math.ceil((offset + length) / ALLOC_BLOCK), this.size);
    if (end <= first) return;
    let wrote = false;
    for (let b = first; b < end; ) {
      const leaf = Math.floor(b / LEAF);
      const base = leaf * LEAF;
      const stop = Math.min(base + LEAF, end);
      const def = this.defaultOf(leaf);
      let l = this.leafAt(leaf);
      if (!l && toHoles && def === AllocState.Unallocated) {
        b = stop;
        continue;
      }
      l ??= this.makeLeaf(leaf);
      const lo = b - base;
      const hi = stop - base;
      change(l, lo, hi);
      for (const snap of this.queued) {
        const copy = snap.get(leaf);
        if (copy) change(copy, lo, hi);
      }
      let slot = this.slots.get(leaf);
      if (slot === undefined && toHoles && def === AllocState.Unallocated) {
        b = stop;
        continue;
      }
      // States are stored XOR the leaf's default (see encode).
      if (slot === undefined) {
        // First persist: the rest of the slot stays what is durable (the default: zeroes once encoded).
        slot = this.nextSlot++;
        this.slots.set(leaf, slot);
        const buf = Buffer.alloc(SLOT);
        buf.writeUInt32LE(TAG_MAGIC, 0);
        buf.writeUInt32LE(leaf, 4);
        for (let i = lo; i < hi; i++) buf[TAG + i] = l[i]! ^ def;
        writeSyncFully(this.fd, buf, HEADER + slot * SLOT);
      } else {
        const bytes = Buffer.allocUnsafe(hi - lo);
        for (let i = lo; i < hi; i++) bytes[i - lo] = l[i]! ^ def;
        writeSyncFully(this.fd, bytes, HEADER + slot * SLOT + TAG + lo);
      }
      wrote = true;
      b = stop;
    }
    if (wrote) fs.fdatasyncSync(this.fd);
  }

  /** Writes every dirty leaf and the header, and syncs (shutdown). */
  async close(): Promise<void> {
    if (!this.handle) return;
    const snap = this.snapshot();
    await this.persist(snap, Promise.resolve()).catch(() => undefined);
    const h = this.handle;
    if (this.syncedSlots() !== this.headerSlots) {
      await writeFully(h, this.header(), 0)
        .then(() => h.datasync())
        .catch(() => undefined);
    }
    this.handle = null;
    this.fd = -1;
    await h.close();
  }

  /** Counts blocks per state (tests and the trace API). */
  census(): Record<'unallocated' | 'zero' | 'data', number> {
    const c = { unallocated: 0, zero: 0, data: 0 };
    for (const [leaf, l] of this.leaves) {
      const n = Math.min(LEAF, this.size - leaf * LEAF);
      for (let i = 0; i < n; i++) {
        if (l[i] === AllocState.Data) c.data++;
        else if (l[i] === AllocState.Zero) c.zero++;
      }
    }
    const legacyEnd = Math.min(Math.ceil(this.size / LEAF), this.legacyLeaves);
    for (let leaf = 0; leaf < legacyEnd; leaf++) if (!this.leaves.has(leaf)) c.data += Math.min(LEAF, this.size - leaf * LEAF);
    c.unallocated = this.size - c.data - c.zero;
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

async function writeFully(h: fs.promises.FileHandle, buf: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < buf.length; ) {
    const { bytesWritten } = await h.write(buf, done, buf.length - done, position + done);
    done += bytesWritten;
  }
}

function writeSyncFully(fd: number, buf: Uint8Array, position: number): void {
  for (let done = 0; done < buf.length; ) done += fs.writeSync(fd, buf, done, buf.length - done, position + done);
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
