import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { BlockStore, type CachePolicy, type VolumeHandle } from '../../cache/index.js';
import { ArrayFile, BatchRoute, PiscinaRoute } from '../../disks/index.js';
import { VolumeLayout } from '../../mapper/index.js';
import { onDisk, readVol, seededBytes } from '../helpers/cache-store.js';

const K = 1024;
const M = 1024 * K;

/** A store over real sparse array files in a temp dir, closed in teardown. */
async function setup(
  tt: { teardown: (fn: () => unknown) => void },
  opts: { size?: number; blockSize?: number; dirtyLimit?: number; arrays?: number; arraySize?: number; route?: 'piscina' | 'batch'; hold?: boolean } = {},
): Promise<{ store: BlockStore; arrays: ArrayFile[]; dir: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-cache-'));
  const store = new BlockStore({
    size: opts.size ?? 4 * M,
    blockSize: opts.blockSize ?? 64 * K,
    dirtyLimit: opts.dirtyLimit,
    // Long delay: nothing is written back unless pressure or a flush asks.
    writebackDelayMs: 60_000,
    route: opts.route === 'piscina' ? new PiscinaRoute(2) : opts.route === 'batch' ? new BatchRoute(2) : undefined,
    writebackHold: opts.hold,
  });
  const arrays: ArrayFile[] = [];
  for (let i = 1; i <= (opts.arrays ?? 1); i++) {
    const a = new ArrayFile(i, `a${i}`, path.join(dir, `a${i}.img`), opts.arraySize ?? 16 * M);
    await a.open(true);
    store.addArray(a);
    arrays.push(a);
  }
  tt.teardown(async () => {
    await store.close();
    for (const a of arrays) await a.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { store, arrays, dir };
}

const vol = (id: number, extents: { arrayId: number; offset: number; length: number }[], cachePolicy: CachePolicy = 'write-back'): VolumeHandle => ({
  id,
  layout: new VolumeLayout(extents),
  cachePolicy,
});

const rnd = seededBytes;

t.test('write-back: acknowledged from memory, readable at once, on the array after flush', async (t) => {
  const { store, arrays } = await setup(t);
  const v = vol(1, [{ arrayId: 1, offset: M, length: 4 * M }]);
  const data = rnd(200 * K, 1);
  await store.write(v, 12345, data, false);
  t.same(await readVol(store, v, 12345, data.length), data, 'read after write sees it');
  t.ok(store.stats().dirtyBytes > 0, 'dirty until written back');
  await store.flush(v);
  t.equal(store.stats().dirtyBytes, 0, 'flush wrote everything back');
  t.same(onDisk(arrays[0]!, M + 12345, data.length), data, 'flushed bytes are on the array file');
  t.ok(store.stats().writebacks > 0);
});

t.test('write-back FUA: that write is on the array when acknowledged', async (t) => {
  const { store, arrays } = await setup(t);
  const v = vol(1, [{ arrayId: 1, offset: 0, length: 4 * M }]);
  const data = rnd(8 * K, 2);
  await store.write(v, 4096, data, true);
  t.same(onDisk(arrays[0]!, 4096, data.length), data);
  t.same(await readVol(store, v, 4096, data.length), data);
});

t.test('write-through writes the array before the acknowledgement and keeps a clean copy', async (t) => {
  const { store, arrays } = await setup(t);
  const v = vol(1, [{ arrayId: 1, offset: 0, length: 4 * M }], 'write-through');
  const data = rnd(128 * K, 3);
  await store.write(v, 64 * K, data, false);
  t.same(onDisk(arrays[0]!, 64 * K, data.length), data);
  t.equal(store.stats().dirtyBytes, 0);
  const before = store.stats().hits;
  t.same(await readVol(store, v, 64 * K, data.length), data);
  t.ok(store.stats().hits > before, 'whole blocks written through are served from memory');
});

t.test('policy none bypasses the cache but stays coherent with a write-back volume on the same array', async (t) => {
  const { store, arrays } = await setup(t);
  const wb = vol(1, [{ arrayId: 1, offset: 0, length: 2 * M }]);
  const none = vol(2, [{ arrayId: 1, offset: 0, length: 2 * M }], 'none');
  const a = rnd(64 * K, 4);
  await store.write(wb, 0, a, false);
  t.same(await readVol(store, none, 0, a.length), a, 'none reads the dirty cached copy, not the stale array');
  const b = rnd(4 * K, 5);
  await store.write(none, 4 * K, b, false);
  t.same(onDisk(arrays[0]!, 4 * K, b.length), b, 'none wrote the array before acknowledging');
  const want = Buffer.from(a);
  b.copy(want, 4 * K);
  t.same(await readVol(store, wb, 0, a.length), want, 'the write-back volume sees the none write');
  await store.flush(wb);
  t.same(onDisk(arrays[0]!, 0, a.length), want, 'and write-back does not bring old bytes back');
  const cached = store.stats().cachedBytes;
  await readVol(store, none, M, 256 * K);
  t.equal(store.stats().cachedBytes, cached, 'none does not cache what it reads');
});

t.test('two volumes over one array see one copy (keyed by physical location)', async (t) => {
  const { store } = await setup(t, { arrays: 2 });
  // v1 is a meta volume: array 1 then array 2; v2 maps array 2's same bytes at its start.
  const v1 = vol(1, [
    { arrayId: 1, offset: 0, length: M },
    { arrayId: 2, offset: 3 * M, length: M },
  ]);
  const v2 = vol(2, [{ arrayId: 2, offset: 3 * M, length: M }], 'write-through');
  const data = rnd(256 * K, 6);
  // Crosses the extent boundary of v1.
  await store.write(v1, M - 100 * K, data, false);
  t.same(await readVol(store, v2, 0, 156 * K), data.subarray(100 * K), 'the other volume reads the same bytes');
  const over = rnd(10 * K, 7);
  await store.write(v2, 5000, over, false);
  const want = Buffer.from(data);
  over.copy(want, 100 * K + 5000);
  t.same(await readVol(store, v1, M - 100 * K, data.length), want);
});

t.test('sub-block writes at odd offsets (read-modify-write) land exactly', async (t) => {
  const { store, arrays } = await setup(t);
  const v = vol(1, [{ arrayId: 1, offset: 0, length: 4 * M }]);
  const base = rnd(256 * K, 8);
  await store.write(v, 0, base, true);
  // Drop the cached copies so the small writes below meet blocks not in memory.
  await store.invalidate(1, 0, 4 * M);
  const model = Buffer.from(base);
  for (let i = 0; i < 40; i++) {
    const off = (i * 7919 * 13) % (250 * K);
    const d = rnd(1 + ((i * 977) % 3000), 100 + i);
    d.copy(model, off);
    await store.write(v, off, d, false);
  }
  t.same(await readVol(store, v, 0, model.length), model);
  await store.flush(v);
  t.same(onDisk(arrays[0]!, 0, model.length), model);
});

t.test('eviction is bounded by bytes and only takes clean blocks', async (t) => {
  const { store, arrays } = await setup(t, { size: 1 * M, blockSize: 64 * K });
  const v = vol(1, [{ arrayId: 1, offset: 0, length: 16 * M }]);
  const dirty = rnd(128 * K, 9);
  await store.write(v, 0, dirty, false);
  // Data under the range read (never-written ranges read as zeroes without taking a slot).
  await arrays[0]!.write(rnd(7 * M, 19), 0, 7 * M, M);
  for (let off = M; off < 8 * M; off += 64 * K) await readVol(store, v, off, 64 * K);
  const s = store.stats();
  t.ok(s.cachedBytes <= s.capacityBytes, `cached ${s.cachedBytes} <= capacity ${s.capacityBytes}`);
  t.ok(s.evictions > 0, 'reading past capacity evicted');
  t.equal(s.dirtyBytes, 128 * K, 'dirty blocks were not evicted');
  t.same(await readVol(store, v, 0, dirty.length), dirty);
});

t.test('pinned ranges are never evicted, and pinning is bounded', async (t) => {
  const { store, arrays } = await setup(t, { size: 1 * M, blockSize: 64 * K });
  const v = vol(1, [{ arrayId: 1, offset: 0, length: 16 * M }]);
  const data = rnd(256 * K, 10);
  await store.write(v, 2 * M, data, true);
  await store.pin(1, 2 * M, 256 * K);
  t.equal(store.stats().pinnedBytes, 256 * K);
  await arrays[0]!.write(rnd(8 * M, 20), 0, 8 * M, 4 * M);
  const thrash = store.stats().evictions;
  for (let off = 4 * M; off < 12 * M; off += 64 * K) await readVol(store, v, off, 64 * K);
  t.ok(store.stats().evictions - thrash >= 100, 'the reads pushed the unpinned blocks out');
  const before = store.stats();
  t.same(await readVol(store, v, 2 * M, data.length), data);
  const after = store.stats();
  t.equal(after.misses, before.misses, 'no miss on the pinned range after thrashing');
  t.equal(after.hits - before.hits, 4, 'all four pinned blocks were hits');
  await t.rejects(store.pin(1, 8 * M, 512 * K), { code: 'NO_SPACE' }, 'pinning beyond half the cache is refused');
  store.unpin(1, 2 * M, 256 * K);
  t.equal(store.stats().pinnedBytes, 0);
});

t.test('dirty data is bounded: a write-back write at the dirty limit goes to the array at once', async (t) => {
  // Background write-back held (fault point writeback-hold): only the writes themselves can put bytes on the array.
  const { store, arrays } = await setup(t, { size: 2 * M, blockSize: 64 * K, dirtyLimit: 256 * K, hold: true });
  const v = vol(1, [{ arrayId: 1, offset: 0, length: 16 * M }]);
  const data = rnd(4 * M, 11);
  let maxDirty = 0;
  const writes: Promise<void>[] = [];
  for (let off = 0; off < data.length; off += 64 * K) {
    writes.push(store.write(v, off, data.subarray(off, off + 64 * K), false));
    maxDirty = Math.max(maxDirty, store.stats().dirtyBytes);
  }
  await Promise.all(writes);
  const st = store.stats();
  t.equal(maxDirty, 256 * K, 'dirty bytes reached the limit and never passed it');
  t.equal(st.dirtyBypasses, 60, 'every write past the limit went to the array');
  t.equal(st.writebacks, 0, 'nothing was written back (held)');
  t.same(onDisk(arrays[0]!, 256 * K, data.length - 256 * K), data.subarray(256 * K), 'the writes past the limit are on the array before any FLUSH');
  t.same(await readVol(store, v, 0, data.length), data, 'everything reads back');
  // Into a block that is dirty at the limit: the cached copy and the array both take it, and write-back keeps it.
  const patch = rnd(4 * K, 12);
  await store.write(v, 8 * K, patch, false);
  t.equal(store.stats().dirtyBypasses, 61);
  t.same(onDisk(arrays[0]!, 8 * K, 4 * K), patch, 'the array has the write into the dirty block');
  t.same(await readVol(store, v, 8 * K, 4 * K), patch, 'and so does the cache');
  data.set(patch, 8 * K);
  await store.flush(v);
  t.same(onDisk(arrays[0]!, 0, data.length), data, 'after FLUSH the dirty rest is there too, the patch not undone');
});

t.test('blocks holding dirty pages take at most 3/4 of the slots: past that a write goes to the array, whatever the dirty pages', async (t) => {
  // 32 slots, 24 of them for dirty blocks; a page in each block stays far under the 1 MiB page limit.
  const { store, arrays } = await setup(t, { size: 2 * M, blockSize: 64 * K, dirtyLimit: M, hold: true });
  const v = vol(1, [{ arrayId: 1, offset: 0, length: 16 * M }]);
  const pages: Buffer[] = [];
  for (let b = 0; b < 30; b++) {
    pages.push(rnd(4 * K, 100 + b));
    await store.write(v, b * 64 * K, pages[b]!, false);
  }
  const st = store.stats();
  t.equal(st.dirtyBlockBytes, 24 * 64 * K, 'dirty blocks stopped at 3/4 of the slots');
  t.equal(st.dirtyBytes, 24 * 4 * K, 'holding a page each');
  t.equal(st.dirtyBypasses, 6, 'the other six writes went to the array');
  for (let b = 24; b < 30; b++) t.same(onDisk(arrays[0]!, b * 64 * K, 4 * K), pages[b], `block ${b}'s page is on the array before any FLUSH`);
  for (let b = 0; b < 30; b++) t.same(await readVol(store, v, b * 64 * K, 4 * K), pages[b], `block ${b} reads back`);
});

t.test('flush writes back only what the flushed volume needs, then syncs', async (t) => {
  const { store, arrays } = await setup(t, { arrays: 2 });
  const v1 = vol(1, [{ arrayId: 1, offset: 0, length: M }]);
  const v2 = vol(2, [{ arrayId: 2, offset: 0, length: M }]);
  await store.write(v1, 0, rnd(64 * K, 12), false);
  await store.write(v2, 0, rnd(64 * K, 13), false);
  await store.flush(v1);
  t.same(onDisk(arrays[0]!, 0, 64 * K), rnd(64 * K, 12));
  t.equal(store.stats().dirtyBytes, 64 * K, "the other volume's array is left to background write-back");
  await store.flushAll();
  t.equal(store.stats().dirtyBytes, 0);
  t.same(onDisk(arrays[1]!, 0, 64 * K), rnd(64 * K, 13));
});

t.test('invalidate drops cached copies so bytes rewritten below the cache are seen', async (t) => {
  const { store, arrays } = await setup(t);
  const v = vol(1, [{ arrayId: 1, offset: 0, length: 4 * M }]);
  const old = rnd(128 * K, 14);
  await store.write(v, 0, old, true);
  t.same(await readVol(store, v, 0, old.length), old);
  const fresh = rnd(128 * K, 15);
  const fd = fs.openSync(arrays[0]!.path, 'r+');
  fs.writeSync(fd, fresh, 0, fresh.length, 0);
  fs.closeSync(fd);
  t.same(await readVol(store, v, 0, old.length), old, 'still the cached copy');
  await store.invalidate(1, 0, 128 * K);
  t.same(await readVol(store, v, 0, old.length), fresh, 'after invalidation the array bytes');
  // A dirty block only partly covered keeps its dirty bytes outside the range.
  const d = rnd(4 * K, 16);
  await store.write(v, 256 * K, d, false);
  await store.invalidate(1, 256 * K + 32 * K, 4 * K);
  t.same(await readVol(store, v, 256 * K, 4 * K), d);
});

t.test('concurrent reads of a missing block share one load; read-after-write ordering holds', async (t) => {
  const { store } = await setup(t);
  const v = vol(1, [{ arrayId: 1, offset: 0, length: 4 * M }]);
  await store.write(v, 0, rnd(64 * K, 17), true);
  await store.invalidate(1, 0, 64 * K);
  const loads = store.stats().loads;
  const rs = await Promise.all(Array.from({ length: 8 }, () => readVol(store, v, 0, 64 * K)));
  t.equal(store.stats().loads - loads, 1, 'one disk read for eight readers');
  for (const r of rs) t.same(r, rnd(64 * K, 17));
  // Writes and reads interleaved without awaiting: each read issued after a write resolved sees it.
  for (let i = 0; i < 20; i++) {
    const d = rnd(4 * K, 200 + i);
    await store.write(v, 8 * K, d, i % 3 === 0);
    t.same(await readVol(store, v, 8 * K, 4 * K), d);
  }
});

for (const route of ['piscina', 'batch'] as const) {
  t.test(`the ${route} route serves the same semantics`, async (t) => {
    const { store, arrays } = await setup(t, { route });
    t.equal(store.stats().route, route);
    const v = vol(1, [{ arrayId: 1, offset: 0, length: 4 * M }]);
    const data = rnd(300 * K, 18);
    await store.write(v, 1000, data, false);
    await store.flush(v);
    t.same(onDisk(arrays[0]!, 1000, data.length), data);
    await store.invalidate(1, 0, 4 * M);
    t.same(await readVol(store, v, 1000, data.length), data);
    // Never written: the allocation map answers zeroes whatever the route.
    t.same(await readVol(store, v, 2 * M, 64 * K), Buffer.alloc(64 * K), 'a hole reads as zeroes');
  });
}

t.test('the batch route: many calls of one loop turn in one batch, each answered on its own', async (t) => {
  const { store, arrays, dir } = await setup(t, { route: 'batch', blockSize: 4 * K, size: 4 * M });
  const v = vol(1, [{ arrayId: 1, offset: 0, length: 4 * M }]);
  // 256 scattered 4 KiB writes in one turn, flushed together: one batch of write-backs per turn.
  const writes = Array.from({ length: 256 }, (_, i) => ({ off: ((i * 37) % 1024) * 4 * K, d: rnd(4 * K, 100 + i) }));
  await Promise.all(writes.map((w) => store.write(v, w.off, w.d, false)));
  await store.flush(v);
  t.ok(writes.every((w) => onDisk(arrays[0]!, w.off, 4 * K).equals(w.d)), 'every write is on the array');
  await store.invalidate(1, 0, 4 * M);
  const back = await Promise.all(writes.map((w) => readVol(store, v, w.off, 4 * K)));
  t.ok(back.every((b, i) => b.equals(writes[i]!.d)), 'and reads back through batched loads');
  // A closed array fails its calls with the array's own error, and the route keeps serving.
  const route = new BatchRoute(1);
  t.teardown(() => route.close());
  const closed = new ArrayFile(9, 'closed', path.join(dir, 'closed.img'), 1 * M);
  await closed.open(true);
  await closed.close();
  const slot = new Uint8Array(new SharedArrayBuffer(4 * K));
  await t.rejects(route.writev(closed, [slot], 4 * K, 0), /not open/, 'a call on a closed array is refused');
  await t.rejects(route.readv(arrays[0]!, [new Uint8Array(4 * K)], 4 * K, 0), /SharedArrayBuffer/, 'ordinary memory is refused');
  await t.rejects(route.writev(arrays[0]!, [slot.subarray(0, 1000)], 1000, 0), /not aligned/, 'an unaligned write-back is the array\'s to refuse');
  slot.fill(0x5a);
  await route.writev(arrays[0]!, [slot], 4 * K, 8 * K);
  t.same(onDisk(arrays[0]!, 8 * K, 4 * K), Buffer.from(slot), 'and the route still serves the next call');
});

t.test('the batch route: a worker that dies fails its calls (no hang) and is replaced', async (t) => {
  const { arrays } = await setup(t);
  const route = new BatchRoute(1);
  t.teardown(() => route.close());
  const slot = new Uint8Array(new SharedArrayBuffer(64 * K)).fill(0x3c);
  const worker = (route as unknown as { workers: { terminate(): Promise<number> }[] }).workers[0]!;
  // The call is queued for the end of this turn; the worker is gone before it answers.
  const lostCall = route.writev(arrays[0]!, [slot], 64 * K, 0);
  await new Promise((r) => setImmediate(r));
  await worker.terminate();
  await t.rejects(lostCall, /I\/O worker exited/, 'the call in flight fails with IO_ERROR');
  await route.writev(arrays[0]!, [slot], 64 * K, 0);
  t.same(onDisk(arrays[0]!, 0, 64 * K), Buffer.from(slot), 'a new worker serves the next call');
});

t.test('random operations against a model, tiny cache, both block sizes, all policies on one array', async (t) => {
  for (const blockSize of [4 * K, 64 * K]) {
    const { store, arrays } = await setup(t, { size: 16 * blockSize, blockSize, dirtyLimit: 6 * blockSize, arraySize: 4 * M });
    // Three volumes over the same 2 MiB of array 1 (more than the cache holds), one per policy: every write must be seen by all.
    const vols = (['write-back', 'write-through', 'none'] as const).map((p, i) => vol(i + 1, [{ arrayId: 1, offset: M, length: 2 * M }], p));
    const model = Buffer.alloc(2 * M);
    let x = blockSize;
    const r = (n: number): number => {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      return (x >>> 8) % n;
    };
    const inflight: Promise<void>[] = [];
    for (let i = 0; i < 600; i++) {
      const v = vols[r(3)]!;
      const off = r(2 * M - 1);
      const len = 1 + r(Math.min(2 * M - off, 3 * blockSize));
      const op = r(10);
      if (op < 5) {
        const d = rnd(len, 1000 + i);
        d.copy(model, off);
        // Writes to disjoint ranges may overlap in time; overlapping ones are serialised, as a host would.
        await Promise.all(inflight.splice(0));
        inflight.push(store.write(v, off, d, r(8) === 0));
        if (r(2) === 0) await Promise.all(inflight.splice(0));
      } else if (op < 9) {
        await Promise.all(inflight.splice(0));
        const got = await readVol(store, v, off, len);
        if (!got.equals(model.subarray(off, off + len))) {
          t.fail(`block ${blockSize}: read ${v.cachePolicy} ${off}+${len} after op ${i} differs from the model`);
          return;
        }
      } else {
        await Promise.all(inflight.splice(0));
        await store.flush(v);
      }
    }
    await Promise.all(inflight.splice(0));
    await store.flushAll();
    t.same(onDisk(arrays[0]!, M, 2 * M), model, `block ${blockSize}: the array holds the model after flushAll`);
    const s = store.stats();
    t.ok(s.evictions > 0 && s.writebacks > 0, `block ${blockSize}: evictions ${s.evictions}, write-backs ${s.writebacks}, bypass ${s.bypassReads}/${s.bypassWrites}`);
  }
});
