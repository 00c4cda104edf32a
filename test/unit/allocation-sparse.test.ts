import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ArrayFile } from '../../disks/index.js';
import { ALLOC_BLOCK } from '../../disks/allocation.js';

// The allocation map's cost follows what is written: leaves are made on first
// change, the sidecar holds only those, first-format sidecars are migrated,
// and a torn sidecar write never turns data into holes or holes into data.

const MiB = 1024 * 1024;
const TiB = 1024 ** 4;
const LEAF_SPAN = 16 * MiB;
const HEADER = 4096;
const SLOT = 8 + 4096;

type T = { teardown: (fn: () => unknown) => void };

/** A directory on a file system that holds sparse files past ext4's 16 TiB (tmpfs), else the usual tmpdir. */
function scratch(t: T, big = false): string {
  const root = big && fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = fs.mkdtempSync(path.join(root, 'blockgate-sparse-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function openArray(t: T, file: string, size: number, create: boolean): Promise<ArrayFile> {
  const a = new ArrayFile(1, 'a', file, size);
  await a.open(create);
  t.teardown(() => a.close());
  return a;
}

const read = async (a: ArrayFile, pos: number, len: number): Promise<Buffer> => {
  const b = Buffer.alloc(len, 0xff);
  await a.read(b, 0, len, pos);
  return b;
};

/** Why opening the array is refused (its fault reason), or 'opened'. */
async function refusal(file: string, size: number): Promise<string> {
  const a = new ArrayFile(1, 'a', file, size);
  return a.open(false).then(
    async () => {
      await a.close();
      return 'opened';
    },
    (e: { details?: { reason?: string } }) => e.details?.reason ?? String(e),
  );
}

const states = (a: ArrayFile, pos: number, len: number): number[] => {
  const out: number[] = [];
  a.allocationRuns(pos, len, (_o, n, st) => {
    for (let i = 0; i < Math.ceil(n / ALLOC_BLOCK); i++) out.push(st);
  });
  return out;
};

t.test('a 64 TiB array costs what is written: two leaves in RAM, two slots on disk', async (t) => {
  const dir = scratch(t, true);
  const file = path.join(dir, 'big.img');
  const size = 64 * TiB;
  const a = await openArray(t, file, size, true);
  t.equal(a.alloc.leafCount, 0, 'a new array has no leaves');
  t.equal(fs.statSync(`${file}.alloc`).size, HEADER, 'its sidecar is a header');
  t.same(a.alloc.census(), { unallocated: size / ALLOC_BLOCK, zero: 0, data: 0 });
  const near = size - 3 * MiB;
  await a.write(Buffer.alloc(MiB, 0x31), 0, MiB, 0);
  await a.write(Buffer.alloc(MiB, 0x32), 0, MiB, near);
  await a.write(Buffer.alloc(100, 0x33), 0, 100, size - 100);
  t.equal(a.alloc.leafCount, 2, 'the first and the last 16 MiB have leaves');
  t.ok(a.alloc.allData(0, MiB) && !a.alloc.allData(0, MiB + ALLOC_BLOCK), 'allData stops at the written range');
  await a.flush();
  t.equal(fs.statSync(`${file}.alloc`).size, HEADER + 2 * SLOT, 'the sidecar holds the two leaves');

  // Reopen without closing (as after a crash): only what the flush made durable counts.
  const b = await openArray(t, file, size, false);
  t.equal(b.alloc.leafCount, 2);
  t.same(b.alloc.census(), { unallocated: size / ALLOC_BLOCK - 2 * 256 - 1, zero: 0, data: 2 * 256 + 1 });
  t.ok((await read(b, 0, MiB)).every((x) => x === 0x31), 'first MiB');
  t.ok((await read(b, near, MiB)).every((x) => x === 0x32), 'a MiB near the end');
  const tail = await read(b, size - ALLOC_BLOCK, ALLOC_BLOCK);
  t.ok(tail.subarray(0, ALLOC_BLOCK - 100).every((x) => x === 0) && tail.subarray(ALLOC_BLOCK - 100).every((x) => x === 0x33), 'the padded last block');
  t.ok((await read(b, 32 * TiB, MiB)).every((x) => x === 0), 'the middle reads zeroes');
  const runs: [number, number, number][] = [];
  b.allocationRuns(0, size, (o, n, st) => runs.push([o, n, st]));
  t.same(runs, [
    [0, MiB, 2],
    [MiB, near - MiB, 0],
    [near, MiB, 2],
    [near + MiB, 2 * MiB - ALLOC_BLOCK, 0],
    [size - ALLOC_BLOCK, ALLOC_BLOCK, 2],
  ], 'runs across 64 TiB are the written ranges and one hole between');
});

t.test('a first-format sidecar is read, rewritten in the current format, and says the same', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'old.img');
  const size = 40 * MiB;
  const blocks = size / ALLOC_BLOCK;
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  // BGALLOC1: a 4 KiB header, then a byte per block over the whole array.
  const v1 = Buffer.alloc(HEADER + blocks);
  v1.write('BGALLOC1', 0, 'latin1');
  v1.writeUInt32LE(ALLOC_BLOCK, 8);
  v1.writeUInt32LE(blocks, 12);
  const fd = fs.openSync(file, 'r+');
  for (const [block, st] of [[0, 2], [1, 1], [5, 2], [4096 * 2 + 7, 2], [blocks - 1, 1]] as const) {
    v1[HEADER + block] = st;
    if (st === 2) fs.writeSync(fd, Buffer.alloc(ALLOC_BLOCK, 0x40 + (block % 64)), 0, ALLOC_BLOCK, block * ALLOC_BLOCK);
  }
  fs.closeSync(fd);
  fs.writeFileSync(`${file}.alloc`, v1);

  const a = await openArray(t, file, size, false);
  const want = (x: ArrayFile): void => {
    const s = states(x, 0, size);
    t.same([s[0], s[1], s[2], s[5], s[4096 * 2 + 7], s[blocks - 1]], [2, 1, 0, 2, 2, 1], 'states carried over');
    t.same(x.alloc.census(), { data: 3, zero: 2, unallocated: blocks - 5 });
  };
  want(a);
  t.equal(a.alloc.leafCount, 2, 'only the leaves with something in them are kept (leaf 1 was all holes)');
  const side = fs.readFileSync(`${file}.alloc`);
  t.equal(side.toString('latin1', 0, 8), 'BGALLOC2', 'rewritten in the current format');
  t.equal(side.length, HEADER + 2 * SLOT);
  t.notOk(fs.existsSync(`${file}.alloc.new`), 'no temporary file is left');
  t.ok((await read(a, 5 * ALLOC_BLOCK, ALLOC_BLOCK)).every((x) => x === 0x45), 'data reads back');
  const b = await openArray(t, file, size, false);
  want(b);
});

t.test('an array from before tracking stays data without a leaf per 16 MiB; a discard there is durable', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'legacy.img');
  const size = 64 * MiB;
  fs.writeFileSync(file, Buffer.alloc(2 * MiB, 0x42));
  fs.truncateSync(file, size);
  const a = await openArray(t, file, size, false);
  t.equal(a.alloc.leafCount, 0, 'all-data by default, no leaves');
  t.equal(a.alloc.census().data, size / ALLOC_BLOCK);
  a.discardSync(LEAF_SPAN + MiB, MiB);
  await a.write(Buffer.alloc(ALLOC_BLOCK, 0x43), 0, ALLOC_BLOCK, 2 * LEAF_SPAN);
  a.trim(3 * LEAF_SPAN, 2 * ALLOC_BLOCK);
  await a.flush();
  const b = await openArray(t, file, size, false);
  t.same(b.alloc.census(), { data: size / ALLOC_BLOCK - 256 - 2, zero: 0, unallocated: 256 + 2 });
  t.ok((await read(b, 0, MiB)).every((x) => x === 0x42), 'old data still reads');
  t.ok((await read(b, LEAF_SPAN + MiB, MiB)).every((x) => x === 0), 'the discarded MiB reads zeroes');
  t.ok((await read(b, 2 * LEAF_SPAN, ALLOC_BLOCK)).every((x) => x === 0x43), 'a new write reads back');
});

t.test('a torn sidecar write: states that did not land read as the leaf was before, an untagged slot is ignored', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'torn.img');
  const size = 64 * MiB;
  fs.writeFileSync(file, Buffer.alloc(MiB, 0x42));
  fs.truncateSync(file, size);
  {
    const a = await openArray(t, file, size, false);
    a.trim(0, MiB);
    await a.flush();
    await a.close();
  }
  // The slot's tag landed, its states did not (zeroes where the file grew): the leaf must read as before, all data.
  const map = `${file}.alloc`;
  const fd = fs.openSync(map, 'r+');
  fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, HEADER + 8);
  // And a later slot whose tag never landed, with states that did (a first persist torn the other way).
  fs.writeSync(fd, Buffer.alloc(SLOT, 2), 0, SLOT, HEADER + SLOT);
  fs.writeSync(fd, Buffer.alloc(8), 0, 8, HEADER + SLOT);
  fs.closeSync(fd);
  const b = await openArray(t, file, size, false);
  t.equal(b.alloc.census().data, size / ALLOC_BLOCK, 'every block is data again, as before the torn persist');
  t.ok((await read(b, 0, MiB)).every((x) => x === 0x42));
  b.trim(LEAF_SPAN, ALLOC_BLOCK);
  await b.flush();
  t.equal(fs.statSync(map).size, HEADER + 3 * SLOT, 'a new leaf goes after the torn slot, not over it');
  // A first persist cut short inside its slot (tag landed, the file ends early, the header does not count it yet):
  // given up, so the leaf is never loaded from two slots.
  b.trim(2 * LEAF_SPAN, ALLOC_BLOCK);
  await b.close();
  fs.truncateSync(map, HEADER + 3 * SLOT + 100);
  const hd = fs.openSync(map, 'r+');
  const count = Buffer.alloc(4);
  count.writeUInt32LE(3);
  fs.writeSync(hd, count, 0, 4, 28);
  fs.closeSync(hd);
  const again = await openArray(t, file, size, false);
  t.same(again.alloc.census(), { data: size / ALLOC_BLOCK - 1, zero: 0, unallocated: 1 }, 'the cut leaf reads as it was durably');
  again.trim(2 * LEAF_SPAN, ALLOC_BLOCK);
  await again.close();
  t.equal(fs.statSync(map).size, HEADER + 5 * SLOT, 'the leaf got a new slot after the cut one');
  const c = await openArray(t, file, size, false);
  t.same(c.alloc.census(), { data: size / ALLOC_BLOCK - 2, zero: 0, unallocated: 2 }, 'both leaves read back');
});

t.test('a sidecar missing slots its header counts, or with a foreign slot, is refused', async (t) => {
  const dir = scratch(t);
  const file = path.join(dir, 'short.img');
  const size = 64 * MiB;
  {
    const a = await openArray(t, file, size, true);
    await a.write(Buffer.alloc(MiB, 1), 0, MiB, 0);
    await a.write(Buffer.alloc(MiB, 1), 0, MiB, LEAF_SPAN);
    await a.flush();
    await a.close();
  }
  const map = `${file}.alloc`;
  const whole = fs.readFileSync(map);
  t.equal(whole.readUInt32LE(28), 2, 'the header counts both slots once closed');
  fs.truncateSync(map, HEADER + SLOT + 100);
  t.equal(await refusal(file, size), 'map-truncated');
  const bad = Buffer.from(whole);
  bad.writeUInt32LE(99, HEADER + SLOT + 4);
  fs.writeFileSync(map, bad);
  t.equal(await refusal(file, size), 'map-corrupt', 'a slot naming a leaf past the array');
});
