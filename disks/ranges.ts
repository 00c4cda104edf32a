/** Stream arithmetic shared by the engines and their worker. */

/** Bytes on one array. A list of ranges is read as one stream, in order. */
export interface ArrayRange {
  arrayId: number;
  offset: number;
  length: number;
}

export const total = (ranges: readonly { offset: number; length: number; arrayId: number }[]): number => ranges.reduce((s, r) => s + r.length, 0);

/** Splits a stream into chunk-sized pieces, each inside one range. */
export function* pieces(ranges: readonly { offset: number; length: number; arrayId: number }[], chunk: number): Generator<{ arrayId: number; offset: number; length: number; at: number }> {
  let at = 0;
  for (const r of ranges) {
    for (let o = 0; o < r.length; o += chunk) {
      const length = Math.min(chunk, r.length - o);
      yield { arrayId: r.arrayId, offset: r.offset + o, length, at };
      at += length;
    }
  }
}

/** Maps a stream offset range onto the ranges it covers (for copy targets). */
export function* project(ranges: readonly { offset: number; length: number; arrayId: number }[], at: number, length: number): Generator<{ arrayId: number; offset: number; length: number; bufOffset: number }> {
  let base = 0;
  let done = 0;
  for (const r of ranges) {
    if (done === length) return;
    const end = base + r.length;
    if (at + done < end) {
      const within = at + done - base;
      const n = Math.min(r.length - within, length - done);
      yield { arrayId: r.arrayId, offset: r.offset + within, length: n, bufOffset: done };
      done += n;
    }
    base = end;
  }
}

/** Holes by array, sorted by offset, for zeroHoles(). */
export type HoleIndex = Map<number, ArrayRange[]>;

export function indexHoles(holes: readonly ArrayRange[]): HoleIndex {
  const idx: HoleIndex = new Map();
  for (const h of holes) {
    let l = idx.get(h.arrayId);
    if (!l) idx.set(h.arrayId, (l = []));
    l.push(h);
  }
  for (const l of idx.values()) l.sort((x, y) => x.offset - y.offset);
  return idx;
}

/**
 * Zeroes the parts of buf (array bytes [offset, offset+buf.length) of one
 * array, read straight from the file) that the allocation map calls holes:
 * trimmed or zeroed blocks keep their old bytes in the file.
 */
export function zeroHoles(idx: HoleIndex, arrayId: number, offset: number, buf: Buffer): void {
  const l = idx.get(arrayId);
  if (!l) return;
  const end = offset + buf.length;
  let lo = 0;
  let hi = l.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (l[mid]!.offset + l[mid]!.length <= offset) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; i < l.length && l[i]!.offset < end; i++) {
    const h = l[i]!;
    buf.fill(0, Math.max(h.offset, offset) - offset, Math.min(h.offset + h.length, end) - offset);
  }
}

export function fillPattern(buf: Buffer, pattern: number | Buffer, streamOffset: number): void {
  if (typeof pattern === 'number') {
    buf.fill(pattern);
    return;
  }
  // Keep the pattern phase-locked to the stream so any chunk size gives the same bytes.
  const start = streamOffset % pattern.length;
  buf.fill(Buffer.concat([pattern.subarray(start), pattern.subarray(0, start)]));
}

