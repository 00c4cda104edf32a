import fs from 'node:fs';
import { BlockgateError } from '../common/errors.js';
import { ALLOC_BLOCK, AllocState, AllocationMap, MAX_ARRAY_SIZE, type RunVisitor } from './allocation.js';

/** Why an array stopped serving: what the admin must repair before re-attaching it. */
export interface ArrayFault {
  reason: 'missing' | 'truncated' | 'replaced' | 'unreadable' | 'io-error' | 'map-corrupt' | 'map-truncated' | 'map-unreadable' | 'too-large';
  message: string;
  errno?: string | undefined;
  at: string;
}

/** One failed backing I/O, as the array reports it to whoever watches it (logs, events). */
export interface ArrayIoError {
  op: string;
  errno: string;
  /** True when the error failed the array (everything but a full file system). */
  failed: boolean;
}

/** Errors that say "no room now", not "the array is broken": the host gets ENOSPC and may retry. */
const NO_SPACE_ERRNOS = new Set(['ENOSPC', 'EDQUOT']);

/**
 * One disk array: a sparse backing file. All I/O goes through libuv's thread
 * pool with explicit positions (callback fs.read/fs.write were ~3x faster than
 * FileHandle here), so the main thread never waits on the disk.
 */
export class ArrayFile {
  readonly id: number;
  readonly name: string;
  readonly path: string;
  size: number;
  private fd = -1;
  /** Incremented when a write completes; a flush syncs only if it moved. */
  private writeGen = 0;
  private syncedGen = 0;
  /**
   * Set when the backing file can no longer be trusted (gone, shrunk,
   * replaced, failing I/O): every I/O is refused with IO_ERROR from then on,
   * so no host ever reads zeroes where its data was. Cleared only by opening
   * a new ArrayFile (the admin's attach after a repair).
   */
  fault: ArrayFault | null = null;
  /** Told of every failed backing I/O and of the fault, if any, it caused. */
  onIoError: ((a: ArrayFile, e: ArrayIoError) => void) | null = null;
  /** The file the descriptor is open on: a path naming another file means it was replaced or deleted. */
  private identity: { dev: number; ino: number } | null = null;

  constructor(id: number, name: string, path: string, size: number) {
    this.id = id;
    this.name = name;
    this.path = path;
    this.size = size;
  }

  /**
   * Opens the file. With `create` a missing file is made (sparse, `size`
   * bytes) and a short one extended; without it (attaching an existing
   * array) a missing, shorter or non-regular file is refused, never
   * silently re-created or re-extended. Start-up and control path only;
   * a refusal throws IO_ERROR with `details.reason` (an ArrayFault reason).
   */
  async open(create: boolean): Promise<void> {
    if (this.size > MAX_ARRAY_SIZE) throw openError(this.name, 'too-large', `array ${this.name} is ${this.size} bytes, more than the largest supported array (${MAX_ARRAY_SIZE} bytes)`);
    const flags = fs.constants.O_RDWR | (create ? fs.constants.O_CREAT : 0);
    const h = await fs.promises.open(this.path, flags, 0o600).catch((e: NodeJS.ErrnoException) => {
      const reason = e.code === 'ENOENT' ? 'missing' : 'unreadable';
      throw openError(this.name, reason, `cannot open array ${this.name} at ${this.path}: ${e.code ?? e.message}`, e.code);
    });
    try {
      const st = await h.stat();
      if (!st.isFile()) throw openError(this.name, 'unreadable', `array ${this.name}: ${this.path} is not a regular file`);
      if (st.size < this.size) {
        if (!create) {
          throw openError(this.name, 'truncated', `array ${this.name}: ${this.path} is ${st.size} bytes, the array is ${this.size}; restore the file, then attach the array`);
        }
        await h.truncate(this.size);
      }
      this.alloc = await AllocationMap.open(`${this.path}.alloc`, this.size, st.blocks > 0).catch((e: unknown) => {
        if (e instanceof BlockgateError && e.code === 'NO_SPACE') throw e;
        const reason = ((e as BlockgateError).details?.reason as ArrayFault['reason'] | undefined) ?? 'map-unreadable';
        throw openError(this.name, reason, `array ${this.name}: ${(e as Error).message}`);
      });
      this.identity = { dev: st.dev, ino: st.ino };
    } catch (e) {
      await h.close().catch(() => undefined);
      throw e;
    }
    this.handle = h;
    this.fd = h.fd;
  }

  /**
   * Checks that the path still names the open file at full size. Returns the
   * fault found (and fails the array with it), or null. Control path and
   * flush: one stat on libuv's pool.
   */
  async verify(): Promise<ArrayFault | null> {
    if (this.fault) return this.fault;
    if (!this.identity) return null;
    let st: fs.Stats;
    try {
      st = await fs.promises.stat(this.path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      return this.fail(code === 'ENOENT' ? 'missing' : 'unreadable', `array ${this.name}: ${this.path} ${code === 'ENOENT' ? 'was deleted' : `cannot be checked: ${code}`}`, code);
    }
    if (st.dev !== this.identity.dev || st.ino !== this.identity.ino) {
      return this.fail('replaced', `array ${this.name}: ${this.path} was replaced by another file (inode ${st.ino}, was ${this.identity.ino})`);
    }
    if (st.size < this.size) return this.fail('truncated', `array ${this.name}: ${this.path} shrank to ${st.size} bytes, the array is ${this.size}`);
    return null;
  }

  /** Puts the array in the failed state (first fault wins) and tells the watcher. */
  fail(reason: ArrayFault['reason'], message: string, errno?: string): ArrayFault {
    if (this.fault) return this.fault;
    this.fault = { reason, message, errno, at: new Date().toISOString() };
    this.onIoError?.(this, { op: 'check', errno: errno ?? reason, failed: true });
    return this.fault;
  }

  /** The error every I/O of a failed array gets. */
  faultError(): BlockgateError {
    return new BlockgateError('IO_ERROR', `array ${this.name} has failed (${this.fault?.message ?? 'unknown'}); repair it and attach it again`, {
      array: this.name,
      reason: this.fault?.reason,
    });
  }

  /**
   * Turns a failed system call into the error callers see: ENOSPC/EDQUOT are
   * NO_SPACE (the array stays up), anything else fails the array. Every one
   * is reported to the watcher, which decides what to log.
   */
  ioError(op: string, err: NodeJS.ErrnoException | string): BlockgateError {
    const code = typeof err === 'string' ? err : (err.code ?? err.message);
    if (NO_SPACE_ERRNOS.has(code)) {
      this.onIoError?.(this, { op, errno: code, failed: false });
      return new BlockgateError('NO_SPACE', `${op} on array ${this.name} failed: the file system holding ${this.path} is full (${code})`, { errno: code, array: this.name });
    }
    if (!this.fault) {
      this.fault = { reason: 'io-error', message: `${op} on array ${this.name} failed: ${code}`, errno: code, at: new Date().toISOString() };
      this.onIoError?.(this, { op, errno: code, failed: true });
    } else this.onIoError?.(this, { op, errno: code, failed: false });
    return new BlockgateError('IO_ERROR', `${op} on array ${this.name} failed: ${code}`, { errno: code, array: this.name });
  }

  /** Which blocks hold data; decides what reads return (see disks/allocation.ts). */
  alloc!: AllocationMap;

  private handle: fs.promises.FileHandle | null = null;

  get isOpen(): boolean {
    return this.fd >= 0;
  }

  /** The open descriptor, for worker threads doing I/O on this array (fds are process-wide). */
  get descriptor(): number {
    if (this.fault) throw this.faultError();
    if (this.fd < 0) throw new BlockgateError('IO_ERROR', `array ${this.name} is not open`);
    return this.fd;
  }

  /**
   * Records a write completed outside this object (a worker thread wrote
   * through `descriptor`, or a vectored write-back): the next flush has work
   * to do and every block wholly covered now holds data. The file's last
   * block may be short; a write reaching the end of the file covers it.
   * Partly covered blocks are data only if prepareWrite() made them so.
   */
  noteWrite(position: number, length: number): void {
    this.writeGen++;
    const end = position + length;
    const last = end >= this.size ? Math.ceil(this.size / ALLOC_BLOCK) : Math.floor(end / ALLOC_BLOCK);
    this.alloc.setBlocks(Math.ceil(position / ALLOC_BLOCK), last, AllocState.Data);
  }

  /**
   * Call before a write of [position, position+length) made outside this
   * object: a partly covered edge block that holds no data is first written
   * whole with zeroes and marked data (its old file bytes may be another
   * owner's), so after the outside write every block it touched reads back
   * exactly what was written there, and nothing else.
   */
  async prepareWrite(position: number, length: number): Promise<void> {
    if (length <= 0) return;
    const end = position + length;
    const edges: number[] = [];
    if (position % ALLOC_BLOCK !== 0) edges.push(Math.floor(position / ALLOC_BLOCK));
    const tail = Math.floor((end - 1) / ALLOC_BLOCK);
    if (end % ALLOC_BLOCK !== 0 && end < this.size && edges[0] !== tail) edges.push(tail);
    for (const b of edges) {
      if (this.alloc.state(b) === AllocState.Data) continue;
      const lo = Math.max(position, b * ALLOC_BLOCK);
      const hi = Math.min(end, (b + 1) * ALLOC_BLOCK);
      await this.write(Buffer.alloc(hi - lo), 0, hi - lo, lo);
    }
  }

  /** The runs of [position, position+length) that hold no data (they read as zeroes, whatever the file holds). */
  holes(position: number, length: number): { offset: number; length: number }[] {
    const out: { offset: number; length: number }[] = [];
    this.alloc.runs(position, length, (offset, len, state) => {
      if (state !== AllocState.Data) out.push({ offset, length: len });
    });
    return out;
  }

  /** True when a vectored read of the range can go straight to the file (no holes, no pad in flight). */
  plainRange(position: number, length: number): boolean {
    const m = this.alloc;
    return !(m.anyPending && m.isPending(position, length)) && m.allData(position, length);
  }

  /**
   * True when the range was never written (or was zeroed): it reads as
   * zeroes without touching the file. False for a failed array (its map
   * cannot be trusted) and while a pad is in flight under the range.
   */
  holeRange(position: number, length: number): boolean {
    const m = this.alloc;
    return this.fault === null && !(m.anyPending && m.isPending(position, length)) && m.noData(position, length);
  }

  /**
   * True when a vectored write of the range can go straight to the file from
   * another thread (`descriptor`, then `noteWrite`): aligned as writev()
   * requires and no pad in flight under it. Otherwise go through writev(),
   * which refuses or waits.
   */
  plainWrite(position: number, length: number): boolean {
    if (position % ALLOC_BLOCK !== 0 || (length % ALLOC_BLOCK !== 0 && position + length !== this.size)) return false;
    const m = this.alloc;
    return !(m.anyPending && m.isPending(position, length));
  }

  /** Grows the backing file (never shrinks it). */
  async grow(newSize: number): Promise<void> {
    if (newSize <= this.size) return;
    if (this.fault) throw this.faultError();
    await this.handle!.truncate(newSize);
    this.size = newSize;
    await this.alloc.grow(newSize);
  }

  /** Reads through the allocation map: blocks without data read as zeroes, off the file. */
  read(buf: Buffer, bufOffset: number, length: number, position: number): Promise<void> {
    // A failed array's holes must not read as zeroes either: nothing it says can be trusted.
    if (this.fault) return Promise.reject(this.faultError());
    const m = this.alloc;
    if (m.anyPending && m.isPending(position, length)) {
      return m.waitPending(position, length).then(() => this.read(buf, bufOffset, length, position));
    }
    if (m.allData(position, length)) return this.readRaw(buf, bufOffset, length, position);
    if (m.noData(position, length)) {
      buf.fill(0, bufOffset, bufOffset + length);
      return Promise.resolve();
    }
    const holes = this.holeSpans(position, length);
    const view = buf.subarray(bufOffset, bufOffset + length);
    return this.readRaw(buf, bufOffset, length, position).then(() => zeroSpans([view], holes));
  }

  /**
   * Where a range holding some data but not only data reads as zeroes,
   * taken now: [start, length] pairs relative to `position`, or null when
   * the range cannot be read in one call from the file this way (a failed
   * array, a pad in flight, or no data at all). Such a range is read with
   * one call for all of it, and these spans zeroed once the bytes are in
   * (zeroSpans): one read instead of one per data run (a volume written with
   * scattered 4 KiB writes has a data run per write). A write landing in a
   * span during the read may be read and zeroed: concurrent, so either
   * answer is allowed; the cache handles its own loads' races (directWrite).
   */
  mixedRange(position: number, length: number): number[] | null {
    const m = this.alloc;
    if (this.fault !== null || (m.anyPending && m.isPending(position, length)) || m.noData(position, length)) return null;
    return this.holeSpans(position, length);
  }

  private holeSpans(position: number, length: number): number[] {
    const spans: number[] = [];
    this.alloc.runs(position, length, (off, len, st) => {
      if (st !== AllocState.Data) spans.push(off - position, len);
    });
    return spans;
  }

  /**
   * Writes and marks the blocks DATA once the bytes are in the file. A block
   * only partly covered that holds no data yet is first completed with zeroes
   * (its old bytes may be another volume's), as one padded block write.
   */
  write(buf: Buffer, bufOffset: number, length: number, position: number): Promise<void> {
    if (this.fault) return Promise.reject(this.faultError());
    const m = this.alloc;
    if (length === 0) return Promise.resolve();
    if (m.anyPending && m.isPending(position, length)) {
      return m.waitPending(position, length).then(() => this.write(buf, bufOffset, length, position));
    }
    const end = position + length;
    const first = Math.floor(position / ALLOC_BLOCK);
    const last = Math.floor((end - 1) / ALLOC_BLOCK);
    const headPartial = position % ALLOC_BLOCK !== 0 || end < (first + 1) * ALLOC_BLOCK;
    const tailPartial = end % ALLOC_BLOCK !== 0;
    const padHead = headPartial && m.state(first) !== AllocState.Data;
    const padTail = tailPartial && last !== first && m.state(last) !== AllocState.Data;
    if (!padHead && !padTail) {
      return this.writeRaw(buf, bufOffset, length, position).then(() => {
        m.setFull(position, length, AllocState.Data);
      });
    }
    const parts: Promise<void>[] = [];
    let lo = position;
    let hi = end;
    if (padHead) {
      parts.push(this.pad(first, buf, bufOffset, position, end));
      lo = Math.min((first + 1) * ALLOC_BLOCK, end);
    }
    if (padTail) {
      parts.push(this.pad(last, buf, bufOffset, position, end));
      hi = last * ALLOC_BLOCK;
    }
    if (hi > lo) {
      parts.push(
        this.writeRaw(buf, bufOffset + (lo - position), hi - lo, lo).then(() => {
          m.setFull(lo, hi - lo, AllocState.Data);
        }),
      );
    }
    return Promise.all(parts).then(() => undefined);
  }

  /** Writes block `b` whole: zeroes plus the part of [position, end) that falls in it. */
  private pad(b: number, buf: Buffer, bufOffset: number, position: number, end: number): Promise<void> {
    const start = b * ALLOC_BLOCK;
    const size = Math.min(ALLOC_BLOCK, this.size - start);
    const block = Buffer.alloc(size);
    const lo = Math.max(start, position);
    const hi = Math.min(start + size, end);
    buf.copy(block, lo - start, bufOffset + (lo - position), bufOffset + (hi - position));
    const work = this.writeRaw(block, 0, size, start);
    this.alloc.beginPad(b, work);
    return work;
  }

  /**
   * WRITE_ZEROES: whole blocks become ZERO (noHole) or UNALLOCATED in the map;
   * partial blocks that hold data get zero bytes written. With `fast`, refuses
   * (NOT_SUPPORTED) when that would need a write, as FAST_ZERO asks.
   */
  async writeZeroes(position: number, length: number, noHole: boolean, fast: boolean): Promise<void> {
    if (this.fault) throw this.faultError();
    const m = this.alloc;
    if (length === 0) return;
    await m.waitPending(position, length);
    const end = position + length;
    const firstFull = Math.ceil(position / ALLOC_BLOCK) * ALLOC_BLOCK;
    const endFull = Math.max(firstFull, Math.floor(end / ALLOC_BLOCK) * ALLOC_BLOCK);
    const edges: [number, number][] = [];
    if (position < Math.min(firstFull, end)) edges.push([position, Math.min(firstFull, end)]);
    if (endFull < end && endFull >= firstFull) edges.push([Math.max(endFull, position), end]);
    // Edge pieces of blocks without data already read as zeroes.
    const writes = edges.filter(([lo, hi]) => m.state(Math.floor(lo / ALLOC_BLOCK)) === AllocState.Data && hi > lo);
    if (fast && writes.length > 0) {
      throw new BlockgateError('NOT_SUPPORTED', 'zeroing a partial block needs a write, which is not faster than writing zeroes');
    }
    if (endFull > firstFull && m.setFull(firstFull, endFull - firstFull, noHole ? AllocState.Zero : AllocState.Unallocated) > 0) this.writeGen++;
    await Promise.all(writes.map(([lo, hi]) => this.writeRaw(Buffer.alloc(hi - lo), 0, hi - lo, lo)));
  }

  /** TRIM: whole blocks become holes; partial blocks are left alone (TRIM is advisory). */
  trim(position: number, length: number): void {
    if (this.fault) throw this.faultError();
    if (this.alloc.setFull(position, length, AllocState.Unallocated) > 0) this.writeGen++;
  }

  /** Hands space to a new owner: reads as zeroes from now on, durably; a thick owner's space stays allocated. Control path only. */
  discardSync(position: number, length: number, thick = false): void {
    if (this.fault) throw this.faultError();
    this.alloc.discardSync(position, length, thick ? AllocState.Zero : AllocState.Unallocated);
  }

  /** Allocates the range's holes (reading as zeroes, as before), durably: space a volume turned thick keeps. Control path only. */
  reserveSync(position: number, length: number): void {
    if (this.fault) throw this.faultError();
    this.alloc.reserveSync(position, length);
  }

  /**
   * Reads `length` bytes at `position` into several buffers in order (a run
   * of cache slots): one preadv, the range's holes zeroed after when it has
   * some (mixedRange); a range of holes only is zero-filled without a read.
   */
  readv(bufs: readonly NodeJS.ArrayBufferView[], length: number, position: number, cb: (err: Error | null) => void): void {
    if (this.fault) return cb(this.faultError());
    const m = this.alloc;
    if (m.anyPending && m.isPending(position, length)) {
      m.waitPending(position, length).then(() => this.readv(bufs, length, position, cb), cb);
      return;
    }
    let holes: number[] | null = null;
    if (!m.allData(position, length)) {
      if (m.noData(position, length)) {
        for (const b of bufs) new Uint8Array(b.buffer, b.byteOffset, b.byteLength).fill(0);
        return cb(null);
      }
      holes = this.holeSpans(position, length);
    }
    const done = holes === null ? cb : (err: Error | null): void => {
      if (err === null) zeroSpans(bufs, holes);
      cb(err);
    };
    fs.readv(this.fd, bufs, position, (err, n) => {
      if (err) return done(this.ioError('read', err));
      if (n < length) return this.finishShort(bufs, n, position, done, false);
      done(null);
    });
  }

  /**
   * Writes several buffers in order at `position` (one pwritev). The range
   * must cover whole allocation blocks (the cache writes back aligned runs of
   * fully valid blocks), so the blocks can be marked as data afterwards
   * without exposing any old bytes.
   */
  writev(bufs: readonly NodeJS.ArrayBufferView[], length: number, position: number, cb: (err: Error | null) => void): void {
    if (position % ALLOC_BLOCK !== 0 || (length % ALLOC_BLOCK !== 0 && position + length !== this.size)) {
      cb(new BlockgateError('INTERNAL', `vectored write at ${position}+${length} is not aligned to ${ALLOC_BLOCK}`));
      return;
    }
    if (this.fault) return cb(this.faultError());
    const m = this.alloc;
    if (m.anyPending && m.isPending(position, length)) {
      m.waitPending(position, length).then(() => this.writev(bufs, length, position, cb), cb);
      return;
    }
    fs.writev(this.fd, bufs, position, (err, n) => {
      if (err) return cb(this.ioError('write', err));
      if (n < length) return this.finishShort(bufs, n, position, cb, true);
      this.noteWrite(position, length);
      cb(null);
    });
  }

  /** Completes a short vectored transfer buffer by buffer (rare: signals, file tail). */
  private finishShort(bufs: readonly NodeJS.ArrayBufferView[], done: number, position: number, cb: (err: Error | null) => void, write: boolean): void {
    const jobs: Promise<void>[] = [];
    let at = 0;
    for (const b of bufs) {
      const v = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
      const start = Math.max(0, done - at);
      if (start < v.length) {
        jobs.push(write ? this.write(v, start, v.length - start, position + at + start) : this.read(v, start, v.length - start, position + at + start));
      }
      at += v.length;
    }
    Promise.all(jobs).then(() => cb(null), (e: Error) => cb(e));
  }

  /** Allocation runs of [position, position+length). */
  allocationRuns(position: number, length: number, visit: RunVisitor): void {
    this.alloc.runs(position, length, visit);
  }

  private readRaw(buf: Buffer, bufOffset: number, length: number, position: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const step = (done: number): void => {
        fs.read(this.fd, buf, bufOffset + done, length - done, position + done, (err, n) => {
          if (err) return reject(this.ioError('read', err));
          if (n === 0) {
            // The file ends inside the array: it lost its tail under us. Its data is gone, not zero.
            this.fail('truncated', `array ${this.name}: ${this.path} ends before offset ${position + done}; the file was truncated`);
            return reject(this.faultError());
          }
          if (done + n < length) return step(done + n);
          resolve();
        });
      };
      step(0);
    });
  }

  private writeRaw(buf: Buffer, bufOffset: number, length: number, position: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const step = (done: number): void => {
        fs.write(this.fd, buf, bufOffset + done, length - done, position + done, (err, n) => {
          if (err) return reject(this.ioError('write', err));
          if (done + n < length) return step(done + n);
          this.writeGen++;
          resolve();
        });
      };
      step(0);
    });
  }

  /**
   * Makes every write completed before this call durable (fdatasync), then
   * the allocation map as it was when the call began (see allocation.ts for
   * why that order).
   */
  flush(): Promise<void> {
    if (this.fault) return Promise.reject(this.faultError());
    const target = this.writeGen;
    const m = this.alloc;
    if (target === this.syncedGen && !m.hasDirty) return m.persist(new Map(), Promise.resolve());
    const snap = m.snapshot();
    const synced = new Promise<void>((resolve, reject) => {
      fs.fdatasync(this.fd, (err) => {
        if (err) return reject(this.ioError('fdatasync', err));
        resolve();
      });
    });
    // A flush acknowledges durability: syncing a file that was deleted or
    // replaced under us would acknowledge bytes no restart will find.
    const checked = Promise.all([synced, this.verify()]).then(([, fault]) => {
      if (fault) throw this.faultError();
    });
    // Handled by the persist chain, maybe after it rejects: do not let Node call it unhandled.
    checked.catch(() => undefined);
    return m.persist(snap, checked).then(() => {
      if (target > this.syncedGen) this.syncedGen = target;
    });
  }

  async close(): Promise<void> {
    if (!this.handle) return;
    const h = this.handle;
    this.handle = null;
    this.fd = -1;
    await h.sync().catch(() => undefined);
    await h.close();
    await this.alloc?.close();
  }
}

/** Zeroes spans ([start, length] pairs, from mixedRange) of the bytes that bufs hold end to end. */
export function zeroSpans(bufs: readonly NodeJS.ArrayBufferView[], spans: readonly number[]): void {
  let i = 0;
  let base = 0;
  for (const b of bufs) {
    const end = base + b.byteLength;
    for (; i < spans.length; i += 2) {
      const s = spans[i]!;
      const e = s + spans[i + 1]!;
      if (s >= end) break;
      const u = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
      u.fill(0, Math.max(s, base) - base, Math.min(e, end) - base);
      // A span running on into the next buffer is visited again there.
      if (e > end) break;
    }
    base = end;
  }
}

function openError(array: string, reason: ArrayFault['reason'], message: string, errno?: string): BlockgateError {
  return new BlockgateError('IO_ERROR', message, { array, reason, ...(errno ? { errno } : {}) });
}
