import { parentPort } from 'node:worker_threads';
import io from './io-worker.js';
import type { IoTask } from './io-route.js';

/** The batch route's thread: runs each batch of slot I/O in order and answers once per batch. */
parentPort!.on('message', (m: { id: number; tasks: IoTask[] }) => {
  const res: (string | null)[] = new Array(m.tasks.length);
  for (let i = 0; i < m.tasks.length; i++) res[i] = io(m.tasks[i]!);
  parentPort!.postMessage({ id: m.id, res });
});
