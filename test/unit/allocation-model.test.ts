import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ALLOC_BLOCK, AllocState, AllocationMap } from '../../disks/allocation.js';
import { prng } from '../helpers/prng.js';

// The allocation map's in-memory states checked against the plainest model
// (one byte per block): random changes that start and end anywhere — inside
// blocks, on leaf edges (a leaf covers 4096 blocks), past the array's end —
// and after each one every block's state, how many changed, `allData` and
// `runs` over random ranges, and the census must agree with the model.
// Written for Stryker (issue 17): each comparison catches a different
// one-character change in the leaf walk.

const LEAF = 4096;
const STATES = [AllocState.Unallocated, AllocState.Zero, AllocState.Data] as const;

async function openMap(t: { teardown: (fn: () => unknown) => void }, size: number, legacy: boolean): Promise<AllocationMap> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-allocmodel-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const m = await AllocationMap.open(path.join(dir, 'a.img.alloc'), size, legacy);
  t.teardown(() => m.close());
  return m;
}

function modelRuns(model: Uint8Array, offset: number, length: number): [number, number, number][] {
  const out: [number, number, number][] = [];
  const end = offset + length;
  let pos = offset;
  while (pos < end) {
    const b = Math.floor(pos / ALLOC_BLOCK);
    const st = model[b]!;
    let nb = b + 1;
    while (nb * ALLOC_BLOCK < end && model[nb] === st) nb++;
    const runEnd = Math.min(nb * ALLOC_BLOCK, end);
    out.push([pos, runEnd - pos, st]);
    pos = runEnd;
  }
  return out;
}

for (const legacy of [false, true]) {
  t.test(`random changes against a byte-per-block model (${legacy ? 'array from before tracking: DATA by default' : 'new array: holes by default'})`, async (t) => {
    // Three whole leaves and a partial fourth, so leaf edges and the array's end are both in play.
    const blocks = 3 * LEAF + 700;
    const size = blocks * ALLOC_BLOCK - 1000; // the last block is partial too
    const m = await openMap(t, size, legacy);
    t.equal(m.blocks, blocks, 'blocks: the array size rounded up');
    const model = new Uint8Array(blocks).fill(legacy ? AllocState.Data : AllocState.Unallocated);
    const rand = prng(legacy ? 17 : 4);
    const pick = (n: number): number => Math.floor(rand() * n);
    /** Offsets that favour the edges: block, leaf and array ends, ±1 byte. */
    const offset = (): number => {
      const r = rand();
      if (r < 0.5) {
        const edge = [0, LEAF, 2 * LEAF, 3 * LEAF, blocks][pick(5)]! * ALLOC_BLOCK;
        return Math.max(0, edge + [-1, 0, 1, -ALLOC_BLOCK, ALLOC_BLOCK][pick(5)]!);
      }
      return pick(blocks * ALLOC_BLOCK);
    };
    let wrongCount = 0;
    let wrongState = 0;
    let wrongAllData = 0;
    let wrongRuns = 0;
    for (let op = 0; op < 300; op++) {
      const state = STATES[pick(3)]!;
      let changedModel = 0;
      let changed: number;
      if (rand() < 0.6) {
        const from = offset();
        const len = rand() < 0.2 ? pick(3 * ALLOC_BLOCK) : pick(LEAF * ALLOC_BLOCK * 1.5);
        // Only blocks wholly inside the range change.
        const first = Math.ceil(from / ALLOC_BLOCK);
        const end = Math.min(Math.floor((from + len) / ALLOC_BLOCK), blocks);
        for (let b = first; b < end; b++) if (model[b] !== state) (model[b] = state), changedModel++;
        changed = m.setFull(from, len, state);
      } else {
        const first = pick(blocks);
        const end = first + pick(LEAF * 2); // may run past the array's end: clipped
        for (let b = first; b < Math.min(end, blocks); b++) if (model[b] !== state) (model[b] = state), changedModel++;
        changed = m.setBlocks(first, end, state);
      }
      if (changed !== changedModel) wrongCount++;
      for (let b = 0; b < blocks; b++) if (m.state(b) !== model[b]) wrongState++;
      for (let q = 0; q < 4; q++) {
        const from = Math.min(offset(), blocks * ALLOC_BLOCK);
        const len = Math.min(pick(q < 2 ? 4 * ALLOC_BLOCK : LEAF * ALLOC_BLOCK * 2), blocks * ALLOC_BLOCK - from);
        let want = true;
        for (let b = Math.floor(from / ALLOC_BLOCK); len > 0 && b * ALLOC_BLOCK < from + len; b++) if (model[b] !== AllocState.Data) want = false;
        if (m.allData(from, len) !== want) wrongAllData++;
        const got: [number, number, number][] = [];
        m.runs(from, len, (o, n, st) => got.push([o, n, st]));
        if (JSON.stringify(got) !== JSON.stringify(modelRuns(model, from, len))) wrongRuns++;
      }
    }
    t.equal(wrongCount, 0, 'changed counts');
    t.equal(wrongState, 0, 'every block\'s state after every change');
    t.equal(wrongAllData, 0, 'allData');
    t.equal(wrongRuns, 0, 'runs: maximal, in order, clipped to the range');
    const census = { unallocated: 0, zero: 0, data: 0 };
    for (const st of model) census[st === AllocState.Data ? 'data' : st === AllocState.Zero ? 'zero' : 'unallocated']++;
    t.same(m.census(), census, 'census');
    t.equal(m.hasDirty, true, 'changed leaves wait for the next persist');
  });
}

t.test('edges: empty ranges, one byte, untouched leaves cost nothing', async (t) => {
  const m = await openMap(t, 4 * LEAF * ALLOC_BLOCK, false);
  t.equal(m.allData(5, 0), true, 'an empty range is all data');
  t.equal(m.allData(0, 1), false, 'one byte of a hole is not');
  const seen: unknown[] = [];
  m.runs(123, 0, (...a) => seen.push(a));
  t.same(seen, [], 'an empty range has no runs');
  t.equal(m.setFull(1, ALLOC_BLOCK, AllocState.Data), 0, 'a block-sized range not on a block edge changes no whole block');
  t.equal(m.setFull(0, ALLOC_BLOCK - 1, AllocState.Data), 0, 'nor does one byte short of a block');
  t.equal(m.leafCount, 0, 'no leaf made for nothing');
  t.equal(m.hasDirty, false, 'and nothing to persist');
  t.equal(m.setBlocks(LEAF, LEAF + 1, AllocState.Unallocated), 0, 'setting a hole to a hole makes no leaf');
  t.equal(m.leafCount, 0);
  t.equal(m.setFull(ALLOC_BLOCK, ALLOC_BLOCK, AllocState.Data), 1, 'exactly one block');
  t.equal(m.state(1), AllocState.Data);
  t.equal(m.state(0), AllocState.Unallocated);
  t.equal(m.state(2), AllocState.Unallocated);
  t.equal(m.allData(ALLOC_BLOCK, ALLOC_BLOCK), true);
  t.equal(m.allData(ALLOC_BLOCK - 1, 2), false, 'one byte before it is a hole');
  t.equal(m.allData(ALLOC_BLOCK, ALLOC_BLOCK + 1), false, 'one byte after it is a hole');
  t.equal(m.leafCount, 1, 'one leaf for the first 16 MiB');
  t.equal(m.state(3 * LEAF + 5), AllocState.Unallocated, 'a leaf never made reads as its default');
  t.equal(m.leafCount, 1, 'reading does not make leaves');
  const runs: unknown[] = [];
  m.runs(0, 3 * ALLOC_BLOCK, (...a) => runs.push(a));
  t.same(runs, [[0, ALLOC_BLOCK, AllocState.Unallocated], [ALLOC_BLOCK, ALLOC_BLOCK, AllocState.Data], [2 * ALLOC_BLOCK, ALLOC_BLOCK, AllocState.Unallocated]]);
});
