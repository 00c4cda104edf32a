import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ArrayFile, BatchRoute } from '../../disks/index.js';
import { ALLOC_BLOCK } from '../../disks/allocation.js';

// The allocation map under the array: what reads return, padding of partial
// blocks, persistence at flush, and reset of reused space.

const MiB = 1024 * 1024;

async function fresh(t: { teardown: (fn: () => unknown) => void }, size = 4 * MiB): Promise<{ a: ArrayFile; file: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-alloc-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'a.img');
  const a = new ArrayFile(1, 'a', file, size);
  await a.open(true);
  t.teardown(() => a.close());
  return { a, file };
}

const read = async (a: ArrayFile, pos: number, len: number): Promise<Buffer> => {
  const b = Buffer.alloc(len, 0xff);
  await a.read(b, 0, len, pos);
  return b;
};

t.test('a new array is all holes and reads zeroes even over stale file bytes', async (t) => {
  const { a, file } = await fresh(t);
  t.same(a.alloc.census(), { unallocated: (4 * MiB) / ALLOC_BLOCK, zero: 0, data: 0 });
  // Bytes in the file that no write of ours put there are never returned.
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.alloc(8192, 0x66), 0, 8192, 0);
  fs.closeSync(fd);
  t.ok((await read(a, 0, 8192)).every((x) => x === 0));
});

t.test('partial writes pad the block with zeroes; concurrent ones into one block both land', async (t) => {
  const { a, file } = await fresh(t);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.alloc(ALLOC_BLOCK, 0x66), 0, ALLOC_BLOCK, ALLOC_BLOCK);
  fs.closeSync(fd);
  const base = ALLOC_BLOCK;
  await Promise.all([
    a.write(Buffer.alloc(512, 1), 0, 512, base),
    a.write(Buffer.alloc(512, 2), 0, 512, base + 1024),
    a.write(Buffer.alloc(512, 3), 0, 512, base + 3584),
  ]);
  const b = await read(a, base, ALLOC_BLOCK);
  t.ok(b.subarray(0, 512).every((x) => x === 1), 'first');
  t.ok(b.subarray(1024, 1536).every((x) => x === 2), 'second');
  t.ok(b.subarray(3584).every((x) => x === 3), 'third');
  t.ok(b.subarray(512, 1024).every((x) => x === 0) && b.subarray(1536, 3584).every((x) => x === 0), 'the rest is zeroes, not the stale 0x66');
  // A write spanning a partial head, whole blocks and a partial tail.
  await a.write(Buffer.alloc(3 * ALLOC_BLOCK, 9), 0, 3 * ALLOC_BLOCK, 8 * ALLOC_BLOCK + 100);
  const c = await read(a, 8 * ALLOC_BLOCK, 4 * ALLOC_BLOCK);
  t.ok(c.subarray(0, 100).every((x) => x === 0) && c.subarray(100, 100 + 3 * ALLOC_BLOCK).every((x) => x === 9) && c.subarray(100 + 3 * ALLOC_BLOCK).every((x) => x === 0));
  t.equal(a.alloc.census().data, 1 + 4);
});

t.test('zeroes and trims change the map; partial zeroing of data writes zeroes', async (t) => {
  const { a } = await fresh(t);
  await a.write(Buffer.alloc(4 * ALLOC_BLOCK, 5), 0, 4 * ALLOC_BLOCK, 0);
  await a.writeZeroes(ALLOC_BLOCK, ALLOC_BLOCK, true, false);
  a.trim(2 * ALLOC_BLOCK, ALLOC_BLOCK);
  await t.rejects(a.writeZeroes(100, 10, false, true), { code: 'NOT_SUPPORTED' }, 'fast zero of a partial data block');
  await a.writeZeroes(3 * ALLOC_BLOCK + 10, 20, false, false);
  const states: number[] = [];
  a.allocationRuns(0, 4 * ALLOC_BLOCK, (_o, len, st) => {
    for (let i = 0; i < len / ALLOC_BLOCK; i++) states.push(st);
  });
  t.same(states, [2, 1, 0, 2]);
  const b = await read(a, 0, 4 * ALLOC_BLOCK);
  t.ok(b.subarray(ALLOC_BLOCK, 3 * ALLOC_BLOCK).every((x) => x === 0));
  t.ok(b.subarray(3 * ALLOC_BLOCK + 10, 3 * ALLOC_BLOCK + 30).every((x) => x === 0) && b[3 * ALLOC_BLOCK + 9] === 5 && b[3 * ALLOC_BLOCK + 30] === 5);
});

t.test('the map persists at flush and reopens; discard resets durably', async (t) => {
  const { a, file } = await fresh(t);
  await a.write(Buffer.alloc(MiB, 4), 0, MiB, 0);
  await a.writeZeroes(MiB, MiB, true, false);
  await a.flush();
  a.discardSync(512 * 1024, 256 * 1024);
  // Reopen without closing the first (as after a crash: only what was made durable counts).
  const b = new ArrayFile(1, 'a', file, 4 * MiB);
  await b.open(false);
  t.teardown(() => b.close());
  const c = b.alloc.census();
  t.same(c, { data: (MiB - 256 * 1024) / ALLOC_BLOCK, zero: MiB / ALLOC_BLOCK, unallocated: (2 * MiB + 256 * 1024) / ALLOC_BLOCK });
  t.ok((await read(b, 512 * 1024, 256 * 1024)).every((x) => x === 0), 'discarded space reads zeroes');
  t.ok((await read(b, 0, 4096)).every((x) => x === 4));
});

t.test('an array from before allocation tracking keeps its data readable', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-alloc-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'old.img');
  fs.writeFileSync(file, Buffer.alloc(MiB, 0x42));
  const a = new ArrayFile(2, 'old', file, MiB);
  await a.open(false);
  t.teardown(() => a.close());
  t.equal(a.alloc.census().data, MiB / ALLOC_BLOCK);
  t.ok((await read(a, 0, 4096)).every((x) => x === 0x42));
});

t.test('a range of data and holes is one file read, its holes zeroed even over stale file bytes', async (t) => {
  const { a, file } = await fresh(t);
  // Stale bytes all over the file, below the map; then four 4 KiB writes of ours.
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.alloc(MiB, 0x66), 0, MiB, 0);
  fs.closeSync(fd);
  const expect = Buffer.alloc(MiB);
  for (const [page, byte] of [[1, 0x11], [5, 0x55], [6, 0x56], [100, 0x64]] as const) {
    const d = Buffer.alloc(ALLOC_BLOCK, byte);
    await a.write(d, 0, d.length, page * ALLOC_BLOCK);
    d.copy(expect, page * ALLOC_BLOCK);
  }
  // Every read call the event loop makes on the file, counted.
  const calls = { read: 0, readv: 0 };
  const realRead = fs.read;
  const realReadv = fs.readv;
  (fs as { read: unknown }).read = (...args: unknown[]) => {
    calls.read++;
    return (realRead as (...x: unknown[]) => unknown)(...args);
  };
  (fs as { readv: unknown }).readv = (...args: unknown[]) => {
    calls.readv++;
    return (realReadv as (...x: unknown[]) => unknown)(...args);
  };
  t.teardown(() => {
    fs.read = realRead;
    fs.readv = realReadv;
  });
  // Buffers of odd sizes, so hole spans cross from one into the next.
  const split = (mem: Buffer): Uint8Array[] => [mem.subarray(0, 100 * 1024), mem.subarray(100 * 1024, 400 * 1024 + 512), mem.subarray(400 * 1024 + 512)];

  t.ok((await read(a, 0, MiB)).equals(expect), 'read(): data where written, zeroes elsewhere');
  t.same(calls, { read: 1, readv: 0 }, 'read(): one call');

  calls.read = 0;
  const plain = Buffer.alloc(MiB, 0xff);
  await new Promise<void>((resolve, reject) => a.readv(split(plain), MiB, 0, (err) => (err ? reject(err) : resolve())));
  t.ok(plain.equals(expect), 'readv(): the same, over three buffers');
  t.same(calls, { read: 0, readv: 1 }, 'readv(): one call');

  calls.readv = 0;
  const route = new BatchRoute(1);
  t.teardown(() => route.close());
  const shared = Buffer.from(new SharedArrayBuffer(MiB)).fill(0xff);
  await route.readv(a, split(shared), MiB, 0);
  t.ok(shared.equals(expect), 'the batch route: the same');
  t.same(calls, { read: 0, readv: 0 }, 'the batch route: the worker read it, the event loop made no call');

  // Nothing written at all: zeroes, and no call.
  t.ok((await read(a, 2 * MiB, MiB)).equals(Buffer.alloc(MiB)), 'a range with no data');
  t.same(calls, { read: 0, readv: 0 }, 'no call for a range of holes');
});
