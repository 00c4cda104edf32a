import net from 'node:net';
import { request as frame } from './nbd-frames.js';

/** How long the raw client waits for any answer before it fails the request (a hung server fails the test, never stalls it). */
const DEADLINE_MS = 60_000;

/**
 * A minimal raw NBD client for tests that must know exactly which requests
 * were acknowledged, and when: fixed newstyle handshake, OPT_GO, simple
 * replies, many requests in flight, replies matched by cookie.
 */
export class RawNbd {
  private sock: net.Socket | null = null;
  private buf: Buffer = Buffer.alloc(0);
  private waiting: { need: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private readonly pending = new Map<bigint, { len: number; resolve: (b: Buffer) => void; reject: (e: Error) => void }>();
  private nextCookie = 1n;
  private closed: Error | null = null;
  size = 0n;
  flags = 0;

  static async connect(socketPath: string, exportName: string): Promise<RawNbd> {
    const c = new RawNbd();
    await c.open(socketPath, exportName);
    return c;
  }

  private fail(e: Error): void {
    if (this.closed) return;
    this.closed = e;
    const w = this.waiting;
    this.waiting = null;
    w?.reject(e);
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  private async open(socketPath: string, exportName: string): Promise<void> {
    const s = net.createConnection(socketPath);
    this.sock = s;
    s.on('data', (d: Buffer) => this.onData(d));
    s.on('error', (e) => this.fail(e));
    s.on('close', () => this.fail(new Error('connection closed')));
    await new Promise<void>((res, rej) => {
      s.once('connect', res);
      s.once('error', rej);
    });
    const greet = await this.take(18);
    if (greet.toString('latin1', 0, 8) !== 'NBDMAGIC') throw new Error('bad greeting');
    const cf = Buffer.alloc(4);
    cf.writeUInt32BE(3); // FIXED_NEWSTYLE | NO_ZEROES
    s.write(cf);
    const name = Buffer.from(exportName);
    const opt = Buffer.alloc(16 + 4 + name.length + 2);
    opt.write('IHAVEOPT', 0, 'latin1');
    opt.writeUInt32BE(7, 8); // OPT_GO
    opt.writeUInt32BE(4 + name.length + 2, 12);
    opt.writeUInt32BE(name.length, 16);
    name.copy(opt, 20);
    opt.writeUInt16BE(0, 20 + name.length);
    s.write(opt);
    for (;;) {
      const h = await this.take(20);
      const type = h.readUInt32BE(12);
      const len = h.readUInt32BE(16);
      const payload = await this.take(len);
      if (type === 1) break; // ACK
      if (type >= 0x80000000) throw new Error(`OPT_GO refused: ${type.toString(16)} ${payload.toString()}`);
      if (type === 3 && payload.readUInt16BE(0) === 0) {
        this.size = payload.readBigUInt64BE(2);
        this.flags = payload.readUInt16BE(10);
      }
    }
    this.parseReplies();
  }

  /** Handshake-phase reader: resolves with exactly n bytes. */
  private take(n: number): Promise<Buffer> {
    if (this.buf.length >= n) {
      const b = this.buf.subarray(0, n);
      this.buf = this.buf.subarray(n);
      return Promise.resolve(Buffer.from(b));
    }
    if (this.closed) return Promise.reject(this.closed);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = null;
        reject(new Error(`handshake: no answer within ${DEADLINE_MS} ms`));
      }, DEADLINE_MS);
      this.waiting = {
        need: n,
        resolve: (b) => {
          clearTimeout(timer);
          resolve(b);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  private transmission = false;

  private onData(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    if (!this.transmission) {
      const w = this.waiting;
      if (w && this.buf.length >= w.need) {
        this.waiting = null;
        const b = Buffer.from(this.buf.subarray(0, w.need));
        this.buf = this.buf.subarray(w.need);
        w.resolve(b);
      }
      return;
    }
    this.parseReplies();
  }

  private parseReplies(): void {
    this.transmission = true;
    for (;;) {
      if (this.buf.length < 16) return;
      if (this.buf.readUInt32BE(0) !== 0x67446698) return this.fail(new Error('bad reply magic'));
      const err = this.buf.readUInt32BE(4);
      const cookie = this.buf.readBigUInt64BE(8);
      const p = this.pending.get(cookie);
      if (!p) return this.fail(new Error(`reply for unknown cookie ${cookie}`));
      const dataLen = err === 0 ? p.len : 0;
      if (this.buf.length < 16 + dataLen) return;
      const data = Buffer.from(this.buf.subarray(16, 16 + dataLen));
      this.buf = this.buf.subarray(16 + dataLen);
      this.pending.delete(cookie);
      if (err !== 0) p.reject(Object.assign(new Error(`NBD error ${err}`), { errno: err }));
      else p.resolve(data);
    }
  }

  private request(type: number, flags: number, offset: number, length: number, payload: Buffer | null, replyLen: number): Promise<Buffer> {
    if (this.closed) return Promise.reject(this.closed);
    const cookie = this.nextCookie++;
    const p = new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(cookie);
        reject(new Error(`request ${type} at ${offset}: no reply within ${DEADLINE_MS} ms`));
      }, DEADLINE_MS);
      this.pending.set(cookie, {
        len: replyLen,
        resolve: (b) => {
          clearTimeout(timer);
          resolve(b);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
    this.sock!.write(frame(type, cookie, offset, length, flags, payload ?? undefined));
    return p;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.request(0, 0, offset, length, null, length);
  }

  async write(offset: number, data: Buffer, fua = false): Promise<void> {
    await this.request(1, fua ? 1 : 0, offset, data.length, data, 0);
  }

  async flush(): Promise<void> {
    await this.request(3, 0, 0, 0, null, 0);
  }

  /** Any command without payload or reply data (TRIM, WRITE_ZEROES, CACHE...), with its flags. */
  async command(type: number, flags: number, offset: number, length: number): Promise<void> {
    await this.request(type, flags, offset, length, null, 0);
  }

  close(): void {
    this.fail(new Error('closed by test'));
    this.sock?.destroy();
  }
}
