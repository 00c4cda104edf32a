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

export function fillPattern(buf: Buffer, pattern: number | Buffer, streamOffset: number): void {
  if (typeof pattern === 'number') {
    buf.fill(pattern);
    return;
  }
  // Keep the pattern phase-locked to the stream so any chunk size gives the same bytes.
  const start = streamOffset % pattern.length;
  buf.fill(Buffer.concat([pattern.subarray(start), pattern.subarray(0, start)]));
}

