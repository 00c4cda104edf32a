import path from 'node:path';
import t from 'tap';
import { BlockStore, OwnershipMap, SnapshotLink, type CachePolicy, type VolumeHandle } from '../../cache/index.js';
import { AllocState, ArrayFile, BatchRoute, LibuvRoute, type IoRoute } from '../../disks/index.js';
import { VolumeLayout } from '../../mapper/index.js';
import { BS, K, M, P, onDisk, readVol, seededBytes, storeOnArray, type StoreOptions } from '../helpers/cache-store.js';

// Per-page validity of cache blocks: a partial write into a block not in
// memory reads nothing and fills nothing; reads load only the pages missing;
// write-back writes only pages that were written.

/**
 * The real libuv route, whose reads can be held after they have read the
 * file and before they land in the cache: a load that read old bytes can be
 * kept in flight while the array changes under it.
 */
class HoldableRoute implements IoRoute {
  readonly name = 'libuv' as const;
  readonly sharedMemory = false;
  private readonly inner = new LibuvRoute();
  private gate: Promise<void> | null = null;
  private open: (() => void) | null = null;
  held = 0;

  hold(): void {
    this.gate = new Promise((r) => (this.open = r));
  }

  release(): void {
    this.gate = null;
    this.open?.();
  }

  async readv(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    // Read into scratch first, land in the slots only once let go: what a slow load looks like.
    const scratch = bufs.map((b) => Buffer.alloc(b.byteLength));
    await this.inner.readv(a, scratch, length, position);
    const gate = this.gate;
    if (gate) {
      this.held++;
      await gate;
    }
    bufs.forEach((b, i) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).set(scratch[i]!));
  }

  writev(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    return this.inner.writev(a, bufs, length, position);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/**
 * The real libuv route, landing reads in the order they were asked for (each
 * reads into scratch, then waits for the one before it to land): what a
 * single busy I/O thread does, and the order that shows a load landing in a
 * slot that was handed on while the read was in flight.
 */
class InOrderRoute implements IoRoute {
  readonly name = 'libuv' as const;
  readonly sharedMemory = false;
  private readonly inner = new LibuvRoute();
  private last: Promise<void> = Promise.resolve();

  async readv(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    const before = this.last;
    let landed!: () => void;
    this.last = new Promise((r) => (landed = r));
    const scratch = bufs.map((b) => Buffer.alloc(b.byteLength));
    try {
      await this.inner.readv(a, scratch, length, position);
      await before;
      bufs.forEach((b, i) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).set(scratch[i]!));
    } finally {
      landed();
    }
  }

  writev(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    return this.inner.writev(a, bufs, length, position);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

const setup = (tt: { teardown: (fn: () => unknown) => void }, opts: StoreOptions = {}): ReturnType<typeof storeOnArray> => storeOnArray(tt, { blockSize: BS, ...opts });

const vol = (id: number, offset: number, length: number, cachePolicy: CachePolicy = 'write-back'): VolumeHandle => ({
  id,
  layout: new VolumeLayout([{ arrayId: 1, offset, length }]),
  cachePolicy,
});

const bytes = seededBytes;

/** The array bytes of page `page` of block 0 as they are before the test writes through the cache. */
async function seedPage(a: ArrayFile, page: number, seed: number): Promise<Buffer> {
  const d = bytes(P, seed);
  await a.write(d, 0, P, page * P);
  return d;
}

t.test('an aligned partial write into a block not in memory reads nothing; a read loads only the pages missing', async (t) => {
  const { store, a } = await setup(t);
  const v = vol(1, 0, 4 * M);
  const p5 = await seedPage(a, 5, 1);
  const w = bytes(2 * P, 2);
  const before = store.stats();
  t.equal(store.cache.write(a, P, w, 0, w.length, 'back'), null, 'done at once: no load');
  const mid = store.stats();
  t.equal(mid.loads - before.loads, 0, 'no array read for the write');
  t.equal(mid.dirtyBytes, 2 * P, 'two dirty pages');
  t.equal(mid.dirtyBlockBytes, BS, 'in one block');

  // Bytes inside the written pages are served from memory without a load.
  t.same(await readVol(store, v, P + 100, 2 * P - 200), w.subarray(100, 2 * P - 100));
  t.equal(store.stats().loads - before.loads, 0, 'reading written pages loads nothing');

  // The whole block: written pages from memory, page 5 from the array, the rest zero (never written).
  const expect = Buffer.alloc(BS);
  w.copy(expect, P);
  p5.copy(expect, 5 * P);
  t.same(await readVol(store, v, 0, BS), expect, 'a half-valid block reads as memory + array');
  t.equal(store.stats().loads - before.loads, 1, 'one load for the missing pages');
  t.same(await readVol(store, v, 0, BS), expect, 'and now the block is whole in memory');
  t.equal(store.stats().loads - before.loads, 1, 'no second load');
});

t.test('an unaligned partial write reads only the pages it covers in part', async (t) => {
  const { store, a } = await setup(t);
  const v = vol(1, 0, 4 * M);
  const p2 = await seedPage(a, 2, 3);
  const p4 = await seedPage(a, 4, 4);
  const p7 = await seedPage(a, 7, 5);
  // From the middle of page 2 to the middle of page 4.
  const w = bytes(2 * P + 100, 6);
  await store.write(v, 2 * P + 1000, w, false);
  const expect = Buffer.alloc(BS);
  p2.copy(expect, 2 * P);
  p4.copy(expect, 4 * P);
  p7.copy(expect, 7 * P);
  w.copy(expect, 2 * P + 1000);
  t.same(await readVol(store, v, 0, BS), expect);
  await store.flush(v);
  t.same(onDisk(a, 0, BS), expect, 'on the array after flush: head and tail pages kept their other bytes');

  // Page 7 was never loaded into the block before the full read; a write inside one page.
  const one = bytes(10, 7);
  const { store: s2, a: a2 } = await setup(t);
  const q3 = await seedPage(a2, 3, 8);
  const before = s2.stats();
  await s2.write(vol(1, 0, 4 * M), 3 * P + 5, one, false);
  t.equal(s2.stats().loads - before.loads, 1, 'the one page was read');
  one.copy(q3, 5);
  t.same(await readVol(s2, vol(1, 0, 4 * M), 3 * P, P), q3);
});

t.test('write-back of a partly valid block writes only the pages written, never an invalid one', async (t) => {
  const { store, a } = await setup(t);
  const v = vol(1, 0, 4 * M);
  const p1 = await seedPage(a, 1, 10);
  const p9 = await seedPage(a, 9, 11);
  const w0 = bytes(P, 12);
  const w8 = bytes(P, 13);
  await store.write(v, 0, w0, false);
  await store.write(v, 8 * P, w8, false);
  const wb = store.stats().writebackBytes;
  await store.flush(v);
  t.equal(store.stats().writebackBytes - wb, 2 * P, 'two pages written back');
  const expect = Buffer.alloc(BS);
  w0.copy(expect, 0);
  p1.copy(expect, P);
  w8.copy(expect, 8 * P);
  p9.copy(expect, 9 * P);
  t.same(onDisk(a, 0, BS), expect, 'pages the cache never held are untouched on the array');
  // The allocation map learned exactly the written pages (pages 2..7 stay holes).
  const runs: [number, number, number][] = [];
  a.allocationRuns(0, BS, (off, len, st) => runs.push([off, len, st]));
  t.same(
    runs.filter((r) => r[2] === AllocState.Data).map((r) => [r[0], r[1]]),
    [[0, 2 * P], [8 * P, 2 * P]],
    'data runs: pages 0-1 and 8-9 only',
  );
});

t.test('partly valid dirty blocks under eviction: recycled slots never serve or write back leftover bytes', async (t) => {
  // 16 slots; 48 blocks, each written on one page with another page seeded on the array.
  const { store, a } = await setup(t, { size: 16 * BS, dirtyLimit: 4 * BS });
  const v = vol(1, 0, 16 * M);
  const seeded: Buffer[] = [];
  const written: Buffer[] = [];
  const FILLER = 200;
  for (let i = 0; i < 48; i++) {
    const s = bytes(P, 100 + i);
    await a.write(s, 0, P, i * BS + 9 * P);
    seeded.push(s);
    // Filler blocks full of data: their slots, recycled, hold non-zero leftovers.
    await a.write(bytes(BS, 300 + i), 0, BS, (FILLER + i) * BS);
  }
  for (let i = 0; i < 48; i++) {
    const w = bytes(P, 200 + i);
    await store.write(v, i * BS + 3 * P, w, false);
    written.push(w);
    // Whole clean blocks read in between push partly valid ones (written back) out of the LRU.
    await readVol(store, v, (FILLER + i) * BS, BS);
  }
  t.ok(store.stats().evictions > 0, 'blocks were evicted and their slots reused');
  for (let i = 0; i < 48; i++) {
    const expect = Buffer.alloc(BS);
    written[i]!.copy(expect, 3 * P);
    seeded[i]!.copy(expect, 9 * P);
    const got = await readVol(store, v, i * BS, BS);
    if (!got.equals(expect)) t.fail(`block ${i} reads wrong`);
  }
  await store.flush(v);
  for (let i = 0; i < 48; i++) {
    const expect = Buffer.alloc(BS);
    written[i]!.copy(expect, 3 * P);
    seeded[i]!.copy(expect, 9 * P);
    if (!onDisk(a, i * BS, BS).equals(expect)) t.fail(`block ${i} wrong on the array`);
  }
  t.pass('every block reads and lands exactly');
});

t.test('a read whose misses take the slot of a partly valid block it has looked at loads that block again, never into the slot', async (t) => {
  // Sixteen 16 KiB slots: ten hold dirty blocks, six clean ones are all eviction can take. A read of six blocks
  // not in memory and then a partly valid one evicts the six clean blocks for its misses, the partly valid one
  // last; its missing pages must not then be loaded into the slot it lost (a miss's slot by then).
  const bs = 16 * K;
  const { store, a } = await setup(t, { blockSize: bs, size: 16 * bs, dirtyLimit: 16 * bs, dirtyBackground: 16 * bs, route: new InOrderRoute() });
  const v = vol(1, 0, 4 * M);
  const on = bytes(64 * bs, 40);
  await a.write(on, 0, on.length, 0);
  const expect = Buffer.from(on);
  const put = async (block: number, seed: number): Promise<void> => {
    const d = bytes(P, seed);
    await store.write(v, block * bs, d, false);
    d.copy(expect, block * bs);
  };
  await put(7, 41); // block 7: page 0 valid, the rest on the array
  await store.flush(v);
  for (let i = 0; i < 5; i++) await readVol(store, v, (20 + i) * bs, P); // clean and whole
  for (let i = 0; i < 10; i++) await put(40 + i, 50 + i); // dirty, held
  t.equal(store.stats().cachedBytes, 16 * bs, 'every slot taken');

  t.same(await readVol(store, v, bs, 7 * bs), expect.subarray(bs, 8 * bs), 'the read sees the array and the write');
  // Last first: each read of an evicted block takes the oldest clean slot, and the block that took the lost slot is the newest.
  for (let block = 7; block >= 1; block--) {
    t.same(await readVol(store, v, block * bs, bs), expect.subarray(block * bs, (block + 1) * bs), `block ${block} reads back as written`);
  }
});

t.test('invalidate over partly valid blocks', async (t) => {
  const route = new HoldableRoute();
  const { store, a } = await setup(t, { route });
  const v = vol(1, 0, 4 * M);
  await seedPage(a, 5, 20);
  const w0 = bytes(P, 21);
  await store.write(v, 0, w0, false);

  // A rewrite below the cache of an invalid page of a dirty block: the next read sees it.
  const z5 = bytes(P, 22);
  await a.write(z5, 0, P, 5 * P);
  await store.invalidate(1, 5 * P, P);
  t.same(await readVol(store, v, 5 * P, P), z5);
  t.same(await readVol(store, v, 0, P), w0, 'the dirty page outside the range is kept');

  // A load that read the old bytes is still in flight when the array changes: it must not land as valid.
  const w1 = bytes(P, 23);
  await store.write(v, BS, w1, false);
  const old = await seedPage(a, 16 + 6, 24);
  route.hold();
  const reading = readVol(store, v, BS + 6 * P, P);
  while (route.held === 0) await new Promise((r) => setImmediate(r));
  const fresh = bytes(P, 25);
  await a.write(fresh, 0, P, BS + 6 * P);
  const inv = store.invalidate(1, BS + 6 * P, P);
  route.release();
  await inv;
  const got = await reading;
  t.notSame(got, old, 'the held load (old bytes) was not served as valid');
  t.same(got, fresh, 'the reader loaded again and got the new bytes');
  t.same(await readVol(store, v, BS, P), w1, 'the dirty page of that block survived');
  await store.flush(v);
  t.same(onDisk(a, BS, P), w1);
  t.same(onDisk(a, BS + 6 * P, P), fresh, 'write-back did not put old bytes over the change');
});

t.test('write-through and none writes into a partly valid block', async (t) => {
  const { store, a } = await setup(t);
  const back = vol(1, 0, 4 * M);
  const none = vol(2, 0, 4 * M, 'none');
  const thru = vol(3, 0, 4 * M, 'write-through');
  const p6 = await seedPage(a, 6, 30);
  const w0 = bytes(P, 31);
  await store.write(back, 0, w0, false);
  // Covers page 6 in part (invalid in the cache): the array gets it, the cache must not serve a half page.
  const n = bytes(100, 32);
  await store.write(none, 6 * P + 50, n, false);
  n.copy(p6, 50);
  t.same(await readVol(store, back, 6 * P, P), p6);
  // Whole pages through write-through become valid at once.
  const w2 = bytes(2 * P, 33);
  await store.write(thru, 2 * P, w2, false);
  const loads = store.stats().loads;
  t.same(await readVol(store, back, 2 * P, 2 * P), w2);
  t.equal(store.stats().loads, loads, 'served from memory');
  await store.flush(back);
  t.same(onDisk(a, 0, P), w0);
  t.same(onDisk(a, 6 * P, P), p6);
});

t.test('pinning a partly valid block loads the rest', async (t) => {
  const { store, a } = await setup(t);
  const p4 = await seedPage(a, 4, 40);
  const w = bytes(P, 41);
  await store.write(vol(1, 0, 4 * M), 0, w, false);
  await store.pin(1, 0, BS);
  const loads = store.stats().loads;
  const expect = Buffer.alloc(BS);
  w.copy(expect, 0);
  p4.copy(expect, 4 * P);
  t.same(await readVol(store, vol(1, 0, 4 * M), 0, BS), expect);
  t.equal(store.stats().loads, loads, 'the pinned block is whole in memory');
  store.unpin(1, 0, BS);
});

t.test('snapshot copy-up of a region whose origin block is partly valid and dirty', async (t) => {
  const { store, a, dir } = await setup(t);
  const R = BS;
  const origin = vol(1, 0, 2 * M);
  const snap = vol(2, 4 * M, 2 * M);
  // Page 5 of block 0 on the array; page 0 dirty in the cache only.
  const p5 = await seedPage(a, 5, 50);
  const w0 = bytes(P, 51);
  await store.write(origin, 0, w0, false);
  const map = await OwnershipMap.create(path.join(dir, 'own'), R, (2 * M) / R);
  t.teardown(() => map.close());
  store.linkSnapshot(new SnapshotLink(snap, origin, map, store.cowIo));
  // The origin's overwrite of page 5 copies the region up first.
  const n5 = bytes(P, 52);
  await store.write(origin, 5 * P, n5, false);
  const then = Buffer.alloc(BS);
  w0.copy(then, 0);
  p5.copy(then, 5 * P);
  t.same(await readVol(store, snap, 0, BS), then, 'the snapshot keeps the point in time');
  t.same(onDisk(a, 4 * M, BS), then, 'copied up to the snapshot extents on the array');
  const now = Buffer.from(then);
  n5.copy(now, 5 * P);
  t.same(await readVol(store, origin, 0, BS), now, 'the origin has the new bytes');
  store.unlinkSnapshot(2);
});

t.test('a write-through write whose cache step waited: a page load that started meanwhile gets its bytes', async (t) => {
  const route = new HoldableRoute();
  const { store, a } = await setup(t, { route });
  const back = vol(1, 0, 4 * M);
  const thru = vol(2, 0, 4 * M, 'write-through');
  // Block 1: page 0 dirty in memory, page 6 only on the array; block 0 written on the array (a hole would not load).
  await store.write(back, BS, bytes(P, 60), false);
  const old6 = await seedPage(a, 16 + 6, 61);
  await seedPage(a, 0, 59);
  // Block 0 loading (held): the write's cache step must wait for it.
  route.hold();
  const loading0 = readVol(store, back, 0, P);
  while (route.held < 1) await new Promise((r) => setImmediate(r));
  const w = bytes(P + 6 * P + 100, 62);
  const writing = store.write(thru, BS - P, w, false);
  // Meanwhile a reader starts loading block 1's page 6 (the write covers it in part): it reads the old bytes.
  const loading6 = readVol(store, back, BS + 6 * P, P);
  while (route.held < 2) await new Promise((r) => setImmediate(r));
  route.release();
  await Promise.all([loading0, writing, loading6]);
  const expect = Buffer.from(old6);
  w.copy(expect, 0, 7 * P, 7 * P + 100);
  t.same(onDisk(a, BS + 6 * P, P), expect, 'the array has the write');
  t.same(await readVol(store, back, BS + 6 * P, P), expect, 'and the cache does not keep the bytes loaded before it');
});

/** A real route that keeps every array read it was asked for: [position, length, buffers]. */
class CountingRoute implements IoRoute {
  readonly reads: [number, number, number][] = [];
  constructor(private readonly inner: IoRoute) {}
  get name(): IoRoute['name'] {
    return this.inner.name;
  }
  get sharedMemory(): boolean {
    return this.inner.sharedMemory;
  }
  readv(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    this.reads.push([position, length, bufs.length]);
    return this.inner.readv(a, bufs, length, position);
  }
  writev(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    return this.inner.writev(a, bufs, length, position);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

for (const [label, make] of [
  ['libuv', () => new LibuvRoute()],
  ['batch (shared memory)', () => new BatchRoute(2)],
] as const) {
  t.test(`a large read over blocks 4 KiB writes left partly valid is one array read per run of them (${label} route)`, async (t) => {
    const route = new CountingRoute(make());
    const { store, a } = await setup(t, { size: 8 * M, route });
    const v = vol(1, 0, 8 * M);
    // 2 MiB of data on the array; then 4 KiB write-back writes over it, as a random-write workload leaves them.
    const span = 2 * M;
    const expect = Buffer.alloc(2 * span);
    bytes(span, 70).copy(expect);
    await a.write(Buffer.from(expect), 0, span, 0);
    let seed = 71;
    const put = async (at: number): Promise<void> => {
      const w = bytes(P, seed++);
      await store.write(v, at, w, false);
      w.copy(expect, at);
    };
    for (let blk = 0; blk < span / BS; blk++) for (const page of [1, 2, 7, 12]) await put(blk * BS + page * P);
    // Block 3 valid everywhere but its first page, block 4 only on its last page: 30 valid pages between the
    // two they miss, more than one block of scratch.
    for (let page = 1; page < 16; page++) if (![2, 7, 12].includes(page)) await put(3 * BS + page * P);
    for (let page = 0; page < 15; page++) if (![1, 2, 7, 12].includes(page)) await put(4 * BS + page * P);
    // Block 9 whole in memory; block 20 not in memory at all.
    await readVol(store, v, 9 * BS, BS);
    await store.flush(v);
    store.cache.forget(1, 20 * BS, BS);
    route.reads.length = 0;

    t.ok((await readVol(store, v, 0, M)).equals(expect.subarray(0, M)), 'the first MiB reads right: written pages from memory, the rest from the array');
    t.same(
      route.reads.map(([pos, len]) => [pos, len]),
      [
        [0, 9 * BS],
        [10 * BS, 6 * BS],
      ],
      'one read for blocks 0-8 and one for 10-15 (block 9 is whole), each from its first missing page to its last',
    );
    route.reads.length = 0;
    t.ok((await readVol(store, v, 0, M)).equals(expect.subarray(0, M)), 'again');
    t.equal(route.reads.length, 0, 'and then whole in memory');

    t.ok((await readVol(store, v, M, M)).equals(expect.subarray(M, 2 * M)), 'the second MiB reads right');
    t.same(
      route.reads.map(([pos, len]) => [pos, len]),
      [
        [M, 4 * BS],
        [20 * BS, BS],
        [21 * BS, 11 * BS],
      ],
      'the block not in memory is loaded on its own between the runs around it',
    );

    // A run is at most 1 MiB: 32 partly valid blocks take two reads.
    for (let blk = 32; blk < 64; blk++) await put(blk * BS + 5 * P);
    route.reads.length = 0;
    t.ok((await readVol(store, v, 2 * M, 2 * M)).equals(expect.subarray(2 * M, 4 * M)), 'a 2 MiB read of holes and written pages');
    t.equal(route.reads.length, 2, 'two reads of 1 MiB runs');

    await store.flush(v);
    t.ok(onDisk(a, 0, 2 * span).equals(expect), 'write-back put exactly the written pages on the array');
  });
}

t.test('zero-length reads and writes at any offset do nothing (an NBD WRITE of length 0 once spun the write path forever)', async (t) => {
  const { store, a } = await setup(t);
  const empty = Buffer.alloc(0);
  const before = store.stats();
  for (const at of [0, 5 * P, 11 * P, 11 * P + 7, BS - 1, BS + P]) {
    for (const mode of ['back', 'through', 'none'] as const) {
      t.equal(store.cache.write(a, at, empty, 0, 0, mode), null, `write of 0 bytes at ${at} (${mode}) is done at once`);
    }
    t.equal(store.cache.read(a, at, 0, empty, 0, true), null, `read of 0 bytes at ${at} is done at once`);
  }
  const after = store.stats();
  t.equal(after.loads - before.loads, 0, 'nothing loaded');
  t.equal(after.dirtyBytes, before.dirtyBytes, 'nothing dirty');
});
