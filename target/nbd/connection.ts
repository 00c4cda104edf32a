import type { Socket } from 'node:net';
import type { BlockStore } from '../../cache/index.js';
import type { Namespaces, Unit } from '../namespace.js';
import {
  CMD,
  CMD_FLAG,
  ERRNO,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  INFO,
  MAX_PAYLOAD,
  MIN_BLOCK,
  OPT,
  OPTION_HEADER_SIZE,
  OPT_REPLY_MAGIC_HI,
  OPT_REPLY_MAGIC_LO,
  PREFERRED_BLOCK,
  REP,
  REPLY_FLAG_DONE,
  REPLY_TYPE,
  REQUEST_HEADER_SIZE,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  TFLAG,
} from './constants.js';
import { nbdErrno } from './errno.js';
import { OP } from '../stats.js';
import { parseExportName } from './export-name.js';

export interface NbdLimits {
  /** Options a client may send before it must have chosen an export. */
  maxOptions: number;
  /** Largest option payload read into memory; larger ones are skipped and refused. */
  maxOptionLength: number;
  /** Requests being served at once; reading pauses above this. */
  maxInflight: number;
  /** Reply bytes queued on the socket before reading pauses (a client that never reads cannot grow us). */
  maxQueuedReplyBytes: number;
}

export const DEFAULT_LIMITS: NbdLimits = {
  maxOptions: 256,
  maxOptionLength: 64 * 1024,
  maxInflight: 128,
  maxQueuedReplyBytes: 64 * 1024 * 1024,
};

export interface NbdBackend {
  namespaces: Namespaces;
  store: BlockStore;
}

/** What a session settled on when it entered transmission, for the per-session log line. */
export interface NegotiatedSession {
  export: string;
  unit: Unit;
  option: 'GO' | 'EXPORT_NAME';
  structuredReplies: boolean;
  tls: boolean;
}

/** Why a session ended, for the per-session log line. */
export type CloseReason = 'client-disconnect' | 'abort' | 'protocol-error' | 'socket-error' | 'revoked' | 'server-shutdown' | 'export-unknown';

const enum Mode {
  Header,
  Fill,
  Discard,
  Closed,
}

const enum Phase {
  ClientFlags,
  Options,
  Transmission,
}

/**
 * One NBD session, from greeting to close. Input is parsed in place from the
 * socket's chunks: fixed-size headers are read straight out of the chunk when
 * whole (copied into a 28-byte scratch buffer only when split), payloads are
 * sliced without a copy when they arrive whole and filled into one buffer of
 * the exact size otherwise. Replies are corked and sent once per loop turn.
 */
export class NbdConnection {
  readonly host: string | null;
  private readonly socket: Socket;
  private readonly backend: NbdBackend;
  private readonly limits: NbdLimits;
  private readonly onClose: (c: NbdConnection, reason: CloseReason) => void;
  private readonly onTransmission: ((c: NbdConnection, info: NegotiatedSession) => void) | undefined;

  private mode = Mode.Header;
  private phase = Phase.ClientFlags;
  private headerSize = 4;
  private readonly scratch = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  private scratchFill = 0;
  private fillBuf: Buffer = Buffer.alloc(0);
  private filled = 0;
  private onFilled: () => void = () => undefined;
  private discardLeft = 0;
  private onDiscarded: () => void = () => undefined;

  private noZeroes = false;
  private structured = false;
  private optionCount = 0;
  private unit: Unit | null = null;

  private inflight = 0;
  private disconnecting = false;
  private paused = false;
  private corked = false;
  private closeReason: CloseReason | null = null;

  constructor(
    socket: Socket,
    host: string | null,
    backend: NbdBackend,
    limits: NbdLimits,
    onClose: (c: NbdConnection, reason: CloseReason) => void,
    onTransmission?: (c: NbdConnection, info: NegotiatedSession) => void,
  ) {
    this.onTransmission = onTransmission;
    this.socket = socket;
    this.host = host;
    this.backend = backend;
    this.limits = limits;
    this.onClose = onClose;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => this.close('socket-error'));
    socket.on('close', () => this.close(this.closeReason ?? 'client-disconnect'));
    socket.on('drain', () => this.maybeResume());
    this.greet();
  }

  get exportUnit(): Unit | null {
    return this.unit;
  }

  /** Ends the session now (unmap, shutdown); in-flight replies are dropped. */
  close(reason: CloseReason): void {
    if (this.mode === Mode.Closed) return;
    this.mode = Mode.Closed;
    this.closeReason = reason;
    this.socket.destroy();
    this.onClose(this, reason);
  }

  /**
   * Graceful end for a server shutdown: read no further requests, let the ones
   * in flight finish and send their replies, then close. Resolves once the
   * socket is closed (or destroyed after `graceMs` if the client never lets go).
   */
  shutdown(graceMs = 10_000): Promise<void> {
    if (this.mode === Mode.Closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.close('server-shutdown'), graceMs);
      this.socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.closeReason = 'server-shutdown';
      this.disconnecting = true;
      this.socket.pause();
      if (this.inflight === 0) {
        this.uncork();
        this.socket.end();
      }
    });
  }

  // ---- input framing ---------------------------------------------------

  private onData(chunk: Buffer): void {
    const n = chunk.length;
    let p = 0;
    while (p < n) {
      switch (this.mode) {
        case Mode.Closed:
          return;
        case Mode.Fill: {
          const k = Math.min(this.fillBuf.length - this.filled, n - p);
          chunk.copy(this.fillBuf, this.filled, p, p + k);
          this.filled += k;
          p += k;
          if (this.filled === this.fillBuf.length) {
            this.mode = Mode.Header;
            this.onFilled();
          }
          break;
        }
        case Mode.Discard: {
          const k = Math.min(this.discardLeft, n - p);
          this.discardLeft -= k;
          p += k;
          if (this.discardLeft === 0) {
            this.mode = Mode.Header;
            this.onDiscarded();
          }
          break;
        }
        case Mode.Header: {
          if (this.disconnecting) return;
          const need = this.headerSize;
          if (this.scratchFill === 0 && n - p >= need) {
            p = this.onHeader(chunk, p, n);
          } else {
            const k = Math.min(need - this.scratchFill, n - p);
            chunk.copy(this.scratch, this.scratchFill, p, p + k);
            this.scratchFill += k;
            p += k;
            if (this.scratchFill === need) {
              this.scratchFill = 0;
              // The header came in pieces, so its payload starts in this chunk at p.
              p = this.onHeaderAt(this.scratch, 0, chunk, p, n);
            }
          }
          break;
        }
      }
    }
  }

  /** Header wholly inside `chunk` at p; returns the new read position. */
  private onHeader(chunk: Buffer, p: number, n: number): number {
    return this.onHeaderAt(chunk, p, chunk, p + this.headerSize, n);
  }

  /**
   * Dispatches one header read from `h` at `hp`. Following bytes (a write's
   * payload) are in `chunk` from `p` to `n`; returns how far it consumed.
   */
  private onHeaderAt(h: Buffer, hp: number, chunk: Buffer, p: number, n: number): number {
    switch (this.phase) {
      case Phase.ClientFlags:
        this.onClientFlags(h.readUInt32BE(hp));
        return p;
      case Phase.Options:
        this.onOptionHeader(h, hp);
        return p;
      case Phase.Transmission:
        return this.onRequest(h, hp, chunk, p, n);
    }
  }

  private expectHeader(size: number): void {
    this.mode = Mode.Header;
    this.headerSize = size;
  }

  private fill(length: number, then: (buf: Buffer) => void): void {
    const buf = Buffer.allocUnsafe(length);
    if (length === 0) {
      then(buf);
      return;
    }
    this.fillBuf = buf;
    this.filled = 0;
    this.mode = Mode.Fill;
    this.onFilled = () => then(buf);
  }

  private discard(length: number, then: () => void): void {
    if (length === 0) {
      then();
      return;
    }
    this.discardLeft = length;
    this.mode = Mode.Discard;
    this.onDiscarded = then;
  }

  // ---- handshake -------------------------------------------------------

  private greet(): void {
    const b = Buffer.allocUnsafe(18);
    b.write('NBDMAGIC', 0, 'latin1');
    b.writeUInt32BE(IHAVEOPT_HI, 8);
    b.writeUInt32BE(IHAVEOPT_LO, 12);
    b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    this.socket.write(b);
  }

  private onClientFlags(flags: number): void {
    // The spec requires dropping clients that send flags we did not offer.
    if ((flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) !== 0) return this.close('protocol-error');
    this.noZeroes = (flags & FLAG_C_NO_ZEROES) !== 0;
    this.phase = Phase.Options;
    this.expectHeader(OPTION_HEADER_SIZE);
  }

  private onOptionHeader(h: Buffer, p: number): void {
    if (h.readUInt32BE(p) !== IHAVEOPT_HI || h.readUInt32BE(p + 4) !== IHAVEOPT_LO) return this.close('protocol-error');
    const option = h.readUInt32BE(p + 8);
    const length = h.readUInt32BE(p + 12);
    if (++this.optionCount > this.limits.maxOptions) return this.close('protocol-error');
    if (length > this.limits.maxOptionLength) {
      // Nothing legitimate is this long; skip it to stay in sync, then refuse.
      if (option === OPT.EXPORT_NAME) return this.close('protocol-error');
      this.discard(length, () => {
        this.optionReply(option, REP.ERR_TOO_BIG, Buffer.from('option too long'));
        this.expectHeader(OPTION_HEADER_SIZE);
      });
      return;
    }
    this.fill(length, (data) => {
      this.expectHeader(OPTION_HEADER_SIZE);
      this.onOption(option, data);
    });
  }

  private onOption(option: number, data: Buffer): void {
    switch (option) {
      case OPT.EXPORT_NAME:
        return this.optExportName(data);
      case OPT.ABORT:
        this.optionReply(option, REP.ACK);
        this.socket.end();
        this.closeReason = 'abort';
        return;
      case OPT.LIST:
        return this.optList(data);
      case OPT.INFO:
      case OPT.GO:
        return this.optInfoGo(option, data);
      case OPT.STRUCTURED_REPLY:
        if (data.length !== 0) return this.optionError(option, REP.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        if (this.structured) return this.optionError(option, REP.ERR_INVALID, 'structured replies already negotiated');
        this.structured = true;
        return this.optionReply(option, REP.ACK);
      default:
        return this.optionError(option, REP.ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  private optExportName(data: Buffer): void {
    const unit = this.resolveExport(data.toString('utf8'));
    // EXPORT_NAME has no error reply: the only way to refuse is to hang up.
    if (!unit) return this.close('export-unknown');
    const b = Buffer.alloc(this.noZeroes ? 10 : 134);
    b.writeBigUInt64BE(BigInt(unit.volume.layout.size), 0);
    b.writeUInt16BE(this.transmissionFlags(unit), 8);
    this.socket.write(b);
    this.enterTransmission(unit, 'EXPORT_NAME');
  }

  private optList(data: Buffer): void {
    if (data.length !== 0) return this.optionError(OPT.LIST, REP.ERR_INVALID, 'LIST takes no data');
    for (const u of this.backend.namespaces.list(this.host)) {
      const name = Buffer.from(`${u.target}/${u.lun}`);
      const desc = Buffer.from(describe(u));
      const b = Buffer.allocUnsafe(4 + name.length + desc.length);
      b.writeUInt32BE(name.length, 0);
      name.copy(b, 4);
      desc.copy(b, 4 + name.length);
      this.optionReply(OPT.LIST, REP.SERVER, b);
    }
    this.optionReply(OPT.LIST, REP.ACK);
  }

  private optInfoGo(option: number, data: Buffer): void {
    if (data.length < 6) return this.optionError(option, REP.ERR_INVALID, 'truncated request');
    const nameLen = data.readUInt32BE(0);
    if (nameLen > data.length - 6) return this.optionError(option, REP.ERR_INVALID, 'export name length exceeds option');
    const nInfo = data.readUInt16BE(4 + nameLen);
    if (data.length !== 6 + nameLen + 2 * nInfo) return this.optionError(option, REP.ERR_INVALID, 'option length does not match its contents');
    const name = data.toString('utf8', 4, 4 + nameLen);
    const requested = new Set<number>();
    for (let i = 0; i < nInfo; i++) requested.add(data.readUInt16BE(6 + nameLen + 2 * i));

    const unit = this.resolveExport(name);
    if (!unit) return this.optionError(option, REP.ERR_UNKNOWN, `no export '${name}' for this host`);

    const exp = Buffer.allocUnsafe(12);
    exp.writeUInt16BE(INFO.EXPORT, 0);
    exp.writeBigUInt64BE(BigInt(unit.volume.layout.size), 2);
    exp.writeUInt16BE(this.transmissionFlags(unit), 10);
    this.optionReply(option, REP.INFO, exp);

    if (requested.has(INFO.NAME)) this.optionReply(option, REP.INFO, infoString(INFO.NAME, `${unit.target}/${unit.lun}`));
    // Sent unasked: it carries the serial and NAA a host needs to match the device.
    this.optionReply(option, REP.INFO, infoString(INFO.DESCRIPTION, describe(unit)));

    const bs = Buffer.allocUnsafe(14);
    bs.writeUInt16BE(INFO.BLOCK_SIZE, 0);
    bs.writeUInt32BE(MIN_BLOCK, 2);
    bs.writeUInt32BE(PREFERRED_BLOCK, 6);
    bs.writeUInt32BE(MAX_PAYLOAD, 10);
    this.optionReply(option, REP.INFO, bs);

    this.optionReply(option, REP.ACK);
    if (option === OPT.GO) this.enterTransmission(unit, 'GO');
  }

  private resolveExport(name: string): Unit | undefined {
    const addr = parseExportName(name);
    if (!addr) return undefined;
    return this.backend.namespaces.lookup(this.host, addr.target, addr.lun);
  }

  private transmissionFlags(unit: Unit): number {
    let f = TFLAG.HAS_FLAGS | TFLAG.SEND_FLUSH | TFLAG.SEND_FUA | TFLAG.CAN_MULTI_CONN;
    if (unit.readOnly) f |= TFLAG.READ_ONLY;
    return f;
  }

  private enterTransmission(unit: Unit, option: 'GO' | 'EXPORT_NAME'): void {
    this.unit = unit;
    this.phase = Phase.Transmission;
    this.expectHeader(REQUEST_HEADER_SIZE);
    this.onTransmission?.(this, { export: `${unit.target}/${unit.lun}`, unit, option, structuredReplies: this.structured, tls: false });
  }

  private optionReply(option: number, type: number, payload?: Buffer): void {
    const len = payload ? payload.length : 0;
    const b = Buffer.allocUnsafe(20);
    b.writeUInt32BE(OPT_REPLY_MAGIC_HI, 0);
    b.writeUInt32BE(OPT_REPLY_MAGIC_LO, 4);
    b.writeUInt32BE(option, 8);
    b.writeUInt32BE(type, 12);
    b.writeUInt32BE(len, 16);
    this.socket.write(b);
    if (payload && len > 0) this.socket.write(payload);
  }

  private optionError(option: number, type: number, message: string): void {
    this.optionReply(option, type, Buffer.from(message));
  }

  // ---- transmission ----------------------------------------------------

  private onRequest(h: Buffer, hp: number, chunk: Buffer, p: number, n: number): number {
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
        this.startWrite(flags, cookieHi, cookieLo, offset, chunk.subarray(p, p + length));
        return p + length;
      }
      this.fill(length, (payload) => this.startWrite(flags, cookieHi, cookieLo, offset, payload));
      return p;
    }
    this.dispatch(type, flags, cookieHi, cookieLo, offset, length);
    return p;
  }

  private dispatch(type: number, flags: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
    const unit = this.unit!;
    switch (type) {
      case CMD.READ: {
        if ((flags & ~CMD_FLAG.FUA) !== 0) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'unsupported flags on READ');
        if (length > MAX_PAYLOAD) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'read larger than maximum payload');
        if (!unit.volume.layout.inRange(offset, length)) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'read beyond end of export');
        return this.startRead(cookieHi, cookieLo, offset, length);
      }
      case CMD.FLUSH: {
        if (flags !== 0 && flags !== CMD_FLAG.FUA) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'unsupported flags on FLUSH');
        if (offset !== 0 || length !== 0) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'FLUSH must have zero offset and length');
        this.track(this.backend.store.flush(unit.volume), cookieHi, cookieLo, false, OP.flush, 0);
        return;
      }
      case CMD.DISC:
        this.disconnecting = true;
        this.closeReason = 'client-disconnect';
        this.socket.pause();
        this.maybeFinishDisconnect();
        return;
      default:
        return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, `command ${type} is not supported`);
    }
  }

  private startWrite(flags: number, cookieHi: number, cookieLo: number, offset: number, payload: Buffer): void {
    const unit = this.unit!;
    if ((flags & ~CMD_FLAG.FUA) !== 0) return this.replyError(cookieHi, cookieLo, ERRNO.EINVAL, 'unsupported flags on WRITE');
    if (unit.readOnly) return this.replyError(cookieHi, cookieLo, ERRNO.EPERM, 'export is read-only');
    if (!unit.volume.layout.inRange(offset, payload.length)) return this.replyError(cookieHi, cookieLo, ERRNO.ENOSPC, 'write beyond end of export');
    const fua = (flags & CMD_FLAG.FUA) !== 0;
    this.track(this.backend.store.write(unit.volume, offset, payload, fua), cookieHi, cookieLo, true, OP.write, payload.length);
  }

  private startRead(cookieHi: number, cookieLo: number, offset: number, length: number): void {
    // Header and data share one buffer: one allocation, one socket write.
    const hdr = this.structured ? 28 : 16;
    const buf = Buffer.allocUnsafe(hdr + length);
    if (this.structured) {
      buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
      buf.writeUInt16BE(REPLY_FLAG_DONE, 4);
      buf.writeUInt16BE(length === 0 ? REPLY_TYPE.NONE : REPLY_TYPE.OFFSET_DATA, 6);
      buf.writeUInt32BE(cookieHi, 8);
      buf.writeUInt32BE(cookieLo, 12);
      buf.writeUInt32BE(length === 0 ? 0 : 8 + length, 16);
      buf.writeUInt32BE(Math.floor(offset / 0x100000000), 20);
      buf.writeUInt32BE(offset >>> 0, 24);
    } else {
      buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
      buf.writeUInt32BE(0, 4);
      buf.writeUInt32BE(cookieHi, 8);
      buf.writeUInt32BE(cookieLo, 12);
    }
    this.begin();
    const stats = this.unit!.stats;
    const t0 = performance.now();
    this.backend.store.read(this.unit!.volume, offset, length, buf.subarray(hdr)).then(
      () => {
        this.send(length === 0 && this.structured ? buf.subarray(0, 20) : buf);
        stats.record(OP.read, length, (performance.now() - t0) / 1000, true);
        this.end();
      },
      (err: unknown) => {
        this.replyError(cookieHi, cookieLo, nbdErrno(err), errMessage(err));
        stats.record(OP.read, length, (performance.now() - t0) / 1000, false);
        this.end();
      },
    );
  }

  /** `op` and `bytes` are what the request counts as in the unit's IoStats (target/stats.ts OP). */
  private track(work: Promise<void>, cookieHi: number, cookieLo: number, forWrite: boolean, op: number, bytes: number): void {
    this.begin();
    const stats = this.unit!.stats;
    const t0 = performance.now();
    work.then(
      () => {
        this.replyOk(cookieHi, cookieLo);
        stats.record(op, bytes, (performance.now() - t0) / 1000, true);
        this.end();
      },
      (err: unknown) => {
        this.replyError(cookieHi, cookieLo, nbdErrno(err, forWrite), errMessage(err));
        stats.record(op, bytes, (performance.now() - t0) / 1000, false);
        this.end();
      },
    );
  }

  private begin(): void {
    if (++this.inflight >= this.limits.maxInflight) this.pauseInput();
  }

  private end(): void {
    this.inflight--;
    this.maybeResume();
    this.maybeFinishDisconnect();
  }

  private maybeFinishDisconnect(): void {
    if (this.disconnecting && this.inflight === 0 && this.mode !== Mode.Closed) {
      this.uncork();
      this.socket.end();
    }
  }

  private replyOk(cookieHi: number, cookieLo: number): void {
    const b = Buffer.allocUnsafe(16);
    b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
    b.writeUInt32BE(0, 4);
    b.writeUInt32BE(cookieHi, 8);
    b.writeUInt32BE(cookieLo, 12);
    this.send(b);
  }

  private replyError(cookieHi: number, cookieLo: number, errno: number, message: string): void {
    if (!this.structured) {
      const b = Buffer.allocUnsafe(16);
      b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
      b.writeUInt32BE(errno, 4);
      b.writeUInt32BE(cookieHi, 8);
      b.writeUInt32BE(cookieLo, 12);
      this.send(b);
      return;
    }
    const msg = Buffer.from(message.slice(0, 1024));
    const b = Buffer.allocUnsafe(20 + 6 + msg.length);
    b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
    b.writeUInt16BE(REPLY_FLAG_DONE, 4);
    b.writeUInt16BE(REPLY_TYPE.ERROR, 6);
    b.writeUInt32BE(cookieHi, 8);
    b.writeUInt32BE(cookieLo, 12);
    b.writeUInt32BE(6 + msg.length, 16);
    b.writeUInt32BE(errno, 20);
    b.writeUInt16BE(msg.length, 24);
    msg.copy(b, 26);
    this.send(b);
  }

  // ---- output batching and flow control ----------------------------------

  private send(b: Buffer): void {
    if (this.mode === Mode.Closed) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      setImmediate(() => this.uncork());
    }
    if (!this.socket.write(b) || this.socket.writableLength > this.limits.maxQueuedReplyBytes) this.pauseInput();
  }

  private uncork(): void {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  }

  private pauseInput(): void {
    if (!this.paused) {
      this.paused = true;
      this.socket.pause();
    }
  }

  private maybeResume(): void {
    if (!this.paused || this.disconnecting || this.mode === Mode.Closed) return;
    if (this.inflight < this.limits.maxInflight && this.socket.writableLength <= this.limits.maxQueuedReplyBytes / 2) {
      this.paused = false;
      this.socket.resume();
    }
  }
}

function describe(u: Unit): string {
  return `volume=${u.volumeName} serial=${u.serial} naa=${u.naa}`;
}

function infoString(type: number, s: string): Buffer {
  const str = Buffer.from(s);
  const b = Buffer.allocUnsafe(2 + str.length);
  b.writeUInt16BE(type, 0);
  str.copy(b, 2);
  return b;
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
