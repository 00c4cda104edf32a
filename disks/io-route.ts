import { Piscina } from 'piscina';
import { BlockgateError } from '../common/errors.js';
import type { ArrayFile } from './array-file.js';

/**
 * How the cache moves whole slots to and from an array: a run of slot views
 * (SharedArrayBuffer-backed) read or written at one position with one
 * vectored call. Two implementations, chosen by measurement (docs/engine.md):
 * libuv's own thread pool, or a piscina worker pool that preadv/pwritev
 * straight into the shared slots.
 */
export interface IoRoute {
  readonly name: IoRouteName;
  readv(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void>;
  writev(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void>;
  close(): Promise<void>;
}

export type IoRouteName = 'libuv' | 'piscina';

/** libuv's pool via fs.readv/fs.writev (size it with UV_THREADPOOL_SIZE). */
export class LibuvRoute implements IoRoute {
  readonly name = 'libuv' as const;

  readv(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    return new Promise((resolve, reject) => a.readv(bufs, length, position, (err) => (err ? reject(err) : resolve())));
  }

  writev(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    return new Promise((resolve, reject) => a.writev(bufs, length, position, (err) => (err ? reject(err) : resolve())));
  }

  async close(): Promise<void> {}
}

export interface IoTask {
  op: 'readv' | 'writev';
  fd: number;
  bufs: Uint8Array[];
  length: number;
  position: number;
}

/**
 * piscina workers doing the vectored call synchronously in their own thread.
 * The slot views cross postMessage as SharedArrayBuffer views: no bytes are
 * copied, the worker writes the very memory the cache serves from.
 */
export class PiscinaRoute implements IoRoute {
  readonly name = 'piscina' as const;
  private readonly pool: Piscina;

  constructor(threads = 4) {
    this.pool = new Piscina({
      filename: new URL('./io-worker.js', import.meta.url).href,
      minThreads: threads,
      maxThreads: threads,
      // Hot-path tasks are tiny: let each worker take several at once.
      concurrentTasksPerWorker: 1,
      idleTimeout: 60_000,
    });
  }

  private async run(a: ArrayFile, op: IoTask['op'], bufs: Uint8Array[], length: number, position: number): Promise<void> {
    for (const b of bufs) {
      if (!(b.buffer instanceof SharedArrayBuffer)) throw new BlockgateError('INTERNAL', 'piscina route needs SharedArrayBuffer-backed buffers');
    }
    const task: IoTask = { op, fd: a.descriptor, bufs, length, position };
    const r = (await this.pool.run(task)) as string | null;
    if (r !== null) throw a.ioError(op, r);
    if (op === 'writev') a.noteWrite(position, length);
  }

  readv(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    // Holes are the allocation map's to fill with zeroes: only plain data goes to a worker.
    if (!a.plainRange(position, length)) return new Promise((resolve, reject) => a.readv(bufs, length, position, (err) => (err ? reject(err) : resolve())));
    return this.run(a, 'readv', bufs, length, position);
  }

  writev(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    return this.run(a, 'writev', bufs, length, position);
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}

export function makeRoute(name: IoRouteName, threads?: number): IoRoute {
  return name === 'piscina' ? new PiscinaRoute(threads) : new LibuvRoute();
}
