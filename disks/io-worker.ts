import fs from 'node:fs';
import type { IoTask } from './io-route.js';

/** piscina worker for the cache's slot I/O; returns null or the error code. */
export default function io(task: IoTask): string | null {
  try {
    let done = 0;
    let bufs = task.bufs;
    // Loop on short transfers: drop the buffers already filled and go on.
    while (done < task.length) {
      const n = task.op === 'readv' ? fs.readvSync(task.fd, bufs, task.position + done) : fs.writevSync(task.fd, bufs, task.position + done);
      if (n === 0) {
        if (task.op === 'writev') return 'EIO';
        // Past the end of a file that lost its tail: a hole reads as zeroes.
        for (const b of bufs) b.fill(0);
        return null;
      }
      done += n;
      let skip = n;
      const rest: Uint8Array[] = [];
      for (const b of bufs) {
        if (skip >= b.length) {
          skip -= b.length;
          continue;
        }
        rest.push(skip > 0 ? b.subarray(skip) : b);
        skip = 0;
      }
      bufs = rest;
    }
    return null;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}
