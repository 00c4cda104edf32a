import { BlockgateError } from '../common/errors.js';
import type { Extent } from './layout.js';

/** Extents are carved on this boundary so they stay aligned for every client's block size. */
export const EXTENT_ALIGN = 1024 * 1024;

export interface ArraySpace {
  arrayId: number;
  size: number;
  used: readonly Extent[];
}

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;
const alignDown = (n: number, a: number): number => Math.floor(n / a) * a;

/** The gaps between used extents of one array, aligned to EXTENT_ALIGN. */
export function freeExtents(space: ArraySpace): Extent[] {
  const used = [...space.used].sort((a, b) => a.offset - b.offset);
  const free: Extent[] = [];
  let pos = 0;
  const emit = (from: number, to: number): void => {
    const a = alignUp(from, EXTENT_ALIGN);
    const b = alignDown(to, EXTENT_ALIGN);
    if (b > a) free.push({ arrayId: space.arrayId, offset: a, length: b - a });
  };
  for (const u of used) {
    if (u.offset > pos) emit(pos, u.offset);
    pos = Math.max(pos, u.offset + u.length);
  }
  if (pos < space.size) emit(pos, space.size);
  return free;
}

/**
 * Picks extents for a new volume of `size` bytes. A single extent on one array
 * is preferred (the smallest gap that fits, to limit fragmentation); otherwise
 * free extents are summed across arrays into a meta volume, largest first so
 * the volume has as few pieces as possible.
 */
export function allocateExtents(size: number, spaces: readonly ArraySpace[]): Extent[] {
  if (!(size > 0) || size % EXTENT_ALIGN !== 0) {
    throw new BlockgateError('BAD_REQUEST', `volume size must be a positive multiple of ${EXTENT_ALIGN} bytes`);
  }
  const gaps = spaces.flatMap(freeExtents);
  const fits = gaps.filter((g) => g.length >= size).sort((a, b) => a.length - b.length);
  if (fits.length > 0) return [{ ...fits[0]!, length: size }];
  const total = gaps.reduce((s, g) => s + g.length, 0);
  if (total < size) {
    throw new BlockgateError('NO_SPACE', `not enough free space: ${size} bytes asked, ${total} free`, { asked: size, free: total });
  }
  const out: Extent[] = [];
  let left = size;
  for (const g of [...gaps].sort((a, b) => b.length - a.length)) {
    const n = Math.min(g.length, left);
    out.push({ ...g, length: n });
    left -= n;
    if (left === 0) break;
  }
  return out;
}
