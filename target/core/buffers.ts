/**
 * Buffers for the data path (NBD and iSCSI), so requests stop churning the GC
 * (docs/bench/findings.md, "Data path measurements").
 *
 * - Small replies (≤ SMALL_MAX) are carved one after another from 1 MiB
 *   arenas. An arena is never rewound: when it is used up a fresh one is
 *   taken and the old one is freed by the GC once the last reply carved from
 *   it is gone. Nothing has to be handed back, so nothing can be reused early.
 * - Large buffers (1 MiB writes and reads) come from a per-size free list,
 *   bounded in total bytes; the caller gives a buffer back only when nothing
 *   (socket, store) can touch it any more.
 */

const ARENA_SIZE = 1024 * 1024;
export const SMALL_MAX = 64 * 1024 + 64;
/** Buffers at least this big are worth recycling. */
export const LARGE_MIN = 128 * 1024;
/** Bytes kept in free lists across the process. */
const POOL_MAX_BYTES = 32 * 1024 * 1024;

let arena = Buffer.allocUnsafeSlow(ARENA_SIZE);
let arenaPos = 0;

/** A buffer of n ≤ SMALL_MAX bytes from the current arena (8-byte aligned). */
export function smallBuffer(n: number): Buffer {
  if (arenaPos + n > ARENA_SIZE) {
    arena = Buffer.allocUnsafeSlow(ARENA_SIZE);
    arenaPos = 0;
  }
  const b = arena.subarray(arenaPos, arenaPos + n);
  arenaPos = (arenaPos + n + 7) & ~7;
  return b;
}

/**
 * Gives back b at once if it is the arena's most recent carve (a write
 * payload copy the store took synchronously, before anything else was
 * carved): the next carve reuses its bytes. Anything else is left to the GC
 * with its arena. A fresh volume's 4 KiB writes carved ~1 GB of arenas a
 * run, and V8 runs a full collection for every 64 MiB of new memory of that
 * kind (docs/bench/findings.md, session 9). The caller guarantees nobody
 * holds b's bytes.
 */
export function releaseSmall(b: Buffer): void {
  if (b.buffer !== arena.buffer) return;
  const start = b.byteOffset - arena.byteOffset;
  if (start + ((b.length + 7) & ~7) === arenaPos) arenaPos = start;
}

/** An 8-byte-aligned copy of src (≤ SMALL_MAX bytes) from the arena. */
export function alignedCopy(src: Buffer): Buffer {
  const b = smallBuffer(src.length);
  src.copy(b, 0);
  return b;
}

const free = new Map<number, Buffer[]>();
let pooledBytes = 0;

/** A buffer of exactly n bytes (n ≥ LARGE_MIN), recycled when one is free. */
export function largeBuffer(n: number): Buffer {
  const list = free.get(n);
  const b = list?.pop();
  if (b) {
    pooledBytes -= n;
    return b;
  }
  return Buffer.allocUnsafeSlow(n);
}

/** Gives a largeBuffer() back. The caller guarantees nobody still reads or writes it. */
export function releaseLarge(b: Buffer): void {
  const n = b.length;
  if (pooledBytes + n > POOL_MAX_BYTES) return;
  let list = free.get(n);
  if (!list) free.set(n, (list = []));
  list.push(b);
  pooledBytes += n;
}

/** A socket write callback that gives a largeBuffer() back once written (not on error: it may still be queued). */
export function releaseWhenWritten(b: Buffer): (err?: Error | null) => void {
  return (err) => {
    if (!err) releaseLarge(b);
  };
}

/**
 * Any size, for a reply or for a payload gathered from the socket: arena for
 * small, free list for large (the holder gives those back: n ≥ LARGE_MIN),
 * plain allocation between.
 */
export function dataBuffer(n: number): Buffer {
  if (n <= SMALL_MAX) return smallBuffer(n);
  if (n >= LARGE_MIN) return largeBuffer(n);
  return Buffer.allocUnsafe(n);
}
