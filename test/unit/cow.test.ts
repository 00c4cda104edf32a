import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { OwnershipMap, SnapshotLink, type CowIo, type VolumeHandle } from '../../cache/index.js';
import type { ArrayFile } from '../../disks/index.js';
import { VolumeLayout } from '../../mapper/index.js';
import { onDisk, seededBytes, storeOnArray } from '../helpers/cache-store.js';

// Copy-on-write snapshots below the store: the ownership map's file (its
// header, a byte per region, refusals of a map that is not the snapshot's)
// and a link's copy-up (only what the origin holds moves, once, durably
// before the region counts as own; ranges, the short last region, retire).

const K = 1024;
const M = 1024 * K;
const P = 4 * K;
const R = 64 * K;
const HEADER = 4096;

const vol = (id: number, offset: number, length: number): VolumeHandle => ({
  id,
  layout: new VolumeLayout([{ arrayId: 1, offset, length }]),
  cachePolicy: 'write-back',
});

/** The store's own CowIo, with each call recorded in order (writes optionally held at a gate, or failed as the array would with EIO). */
function traced(inner: CowIo, log: string[]): CowIo & { gate: Promise<void> | null; failWrites: number } {
  const io = {
    gate: null as Promise<void> | null,
    read: async (v: VolumeHandle, offset: number, length: number, dest: Buffer) => {
      log.push(`read ${v.id} ${offset}+${length}`);
      await inner.read(v, offset, length, dest);
    },
    failWrites: 0,
    write: async (v: VolumeHandle, offset: number, src: Buffer) => {
      log.push(`write ${v.id} ${offset}+${src.length}`);
      if (io.gate) await io.gate;
      if (io.failWrites > 0) {
        io.failWrites--;
        throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });
      }
      await inner.write(v, offset, src);
    },
    runs: (v: VolumeHandle, offset: number, length: number) => inner.runs(v, offset, length),
    sync: async (v: VolumeHandle) => {
      log.push(`sync ${v.id}`);
      await inner.sync(v);
    },
  };
  return io;
}

t.test('an ownership map: its header, a byte per region, marks durable in the file, reopened as written', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-cow-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'own');
  const map = await OwnershipMap.create(file, R, 40);
  t.equal(map.regions, 40);
  t.equal(map.regionSize, R);
  t.equal(map.ownedCount(), 0);
  const raw = fs.readFileSync(file);
  t.equal(raw.length, HEADER + 40, 'a 4 KiB header, then a byte per region');
  t.equal(raw.toString('latin1', 0, 8), 'BGCOW001');
  t.equal(raw.readUInt32LE(8), R, 'the region size at byte 8');
  t.equal(raw.readUInt32LE(12), 40, 'the region count at byte 12');
  t.ok(raw.subarray(16).every((b) => b === 0), 'the rest of the header and every region byte are 0 (shared)');

  await map.mark(3);
  await map.mark(39);
  await map.mark(3);
  t.equal(map.own[3], 1);
  t.equal(map.own[39], 1);
  t.equal(map.ownedCount(), 2);
  const marked = fs.readFileSync(file);
  t.same(
    [...marked.subarray(HEADER)].flatMap((b, i) => (b !== 0 ? [[i, b]] : [])),
    [[3, 1], [39, 1]],
    'exactly the marked regions are 1 in the file',
  );
  t.same(marked.subarray(0, HEADER), raw.subarray(0, HEADER), 'the header is untouched');

  await map.close();
  await map.close();
  await t.rejects(map.mark(4), { code: 'IO_ERROR', message: /own is closed/ }, 'a closed map refuses marks');

  const again = await OwnershipMap.open(file, R, 40);
  t.teardown(() => again.close());
  t.equal(again.regions, 40);
  t.same([...again.own].flatMap((b, i) => (b ? [i] : [])), [3, 39], 'reopened: the marks are there, nothing else');
  t.equal(again.ownedCount(), 2);
});

t.test('open refuses a map that is not its snapshot\'s, and a missing or truncated one', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-cow-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'own');
  await (await OwnershipMap.create(file, R, 40)).close();
  const good = fs.readFileSync(file);
  const mismatch = /snapshot ownership map .*own does not match its snapshot \(40 regions of 65536 bytes\)/;
  await t.rejects(OwnershipMap.open(file, 2 * R, 40), { code: 'IO_ERROR', message: /does not match its snapshot \(40 regions of 131072 bytes\)/ }, 'another region size');
  await t.rejects(OwnershipMap.open(file, R, 41), { code: 'IO_ERROR', message: /does not match its snapshot \(41 regions/ }, 'another region count');
  for (const [what, edit] of [
    ['magic', (b: Buffer) => b.write('BGCOW002', 0, 'latin1')],
    ['region size in the file', (b: Buffer) => b.writeUInt32LE(R + 1, 8)],
    ['region count in the file', (b: Buffer) => b.writeUInt32LE(39, 12)],
  ] as const) {
    const b = Buffer.from(good);
    edit(b);
    fs.writeFileSync(file, b);
    await t.rejects(OwnershipMap.open(file, R, 40), { code: 'IO_ERROR', message: mismatch }, `a wrong ${what}`);
  }
  fs.writeFileSync(file, good.subarray(0, HEADER - 1));
  await t.rejects(OwnershipMap.open(file, R, 40), { code: 'IO_ERROR', message: mismatch }, 'a short header');
  fs.writeFileSync(file, good.subarray(0, HEADER + 10));
  await t.rejects(OwnershipMap.open(file, R, 40), { code: 'IO_ERROR', message: /own is truncated/ }, 'region bytes missing');
  fs.writeFileSync(file, good);
  const ok = await OwnershipMap.open(file, R, 40);
  t.equal(ok.ownedCount(), 0, 'the file as written opens');
  await ok.close();
  fs.rmSync(file);
  const missing = await OwnershipMap.open(file, R, 40).then(() => null, (e: unknown) => e as { code: string; message: string });
  t.same(missing && { code: missing.code, message: missing.message }, { code: 'IO_ERROR', message: `snapshot ownership map ${file}: ENOENT` }, 'a missing map: its errno code, not the whole system message');
});

t.test('a map that cannot be written: NO_SPACE for ENOSPC', { skip: fs.existsSync('/dev/full') ? false : 'no /dev/full on this machine' }, async (t) => {
  const e = await OwnershipMap.create('/dev/full', R, 4).then(() => null, (e: unknown) => e as { code: string; message: string });
  t.same(e && { code: e.code, message: e.message }, { code: 'NO_SPACE', message: 'snapshot ownership map /dev/full: ENOSPC' }, 'NO_SPACE, and the errno code only');
});

/**
 * An origin of 2 MiB + 8 KiB (33 regions, the last 8 KiB) at array offset 0 and its snapshot at 4 MiB,
 * the snapshot's space filled with 0xee so any byte a copy-up writes shows.
 */
async function linked(t: { teardown: (fn: () => unknown) => void }) {
  const { store, a, dir } = await storeOnArray(t, { blockSize: R });
  const size = 2 * M + 2 * P;
  const origin = vol(1, 0, size);
  const snap = vol(2, 4 * M, size);
  await a.write(Buffer.alloc(size, 0xee), 0, size, 4 * M);
  const regions = Math.ceil(size / R);
  const map = await OwnershipMap.create(path.join(dir, 'own'), R, regions);
  const log: string[] = [];
  const io = traced(store.cowIo, log);
  const link = new SnapshotLink(snap, origin, map, io);
  t.teardown(() => map.close());
  return { store, a, origin, snap, map, link, log, io, size, regions };
}

/** Writes `n` bytes (seeded) straight to the array at origin offset `at`: data the allocation map knows. */
async function put(a: ArrayFile, at: number, n: number, seed: number): Promise<Buffer> {
  const d = seededBytes(n, seed);
  await a.write(d, 0, n, at);
  return d;
}

const owned = (link: SnapshotLink): number[] => [...Array(link.regions).keys()].filter((i) => link.isOwn(i));

t.test('copy-up moves only what the origin holds, syncs, and only then marks the region own', async (t) => {
  const { a, link, map, log, regions } = await linked(t);
  t.equal(link.regionSize, R);
  t.equal(link.regions, regions);
  t.equal(regions, 33);
  const p1 = await put(a, R + P, P, 1);
  const p5 = await put(a, R + 5 * P, 2 * P, 2);
  t.notOk(link.isOwn(1), 'shared before the copy');
  await link.own(1);
  t.ok(link.isOwn(1));
  t.equal(map.own[1], 1);
  t.same(log, [`read 1 ${R}+${R}`, `write 2 ${R + P}+${P}`, `write 2 ${R + 5 * P}+${2 * P}`, 'sync 2'], 'the region read once, its two data runs written, then a sync');
  const expect = Buffer.alloc(R, 0xee);
  p1.copy(expect, P);
  p5.copy(expect, 5 * P);
  t.same(onDisk(a, 4 * M + R, R), expect, 'the holes of the origin stay untouched on the snapshot');
  t.same(onDisk(a, 4 * M, R), Buffer.alloc(R, 0xee), 'no other region written');
  t.same(owned(link), [1]);

  log.length = 0;
  await link.own(1);
  t.same(log, [], 'an own region copies nothing again');

  // A region the origin never wrote: nothing to move, no sync, but it is own now.
  await link.own(2);
  t.same(log, [], 'a hole region reads, writes and syncs nothing');
  t.ok(link.isOwn(2));
  t.same(onDisk(a, 4 * M + 2 * R, R), Buffer.alloc(R, 0xee));
});

t.test('the region is own on disk only after its bytes are synced', async (t) => {
  const { a, link, map, io, log } = await linked(t);
  await put(a, 3 * R, R, 3);
  const file = fs.readFileSync.bind(fs, map.path);
  let open: () => void = () => undefined;
  io.gate = new Promise((r) => (open = r));
  const copying = link.own(3);
  while (!log.some((l) => l.startsWith('write'))) await new Promise((r) => setImmediate(r));
  t.notOk(link.isOwn(3), 'not own while its bytes are being written');
  t.equal(file()[HEADER + 3], 0, 'nor in the file');
  open();
  await copying;
  t.equal(log.at(-1), 'sync 2');
  t.equal(file()[HEADER + 3], 1);
});

t.test('concurrent callers share one copy-up', async (t) => {
  const { a, link, log } = await linked(t);
  await put(a, 4 * R, P, 4);
  const x = link.own(4);
  const y = link.own(4);
  t.equal(x, y, 'the second caller gets the running copy');
  await Promise.all([x, y, link.ownRange(4 * R, 1)]);
  t.equal(log.filter((l) => l.startsWith('read')).length, 1, 'the origin read once');
  t.equal(log.filter((l) => l.startsWith('write')).length, 1, 'and written once');
});

t.test('ownRange owns exactly the regions a range touches, clipped to the last region', async (t) => {
  const { a, link, snap, size, regions } = await linked(t);
  await link.ownRange(R - 1, 2);
  t.same(owned(link), [0, 1], 'two bytes across a region edge: both regions');
  await link.ownRange(5 * R, R);
  t.same(owned(link), [0, 1, 5], 'one whole region');
  await link.ownRange(7 * R + 100, 0);
  t.same(owned(link), [0, 1, 5, 7], 'an empty range still owns the region it sits in');
  await link.ownRange(9 * R, R + 1);
  t.same(owned(link), [0, 1, 5, 7, 9, 10], 'one byte into the next region');
  // The short last region (8 KiB): copied whole up to the volume's end, nothing past it.
  const tail = await put(a, 32 * R, 2 * P, 9);
  await put(a, size, P, 10);
  await link.ownRange(31 * R, 8 * R);
  t.same(owned(link), [0, 1, 5, 7, 9, 10, 31, 32], 'a range past the end clipped to the last region');
  t.equal(regions, 33);
  t.same(onDisk(a, 4 * M + 32 * R, 2 * P), tail, 'the last region copied');
  t.same(onDisk(a, 4 * M + size, P), Buffer.alloc(P), 'nothing past the snapshot written');
  t.equal(snap.layout.size, size);
});

t.test('retire: every region counts as own at once; a running copy finishes before the map closes', async (t) => {
  const { a, link, map, io, log } = await linked(t);
  await put(a, 6 * R, P, 6);
  let open: () => void = () => undefined;
  io.gate = new Promise((r) => (open = r));
  const copying = link.own(6);
  while (!log.some((l) => l.startsWith('write'))) await new Promise((r) => setImmediate(r));
  let retired = false;
  const retiring = link.retire().then(() => (retired = true));
  await new Promise((r) => setImmediate(r));
  t.same(owned(link).length, link.regions, 'every region counts as own');
  t.notOk(retired, 'retire waits for the running copy');
  open();
  await Promise.all([copying, retiring]);
  t.ok(retired);
  t.equal(fs.readFileSync(map.path)[HEADER + 6], 1, 'the running copy was marked before the close');
  t.equal(fs.readFileSync(map.path).subarray(HEADER).reduce((n, b) => n + b, 0), 1, 'nothing else marked in the file');
  await t.rejects(map.mark(0), { code: 'IO_ERROR', message: /closed/ }, 'the map is closed');
  log.length = 0;
  await link.own(7);
  t.same(log, [], 'a retired link copies nothing');
});

t.test('a failed copy-up leaves the region shared, and the next write tries again', async (t) => {
  const { a, link, map, io, log } = await linked(t);
  const d = await put(a, 8 * R, P, 8);
  io.failWrites = 1;
  await t.rejects(link.own(8), { message: /EIO/ }, 'the copy-up fails with the array\'s error');
  t.notOk(link.isOwn(8), 'still shared');
  t.equal(fs.readFileSync(map.path)[HEADER + 8], 0, 'not marked in the file');
  log.length = 0;
  await link.own(8);
  t.ok(link.isOwn(8), 'the second try copies it');
  t.same(log, [`read 1 ${8 * R}+${R}`, `write 2 ${8 * R}+${P}`, 'sync 2']);
  t.same(onDisk(a, 4 * M + 8 * R, P), d);
});
