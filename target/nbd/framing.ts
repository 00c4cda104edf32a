/**
 * Input framing: parses the socket's chunks in place. Fixed-size headers are
 * read straight out of the chunk when whole (copied into a scratch buffer only
 * when split across chunks); payloads are handed over as slices when whole and
 * filled into one buffer of the exact size otherwise. Used for the handshake's
 * option headers and transmission's request headers alike.
 */
import { REQUEST_HEADER_SIZE } from './constants.js';

/** Payload left to gather above which the socket reads into the payload itself. */
const DIRECT_MIN = 64 * 1024;

export const enum Mode {
  Header,
  Fill,
  Discard,
  /** Handing the socket to TLS: nothing more is read in plaintext. */
  Upgrading,
  Closed,
}

/**
 * The parser state of one session. Subclasses say what a header means
 * (onHeaderAt) and when reading must stop (flow control).
 */
export abstract class FrameReader {
  protected mode = Mode.Header;
  protected headerSize = 4;
  private readonly scratch = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  private scratchFill = 0;
  private fillBuf: Buffer = Buffer.alloc(0);
  private filled = 0;
  private onFilled: () => void = () => undefined;
  private discardLeft = 0;
  private onDiscarded: () => void = () => undefined;
  /** The rest of a chunk held back by flow control, and where in it to resume. */
  protected held: Buffer | null = null;
  protected heldPos = 0;
  /** No further headers are read (DISC, shutdown). */
  protected disconnecting = false;
  /** Request headers parsed so far (the idle poll asks how many one socket read carried). */
  protected headers = 0;
  /** Headers are subject to the limits (transmission). */
  protected flowControlled = false;
  /**
   * Chunks are lent (the shared socket read buffer, core/socket-reads.ts): they
   * are overwritten after process() returns, so whatever is kept is copied.
   */
  protected borrowedChunks = false;

  /**
   * Dispatches one header read from `h` at `hp`. Following bytes (a write's
   * payload) are in `chunk` from `p` to `n`; returns how far it consumed.
   */
  protected abstract onHeaderAt(h: Buffer, hp: number, chunk: Buffer, p: number, n: number): number;
  /** True when the request whose (whole) header is at h[hp] would exceed the session's or the appliance's limits. */
  protected abstract overLimits(h: Buffer, hp: number): boolean;
  protected abstract pauseInput(): void;
  /** The peer sent bytes where it must not (during the TLS upgrade). */
  protected abstract protocolViolation(): void;

  /** Parses chunk[p, n). */
  protected process(chunk: Buffer, p: number, n = chunk.length): void {
    while (p < n) {
      switch (this.mode) {
        case Mode.Closed:
          return;
        case Mode.Upgrading:
          // The client spoke before reading STARTTLS's reply: it cannot be in step with us.
          this.protocolViolation();
          return;
        case Mode.Fill: {
          const k = Math.min(this.fillBuf.length - this.filled, n - p);
          // Read straight into the payload (directRead): the bytes are in place already.
          if (chunk.buffer !== this.fillBuf.buffer || chunk.byteOffset + p !== this.fillBuf.byteOffset + this.filled) {
            chunk.copy(this.fillBuf, this.filled, p, p + k);
          }
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
            if (this.flowControlled && this.overLimits(chunk, p)) return this.hold(chunk, p, n);
            this.headers++;
            p = this.onHeader(chunk, p, n);
          } else {
            const k = Math.min(need - this.scratchFill, n - p);
            chunk.copy(this.scratch, this.scratchFill, p, p + k);
            this.scratchFill += k;
            p += k;
            if (this.scratchFill === need) {
              // Refused: the whole header stays in scratch and is looked at again by resumeHeld().
              if (this.flowControlled && this.overLimits(this.scratch, 0)) return this.hold(chunk, p, n);
              this.scratchFill = 0;
              this.headers++;
              // The header came in pieces, so its payload starts in this chunk at p.
              p = this.onHeaderAt(this.scratch, 0, chunk, p, n);
            }
          }
          break;
        }
      }
    }
  }

  /** Flow control: keeps chunk[p, n) for resumeHeld() and stops reading. */
  private hold(chunk: Buffer, p: number, n: number): void {
    this.held = this.borrowedChunks ? Buffer.from(chunk.subarray(p, n)) : chunk;
    this.heldPos = this.borrowedChunks ? 0 : p;
    this.pauseInput();
  }

  /**
   * Parses what flow control held back, starting with a header left whole in
   * scratch (it may have arrived in pieces, so the held chunk can be empty).
   * Returns false when the limits still refuse it.
   */
  protected resumeHeld(): boolean {
    const held = this.held;
    if (held === null) return true;
    if (this.mode === Mode.Header && this.scratchFill === this.headerSize) {
      if (this.overLimits(this.scratch, 0)) {
        this.pauseInput();
        return false;
      }
      this.held = null;
      this.scratchFill = 0;
      this.process(held, this.onHeaderAt(this.scratch, 0, held, this.heldPos, held.length));
      return true;
    }
    this.held = null;
    this.process(held, this.heldPos);
    return true;
  }

  /** Header wholly inside `chunk` at p; returns the new read position. */
  private onHeader(chunk: Buffer, p: number, n: number): number {
    return this.onHeaderAt(chunk, p, chunk, p + this.headerSize, n);
  }

  protected expectHeader(size: number): void {
    this.mode = Mode.Header;
    this.headerSize = size;
  }

  /**
   * Where the socket's next read should land instead of the shared buffer:
   * the rest of a payload being gathered, when large (one copy fewer per
   * byte; docs/bench/findings.md, session 6). Null: the shared buffer.
   */
  protected directRead(): Buffer | null {
    if (this.mode !== Mode.Fill || !this.borrowedChunks) return null;
    const left = this.fillBuf.length - this.filled;
    return left >= DIRECT_MIN ? this.fillBuf.subarray(this.filled) : null;
  }

  protected fill(length: number, then: (buf: Buffer) => void, buf: Buffer = Buffer.allocUnsafe(length)): void {
    if (length === 0) {
      then(buf);
      return;
    }
    this.fillBuf = buf;
    this.filled = 0;
    this.mode = Mode.Fill;
    this.onFilled = () => then(buf);
  }

  protected discard(length: number, then: () => void): void {
    if (length === 0) {
      then();
      return;
    }
    this.discardLeft = length;
    this.mode = Mode.Discard;
    this.onDiscarded = then;
  }
}
