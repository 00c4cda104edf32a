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
