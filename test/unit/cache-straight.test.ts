import t from 'tap';
import { type VolumeHandle } from '../../cache/index.js';
import { ArrayFile, BatchRoute } from '../../disks/index.js';
import { VolumeLayout } from '../../mapper/index.js';
import { BS, M, P, onDisk, readVol, seededBytes, storeOnArray } from '../helpers/cache-store.js';

// I/O that takes no cache slot (policy none reads, write-through and none
// writes) goes through the worker route via staging memory when it is small
// (≤ 64 KiB) and plain, and through the array otherwise. Both ways must give
// the same bytes at the same places, with the staging memory shared safely
// by many requests at once.

/** The batch route with its calls counted (what went through the workers). */
class CountingRoute extends BatchRoute {
  reads = 0;
  writes = 0;

  override readv(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    this.reads++;
    return super.readv(a, bufs, length, position);
  }

  override writev(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    this.writes++;
    return super.writev(a, bufs, length, position);
  }
}

const vol = (policy: VolumeHandle['cachePolicy']): VolumeHandle => ({ id: 1, layout: new VolumeLayout([{ arrayId: 1, offset: 0, length: 16 * M }]), cachePolicy: policy });

async function setup(t: { teardown: (fn: () => unknown) => void }) {
  const route = new CountingRoute(1);
  const { store, a } = await storeOnArray(t, { size: 16 * M, arraySize: 16 * M, route });
  const old = seededBytes(4 * M, 1);
  await a.write(old, 0, old.length, 0);
  return { store, a, route, old };
}

t.test('policy none: small reads of data go through the workers, holes and large reads through the array, all exact', async (t) => {
  const { store, route, old } = await setup(t);
  const v = vol('none');
  const cases: [number, number, boolean][] = [
    [0, P, true],
    [5 * P, 100, true],
    [3 * BS + 17, BS, true],
    [7 * BS, BS, true],
    [9 * BS, BS + P, false],
    [M, M, false],
  ];
  for (const [at, len, staged] of cases) {
    const before = route.reads;
    t.same(await readVol(store, v, at, len), old.subarray(at, at + len), `${len} bytes at ${at}`);
    t.equal(route.reads - before, staged ? 1 : 0, staged ? 'through the workers' : 'through the array');
  }
  // Past the written 4 MiB the array is a hole: its map answers zeroes without reading the file.
  const before = route.reads;
  t.same(await readVol(store, v, 5 * M, P), Buffer.alloc(P), 'a hole reads as zeroes');
  t.equal(route.reads, before, 'without a worker call');
  t.equal(store.stats().cachedBytes, 0, 'none keeps nothing in the cache');
});

t.test('many reads at once share the staging slots; past the 64 slots the rest go through the array', async (t) => {
  const { store, route, old } = await setup(t);
  const v = vol('none');
  const offsets = Array.from({ length: 200 }, (_, i) => ((i * 7919) % 1000) * P + (i % 3) * 100);
  const got = await Promise.all(offsets.map((at) => readVol(store, v, at, 2 * P)));
  offsets.forEach((at, i) => {
    if (!got[i]!.equals(old.subarray(at, at + 2 * P))) t.fail(`read ${i} at ${at} got other bytes`);
  });
  t.ok(route.reads >= 64 && route.reads < 200, `${route.reads} of 200 through the workers, the rest through the array`);
  // And the slots came back: another round goes through the workers again.
  const before = route.reads;
  await Promise.all(offsets.slice(0, 64).map((at) => readVol(store, v, at, P)));
  t.equal(route.reads - before, 64, 'every staging slot was given back');
});

t.test('write-through and none writes: aligned small ones through the workers, unaligned and large ones through the array', async (t) => {
  for (const policy of ['write-through', 'none'] as const) {
    const { store, a, route, old } = await setup(t);
    const v = vol(policy);
    const model = Buffer.alloc(16 * M);
    old.copy(model);
    const cases: [number, number, boolean][] = [
      [0, P, true],
      [8 * M, P, true], // into a hole: the map calls it data afterwards
      [2 * BS, BS, true],
      [5 * P + 100, 200, false],
      [10 * M + 300, P, false], // unaligned into a hole: the array pads its blocks with zeroes
      [3 * M, 2 * BS, false],
    ];
    let seed = 10;
    for (const [at, len, staged] of cases) {
      const d = seededBytes(len, seed++);
      const before = route.writes;
      await store.write(v, at, d, false);
      d.copy(model, at);
      t.equal(route.writes - before, staged ? 1 : 0, `${policy} ${len} at ${at}: ${staged ? 'through the workers' : 'through the array'}`);
      const lo = Math.floor(at / P) * P;
      const hi = Math.ceil((at + len) / P) * P;
      t.same(onDisk(a, lo, hi - lo), model.subarray(lo, hi), 'on the array when acknowledged, its page around it intact');
      t.same(await readVol(store, v, lo, hi - lo), model.subarray(lo, hi), 'and read back');
    }
    t.same(await readVol(store, v, 8 * M, P), model.subarray(8 * M, 8 * M + P), 'the hole written through the workers reads as data');
  }
});

t.test('FUA on a write-back volume goes through the workers too, and the bytes are on the array', async (t) => {
  const { store, a, route } = await setup(t);
  const v = vol('write-back');
  const d = seededBytes(2 * P, 30);
  const before = route.writes;
  await store.write(v, 6 * M, d, true);
  t.equal(route.writes - before, 1);
  t.same(onDisk(a, 6 * M, 2 * P), d);
  t.same(await readVol(store, v, 6 * M, 2 * P), d);
});

t.test('a never-written range reads as zeroes from the map: no slot, no read, nothing cached', async (t) => {
  const { store, a, route } = await setup(t);
  const v = vol('write-back');
  const before = store.stats();
  t.same(await readVol(store, v, 8 * M + 100, 3 * BS), Buffer.alloc(3 * BS), 'zeroes');
  const after = store.stats();
  t.equal(after.cachedBytes, before.cachedBytes, 'no block taken');
  t.equal(after.misses, before.misses, 'no miss counted');
  t.equal(after.holeReads - before.holeReads, 1, 'one hole read');
  t.equal(route.reads, 0, 'the file was not read');
  // A range partly written is read as ever: the written part from the array, into the cache.
  const d = seededBytes(P, 40);
  await a.write(d, 0, P, 9 * M + P);
  const got = await readVol(store, v, 9 * M, 2 * P);
  t.same(got, Buffer.concat([Buffer.alloc(P), d]));
  t.ok(store.stats().cachedBytes > after.cachedBytes, 'that block is cached');
  // Written back, evicted, read again: data, not zeroes (the map learned it).
  const e = seededBytes(P, 41);
  await store.write(v, 12 * M, e, false);
  await store.flush(v);
  await store.invalidate(1, 12 * M, BS);
  t.same(await readVol(store, v, 12 * M, P), e, 'a written-back block reads its bytes after it left the cache');
  // A failed array answers nothing, not even zeroes for its holes.
  t.ok(a.holeRange(14 * M, P));
  a.fail('io-error', 'test: the disk under the array failed');
  t.notOk(a.holeRange(14 * M, P), 'its map is not trusted for holes');
  await t.rejects(readVol(store, v, 14 * M, P), 'a failed array does not read as zeroes');
});
