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

t.test('a slot taken for the first time is committed whole; untaken slots are not', (t) => {
  const slab = new Slab(256 * M, 64 * K);
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
