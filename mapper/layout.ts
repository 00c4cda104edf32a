import { BlockgateError } from '../common/errors.js';

/** A contiguous run of bytes on one array. */
export interface Extent {
  arrayId: number;
  offset: number;
  length: number;
}

/** One piece of a translated request: where `length` bytes at `volumeOffset` really live. */
export interface Segment {
  arrayId: number;
  arrayOffset: number;
  length: number;
  /** Offset of this piece inside the request (0 for the first segment). */
  requestOffset: number;
}

export type SegmentVisitor = (arrayId: number, arrayOffset: number, length: number, requestOffset: number) => void;

/**
 * A volume's address space: its extents laid end to end. A meta volume is just
 * a layout whose extents sit on several arrays; a request crossing an extent
 * boundary is visited as several segments in order.
 */
export class VolumeLayout {
  readonly extents: readonly Extent[];
  readonly size: number;
  /** starts[i] = volume offset where extent i begins; starts[n] = size. */
  private readonly starts: Float64Array;

  constructor(extents: readonly Extent[]) {
    this.extents = extents.map((e) => ({ ...e }));
    this.starts = new Float64Array(extents.length + 1);
    let pos = 0;
    extents.forEach((e, i) => {
      if (!(e.length > 0) || e.offset < 0) throw new BlockgateError('INTERNAL', `bad extent ${JSON.stringify(e)}`);
      this.starts[i] = pos;
      pos += e.length;
    });
    this.starts[extents.length] = pos;
    this.size = pos;
  }

  /** Index of the extent holding volume byte `offset` (offset < size). */
  private extentAt(offset: number): number {
    let lo = 0;
    let hi = this.extents.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.starts[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** True when [offset, offset+length) lies inside the volume. */
  inRange(offset: number, length: number): boolean {
    return offset >= 0 && length >= 0 && Number.isSafeInteger(offset + length) && offset + length <= this.size;
  }

  /**
   * The translation function: every I/O, the trace API, scrub and copy go
   * through here, so they cannot disagree. Refuses out-of-range before any
   * segment is visited.
   */
  forEachSegment(offset: number, length: number, visit: SegmentVisitor): void {
    if (!this.inRange(offset, length)) {
      throw new BlockgateError('OUT_OF_RANGE', `range ${offset}+${length} is outside the volume (size ${this.size})`);
    }
    if (length === 0) return;
    let i = this.extentAt(offset);
    let done = 0;
    while (done < length) {
      const e = this.extents[i]!;
      const within = offset + done - this.starts[i]!;
      const n = Math.min(e.length - within, length - done);
      visit(e.arrayId, e.offset + within, n, done);
      done += n;
      i++;
    }
  }

  translate(offset: number, length: number): Segment[] {
    const out: Segment[] = [];
    this.forEachSegment(offset, length, (arrayId, arrayOffset, len, requestOffset) =>
      out.push({ arrayId, arrayOffset, length: len, requestOffset }),
    );
    return out;
  }

  /** Reverse translation: which volume offset holds this array byte, if any. */
  volumeOffsetOf(arrayId: number, arrayOffset: number): number | null {
    for (let i = 0; i < this.extents.length; i++) {
      const e = this.extents[i]!;
      if (e.arrayId === arrayId && arrayOffset >= e.offset && arrayOffset < e.offset + e.length) {
        return this.starts[i]! + (arrayOffset - e.offset);
      }
    }
    return null;
  }
}
