/**
 * The handshake: greeting, client flags, options (LIST, INFO/GO, EXPORT_NAME,
 * structured replies, meta contexts, STARTTLS), until the session enters
 * transmission with one unit.
 */
import tls from 'node:tls';
import { openUnit, type UnitIO } from '../core/index.js';
import type { Unit } from '../namespace.js';
import {
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
  REQUEST_HEADER_SIZE,
  TFLAG,
} from './constants.js';
import { parseExportName } from './export-name.js';
import { Mode } from './framing.js';
import { NbdSession } from './session.js';

/** What a session settled on when it entered transmission, for the per-session log line. */
export interface NegotiatedSession {
  export: string;
  unit: Unit;
  option: 'GO' | 'EXPORT_NAME';
  structuredReplies: boolean;
  tls: boolean;
}

export const enum Phase {
  ClientFlags,
  Options,
  Transmission,
}

/** Context id of base:allocation when selected (ids are per connection and opaque to clients). */
export const BASE_ALLOCATION_ID = 1;
const BASE_ALLOCATION = 'base:allocation';
const TLS_HANDSHAKE_TIMEOUT_MS = 30_000;

export abstract class HandshakeSession extends NbdSession {
  protected phase = Phase.ClientFlags;
  private noZeroes = false;
  protected structured = false;
  private tlsActive = false;
  /** Export name the last SET_META_CONTEXT selected base:allocation for (null: none selected). */
  private metaExport: string | null = null;
  protected blockStatusOn = false;
  private optionCount = 0;
  private unit: Unit | null = null;
  /** The unit's I/O, once in transmission (every request goes through it). */
  protected io: UnitIO | null = null;

  /** A request header in transmission; returns how far it consumed `chunk`. */
  protected abstract onRequest(h: Buffer, hp: number, chunk: Buffer, p: number, n: number): number;
  protected abstract enteredTransmission(info: NegotiatedSession): void;

  get exportUnit(): Unit | null {
    return this.unit;
  }

  /**
   * Dispatches one header read from `h` at `hp`. Following bytes (a write's
   * payload) are in `chunk` from `p` to `n`; returns how far it consumed.
   */
  protected onHeaderAt(h: Buffer, hp: number, chunk: Buffer, p: number, n: number): number {
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

  // ---- handshake -------------------------------------------------------

  protected greet(): void {
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
    for (const u of this.backend.namespaces.list(this.hostName, 'nbd')) {
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

    const caps = openUnit(this.backend.store, unit, 'nbd').caps();
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
    // The ACK leaves before TLS takes the socket over: a TLSSocket made over a socket with writes still
    // queued waits for them with a callback that crashes the process if the TLS socket is destroyed
    // first (a client that sends garbage right after STARTTLS). A client that has not read what we
    // sent so far cannot be in step for a handshake anyway.
    this.flushReplies();
    if (raw.writableLength > 0) return this.close('tls-refused');
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
    return this.backend.namespaces.lookup(this.hostName, addr.target, addr.lun, 'nbd');
  }

  private transmissionFlags(unit: Unit): number {
    const caps = openUnit(this.backend.store, unit, 'nbd').caps();
    let f = TFLAG.HAS_FLAGS | TFLAG.SEND_FLUSH | TFLAG.SEND_FUA | TFLAG.SEND_CACHE;
    if (caps.flushCoversAllSessions) f |= TFLAG.CAN_MULTI_CONN;
    if (this.structured) f |= TFLAG.SEND_DF;
    if (caps.readOnly) f |= TFLAG.READ_ONLY;
    // A thick unit has no space to give back: TRIM is not offered (a client sending it anyway gets a successful no-op, as the spec lets a server ignore TRIM).
    else f |= (caps.thin ? TFLAG.SEND_TRIM : 0) | TFLAG.SEND_WRITE_ZEROES | TFLAG.SEND_FAST_ZERO;
    return f;
  }

  private enterTransmission(unit: Unit, name: string, option: 'GO' | 'EXPORT_NAME'): void {
    this.unit = unit;
    this.io = openUnit(this.backend.store, unit, 'nbd');
    // Block status only for the export the contexts were selected on.
    this.blockStatusOn = this.structured && this.metaExport !== null && sameExport(this.metaExport, name);
    this.phase = Phase.Transmission;
    this.flowControlled = true;
    this.expectHeader(REQUEST_HEADER_SIZE);
    this.enteredTransmission({ export: `${unit.target}/${unit.lun}`, unit, option, structuredReplies: this.structured, tls: this.tlsActive });
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
