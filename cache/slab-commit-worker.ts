import { parentPort } from 'node:worker_threads';

/**
 * The slab's committer (Slab commit-ahead): faults in pages of slots no one
 * has taken yet. Each page gets an atomic add of zero: it commits the page
 * and can never change a byte, even if the event loop takes the slot and
 * writes it while this thread is still on its way through.
 */
parentPort!.on('message', (m: { sab: SharedArrayBuffer; offset: number; length: number }) => {
  const words = new Int32Array(m.sab, m.offset, m.length >> 2);
  for (let i = 0; i < words.length; i += 1024) Atomics.add(words, i, 0);
});
