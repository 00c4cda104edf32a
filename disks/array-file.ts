import fs from 'node:fs';
import { BlockgateError } from '../common/errors.js';
import { ALLOC_BLOCK, AllocState, AllocationMap, type RunVisitor } from './allocation.js';

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

  constructor(id: number, name: string, path: string, size: number) {
    this.id = id;
    this.name = name;
    this.path = path;
    this.size = size;
  }

  /** Opens (creating a sparse file of `size` bytes if absent). Start-up and control path only. */
  async open(create: boolean): Promise<void> {
    const flags = fs.constants.O_RDWR | (create ? fs.constants.O_CREAT : 0);
    const h = await fs.promises.open(this.path, flags, 0o600).catch((e: NodeJS.ErrnoException) => {
      throw new BlockgateError('IO_ERROR', `cannot open array ${this.name} at ${this.path}: ${e.code ?? e.message}`);
    });
    const st = await h.stat();
    if (st.size < this.size) await h.truncate(this.size);
    this.handle = h;
    this.fd = h.fd;
    this.alloc = await AllocationMap.open(`${this.path}.alloc`, this.size, st.blocks > 0);
  }

  /** Which blocks hold data; decides what reads return (see disks/allocation.ts). */
  alloc!: AllocationMap;

  private handle: fs.promises.FileHandle | null = null;

  get isOpen(): boolean {
    return this.fd >= 0;
  }

  /** The open descriptor, for worker threads doing I/O on this array (fds are process-wide). */
  get descriptor(): number {
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

  /** Grows the backing file (never shrinks it). */
  async grow(newSize: number): Promise<void> {
    if (newSize <= this.size) return;
    await this.handle!.truncate(newSize);
    this.size = newSize;
    await this.alloc.grow(newSize);
  }

  /** Reads through the allocation map: blocks without data read as zeroes, off the file. */
  read(buf: Buffer, bufOffset: number, length: number, position: number): Promise<void> {
    const m = this.alloc;
    if (m.anyPending && m.isPending(position, length)) {
      return m.waitPending(position, length).then(() => this.read(buf, bufOffset, length, position));
    }
    if (m.allData(position, length)) return this.readRaw(buf, bufOffset, length, position);
    const parts: Promise<void>[] = [];
    m.runs(position, length, (off, len, st) => {
      const at = bufOffset + (off - position);
      if (st === AllocState.Data) parts.push(this.readRaw(buf, at, len, off));
      else buf.fill(0, at, at + len);
    });
    return Promise.all(parts).then(() => undefined);
  }

  /**
   * Writes and marks the blocks DATA once the bytes are in the file. A block
   * only partly covered that holds no data yet is first completed with zeroes
   * (its old bytes may be another volume's), as one padded block write.
   */
  write(buf: Buffer, bufOffset: number, length: number, position: number): Promise<void> {
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
    if (this.alloc.setFull(position, length, AllocState.Unallocated) > 0) this.writeGen++;
  }

  /** Hands space to a new owner: reads as zeroes from now on, durably. Control path only. */
  discardSync(position: number, length: number): void {
    this.alloc.discardSync(position, length);
  }

  /**
   * Reads `length` bytes at `position` into several buffers in order (a run
   * of cache slots): one preadv when the range is all data, else the data
   * runs are read and the rest zero-filled, as read() does.
   */
  readv(bufs: readonly NodeJS.ArrayBufferView[], length: number, position: number, cb: (err: Error | null) => void): void {
    const m = this.alloc;
    if (m.anyPending && m.isPending(position, length)) {
      m.waitPending(position, length).then(() => this.readv(bufs, length, position, cb), cb);
      return;
    }
    if (!m.allData(position, length)) {
      const parts: Promise<void>[] = [];
      eachPiece(bufs, position, (buf, at, len) => parts.push(this.read(buf, 0, len, at)));
      Promise.all(parts).then(() => cb(null), cb);
      return;
    }
    fs.readv(this.fd, bufs, position, (err, n) => {
      if (err) return cb(ioError('read', this.name, err));
      if (n < length) return this.finishShort(bufs, n, position, cb, false);
      cb(null);
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
    const m = this.alloc;
    if (m.anyPending && m.isPending(position, length)) {
      m.waitPending(position, length).then(() => this.writev(bufs, length, position, cb), cb);
      return;
    }
    fs.writev(this.fd, bufs, position, (err, n) => {
      if (err) return cb(ioError('write', this.name, err));
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
          if (err) return reject(ioError('read', this.name, err));
          if (n === 0) {
            // Past the end of a file that lost its tail: a hole reads as zeroes.
            buf.fill(0, bufOffset + done, bufOffset + length);
            return resolve();
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
          if (err) return reject(ioError('write', this.name, err));
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
    const target = this.writeGen;
    const m = this.alloc;
    if (target === this.syncedGen && !m.hasDirty) return m.persist(new Map(), Promise.resolve());
    const snap = m.snapshot();
    const synced = new Promise<void>((resolve, reject) => {
      fs.fdatasync(this.fd, (err) => {
        if (err) return reject(ioError('fdatasync', this.name, err));
        resolve();
      });
    });
    return m.persist(snap, synced).then(() => {
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

/** Visits each buffer of a vectored transfer with the file position it covers. */
function eachPiece(bufs: readonly NodeJS.ArrayBufferView[], position: number, visit: (buf: Buffer, at: number, len: number) => void): void {
  let at = position;
  for (const b of bufs) {
    visit(Buffer.from(b.buffer, b.byteOffset, b.byteLength), at, b.byteLength);
    at += b.byteLength;
  }
}

function ioError(op: string, array: string, err: NodeJS.ErrnoException): BlockgateError {
  return new BlockgateError('IO_ERROR', `${op} on array ${array} failed: ${err.code ?? err.message}`, { errno: err.code });
}
