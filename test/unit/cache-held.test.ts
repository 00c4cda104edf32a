import t from 'tap';
import { type VolumeHandle } from '../../cache/index.js';
import { BatchRoute } from '../../disks/index.js';
import { VolumeLayout } from '../../mapper/index.js';
import { BS, K, M, P, readVol, seededBytes, storeOnArray } from '../helpers/cache-store.js';

// Large reads wholly in memory are answered with views of the cache's own
// slots (BlockStore.holdRead), not a copy: the copy out of shared memory was
// most of a 1 MiB hit's cost. While a send holds them, the blocks stay out of
// eviction's reach and a dropped block's slot is not handed to another block.

const vol = (length: number, cachePolicy: VolumeHandle['cachePolicy'] = 'write-back'): VolumeHandle => ({
  id: 1,
  layout: new VolumeLayout([{ arrayId: 1, offset: 0, length }]),
  cachePolicy,
});
const concat = (views: readonly Buffer[]): Buffer => Buffer.concat(views as Buffer[]);

t.test('a held read: views of the slots themselves, neighbouring slots merged, the bytes written', async (t) => {
  for (const route of ['libuv', 'batch'] as const) {
    const { store } = await storeOnArray(t, { size: 4 * M, arraySize: 16 * M, ...(route === 'batch' ? { route: new BatchRoute(1) } : {}) });
    const v = vol(16 * M);
    const d = seededBytes(256 * K, 7);
    for (let o = 0; o < d.length; o += BS) await store.write(v, 64 * K + o, d.subarray(o, o + BS), false);
    const h = store.holdRead(v, 64 * K + 100, 256 * K - 200);
    t.ok(h, `${route}: every block in memory`);
    t.ok(concat(h!.views).equals(d.subarray(100, 256 * K - 100)), `${route}: the bytes written`);
    t.equal(h!.views.length, 1, `${route}: four slots side by side in memory, one view`);
    if (route === 'batch') t.ok(h!.views[0]!.buffer instanceof SharedArrayBuffer, 'the cache memory itself (shared with the route)');
    h!.release();
  }
});

t.test('no held read when any byte is not in memory, the volume is uncached, or the range is outside it', async (t) => {
  const { store } = await storeOnArray(t, { size: 4 * M, arraySize: 16 * M });
  const v = vol(16 * M);
  await store.write(v, 0, seededBytes(BS, 1), false);
  t.equal(store.holdRead(v, 0, 2 * BS), null, 'block 1 not in memory');
  // Block 2: only its first page written (valid), the rest never loaded.
  await store.write(v, 2 * BS, seededBytes(P, 2), false);
  t.equal(store.holdRead(v, 2 * BS, 2 * P), null, 'a page of block 2 not valid');
  t.ok(store.holdRead(v, 2 * BS, P), 'its valid page alone is');
  t.equal(store.holdRead(vol(16 * M, 'none'), 0, BS), null, 'a none-policy volume reads with a copy');
  t.equal(store.holdRead(v, 16 * M - P, 2 * P), null, 'past the end');
  t.equal(store.holdRead(v, 0, 0), null, 'empty');
});

t.test('held blocks are not evicted, and a dropped one keeps its slot, until released', async (t) => {
  // 16 slots of 64 KiB; blocks 2 to 121 have data on the array, below the cache.
  const { store, a } = await storeOnArray(t, { size: M, arraySize: 16 * M });
  const v = vol(16 * M);
  for (let b = 2; b < 122; b++) await a.write(seededBytes(BS, b), 0, BS, b * BS);
  const d = seededBytes(2 * BS, 11);
  await store.write(v, 0, d.subarray(0, BS), false);
  await store.write(v, BS, d.subarray(BS), false);
  await store.flush(v);
  const h = store.holdRead(v, 0, 2 * BS)!;
  t.ok(h, 'blocks 0 and 1 held, clean');
  // Forty other blocks through sixteen slots: without the hold, 0 and 1 were the first evicted.
  const ev = store.stats().evictions;
  for (let b = 2; b < 42; b++) await readVol(store, v, b * BS, BS);
  t.ok(store.stats().evictions - ev >= 24, 'the cache cycled its other slots');
  t.ok(concat(h.views).equals(d), 'the held views still hold blocks 0 and 1');
  // A write around the cache over blocks 0-3 drops them while held: their slots stay out of use until the send lets go.
  const e = seededBytes(4 * BS, 12);
  await store.write(v, 0, e, false);
  for (let b = 42; b < 82; b++) await readVol(store, v, b * BS, BS);
  t.ok(concat(h.views).equals(d), 'no other block was put in their slots');
  t.ok((await readVol(store, v, 0, 4 * BS)).equals(e), 'the volume reads the new write');
  h.release();
  // Back in use: every slot serves blocks again.
  for (let b = 82; b < 98; b++) t.ok((await readVol(store, v, b * BS, BS)).equals(seededBytes(BS, b)), `block ${b}`);
  t.ok(store.stats().cachedBytes <= M);
});
