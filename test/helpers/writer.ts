import crypto from 'node:crypto';
import { CMD, type WireClient } from './nbd-wire.js';

export const BLOCK = 64 * 1024;
const BLOCKS = 64;

/**
 * A verifying writer: one write at a time over its own NBD session, each a
 * fresh random block at a rotating offset; remembers what was acknowledged
 * (and the one write in flight when the session ended, which may or may not
 * have landed). Runs until its session fails.
 */
export class Writer {
  acked = new Map<number, Buffer>();
  pending: { offset: number; data: Buffer } | null = null;
  count = 0;
  error = '';
  private waiters: { n: number; wake: () => void }[] = [];
  done: Promise<void>;

  private readonly send: (offset: number, data: Buffer) => Promise<string | null>;

  /** Over an NBD session, or any transport given as a function that writes a block (throws when refused). */
  constructor(c: WireClient | ((offset: number, data: Buffer) => Promise<void>)) {
    this.send =
      typeof c === 'function'
        ? (offset, data) => c(offset, data).then(() => null)
        : (offset, data) => c.request(CMD.WRITE, offset, BLOCK, 0, data).then((r) => (r.error !== 0 ? `error reply ${r.error}` : null));
    this.done = this.loop();
  }

  private async loop(): Promise<void> {
    for (let i = 0; ; i++) {
      const offset = (i % BLOCKS) * BLOCK;
      const data = crypto.randomBytes(BLOCK);
      this.pending = { offset, data };
      try {
        const refused = await this.send(offset, data);
        if (refused !== null) {
          this.error = refused;
          return;
        }
      } catch (e) {
        this.error = (e as Error).message;
        return;
      }
      this.acked.set(offset, data);
      this.pending = null;
      this.count++;
      for (const w of this.waiters.filter((x) => this.count >= x.n)) w.wake();
      this.waiters = this.waiters.filter((x) => this.count < x.n);
    }
  }

  /** Resolves once `n` writes were acknowledged (or the writer stopped). */
  reached(n: number): Promise<void> {
    if (this.count >= n) return Promise.resolve();
    return Promise.race([new Promise<void>((wake) => this.waiters.push({ n, wake })), this.done]);
  }

  /** Every acknowledged block reads back from `got`; the block in flight holds either its old or its new bytes. */
  check(tt: { equal: (a: unknown, b: unknown, m: string) => unknown }, got: Buffer, what: string): void {
    let bad = 0;
    for (const [offset, data] of this.acked) {
      const now = got.subarray(offset, offset + BLOCK);
      if (now.equals(data)) continue;
      if (this.pending?.offset === offset && now.equals(this.pending.data)) continue;
      bad++;
    }
    tt.equal(bad, 0, `${what}: all ${this.acked.size} acknowledged blocks (${this.count} writes) read back`);
  }
}
