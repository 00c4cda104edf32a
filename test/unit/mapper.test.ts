import t from 'tap';
import { VolumeLayout, allocateExtents, freeExtents, EXTENT_ALIGN } from '../../mapper/index.js';

const M = EXTENT_ALIGN;

t.test('translate within one extent', async (t) => {
  const l = new VolumeLayout([{ arrayId: 1, offset: 10 * M, length: 4 * M }]);
  t.equal(l.size, 4 * M);
  t.same(l.translate(4096, 8192), [{ arrayId: 1, arrayOffset: 10 * M + 4096, length: 8192, requestOffset: 0 }]);
});

t.test('a request crossing extent boundaries is split in order and reassembles to its length', async (t) => {
  const l = new VolumeLayout([
    { arrayId: 1, offset: 0, length: M },
    { arrayId: 2, offset: 5 * M, length: M },
    { arrayId: 3, offset: 2 * M, length: 2 * M },
  ]);
  const segs = l.translate(M - 512, M + 1024);
  t.same(segs, [
    { arrayId: 1, arrayOffset: M - 512, length: 512, requestOffset: 0 },
    { arrayId: 2, arrayOffset: 5 * M, length: M, requestOffset: 512 },
    { arrayId: 3, arrayOffset: 2 * M, length: 512, requestOffset: M + 512 },
  ]);
  t.equal(segs.reduce((s, x) => s + x.length, 0), M + 1024);
  // Every byte of the volume maps to exactly one array byte, and back.
  for (const off of [0, M - 1, M, 2 * M - 1, 2 * M, 4 * M - 1]) {
    const [s] = l.translate(off, 1);
    t.equal(l.volumeOffsetOf(s!.arrayId, s!.arrayOffset), off, `reverse of ${off}`);
  }
  t.equal(l.volumeOffsetOf(1, 3 * M), null, 'array bytes outside the volume map to nothing');
});

t.test('out-of-range requests are refused before any segment is visited', async (t) => {
  const l = new VolumeLayout([{ arrayId: 1, offset: 0, length: M }]);
  let visited = 0;
  for (const [off, len] of [[M, 1], [M - 1, 2], [-1, 1], [0, M + 1], [Number.MAX_SAFE_INTEGER, 1], [0, -1]] as const) {
    t.throws(() => l.forEachSegment(off, len, () => visited++), { code: 'OUT_OF_RANGE' }, `${off}+${len}`);
  }
  t.equal(visited, 0);
  t.same(l.translate(M, 0), [], 'zero-length at the end is in range and touches nothing');
});

t.test('free space and allocation', async (t) => {
  const space = { arrayId: 1, size: 10 * M, used: [{ arrayId: 1, offset: 2 * M, length: 3 * M }] };
  t.same(freeExtents(space), [
    { arrayId: 1, offset: 0, length: 2 * M },
    { arrayId: 1, offset: 5 * M, length: 5 * M },
  ]);
  t.same(allocateExtents(2 * M, [space]), [{ arrayId: 1, offset: 0, length: 2 * M }], 'smallest gap that fits');
  const two = [space, { arrayId: 2, size: 3 * M, used: [] }];
  const meta = allocateExtents(9 * M, two);
  t.equal(meta.reduce((s, e) => s + e.length, 0), 9 * M, 'summed across arrays');
  t.ok(new Set(meta.map((e) => e.arrayId)).size === 2);
  t.throws(() => allocateExtents(11 * M, two), { code: 'NO_SPACE' });
  t.throws(() => allocateExtents(M + 1, two), { code: 'BAD_REQUEST' });
});

// Session 4 (issue 17, Stryker on mapper/): the edges a one-character change
// in the layout or the allocator would move.

t.test('extents are checked and copied when a layout is made', async (t) => {
  t.throws(() => new VolumeLayout([{ arrayId: 1, offset: 0, length: 0 }]), { code: 'INTERNAL' }, 'an empty extent');
  t.throws(() => new VolumeLayout([{ arrayId: 1, offset: -M, length: M }]), { code: 'INTERNAL' }, 'a negative offset');
  t.throws(() => new VolumeLayout([{ arrayId: 1, offset: 0, length: NaN }]), { code: 'INTERNAL' }, 'a length that is not a number');
  try {
    new VolumeLayout([{ arrayId: 1, offset: 0, length: M }, { arrayId: 7, offset: 3 * M, length: -1 }]);
    t.fail('a bad second extent is refused');
  } catch (err) {
    t.match((err as Error).message, /bad extent .*"arrayId":7.*"offset":3145728/, 'the message names the extent');
  }
  const given = [{ arrayId: 1, offset: 0, length: M }];
  const l = new VolumeLayout(given);
  given[0]!.offset = 9 * M;
  t.same(l.extents, [{ arrayId: 1, offset: 0, length: M }], 'later changes to the caller\'s extents do not move the volume');
  t.same(l.translate(0, 1), [{ arrayId: 1, arrayOffset: 0, length: 1, requestOffset: 0 }]);
  t.equal(new VolumeLayout([]).size, 0, 'a layout without extents has size 0');
});

t.test('every byte of a many-extent layout translates as a linear walk says, and back', async (t) => {
  // Unequal lengths (so the binary search cannot land right by accident), arrays interleaved.
  const lengths = [3, 1, 4, 1, 5, 9, 2, 6].map((n) => n * 4096);
  const extents = lengths.map((length, i) => ({ arrayId: (i % 3) + 1, offset: (20 - i * 2) * M + i * 8192, length }));
  const l = new VolumeLayout(extents);
  t.equal(l.size, lengths.reduce((a, b) => a + b, 0));
  const linear = (off: number): { arrayId: number; arrayOffset: number } => {
    let start = 0;
    for (const e of extents) {
      if (off < start + e.length) return { arrayId: e.arrayId, arrayOffset: e.offset + off - start };
      start += e.length;
    }
    throw new Error('past the end');
  };
  let wrong = 0;
  let back = 0;
  const probes: number[] = [];
  for (let start = 0, i = 0; i < extents.length; start += extents[i]!.length, i++) {
    for (const d of [0, 1, 4095, extents[i]!.length - 1]) probes.push(start + d);
  }
  for (const off of probes) {
    const [s, extra] = l.translate(off, 1);
    const want = linear(off);
    if (extra || s!.arrayId !== want.arrayId || s!.arrayOffset !== want.arrayOffset || s!.length !== 1 || s!.requestOffset !== 0) wrong++;
    if (l.volumeOffsetOf(want.arrayId, want.arrayOffset) !== off) back++;
  }
  t.equal(wrong, 0, `forward translation of ${probes.length} boundary bytes`);
  t.equal(back, 0, 'reverse translation of the same bytes');
  // The whole volume in one request: one segment per extent, in order, end to end.
  const all = l.translate(0, l.size);
  t.same(all.map((s) => [s.arrayId, s.arrayOffset, s.length]), extents.map((e) => [e.arrayId, e.offset, e.length]));
  t.same(all.map((s) => s.requestOffset), lengths.map((_, i) => lengths.slice(0, i).reduce((a, b) => a + b, 0)));
  // A request starting inside the last extent and ending at the volume's end.
  const last = extents.at(-1)!;
  t.same(l.translate(l.size - 100, 100), [{ arrayId: last.arrayId, arrayOffset: last.offset + last.length - 100, length: 100, requestOffset: 0 }]);
});

t.test('range edges: offset 0 and the exact end are in range, one byte more is not', async (t) => {
  const l = new VolumeLayout([{ arrayId: 1, offset: 0, length: M }, { arrayId: 2, offset: 0, length: M }]);
  t.ok(l.inRange(0, 2 * M), 'the whole volume');
  t.ok(l.inRange(0, 0), 'zero bytes at 0');
  t.ok(l.inRange(2 * M, 0), 'zero bytes at the end');
  t.notOk(l.inRange(0, 2 * M + 1), 'one byte past the end');
  t.notOk(l.inRange(-1, 0), 'a negative offset, even for zero bytes');
  t.notOk(l.inRange(1, -1), 'a negative length');
  t.notOk(l.inRange(Number.MAX_SAFE_INTEGER, 1), 'an end past 2^53');
  // A layout larger than 2^53 bytes: the end must still be an exact integer.
  const huge = new VolumeLayout([{ arrayId: 1, offset: 0, length: 2 ** 54 }]);
  t.notOk(huge.inRange(Number.MAX_SAFE_INTEGER, 2), 'an end past 2^53 inside a larger layout');
  t.ok(huge.inRange(Number.MAX_SAFE_INTEGER - 2, 2), 'an end just below it');
  t.equal(l.translate(0, 2 * M).length, 2);
  t.same(l.translate(0, 0), [], 'zero bytes at 0 touch nothing');
  t.throws(() => l.translate(2 * M, 1), { code: 'OUT_OF_RANGE', message: `range ${2 * M}+1 is outside the volume (size ${2 * M})` });
  t.equal(l.volumeOffsetOf(1, M), null, 'the byte after an extent is not in it');
  t.equal(l.volumeOffsetOf(2, M - 1), 2 * M - 1, 'the last byte of the last extent');
  t.equal(l.volumeOffsetOf(2, 0), M, 'the first byte of an extent on another array');
  t.equal(l.volumeOffsetOf(3, 0), null, 'an array the volume does not use');
});

t.test('free space: unsorted, overlapping and unaligned used extents', async (t) => {
  const used = [
    { arrayId: 1, offset: 6 * M + 5, length: 10 }, // unaligned: frees nothing of its 1 MiB either side
    { arrayId: 1, offset: M, length: 3 * M },
    { arrayId: 1, offset: 2 * M, length: M }, // inside the one before
  ];
  t.same(freeExtents({ arrayId: 1, size: 9 * M + 4096, used }), [
    { arrayId: 1, offset: 0, length: M },
    { arrayId: 1, offset: 4 * M, length: 2 * M },
    { arrayId: 1, offset: 7 * M, length: 2 * M },
  ], 'gaps rounded inward to 1 MiB; the array\'s unaligned tail is not free space');
  t.same(freeExtents({ arrayId: 1, size: M + M / 2, used: [{ arrayId: 1, offset: M / 2, length: M / 2 }] }), [], 'no gap of a whole aligned MiB: none');
  t.same(freeExtents({ arrayId: 3, size: 2 * M, used: [] }), [{ arrayId: 3, offset: 0, length: 2 * M }], 'an empty array is one gap');
  t.same(freeExtents({ arrayId: 1, size: 2 * M, used: [{ arrayId: 1, offset: 0, length: 2 * M }] }), [], 'a full array has none');
});

t.test('allocation: the smallest gap that fits, exact fits, meta volumes largest first', async (t) => {
  const a = { arrayId: 1, size: 20 * M, used: [{ arrayId: 1, offset: 5 * M, length: M }, { arrayId: 1, offset: 9 * M, length: M }] };
  // Gaps: 5 MiB at 0, 3 MiB at 6, 10 MiB at 10.
  t.same(allocateExtents(3 * M, [a]), [{ arrayId: 1, offset: 6 * M, length: 3 * M }], 'exact fit preferred over larger gaps');
  t.same(allocateExtents(4 * M, [a]), [{ arrayId: 1, offset: 0, length: 4 * M }], 'the smallest gap that fits, from its start');
  t.same(allocateExtents(10 * M, [a]), [{ arrayId: 1, offset: 10 * M, length: 10 * M }]);
  t.same(allocateExtents(12 * M, [a]), [
    { arrayId: 1, offset: 10 * M, length: 10 * M },
    { arrayId: 1, offset: 0, length: 2 * M },
  ], 'no single gap: largest first, the last piece cut to what is left');
  const b = { arrayId: 2, size: 4 * M, used: [] };
  t.same(allocateExtents(18 * M, [a, b]), [
    { arrayId: 1, offset: 10 * M, length: 10 * M },
    { arrayId: 1, offset: 0, length: 5 * M },
    { arrayId: 2, offset: 0, length: 3 * M },
  ], 'across arrays, stopping once the size is reached');
  t.same(allocateExtents(22 * M, [a, b]).map((e) => e.length), [10 * M, 5 * M, 4 * M, 3 * M], 'every byte free: exactly enough');
  try {
    allocateExtents(23 * M, [a, b]);
    t.fail('one MiB more than is free');
  } catch (err) {
    t.match(err, { code: 'NO_SPACE', message: `not enough free space: ${23 * M} bytes asked, ${22 * M} free`, details: { asked: 23 * M, free: 22 * M } });
  }
  for (const bad of [0, -M, NaN, M / 2]) {
    t.throws(() => allocateExtents(bad, [a]), { code: 'BAD_REQUEST', message: `volume size must be a positive multiple of ${M} bytes` }, `size ${bad}`);
  }
});
