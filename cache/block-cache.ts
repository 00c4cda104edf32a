import { LRUCache } from 'lru-cache';
import { BlockgateError } from '../common/errors.js';
import type { ArrayFile } from '../disks/index.js';
import { ALLOC_BLOCK, LibuvRoute, type IoRoute } from '../disks/index.js';
import { Slab } from './slab.js';

/**
 * How a write treats the cache:
 * - back: the cached copy becomes dirty and is written to the array later;
 * - through: cached copies are updated (whole blocks are cached clean), the
 *   caller writes the array itself before acknowledging;
 * - none: only copies already cached are updated (so every reader stays
 *   coherent), nothing new is cached; the caller writes the array.
 */
export type WriteMode = 'back' | 'through' | 'none';

export interface CacheOptions {
  /** Bytes of block memory (the bound; pinned and dirty blocks count against it). */
  size: number;
  /** Cache block size, a power of two between 4 KiB and 1 MiB. */
  blockSize?: number | undefined;
  /**
   * Dirty bytes (pages not yet on the array) at which write-back writes go
   * to the array instead of the cache. Default size/2. Slots holding dirty
   * pages are bounded too, to 3/4 of the cache (see DIRTY_SLOT_SHARE).
   */
  dirtyLimit?: number | undefined;
  /** Dirty bytes above which write-back runs flat out. Default dirtyLimit/2. */
  dirtyBackground?: number | undefined;
  /** Age after which a dirty block is written back even without pressure. */
  writebackDelayMs?: number | undefined;
  /** Write-backs in flight at once (each up to 1 MiB, coalesced from neighbours). */
  writebackConcurrency?: number | undefined;
  /**
   * Test hook (fault point `writeback-hold`, docs/faults.md): background
   * write-back (by age or pressure) does not run, so a test reaches the dirty
   * limit on any machine. Explicit flushes are not held.
   */
  writebackHold?: boolean | undefined;
  /** Share of the cache pinned ranges may take. Default 0.5. */
  maxPinnedFraction?: number | undefined;
  /** Slot I/O route (libuv pool by default; see docs/engine.md). */
  route?: IoRoute | undefined;
  /**
   * Write-back writes this long or longer go around the cache for the blocks
   * they cover whole (`writeAround`), and reads of runs of blocks not in
   * memory this long or longer go straight to the array. Default 256 KiB;
   * Infinity: never.
   */
  writeAroundMin?: number | undefined;
}

export interface CacheStats {
  capacityBytes: number;
  blockSize: number;
  cachedBytes: number;
  /** Bytes of dirty pages: written to the cache, not yet to the array. */
  dirtyBytes: number;
  /** Bytes of the blocks holding them (slots eviction cannot take until written back). */
  dirtyBlockBytes: number;
  pinnedBytes: number;
  /** Block lookups served from memory. */
  hits: number;
  /** Block lookups that had to go to the array (a resident block missing pages counts too). */
  misses: number;
  /** Clean blocks dropped to make room. */
  evictions: number;
  /** Blocks written back (a coalesced run counts each block). */
  writebacks: number;
  writebackBytes: number;
  writebackErrors: number;
  /** Array reads into slots: a preadv of neighbouring whole blocks, or the missing pages of one block. */
  loads: number;
  /** Pieces served straight between the array and the request (policy none, or no free slot). */
  bypassReads: number;
  bypassWrites: number;
  /** Misses answered with zeroes from the allocation map (never-written ranges). */
  holeReads: number;
  invalidations: number;
  /** Write-back writes made straight to the array because dirty bytes were at the limit. */
  dirtyBypasses: number;
  route: string;
}

export const DEFAULT_CACHE_SIZE = 512 * 1024 * 1024;
export const DEFAULT_BLOCK_SIZE = 64 * 1024;
/**
 * Reads and writes that do not go through a slot (policy none, write-through
 * and FUA writes, no slot free) of up to this many bytes go through a worker
 * route via staging memory: the route costs the event loop 3–4 µs a call
 * where libuv's pool costs 12–17 (docs/engine.md, "Miss route"), and the
 * copy in or out of the staging slot well under a microsecond per 4 KiB.
 * Larger ones keep libuv's pool and no copy.
 */
const STAGE_SIZE = 64 * 1024;
/** Staging slots (4 MiB, committed as used); with all in use, calls take libuv's pool. */
const STAGE_SLOTS = 64;
/**
 * Never-used cache memory a worker commits ahead of the slots taken (Slab):
 * 16 MiB is ~50 ms of that thread's faults at ~12 µs a page here, several
 * times what a fresh volume's random writes take in that time.
 */
const COMMIT_AHEAD = 16 * 1024 * 1024;
/**
 * Share of the cache's slots that blocks holding dirty pages may take: the
 * rest stays evictable, so reads and new blocks always find room.
 */
const DIRTY_SLOT_SHARE = 0.75;
/** Why 256 KiB: docs/bench/findings.md, session 7 ("Large writes around the cache"). */
export const DEFAULT_WRITE_AROUND_MIN = 256 * 1024;

/** Cache keys: array id in the high bits, block index in the low 32 (2^21 arrays, 2^32 blocks each). */
const KEY_MUL = 2 ** 32;
/** Validity and dirty state are kept per allocation block (4 KiB page) of a cache block. */
const PAGE_SHIFT = 12;
const PAGE = 1 << PAGE_SHIFT;
const noop = (): void => undefined;

class Block {
  readonly key: number;
  readonly arrayId: number;
  readonly index: number;
  readonly slot: number;
  readonly buf: Buffer;
  /** Cache sequence when the block came into memory or last started loading pages (see directWrite). */
  born: number;
  /** Set while pages of the slot are being filled from the array; never rejects. */
  loading: Promise<void> | null = null;
  /** Pages holding the block's bytes (the rest of the slot is leftover memory, never served or written back). */
  validPages = 0;
  /** Every page valid: the hit paths skip the page bitmap. */
  full = false;
  /** Set while the slot is being written back; never rejects. */
  writing: Promise<void> | null = null;
  dirty = false;
  /** Dirty pages (set bits of the block's words in the cache's page bitmap). */
  dirtyPages = 0;
  /** Hull of the dirty bytes inside the block (which 4 KiB pages are dirty is in the cache's page bitmap). */
  lo = 0;
  hi = 0;
  dirtySince = 0;
  /** Write generation of the last change, and of the last change known to be on the array. */
  dirtyGen = 0;
  cleanGen = 0;
  pins = 0;
  inLru = false;
  gone = false;
  /** Forgotten while loading: drop the whole block when the load lands. */
  doomed = false;
  /** The array changed under a load in flight: its pages stay invalid when it lands (the next reader loads them again). */
  stale = false;

  constructor(key: number, arrayId: number, index: number, slot: number, buf: Buffer, born: number) {
    this.key = key;
    this.arrayId = arrayId;
    this.index = index;
    this.slot = slot;
    this.buf = buf;
    this.born = born;
  }
}

/**
 * The RAM block cache, keyed by physical location (array, block), so every
 * volume, host and connection mapping the same array bytes sees one copy.
 *
 * Every resident block is in exactly one of two places: `lru` (clean, idle,
 * unpinned — the only blocks eviction may take) or `held` (loading, dirty,
 * being written back, or pinned).
 *
 * A resident block may be partly valid: validity is kept per 4 KiB page. A
 * write into memory the block does not hold yet takes a slot and marks just
 * the pages it covers valid and dirty — no fill, no read of the rest (only a
 * page it covers in part is read first). A read of invalid pages loads just
 * those (the array zero-fills what its map says was never written). Dirty
 * pages are always valid, and write-back writes dirty pages only.
 *
 * Write ordering: changes to a block wait while it loads or is being written
 * back, so a write-back's bytes never change under it, a load never
 * overwrites newer data, and a read after an acknowledged write sees it.
 */
export class BlockCache {
  readonly blockSize: number;
  readonly capacity: number;
  private readonly shift: number;
  private readonly slab: Slab;
  /** Staging memory for slotless I/O through a worker route; null on a route of libuv's pool. */
  private readonly staging: Slab | null;
  private readonly lru: LRUCache<number, Block>;
  private readonly held = new Map<number, Block>();
  /**
   * Blocks (resident or not) that a map-changing command (WRITE_ZEROES, TRIM)
   * owns until its change lands: reads, writes, loads and pins of them wait on
   * the promise, so nothing caches, dirties or writes back bytes from before
   * the change over it.
   */
  private readonly changing = new Map<number, Promise<void>>();
  /** Dirty blocks in the order they became dirty (oldest first). */
  private readonly dirty = new Map<number, Block>();
  private readonly arrays: (id: number) => ArrayFile;
  readonly route: IoRoute;

  private readonly dirtyLimit: number;
  private readonly dirtyBackground: number;
  private readonly delayMs: number;
  private readonly holdWriteback: boolean;
  private readonly concurrency: number;
  private readonly maxPinned: number;
  private readonly maxRun: number;
  readonly writeAroundMin: number;
  /**
   * One bit per 4 KiB page of every slot, set while the page holds bytes the
   * array does not have yet: write-back writes exactly these pages, so bytes
   * nobody wrote (a hole zeroed or trimmed under a dirty block, say) are never
   * written back over the array as data.
   */
  private readonly pageBits: Uint32Array;
  /** One bit per 4 KiB page of every slot, set while the page holds the block's bytes. */
  private readonly validBits: Uint32Array;
  private readonly pageWords: number;
  private readonly pagesPerBlock: number;
  /**
   * Where a run load (loadRun) reads the array bytes of pages already valid
   * between the ones it needs, and drops them: one read for the run instead of
   * one per gap. Concurrent loads share it; nobody reads it.
   */
  private readonly scratch: Buffer;

  private gen = 0;
  private seq = 0;
  private active = 0;
  private timer: NodeJS.Timeout | null = null;
  /** Dirty pages, in bytes. */
  private dirtyBytes = 0;
  /** Slots holding dirty pages, in bytes. */
  private dirtyBlockBytes = 0;
  /** Dirty block bytes at which writes go to the array (slots for clean blocks must remain). */
  private readonly maxDirtyBlocks: number;
  /** Dirty block bytes at which write-back runs flat out whatever the dirty pages (see underPressure). */
  private readonly slotPressure: number;
  private pinnedBytes = 0;
  private readonly counters = {
    hits: 0,
    misses: 0,
    evictions: 0,
    writebacks: 0,
    writebackBytes: 0,
    writebackErrors: 0,
    loads: 0,
    bypassReads: 0,
    bypassWrites: 0,
    holeReads: 0,
    invalidations: 0,
    dirtyBypasses: 0,
  };

  constructor(arrays: (id: number) => ArrayFile, opts: CacheOptions) {
    const bs = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    if (!(bs >= 4096 && bs <= 1 << 20 && (bs & (bs - 1)) === 0)) {
      throw new BlockgateError('BAD_REQUEST', `cache block size ${bs} must be a power of two from 4K to 1M`);
    }
    if (!(opts.size >= bs * 16)) throw new BlockgateError('BAD_REQUEST', `cache size ${opts.size} is too small (at least 16 blocks of ${bs})`);
    this.blockSize = bs;
    this.shift = Math.log2(bs);
    this.arrays = arrays;
    this.route = opts.route ?? new LibuvRoute();
    this.slab = new Slab(opts.size, bs, this.route.sharedMemory, COMMIT_AHEAD);
    this.staging = this.route.sharedMemory ? new Slab(STAGE_SLOTS * STAGE_SIZE, STAGE_SIZE, true) : null;
    this.capacity = this.slab.slots * bs;
    // Never reached on its own (resident blocks never outnumber slots); eviction is explicit, below.
    this.lru = new LRUCache<number, Block>({ max: this.slab.slots + 1 });
    this.dirtyLimit = Math.max(bs * 4, opts.dirtyLimit ?? Math.floor(this.capacity / 2));
    this.dirtyBackground = Math.min(this.dirtyLimit, opts.dirtyBackground ?? Math.floor(this.dirtyLimit / 2));
    this.maxDirtyBlocks = Math.max(bs * 4, Math.floor(this.capacity * DIRTY_SLOT_SHARE));
    this.slotPressure = this.maxDirtyBlocks - Math.floor(this.maxDirtyBlocks / 8);
    this.delayMs = opts.writebackDelayMs ?? 500;
    this.holdWriteback = opts.writebackHold === true;
    this.concurrency = opts.writebackConcurrency ?? 8;
    this.maxPinned = Math.floor(this.capacity * (opts.maxPinnedFraction ?? 0.5));
    this.maxRun = Math.max(1, (1 << 20) >> this.shift);
    this.writeAroundMin = opts.writeAroundMin ?? DEFAULT_WRITE_AROUND_MIN;
    this.pagesPerBlock = bs >> PAGE_SHIFT;
    this.pageWords = Math.ceil(this.pagesPerBlock / 32);
    this.pageBits = new Uint32Array(this.slab.slots * this.pageWords);
    this.validBits = new Uint32Array(this.slab.slots * this.pageWords);
    this.scratch = this.route.sharedMemory ? Buffer.from(new SharedArrayBuffer(bs)) : Buffer.allocUnsafeSlow(bs);
  }

  stats(): CacheStats {
    return {
      capacityBytes: this.capacity,
      blockSize: this.blockSize,
      cachedBytes: (this.lru.size + this.held.size) * this.blockSize,
      dirtyBytes: this.dirtyBytes,
      dirtyBlockBytes: this.dirtyBlockBytes,
      pinnedBytes: this.pinnedBytes,
      ...this.counters,
      route: this.route.name,
    };
  }

  // ---- lookup and placement ---------------------------------------------

  private lookup(key: number): Block | undefined {
    return this.lru.get(key) ?? this.held.get(key);
  }

  private peek(key: number): Block | undefined {
    return this.lru.peek(key) ?? this.held.get(key);
  }

  /** A slot for a new block: a free one, else the least recently used clean block's. -1 when none. */
  private takeSlot(): number {
    const s = this.slab.take();
    if (s >= 0) return s;
    const victim = this.lru.pop();
    if (!victim) return -1;
    victim.inLru = false;
    victim.gone = true;
    this.counters.evictions++;
    return victim.slot;
  }

  private newBlock(arrayId: number, index: number): Block | null {
    const slot = this.takeSlot();
    if (slot < 0) return null;
    const b = new Block(arrayId * KEY_MUL + index, arrayId, index, slot, this.slab.view(slot), ++this.seq);
    const o = slot * this.pageWords;
    this.validBits.fill(0, o, o + this.pageWords);
    this.held.set(b.key, b);
    return b;
  }

  /** Moves a block out of eviction's reach. */
  private hold(b: Block): void {
    if (b.inLru) {
      this.lru.delete(b.key);
      b.inLru = false;
      this.held.set(b.key, b);
    }
  }

  /** Puts an idle clean unpinned block back where eviction can take it. */
  private settle(b: Block): void {
    if (b.gone || b.inLru || b.dirty || b.loading || b.writing || b.pins > 0) return;
    this.held.delete(b.key);
    this.lru.set(b.key, b);
    b.inLru = true;
  }

  private drop(b: Block): void {
    if (b.gone) return;
    if (b.inLru) this.lru.delete(b.key);
    else this.held.delete(b.key);
    b.inLru = false;
    if (b.dirty) this.clean(b);
    if (b.pins > 0) {
      b.pins = 0;
      this.pinnedBytes -= this.blockSize;
    }
    b.gone = true;
    this.slab.give(b.slot);
  }

  // ---- loads ------------------------------------------------------------

  /**
   * Fills freshly taken blocks (neighbours, in order) from the array with one
   * vectored read. `then` runs when the bytes are in, before anyone else can
   * touch the slots. Concurrent readers of these blocks wait on `loading`
   * and share this one read.
   */
  private load(a: ArrayFile, blocks: Block[], then: (() => void) | null): Promise<void> {
    const bs = this.blockSize;
    const bufs = blocks.map((b) => b.buf as Uint8Array);
    this.counters.loads++;
    const p = this.route.readv(a, bufs, blocks.length * bs, blocks[0]!.index * bs).then(
      () => {
        if (then) then();
        for (const b of blocks) this.landed(b, 0, this.pagesPerBlock, -1, -1);
      },
      (err: unknown) => {
        for (const b of blocks) {
          b.loading = null;
          this.drop(b);
        }
        throw err;
      },
    );
    const shared = p.then(noop, noop);
    for (const b of blocks) b.loading = shared;
    return p;
  }

  /**
   * Loads the invalid pages of [p0, p1) of a resident block, except those in
   * [skip0, skip1), one read per run of neighbours. Valid pages (dirty ones
   * among them) are never read over. The caller has checked the block is not
   * loading; a write-back may be in flight (it reads only dirty pages, which
   * this does not touch).
   */
  private loadPages(a: ArrayFile, b: Block, p0: number, p1: number, skip0: number, skip1: number): Promise<void> {
    const origin = b.index * this.blockSize;
    const reads: Promise<void>[] = [];
    for (let p = p0; p < p1; ) {
      if ((p >= skip0 && p < skip1) || this.pageValid(b, p)) {
        p++;
        continue;
      }
      let q = p + 1;
      while (q < p1 && !(q >= skip0 && q < skip1) && !this.pageValid(b, q)) q++;
      const at = p << PAGE_SHIFT;
      const len = Math.min(q << PAGE_SHIFT, a.size - origin) - at;
      if (len > 0) reads.push(this.route.readv(a, [b.buf.subarray(at, at + len)], len, origin + at));
      p = q;
    }
    this.counters.loads++;
    this.counters.misses++;
    this.hold(b);
    // Bytes a direct write lands while this read is in flight may be older on the array than in it (see directWrite).
    b.born = ++this.seq;
    const p = (reads.length === 1 ? reads[0]! : Promise.all(reads)).then(
      () => this.landed(b, p0, p1, skip0, skip1),
      (err: unknown) => {
        this.pagesFailed(b);
        throw err;
      },
    );
    b.loading = p.then(noop, noop);
    return p;
  }

  /**
   * Loads, with one vectored read, the invalid pages that array bytes [s, e)
   * touch in `run`: neighbouring resident blocks, each idle (not loading) and
   * partly valid. Pages already valid between the first and the last invalid
   * one are read into scratch and dropped, never over the slot (a dirty one
   * is newer than the array). A large read over blocks that 4 KiB writes left
   * partly valid is then one read, not one per block and gap.
   */
  private loadRun(a: ArrayFile, run: Block[], s: number, e: number): Promise<void> {
    const bs = this.blockSize;
    const scratch = this.scratch;
    const bufs: Uint8Array[] = [];
    let from = -1;
    let to = -1;
    let gap = 0;
    for (const b of run) {
      const origin = b.index * bs;
      const p1 = this.endPage(b, e);
      for (let p = this.firstPage(b, s); p < p1; ) {
        const valid = this.pageValid(b, p);
        let q = p + 1;
        while (q < p1 && this.pageValid(b, q) === valid) q++;
        if (valid) {
          if (from >= 0) gap += (q - p) << PAGE_SHIFT;
        } else {
          if (from < 0) from = origin + (p << PAGE_SHIFT);
          for (; gap > 0; gap -= scratch.length) bufs.push(gap >= scratch.length ? scratch : scratch.subarray(0, gap));
          gap = 0;
          bufs.push(b.buf.subarray(p << PAGE_SHIFT, q << PAGE_SHIFT));
          to = origin + (q << PAGE_SHIFT);
        }
        p = q;
      }
    }
    if (to > a.size) {
      // The array ends inside the last page read.
      const last = bufs[bufs.length - 1]!;
      bufs[bufs.length - 1] = last.subarray(0, last.byteLength - (to - a.size));
      to = a.size;
    }
    this.counters.loads++;
    this.counters.misses += run.length;
    // Bytes a direct write lands while this read is in flight may be older on the array than in it (see directWrite).
    const born = ++this.seq;
    for (const b of run) {
      this.hold(b);
      b.born = born;
    }
    const p = this.route.readv(a, bufs, to - from, from).then(
      () => {
        for (const b of run) this.landed(b, this.firstPage(b, s), this.endPage(b, e), -1, -1);
      },
      (err: unknown) => {
        for (const b of run) this.pagesFailed(b);
        throw err;
      },
    );
    const shared = p.then(noop, noop);
    for (const b of run) b.loading = shared;
    return p;
  }

  /** The first page of b that array bytes from s on touch (s before b's end). */
  private firstPage(b: Block, s: number): number {
    return (Math.max(s, b.index * this.blockSize) - b.index * this.blockSize) >>> PAGE_SHIFT;
  }

  /** One past the last page of b that array bytes before e touch (e after b's start). */
  private endPage(b: Block, e: number): number {
    const origin = b.index * this.blockSize;
    return ((Math.min(e, origin + this.blockSize) - origin - 1) >>> PAGE_SHIFT) + 1;
  }

  /** A load of some pages of resident block b failed: its other pages are still good (some may be dirty), so it stays; these stay invalid. */
  private pagesFailed(b: Block): void {
    b.loading = null;
    b.stale = false;
    if (b.doomed) this.drop(b);
    else this.settle(b);
  }

  /** A load of pages [p0, p1) minus [skip0, skip1) landed in b. */
  private landed(b: Block, p0: number, p1: number, skip0: number, skip1: number): void {
    b.loading = null;
    if (b.stale) b.stale = false;
    else if (skip0 < 0) this.setValid(b, p0, p1);
    else {
      this.setValid(b, p0, Math.min(p1, skip0));
      this.setValid(b, Math.max(p0, skip1), p1);
    }
    if (b.doomed || (b.validPages === 0 && !b.dirty && b.pins === 0)) this.drop(b);
    else {
      this.settle(b);
      // A dirty block skipped by write-back while it loaded: make sure someone comes back for it.
      if (b.dirty) this.kick();
    }
  }

  private pageValid(b: Block, p: number): boolean {
    return ((this.validBits[b.slot * this.pageWords + (p >>> 5)]! >>> (p & 31)) & 1) !== 0;
  }

  /** Marks pages [p0, p1) of b valid. */
  private setValid(b: Block, p0: number, p1: number): void {
    if (b.full) return;
    const bits = this.validBits;
    const o = b.slot * this.pageWords;
    for (let p = p0; p < p1; p++) {
      const w = o + (p >>> 5);
      const m = 1 << (p & 31);
      if ((bits[w]! & m) === 0) {
        bits[w]! |= m;
        b.validPages++;
      }
    }
    if (b.validPages === this.pagesPerBlock) b.full = true;
  }

  /** True when every page that bytes [lo, hi) of b touch is valid. */
  private spanValid(b: Block, lo: number, hi: number): boolean {
    if (b.full) return true;
    for (let p = lo >>> PAGE_SHIFT, last = (hi - 1) >>> PAGE_SHIFT; p <= last; p++) if (!this.pageValid(b, p)) return false;
    return true;
  }

  /**
   * A write-back write of bytes [lo, hi) of b: a page it covers only in part
   * must be valid first (it goes to the array whole). Returns the load of
   * such pages, or null when none is needed.
   */
  private loadEdges(a: ArrayFile, b: Block, lo: number, hi: number): Promise<void> | null {
    if (b.full || hi <= lo) return null;
    const first = lo >>> PAGE_SHIFT;
    const last = (hi - 1) >>> PAGE_SHIFT;
    const head = ((lo & (PAGE - 1)) !== 0 || hi < (first + 1) << PAGE_SHIFT) && !this.pageValid(b, first);
    const tail = last !== first && (hi & (PAGE - 1)) !== 0 && !this.pageValid(b, last);
    if (!head && !tail) return null;
    return this.loadPages(a, b, first, last + 1, head ? first + 1 : first, tail ? last : last + 1);
  }

  // ---- reads ------------------------------------------------------------

  /**
   * Reads array bytes [pos, pos+len) into dest at dOff. Returns null when
   * served wholly from memory (no promise on the hit path). With `cacheable`
   * false (policy none) misses go straight to `dest` and are not kept.
   */
  read(a: ArrayFile, pos: number, len: number, dest: Buffer, dOff: number, cacheable: boolean): Promise<void> | null {
    // An empty range touches no block (the per-block loops below would still visit the one holding pos).
    if (len <= 0) return null;
    const bs = this.blockSize;
    const end = pos + len;
    const base = a.id * KEY_MUL;
    let idx = Math.floor(pos / bs);
    let pending: Promise<void>[] | null = null;
    let missFrom = -1;
    // Neighbouring resident blocks partly valid over the span, gathered for one load of their missing pages (loadRun).
    let part: Block[] | null = null;
    let partFrom = 0;
    for (let start = idx * bs; start < end; idx++, start += bs) {
      const busy = this.changing.size > 0 ? this.changing.get(base + idx) : undefined;
      let b = busy === undefined ? this.lookup(base + idx) : undefined;
      if (missFrom >= 0 && (b !== undefined || busy !== undefined)) {
        // The misses before this block take their slots first, and one may be this block's own (it is clean
        // and idle, so eviction may take it): a block evicted here is a miss too, never used through its old
        // slot, which a miss's load is filling by then.
        const m = this.readMisses(a, missFrom, idx, pos, end, dest, dOff, cacheable);
        if (m) (pending ??= []).push(m);
        missFrom = -1;
        if (b !== undefined && b.gone) b = undefined;
      }
      const s = start > pos ? start : pos;
      const e = start + bs < end ? start + bs : end;
      const partly = b !== undefined && !b.loading && !b.full && !this.spanValid(b, s - start, e - start);
      if (part !== null && (!partly || part.length === this.maxRun)) {
        (pending ??= []).push(this.readRun(a, part, partFrom, start, pos, dest, dOff, cacheable));
        part = null;
      }
      if (b === undefined && busy === undefined) {
        if (missFrom < 0) missFrom = idx;
        continue;
      }
      if (partly) {
        if (part === null) {
          part = [];
          partFrom = s;
        }
        part.push(b!);
        continue;
      }
      // A block being changed, or loading (an in-flight miss: share its read), is read again once that is over.
      const wait = busy ?? b!.loading;
      if (wait) {
        const retry = (): Promise<void> | undefined => this.read(a, s, e - s, dest, dOff + s - pos, cacheable) ?? undefined;
        (pending ??= []).push(wait.then(retry));
        continue;
      }
      b!.buf.copy(dest, dOff + s - pos, s - start, e - start);
      this.counters.hits++;
    }
    if (missFrom >= 0) {
      const m = this.readMisses(a, missFrom, idx, pos, end, dest, dOff, cacheable);
      if (m) (pending ??= []).push(m);
    }
    if (part !== null) (pending ??= []).push(this.readRun(a, part, partFrom, end, pos, dest, dOff, cacheable));
    if (pending === null) return null;
    return pending.length === 1 ? pending[0]! : Promise.all(pending).then(noop);
  }

  /** Loads the missing pages of `run` over array bytes [s, e) (loadRun), then delivers them from memory. */
  private readRun(a: ArrayFile, run: Block[], s: number, e: number, pos: number, dest: Buffer, dOff: number, cacheable: boolean): Promise<void> {
    return this.loadRun(a, run, s, e).then(() => this.read(a, s, e - s, dest, dOff + s - pos, cacheable) ?? undefined);
  }

  /** Blocks [i0, i1) are not in memory; deliver their part of [pos, end) (null: delivered already). */
  private readMisses(a: ArrayFile, i0: number, i1: number, pos: number, end: number, dest: Buffer, dOff: number, cacheable: boolean): Promise<void> | null {
    const bs = this.blockSize;
    const s = Math.max(pos, i0 * bs);
    const e = Math.min(end, i1 * bs);
    if (a.holeRange(s, e - s)) {
      // Never written: zeroes from the map, with no slot taken, no read and nothing cached (a fresh
      // volume's reads would otherwise fill the cache with zero blocks, each slot's pages touched).
      this.counters.holeReads++;
      dest.fill(0, dOff + s - pos, dOff + e - pos);
      return null;
    }
    this.counters.misses += i1 - i0;
    // A large read of blocks not in memory (a stream) goes around the cache like a large write: straight into
    // dest, no slots taken (on fresh memory each costs its pages' first touch), nothing else evicted.
    if (e - s >= this.writeAroundMin) return this.readStraight(a, dest, dOff + s - pos, e - s, s);
    const blocks: Block[] = [];
    if (cacheable) {
      for (let i = i0; i < i1; i++) {
        const b = this.newBlock(a.id, i);
        if (!b) break;
        blocks.push(b);
      }
    }
    if (blocks.length === 0) return this.readStraight(a, dest, dOff + s - pos, e - s, s);
    const cachedEnd = Math.min(e, (i0 + blocks.length) * bs);
    const loaded = this.load(a, blocks, () => {
      // Copy out while the load's completion still owns the slots.
      for (let p = s; p < cachedEnd; ) {
        const b = blocks[Math.floor(p / bs) - i0]!;
        const q = Math.min(cachedEnd, (b.index + 1) * bs);
        b.buf.copy(dest, dOff + p - pos, p - b.index * bs, q - b.index * bs);
        p = q;
      }
    });
    if (cachedEnd === e) return loaded;
    // No slot for the rest (everything else dirty, pinned or busy): read it straight through.
    return Promise.all([loaded, this.readStraight(a, dest, dOff + cachedEnd - pos, e - cachedEnd, cachedEnd)]).then(noop);
  }

  /** Array bytes [pos, pos+len) into dest, no slot kept: staged through a worker route when small and plain (STAGE_SIZE). */
  private readStraight(a: ArrayFile, dest: Buffer, dOff: number, len: number, pos: number): Promise<void> {
    this.counters.bypassReads++;
    const st = this.staging;
    // Holes and a failed array are the array's to answer; so is anything large.
    if (st === null || len > STAGE_SIZE || a.fault !== null || !a.plainRange(pos, len)) return a.read(dest, dOff, len, pos);
    const slot = st.take();
    if (slot < 0) return a.read(dest, dOff, len, pos);
    const v = st.view(slot);
    return this.staged(st, slot, this.route.readv(a, [len === STAGE_SIZE ? v : v.subarray(0, len)], len, pos), () => v.copy(dest, dOff, 0, len));
  }

  /** The staging slot goes back once the call is over, whatever its outcome (after `then` on success). */
  private staged(st: Slab, slot: number, call: Promise<void>, then?: () => void): Promise<void> {
    return call.then(
      () => {
        then?.();
        st.give(slot);
      },
      (err: unknown) => {
        st.give(slot);
        throw err;
      },
    );
  }

  /** src bytes onto the array at pos, no slot involved: staged through a worker route when small and aligned (STAGE_SIZE). */
  private writeStraight(a: ArrayFile, src: Buffer, sOff: number, len: number, pos: number): Promise<void> {
    const st = this.staging;
    // Unaligned writes are padded by the array, and over a pad in flight they wait: the array's to make.
    if (st === null || len > STAGE_SIZE || a.fault !== null || !a.plainWrite(pos, len)) return a.write(src, sOff, len, pos);
    const slot = st.take();
    if (slot < 0) return a.write(src, sOff, len, pos);
    const v = st.view(slot);
    src.copy(v, 0, sOff, sOff + len);
    return this.staged(st, slot, this.route.writev(a, [len === STAGE_SIZE ? v : v.subarray(0, len)], len, pos));
  }

  // ---- writes -----------------------------------------------------------

  /** Moves whenever a block comes into memory or starts loading pages (see directWrite). */
  get sequence(): number {
    return this.seq;
  }

  /** True when a write-back write must go to the array now (noteDirtyBypass) instead of adding dirty bytes. */
  get overDirtyLimit(): boolean {
    return this.dirtyBytes >= this.dirtyLimit || this.dirtyBlockBytes >= this.maxDirtyBlocks;
  }

  noteDirtyBypass(): void {
    this.counters.dirtyBypasses++;
  }

  /**
   * Applies src[sOff, sOff+len) to array bytes at pos, per `mode`. Returns
   * null when done at once. In 'back' mode the write is complete (in memory
   * or, lacking a slot, on the array) when this settles; in the other modes
   * the caller then writes the array with directWrite().
   */
  write(a: ArrayFile, pos: number, src: Buffer, sOff: number, len: number, mode: WriteMode): Promise<void> | null {
    // An empty write (NBD allows length 0) changes nothing: left to the loop below it would load the
    // edges of an empty span, which are no pages, and retry forever.
    if (len <= 0) return null;
    const bs = this.blockSize;
    const end = pos + len;
    const base = a.id * KEY_MUL;
    let pending: Promise<void>[] | null = null;
    for (let idx = Math.floor(pos / bs), start = idx * bs; start < end; idx++, start += bs) {
      const s = start > pos ? start : pos;
      const e = start + bs < end ? start + bs : end;
      if (this.changing.size > 0) {
        const changing = this.changing.get(base + idx);
        if (changing !== undefined) {
          const retry = (): Promise<void> | undefined => this.write(a, s, src, sOff + s - pos, e - s, mode) ?? undefined;
          (pending ??= []).push(changing.then(retry));
          continue;
        }
      }
      const b = this.lookup(base + idx);
      if (b !== undefined) {
        const busy = b.loading ?? b.writing;
        if (busy) {
          const retry = (): Promise<void> | undefined => this.write(a, s, src, sOff + s - pos, e - s, mode) ?? undefined;
          (pending ??= []).push(busy.then(retry));
          continue;
        }
        if (mode === 'back' && !b.full) {
          const edges = this.loadEdges(a, b, s - start, e - start);
          if (edges) {
            const retry = (): Promise<void> | undefined => this.write(a, s, src, sOff + s - pos, e - s, mode) ?? undefined;
            (pending ??= []).push(edges.then(retry));
            continue;
          }
        }
        src.copy(b.buf, s - start, sOff + s - pos, sOff + e - pos);
        if (mode === 'back') this.markDirty(b, s - start, e - start);
        else {
          // A page covered in part and not valid stays invalid: its other bytes come from the array when read.
          if (!b.full) this.setValid(b, (s - start + PAGE - 1) >>> PAGE_SHIFT, (e - start) >>> PAGE_SHIFT);
          if (b.dirty) b.dirtyGen = ++this.gen;
        }
        this.counters.hits++;
        continue;
      }
      if (mode === 'none') continue;
      const whole = e - s === bs;
      if (mode === 'through') {
        // Keep a clean copy of whole blocks; partial ones would need a read.
        if (!whole) continue;
        const nb = this.newBlock(a.id, idx);
        if (!nb) continue;
        src.copy(nb.buf, 0, sOff + s - pos, sOff + e - pos);
        this.setValid(nb, 0, this.pagesPerBlock);
        this.settle(nb);
        continue;
      }
      this.counters.misses++;
      const nb = this.newBlock(a.id, idx);
      if (!nb) {
        (pending ??= []).push(this.directWrite(a, s, src, sOff + s - pos, e - s));
        continue;
      }
      // Only the pages the write covers become valid; one it covers in part is read first.
      const edges = whole ? null : this.loadEdges(a, nb, s - start, e - start);
      if (edges === null) {
        src.copy(nb.buf, s - start, sOff + s - pos, sOff + e - pos);
        this.markDirty(nb, s - start, e - start);
        continue;
      }
      const retry = (): Promise<void> | undefined => this.write(a, s, src, sOff + s - pos, e - s, mode) ?? undefined;
      (pending ??= []).push(edges.then(retry));
    }
    if (pending === null) return null;
    return pending.length === 1 ? pending[0]! : Promise.all(pending).then(noop);
  }

  /**
   * A large write-back write: the blocks it covers whole go straight to the
   * array and leave the cache (their bytes are all superseded, dirty or not),
   * the partial blocks at either end go into the cache as any write-back
   * write. The payload is then copied once, into the page cache, instead of
   * into slots on the event loop and from there to the page cache, and a
   * stream of large writes does not push everything else out of the cache.
   * Resolves when the array has the whole-block bytes (not synced: FLUSH
   * syncs, as for any write-back write). A block being loaded, written back
   * or changed is waited for first, so no older bytes land after these; a
   * pinned block keeps the range in the cache (a job is reading it there).
   */
  async writeAround(a: ArrayFile, pos: number, src: Buffer, sOff: number, len: number): Promise<void> {
    const bs = this.blockSize;
    const end = pos + len;
    const w0 = Math.ceil(pos / bs) * bs;
    const w1 = Math.floor(end / bs) * bs;
    if (w1 <= w0) return this.write(a, pos, src, sOff, len, 'back') ?? undefined;
    const parts: Promise<void>[] = [];
    const edge = (s: number, e: number): void => {
      const p = s < e ? this.write(a, s, src, sOff + s - pos, e - s, 'back') : null;
      if (p) parts.push(p);
    };
    edge(pos, w0);
    edge(w1, end);
    for (;;) {
      const r = this.clearForAround(a, w0 / bs, w1 / bs);
      if (r === null) break;
      if (r === 'pinned') {
        edge(w0, w1);
        await Promise.all(parts);
        return;
      }
      await r.catch(noop);
    }
    // Blocks born from here on may load the array before these bytes land: directWrite refreshes them.
    parts.push(this.directWrite(a, w0, src, sOff + w0 - pos, w1 - w0, this.seq));
    await Promise.all(parts);
  }

  /**
   * Drops the resident blocks [i0, i1) of the array, all at once, when none
   * is busy: else what to wait for first, or 'pinned'.
   */
  private clearForAround(a: ArrayFile, i0: number, i1: number): Promise<void> | 'pinned' | null {
    const base = a.id * KEY_MUL;
    for (let i = i0; i < i1; i++) {
      const changing = this.changing.size > 0 ? this.changing.get(base + i) : undefined;
      if (changing !== undefined) return changing;
      const b = this.peek(base + i);
      if (b === undefined) continue;
      const busy = b.loading ?? b.writing;
      if (busy) return busy;
      if (b.pins > 0) return 'pinned';
    }
    for (let i = i0; i < i1; i++) {
      const b = this.peek(base + i);
      if (b !== undefined) {
        this.counters.invalidations++;
        this.drop(b);
      }
    }
    return null;
  }

  /**
   * Writes src straight to the array (write-through, none, FUA, or no slot).
   * A block that came into memory, or started loading pages, after `since`
   * (while this write was on its way) may have read the array before the
   * write landed, so it gets the bytes again; pages still loading are marked
   * stale (they stay invalid when the load lands). Callers that update the
   * cache first pass the `sequence` from before that update.
   */
  async directWrite(a: ArrayFile, pos: number, src: Buffer, sOff: number, len: number, since = this.seq): Promise<void> {
    this.counters.bypassWrites++;
    await this.writeStraight(a, src, sOff, len, pos);
    if (this.seq === since) return;
    const bs = this.blockSize;
    const end = pos + len;
    const base = a.id * KEY_MUL;
    for (let idx = Math.floor(pos / bs), start = idx * bs; start < end; idx++, start += bs) {
      const b = this.peek(base + idx);
      if (!b || b.born <= since) continue;
      if (b.loading) {
        // The load may have read the array before this write landed: its pages stay invalid.
        b.stale = true;
        continue;
      }
      if (b.writing) continue;
      const s = start > pos ? start : pos;
      const e = start + bs < end ? start + bs : end;
      src.copy(b.buf, s - start, sOff + s - pos, sOff + e - pos);
    }
  }

  /** Bytes [lo, hi) of b were written: their pages are dirty, and valid (one covered in part was loaded first). */
  private markDirty(b: Block, lo: number, hi: number): void {
    b.dirtyGen = ++this.gen;
    const o = b.slot * this.pageWords;
    const bits = this.pageBits;
    const first = lo >>> PAGE_SHIFT;
    const last = (hi - 1) >>> PAGE_SHIFT;
    let added = 0;
    for (let p = first; p <= last; p++) {
      const w = bits[o + (p >>> 5)]!;
      const m = 1 << (p & 31);
      if ((w & m) === 0) {
        bits[o + (p >>> 5)] = w | m;
        added++;
      }
    }
    b.dirtyPages += added;
    this.dirtyBytes += added << PAGE_SHIFT;
    if (!b.full) this.setValid(b, first, last + 1);
    if (!b.dirty) {
      b.dirty = true;
      b.lo = lo;
      b.hi = hi;
      b.dirtySince = Date.now();
      this.dirtyBlockBytes += this.blockSize;
      this.dirty.set(b.key, b);
      this.hold(b);
      this.kick();
    } else {
      if (lo < b.lo) b.lo = lo;
      if (hi > b.hi) b.hi = hi;
    }
  }

  /** b's pages are all on the array (or forgotten): it no longer counts as dirty. */
  private clean(b: Block): void {
    b.dirty = false;
    const o = b.slot * this.pageWords;
    this.pageBits.fill(0, o, o + this.pageWords);
    this.dirtyBytes -= b.dirtyPages << PAGE_SHIFT;
    b.dirtyPages = 0;
    this.dirty.delete(b.key);
    this.dirtyBlockBytes -= this.blockSize;
  }

  private pageDirty(b: Block, p: number): boolean {
    return ((this.pageBits[b.slot * this.pageWords + (p >>> 5)]! >>> (p & 31)) & 1) !== 0;
  }

  // ---- write-back ---------------------------------------------------------

  /**
   * Over the background mark, write-back starts once the writes of this turn
   * are in: started from markDirty, a run would leave with the first block of
   * a large write alone (1 MiB writes went back as 64 KiB pwritevs), and its
   * neighbours would wait for it. The microtask runs before any I/O callback.
   */
  private kick(): void {
    if (this.underPressure()) {
      if (!this.pumpQueued) {
        this.pumpQueued = true;
        queueMicrotask(this.pumpQueuedNow);
      }
    } else if (!this.timer) this.arm(this.delayMs);
  }

  /**
   * Write-back runs flat out once the dirty pages pass the background mark,
   * or once the slots holding them near their bound (where writes would go
   * to the array unbuffered). Dirty data used to be counted in blocks: 4 KiB
   * random writes over a few thousand blocks kept the mark passed with a
   * page or two dirty per block, write-back sent each write back on its own
   * (fresh 4k write QD32: 181k block write-backs for 500k writes), and a
   * 256 MiB volume written at random filled the limit with 1/16 of it dirty.
   */
  private underPressure(): boolean {
    return this.dirtyBytes >= this.dirtyBackground || this.dirtyBlockBytes >= this.slotPressure;
  }

  private pumpQueued = false;
  private readonly pumpQueuedNow = (): void => {
    this.pumpQueued = false;
    this.pump();
  };

  private arm(ms: number): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.pump();
    }, ms);
    // Pending write-back must not keep a finished process alive; shutdown flushes explicitly.
    this.timer.unref();
  }

  /** Starts write-backs up to the concurrency bound: all of them under pressure, else only aged ones. */
  private pump(): void {
    if (this.active >= this.concurrency || this.dirty.size === 0) return;
    if (this.holdWriteback) return;
    const now = Date.now();
    for (const b of this.dirty.values()) {
      if (this.active >= this.concurrency) return;
      if (!this.underPressure() && now - b.dirtySince < this.delayMs) {
        this.arm(b.dirtySince + this.delayMs - now);
        return;
      }
      if (b.writing || b.loading) continue;
      this.writeback(b).catch(noop);
    }
  }

  /**
   * Writes a dirty block back, with the dirty neighbours after it (up to
   * 1 MiB) in the same pwritev. The slots are not copied: writers wait on
   * `writing` instead.
   */
  private writeback(first: Block): Promise<void> {
    const bs = this.blockSize;
    const run = [first];
    for (let k = first.key + 1; run.length < this.maxRun; k++) {
      const n = this.held.get(k);
      if (!n || !n.dirty || n.writing || n.loading) break;
      run.push(n);
    }
    let a: ArrayFile;
    try {
      a = this.arrays(first.arrayId);
    } catch (err) {
      // The array was detached under dirty data: nothing left to write it to.
      for (const b of run) this.drop(b);
      return Promise.reject(err as Error);
    }
    // Exactly the dirty pages, as maximal runs of neighbours, each one pwritev
    // of whole allocation blocks (the array marks what it is given as data).
    const perBlock = bs >> PAGE_SHIFT;
    const pages = run.length * perBlock;
    const origin = first.index * bs;
    const writes: Promise<void>[] = [];
    let bytes = 0;
    let from = -1;
    for (let g = 0; g <= pages; g++) {
      if (g < pages && this.pageDirty(run[Math.floor(g / perBlock)]!, g % perBlock)) {
        if (from < 0) from = g;
        continue;
      }
      if (from < 0) continue;
      const pos = origin + from * ALLOC_BLOCK;
      const end = Math.min(origin + g * ALLOC_BLOCK, a.size);
      from = -1;
      if (end <= pos) continue;
      const bufs: Uint8Array[] = [];
      for (let at = pos; at < end; ) {
        const blk = run[Math.floor((at - origin) / bs)]!;
        const inBlock = at - blk.index * bs;
        const n = Math.min(bs - inBlock, end - at);
        bufs.push(blk.buf.subarray(inBlock, inBlock + n));
        at += n;
      }
      writes.push(this.route.writev(a, bufs, end - pos, pos));
      bytes += end - pos;
    }
    const snaps = run.map((b) => b.dirtyGen);
    this.active++;
    const p = (writes.length === 1 ? writes[0]! : Promise.all(writes)).then(
      () => {
        this.counters.writebacks += run.length;
        this.counters.writebackBytes += bytes;
        for (let i = 0; i < run.length; i++) {
          const b = run[i]!;
          b.writing = null;
          b.cleanGen = snaps[i]!;
          if (!b.gone && b.dirty && b.dirtyGen === snaps[i]) this.clean(b);
          this.settle(b);
        }
      },
      (err: unknown) => {
        this.counters.writebackErrors++;
        for (const b of run) b.writing = null;
        throw err;
      },
    );
    const shared = p.then(noop, noop);
    for (const b of run) b.writing = shared;
    void shared.then(() => {
      this.active--;
      // Keep going while there is pressure; an error leaves the rest to the next kick or flush.
      if (this.dirty.size > 0) this.pump();
    });
    return p;
  }

  /** Ensures every change to b up to generation `g` is on the array. */
  private async ensureClean(b: Block, g: number): Promise<void> {
    while (!b.gone && b.cleanGen < g) {
      if (b.writing) await b.writing;
      else if (b.loading) await b.loading;
      else if (b.dirty) await this.writeback(b);
      else return;
    }
  }

  /**
   * Writes back every block dirty now on the given arrays (null: all), and
   * resolves when they are on the arrays (not yet synced: callers fdatasync).
   * Changes made after the call are not waited for.
   */
  async writeBack(arrayIds: ReadonlySet<number> | null, range?: { offset: number; length: number }): Promise<void> {
    if (this.dirty.size === 0) return;
    const need: Block[] = [];
    const gens: number[] = [];
    const bs = this.blockSize;
    for (const b of this.dirty.values()) {
      if (arrayIds && !arrayIds.has(b.arrayId)) continue;
      if (range && ((b.index + 1) * bs <= range.offset || b.index * bs >= range.offset + range.length)) continue;
      need.push(b);
    }
    // Ascending order so each write-back picks up its dirty neighbours.
    need.sort((x, y) => x.key - y.key);
    for (const b of need) gens.push(b.dirtyGen);
    await Promise.all(need.map((b, i) => this.ensureClean(b, gens[i]!)));
  }

  // ---- pinning ------------------------------------------------------------

  /** Loads and pins the blocks covering the range; they are never evicted until unpinned. */
  async pin(a: ArrayFile, offset: number, length: number): Promise<void> {
    const bs = this.blockSize;
    const i0 = Math.floor(offset / bs);
    const i1 = Math.ceil((offset + length) / bs);
    let add = 0;
    for (let i = i0; i < i1; i++) if ((this.peek(a.id * KEY_MUL + i)?.pins ?? 0) === 0) add += bs;
    if (this.pinnedBytes + add > this.maxPinned) {
      throw new BlockgateError('NO_SPACE', `pinning ${length} bytes would exceed the pinned share of the cache (${this.maxPinned} bytes)`, {
        pinnedBytes: this.pinnedBytes,
        maxPinned: this.maxPinned,
      });
    }
    for (let i = i0; i < i1; i++) {
      const key = a.id * KEY_MUL + i;
      for (;;) {
        const changing = this.changing.get(key);
        if (changing) {
          await changing;
          continue;
        }
        let b = this.lookup(key);
        if (!b) {
          b = this.newBlock(a.id, i) ?? undefined;
          if (!b) throw new BlockgateError('NO_SPACE', 'no cache memory free to pin into');
          await this.load(a, [b], null);
          continue;
        }
        if (b.loading) {
          await b.loading;
          continue;
        }
        if (!b.full) {
          // A pinned block is served from memory whole: load what it lacks.
          await this.loadPages(a, b, 0, this.pagesPerBlock, -1, -1);
          continue;
        }
        if (b.pins++ === 0) {
          this.pinnedBytes += bs;
          this.hold(b);
        }
        break;
      }
    }
  }

  unpin(arrayId: number, offset: number, length: number): void {
    const bs = this.blockSize;
    for (let i = Math.floor(offset / bs); i < Math.ceil((offset + length) / bs); i++) {
      const b = this.peek(arrayId * KEY_MUL + i);
      if (!b || b.pins === 0) continue;
      if (--b.pins === 0) {
        this.pinnedBytes -= bs;
        this.settle(b);
      }
    }
  }

  // ---- map changes (WRITE_ZEROES, TRIM) ---------------------------------------

  /**
   * Runs `apply`, a change made below the cache to array bytes
   * [offset, offset+length) (the allocation map, zero bytes), ordered with
   * every other request on the cache blocks the range touches:
   *
   * 1. the blocks enter the changing state (resident or not): new reads,
   *    writes, loads and pins of them wait until step 4;
   * 2. what started before settles: loads land, write-backs finish, and dirty
   *    bytes are written back, so no dirty span (which may cover bytes the
   *    change is about to zero) is left to land over the change later;
   * 3. `apply` runs; then resident copies get the new bytes: zeroes over
   *    [zeroFrom, zeroTo), what the array now reads as zeroes. If `apply`
   *    failed the array's state is unknown, so the copies are dropped (pinned
   *    ones re-read);
   * 4. the blocks leave the changing state and the waiters go on.
   *
   * Changes to the same block run one at a time.
   */
  async change(a: ArrayFile, offset: number, length: number, zeroFrom: number, zeroTo: number, apply: () => Promise<void>): Promise<void> {
    if (length <= 0) return apply();
    const bs = this.blockSize;
    const base = a.id * KEY_MUL;
    const i0 = Math.floor(offset / bs);
    const i1 = Math.ceil((offset + length) / bs);
    for (;;) {
      let busy: Promise<void> | undefined;
      for (let i = i0; i < i1 && busy === undefined; i++) busy = this.changing.get(base + i);
      if (busy === undefined) break;
      await busy;
    }
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    for (let i = i0; i < i1; i++) this.changing.set(base + i, gate);
    try {
      for (let i = i0; i < i1; i++) await this.settleForChange(base + i);
      let applied = false;
      try {
        await apply();
        applied = true;
      } finally {
        if (applied) await this.fillChanged(base, i0, i1, zeroFrom, zeroTo);
        else await this.invalidate(a, offset, length);
      }
    } finally {
      for (let i = i0; i < i1; i++) if (this.changing.get(base + i) === gate) this.changing.delete(base + i);
      release();
    }
  }

  /** Waits until the block is absent, or resident, idle and clean (writing back what is dirty). */
  private async settleForChange(key: number): Promise<void> {
    for (;;) {
      const b = this.peek(key);
      if (b === undefined) return;
      const busy = b.loading ?? b.writing;
      if (busy) await busy;
      else if (b.dirty) await this.ensureClean(b, b.dirtyGen);
      else return;
    }
  }

  /** Zero-fills the resident copies of [from, to) after a change made those bytes read as zeroes. */
  private async fillChanged(base: number, i0: number, i1: number, from: number, to: number): Promise<void> {
    const bs = this.blockSize;
    for (let i = i0; i < i1; i++) {
      const s = Math.max(from, i * bs);
      const e = Math.min(to, (i + 1) * bs);
      if (e <= s) continue;
      for (;;) {
        const b = this.peek(base + i);
        if (b === undefined) break;
        // Only an invalidation below the cache can be busy here; let it land first.
        const busy = b.loading ?? b.writing;
        if (busy) {
          await busy;
          continue;
        }
        b.buf.fill(0, s - i * bs, e - i * bs);
        break;
      }
    }
  }

  // ---- invalidation ---------------------------------------------------------

  /**
   * The array bytes were rewritten below the cache (scrub, copy, unmap):
   * cached copies are dropped, dirty data in the range is discarded. Blocks
   * only partly covered that must stay (dirty elsewhere, or pinned) re-read
   * the covered bytes. A block still loading is dropped when it lands.
   */
  async invalidate(a: ArrayFile, offset: number, length: number): Promise<void> {
    const bs = this.blockSize;
    const end = offset + length;
    const waits: Promise<void>[] = [];
    for (let i = Math.floor(offset / bs); i * bs < end; i++) {
      const b = this.peek(a.id * KEY_MUL + i);
      if (!b) continue;
      this.counters.invalidations++;
      // A load in flight may have read the old bytes: what it brings stays invalid. The block's
      // other pages may be dirty, so it is not dropped blindly; act() decides once the load lands.
      if (b.loading) b.stale = true;
      const s = Math.max(offset, i * bs);
      const e = Math.min(end, (i + 1) * bs);
      const act = async (): Promise<void> => {
        while (b.writing || b.loading) await (b.writing ?? b.loading);
        if (b.gone) return;
        const whole = e - s === bs;
        if ((whole || !b.dirty) && b.pins === 0) return this.drop(b);
        // Keep the block; refresh just the covered bytes.
        this.hold(b);
        const fill = a.read(b.buf, s - i * bs, e - s, s);
        b.loading = fill.then(noop, noop);
        try {
          await fill;
        } finally {
          b.loading = null;
          this.settle(b);
        }
      };
      waits.push(act());
    }
    await Promise.all(waits);
  }

  /** Whether any cached block of the array range is dirty (holds bytes newer than the array's). */
  hasDirty(arrayId: number, offset: number, length: number): boolean {
    if (this.dirty.size === 0 || length <= 0) return false;
    const bs = this.blockSize;
    const base = arrayId * KEY_MUL;
    const last = Math.floor((offset + length - 1) / bs);
    for (let i = Math.floor(offset / bs); i <= last; i++) if (this.dirty.has(base + i)) return true;
    return false;
  }

  /** The dirty byte span [lo, hi) inside block `index` of the array, or null when the block is not dirty. */
  dirtySpan(arrayId: number, index: number): [number, number] | null {
    const b = this.dirty.get(arrayId * KEY_MUL + index);
    return b ? [b.lo, b.hi] : null;
  }

  /**
   * Forgets cached copies of a range whose owner changed (space handed to a
   * new volume). Synchronous: by then the space belongs to nobody, so nothing
   * is dirty or being written there; a block still loading is dropped when
   * its load lands.
   */
  forget(arrayId: number, offset: number, length: number): void {
    const bs = this.blockSize;
    const base = arrayId * KEY_MUL;
    for (let i = Math.floor(offset / bs); i * bs < offset + length; i++) {
      const b = this.peek(base + i);
      if (!b) continue;
      if (b.loading) b.doomed = true;
      else if (!b.writing) this.drop(b);
    }
  }

  /** Forgets every cached block of an array being detached (write it back first if it matters). */
  dropArray(arrayId: number): void {
    for (const m of [this.held, this.lru] as const) {
      for (const b of [...m.values()]) if (b.arrayId === arrayId && !b.loading && !b.writing) this.drop(b);
    }
  }

  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.writeBack(null);
    await this.slab.close();
    await this.route.close();
  }
}
