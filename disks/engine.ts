import crypto from 'node:crypto';
import { BlockgateError } from '../common/errors.js';
import type { ArrayFile } from './array-file.js';

/** Bytes on one array. A list of ranges is read as one stream, in order. */
export interface ArrayRange {
  arrayId: number;
  offset: number;
  length: number;
}

export interface BulkOptions {
  signal?: AbortSignal | undefined;
  /** Called after each chunk with the bytes done so far and the total. */
  onProgress?: ((done: number, total: number) => void) | undefined;
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
}

export const BULK_CHUNK = 1024 * 1024;

const total = (ranges: readonly ArrayRange[]): number => ranges.reduce((s, r) => s + r.length, 0);

/** Splits a stream into chunk-sized pieces, each inside one range. */
function* pieces(ranges: readonly ArrayRange[], chunk: number): Generator<{ arrayId: number; offset: number; length: number; at: number }> {
  let at = 0;
  for (const r of ranges) {
    for (let o = 0; o < r.length; o += chunk) {
      const length = Math.min(chunk, r.length - o);
      yield { arrayId: r.arrayId, offset: r.offset + o, length, at };
      at += length;
    }
  }
}

/** Maps a stream offset range onto the ranges it covers (for copy targets). */
function* project(ranges: readonly ArrayRange[], at: number, length: number): Generator<{ arrayId: number; offset: number; length: number; bufOffset: number }> {
  let base = 0;
  let done = 0;
  for (const r of ranges) {
    if (done === length) return;
    const end = base + r.length;
    if (at + done < end) {
      const within = at + done - base;
      const n = Math.min(r.length - within, length - done);
      yield { arrayId: r.arrayId, offset: r.offset + within, length: n, bufOffset: done };
      done += n;
    }
    base = end;
  }
}

function checkAbort(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new BlockgateError('CONFLICT', 'operation cancelled', { cancelled: true });
}

function fillPattern(buf: Buffer, pattern: number | Buffer, streamOffset: number): void {
  if (typeof pattern === 'number') {
    buf.fill(pattern);
    return;
  }
  // Keep the pattern phase-locked to the stream so any chunk size gives the same bytes.
  const start = streamOffset % pattern.length;
  buf.fill(Buffer.concat([pattern.subarray(start), pattern.subarray(0, start)]));
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
