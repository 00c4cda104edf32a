import t from 'tap';
import type { BlockStore, VolumeHandle } from '../../cache/index.js';
import { ALLOC_BLOCK, AllocState, ArrayFile } from '../../disks/index.js';
import { VolumeLayout } from '../../mapper/index.js';
import { storeOnArray } from '../helpers/cache-store.js';

/**
 * The exact interleaving behind issue 13 item 0, made deterministic: a
 * WRITE_ZEROES of sector Y has changed the array but not yet finished when
 * writes to X (before Y) and Z (after Y) in the same cache block arrive and a
 * FLUSH writes the block back. Without the changing state the block's dirty
 * span [X, Z) carried Y's old cached bytes back over the zeroes and marked
 * them data.
 */

const K = 1024;
const M = 1024 * K;

async function setup(tt: { teardown: (fn: () => unknown) => void }): Promise<{ store: BlockStore; a: ArrayFile; v: VolumeHandle }> {
  const { store, a } = await storeOnArray(tt, { arraySize: 4 * M });
  return { store, a, v: { id: 1, layout: new VolumeLayout([{ arrayId: 1, offset: 0, length: 4 * M }]), cachePolicy: 'write-back' } };
}

/** Holds a.writeZeroes / a.trim after the array changed, until released: the window the race needs. */
function holdAfterChange(a: ArrayFile): { entered: Promise<void>; release: () => void } {
  let release!: () => void;
  let entered!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const inside = new Promise<void>((r) => (entered = r));
  const zero = a.writeZeroes.bind(a);
  const trim = a.trim.bind(a);
  a.writeZeroes = async (...args) => {
    await zero(...args);
    entered();
    await held;
  };
  // trim is synchronous on ArrayFile; the store awaits whatever apply returns, so a promise works here too.
  a.trim = ((...args: Parameters<ArrayFile['trim']>) => {
    trim(...args);
    entered();
    return held;
  }) as unknown as ArrayFile['trim'];
  return { entered: inside, release };
}

const fill = (n: number, byte: number): Buffer => Buffer.alloc(n, byte);

for (const cmd of ['zero', 'trim'] as const) {
  t.test(`${cmd}: writes around the changed sector in the same cache block cannot bring its old bytes back`, async (t) => {
    const { store, a, v } = await setup(t);
    // Y = [8K, 12K) inside cache block 0; X = [0, 4K), Z = [16K, 20K).
    await store.write(v, 0, fill(64 * K, 0xaa), false);
    await store.flush(v);
    const h = holdAfterChange(a);
    const change = cmd === 'zero' ? store.writeZeroes(v, 8 * K, 4 * K, { noHole: false, fast: false, fua: false }) : store.trim(v, 8 * K, 4 * K, false);
    await h.entered;
    const x = store.write(v, 0, fill(4 * K, 0xbb), false);
    const z = store.write(v, 16 * K, fill(4 * K, 0xcc), false);
    const f = store.flush(v);
    const during = Buffer.alloc(4 * K);
    const r = store.read(v, 8 * K, 4 * K, during);
    h.release();
    await Promise.all([change, x, z, f, r]);
    t.ok(during.equals(fill(4 * K, 0)) || during.equals(fill(4 * K, 0xaa)), 'a read concurrent with the change sees the old or the new bytes');

    const after = Buffer.alloc(64 * K);
    await store.read(v, 0, 64 * K, after);
    t.ok(after.subarray(8 * K, 12 * K).equals(fill(4 * K, 0)), 'the acknowledged change reads as zeroes');
    t.ok(after.subarray(0, 4 * K).equals(fill(4 * K, 0xbb)) && after.subarray(16 * K, 20 * K).equals(fill(4 * K, 0xcc)), 'the writes around it stuck');
    t.ok(after.subarray(4 * K, 8 * K).equals(fill(4 * K, 0xaa)) && after.subarray(12 * K, 16 * K).equals(fill(4 * K, 0xaa)), 'bytes nobody changed kept theirs');

    await store.flush(v);
    t.not(a.alloc.state((8 * K) / ALLOC_BLOCK), AllocState.Data, 'write-back wrote only the pages written: the changed sector is still no data in the map');
    const below = Buffer.alloc(4 * K);
    await a.read(below, 0, 4 * K, 8 * K);
    t.ok(below.equals(fill(4 * K, 0)), 'the array (below the cache) reads zeroes there');
  });
}

t.test('a block not in memory is not loaded from before the change while it lands', async (t) => {
  const { store, a, v } = await setup(t);
  await store.write(v, 0, fill(64 * K, 0xaa), false);
  await store.flush(v);
  await store.invalidate(1, 0, 64 * K);
  const h = holdAfterChange(a);
  const change = store.writeZeroes(v, 8 * K, 4 * K, { noHole: true, fast: false, fua: false });
  await h.entered;
  // A partial write into the block (read-modify-write load) and a read, both issued mid-change.
  const w = store.write(v, 0, fill(4 * K, 0xbb), false);
  const got = Buffer.alloc(64 * K);
  const r = store.read(v, 0, 64 * K, got);
  h.release();
  await Promise.all([change, w, r]);
  const after = Buffer.alloc(64 * K);
  await store.read(v, 0, 64 * K, after);
  t.ok(after.subarray(8 * K, 12 * K).equals(fill(4 * K, 0)), 'zeroes after the change was acknowledged');
  await store.flush(v);
  t.equal(a.alloc.state((8 * K) / ALLOC_BLOCK), AllocState.Zero, 'NO_HOLE zeroes stay ZERO in the map after the write-back');
});

t.test('a failed change drops the cached copies rather than guess', async (t) => {
  const { store, v } = await setup(t);
  await store.write(v, 0, fill(64 * K, 0xaa), false);
  await store.flush(v);
  // FAST_ZERO of a partial data block is refused before anything changes.
  await t.rejects(store.writeZeroes(v, 100, 200, { noHole: false, fast: true, fua: false }), { code: 'NOT_SUPPORTED' });
  const got = Buffer.alloc(64 * K);
  await store.read(v, 0, 64 * K, got);
  t.ok(got.equals(fill(64 * K, 0xaa)), 'the bytes are what the array holds');
});

t.test('a write inside the same 4 KiB page as a partial zero waits for it', async (t) => {
  const { store, a, v } = await setup(t);
  await store.write(v, 0, fill(64 * K, 0xaa), false);
  await store.flush(v);
  const h = holdAfterChange(a);
  // Zero bytes [8K+512, 8K+1024): the array gets zero bytes inside a data page.
  const change = store.writeZeroes(v, 8 * K + 512, 512, { noHole: false, fast: false, fua: false });
  await h.entered;
  // Same page, other bytes; then a write-back of that page while the change is still landing.
  const w = store.write(v, 8 * K, fill(512, 0xbb), false);
  const f = store.flush(v);
  h.release();
  await Promise.all([change, w, f]);
  await store.flush(v);
  // What the array holds, not what the cache remembers.
  await store.invalidate(1, 0, 64 * K);
  const got = Buffer.alloc(2 * K);
  await store.read(v, 8 * K, 2 * K, got);
  t.ok(got.subarray(0, 512).equals(fill(512, 0xbb)), 'the write stuck');
  t.ok(got.subarray(512, 1024).equals(fill(512, 0)), 'the zeroed bytes are zero on the array');
  t.ok(got.subarray(1024).equals(fill(1024, 0xaa)), 'the rest of the page kept its bytes');
});
