import { Worker } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { BlockgateError } from '../common/errors.js';
import { zeroSpans, type ArrayFile } from './array-file.js';

/**
 * How the cache moves whole slots to and from an array: a run of slot views
 * (SharedArrayBuffer-backed) read or written at one position with one
 * vectored call. Three implementations, chosen by measurement (docs/engine.md):
 * libuv's own thread pool, a piscina worker pool that preadv/pwritev
 * straight into the shared slots, or batches of those calls per loop turn
 * sent to worker threads.
 */
export interface IoRoute {
  readonly name: IoRouteName;
  /** The buffers it is handed must be SharedArrayBuffer views (another thread touches them). */
  readonly sharedMemory: boolean;
  readv(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void>;
  writev(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void>;
  close(): Promise<void>;
}

export type IoRouteName = 'libuv' | 'piscina' | 'batch';

/** The route `blockgate serve` uses unless told otherwise (measured: docs/engine.md, "Miss route"). */
export const DEFAULT_IO_ROUTE: IoRouteName = 'batch';

/** A write the array itself makes (an unaligned one it refuses; one over a pad in flight it holds until the pad lands). */
function viaArray(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
  return new Promise((resolve, reject) => a.writev(bufs, length, position, (err) => (err ? reject(err) : resolve())));
}

/** A read the array itself makes (holes it fills with zeroes without reading the file). */
function readViaArray(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
  return new Promise((resolve, reject) => a.readv(bufs, length, position, (err) => (err ? reject(err) : resolve())));
}

/** libuv's pool via fs.readv/fs.writev (size it with UV_THREADPOOL_SIZE). */
export class LibuvRoute implements IoRoute {
  readonly name = 'libuv' as const;
  readonly sharedMemory = false;

  readv(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    return readViaArray(a, bufs, length, position);
  }

  writev(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    return viaArray(a, bufs, length, position);
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
 * A route whose worker threads make the vectored calls on the slots' own
 * memory. Holes and writes the array must make itself (unaligned, or over a
 * pad in flight) stay with the array; plain ranges go to `submit`.
 */
abstract class WorkerRoute implements IoRoute {
  abstract readonly name: IoRouteName;
  readonly sharedMemory = true;

  /** One vectored call on plain bytes, made by a worker thread. */
  protected abstract submit(a: ArrayFile, op: IoTask['op'], bufs: Uint8Array[], length: number, position: number): Promise<void>;
  abstract close(): Promise<void>;

  readv(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    if (!a.plainRange(position, length)) {
      // Data and holes: one call for the range, the holes zeroed after (ArrayFile.mixedRange); anything
      // else (all holes, a pad in flight, a failed array) is the array's to answer.
      const holes = a.mixedRange(position, length);
      if (holes === null) return readViaArray(a, bufs, length, position);
      return (this.shared(bufs) ?? this.submit(a, 'readv', bufs, length, position)).then(() => zeroSpans(bufs, holes));
    }
    return this.shared(bufs) ?? this.submit(a, 'readv', bufs, length, position);
  }

  writev(a: ArrayFile, bufs: Uint8Array[], length: number, position: number): Promise<void> {
    if (!a.plainWrite(position, length)) return viaArray(a, bufs, length, position);
    return this.shared(bufs) ?? this.submit(a, 'writev', bufs, length, position);
  }

  /** A view of ordinary memory would cross to the worker as a copy (a read would land in the copy): refused. */
  private shared(bufs: Uint8Array[]): Promise<void> | null {
    for (const b of bufs) {
      if (!(b.buffer instanceof SharedArrayBuffer)) return Promise.reject(new BlockgateError('INTERNAL', `the ${this.name} route needs SharedArrayBuffer-backed buffers`));
    }
    return null;
  }
}

/**
 * piscina workers doing the vectored call synchronously in their own thread.
 * The slot views cross postMessage as SharedArrayBuffer views: no bytes are
 * copied, the worker writes the very memory the cache serves from.
 */
export class PiscinaRoute extends WorkerRoute {
  readonly name = 'piscina' as const;
  private readonly pool: Piscina;

  constructor(threads = 4) {
    super();
    this.pool = new Piscina({
      filename: new URL('./io-worker.js', import.meta.url).href,
      minThreads: threads,
      maxThreads: threads,
      // Hot-path tasks are tiny: let each worker take several at once.
      concurrentTasksPerWorker: 1,
      idleTimeout: 60_000,
    });
  }

  protected async submit(a: ArrayFile, op: IoTask['op'], bufs: Uint8Array[], length: number, position: number): Promise<void> {
    const task: IoTask = { op, fd: a.descriptor, bufs, length, position };
    const r = (await this.pool.run(task)) as string | null;
    if (r !== null) throw a.ioError(op, r);
    if (op === 'writev') a.noteWrite(position, length);
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}

interface Queued {
  a: ArrayFile;
  task: IoTask;
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * Slot I/O gathered per turn of the event loop and sent to a worker thread as
 * one message: the worker does each vectored call synchronously and answers
 * the whole batch at once. libuv's pool costs the event loop a thread wake-up
 * and a callback per call; this costs one message each way per batch.
 *
 * A batch crosses as plain numbers (layout in io-batch-worker.ts): each shared memory
 * the slot views live in is sent to every worker once, and a view is then
 * (memory, offset, length). Structured-cloning the views themselves cost the
 * loop a SharedArrayBuffer handle per buffer per message (postMessage was the
 * largest frame of a beyond-cache write profile, 25 % of busy time).
 */
export class BatchRoute extends WorkerRoute {
  readonly name = 'batch' as const;
  private readonly workers: Worker[] = [];
  private readonly busy: number[] = [];
  private queue: Queued[] = [];
  private scheduled = false;
  private readonly inflight = new Map<number, { items: Queued[]; w: number }>();
  private seq = 0;
  private closing = false;
  /** Shared memories the workers know, by the number a batch names them with. */
  private readonly memIds = new WeakMap<SharedArrayBuffer, number>();
  private readonly mems: SharedArrayBuffer[] = [];

  constructor(threads = 2) {
    super();
    for (let i = 0; i < threads; i++) {
      this.workers.push(this.spawn(i));
      this.busy.push(0);
    }
  }

  private spawn(i: number): Worker {
    const w = new Worker(new URL('./io-batch-worker.js', import.meta.url));
    w.unref();
    w.on('message', (m: { id: number; res: (string | null)[] }) => this.done(m));
    w.on('error', noop);
    w.on('exit', (code) => this.lost(i, code));
    // A replacement learns every memory its predecessor knew, before any batch.
    for (let m = 0; m < this.mems.length; m++) w.postMessage({ mem: m, sab: this.mems[m] });
    return w;
  }

  /** The number a shared memory goes by in batches; a new one is announced to every worker first. */
  private memId(sab: SharedArrayBuffer): number {
    let m = this.memIds.get(sab);
    if (m === undefined) {
      m = this.mems.length;
      this.mems.push(sab);
      this.memIds.set(sab, m);
      for (const w of this.workers) w.postMessage({ mem: m, sab });
    }
    return m;
  }

  /** A worker that dies fails the calls it held (never a hang) and is replaced, unless the route is closing. */
  private lost(i: number, code: number): void {
    for (const [id, b] of this.inflight) {
      if (b.w !== i) continue;
      this.inflight.delete(id);
      for (const q of b.items) q.reject(new BlockgateError('IO_ERROR', `the I/O worker exited (code ${code}) with a ${q.task.op} in flight`));
    }
    this.busy[i] = 0;
    if (!this.closing) this.workers[i] = this.spawn(i);
  }

  protected submit(a: ArrayFile, op: IoTask['op'], bufs: Uint8Array[], length: number, position: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ a, task: { op, fd: a.descriptor, bufs, length, position }, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        queueMicrotask(this.flush);
      }
    });
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const items = this.queue;
    this.queue = [];
    // The whole turn's calls in one message to the least busy worker. Split across workers
    // (measured: bench/engine/route.ts) the batches shrink and the loop pays 3-5x more per call.
    this.send(items, this.idlest());
  };

  private idlest(): number {
    let w = 0;
    for (let i = 1; i < this.workers.length; i++) if (this.busy[i]! < this.busy[w]!) w = i;
    return w;
  }

  private send(items: Queued[], w: number): void {
    const id = ++this.seq;
    this.inflight.set(id, { items, w });
    // A batch in flight keeps the process alive (shutdown awaits its writes).
    if (this.busy[w]!++ === 0) this.workers[w]!.ref();
    const t: number[] = [];
    for (const q of items) {
      const { op, fd, bufs, length, position } = q.task;
      t.push(op === 'writev' ? 1 : 0, fd, length, position, bufs.length);
      for (const b of bufs) t.push(this.memId(b.buffer as SharedArrayBuffer), b.byteOffset, b.byteLength);
    }
    this.workers[w]!.postMessage({ id, t });
  }

  private done(m: { id: number; res: (string | null)[] }): void {
    const b = this.inflight.get(m.id);
    // Already failed by lost() (the worker exited with its answer still in the queue).
    if (!b) return;
    this.inflight.delete(m.id);
    if (--this.busy[b.w]! === 0) this.workers[b.w]!.unref();
    for (let i = 0; i < b.items.length; i++) {
      const q = b.items[i]!;
      const r = m.res[i];
      if (r !== null && r !== undefined) q.reject(q.a.ioError(q.task.op, r));
      else {
        if (q.task.op === 'writev') q.a.noteWrite(q.task.position, q.task.length);
        q.resolve();
      }
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

function noop(): void {}

export function makeRoute(name: IoRouteName, threads?: number): IoRoute {
  return name === 'piscina' ? new PiscinaRoute(threads) : name === 'batch' ? new BatchRoute(threads) : new LibuvRoute();
}
