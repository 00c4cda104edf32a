/**
 * Transmission: NBD requests to the unit's UnitIO and replies back. READ
 * replies and write-back WRITEs that the cache completes in memory are
 * answered at once, without a promise hop; payloads arrive as slices of the
 * socket's chunks when whole (small misaligned ones copied to an 8-byte-aligned
 * arena buffer) or gathered into recycled buffers (see buffers.ts). Why each
 * of these: docs/bench/findings.md, "Data path measurements".
 */
import type { Socket } from 'node:net';
import type { AllocationRun } from '../core/index.js';
import { CMD, CMD_FLAG, MAX_PAYLOAD, REPLY_FLAG_DONE, REPLY_TYPE, REQUEST_MAGIC } from './constants.js';
import { LARGE_MIN, SMALL_MAX, alignedCopy, largeBuffer, releaseLarge, releaseSmall, releaseWhenWritten, dataBuffer, smallBuffer } from '../core/index.js';
import { ERRNO, nbdErrno } from './errno.js';
import { HandshakeSession, BASE_ALLOCATION_ID, type NegotiatedSession } from './handshake.js';
import type { CloseReason, ListenerTraits, NbdBackend, NbdLimits } from './session.js';
import { SIMPLE_REPLY_SIZE, allocationFlags, writeChunkHeader, writeOffset, writeSimpleReply } from './wire.js';

/** Past this many runs, a sparse READ sends the rest as data rather than more chunks. */
const MAX_READ_CHUNKS = 64;

/**
 * One NBD session, from greeting to close: framing (framing.ts), lifecycle
 * and flow control (session.ts), handshake (handshake.ts), and the commands
 * here.
 */
export class NbdConnection extends HandshakeSession {
  private readonly onClose: (c: NbdConnection, reason: CloseReason) => void;
  private readonly onTransmission: ((c: NbdConnection, info: NegotiatedSession) => void) | undefined;

  constructor(
    socket: Socket,
    host: string | null,
    backend: NbdBackend,
    limits: NbdLimits,
    onClose: (c: NbdConnection, reason: CloseReason) => void,
    traits: ListenerTraits = { tlsSelectsHost: false, authenticated: true },
    onTransmission?: (c: NbdConnection, info: NegotiatedSession) => void,
  ) {
    super(socket, host, backend, limits, traits);
    this.onClose = onClose;
    this.onTransmission = onTransmission;
    // Only once every layer's fields exist: events may arrive from here on.
    this.attach(socket);
    this.greet();
  }

  protected onClosed(reason: CloseReason): void {
    this.onClose(this, reason);
  }

  protected enteredTransmission(info: NegotiatedSession): void {
    // Plain sockets only: a TLS socket reads the raw one itself.
    if (!info.tls) this.readShared();
    this.onTransmission?.(this, info);
  }

  protected onRequest(h: Buffer, hp: number, chunk: Buffer, p: number, n: number): number {
    if (h.readUInt32BE(hp) !== REQUEST_MAGIC) {
      this.close('protocol-error');
      return n;
    }
    const flags = h.readUInt16BE(hp + 4);
    const type = h.readUInt16BE(hp + 6);
    const cookieHi = h.readUInt32BE(hp + 8);
    const cookieLo = h.readUInt32BE(hp + 12);
    const offHi = h.readUInt32BE(hp + 16);
    // Offsets past 2^53 cannot be in range of any volume; clamp so the range check refuses them.
    const offset = offHi >= 0x200000 ? Number.MAX_SAFE_INTEGER : offHi * 0x100000000 + h.readUInt32BE(hp + 20);
    const length = h.readUInt32BE(hp + 24);

    if (type === CMD.WRITE) {
      if (length > MAX_PAYLOAD) {
        // A payload this large is a denial-of-service by the spec's own words.
        this.close('protocol-error');
        return n;
      }
      if (n - p >= length) {
        let payload = chunk.subarray(p, p + length);
        if (this.borrowedChunks) {
          // The read buffer is reused after this chunk: the request gets its own copy.
          if (length >= LARGE_MIN) {
            const own = largeBuffer(length);
            payload.copy(own, 0);
            this.startWrite(flags, cookieHi, cookieLo, offset, own, true);
            return p + length;
          }
          payload = length <= SMALL_MAX ? alignedCopy(payload) : Buffer.from(payload);
        } else if (((chunk.byteOffset + p) & 7) !== 0 && length <= SMALL_MAX) {
          // Copies into the cache's shared memory are word-wise only between 8-byte-aligned
          // addresses (byte by byte otherwise, ~3x slower): realign small payloads first.
          payload = alignedCopy(payload);
        }
        this.startWrite(flags, cookieHi, cookieLo, offset, payload);
        return p + length;
      }
      // A payload spanning chunks (every large write) is gathered into a recycled buffer.
      // Small ones into the arena (startWrite gives the copy back when the store takes it at once): a fresh
      // buffer per 4 KiB write was 5 % of the loop's busy time at QD1, and garbage.
      this.gathering(length);
      const pooled = length >= LARGE_MIN;
      this.fill(length, (payload) => this.gathered(flags, cookieHi, cookieLo, offset, payload, pooled), dataBuffer(length));
      return p;
    }
    this.dispatch(type, flags, cookieHi, cookieLo, offset, length);
    return p;
  }

  private dispatch(type: number, flags: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
    const io = this.io!;
    switch (type) {
      case CMD.READ: {
        const allowed = CMD_FLAG.FUA | (this.structured ? CMD_FLAG.DF : 0);
        if ((flags & ~allowed) !== 0) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'unsupported flags on READ');
        if (length > MAX_PAYLOAD) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'read larger than maximum payload');
        // allData() is false out of range too: the sparse path's extents() then refuses it.
        if (this.structured && (flags & CMD_FLAG.DF) === 0 && length > 0 && !io.allData(offset, length)) {
          return this.startSparseRead(cookieHi, cookieLo, offset, length);
        }
        return this.startRead(cookieHi, cookieLo, offset, length);
      }
      case CMD.FLUSH: {
        if ((flags & ~CMD_FLAG.FUA) !== 0) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'unsupported flags on FLUSH');
        if (offset !== 0 || length !== 0) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'FLUSH must have zero offset and length');
        this.track(io.flush(), cookieHi, cookieLo, false, 0);
        return;
      }
      case CMD.TRIM: {
        if ((flags & ~CMD_FLAG.FUA) !== 0) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'unsupported flags on TRIM');
        // Not forWrite: a trim past the end is EINVAL (the spec keeps ENOSPC for writes).
        this.track(io.trim(offset, length, (flags & CMD_FLAG.FUA) !== 0), cookieHi, cookieLo, false, 0);
        return;
      }
      case CMD.WRITE_ZEROES: {
        if ((flags & ~(CMD_FLAG.FUA | CMD_FLAG.NO_HOLE | CMD_FLAG.FAST_ZERO)) !== 0) {
          return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'unsupported flags on WRITE_ZEROES');
        }
        const req = { noHole: (flags & CMD_FLAG.NO_HOLE) !== 0, fast: (flags & CMD_FLAG.FAST_ZERO) !== 0, fua: (flags & CMD_FLAG.FUA) !== 0 };
        this.track(io.zero(offset, length, req), cookieHi, cookieLo, true, 0);
        return;
      }
      case CMD.CACHE: {
        if ((flags & ~CMD_FLAG.FUA) !== 0) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'unsupported flags on CACHE');
        this.track(io.prefetch(offset, length), cookieHi, cookieLo, false, 0);
        return;
      }
      case CMD.BLOCK_STATUS:
        return this.blockStatus(flags, cookieHi, cookieLo, offset, length);
      case CMD.DISC:
        this.disconnecting = true;
        this.closeReason = 'client-disconnect';
        this.held = null;
        this.stopRequests();
        this.maybeFinishDisconnect();
        return;
      default:
        return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, `command ${type} is not supported`);
    }
  }

  private blockStatus(flags: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
    if (!this.blockStatusOn) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'no metadata context selected (SET_META_CONTEXT base:allocation)');
    if ((flags & ~(CMD_FLAG.FUA | CMD_FLAG.REQ_ONE)) !== 0) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'unsupported flags on BLOCK_STATUS');
    if (length === 0) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'BLOCK_STATUS needs a length');
    const max = (flags & CMD_FLAG.REQ_ONE) !== 0 ? 1 : this.limits.maxExtents;
    let extents: AllocationRun[];
    try {
      extents = this.io!.extents(offset, length, max);
    } catch (err) {
      return this.replyError(cookieHi, cookieLo, nbdErrno(err), errMessage(err));
    }
    const b = Buffer.allocUnsafe(20 + 4 + 8 * extents.length);
    writeChunkHeader(b, 0, REPLY_FLAG_DONE, REPLY_TYPE.BLOCK_STATUS, cookieHi, cookieLo, 4 + 8 * extents.length);
    b.writeUInt32BE(BASE_ALLOCATION_ID, 20);
    let p = 24;
    for (const e of extents) {
      b.writeUInt32BE(e.length, p);
      b.writeUInt32BE(allocationFlags(e.state), p + 4);
      p += 8;
    }
    this.send(b);
  }

  private gathered(flags: number, cookieHi: number, cookieLo: number, offset: number, payload: Buffer, pooled: boolean): void {
    // Begun before the gathered bytes are let go, so the budget never sees them leave and come back.
    this.startWrite(flags, cookieHi, cookieLo, offset, payload, pooled);
    this.gathering(0);
  }

  /**
   * `pooled`: the payload is a largeBuffer() this request owns; it goes back
   * to the pool once the store is done with it.
   */
  private startWrite(flags: number, cookieHi: number, cookieLo: number, offset: number, payload: Buffer, pooled = false): void {
    if ((flags & ~CMD_FLAG.FUA) !== 0) {
      // Nobody has seen the payload: it goes back at once.
      if (pooled) releaseLarge(payload);
      else releaseSmall(payload);
      return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'unsupported flags on WRITE');
    }
    const work = this.io!.write(offset, payload, (flags & CMD_FLAG.FUA) !== 0);
    const bytes = payload.length;
    if (work === null) {
      // Complete in memory (write-back): reply now, no promise hop.
      return this.writeDone(cookieHi, cookieLo, payload, pooled, null);
    }
    this.begin(bytes);
    work.then(
      () => {
        this.writeDone(cookieHi, cookieLo, payload, pooled, null);
        this.end(bytes);
      },
      (err: unknown) => {
        this.writeDone(cookieHi, cookieLo, payload, pooled, err);
        this.end(bytes);
      },
    );
  }

  /** A WRITE's completion, at once or after the unit's promise: recycle the payload, reply. */
  private writeDone(cookieHi: number, cookieLo: number, payload: Buffer, pooled: boolean, err: unknown): void {
    if (pooled) releaseLarge(payload);
    // A failed write may still have parts in flight reading the payload (the first failure settles it): kept then.
    else if (err === null) releaseSmall(payload);
    if (err === null) this.replyOk(cookieHi, cookieLo);
    else this.replyError(cookieHi, cookieLo, nbdErrno(err, true), errMessage(err));
  }

  private startRead(cookieHi: number, cookieLo: number, offset: number, length: number): void {
    // Header and data share one buffer: one socket write. Small replies are carved
    // from an arena, large ones recycled once the socket has sent them.
    const hdr = this.structured ? 28 : 16;
    // The data must start 8-byte aligned: V8 copies out of the cache's SharedArrayBuffer
    // word by word only between aligned addresses (byte by byte otherwise, ~3x slower).
    const pad = this.structured ? 4 : 0;
    const whole = dataBuffer(pad + hdr + length);
    const buf = pad === 0 ? whole : whole.subarray(pad);
    if (this.structured) {
      writeChunkHeader(buf, 0, REPLY_FLAG_DONE, length === 0 ? REPLY_TYPE.NONE : REPLY_TYPE.OFFSET_DATA, cookieHi, cookieLo, length === 0 ? 0 : 8 + length);
      buf.writeUInt32BE(Math.floor(offset / 0x100000000), 20);
      buf.writeUInt32BE(offset >>> 0, 24);
    } else {
      writeSimpleReply(buf, 0, 0, cookieHi, cookieLo);
    }
    const work = this.io!.read(offset, length, buf.subarray(hdr));
    if (work === null) {
      // Every block was in memory: the bytes are already in buf.
      return this.readDone(cookieHi, cookieLo, whole, buf, length, null);
    }
    this.begin(length);
    work.then(
      () => {
        this.readDone(cookieHi, cookieLo, whole, buf, length, null);
        this.end(length);
      },
      (err: unknown) => {
        this.readDone(cookieHi, cookieLo, whole, buf, length, err);
        this.end(length);
      },
    );
  }

  /**
   * A READ's completion, at once (cache hit) or after the store's promise.
   * `whole` is the buffer as allocated (for recycling), `buf` the reply inside it.
   */
  private readDone(cookieHi: number, cookieLo: number, whole: Buffer, buf: Buffer, length: number, err: unknown): void {
    if (err !== null) {
      if (whole.length >= LARGE_MIN) releaseLarge(whole);
      return this.replyError(cookieHi, cookieLo, nbdErrno(err), errMessage(err));
    }
    if (length === 0 && this.structured) return this.send(buf.subarray(0, 20));
    if (whole.length >= LARGE_MIN) return this.send(buf, releaseWhenWritten(whole));
    if (whole.length <= SMALL_MAX) return this.sendCarved(buf, whole);
    this.send(buf);
  }

  /**
   * A structured READ over holes: OFFSET_HOLE chunks for ranges that read as
   * zeroes (no bytes sent), OFFSET_DATA for the rest. The status is taken
   * before the read; a write racing the read may land in either answer,
   * which is what concurrent requests are allowed to see.
   */
  private startSparseRead(cookieHi: number, cookieLo: number, offset: number, length: number): void {
    const io = this.io!;
    let runs: AllocationRun[];
    try {
      runs = io.extents(offset, length, MAX_READ_CHUNKS);
    } catch (err) {
      return this.replyError(cookieHi, cookieLo, nbdErrno(err), errMessage(err));
    }
    const covered = runs.reduce((s, r) => s + r.length, 0);
    // Anything past the runs we took is sent as data.
    if (covered < length) runs.push({ offset: offset + covered, length: length - covered, state: 'data' });
    if (runs.length === 1 && runs[0]!.state !== 'data') {
      const b = Buffer.allocUnsafe(32);
      writeChunkHeader(b, 0, REPLY_FLAG_DONE, REPLY_TYPE.OFFSET_HOLE, cookieHi, cookieLo, 12);
      writeOffset(b, 20, offset);
      b.writeUInt32BE(length, 28);
      // Answered from the map alone: counted as a read served at once.
      io.countHoleRead(length);
      return this.send(b);
    }
    // Pooled when large (as startRead's): a fresh 1 MiB buffer per read was ~1 GB/s of new memory at 1 MiB QD8,
    // and V8 answered it with back-to-back full collections (docs/bench/findings.md, session 9).
    const data = dataBuffer(length);
    const pooled = length >= LARGE_MIN;
    this.begin(length);
    (io.read(offset, length, data) ?? Promise.resolve()).then(
      () => {
        let at = 0;
        const last = runs.length - 1;
        // A small data buffer goes back to its arena with the write of its last data chunk (sendCarved).
        const small = length <= SMALL_MAX;
        let lastData = -1;
        for (let i = 0; i <= last; i++) if (runs[i]!.state === 'data') lastData = i;
        if (small && lastData < 0) releaseSmall(data);
        for (let i = 0; i <= last; i++) {
          const r = runs[i]!;
          const flag = i === last ? REPLY_FLAG_DONE : 0;
          // Writes complete in order: once the last chunk is written, so is every data chunk before it.
          const done = i === last && pooled ? releaseWhenWritten(data) : undefined;
          if (r.state !== 'data') {
            // The write that gives the large buffer back cannot give a carve back too: this header is not one.
            const b = done ? Buffer.allocUnsafe(32) : smallBuffer(32);
            writeChunkHeader(b, 0, flag, REPLY_TYPE.OFFSET_HOLE, cookieHi, cookieLo, 12);
            writeOffset(b, 20, offset + at);
            b.writeUInt32BE(r.length, 28);
            if (done) this.send(b, done);
            else this.sendCarved(b, b);
          } else {
            const b = smallBuffer(28);
            writeChunkHeader(b, 0, flag, REPLY_TYPE.OFFSET_DATA, cookieHi, cookieLo, 8 + r.length);
            writeOffset(b, 20, offset + at);
            this.sendCarved(b, b);
            const chunk = data.subarray(at, at + r.length);
            if (small && i === lastData) this.sendCarved(chunk, data);
            else this.send(chunk, done);
          }
          at += r.length;
        }
        this.end(length);
      },
      (err: unknown) => {
        if (pooled) releaseLarge(data);
        this.replyError(cookieHi, cookieLo, nbdErrno(err), errMessage(err));
        this.end(length);
      },
    );
  }

  /**
   * Replies when `work` settles (the unit counts it in its IoStats). `bytes`
   * is the payload memory the request holds while in flight.
   */
  private track(work: Promise<void>, cookieHi: number, cookieLo: number, forWrite: boolean, bytes: number): void {
    this.begin(bytes);
    work.then(
      () => {
        this.replyOk(cookieHi, cookieLo);
        this.end(bytes);
      },
      (err: unknown) => {
        this.replyError(cookieHi, cookieLo, nbdErrno(err, forWrite), errMessage(err));
        this.end(bytes);
      },
    );
  }

  private replyOk(cookieHi: number, cookieLo: number): void {
    const b = smallBuffer(SIMPLE_REPLY_SIZE);
    writeSimpleReply(b, 0, 0, cookieHi, cookieLo);
    this.sendCarved(b, b);
  }

  private replyError(cookieHi: number, cookieLo: number, errno: number, message: string): void {
    if (!this.structured) {
      const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
      writeSimpleReply(b, 0, errno, cookieHi, cookieLo);
      this.send(b);
      return;
    }
    const msg = Buffer.from(message.slice(0, 1024));
    const b = Buffer.allocUnsafe(20 + 6 + msg.length);
    writeChunkHeader(b, 0, REPLY_FLAG_DONE, REPLY_TYPE.ERROR, cookieHi, cookieLo, 6 + msg.length);
    b.writeUInt32BE(errno, 20);
    b.writeUInt16BE(msg.length, 24);
    msg.copy(b, 26);
    this.send(b);
  }
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
