import crypto from 'node:crypto';
import { BlockgateError } from '../common/errors.js';
import type { ArrayFile } from './array-file.js';
import { Piscina } from 'piscina';
import type { BulkResult, BulkTask } from './bulk-worker.js';
import { fillPattern, pieces, project, total, type ArrayRange } from './ranges.js';

/** The part of each target a copy of `length` bytes writes. */
const writtenPart = (targets: readonly (readonly ArrayRange[])[], length: number): ArrayRange[][] =>
  targets.map((t) => [...project(t, 0, length)].map((q) => ({ arrayId: q.arrayId, offset: q.offset, length: q.length })));

export type { ArrayRange };

export interface BulkOptions {
  signal?: AbortSignal | undefined;
  /** Called after each chunk with the bytes done so far and the total. */
  onProgress?: ((done: number, total: number) => void) | undefined;
  /**
   * Fault injection (BLOCKGATE_FAULTS=bulk-corrupt): after the write pass the
   * first written byte is flipped on the array, as storage that does not hold
   * what it acknowledged would. Exists so the read-back verify can be seen to work.
   */
  corrupt?: boolean | undefined;
}

export interface ScrubResult {
  bytes: number;
  verified: boolean;
}

/**
 * Bulk work the storage manager runs on arrays: scrub, copy, checksum. These
 * work on array ranges (from the mapper's translate), below the cache: callers
 * flush what they read and invalidate what they write.
 */
export interface Engine {
  /** Overwrites the ranges with `pattern` (a byte, or a buffer repeated), then with `verify` reads them back. */
  scrub(ranges: readonly ArrayRange[], opts?: BulkOptions & { pattern?: number | Buffer; verify?: boolean }): Promise<ScrubResult>;
  /** Copies the source stream onto each target stream (each at least as long), then with `verify` compares. */
  copy(source: readonly ArrayRange[], targets: readonly (readonly ArrayRange[])[], opts?: BulkOptions & { verify?: boolean }): Promise<ScrubResult>;
  /** SHA-256 of the stream, hex. */
  checksum(ranges: readonly ArrayRange[], opts?: BulkOptions): Promise<string>;
  /** Bytes per second a bulk job may move (`--bulk-rate`); undefined = unlimited. Jobs outside the engine (snapshot copy) pace themselves to it too. */
  readonly rate?: number | undefined;
}

export const BULK_CHUNK = 1024 * 1024;

function checkAbort(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new BlockgateError('CONFLICT', 'operation cancelled', { cancelled: true });
}

/**
 * Straightforward engine: chunked sequential I/O through the arrays' own
 * (libuv thread pool) reads and writes, one chunk in flight, so bulk work
 * leaves room for hosts' I/O.
 */
export class SimpleEngine implements Engine {
  constructor(private readonly arrays: (id: number) => ArrayFile) {}

  async scrub(ranges: readonly ArrayRange[], opts: BulkOptions & { pattern?: number | Buffer; verify?: boolean } = {}): Promise<ScrubResult> {
    const pattern = opts.pattern ?? 0;
    const all = total(ranges);
    const buf = Buffer.allocUnsafe(BULK_CHUNK);
    const check = Buffer.allocUnsafe(BULK_CHUNK);
    let done = 0;
    for (const p of pieces(ranges, BULK_CHUNK)) {
      checkAbort(opts.signal);
      const b = buf.subarray(0, p.length);
      fillPattern(b, pattern, p.at);
      await this.arrays(p.arrayId).write(b, 0, p.length, p.offset);
      done += p.length;
      opts.onProgress?.(opts.verify ? done / 2 : done, all);
    }
    await this.flushArrays(ranges);
    if (!opts.verify) return { bytes: all, verified: false };
    done = 0;
    for (const p of pieces(ranges, BULK_CHUNK)) {
      checkAbort(opts.signal);
      const want = buf.subarray(0, p.length);
      fillPattern(want, pattern, p.at);
      const got = check.subarray(0, p.length);
      await this.arrays(p.arrayId).read(got, 0, p.length, p.offset);
      if (!got.equals(want)) {
        throw new BlockgateError('IO_ERROR', `scrub verify failed at array ${p.arrayId} offset ${p.offset}`, { arrayId: p.arrayId, offset: p.offset });
      }
      done += p.length;
      opts.onProgress?.(all / 2 + done / 2, all);
    }
    return { bytes: all, verified: true };
  }

  async copy(source: readonly ArrayRange[], targets: readonly (readonly ArrayRange[])[], opts: BulkOptions & { verify?: boolean } = {}): Promise<ScrubResult> {
    const all = total(source);
    for (const t of targets) {
      if (total(t) < all) throw new BlockgateError('CONFLICT', `copy target is smaller (${total(t)} bytes) than the source (${all} bytes)`);
    }
    const buf = Buffer.allocUnsafe(BULK_CHUNK);
    const check = Buffer.allocUnsafe(BULK_CHUNK);
    let done = 0;
    for (const p of pieces(source, BULK_CHUNK)) {
      checkAbort(opts.signal);
      const data = buf.subarray(0, p.length);
      await this.arrays(p.arrayId).read(data, 0, p.length, p.offset);
      // Read once, write to every target: the seed's one-to-many copy.
      for (const t of targets) {
        for (const q of project(t, p.at, p.length)) await this.arrays(q.arrayId).write(data, q.bufOffset, q.length, q.offset);
      }
      if (opts.verify) {
        for (const t of targets) {
          for (const q of project(t, p.at, p.length)) {
            const got = check.subarray(0, q.length);
            await this.arrays(q.arrayId).read(got, 0, q.length, q.offset);
            if (!got.equals(data.subarray(q.bufOffset, q.bufOffset + q.length))) {
              throw new BlockgateError('IO_ERROR', `copy verify failed at array ${q.arrayId} offset ${q.offset}`);
            }
          }
        }
      }
      done += p.length;
      opts.onProgress?.(done, all);
    }
    for (const t of targets) await this.flushArrays(t);
    return { bytes: all, verified: !!opts.verify };
  }

  async checksum(ranges: readonly ArrayRange[], opts: BulkOptions = {}): Promise<string> {
    const all = total(ranges);
    const h = crypto.createHash('sha256');
    const buf = Buffer.allocUnsafe(BULK_CHUNK);
    let done = 0;
    for (const p of pieces(ranges, BULK_CHUNK)) {
      checkAbort(opts.signal);
      const b = buf.subarray(0, p.length);
      await this.arrays(p.arrayId).read(b, 0, p.length, p.offset);
      h.update(b);
      done += p.length;
      opts.onProgress?.(done, all);
    }
    return h.digest('hex');
  }

  private async flushArrays(ranges: readonly ArrayRange[]): Promise<void> {
    for (const id of new Set(ranges.map((r) => r.arrayId))) await this.arrays(id).flush();
  }
}

/** The cache as bulk work needs it: write back what it reads, drop what it overwrites. */
export interface CacheHooks {
  flushRange(arrayId: number, offset: number, length: number): Promise<void>;
  invalidate(arrayId: number, offset: number, length: number): Promise<void>;
}

export interface PiscinaEngineOptions {
  /** Worker threads for bulk jobs (their bounded share of the machine). Default 1. */
  threads?: number | undefined;
  /** Bytes per read or write inside a job. */
  chunk?: number | undefined;
  /** When given, sources are written back from the cache first and targets invalidated after. */
  cache?: CacheHooks | undefined;
  /** How often onProgress is called while a job runs. */
  progressMs?: number | undefined;
  /** Bytes per second each job may move (reads and writes counted as the job's progress); unlimited when unset. */
  rate?: number | undefined;
}

/**
 * Bulk work in a small piscina pool of its own: each job runs in one worker
 * thread with synchronous I/O, so a scrub or copy uses at most `threads`
 * threads while hosts' I/O keeps the libuv pool (or the I/O route's workers)
 * and the main thread to itself. Jobs beyond `threads` queue.
 */
export class PiscinaEngine implements Engine {
  private readonly pool: Piscina;
  private readonly chunk: number;
  private readonly progressMs: number;
  readonly rate: number | undefined;

  constructor(
    private readonly arrays: (id: number) => ArrayFile,
    private readonly opts: PiscinaEngineOptions = {},
  ) {
    const threads = opts.threads ?? 1;
    this.chunk = opts.chunk ?? BULK_CHUNK;
    this.progressMs = opts.progressMs ?? 200;
    this.rate = opts.rate;
    this.pool = new Piscina({ filename: new URL('./bulk-worker.js', import.meta.url).href, minThreads: 0, maxThreads: threads, idleTimeout: 30_000 });
  }

  /** Where the sources hold no data, for the worker to read as zeroes. */
  private holes(ranges: readonly ArrayRange[]): ArrayRange[] {
    const out: ArrayRange[] = [];
    for (const r of ranges) for (const h of this.arrays(r.arrayId).holes(r.offset, r.length)) out.push({ arrayId: r.arrayId, ...h });
    return out;
  }

  private fds(...lists: (readonly ArrayRange[])[]): Record<number, number> {
    const out: Record<number, number> = {};
    for (const l of lists) for (const r of l) out[r.arrayId] = this.arrays(r.arrayId).descriptor;
    return out;
  }

  private async run(task: Omit<BulkTask, 'control' | 'chunk' | 'rate' | 'corrupt'>, opts: BulkOptions, totalBytes: number, written: readonly (readonly ArrayRange[])[]): Promise<BulkResult & { ok: true }> {
    checkAbort(opts.signal);
    // Edge blocks of what the worker writes become whole, zero-padded data blocks first (see prepareWrite).
    for (const l of written) for (const x of l) await this.arrays(x.arrayId).prepareWrite(x.offset, x.length);
    const control = new SharedArrayBuffer(16);
    const flag = new Int32Array(control, 0, 1);
    const done = new Float64Array(control, 8, 1);
    const onAbort = (): void => {
      Atomics.store(flag, 0, 1);
      // Wakes a worker that is pacing itself to the bulk rate.
      Atomics.notify(flag, 0);
    };
    opts.signal?.addEventListener('abort', onAbort);
    const timer = opts.onProgress ? setInterval(() => opts.onProgress!(Math.min(done[0]!, totalBytes), totalBytes), this.progressMs) : null;
    let r: BulkResult | undefined;
    try {
      r = (await this.pool.run({ ...task, control, chunk: this.chunk, rate: this.rate, corrupt: !!opts.corrupt } satisfies BulkTask)) as BulkResult;
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
      if (timer) clearInterval(timer);
      // The worker wrote with its own descriptor calls. Only a finished pass marks
      // its ranges as data (a cut-off one reads as zeroes, never as what an earlier
      // owner left there); then stale cached copies go.
      if (r?.ok) for (const l of written) for (const x of l) this.arrays(x.arrayId).noteWrite(x.offset, x.length);
      if (this.opts.cache) for (const l of written) for (const x of l) await this.opts.cache.invalidate(x.arrayId, x.offset, x.length);
    }
    // The map becomes durable with the bytes, so a finished job survives a crash.
    if (r.ok) for (const id of new Set(written.flatMap((l) => l.map((x) => x.arrayId)))) await this.arrays(id).flush();
    if (!r.ok) {
      if (r.reason === 'cancelled') throw new BlockgateError('CONFLICT', 'operation cancelled', { cancelled: true });
      if (r.reason === 'mismatch') throw new BlockgateError('IO_ERROR', `verify failed at array ${r.arrayId} offset ${r.offset}`, { arrayId: r.arrayId, offset: r.offset });
      throw new BlockgateError('IO_ERROR', `bulk ${task.op} failed: ${r.message}`);
    }
    opts.onProgress?.(totalBytes, totalBytes);
    return r;
  }

  private async flushSources(ranges: readonly ArrayRange[]): Promise<void> {
    if (this.opts.cache) for (const r of ranges) await this.opts.cache.flushRange(r.arrayId, r.offset, r.length);
  }

  async scrub(ranges: readonly ArrayRange[], opts: BulkOptions & { pattern?: number | Buffer; verify?: boolean } = {}): Promise<ScrubResult> {
    const all = total(ranges);
    const pattern = opts.pattern === undefined || typeof opts.pattern === 'number' ? (opts.pattern ?? 0) : new Uint8Array(opts.pattern);
    await this.run({ op: 'scrub', fds: this.fds(ranges), ranges: [...ranges], pattern, verify: !!opts.verify }, opts, opts.verify ? 2 * all : all, [ranges]);
    return { bytes: all, verified: !!opts.verify };
  }

  async copy(source: readonly ArrayRange[], targets: readonly (readonly ArrayRange[])[], opts: BulkOptions & { verify?: boolean } = {}): Promise<ScrubResult> {
    const all = total(source);
    for (const t of targets) {
      if (total(t) < all) throw new BlockgateError('CONFLICT', `copy target is smaller (${total(t)} bytes) than the source (${all} bytes)`);
    }
    await this.flushSources(source);
    await this.run(
      { op: 'copy', fds: this.fds(source, ...targets), ranges: [...source], holes: this.holes(source), targets: targets.map((t) => [...t]), verify: !!opts.verify },
      opts,
      all,
      // Only the prefix the source fills is written: a larger target's tail keeps what it held.
      writtenPart(targets, all),
    );
    return { bytes: all, verified: !!opts.verify };
  }

  async checksum(ranges: readonly ArrayRange[], opts: BulkOptions = {}): Promise<string> {
    await this.flushSources(ranges);
    const r = await this.run({ op: 'checksum', fds: this.fds(ranges), ranges: [...ranges], holes: this.holes(ranges) }, opts, total(ranges), []);
    return r.digest!;
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
