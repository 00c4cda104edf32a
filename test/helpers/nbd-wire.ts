import net from 'node:net';
import type { Duplex } from 'node:stream';
import { infoRequest, request as frame } from './nbd-frames.js';

/**
 * A deliberately small NBD client for wire-level tests: it speaks exactly the
 * frames a test asks for (including wrong ones) and decodes what comes back.
 * Real clients (libnbd, qemu) cover the well-behaved paths elsewhere.
 */

export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10 } as const;
export const REP = { ACK: 1, SERVER: 2, INFO: 3, META_CONTEXT: 4, ERR_UNSUP: 0x80000001, ERR_POLICY: 0x80000002, ERR_INVALID: 0x80000003, ERR_TLS_REQD: 0x80000005, ERR_UNKNOWN: 0x80000006, ERR_TOO_BIG: 0x80000009 } as const;
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
export const FLAG = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 } as const;
export const ERR = { EPERM: 1, EIO: 5, EINVAL: 22, ENOSPC: 28, ENOTSUP: 95 } as const;
export const TFLAG = { READ_ONLY: 2, SEND_TRIM: 0x20, SEND_WRITE_ZEROES: 0x40, CAN_MULTI_CONN: 0x100, SEND_FAST_ZERO: 0x800 } as const;

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Chunk {
  type: number;
  flags: number;
  data: Buffer;
}

/** A complete reply to one request: simple (error, data) or the structured chunks. */
export interface Reply {
  cookie: bigint;
  error: number;
  data?: Buffer;
  chunks: Chunk[];
}

/** How long any read of a wire-level test waits for the server before it fails. */
export const READ_DEADLINE_MS = 30_000;

/** Byte reader over a socket: waits for exactly n bytes, within a deadline. */
class Reader {
  private bufs: Buffer[] = [];
  private have = 0;
  private waiter: (() => void) | null = null;
  ended = false;

  private readonly detachers: (() => void)[] = [];

  constructor(s: Duplex) {
    const data = (d: Buffer): void => {
      this.bufs.push(d);
      this.have += d.length;
      this.wake();
    };
    const end = (): void => {
      this.ended = true;
      this.wake();
    };
    s.on('data', data);
    for (const ev of ['end', 'close', 'error']) s.on(ev, end);
    this.detachers.push(() => {
      s.off('data', data);
      for (const ev of ['end', 'close', 'error']) s.off(ev, end);
    });
  }

  /** Stops reading the socket (it is handed to TLS); nothing may be left unread. */
  detach(): void {
    if (this.have !== 0) throw new Error(`${this.have} unread bytes before the TLS handshake`);
    for (const d of this.detachers) d();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** Exactly n bytes, or an error when the peer closes or `ms` pass first: a test never hangs on a silent server. */
  async read(n: number, ms = READ_DEADLINE_MS): Promise<Buffer> {
    const deadline = Date.now() + ms;
    while (this.have < n) {
      if (this.ended) throw new Error(`connection closed (wanted ${n} bytes, have ${this.have})`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no answer within ${ms} ms (wanted ${n} bytes, have ${this.have})`);
      await new Promise<void>((r) => {
        const timer = setTimeout(r, left);
        this.waiter = () => {
          clearTimeout(timer);
          r();
        };
      });
    }
    const all = this.bufs.length === 1 ? this.bufs[0]! : Buffer.concat(this.bufs);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.bufs = rest.length ? [rest] : [];
    this.have = rest.length;
    return Buffer.from(out);
  }

  /** Resolves true when the peer closes within `ms`. */
  async closed(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.ended) {
      if (Date.now() > deadline) return false;
      await new Promise<void>((r) => {
        const timer = setTimeout(r, 50);
        this.waiter = () => {
          clearTimeout(timer);
          r();
        };
      });
    }
    return true;
  }
}

export class WireClient {
  sock: Duplex;
  reader: Reader;
  structured = false;
  size = 0n;
  flags = 0;
  private nextCookie = 1n;

  private constructor(sock: Duplex) {
    this.sock = sock;
    this.reader = new Reader(sock);
  }

  /** A client over an already connected stream (a TLS socket after STARTTLS). */
  static over(sock: Duplex): WireClient {
    return new WireClient(sock);
  }

  /** Hands the socket over (to tls.connect after STARTTLS's ACK): this client stops reading it. */
  release(): Duplex {
    this.reader.detach();
    return this.sock;
  }

  static connect(where: { path: string } | { host: string; port: number }): Promise<WireClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(where as net.NetConnectOpts);
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        s.on('error', () => undefined);
        resolve(new WireClient(s));
      });
    });
  }

  /** Reads the greeting and sends client flags (fixed newstyle + no zeroes). */
  async greet(clientFlags = 3): Promise<number> {
    const g = await this.reader.read(18);
    if (g.toString('latin1', 0, 8) !== 'NBDMAGIC') throw new Error('bad greeting');
    const b = Buffer.alloc(4);
    b.writeUInt32BE(clientFlags);
    this.sock.write(b);
    return g.readUInt16BE(16);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT', 0, 'latin1');
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.sock.write(Buffer.concat([h, data]));
  }

  async optionReply(): Promise<OptionReply> {
    const h = await this.reader.read(20);
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.reader.read(len) };
  }

  /** Sends an option and collects replies up to the final one (ACK or an error). */
  async option(option: number, data?: Buffer): Promise<OptionReply[]> {
    this.sendOption(option, data);
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.optionReply();
      out.push(r);
      if (r.type === REP.ACK || r.type >= 0x80000000) return out;
    }
  }

  async structuredReplies(): Promise<void> {
    const r = await this.option(OPT.STRUCTURED_REPLY);
    if (r[0]!.type !== REP.ACK) throw new Error('no structured replies');
    this.structured = true;
  }

  static infoRequest(name: string, infos: number[] = []): Buffer {
    return infoRequest(name, infos);
  }

  static metaRequest(name: string, queries: string[]): Buffer {
    const parts = [Buffer.alloc(4), Buffer.from(name), Buffer.alloc(4)];
    parts[0]!.writeUInt32BE(parts[1]!.length);
    parts[2]!.writeUInt32BE(queries.length);
    for (const q of queries) {
      const l = Buffer.alloc(4);
      l.writeUInt32BE(Buffer.byteLength(q));
      parts.push(l, Buffer.from(q));
    }
    return Buffer.concat(parts);
  }

  /** GO; resolves with the replies, having entered transmission on ACK. */
  async go(name: string, infos: number[] = [3]): Promise<OptionReply[]> {
    const r = await this.option(OPT.GO, WireClient.infoRequest(name, infos));
    for (const x of r) {
      if (x.type === REP.INFO && x.data.readUInt16BE(0) === 0) {
        this.size = x.data.readBigUInt64BE(2);
        this.flags = x.data.readUInt16BE(10);
      }
    }
    return r;
  }

  /** Full negotiation the way libnbd does it: SR, base:allocation, GO. */
  async open(name = '0/0', opts: { structured?: boolean; meta?: boolean } = {}): Promise<this> {
    await this.greet();
    if (opts.structured !== false) {
      await this.structuredReplies();
      if (opts.meta !== false) await this.option(OPT.SET_META_CONTEXT, WireClient.metaRequest(name, ['base:allocation']));
    }
    const r = await this.go(name);
    if (r[r.length - 1]!.type !== REP.ACK) throw new Error(`GO failed: ${r[r.length - 1]!.data.toString()}`);
    return this;
  }

  /** Sends one request without waiting; returns its cookie. */
  send(type: number, offset: bigint | number, length: number, flags = 0, payload?: Buffer): bigint {
    const cookie = this.nextCookie++;
    this.sock.write(frame(type, cookie, offset, length, flags, payload));
    return cookie;
  }

  /**
   * Reads one complete reply. Simple replies to READ need the length, so
   * `readLengths` maps cookies of outstanding simple-reply READs to lengths.
   */
  async reply(readLengths: Map<bigint, number> = new Map()): Promise<Reply> {
    const magic = (await this.reader.read(4)).readUInt32BE(0);
    if (magic === 0x67446698) {
      const h = await this.reader.read(12);
      const error = h.readUInt32BE(0);
      const cookie = h.readBigUInt64BE(4);
      const len = readLengths.get(cookie);
      const out: Reply = { cookie, error, chunks: [] };
      if (len !== undefined && error === 0) out.data = await this.reader.read(len);
      return out;
    }
    if (magic !== 0x668e33ef) throw new Error(`bad reply magic ${magic.toString(16)}`);
    // Structured: chunks of one cookie until DONE (tests keep one multi-chunk reply outstanding at a time).
    let cookie = 0n;
    const chunks: Chunk[] = [];
    let first = true;
    for (;;) {
      if (!first) {
        const m = (await this.reader.read(4)).readUInt32BE(0);
        if (m !== 0x668e33ef) throw new Error(`bad chunk magic ${m.toString(16)}`);
      }
      first = false;
      const h = await this.reader.read(16);
      const flags = h.readUInt16BE(0);
      const type = h.readUInt16BE(2);
      cookie = h.readBigUInt64BE(4);
      const data = await this.reader.read(h.readUInt32BE(12));
      chunks.push({ type, flags, data });
      if (flags & 1) break;
    }
    const err = chunks.find((c) => c.type & 0x8000);
    return { cookie, error: err ? err.data.readUInt32BE(0) : 0, chunks };
  }

  /** One request, one reply. */
  async request(type: number, offset: bigint | number, length: number, flags = 0, payload?: Buffer): Promise<Reply> {
    const c = this.send(type, offset, length, flags, payload);
    const r = await this.reply(type === CMD.READ ? new Map([[c, length]]) : new Map());
    if (r.cookie !== c) throw new Error(`reply for cookie ${r.cookie}, expected ${c}`);
    return r;
  }

  /** Assembles a structured READ reply into bytes (holes as zeroes). */
  static readBytes(r: Reply, offset: number, length: number): Buffer {
    if (r.data) return r.data;
    const out = Buffer.alloc(length);
    for (const c of r.chunks) {
      if (c.type === 1) c.data.copy(out, Number(c.data.readBigUInt64BE(0)) - offset, 8);
    }
    return out;
  }

  /** Block status extents of the first BLOCK_STATUS chunk. */
  static extents(r: Reply): { length: number; flags: number }[] {
    const c = r.chunks.find((x) => x.type === 5);
    if (!c) throw new Error('no block status chunk');
    const out = [];
    for (let p = 4; p < c.data.length; p += 8) out.push({ length: c.data.readUInt32BE(p), flags: c.data.readUInt32BE(p + 4) });
    return out;
  }

  closed(ms = 5000): Promise<boolean> {
    return this.reader.closed(ms);
  }

  destroy(): void {
    this.sock.destroy();
  }
}
