/** mulberry32: a small, fast, fixed-seed generator, so a failing run can be replayed exactly. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** Random choices and byte mutations for the protocol fuzzers, from one replayable seed. */
export class Fuzzer {
  readonly r: () => number;
  constructor(seed: number) {
    this.r = prng(seed);
  }
  int(n: number): number {
    return Math.floor(this.r() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  /**
   * Flips, overwrites or truncates a few bytes of a valid frame. `window` keeps the changes in the
   * frame's first bytes (where a protocol's header decides what happens next); one frame in
   * `truncateOneIn` is also cut short.
   */
  mutate(f: Buffer, window = Infinity, truncateOneIn = 8): Buffer {
    const b = Buffer.from(f);
    const k = 1 + this.int(4);
    for (let i = 0; i < k && b.length > 0; i++) {
      const at = this.int(Math.min(b.length, window));
      b[at] = this.int(3) === 0 ? b[at]! ^ (1 << this.int(8)) : this.int(256);
    }
    return this.int(truncateOneIn) === 0 ? b.subarray(0, this.int(b.length + 1)) : b;
  }
}
