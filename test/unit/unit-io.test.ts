import t from 'tap';
import { storeOnArray } from '../helpers/cache-store.js';
import { BlockStore, type CachePolicy } from '../../cache/index.js';
import { isBlockgateError } from '../../common/errors.js';
import type { ArrayFile } from '../../disks/index.js';
import { VolumeLayout } from '../../mapper/index.js';
import { OP, IoStats, openUnit, type UnitIO } from '../../target/core/index.js';
import { freshFences, type Unit } from '../../target/index.js';

const K = 1024;
const M = 1024 * K;
const SIZE = 4 * M;

/** A store over a real sparse array file in a temp dir, closed in teardown. */
async function setup(tt: { teardown: (fn: () => unknown) => void }, dirtyLimit?: number): Promise<{ store: BlockStore; array: ArrayFile }> {
  const { store, a } = await storeOnArray(tt, { dirtyLimit });
  return { store, array: a };
}

/** One volume at array offset 1 MiB, seen as a unit by `host`. */
function unit(host: string, cachePolicy: CachePolicy = 'write-back', readOnly = false, volumeId = 7): Unit {
  return {
    host,
    target: 0,
    lun: 0,
    volume: { id: volumeId, layout: new VolumeLayout([{ arrayId: 1, offset: 1 * M, length: SIZE }]), cachePolicy },
    volumeName: 'v',
    serial: 'S',
    naa: '3000',
    readOnly,
    stats: new IoStats(),
    protocols: ['nbd', 'iscsi'],
    fences: freshFences(),
  };
}

async function code(p: Promise<unknown> | null): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return isBlockgateError(err) ? err.code : String(err);
  }
}

function codeOfSync(fn: () => unknown): string {
  try {
    fn();
    return 'ok';
  } catch (err) {
    return isBlockgateError(err) ? err.code : String(err);
  }
}

const fill = (n: number, v: number): Buffer => Buffer.alloc(n, v);

async function readAll(io: UnitIO, offset: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length);
  await io.read(offset, length, b);
  return b;
}

t.test('reads and writes land in the volume; bytes outside the range are refused, never touched', async (t) => {
  const { store, array } = await setup(t);
  const u = unit('h', 'write-through');
  const io = openUnit(store, u, 'nbd');
  t.equal(io.size(), SIZE);
  await io.write(4096, fill(8192, 0xab), false);
  t.same(await readAll(io, 4096, 8192), fill(8192, 0xab), 'read back');
  // The array holds the bytes at the extent's offset.
  const onDisk = Buffer.alloc(8192);
  await array.read(onDisk, 0, 8192, 1 * M + 4096);
  t.same(onDisk, fill(8192, 0xab), 'written through at the extent offset');

  t.equal(await code(io.read(SIZE - 10, 20, Buffer.alloc(20))), 'OUT_OF_RANGE', 'read past the end');
  await t.rejects(io.read(SIZE, 1, Buffer.alloc(1))!, /beyond the end of the unit/, 'refused by the unit, before the store');
  t.equal(await code(io.write(SIZE - 10, fill(20, 1), false)), 'OUT_OF_RANGE', 'write past the end');
  t.equal(await code(io.write(-1, fill(2, 1), false)), 'OUT_OF_RANGE', 'negative offset');
  t.equal(await code(io.trim(SIZE, 4096, false)), 'OUT_OF_RANGE', 'trim past the end');
  t.equal(await code(io.zero(SIZE - 4096, 8192, { noHole: false, fast: false, fua: false })), 'OUT_OF_RANGE', 'zero past the end');
  t.equal(await code(io.prefetch(SIZE, 1)), 'OUT_OF_RANGE', 'prefetch past the end');
  t.equal(await code(io.compareAndWrite(SIZE - 1, fill(2, 0), fill(2, 1), false)), 'OUT_OF_RANGE', 'compare and write past the end');
  t.equal(codeOfSync(() => io.extents(SIZE - 1, 2, 10)), 'OUT_OF_RANGE', 'extents past the end');
  t.equal(io.allData(SIZE - 1, 2), false, 'allData past the end is false');
  // The refused write past the end did not spill into the array beyond the extent.
  const after = Buffer.alloc(16);
  await array.read(after, 0, 16, 1 * M + SIZE);
  t.same(after, fill(16, 0), 'nothing written past the extent');
  t.equal(await code(io.compareAndWrite(0, fill(2, 0), fill(3, 1), false)), 'BAD_REQUEST', 'compare and write with unequal lengths');
});

t.test('a read-only unit refuses every change, and reads', async (t) => {
  const { store } = await setup(t);
  const rw = openUnit(store, unit('h'), 'nbd');
  await rw.write(0, fill(512, 9), false);
  const ro = openUnit(store, unit('ro', 'write-back', true), 'nbd');
  t.equal(ro.caps().readOnly, true);
  t.equal(await code(ro.write(0, fill(512, 1), false)), 'READ_ONLY');
  t.equal(await code(ro.trim(0, 4096, false)), 'READ_ONLY');
  t.equal(await code(ro.zero(0, 4096, { noHole: false, fast: false, fua: false })), 'READ_ONLY');
  t.equal(await code(ro.compareAndWrite(0, fill(512, 9), fill(512, 1), false)), 'READ_ONLY');
  t.same(await readAll(ro, 0, 512), fill(512, 9), 'reads still work and see the data unchanged');
});

t.test('cache hits and in-memory write-back writes complete at once (null), and are counted', async (t) => {
  const { store, array } = await setup(t);
  const u = unit('h', 'write-back');
  const io = openUnit(store, u, 'nbd');
  const hole = Buffer.alloc(4096, 0xff);
  t.equal(io.read(8192, 4096, hole), null, 'a never-written range is done at once');
  t.same(hole, fill(4096, 0), 'as zeroes');
  await array.write(fill(4096, 3), 0, 4096, 1 * M);
  const first = io.read(0, 4096, Buffer.alloc(4096));
  t.not(first, null, 'a miss goes to the array');
  await first;
  const dest = Buffer.alloc(4096, 0xff);
  t.equal(io.read(0, 4096, dest), null, 'a hit is done at once');
  t.same(dest, fill(4096, 3), 'with the bytes in place');
  t.equal(io.write(0, fill(4096, 5), false), null, 'a write-back write to a cached block is done at once');
  const fua = io.write(0, fill(4096, 6), true);
  t.not(fua, null, 'FUA is not');
  await fua;
  await io.flush();
  t.equal(u.stats.ops[OP.read], 3, 'reads counted');
  t.equal(u.stats.bytes[OP.read], 12288);
  t.equal(u.stats.ops[OP.write], 2, 'writes counted');
  t.equal(u.stats.ops[OP.flush], 1, 'flush counted');
  await code(io.read(SIZE, 1, Buffer.alloc(1)));
  t.equal(u.stats.errors[OP.read], 1, 'refusals count as errors');
  t.equal(openUnit(store, u, 'nbd'), io, 'one UnitIO per published unit');
});

t.test('extents: allocation runs in unit bytes with data, zero and hole states', async (t) => {
  const { store } = await setup(t);
  const io = openUnit(store, unit('h', 'write-through'), 'nbd');
  t.same(io.extents(0, 64 * K, 100), [{ offset: 0, length: 64 * K, state: 'hole' }], 'a new volume is one hole');
  await io.write(8 * K, fill(8 * K, 1), false);
  await io.zero(32 * K, 8 * K, { noHole: true, fast: false, fua: false });
  t.same(
    io.extents(0, 64 * K, 100),
    [
      { offset: 0, length: 8 * K, state: 'hole' },
      { offset: 8 * K, length: 8 * K, state: 'data' },
      { offset: 16 * K, length: 16 * K, state: 'hole' },
      { offset: 32 * K, length: 8 * K, state: 'zero' },
      { offset: 40 * K, length: 24 * K, state: 'hole' },
    ],
    'data, zero and holes',
  );
  t.same(io.extents(4 * K, 8 * K, 1), [{ offset: 4 * K, length: 4 * K, state: 'hole' }], 'at most max runs, offsets from the query start');
  t.ok(io.allData(8 * K, 8 * K), 'allData over the written run');
  t.notOk(io.allData(8 * K, 12 * K), 'not over a hole');
  await io.trim(8 * K, 8 * K, false);
  t.same(io.extents(0, 16 * K, 100), [{ offset: 0, length: 16 * K, state: 'hole' }], 'trimmed back to a hole');
  t.same(await readAll(io, 8 * K, 8 * K), fill(8 * K, 0), 'and reads zeroes');
  // Dirty write-back data counts as data before it reaches the array.
  const wb = openUnit(store, unit('h2', 'write-back', false, 8), 'nbd');
  await wb.write(0, fill(4 * K, 3), false);
  t.equal(wb.extents(0, 4 * K, 10)[0]!.state, 'data', 'dirty cached bytes are data');
});

t.test('compareAndWrite writes only on a match and reports the first difference', async (t) => {
  const { store } = await setup(t);
  const u = unit('h', 'write-back');
  const io = openUnit(store, u, 'nbd');
  await io.write(0, fill(1024, 0x11), false);
  const expected = fill(1024, 0x11);
  expected[700] = 0x12;
  t.same(await io.compareAndWrite(0, expected, fill(1024, 0x22), false), { mismatchAt: 700 }, 'mismatch at byte 700');
  t.same(await readAll(io, 0, 1024), fill(1024, 0x11), 'nothing written on a mismatch');
  t.same(await io.compareAndWrite(0, fill(1024, 0x11), fill(1024, 0x22), false), { mismatchAt: -1 }, 'match');
  t.same(await readAll(io, 0, 1024), fill(1024, 0x22), 'written on a match');
  t.equal(store.tracks(u.volume.id), false, 'the volume is untracked again: fast paths return');
  t.equal(io.write(0, fill(1024, 0x23), false), null, 'an in-memory write is done at once after it');
});

t.test('compareAndWrite is atomic against other compare-and-writes from every host', async (t) => {
  const { store } = await setup(t);
  // Two hosts see the same volume through their own units (as two protocols would).
  const ios = [openUnit(store, unit('a', 'write-through'), 'nbd'), openUnit(store, unit('b', 'write-through'), 'nbd')];
  const N = 16;
  // Every contender tries to take the lock word from 0 to its id at once: exactly one may win.
  const results = await Promise.all(
    Array.from({ length: N }, (_, i) => {
      const word = Buffer.alloc(512);
      word.writeUInt32BE(i + 1, 0);
      return ios[i % 2]!.compareAndWrite(4096, Buffer.alloc(512), word, false);
    }),
  );
  const winners = results.map((r, i) => (r.mismatchAt === -1 ? i + 1 : 0)).filter((x) => x > 0);
  t.equal(winners.length, 1, 'one winner');
  t.equal((await readAll(ios[0]!, 4096, 512)).readUInt32BE(0), winners[0], 'holding its id');
  for (const r of results) if (r.mismatchAt !== -1) t.equal(r.mismatchAt, 3, 'losers see the winner\'s id (differs in the last byte)');
});

t.test('compareAndWrite waits for writes already in flight and holds back later ones', async (t) => {
  const { store } = await setup(t);
  const a = openUnit(store, unit('a', 'none'), 'nbd');
  const b = openUnit(store, unit('b', 'none'), 'nbd');
  await a.write(0, fill(64 * K, 0xaa), false);
  // In flight before the compare (policy none: it goes to the array) ...
  const before = b.write(0, fill(64 * K, 0xbb), false);
  t.not(before, null, 'the write is in flight');
  const caw = a.compareAndWrite(0, fill(64 * K, 0xaa), fill(64 * K, 0xcc), false);
  // ... and one issued after it, while it holds the volume.
  const after = b.write(0, fill(64 * K, 0xdd), false);
  const r = await caw;
  await Promise.all([before, after]);
  t.equal(r.mismatchAt, 0, 'the compare saw the earlier write, so it did not match');
  t.same(await readAll(a, 0, 64 * K), fill(64 * K, 0xdd), 'the later write landed last');
});

t.test('compareAndWrite waits while a control operation holds the volume', async (t) => {
  const { store } = await setup(t);
  const u = unit('h', 'write-back');
  const io = openUnit(store, u, 'nbd');
  await io.write(0, fill(512, 1), false);
  const release = await store.quiesce(u.volume.id);
  let done = false;
  const caw = io.compareAndWrite(0, fill(512, 1), fill(512, 2), false).then((r) => {
    done = true;
    return r;
  });
  // Let every queued step run: the compare must still be held.
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  t.equal(done, false, 'held by the quiesce');
  release();
  t.same(await caw, { mismatchAt: -1 }, 'runs once released');
  t.same(await readAll(io, 0, 512), fill(512, 2));
});

t.test('compareAndWrite waits for a write made at the dirty limit (in flight to the array, not in the cache)', async (t) => {
  // Dirty limit of two cache blocks: four dirty blocks put writers over it, and the next write goes to the array.
  const { store } = await setup(t, 128 * K);
  const a = openUnit(store, unit('a', 'write-back'), 'nbd');
  const b = openUnit(store, unit('b', 'write-back'), 'nbd');
  await a.write(0, fill(64 * K, 0xaa), false);
  await b.write(1 * M, fill(192 * K, 0x55), false);
  t.ok(store.cache.overDirtyLimit, 'over the dirty limit');
  const before = b.write(0, fill(64 * K, 0xbb), false);
  t.not(before, null, 'the write is in flight to the array');
  const r = await a.compareAndWrite(0, fill(64 * K, 0xaa), fill(64 * K, 0xcc), false);
  await before;
  t.equal(r.mismatchAt, 0, 'the compare saw the earlier write');
  t.same(await readAll(a, 0, 64 * K), fill(64 * K, 0xbb), 'and wrote nothing over it');
});
