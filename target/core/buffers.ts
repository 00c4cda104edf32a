import { BlockgateError } from '../../common/errors.js';

/**
 * Buffers for the data path (NBD and iSCSI), so requests stop churning the GC
 * (docs/bench/findings.md, "Data path measurements"; session 12).
 *
 * - Small buffers (≤ SMALL_MAX: replies, 4 KiB payloads) are carved one after
 *   another from 1 MiB arenas. An arena counts its carves; a carve given back
 *   (releaseSmall) once nothing touches it any more uncounts itself, and an
 *   arena whose carves are all back is used again instead of a new one. A
 *   carve never given back only keeps its arena from being reused: the GC
 *   frees it with the last carve. Fresh arenas for every 1 MiB of cached
 *   4 KiB reads were 0.5 GB/s of new external memory, and V8 answered with a
 *   full collection 16 times a second (22 % of the loop's time).
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
/** Arenas whose carves are all back, kept for reuse. */
const SPARE_ARENAS = 8;

class Arena {
  readonly buf = Buffer.allocUnsafeSlow(ARENA_SIZE);
  /** Carves not given back yet. */
  carves = 0;
}

/** Which arena a carve lies in (weak: an arena nobody uses any more is the GC's). */
const arenaOf = new WeakMap<ArrayBufferLike, Arena>();
const spare: Arena[] = [];

function newArena(): Arena {
  const a = new Arena();
  arenaOf.set(a.buf.buffer, a);
  return a;
}

let arena = newArena();
let arenaPos = 0;

/** A buffer of n ≤ SMALL_MAX bytes from the current arena (8-byte aligned). */
export function smallBuffer(n: number): Buffer {
  if (arenaPos + n > ARENA_SIZE) {
    arena = spare.pop() ?? newArena();
    arenaPos = 0;
  }
  const b = arena.buf.subarray(arenaPos, arenaPos + n);
  arena.carves++;
  arenaPos = (arenaPos + n + 7) & ~7;
  return b;
}

/**
 * Gives back a carve of smallBuffer() (or a view of one starting where it
 * does), at most once per carve; anything else is ignored. The caller
 * guarantees nothing reads or writes its bytes any more (not the socket,
 * not the store). The current arena's most recent carve is reused by the
 * next one at once (a write payload the store took synchronously); an arena
 * whose carves are all back is reused whole.
 */
export function releaseSmall(b: Buffer): void {
  const a = arenaOf.get(b.buffer);
  if (a === undefined) return;
  // More carves back than were taken: one was given back twice, and its bytes may be someone else's by now.
  if (a.carves === 0) throw new BlockgateError('INTERNAL', 'an arena carve was given back twice');
  a.carves--;
  if (a === arena) {
    const start = b.byteOffset - a.buf.byteOffset;
    if (a.carves === 0) arenaPos = 0;
    else if (start + ((b.length + 7) & ~7) === arenaPos) arenaPos = start;
  } else if (a.carves === 0 && spare.length < SPARE_ARENAS) {
    spare.push(a);
  }
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
