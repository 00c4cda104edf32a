import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import bulk, { type BulkTask } from '../../disks/bulk-worker.js';

// The bulk worker's function called in this thread on real files (the engine
// runs it in a piscina worker, where Stryker's mutant switch and coverage do
// not reach): what scrub, copy and checksum write, what they verify and
// report, cancellation, progress, and I/O errors. Issue 17, Stryker on
// disks/bulk-worker.ts.

const K = 1024;

type T = { teardown: (fn: () => unknown) => void };

/** Two array files with known bytes (array id → fd), closed and removed at the end. */
function arrays(t: T, fill: Record<number, Buffer>): Record<number, number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-bulkw-'));
  const fds: Record<number, number> = {};
  for (const [id, bytes] of Object.entries(fill)) {
    const file = path.join(dir, `a${id}.img`);
    fs.writeFileSync(file, bytes);
    fds[Number(id)] = fs.openSync(file, 'r+');
  }
  t.teardown(() => {
    for (const fd of Object.values(fds)) fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return fds;
}

const bytesOf = (fd: number, offset: number, length: number): Buffer => {
  const b = Buffer.alloc(length);
  fs.readSync(fd, b, 0, length, offset);
  return b;
};

/** Distinct bytes per position so a piece landing at the wrong offset shows. */
const counting = (n: number, salt = 0): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + salt + (i >> 8)) & 0xff));

function task(over: Partial<BulkTask> & Pick<BulkTask, 'op' | 'fds' | 'ranges'>): BulkTask & { done: () => number; cancel: () => void } {
  const control = new SharedArrayBuffer(16);
  return {
    chunk: 4 * K,
    control,
    ...over,
    done: () => new Float64Array(control, 8, 1)[0]!,
    cancel: () => {
      Atomics.store(new Int32Array(control, 0, 1), 0, 1);
    },
  };
}

t.test('scrub writes the pattern over every range, in chunks, and nothing else', async (t) => {
  const fds = arrays(t, { 1: Buffer.alloc(64 * K, 0xee), 2: Buffer.alloc(64 * K, 0xdd) });
  // 10 KiB at an odd offset of array 1 (pieces of 4, 4, 2 KiB), then 6 KiB of array 2.
  const ranges = [{ arrayId: 1, offset: 3 * K + 1, length: 10 * K }, { arrayId: 2, offset: 40 * K, length: 6 * K }];
  const tk = task({ op: 'scrub', fds, ranges, pattern: 0x5a, verify: true });
  t.same(bulk(tk), { ok: true, bytes: 32 * K }, 'ok: the write pass and the verify pass both count');
  t.equal(tk.done(), 32 * K, 'progress ends at the bytes counted');
  const a1 = bytesOf(fds[1]!, 0, 64 * K);
  t.ok(a1.subarray(3 * K + 1, 13 * K + 1).every((x) => x === 0x5a), 'array 1 range scrubbed');
  t.ok(a1.subarray(0, 3 * K + 1).every((x) => x === 0xee) && a1.subarray(13 * K + 1).every((x) => x === 0xee), 'array 1 outside it untouched');
  const a2 = bytesOf(fds[2]!, 0, 64 * K);
  t.ok(a2.subarray(40 * K, 46 * K).every((x) => x === 0x5a), 'array 2 range scrubbed');
  t.ok(a2.subarray(0, 40 * K).every((x) => x === 0xdd) && a2.subarray(46 * K).every((x) => x === 0xdd), 'array 2 outside it untouched');
  t.same(bulk(task({ op: 'scrub', fds, ranges, verify: false })), { ok: true, bytes: 16 * K }, 'no verify: one pass');
  t.ok(bytesOf(fds[1]!, 3 * K + 1, 10 * K).every((x) => x === 0), 'no pattern: zeroes');
});

t.test('scrub with a byte pattern keeps it phase-locked to the stream across chunks and ranges', async (t) => {
  const fds = arrays(t, { 1: Buffer.alloc(32 * K, 0xee) });
  const pattern = new Uint8Array([1, 2, 3, 4, 5, 6, 7]);
  const ranges = [{ arrayId: 1, offset: 0, length: 5 * K }, { arrayId: 1, offset: 20 * K, length: 3 * K }];
  t.same(bulk(task({ op: 'scrub', fds, ranges, pattern, verify: true })), { ok: true, bytes: 16 * K });
  const stream = Buffer.concat([bytesOf(fds[1]!, 0, 5 * K), bytesOf(fds[1]!, 20 * K, 3 * K)]);
  let wrong = 0;
  for (let i = 0; i < stream.length; i++) if (stream[i] !== pattern[i % 7]) wrong++;
  t.equal(wrong, 0, 'byte i of the stream is pattern[i mod 7]');
});

t.test('scrub verify catches storage that does not hold what was written', async (t) => {
  const fds = arrays(t, { 1: Buffer.alloc(32 * K, 0xee) });
  const ranges = [{ arrayId: 1, offset: 0, length: 0 }, { arrayId: 1, offset: 8 * K, length: 8 * K }];
  // `corrupt` flips the first byte of the first non-empty range after the write pass.
  t.same(bulk(task({ op: 'scrub', fds, ranges, pattern: 0x11, verify: true, corrupt: true })), { ok: false, reason: 'mismatch', arrayId: 1, offset: 8 * K });
  t.equal(bytesOf(fds[1]!, 8 * K, 1)[0], 0x11 ^ 0xff, 'the flipped byte');
  t.ok(bytesOf(fds[1]!, 8 * K + 1, 8 * K - 1).every((x) => x === 0x11), 'the rest written');
  t.same(bulk(task({ op: 'scrub', fds, ranges, pattern: 0x11, verify: false, corrupt: true })), { ok: true, bytes: 8 * K }, 'unverified, the same fault passes');
  t.same(bulk(task({ op: 'scrub', fds, ranges, pattern: 0x11, verify: true, corrupt: false })), { ok: true, bytes: 16 * K }, 'no fault, verified');
  t.ok(bytesOf(fds[1]!, 8 * K, 8 * K).every((x) => x === 0x11));
});

t.test('copy: each target gets the source stream, holes read as zeroes, short files as zeroes', async (t) => {
  const src = counting(32 * K, 3);
  const fds = arrays(t, { 1: src, 2: Buffer.alloc(64 * K, 0xaa), 3: Buffer.alloc(64 * K, 0xbb) });
  // Source: 12 KiB from array 1 at 2 KiB, then the last 2 KiB of array 1 and 2 KiB past its end (reads as zeroes).
  const ranges = [{ arrayId: 1, offset: 2 * K, length: 12 * K }, { arrayId: 1, offset: 30 * K, length: 4 * K }];
  const holes = [{ arrayId: 1, offset: 5 * K, length: K + 7 }, { arrayId: 1, offset: 0, length: K }, { arrayId: 2, offset: 0, length: 64 * K }];
  const want = Buffer.concat([src.subarray(2 * K, 14 * K), src.subarray(30 * K, 32 * K), Buffer.alloc(2 * K)]);
  want.fill(0, 3 * K, 4 * K + 7); // the hole at 5 KiB of the array is stream 3 KiB
  // Target A: one range on array 2; target B: split over arrays 3 and 2 with an odd cut.
  const targets = [[{ arrayId: 2, offset: 16 * K, length: 16 * K }], [{ arrayId: 3, offset: K, length: 5 * K + 3 }, { arrayId: 2, offset: 40 * K, length: 11 * K - 3 }]];
  const tk = task({ op: 'copy', fds, ranges, targets, holes, verify: true });
  t.same(bulk(tk), { ok: true, bytes: 16 * K });
  t.equal(tk.done(), 16 * K);
  t.ok(bytesOf(fds[2]!, 16 * K, 16 * K).equals(want), 'target A holds the stream');
  t.ok(Buffer.concat([bytesOf(fds[3]!, K, 5 * K + 3), bytesOf(fds[2]!, 40 * K, 11 * K - 3)]).equals(want), 'target B holds the stream across its cut');
  t.ok(bytesOf(fds[2]!, 0, 16 * K).every((x) => x === 0xaa) && bytesOf(fds[2]!, 32 * K, 8 * K).every((x) => x === 0xaa), 'array 2 around the targets untouched');
  t.ok(bytesOf(fds[2]!, 51 * K, 13 * K).every((x) => x === 0xaa), 'array 2 after target B untouched');
  t.ok(bytesOf(fds[3]!, 0, K).every((x) => x === 0xbb) && bytesOf(fds[3]!, 6 * K + 3, 10 * K).every((x) => x === 0xbb), 'array 3 around it untouched');
  t.ok(bytesOf(fds[1]!, 0, 32 * K).equals(src), 'the source is only read');
});

t.test('copy verify catches a target that does not hold what was written', async (t) => {
  const src = counting(16 * K, 9);
  const fds = arrays(t, { 1: src, 2: Buffer.alloc(32 * K) });
  const ranges = [{ arrayId: 1, offset: 0, length: 16 * K }];
  const targets = [[{ arrayId: 2, offset: 0, length: 0 }, { arrayId: 2, offset: 8 * K, length: 16 * K }]];
  t.same(bulk(task({ op: 'copy', fds, ranges, targets, verify: true, corrupt: true })), { ok: false, reason: 'mismatch', arrayId: 2, offset: 8 * K });
  t.same(bulk(task({ op: 'copy', fds, ranges, targets, verify: false, corrupt: true })), { ok: true, bytes: 16 * K }, 'unverified, the same fault passes');
  t.equal(bytesOf(fds[2]!, 8 * K, 1)[0], src[0]! ^ 0xff, 'the flipped byte');
  t.ok(bytesOf(fds[2]!, 8 * K + 1, 16 * K - 1).equals(src.subarray(1)), 'the rest copied');
  t.same(bulk(task({ op: 'copy', fds, ranges, targets: [], verify: true })), { ok: true, bytes: 16 * K }, 'no targets: read through, nothing written');
});

t.test('checksum: sha256 of the stream as hosts see it', async (t) => {
  const src = counting(20 * K, 1);
  const fds = arrays(t, { 1: src, 2: counting(8 * K, 5) });
  const ranges = [{ arrayId: 2, offset: K, length: 3 * K }, { arrayId: 1, offset: 4 * K, length: 10 * K + 5 }];
  const holes = [{ arrayId: 1, offset: 6 * K, length: 2 * K }];
  const seen = Buffer.concat([counting(8 * K, 5).subarray(K, 4 * K), src.subarray(4 * K, 14 * K + 5)]);
  seen.fill(0, 3 * K + 2 * K, 3 * K + 4 * K);
  const tk = task({ op: 'checksum', fds, ranges, holes });
  t.same(bulk(tk), { ok: true, bytes: 13 * K + 5, digest: crypto.createHash('sha256').update(seen).digest('hex') });
  t.equal(tk.done(), 13 * K + 5);
  t.same(bulk(task({ op: 'checksum', fds, ranges: [] })), { ok: true, bytes: 0, digest: crypto.createHash('sha256').digest('hex') }, 'an empty stream');
});

t.test('a cancel stops the job and says so; an unopened array is an I/O failure', async (t) => {
  const fds = arrays(t, { 1: Buffer.alloc(16 * K, 0xee) });
  for (const op of ['scrub', 'copy', 'checksum'] as const) {
    const tk = task({ op, fds, ranges: [{ arrayId: 1, offset: 0, length: 16 * K }], targets: [[{ arrayId: 1, offset: 0, length: 16 * K }]], pattern: 1 });
    tk.cancel();
    t.same(bulk(tk), { ok: false, reason: 'cancelled' }, `${op}: cancelled before the first chunk`);
    t.equal(tk.done(), 0, `${op}: no progress`);
  }
  t.ok(bytesOf(fds[1]!, 0, 16 * K).every((x) => x === 0xee), 'nothing was written');
  const r = bulk(task({ op: 'scrub', fds, ranges: [{ arrayId: 9, offset: 0, length: K }] }));
  t.same(r, { ok: false, reason: 'io', message: 'array 9 is not open' });
  const bad = bulk(task({ op: 'scrub', fds: { 1: 987654 }, ranges: [{ arrayId: 1, offset: 0, length: K }] }));
  t.same(bad, { ok: false, reason: 'io', message: 'EBADF' }, 'a failed system call reports its code');
});

t.test('a paced job goes at its rate and a cancel still ends it', async (t) => {
  const fds = arrays(t, { 1: Buffer.alloc(64 * K, 0xee) });
  // 64 KiB at 16 KiB/s would take 4 s. Atomics.wait blocks this thread, so the
  // cancel is set before the call (no duration is asserted): the job ends cancelled.
  const tk = task({ op: 'scrub', fds, ranges: [{ arrayId: 1, offset: 0, length: 64 * K }], rate: 16 * K, chunk: 16 * K });
  tk.cancel();
  t.same(bulk(tk), { ok: false, reason: 'cancelled' });
  const fast = task({ op: 'scrub', fds, ranges: [{ arrayId: 1, offset: 0, length: 4 * K }], rate: 1024 * 1024 * 1024, pattern: 3 });
  t.same(bulk(fast), { ok: true, bytes: 4 * K }, 'a rate the disk never reaches changes nothing');
  t.ok(bytesOf(fds[1]!, 0, 4 * K).every((x) => x === 3));
});
