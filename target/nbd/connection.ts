import type { Socket } from 'node:net';
import tls from 'node:tls';
import type { BlockStore } from '../../cache/index.js';
import { openUnit, type AllocationRun, type UnitIO } from '../core/index.js';
import type { Namespaces, Unit } from '../namespace.js';
import {
  CMD,
  CMD_FLAG,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  INFO,
  MAX_PAYLOAD,
  OPT,
  OPTION_HEADER_SIZE,
  OPT_REPLY_MAGIC_HI,
  OPT_REPLY_MAGIC_LO,
  REP,
  REPLY_FLAG_DONE,
  REPLY_TYPE,
  REQUEST_HEADER_SIZE,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  TFLAG,
} from './constants.js';
import { LARGE_MIN, SMALL_MAX, alignedCopy, largeBuffer, releaseLarge, replyBuffer, smallBuffer } from './buffers.js';
import { ERRNO, nbdErrno } from './errno.js';
import { allocationFlags, writeChunkHeader, writeOffset } from './wire.js';
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
  /** Payload and read-buffer bytes held by requests being served; parsing stops above this. */
  maxInflightBytes: number;
  /** Block-status descriptors in one reply (the spec suggests at most 2^20). */
  maxExtents: number;
}

export const DEFAULT_LIMITS: NbdLimits = {
  maxOptions: 256,
  maxOptionLength: 64 * 1024,
  maxInflight: 128,
  maxQueuedReplyBytes: 16 * 1024 * 1024,
  maxInflightBytes: 64 * 1024 * 1024,
  maxExtents: 65536,
};

/** TLS as the server offers it after NBD_OPT_STARTTLS. */
export interface NbdTls {
  /** Server-side options for the upgrade (PSK callback, certificate, CA...). */
  options(): tls.TLSSocketOptions;
  /** The host a finished handshake proves (PSK identity or certificate CN), or null to refuse. */
  identify(sock: tls.TLSSocket): string | null;
}

export interface NbdBackend {
  namespaces: Namespaces;
  store: BlockStore;
  tls?: NbdTls | undefined;
}

/** What the listener that accepted a connection vouches for. */
export interface ListenerTraits {
  /** STARTTLS may replace the host with the one the TLS identity names. */
  tlsSelectsHost: boolean;
  /** The listener alone proves the host (its own unix socket): a host's require-TLS does not apply. */
  authenticated: boolean;
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
export type CloseReason = 'client-disconnect' | 'abort' | 'protocol-error' | 'socket-error' | 'revoked' | 'server-shutdown' | 'export-unknown' | 'tls-refused';

const enum Mode {
  Header,
  Fill,
  Discard,
  /** Handing the socket to TLS: nothing more is read in plaintext. */
  Upgrading,
  Closed,
}

const enum Phase {
  ClientFlags,
  Options,
  Transmission,
}

/** Context id of base:allocation when selected (ids are per connection and opaque to clients). */
const BASE_ALLOCATION_ID = 1;
const BASE_ALLOCATION = 'base:allocation';
/** Past this many runs, a sparse READ sends the rest as data rather than more chunks. */
const MAX_READ_CHUNKS = 64;
const TLS_HANDSHAKE_TIMEOUT_MS = 30_000;
const FINISH_GRACE_MS = 2_000;

/**
 * One NBD session, from greeting to close. Input is parsed in place from the
 * socket's chunks: fixed-size headers are read straight out of the chunk when
 * whole (copied into a 28-byte scratch buffer only when split), payloads are
 * sliced without a copy when they arrive whole (small ones copied to an
 * 8-byte-aligned arena buffer when misaligned) and filled into one buffer of
 * the exact size otherwise (large ones recycled, see buffers.ts). READ replies
 * and write-back WRITEs that the cache completes in memory are answered at
 * once, without a promise hop. Replies are corked and sent once per loop turn.
 * Why each of these: docs/bench/findings.md, "Data path measurements".
 *
 * Flow control: before each new request the limits are checked; above any of
 * them the rest of the chunk is held and the socket paused, so memory held per
 * connection is bounded by the limits plus one request, whatever the client does.
 */
export class NbdConnection {
  private hostName: string | null;
  private socket: Socket;
  private readonly backend: NbdBackend;
  private readonly limits: NbdLimits;
  private readonly traits: ListenerTraits;
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
  private held: Buffer | null = null;
  private heldPos = 0;

  private noZeroes = false;
  private structured = false;
  private tlsActive = false;
  /** Export name the last SET_META_CONTEXT selected base:allocation for (null: none selected). */
  private metaExport: string | null = null;
  private blockStatusOn = false;
  private optionCount = 0;
  private unit: Unit | null = null;
  /** The unit's I/O, once in transmission (every request goes through it). */
  private io: UnitIO | null = null;

  private inflight = 0;
  private inflightBytes = 0;
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
    traits: ListenerTraits = { tlsSelectsHost: false, authenticated: true },
    onTransmission?: (c: NbdConnection, info: NegotiatedSession) => void,
  ) {
    this.onTransmission = onTransmission;
    this.socket = socket;
    this.hostName = host;
    this.backend = backend;
    this.limits = limits;
    this.traits = traits;
    this.onClose = onClose;
    this.attach(socket);
    this.greet();
  }

  /** The host this session acts for: the listener's, or after STARTTLS the TLS identity's. */
  get host(): string | null {
    return this.hostName;
  }

  get exportUnit(): Unit | null {
    return this.unit;
  }

  private readonly handlers = {
    data: (chunk: Buffer) => this.onData(chunk),
    error: () => this.close('socket-error'),
    close: () => this.close(this.closeReason ?? 'client-disconnect'),
    drain: () => this.maybeResume(),
  };

  private attach(sock: Socket): void {
    sock.on('data', this.handlers.data);
    sock.on('error', this.handlers.error);
    sock.on('close', this.handlers.close);
    sock.on('drain', this.handlers.drain);
  }

  private detach(sock: Socket): void {
    sock.off('data', this.handlers.data);
    sock.off('error', this.handlers.error);
    sock.off('close', this.handlers.close);
    sock.off('drain', this.handlers.drain);
  }

  /** Ends the session now (unmap, shutdown); in-flight replies are dropped. */
  close(reason: CloseReason): void {
    if (this.mode === Mode.Closed) return;
    this.mode = Mode.Closed;
    this.closeReason = reason;
    this.held = null;
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
      this.maybeFinishDisconnect();
    });
  }

  // ---- input framing ---------------------------------------------------

  private onData(chunk: Buffer): void {
    this.process(chunk, 0);
  }

  private overLimits(): boolean {
    return (
      this.inflight >= this.limits.maxInflight ||
      this.inflightBytes >= this.limits.maxInflightBytes ||
      this.socket.writableLength > this.limits.maxQueuedReplyBytes
    );
  }

  private process(chunk: Buffer, p: number): void {
    const n = chunk.length;
    while (p < n) {
      switch (this.mode) {
        case Mode.Closed:
          return;
        case Mode.Upgrading:
          // The client spoke before reading STARTTLS's reply: it cannot be in step with us.
          this.close('protocol-error');
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
          if (this.phase === Phase.Transmission && this.scratchFill === 0 && this.overLimits()) {
            this.held = chunk;
            this.heldPos = p;
            this.pauseInput();
            return;
          }
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

  private fill(length: number, then: (buf: Buffer) => void, buf: Buffer = Buffer.allocUnsafe(length)): void {
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

  /** A host that requires TLS gets nothing over plaintext except on its own authenticated listener. */
  private tlsRequired(): boolean {
    return !this.tlsActive && !this.traits.authenticated && this.backend.namespaces.requiresTls(this.hostName);
  }

  private onOption(option: number, data: Buffer): void {
    if (option !== OPT.STARTTLS && option !== OPT.ABORT && option !== OPT.STRUCTURED_REPLY && this.tlsRequired()) {
      // EXPORT_NAME has no error reply.
      if (option === OPT.EXPORT_NAME) return this.close('tls-refused');
      return this.optionError(option, REP.ERR_TLS_REQD, 'this host requires TLS: send NBD_OPT_STARTTLS first');
    }
    switch (option) {
      case OPT.EXPORT_NAME:
        return this.optExportName(data);
      case OPT.ABORT:
        this.optionReply(option, REP.ACK);
        this.closeReason = 'abort';
        this.finish();
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
      case OPT.LIST_META_CONTEXT:
      case OPT.SET_META_CONTEXT:
        return this.optMetaContext(option, data);
      case OPT.STARTTLS:
        return this.optStartTls(data);
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
    this.enterTransmission(unit, data.toString('utf8'), 'EXPORT_NAME');
  }

  private optList(data: Buffer): void {
    if (data.length !== 0) return this.optionError(OPT.LIST, REP.ERR_INVALID, 'LIST takes no data');
    for (const u of this.backend.namespaces.list(this.hostName)) {
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

    const caps = openUnit(this.backend.store, unit).caps();
    const bs = Buffer.allocUnsafe(14);
    bs.writeUInt16BE(INFO.BLOCK_SIZE, 0);
    bs.writeUInt32BE(caps.minBlock, 2);
    bs.writeUInt32BE(caps.preferredBlock, 6);
    bs.writeUInt32BE(Math.min(caps.maxTransfer, MAX_PAYLOAD), 10);
    this.optionReply(option, REP.INFO, bs);

    this.optionReply(option, REP.ACK);
    if (option === OPT.GO) this.enterTransmission(unit, name, 'GO');
  }

  /**
   * LIST/SET_META_CONTEXT. The only context is base:allocation; "base:" lists
   * it, other namespaces are ignored as the spec requires.
   */
  private optMetaContext(option: number, data: Buffer): void {
    const set = option === OPT.SET_META_CONTEXT;
    // SET replaces the selection even when it fails.
    if (set) this.metaExport = null;
    if (!this.structured) return this.optionError(option, REP.ERR_INVALID, 'negotiate structured replies first');
    if (data.length < 8) return this.optionError(option, REP.ERR_INVALID, 'truncated request');
    const nameLen = data.readUInt32BE(0);
    if (nameLen > data.length - 8) return this.optionError(option, REP.ERR_INVALID, 'export name length exceeds option');
    const name = data.toString('utf8', 4, 4 + nameLen);
    const count = data.readUInt32BE(4 + nameLen);
    let p = 8 + nameLen;
    const queries: string[] = [];
    for (let i = 0; i < count; i++) {
      if (data.length - p < 4) return this.optionError(option, REP.ERR_INVALID, 'query count exceeds option');
      const len = data.readUInt32BE(p);
      if (len > data.length - p - 4) return this.optionError(option, REP.ERR_INVALID, 'query length exceeds option');
      queries.push(data.toString('utf8', p + 4, p + 4 + len));
      p += 4 + len;
    }
    if (p !== data.length) return this.optionError(option, REP.ERR_INVALID, 'option length does not match its contents');
    if (!this.resolveExport(name)) return this.optionError(option, REP.ERR_UNKNOWN, `no export '${name}' for this host`);
    const match = set
      ? queries.includes(BASE_ALLOCATION)
      : queries.length === 0 || queries.some((q) => q === BASE_ALLOCATION || q === 'base:');
    if (match) {
      const ctx = Buffer.allocUnsafe(4 + BASE_ALLOCATION.length);
      ctx.writeUInt32BE(set ? BASE_ALLOCATION_ID : 0, 0);
      ctx.write(BASE_ALLOCATION, 4, 'utf8');
      this.optionReply(option, REP.META_CONTEXT, ctx);
      if (set) this.metaExport = name;
    }
    this.optionReply(option, REP.ACK);
  }

  private optStartTls(data: Buffer): void {
    const tlsConf = this.backend.tls;
    if (data.length !== 0) return this.optionError(OPT.STARTTLS, REP.ERR_INVALID, 'STARTTLS takes no data');
    if (this.tlsActive) return this.optionError(OPT.STARTTLS, REP.ERR_INVALID, 'TLS is already active');
    if (!tlsConf || !this.traits.tlsSelectsHost) {
      return this.optionError(OPT.STARTTLS, REP.ERR_POLICY, 'TLS is offered on the shared NBD listener only');
    }
    this.optionReply(OPT.STARTTLS, REP.ACK);
    this.mode = Mode.Upgrading;
    const raw = this.socket;
    this.detach(raw);
    let secure: tls.TLSSocket;
    try {
      secure = new tls.TLSSocket(raw, { isServer: true, ...tlsConf.options() });
    } catch {
      return this.close('tls-refused');
    }
    this.socket = secure;
    const fail = (): void => this.close('tls-refused');
    // A client that starts TLS and then says nothing must not hold the session forever.
    const timer = setTimeout(fail, TLS_HANDSHAKE_TIMEOUT_MS);
    timer.unref();
    secure.once('error', fail);
    secure.once('close', fail);
    secure.once('secure', () => {
      clearTimeout(timer);
      secure.off('error', fail);
      secure.off('close', fail);
      const who = tlsConf.identify(secure);
      if (!who || !this.backend.namespaces.hasHost(who)) return this.close('tls-refused');
      // Everything negotiated in plaintext is forgotten, as the spec requires.
      this.hostName = who;
      this.tlsActive = true;
      this.structured = false;
      this.metaExport = null;
      this.attach(secure);
      this.expectHeader(OPTION_HEADER_SIZE);
    });
  }

  private resolveExport(name: string): Unit | undefined {
    const addr = parseExportName(name);
    if (!addr) return undefined;
    return this.backend.namespaces.lookup(this.hostName, addr.target, addr.lun);
  }

  private transmissionFlags(unit: Unit): number {
    const caps = openUnit(this.backend.store, unit).caps();
    let f = TFLAG.HAS_FLAGS | TFLAG.SEND_FLUSH | TFLAG.SEND_FUA | TFLAG.SEND_CACHE;
    if (caps.flushCoversAllSessions) f |= TFLAG.CAN_MULTI_CONN;
    if (this.structured) f |= TFLAG.SEND_DF;
    if (caps.readOnly) f |= TFLAG.READ_ONLY;
    else f |= TFLAG.SEND_TRIM | TFLAG.SEND_WRITE_ZEROES | TFLAG.SEND_FAST_ZERO;
    return f;
  }

  private enterTransmission(unit: Unit, name: string, option: 'GO' | 'EXPORT_NAME'): void {
    this.unit = unit;
    this.io = openUnit(this.backend.store, unit);
    // Block status only for the export the contexts were selected on.
    this.blockStatusOn = this.structured && this.metaExport !== null && sameExport(this.metaExport, name);
    this.phase = Phase.Transmission;
    this.expectHeader(REQUEST_HEADER_SIZE);
    this.onTransmission?.(this, { export: `${unit.target}/${unit.lun}`, unit, option, structuredReplies: this.structured, tls: this.tlsActive });
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
        let payload = chunk.subarray(p, p + length);
        // Copies into the cache's shared memory are word-wise only between 8-byte-aligned
        // addresses (byte by byte otherwise, ~3x slower): realign small payloads first.
        if (((chunk.byteOffset + p) & 7) !== 0 && length <= SMALL_MAX) payload = alignedCopy(payload);
        this.startWrite(flags, cookieHi, cookieLo, offset, payload);
        return p + length;
      }
      // A payload spanning chunks (every large write) is gathered into a recycled buffer.
      if (length >= LARGE_MIN) {
        this.fill(length, (payload) => this.startWrite(flags, cookieHi, cookieLo, offset, payload, true), largeBuffer(length));
      } else {
        this.fill(length, (payload) => this.startWrite(flags, cookieHi, cookieLo, offset, payload));
      }
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
        this.socket.pause();
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

  /**
   * `pooled`: the payload is a largeBuffer() this request owns; it goes back
   * to the pool once the store is done with it.
   */
  private startWrite(flags: number, cookieHi: number, cookieLo: number, offset: number, payload: Buffer, pooled = false): void {
    if ((flags & ~CMD_FLAG.FUA) !== 0) {
      if (pooled) releaseLarge(payload);
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
    const whole = replyBuffer(pad + hdr + length);
    const buf = pad === 0 ? whole : whole.subarray(pad);
    if (this.structured) {
      writeChunkHeader(buf, 0, REPLY_FLAG_DONE, length === 0 ? REPLY_TYPE.NONE : REPLY_TYPE.OFFSET_DATA, cookieHi, cookieLo, length === 0 ? 0 : 8 + length);
      buf.writeUInt32BE(Math.floor(offset / 0x100000000), 20);
      buf.writeUInt32BE(offset >>> 0, 24);
    } else {
      buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
      buf.writeUInt32BE(0, 4);
      buf.writeUInt32BE(cookieHi, 8);
      buf.writeUInt32BE(cookieLo, 12);
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
    if (whole.length >= LARGE_MIN) return this.send(buf, recycleOnWrite(whole));
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
    const data = Buffer.allocUnsafe(length);
    this.begin(length);
    (io.read(offset, length, data) ?? Promise.resolve()).then(
      () => {
        let at = 0;
        runs.forEach((r, i) => {
          const flag = i === runs.length - 1 ? REPLY_FLAG_DONE : 0;
          if (r.state !== 'data') {
            const b = Buffer.allocUnsafe(32);
            writeChunkHeader(b, 0, flag, REPLY_TYPE.OFFSET_HOLE, cookieHi, cookieLo, 12);
            writeOffset(b, 20, offset + at);
            b.writeUInt32BE(r.length, 28);
            this.send(b);
          } else {
            const b = Buffer.allocUnsafe(28);
            writeChunkHeader(b, 0, flag, REPLY_TYPE.OFFSET_DATA, cookieHi, cookieLo, 8 + r.length);
            writeOffset(b, 20, offset + at);
            this.send(b);
            this.send(data.subarray(at, at + r.length));
          }
          at += r.length;
        });
        this.end(length);
      },
      (err: unknown) => {
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

  private begin(bytes: number): void {
    this.inflight++;
    this.inflightBytes += bytes;
  }

  private end(bytes: number): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    this.maybeResume();
    this.maybeFinishDisconnect();
  }

  private maybeFinishDisconnect(): void {
    if (this.disconnecting && this.inflight === 0 && this.mode !== Mode.Closed) {
      this.uncork();
      this.finish();
    }
  }

  /**
   * Ends the session politely (FIN after the last reply), but does not wait
   * for the client's FIN forever: a client that keeps sending after DISC or
   * ABORT, into a socket we no longer read, would otherwise hold it open.
   */
  private finish(): void {
    this.socket.end();
    const sock = this.socket;
    setTimeout(() => {
      if (!sock.destroyed) this.close(this.closeReason ?? 'client-disconnect');
    }, FINISH_GRACE_MS).unref();
  }

  private replyOk(cookieHi: number, cookieLo: number): void {
    const b = smallBuffer(16);
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
    writeChunkHeader(b, 0, REPLY_FLAG_DONE, REPLY_TYPE.ERROR, cookieHi, cookieLo, 6 + msg.length);
    b.writeUInt32BE(errno, 20);
    b.writeUInt16BE(msg.length, 24);
    msg.copy(b, 26);
    this.send(b);
  }

  // ---- output batching and flow control ----------------------------------

  /** Queues b in the current cork batch; `written` runs once the socket is done with it. */
  private send(b: Buffer, written?: (err?: Error | null) => void): void {
    if (this.mode === Mode.Closed) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      setImmediate(this.uncorkNow);
    }
    if (!this.socket.write(b, written) || this.socket.writableLength > this.limits.maxQueuedReplyBytes) this.pauseInput();
  }

  private readonly uncorkNow = (): void => this.uncork();

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
    if (
      this.inflight < this.limits.maxInflight &&
      this.inflightBytes < this.limits.maxInflightBytes &&
      this.socket.writableLength <= this.limits.maxQueuedReplyBytes / 2
    ) {
      this.paused = false;
      const held = this.held;
      if (held) {
        this.held = null;
        this.process(held, this.heldPos);
      }
      if (!this.paused && (this.mode as Mode) !== Mode.Closed) this.socket.resume();
    }
  }
}

/** Returns a large reply buffer to the pool once the socket has written it (not on error: it may still be queued). */
function recycleOnWrite(buf: Buffer): (err?: Error | null) => void {
  return (err) => {
    if (!err) releaseLarge(buf);
  };
}

/** Two export names address the same unit ("" and "0/0" are one). */
function sameExport(a: string, b: string): boolean {
  const x = parseExportName(a);
  const y = parseExportName(b);
  return x !== null && y !== null && x.target === y.target && x.lun === y.lun;
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
