import t from 'tap';
import { type VolumeHandle } from '../../cache/index.js';
import { ArrayFile, LibuvRoute, type IoRoute } from '../../disks/index.js';
import { VolumeLayout } from '../../mapper/index.js';
import { BS, K, M, P, onDisk, readVol, seededBytes, storeOnArray } from '../helpers/cache-store.js';

// Large write-back writes go around the cache (BlockCache.writeAround): the
// blocks they cover whole are written to the array before the write resolves
// and leave the cache, the partial end blocks stay in it, dirty. What must
// hold: no older bytes (a write-back in flight, a load in flight, a dirty
// block dropped) ever land or reappear after the large write's.

/** The real libuv route; slot reads or writes can be held at the door until released. */
class GatedRoute implements IoRoute {
  readonly name = 'libuv' as const;
  readonly sharedMemory = false;
  private readonly inner = new LibuvRoute();
  private gate: { op: 'readv' | 'writev'; open: Promise<void>; release: () => void } | null = null;
  entered = 0;

  hold(op: 'readv' | 'writev'): () => void {
    let release = (): void => undefined;
    const open = new Promise<void>((r) => (release = r));
    this.gate = { op, open, release };
    return () => {
      this.gate = null;
      release();
    };
  }

  private async pass(op: 'readv' | 'writev'): Promise<void> {
    if (this.gate?.op !== op) return;
    this.entered++;
    await this.gate.open;
  }

  async readv(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    await this.pass('readv');
    return this.inner.readv(a, bufs, length, position);
  }

  async writev(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    await this.pass('writev');
    return this.inner.writev(a, bufs, length, position);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

const vol = (length: number): VolumeHandle => ({ id: 1, layout: new VolumeLayout([{ arrayId: 1, offset: 0, length }]), cachePolicy: 'write-back' });

async function setup(t: { teardown: (fn: () => unknown) => void }) {
  const route = new GatedRoute();
  const { store, a } = await storeOnArray(t, { size: 16 * M, arraySize: 16 * M, route });
  return { store, a, route, v: vol(16 * M) };
}

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 2000 && !cond(); i++) await new Promise((r) => setTimeout(r, 1));
  if (!cond()) throw new Error('condition never held');
}

t.test('a large write is on the array when it resolves; its partial end blocks stay in the cache, dirty', async (t) => {
  const { store, a, v } = await setup(t);
  const at = BS / 2;
  const d = seededBytes(8 * BS, 1);
  await store.write(v, at, d, false);
  t.same(onDisk(a, BS, 7 * BS), d.subarray(BS - at, 8 * BS - at), 'the whole blocks are on the array before the write resolves');
  t.notOk(store.cache.hasDirty(1, BS, 7 * BS), 'and nothing of them is dirty in the cache');
  t.ok(store.cache.hasDirty(1, 0, BS), 'the head block is a write-back write');
  t.ok(store.cache.hasDirty(1, 8 * BS, BS), 'so is the tail block');
  t.same(onDisk(a, at, BS - at), Buffer.alloc(BS - at), 'the head is not on the array yet');
  t.same(await readVol(store, v, at, d.length), d);
  await store.flush(v);
  t.same(onDisk(a, at, d.length), d, 'after FLUSH all of it is');
});

t.test('below the write-around size a write stays a write-back write', async (t) => {
  const { store, a, v } = await setup(t);
  const d = seededBytes(256 * K - P, 2);
  await store.write(v, 0, d, false);
  t.ok(store.cache.hasDirty(1, 0, d.length));
  t.same(onDisk(a, 0, d.length), Buffer.alloc(d.length), 'in memory only until written back');
  await store.flush(v);
  t.same(onDisk(a, 0, d.length), d);
});

t.test('cached blocks it covers whole leave the cache, dirty or clean; their older bytes never reach the array after it', async (t) => {
  const { store, a, v } = await setup(t);
  const old = seededBytes(8 * BS, 3);
  await a.write(old, 0, old.length, 0);
  // Block 1 clean in memory, blocks 2 and 3 dirty with bytes of their own.
  t.same(await readVol(store, v, BS, BS), old.subarray(BS, 2 * BS));
  await store.write(v, 2 * BS + P, seededBytes(P, 4), false);
  await store.write(v, 3 * BS, seededBytes(BS, 5), false);
  t.ok(store.cache.hasDirty(1, 2 * BS, 2 * BS));
  const cachedBefore = store.stats().cachedBytes;
  const d = seededBytes(8 * BS, 6);
  await store.write(v, 0, d, false);
  t.notOk(store.cache.hasDirty(1, 0, 8 * BS), 'the dirty blocks are gone, not written back later');
  t.equal(store.stats().cachedBytes, cachedBefore - 3 * BS, 'the three resident blocks left the cache');
  t.same(await readVol(store, v, 0, d.length), d, 'reads see the large write');
  await store.flush(v);
  t.same(onDisk(a, 0, d.length), d, 'and so does the array after FLUSH');
});

t.test('a write-back in flight is waited for: its older bytes cannot land after the large write', async (t) => {
  const { store, a, route, v } = await setup(t);
  const older = seededBytes(BS, 7);
  await store.write(v, 2 * BS, older, false);
  const release = route.hold('writev');
  const flushing = store.flush(v);
  await until(() => route.entered === 1);
  const d = seededBytes(8 * BS, 8);
  let done = false;
  const writing = store.write(v, 0, d, false).then(() => (done = true));
  await new Promise((r) => setTimeout(r, 20));
  t.notOk(done, 'the large write waits while the block it supersedes is being written back');
  release();
  await Promise.all([flushing, writing]);
  t.same(onDisk(a, 0, d.length), d, 'the array holds the large write, not the write-back that was in flight');
  t.same(await readVol(store, v, 0, d.length), d);
});

t.test('a load in flight is waited for and brings no older bytes back into the cache', async (t) => {
  const { store, a, route, v } = await setup(t);
  const old = seededBytes(8 * BS, 9);
  await a.write(old, 0, old.length, 0);
  const release = route.hold('readv');
  const reading = readVol(store, v, 3 * BS, P);
  await until(() => route.entered === 1);
  const d = seededBytes(8 * BS, 10);
  let done = false;
  const writing = store.write(v, 0, d, false).then(() => (done = true));
  await new Promise((r) => setTimeout(r, 20));
  t.notOk(done, 'the large write waits for the block being loaded');
  release();
  t.same(await reading, old.subarray(3 * BS, 3 * BS + P), 'the read that came first sees the older bytes');
  await writing;
  t.same(await readVol(store, v, 0, d.length), d, 'after the write, every block reads the new bytes');
  t.same(onDisk(a, 0, d.length), d);
});

t.test('a block loaded while the large write is on its way gets the new bytes once they land', async (t) => {
  const { store, a, v } = await setup(t);
  const old = seededBytes(8 * BS, 11);
  await a.write(old, 0, old.length, 0);
  // Hold the array write of the large write, so a read can miss and load the older bytes under it.
  const write = a.write.bind(a);
  let release = (): void => undefined;
  const held = new Promise<void>((r) => (release = r));
  a.write = async (buf, off, len, pos) => {
    await held;
    return write(buf, off, len, pos);
  };
  t.teardown(() => {
    a.write = write;
  });
  const d = seededBytes(8 * BS, 12);
  const writing = store.write(v, 0, d, false);
  t.same(await readVol(store, v, 4 * BS, BS), old.subarray(4 * BS, 5 * BS), 'a read before the write lands sees the older bytes');
  release();
  await writing;
  t.same(await readVol(store, v, 4 * BS, BS), d.subarray(4 * BS, 5 * BS), 'the block loaded meanwhile was refreshed');
  t.same(await readVol(store, v, 0, d.length), d, 'every read after the write sees it');
});

t.test('a pinned block keeps the write in the cache', async (t) => {
  const { store, a, v } = await setup(t);
  await store.pin(1, 2 * BS, BS);
  const d = seededBytes(8 * BS, 13);
  await store.write(v, 0, d, false);
  t.ok(store.cache.hasDirty(1, 0, 8 * BS), 'written back later, like any write-back write');
  t.same(await readVol(store, v, 0, d.length), d);
  store.unpin(1, 2 * BS, BS);
  await store.flush(v);
  t.same(onDisk(a, 0, d.length), d);
});

t.test('a volume of several extents: each array range goes around on its own', async (t) => {
  const { store, a } = await setup(t);
  const v: VolumeHandle = {
    id: 2,
    layout: new VolumeLayout([
      { arrayId: 1, offset: 8 * M, length: M },
      { arrayId: 1, offset: 2 * M, length: M },
    ]),
    cachePolicy: 'write-back',
  };
  const d = seededBytes(M, 14);
  const at = M / 2 + P;
  await store.write(v, at, d, false);
  // [at, 1M) of the volume is array [8.5M + 4K, 9M); [1M, at + 1M) is array [2M, 2.5M + 4K).
  const first = M - at;
  t.same(onDisk(a, 8 * M + 9 * BS, 7 * BS), d.subarray(9 * BS - at, 16 * BS - at), 'the first extent’s whole blocks');
  t.same(onDisk(a, 2 * M, 8 * BS), d.subarray(first, first + 8 * BS), 'the second extent’s whole blocks');
  t.same(await readVol(store, v, at, d.length), d);
  await store.flush(v);
  t.same(onDisk(a, 8 * M + at, first), d.subarray(0, first));
  t.same(onDisk(a, 2 * M, d.length - first), d.subarray(first));
});

t.test('a large read of blocks not in memory goes around the cache; resident blocks still serve their part', async (t) => {
  const { store, a, route, v } = await setup(t);
  const old = seededBytes(2 * M, 20);
  await a.write(old, 0, old.length, 0);
  const before = store.stats();
  t.same(await readVol(store, v, 100, M), old.subarray(100, 100 + M), 'the bytes');
  const after = store.stats();
  t.equal(after.cachedBytes, before.cachedBytes, 'no block kept');
  t.equal(after.loads, before.loads, 'no slot loaded');
  // A small read caches its block; a large read over it takes that block from memory, the rest around.
  t.same(await readVol(store, v, M + 2 * BS, P), old.subarray(M + 2 * BS, M + 2 * BS + P));
  const d = seededBytes(P, 21);
  await store.write(v, M + 2 * BS, d, false);
  const model = Buffer.from(old);
  d.copy(model, M + 2 * BS);
  t.same(await readVol(store, v, M, M), model.subarray(M, 2 * M), 'the dirty resident block is read from memory, not the array');
  // Below the size, misses are cached as ever.
  const c0 = store.stats().cachedBytes;
  await readVol(store, v, 0, 256 * 1024 - P);
  t.ok(store.stats().cachedBytes > c0, 'a smaller read fills the cache');
});
