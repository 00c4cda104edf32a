import path from 'node:path';
import t from 'tap';
import { readVol, storeOnArray } from '../helpers/cache-store.js';
import { BlockStore, OwnershipMap, SnapshotLink, type CachePolicy, type VolumeHandle } from '../../cache/index.js';
import { VolumeLayout as Layout } from '../../mapper/index.js';
import { holdGroup } from '../../manager/index.js';
import { VolumeLayout } from '../../mapper/index.js';
import { ChangeMap, IoStats, changeMaps, openUnit } from '../../target/core/index.js';
import { freshFences, type Unit } from '../../target/index.js';

const K = 1024;
const M = 1024 * K;
const SIZE = 4 * M;
const CHUNK = 64 * K;

async function setup(tt: { teardown: (fn: () => unknown) => void }): Promise<BlockStore> {
  return (await storeOnArray(tt)).store;
}

function unit(cachePolicy: CachePolicy): Unit {
  return {
    host: 'h',
    target: 0,
    lun: 0,
    volume: { id: 7, layout: new VolumeLayout([{ arrayId: 1, offset: 1 * M, length: SIZE }]), cachePolicy },
    volumeName: 'v',
    serial: 'S',
    naa: '3000',
    readOnly: false,
    stats: new IoStats(),
    protocols: ['nbd', 'iscsi'],
    fences: freshFences(),
  };
}

const marked = (m: ChangeMap): number[] => [...Array(m.chunks).keys()].filter((i) => m.has(i));

t.test('ChangeMap marks every chunk a range touches, clipped to the volume; merge adds marks', async (t) => {
  const m = new ChangeMap(CHUNK, 10 * CHUNK + 100);
  t.equal(m.chunks, 11);
  m.mark(CHUNK - 1, 2);
  t.same(marked(m), [0, 1], 'a 2-byte write across a boundary marks both chunks');
  m.mark(10 * CHUNK, 100);
  m.mark(5 * CHUNK, 0);
  t.same(marked(m), [0, 1, 10], 'the short last chunk; a zero-length range marks nothing');
  const o = new ChangeMap(CHUNK, 10 * CHUNK + 100);
  o.mark(3 * CHUNK, CHUNK);
  m.merge(o);
  t.same(marked(m), [0, 1, 3, 10]);
  t.equal(m.count(), 4);
  t.throws(() => new ChangeMap(CHUNK, 10 * CHUNK, new Uint8Array(5)), 'a bitmap of the wrong size is refused');
});

t.test('writes, trims and zeroes through a unit mark the change map when they settle', async (t) => {
  const store = await setup(t);
  for (const policy of ['write-back', 'write-through'] as const) {
    const m = new ChangeMap(CHUNK, SIZE);
    changeMaps(store).set(7, m);
    const io = openUnit(store, unit(policy), 'nbd');
    await io.write(0, Buffer.alloc(4096, 1), false);
    await io.write(2 * CHUNK + 10, Buffer.alloc(CHUNK, 2), true);
    await io.trim(10 * CHUNK, CHUNK, false);
    await io.zero(20 * CHUNK, 2 * CHUNK, { noHole: false, fast: false, fua: false });
    t.same(marked(m), [0, 2, 3, 10, 20, 21], `${policy}: every modifying request is marked`);
    const r = Buffer.alloc(4096);
    await io.read(40 * CHUNK, 4096, r);
    t.equal(m.has(40), false, 'a read marks nothing');
    changeMaps(store).delete(7);
  }
});

t.test('a write held by a quiesce lands in the map swapped in during the hold', async (t) => {
  const store = await setup(t);
  const before = new ChangeMap(CHUNK, SIZE);
  changeMaps(store).set(7, before);
  const io = openUnit(store, unit('write-back'), 'nbd');
  const release = await store.quiesce(7);
  const held = io.write(5 * CHUNK, Buffer.alloc(4096, 9), false);
  // The backup's snapshot is taken here, and the maps swapped.
  const after = new ChangeMap(CHUNK, SIZE);
  changeMaps(store).set(7, after);
  release();
  await held;
  t.same(marked(before), [], 'the map the backup took does not claim the held write');
  t.same(marked(after), [5], 'the next backup copies it');
});

/**
 * Issue 15's incremental miss. A modifying request that reaches the store
 * while no gate tracks its volume is not counted by the gate a later hold
 * makes, so the hold reached its instant (snapshot linked, maps swapped)
 * with the request still on its way: its bytes then landed in the origin
 * under the fresh snapshot (no copy-up: the hook list was read when it
 * started) and its mark in the map of the NEXT backup, so the backup that
 * holds the bytes did not copy the chunk. A write hook holds the request
 * before the cache, where a snapshot's copy-up (or a wait for dirty room,
 * or a page read) keeps a real one.
 */
t.test('a hold waits for modifying requests that started before the volume was tracked; they are marked in the map taken at its instant', async (t) => {
  const store = await setup(t);
  const u = unit('write-back');
  const io = openUnit(store, u, 'nbd');
  const kinds: [string, () => Promise<void>][] = [
    ['write', () => io.write(9 * CHUNK, Buffer.alloc(4096, 5), false) ?? Promise.resolve()],
    ['FUA write', () => io.write(9 * CHUNK + 8192, Buffer.alloc(512, 6), true) ?? Promise.resolve()],
    ['trim', () => io.trim(9 * CHUNK, CHUNK, false)],
    ['zero', () => io.zero(9 * CHUNK, 4096, { noHole: true, fast: false, fua: false })],
  ];
  for (const [kind, send] of kinds) {
    const before = new ChangeMap(CHUNK, SIZE);
    changeMaps(store).set(7, before);
    let letGo!: () => void;
    const onItsWay = new Promise<void>((r) => (letGo = r));
    store.setWriteHook(7, () => onItsWay);
    let settled = false;
    const req = send().then(() => {
      settled = true;
    });
    store.setWriteHook(7, null);
    t.equal(store.tracks(7), false, `${kind}: it went in while nothing tracked the volume`);
    const after = new ChangeMap(CHUNK, SIZE);
    let settledAtInstant: boolean | null = null;
    const held = holdGroup(store, [u.volume], () => {
      settledAtInstant = settled;
      changeMaps(store).set(7, after);
    });
    // A hold that does not wait for the request reaches its instant after one flush (an array sync):
    // a few flushes of our own give it every chance to, before the request is let go.
    for (let i = 0; i < 5 && settledAtInstant === null; i++) await store.flush(u.volume);
    letGo();
    await req;
    await held;
    t.equal(settledAtInstant, true, `${kind}: the hold reached its instant only after the request settled`);
    t.same(marked(before), [9], `${kind}: the map taken at the instant has its chunk`);
    t.same(marked(after), [], `${kind}: the next map does not`);
  }
  changeMaps(store).delete(7);

  // Compare-and-write has the volume to itself the same way: it compares with the bytes of a write that was on its way.
  let letGo!: () => void;
  const onItsWay = new Promise<void>((r) => (letGo = r));
  store.setWriteHook(7, () => onItsWay);
  const landing = Buffer.alloc(4096, 7);
  const req = io.write(30 * CHUNK, landing, false) ?? Promise.resolve();
  store.setWriteHook(7, null);
  let compared: { mismatchAt: number } | null = null;
  const caw = io.compareAndWrite(30 * CHUNK, landing, Buffer.alloc(4096, 8), false).then((r) => (compared = r));
  for (let i = 0; i < 5 && compared === null; i++) await store.flush(u.volume);
  letGo();
  await req;
  await caw;
  t.same(compared, { mismatchAt: -1 }, 'compare-and-write waited for the write on its way and compared with its bytes');
});

/**
 * Issue 15's incremental miss, as the ordered writer of interop/backups
 * meets it: its one write in flight arrives while the group is held, before
 * the snapshot is linked. Let go after the link, it must copy its region up
 * first like any later write: if it went straight to the origin, the
 * snapshot (whose shared regions read the origin) would hold a write the
 * map taken at the instant does not have, and the incremental would not copy
 * the chunk the snapshot and the checksum say changed.
 */
t.test('a write held by the backup\'s hold copies its region up when let go after the link: the snapshot keeps the point in time', async (t) => {
  const { store, dir } = await storeOnArray(t);
  const u = unit('write-back');
  const io = openUnit(store, u, 'nbd');
  const then = Buffer.alloc(4096, 1);
  await io.write(12 * CHUNK, then, false);
  const before = new ChangeMap(CHUNK, SIZE);
  changeMaps(store).set(7, before);
  const snap: VolumeHandle = { id: 8, layout: new Layout([{ arrayId: 1, offset: 8 * M, length: SIZE }]), cachePolicy: 'write-back' };
  const map = await OwnershipMap.create(path.join(dir, 'own'), 256 * K, SIZE / (256 * K));
  t.teardown(() => map.close());
  const after = new ChangeMap(CHUNK, SIZE);
  let held: Promise<void> | null = null;
  await holdGroup(store, [u.volume], () => {
    // The host's write arrives while the group is held (the drain and flush run meanwhile): it waits for the release.
    held = io.write(12 * CHUNK, Buffer.alloc(4096, 2), false);
    store.linkSnapshot(new SnapshotLink(snap, u.volume, map, store.cowIo));
    changeMaps(store).set(7, after);
  });
  t.ok(held, 'the write was held, not done at once');
  await held;
  t.same(await readVol(store, snap, 12 * CHUNK, 4096), then, 'the snapshot reads the bytes of its instant');
  t.same(await readVol(store, u.volume, 12 * CHUNK, 4096), Buffer.alloc(4096, 2), 'the origin has the new bytes');
  t.equal(map.own[(12 * CHUNK) / (256 * K)], 1, 'the region was copied up');
  t.same(marked(before), [], 'the map taken at the instant does not have the held write');
  t.same(marked(after), [12], 'the next one does');
  store.unlinkSnapshot(8);
  changeMaps(store).delete(7);
});
