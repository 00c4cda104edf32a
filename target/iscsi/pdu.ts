/**
 * iSCSI PDU framing (RFC 7143 §11): a 48-byte Basic Header Segment, optional
 * AHS, optional header digest, the data segment padded to 4 bytes, optional
 * data digest. The reader parses in place from socket chunks and keeps only
 * the remainder of a PDU split across chunks.
 */
import { LARGE_MIN, dataBuffer } from '../core/index.js';
import { crc32c } from './crc32c.js';

export const OP = {
  NOP_OUT: 0x00,
  SCSI_CMD: 0x01,
  TMF_REQ: 0x02,
  LOGIN_REQ: 0x03,
  TEXT_REQ: 0x04,
  DATA_OUT: 0x05,
  LOGOUT_REQ: 0x06,
  SNACK: 0x10,
  NOP_IN: 0x20,
  SCSI_RSP: 0x21,
  TMF_RSP: 0x22,
  LOGIN_RSP: 0x23,
  TEXT_RSP: 0x24,
  DATA_IN: 0x25,
  LOGOUT_RSP: 0x26,
  R2T: 0x31,
  ASYNC: 0x32,
  REJECT: 0x3f,
} as const;

export const REJECT = {
  DATA_DIGEST: 0x02,
  PROTOCOL: 0x04,
  NOT_SUPPORTED: 0x05,
  IMMEDIATE: 0x06,
  TASK_IN_PROGRESS: 0x07,
  INVALID_FIELD: 0x09,
  OUT_OF_RESOURCES: 0x0a,
  WAITING_FOR_LOGOUT: 0x0c,
} as const;

export const BHS = 48;
export const NO_TAG = 0xffffffff;
/** AHS is capped by its one-byte length in words. */
const MAX_AHS = 255 * 4;

export const pad4 = (n: number): number => (n + 3) & ~3;

export interface Pdu {
  /** The 48-byte BHS. A view that is only valid during the callback: copy what you keep. */
  bhs: Buffer;
  ahs: Buffer;
  /** The data segment without padding (a view; the caller may keep it unless `transient`). */
  data: Buffer;
  /** `data` lies in the shared socket read buffer, reused after the callback: copy it to keep it. */
  transient: boolean;
  /**
   * The pooled buffer (largeBuffer) `data` was gathered into when it spanned
   * socket reads and is large: whoever is done with `data` last may give it
   * back (releaseLarge). Left alone, the GC takes it.
   */
  own?: Buffer | undefined;
  opcode: number;
  immediate: boolean;
  /** The data digest was negotiated and did not match. */
  dataDigestBad: boolean;
}

export type FramingError = 'header-digest' | 'data-too-long';

/**
 * Incremental PDU reader. Digests and the data segment limit change at the
 * end of login, between two PDUs, which is why they are plain fields read
 * at each header.
 */
export class PduReader {
  headerDigest = false;
  dataDigest = false;
  /** Largest data segment accepted (our MaxRecvDataSegmentLength). */
  maxData: number;
  /**
   * Chunks are lent (the shared socket read buffer, core/socket-reads.ts):
   * nothing of one may be kept past feed(), so a header whose data spans
   * reads is copied, and data taken in place is marked transient.
   */
  borrowed = false;
  private readonly hdr = Buffer.alloc(BHS + MAX_AHS + 4);
  private hdrHave = 0;
  private hdrNeed = BHS;
  /** Parsing a data segment: where it goes and how much is still missing. */
  private data: Buffer | null = null;
  private dataHave = 0;
  private dataNeed = 0;
  private dsl = 0;
  private ahsLen = 0;
  private stopped = false;

  constructor(
    maxData: number,
    private readonly onPdu: (p: Pdu) => void,
    private readonly onError: (e: FramingError, detail: number) => void,
  ) {
    this.maxData = maxData;
  }

  stop(): void {
    this.stopped = true;
  }

  feed(chunk: Buffer): void {
    let pos = 0;
    const len = chunk.length;
    while (pos < len && !this.stopped) {
      if (this.data === null) {
        // Header. Whole header in this chunk and nothing staged: read it in place.
        if (this.hdrHave === 0 && len - pos >= BHS) {
          const ahs = chunk[pos + 4]! * 4;
          const need = BHS + ahs + (this.headerDigest ? 4 : 0);
          if (len - pos >= need) {
            const h = chunk.subarray(pos, pos + need);
            pos += need;
            if (!this.headerDone(h)) return;
            pos = this.takeData(chunk, pos);
            continue;
          }
        }
        const take = Math.min(this.hdrNeed - this.hdrHave, len - pos);
        chunk.copy(this.hdr, this.hdrHave, pos, pos + take);
        this.hdrHave += take;
        pos += take;
        if (this.hdrHave === BHS && this.hdrNeed === BHS) {
          this.hdrNeed = BHS + this.hdr[4]! * 4 + (this.headerDigest ? 4 : 0);
        }
        if (this.hdrHave < this.hdrNeed) continue;
        const h = this.hdr.subarray(0, this.hdrNeed);
        this.hdrHave = 0;
        this.hdrNeed = BHS;
        if (!this.headerDone(h)) return;
        pos = this.takeData(chunk, pos);
      } else {
        const take = Math.min(this.dataNeed - this.dataHave, len - pos);
        chunk.copy(this.data, this.dataHave, pos, pos + take);
        this.dataHave += take;
        pos += take;
        if (this.dataHave === this.dataNeed) {
          const d = this.data;
          this.data = null;
          this.finish(this.pendingHeader!, d, false, d.length >= LARGE_MIN ? d : undefined);
        }
      }
    }
  }

  private pendingHeader: Buffer | null = null;

  /** Checks a complete header; returns false when the connection must drop. */
  private headerDone(h: Buffer): boolean {
    this.ahsLen = h[4]! * 4;
    if (this.headerDigest) {
      const end = BHS + this.ahsLen;
      if (crc32c(h, 0, end) !== h.readUInt32LE(end)) {
        this.stopped = true;
        this.onError('header-digest', 0);
        return false;
      }
    }
    this.dsl = (h[5]! << 16) | (h[6]! << 8) | h[7]!;
    if (this.dsl > this.maxData) {
      this.stopped = true;
      this.onError('data-too-long', this.dsl);
      return false;
    }
    this.pendingHeader = h;
    return true;
  }

  /** After a header: take its data segment from the chunk in place, or start staging it. */
  private takeData(chunk: Buffer, pos: number): number {
    const h = this.pendingHeader!;
    if (this.dsl === 0) {
      this.finish(h, null, false);
      return pos;
    }
    const need = pad4(this.dsl) + (this.dataDigest ? 4 : 0);
    if (chunk.length - pos >= need) {
      this.finish(h, chunk.subarray(pos, pos + need), this.borrowed);
      return pos + need;
    }
    if (this.borrowed && h.buffer !== this.hdr.buffer) {
      // Read in place from a lent chunk, the header must outlive it.
      h.copy(this.hdr, 0);
      this.pendingHeader = this.hdr.subarray(0, h.length);
    }
    // A header read in place from Node's own chunks stays valid (fresh memory, never reused). A large segment (a
    // Data-Out burst) is gathered into a pooled buffer (fresh memory costs a fault per page on its first touch),
    // a small one into the arena (a new buffer per 4 KiB write is garbage).
    this.data = dataBuffer(need);
    this.dataNeed = need;
    this.dataHave = 0;
    const take = chunk.length - pos;
    chunk.copy(this.data, 0, pos, pos + take);
    this.dataHave = take;
    return pos + take;
  }

  private finish(h: Buffer, seg: Buffer | null, transient: boolean, own?: Buffer): void {
    let bad = false;
    let data: Buffer = EMPTY;
    if (seg !== null) {
      const padded = pad4(this.dsl);
      if (this.dataDigest) bad = crc32c(seg, 0, padded) !== seg.readUInt32LE(padded);
      data = seg.subarray(0, this.dsl);
    }
    this.pendingHeader = null;
    this.onPdu({
      bhs: h.subarray(0, BHS),
      ahs: h.subarray(BHS, BHS + this.ahsLen),
      data,
      transient,
      opcode: h[0]! & 0x3f,
      immediate: (h[0]! & 0x40) !== 0,
      dataDigestBad: bad,
      own,
    });
  }
}

const EMPTY = Buffer.alloc(0);

/**
 * Frames an outgoing PDU: returns the header (BHS + header digest) and, when
 * there is data, the padding and data digest to send after the data itself,
 * so large Data-In payloads go to the socket without being copied.
 */
export function frame(bhs: Buffer, data: Buffer | null, headerDigest: boolean, dataDigest: boolean): Buffer[] {
  const dsl = data ? data.length : 0;
  bhs[4] = 0;
  bhs[5] = (dsl >>> 16) & 0xff;
  bhs[6] = (dsl >>> 8) & 0xff;
  bhs[7] = dsl & 0xff;
  let head: Buffer = bhs;
  if (headerDigest) {
    head = Buffer.allocUnsafe(BHS + 4);
    bhs.copy(head, 0, 0, BHS);
    head.writeUInt32LE(crc32c(bhs, 0, BHS), BHS);
  }
  if (!data || dsl === 0) return [head];
  const padLen = pad4(dsl) - dsl;
  const tailLen = padLen + (dataDigest ? 4 : 0);
  if (tailLen === 0) return [head, data];
  const tail = Buffer.alloc(tailLen);
  if (dataDigest) {
    const crc = padLen ? crc32c(tail, 0, padLen, crc32c(data)) : crc32c(data);
    tail.writeUInt32LE(crc, padLen);
  }
  return [head, data, tail];
}

/** A fresh BHS for a target PDU (final bit set; callers clear it when needed). */
export function newBhs(opcode: number, itt: number): Buffer {
  // From Node's shared pool: Buffer.alloc would make an ArrayBuffer per PDU.
  const b = Buffer.allocUnsafe(BHS).fill(0);
  b[0] = opcode;
  b[1] = 0x80;
  b.writeUInt32BE(itt >>> 0, 16);
  return b;
}

/** RFC 1982 serial number arithmetic on 32 bits (CmdSN, StatSN). */
export const snLess = (a: number, b: number): boolean => ((a - b) | 0) < 0;
export const snAdd = (a: number, n: number): number => (a + n) >>> 0;

/** key=value pairs separated by NULs (RFC 7143 §6); the order is kept, duplicates are reported. */
export function parseKeys(data: Buffer): { keys: [string, string][]; bad: boolean } {
  const keys: [string, string][] = [];
  let bad = false;
  const text = data.toString('utf8');
  for (const part of text.split('\0')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    if (eq <= 0) {
      bad = true;
      continue;
    }
    keys.push([part.slice(0, eq), part.slice(eq + 1)]);
  }
  return { keys, bad };
}

export function encodeKeys(keys: readonly [string, string][]): Buffer {
  if (keys.length === 0) return EMPTY;
  return Buffer.from(keys.map(([k, v]) => `${k}=${v}\0`).join(''), 'utf8');
}
