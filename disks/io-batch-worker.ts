import { parentPort } from 'node:worker_threads';
import io from './io-worker.js';
import type { IoTask } from './io-route.js';

/**
 * The batch route's thread: runs each batch of slot I/O in order and answers
 * once per batch. A batch is numbers: per call op (1 writev, 0 readv), fd,
 * length, position, buffer count, then (memory, offset, length) per buffer,
 * memories having been sent once each beforehand (BatchRoute.memId).
 */
const mems: SharedArrayBuffer[] = [];

parentPort!.on('message', (m: { mem: number; sab: SharedArrayBuffer } | { id: number; t: number[] }) => {
  if ('sab' in m) {
    mems[m.mem] = m.sab;
    return;
  }
  const t = m.t;
  const res: (string | null)[] = [];
  for (let i = 0; i < t.length; ) {
    const op = t[i] === 1 ? 'writev' : 'readv';
    const fd = t[i + 1]!;
    const length = t[i + 2]!;
    const position = t[i + 3]!;
    const n = t[i + 4]!;
    i += 5;
    const bufs: Uint8Array[] = new Array(n);
    for (let k = 0; k < n; k++, i += 3) bufs[k] = new Uint8Array(mems[t[i]!]!, t[i + 1]!, t[i + 2]!);
    const task: IoTask = { op, fd, bufs, length, position };
    res.push(io(task));
  }
  parentPort!.postMessage({ id: m.id, res });
});
