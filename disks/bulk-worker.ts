import crypto from 'node:crypto';
import fs from 'node:fs';
import { fillPattern, indexHoles, pieces, project, zeroHoles, type ArrayRange } from './ranges.js';

/**
 * One bulk job (scrub, copy, checksum) run to completion inside a piscina
 * worker with plain synchronous I/O: the thread is the job's, so blocking is
 * what bounds its share. The main thread sees progress and asks for
 * cancellation through a small shared control block.
 */
export interface BulkTask {
  op: 'scrub' | 'copy' | 'checksum';
  /** array id → open descriptor */
  fds: Record<number, number>;
  ranges: ArrayRange[];
  targets?: ArrayRange[][];
  /** Parts of `ranges` the allocation map calls holes: read as zeroes, not as the file's old bytes. */
  holes?: ArrayRange[];
  pattern?: number | Uint8Array;
  verify?: boolean;
  chunk: number;
  /** Int32 [0] = cancel flag (set by the main thread); Float64 [1] = bytes done. */
  control: SharedArrayBuffer;
  /** Bytes per second this job may move; undefined = as fast as the disk goes. */
  rate?: number | undefined;
  /** Fault injection: flip the first written byte after the write pass (see BulkOptions.corrupt). */
  corrupt?: boolean | undefined;
}

export type BulkResult =
  | { ok: true; bytes: number; digest?: string }
  | { ok: false; reason: 'cancelled' }
  | { ok: false; reason: 'mismatch'; arrayId: number; offset: number }
  | { ok: false; reason: 'io'; message: string };

class Cancelled extends Error {}

export default function bulk(task: BulkTask): BulkResult {
  const flag = new Int32Array(task.control, 0, 1);
  const done = new Float64Array(task.control, 8, 1);
  const buf = Buffer.allocUnsafe(task.chunk);
  const check = Buffer.allocUnsafe(task.chunk);
  const fd = (id: number): number => {
    const f = task.fds[id];
    if (f === undefined) throw new Error(`array ${id} is not open`);
    return f;
  };
  const started = Date.now();
  const step = (n: number): void => {
    if (task.rate) {
      // Pace to the bulk rate; a cancel (Atomics.notify on the flag) cuts the wait short.
      const ahead = started + (n / task.rate) * 1000 - Date.now();
      if (ahead > 0) Atomics.wait(flag, 0, 0, ahead);
    }
    if (Atomics.load(flag, 0) !== 0) throw new Cancelled();
    done[0] = n;
  };
  const corrupt = (ranges: ArrayRange[]): void => {
    const r = ranges.find((x) => x.length > 0);
    if (!task.corrupt || !r) return;
    const b = Buffer.alloc(1);
    readFull(fd(r.arrayId), b, 1, r.offset);
    b[0] = b[0]! ^ 0xff;
    writeFull(fd(r.arrayId), b, 0, 1, r.offset);
  };
  const readFull = (f: number, b: Buffer, len: number, pos: number): void => {
    for (let got = 0; got < len; ) {
      const n = fs.readSync(f, b, got, len - got, pos + got);
      if (n === 0) {
        b.fill(0, got, len);
        return;
      }
      got += n;
    }
  };
  const writeFull = (f: number, b: Buffer, off: number, len: number, pos: number): void => {
    for (let put = 0; put < len; ) put += fs.writeSync(f, b, off + put, len - put, pos + put);
  };
  const holes = indexHoles(task.holes ?? []);
  /** Reads a source piece as hosts see it. */
  const readSource = (p: { arrayId: number; offset: number }, b: Buffer): void => {
    readFull(fd(p.arrayId), b, b.length, p.offset);
    zeroHoles(holes, p.arrayId, p.offset, b);
  };
  const syncAll = (ranges: ArrayRange[]): void => {
    for (const id of new Set(ranges.map((r) => r.arrayId))) fs.fdatasyncSync(fd(id));
  };

  try {
    let n = 0;
    if (task.op === 'checksum') {
      const h = crypto.createHash('sha256');
      for (const p of pieces(task.ranges, task.chunk)) {
        step(n);
        const b = buf.subarray(0, p.length);
        readSource(p, b);
        h.update(b);
        n += p.length;
      }
      step(n);
      return { ok: true, bytes: n, digest: h.digest('hex') };
    }
    if (task.op === 'scrub') {
      const pattern = typeof task.pattern === 'number' || task.pattern === undefined ? (task.pattern ?? 0) : Buffer.from(task.pattern);
      for (const p of pieces(task.ranges, task.chunk)) {
        step(n);
        const b = buf.subarray(0, p.length);
        fillPattern(b, pattern, p.at);
        writeFull(fd(p.arrayId), b, 0, p.length, p.offset);
        n += p.length;
      }
      corrupt(task.ranges);
      syncAll(task.ranges);
      if (task.verify) {
        for (const p of pieces(task.ranges, task.chunk)) {
          step(n);
          const want = buf.subarray(0, p.length);
          fillPattern(want, pattern, p.at);
          const got = check.subarray(0, p.length);
          readFull(fd(p.arrayId), got, p.length, p.offset);
          if (!got.equals(want)) return { ok: false, reason: 'mismatch', arrayId: p.arrayId, offset: p.offset };
          n += p.length;
        }
      }
      step(n);
      return { ok: true, bytes: n };
    }
    // copy: read each source chunk once, write it to every target, verify each.
    const targets = task.targets ?? [];
    for (const p of pieces(task.ranges, task.chunk)) {
      step(n);
      const data = buf.subarray(0, p.length);
      readSource(p, data);
      for (const t of targets) for (const q of project(t, p.at, p.length)) writeFull(fd(q.arrayId), data, q.bufOffset, q.length, q.offset);
      if (p.at === 0) for (const t of targets) corrupt(t);
      if (task.verify) {
        for (const t of targets) {
          for (const q of project(t, p.at, p.length)) {
            const got = check.subarray(0, q.length);
            readFull(fd(q.arrayId), got, q.length, q.offset);
            if (!got.equals(data.subarray(q.bufOffset, q.bufOffset + q.length))) return { ok: false, reason: 'mismatch', arrayId: q.arrayId, offset: q.offset };
          }
        }
      }
      n += p.length;
    }
    for (const t of targets) syncAll(t);
    step(n);
    return { ok: true, bytes: n };
  } catch (e) {
    if (e instanceof Cancelled) return { ok: false, reason: 'cancelled' };
    return { ok: false, reason: 'io', message: (e as NodeJS.ErrnoException).code ?? (e as Error).message };
  }
}
