import fs from 'node:fs';
import t from 'tap';
import { Slab } from '../../cache/slab.js';

// Cache memory commits a slot's pages the first time the slot is handed out
// (the faults in one loop, not scattered over the writes that fill it), and
// only then: memory no slot has used stays uncommitted.

const K = 1024;
const M = 1024 * K;

/** Anonymous memory this process has resident, in bytes (SharedArrayBuffers count here). */
function rssAnon(): number {
  const m = /RssAnon:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  if (!m) throw new Error('no RssAnon in /proc/self/status');
  return Number(m[1]) * K;
}

/**
 * Slabs whose commit a test measured stay referenced to the end of the file:
 * collected during a later test's measurement, their memory would leave RSS
 * and hide what that test committed.
 */
const alive: Slab[] = [];
t.test('slot 0 is committed when first taken too', (t) => {
  // Slots of 16 MiB: one slot's commit is far above the noise of the rest of the test.
  const slab = new Slab(32 * M, 16 * M);
  alive.push(slab);
  const before = rssAnon();
  t.equal(slab.take(), 0);
  const grew = rssAnon() - before;
  t.ok(grew >= 15 * M, `taking slot 0 committed ${(grew / M).toFixed(1)} MiB (want ≥ 15)`);
  t.end();
});

t.test('a slot taken for the first time is committed whole; untaken slots are not', (t) => {
  const slab = new Slab(256 * M, 64 * K);
  alive.push(slab);
  const before = rssAnon();
  const taken: number[] = [];
  for (let i = 0; i < 512; i++) taken.push(slab.take());
  const grew = rssAnon() - before;
  // 512 slots of 64 KiB = 32 MiB committed (other allocations of the test are far smaller than the margin).
  t.ok(grew >= 30 * M, `taking 512 fresh slots committed ${(grew / M).toFixed(1)} MiB (want ≥ 30)`);
  t.ok(grew < 64 * M, `the other 3,584 slots stay uncommitted (${(grew / M).toFixed(1)} MiB in all)`);
  t.same(new Set(taken).size, 512, 'distinct slots');
  t.ok(
    taken.every((s) => slab.view(s).every((b) => b === 0)),
    'committing changes no byte: fresh slots read as zero',
  );
  t.end();
});

t.test('a slot handed out again keeps what it holds (committed once, not rewritten)', (t) => {
  const slab = new Slab(4 * M, 64 * K);
  const s = slab.take();
  slab.view(s).fill(0xab);
  slab.give(s);
  t.equal(slab.take(), s, 'the freed slot comes back first');
  t.ok(slab.view(s).every((b) => b === 0xab), 'its bytes are untouched by the second take');
  t.end();
});

t.test('an exhausted slab answers -1', (t) => {
  const slab = new Slab(64 * K, 64 * K);
  t.equal(slab.slots, 1);
  t.ok(slab.take() >= 0);
  t.equal(slab.take(), -1);
  t.equal(slab.freeCount, 0);
  t.end();
});

t.test('slots: lowest first, each its own bytes in 64 MiB shared chunks, one view per slot', (t) => {
  // 2 full chunks of 1,024 slots and a last one of 3.
  const slab = new Slab(128 * M + 3 * 64 * K + 100, 64 * K);
  t.equal(slab.slots, 2 * 1024 + 3, 'whole slots only');
  t.equal(slab.slotSize, 64 * K);
  t.equal(slab.freeCount, slab.slots, 'all free at first');
  t.same([slab.take(), slab.take(), slab.take()], [0, 1, 2], 'low slots first (touched memory stays dense)');
  t.equal(slab.freeCount, slab.slots - 3);
  slab.give(1);
  t.equal(slab.freeCount, slab.slots - 2);
  t.equal(slab.take(), 1, 'a given-back slot is handed out next');
  const edges = [0, 1, 1023, 1024, 1025, 2047, 2048, 2050];
  for (const s of edges) {
    const v = slab.view(s);
    t.equal(v.length, 64 * K, `slot ${s} is a slot long`);
    t.equal(v, slab.view(s), `slot ${s}: the same view every time`);
    t.ok(v.buffer instanceof SharedArrayBuffer, `slot ${s} is shared memory (worker threads use it in place)`);
    const c = Math.floor(s / 1024);
    t.equal(v.byteOffset, (s - c * 1024) * 64 * K, `slot ${s} sits at its place in chunk ${c}`);
    t.equal(v.buffer.byteLength, c < 2 ? 64 * M : 3 * 64 * K, `chunk ${c} is ${c < 2 ? '64 MiB' : 'the 3 slots left'}`);
  }
  t.equal(slab.view(1023).buffer, slab.view(0).buffer, 'slots 0 and 1023 share a chunk');
  // Without worker threads (the libuv route) the memory is plain: copies in and out are memcpy, not atomics.
  const plain = new Slab(128 * M + 64 * K, 64 * K, false);
  t.ok(plain.view(0).buffer instanceof ArrayBuffer && !(plain.view(0).buffer instanceof SharedArrayBuffer), 'plain memory when not shared');
  t.equal(plain.view(2048).buffer.byteLength, 64 * K, 'in the same chunks');
  t.not(slab.view(1024).buffer, slab.view(1023).buffer, 'slot 1024 starts the next');
  // Every slot's bytes are its own: a mark in each reads back unchanged after all are written.
  for (const s of edges) slab.view(s).fill(s & 255 || 7);
  t.ok(edges.every((s) => slab.view(s).every((b) => b === (s & 255 || 7))), 'no two slots overlap');
  t.end();
});

t.test('a slab smaller than a slot still has one; a bigger slot than 64 MiB gets a chunk each', (t) => {
  const tiny = new Slab(100, 64 * K);
  t.equal(tiny.slots, 1);
  t.equal(tiny.view(0).length, 64 * K);
  const big = new Slab(3 * 128 * M, 128 * M);
  t.equal(big.slots, 3);
  t.not(big.view(0).buffer, big.view(1).buffer, 'one slot per chunk');
  t.equal(big.view(2).byteOffset, 0);
  t.equal(big.view(2).buffer.byteLength, 128 * M);
  t.end();
});


t.test('commit-ahead: a worker commits the never-used slots after a fresh one taken, up to the window, and changes no byte', async (t) => {
  // 256 MiB of 64 KiB slots, 16 MiB ahead.
  const slab = new Slab(256 * M, 64 * K, true, 16 * M);
  alive.push(slab);
  t.teardown(() => slab.close());
  const before = rssAnon();
  const s0 = slab.take();
  // The slot taken is committed at once, the window after it by the worker in the background.
  let grew = 0;
  for (let i = 0; i < 200 && grew < 15 * M; i++) {
    await new Promise((r) => setTimeout(r, 10));
    grew = rssAnon() - before;
  }
  t.ok(grew >= 15 * M, `one take: the worker committed ${(grew / M).toFixed(1)} MiB ahead (want ≥ 15)`);
  t.ok(grew < 40 * M, `and no further than the window (${(grew / M).toFixed(1)} MiB)`);
  // The slots it committed read as zero when taken, and a slot written while the worker goes through keeps its bytes.
  const next = slab.take();
  t.equal(next, s0 + 1);
  slab.view(next).fill(0x5a);
  for (let i = 0; i < 300; i++) slab.take();
  t.ok(slab.view(next).every((b) => b === 0x5a), 'a taken slot keeps what was written into it');
  t.ok(slab.view(s0 + 2).every((b) => b === 0), 'a committed-ahead slot reads as zero');
  // Plain (unshared) memory has no worker to commit it: nothing ahead (the shared slab's worker stopped first).
  await slab.close();
  const plain = new Slab(64 * M, 64 * K, false, 16 * M);
  alive.push(plain);
  const b2 = rssAnon();
  plain.take();
  await new Promise((r) => setTimeout(r, 200));
  t.ok(rssAnon() - b2 < 8 * M, 'unshared: only the slot taken is committed');
});
