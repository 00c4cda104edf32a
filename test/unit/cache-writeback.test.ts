import t from 'tap';
import { type VolumeHandle } from '../../cache/index.js';
import { ArrayFile, LibuvRoute, type IoRoute } from '../../disks/index.js';
import { VolumeLayout } from '../../mapper/index.js';
import { BS, K, M, P, onDisk, readVol, seededBytes, storeOnArray } from '../helpers/cache-store.js';

// The cache's write path and write-back planning, seen at the array: which
// pages a write-back write reads first (a page it covers only in part), and
// exactly which pwritev calls a flush makes (one per maximal run of dirty
// pages, over neighbouring dirty blocks, at most 1 MiB, clipped to the array).

/** The real libuv route, with every vectored call recorded as `op position+length/buffers`. */
class RecordingRoute implements IoRoute {
  readonly name = 'libuv' as const;
  readonly sharedMemory = false;
  private readonly inner = new LibuvRoute();
  readonly calls: string[] = [];

  readv(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    this.calls.push(`readv ${position}+${length}/${bufs.length}`);
    return this.inner.readv(a, bufs, length, position);
  }

  writev(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    this.calls.push(`writev ${position}+${length}/${bufs.length}`);
    return this.inner.writev(a, bufs, length, position);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  take(): string[] {
    return this.calls.splice(0);
  }
}

const vol = (length: number): VolumeHandle => ({ id: 1, layout: new VolumeLayout([{ arrayId: 1, offset: 0, length }]), cachePolicy: 'write-back' });

/** A 16 MiB cache (nothing written back before the flush) of 64 KiB blocks over one array, its calls recorded. */
async function setup(t: { teardown: (fn: () => unknown) => void }, arraySize = 16 * M, blockSize = BS) {
  const route = new RecordingRoute();
  const { store, a } = await storeOnArray(t, { size: 16 * M, blockSize, arraySize, route });
  return { store, a, route, v: vol(arraySize) };
}

const byPosition = (calls: string[]): string[] => [...calls].sort((x, y) => Number(/ (\d+)\+/.exec(x)![1]) - Number(/ (\d+)\+/.exec(y)![1]));

t.test('a flush writes each maximal run of dirty pages with one pwritev, across neighbouring blocks, 1 MiB at most', async (t) => {
  const { store, a, route, v } = await setup(t);
  const model = Buffer.alloc(2 * M);
  let seed = 0;
  const put = async (at: number, n: number): Promise<void> => {
    const d = seededBytes(n, ++seed);
    d.copy(model, at);
    await store.write(v, at, d, false);
  };
  // Block 0: pages 0-1, page 5, page 15 running on into block 1's page 0; block 2: page 3.
  await put(0, 2 * P);
  await put(5 * P, P);
  await put(15 * P, 2 * P);
  await put(2 * BS + 3 * P, P);
  // Block 4 whole, block 3 clean between: a run of its own.
  await put(4 * BS, BS);
  // Blocks 8 to 24 whole: 17 neighbours, more than one write-back takes (16 × 64 KiB = 1 MiB).
  for (let b = 8; b <= 24; b++) await put(b * BS, BS);
  t.same(route.take(), [], 'aligned writes read nothing; nothing written back yet');
  t.same(store.cache.dirtySpan(1, 0), [0, BS], 'block 0 dirty from its first byte to its last');
  t.same(store.cache.dirtySpan(1, 2), [3 * P, 4 * P]);
  t.equal(store.cache.dirtySpan(1, 3), null, 'block 3 is clean');
  const wb = store.stats().writebackBytes;
  await store.flush(v);
  t.same(
    byPosition(route.take().filter((c) => c.startsWith('writev'))),
    [
      `writev 0+${2 * P}/1`,
      `writev ${5 * P}+${P}/1`,
      `writev ${15 * P}+${2 * P}/2`,
      `writev ${2 * BS + 3 * P}+${P}/1`,
      `writev ${4 * BS}+${BS}/1`,
      `writev ${8 * BS}+${M}/16`,
      `writev ${24 * BS}+${BS}/1`,
    ],
    'exactly the dirty pages, in maximal runs of neighbours',
  );
  t.equal(store.stats().writebackBytes - wb, 6 * P + BS + M + BS, 'write-back bytes counted');
  t.same(onDisk(a, 0, 2 * M), model, 'the array holds what was written, and zero elsewhere');
  t.equal(store.cache.dirtySpan(1, 0), null, 'clean after the flush');
  t.notOk(store.cache.hasDirty(1, 0, 2 * M));
});

t.test('write-back under pressure waits for the whole write: a 1 MiB write over 16 blocks is one pwritev, not 16', async (t) => {
  // Background write-back from the first dirty byte on: every write starts write-back at once.
  const route = new RecordingRoute();
  // The write-back path under test: a 1 MiB write would otherwise go around the cache.
  const { store, a } = await storeOnArray(t, { size: 16 * M, arraySize: 16 * M, route, dirtyBackground: 0, writeAroundMin: Infinity });
  const v = vol(16 * M);
  const d = seededBytes(M, 42);
  await store.write(v, 2 * M, d, false);
  await store.flush(v);
  t.same(
    route.take().filter((c) => c.startsWith('writev')),
    [`writev ${2 * M}+${M}/16`],
    'the blocks one write dirtied leave in one run (a run started at the first block went alone: 64 KiB pwritevs)',
  );
  t.same(onDisk(a, 2 * M, M), d);
  // Two writes in the same turn, neighbours: planned together as well.
  const e = seededBytes(2 * BS, 43);
  await Promise.all([store.write(v, 8 * M, e.subarray(0, BS), false), store.write(v, 8 * M + BS, e.subarray(BS), false)]);
  await store.flush(v);
  t.same(route.take().filter((c) => c.startsWith('writev')), [`writev ${8 * M}+${2 * BS}/2`], 'two writes of one turn, one run');
  t.same(onDisk(a, 8 * M, 2 * BS), e);
});

t.test('the last block of an array that ends inside it, and inside a page, is read and written up to the end only', async (t) => {
  const size = 2 * BS + 3 * P - 100;
  const { store, a, route, v } = await setup(t, size);
  const d = seededBytes(3 * P - 100, 7);
  await store.write(v, 2 * BS, d, false);
  t.same(route.take(), [`readv ${2 * BS + 2 * P}+${P - 100}/1`], 'the last page, in part: read up to the end');
  await store.flush(v);
  t.same(route.take().filter((c) => c.startsWith('writev')), [`writev ${2 * BS}+${3 * P - 100}/1`], 'written up to the end');
  t.same(onDisk(a, 2 * BS, 3 * P), Buffer.concat([d, Buffer.alloc(100)]), 'nothing past the end');
  t.same(await readVol(store, v, 2 * BS, 3 * P - 100), d);
});

t.test('a write-back write reads first only the pages it covers in part, and writes them back whole', async (t) => {
  const { store, a, route, v } = await setup(t);
  const old = seededBytes(4 * BS, 100);
  await a.write(old, 0, old.length, 0);
  const model = Buffer.from(old);
  let seed = 200;
  const put = async (at: number, n: number): Promise<void> => {
    const d = seededBytes(n, ++seed);
    d.copy(model, at);
    await store.write(v, at, d, false);
  };
  // Block 0, not in memory: from inside page 0 to inside page 1: both pages read, as one run.
  await put(100, P);
  t.same(route.take(), [`readv 0+${2 * P}/1`], 'pages 0 and 1 read in one call');
  // Block 1, not in memory: inside one page (page 5).
  await put(BS + 5 * P + 10, 20);
  t.same(route.take(), [`readv ${BS + 5 * P}+${P}/1`], 'only page 5');
  // Block 2, not in memory: page-aligned start, ending inside page 4: only page 4 is read.
  await put(2 * BS + 3 * P, P + 100);
  t.same(route.take(), [`readv ${2 * BS + 4 * P}+${P}/1`], 'only the tail page');
  // Block 2 again (in memory now): ending exactly on a page, starting inside page 8.
  await put(2 * BS + 8 * P + 1, 2 * P - 1);
  t.same(route.take(), [`readv ${2 * BS + 8 * P}+${P}/1`], 'only the head page');
  // Head and tail pages both in part, two pages apart, in a resident block: two reads, the middle page not read.
  await put(2 * BS + 10 * P + 1, 2 * P + 2);
  t.same(byPosition(route.take()), [`readv ${2 * BS + 10 * P}+${P}/1`, `readv ${2 * BS + 12 * P}+${P}/1`], 'the two edge pages, not the covered one between');
  // Pages already valid are not read again.
  await put(2 * BS + 10 * P + 50, 10);
  await put(2 * BS + 4 * P + 7, P);
  t.same(route.take(), [`readv ${2 * BS + 5 * P}+${P}/1`], 'page 4 is valid; page 5 is read');
  // Block 3, whole: nothing read.
  await put(3 * BS, BS);
  t.same(route.take(), [], 'a whole block reads nothing');
  t.same(store.cache.dirtySpan(1, 1), [5 * P + 10, 5 * P + 30], 'the dirty span is the bytes written');
  t.same(store.cache.dirtySpan(1, 2), [3 * P, 12 * P + 3]);
  await store.flush(v);
  t.same(
    byPosition(route.take().filter((c) => c.startsWith('writev'))),
    [`writev 0+${2 * P}/1`, `writev ${BS + 5 * P}+${P}/1`, `writev ${2 * BS + 3 * P}+${3 * P}/1`, `writev ${2 * BS + 8 * P}+${5 * P}/1`, `writev ${3 * BS}+${BS}/1`],
    'whole pages: the edges go back with the bytes around the write',
  );
  t.same(onDisk(a, 0, 4 * BS), model, 'the array: the writes over the old bytes');
  t.same(await readVol(store, v, 0, 4 * BS), model, 'and the cache serves the same');
});

t.test('the dirty span grows to cover every write to the block, never shrinks', async (t) => {
  const { store, v } = await setup(t);
  await store.write(v, 5000, Buffer.alloc(100, 1), false);
  t.same(store.cache.dirtySpan(1, 0), [5000, 5100]);
  await store.write(v, 6000, Buffer.alloc(10, 2), false);
  t.same(store.cache.dirtySpan(1, 0), [5000, 6010], 'a later write past the end');
  await store.write(v, 100, Buffer.alloc(10, 3), false);
  t.same(store.cache.dirtySpan(1, 0), [100, 6010], 'an earlier one before the start');
  await store.write(v, 3000, Buffer.alloc(10, 4), false);
  t.same(store.cache.dirtySpan(1, 0), [100, 6010], 'one inside changes nothing');
  t.ok(store.cache.hasDirty(1, 0, 1));
  t.ok(store.cache.hasDirty(1, BS - 1, 1), 'the whole block counts as dirty');
  t.notOk(store.cache.hasDirty(1, BS, BS), 'not the next block');
  t.equal(store.stats().dirtyBlockBytes, BS, 'one dirty block');
  t.equal(store.stats().dirtyBytes, 2 * P, 'its pages 0 and 1 dirty');
});

t.test('blocks of more than 32 pages: a page past the first 32 in a later slot is written back, and only it', async (t) => {
  // 256 KiB blocks: 64 pages, two words of page bits per slot.
  const big = 256 * K;
  const { store, a, route, v } = await setup(t, 16 * M, big);
  const d0 = seededBytes(P, 300);
  const d1 = seededBytes(P, 301);
  await store.write(v, 3 * big + 2 * P, d0, false);
  await store.write(v, 5 * big + 40 * P, d1, false);
  t.same(store.cache.dirtySpan(1, 5), [40 * P, 41 * P]);
  await store.flush(v);
  t.same(byPosition(route.take().filter((c) => c.startsWith('writev'))), [`writev ${3 * big + 2 * P}+${P}/1`, `writev ${5 * big + 40 * P}+${P}/1`], 'each dirty page written back, in its own block');
  t.same(onDisk(a, 5 * big + 40 * P, P), d1, 'page 40 of block 5 on the array');
  t.same(onDisk(a, 3 * big + 2 * P, P), d0);
});

t.test('dirty data is counted in pages: scattered 4 KiB writes wait for the delay until their pages, or their slots near their bound, press', async (t) => {
  // 256 slots of 64 KiB; background mark 1 MiB of dirty pages (256 pages); blocks holding dirty pages
  // bounded to 3/4 of the slots (192), pressing from 7/8 of that (168).
  const route = new RecordingRoute();
  const { store } = await storeOnArray(t, { size: 16 * M, arraySize: 16 * M, route, dirtyLimit: 8 * M, dirtyBackground: M });
  const v = vol(16 * M);
  const settleTurns = async (): Promise<void> => {
    for (let i = 0; i < 5; i++) await new Promise((r) => setTimeout(r, 5));
  };
  const writes = (): string[] => route.take().filter((c) => c.startsWith('writev'));
  // One page in each of 100 blocks: 6.25 MiB of blocks, 400 KiB of pages.
  for (let b = 0; b < 100; b++) await store.write(v, b * BS + (b % 16) * P, seededBytes(P, 500 + b), false);
  await settleTurns();
  t.same(writes(), [], 'nothing written back: 400 KiB of dirty pages is under the 1 MiB mark (counted in blocks it was 6.25 MiB, over it)');
  t.equal(store.stats().dirtyBytes, 100 * P, 'dirty bytes are the pages');
  t.equal(store.stats().dirtyBlockBytes, 100 * BS, 'in 100 blocks');
  await store.write(v, 0, seededBytes(P, 600), false);
  t.equal(store.stats().dirtyBytes, 100 * P, 'a dirty page written again is counted once');
  // 68 more blocks with a page each: 168 blocks hold dirty pages, write-back starts although pages are few.
  for (let b = 100; b < 168; b++) await store.write(v, b * BS, seededBytes(P, 500 + b), false);
  await settleTurns();
  t.ok(writes().length > 0, 'slots near their bound start write-back');
  await store.flush(v);
  t.equal(store.stats().dirtyBytes, 0, 'no dirty page left after the flush');
  t.equal(store.stats().dirtyBlockBytes, 0);
  // Pages alone: 300 pages in 20 blocks (15 each) pass the 1 MiB mark with few blocks dirty.
  route.take();
  for (let b = 200; b < 220; b++) await store.write(v, b * BS, seededBytes(15 * P, 700 + b), false);
  await settleTurns();
  t.ok(writes().length > 0, '300 dirty pages in 20 blocks start write-back');
});
