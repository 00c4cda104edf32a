import fs from 'node:fs';
import path from 'node:path';
import { M, waitJob } from './api.js';
import { RawNbd } from './nbd-client.js';
import { CMD, FLAG } from './nbd-wire.js';
import { prng } from './prng.js';
import { startServer, type TestServer } from './server.js';
import { runOk } from './tools.js';

/** Shared by the bulk byte-exactness tests (test/interop/bulk-exact-*.test.ts). */


const PAGE = 4096;
let rand = prng(1306);
export const reseed = (seed: number): void => {
  rand = prng(seed);
};
export const int = (n: number): number => Math.floor(rand() * n);

/** 1 MiB of seeded noise; writes take slices at random offsets, so no two writes look alike. */
export const NOISE = (() => {
  const w = new Uint32Array(M / 4 + 1);
  let x = 0x2545f491;
  for (let i = 0; i < w.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    w[i] = x >>> 0;
  }
  return Buffer.from(w.buffer);
})();

/** Up to 1 MiB of seeded bytes. */
function randomBytes(n: number): Buffer {
  const at = int(NOISE.length - n + 1);
  return NOISE.subarray(at, at + n);
}

/** First offset where two buffers differ, or -1. */
export function firstDiff(a: Buffer, b: Buffer): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i += 65536) {
    const n = Math.min(65536, a.length - i);
    if (!a.subarray(i, i + n).equals(b.subarray(i, i + n))) {
      for (let j = i; j < i + n; j++) if (a[j] !== b[j]) return j;
    }
  }
  return -1;
}

export class Bench {
  private nextTarget = 0;
  private n = 0;
  constructor(readonly s: TestServer) {}

  api(method: string, url: string, body?: unknown): Promise<any> {
    return this.s.call(method, url, body);
  }

  name(prefix: string): string {
    return `${prefix}-${++this.n}`;
  }

  async volume(name: string, size: number, twoArrays = false): Promise<void> {
    const layout = twoArrays ? [{ array: 'a0', size: M }, { array: 'a1', size: size - M }] : undefined;
    await this.api('POST', '/v1/volumes', { name, size, farm: 'f', ...(layout ? { layout } : {}) });
  }

  /** Binds and maps a volume on host h; returns the binding id and the export name. */
  async map(volume: string): Promise<{ id: number; unit: string }> {
    const target = this.nextTarget++;
    const b = await this.api('POST', '/v1/bindings', { volume, host: 'h', target, lun: 0 });
    return { id: b.id as number, unit: `${target}/0` };
  }

  async unmap(b: { id: number }, unbind: boolean): Promise<void> {
    await this.api('POST', `/v1/bindings/${b.id}/unmap`);
    if (unbind) await this.api('DELETE', `/v1/bindings/${b.id}`);
  }

  async job(method: string, url: string, body: unknown): Promise<any> {
    const r = await this.s.request(method, url, body);
    if (r.status !== 202) throw new Error(`${url} -> ${r.status} ${JSON.stringify(r.body)}`);
    const j = await waitJob(this.s, r.body.job.id);
    if (j.state !== 'succeeded') throw new Error(`job ${url} ${j.state}: ${JSON.stringify(j)}`);
    return j;
  }

  /** Everything the export holds, read by nbdcopy. */
  async readBack(unit: string): Promise<Buffer> {
    const out = path.join(this.s.dataDir, `readback-${++this.n}.bin`);
    await runOk('nbdcopy', ['--', this.s.unixUri('h', unit), out]);
    const b = fs.readFileSync(out);
    fs.rmSync(out);
    return b;
  }

  async size(unit: string): Promise<number> {
    return Number((await runOk('nbdinfo', ['--size', this.s.unixUri('h', unit)])).stdout.trim());
  }

  /**
   * Writes random bytes at odd offsets and lengths, flushes (so the file
   * holds them), then TRIMs and zeroes odd ranges over them, updating the
   * model as the server promises: WRITE_ZEROES zeroes exactly its range,
   * TRIM whole 4 KiB blocks inside its range.
   */
  async scribble(unit: string, model: Buffer): Promise<void> {
    const c = await RawNbd.connect(this.s.socket('h'), unit);
    try {
      const size = model.length;
      const span = (max: number): [number, number] => {
        const len = 1 + int(max);
        const off = int(size - len + 1);
        return [off, len];
      };
      for (let i = 0; i < 16; i++) {
        const [off, len] = span(i < 3 ? M : 200 * 1024);
        const data = randomBytes(len);
        await c.write(off, data);
        data.copy(model, off);
      }
      await c.flush();
      for (let i = 0; i < 8; i++) {
        const [off, len] = span(160 * 1024);
        if (i % 2 === 0) {
          await c.command(CMD.TRIM, 0, off, len);
          const lo = Math.ceil(off / PAGE) * PAGE;
          const hi = Math.floor((off + len) / PAGE) * PAGE;
          if (hi > lo) model.fill(0, lo, hi);
        } else {
          await c.command(CMD.WRITE_ZEROES, int(2) ? FLAG.NO_HOLE : 0, off, len);
          model.fill(0, off, off + len);
        }
      }
      await c.flush();
      // The writes made through this connection read back before anything else happens.
      const got = await c.read(0, size);
      const d = firstDiff(got, model);
      if (d >= 0) throw new Error(`scribble: the volume reads differently from the model at ${d}`);
    } finally {
      c.close();
    }
  }
}


/** A server with farm f, arrays a0 and a1 and host h. */
export async function benchServer(t: { teardown: (fn: () => unknown) => void }): Promise<Bench> {
  const s = await startServer(t, { demo: false });
  const b = new Bench(s);
  await b.api('POST', '/v1/farms', { name: 'f' });
  await b.api('POST', '/v1/arrays', { name: 'a0', size: 256 * M });
  await b.api('POST', '/v1/arrays', { name: 'a1', size: 256 * M });
  await b.api('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  return b;
}

export const check = (tt: { equal: (a: unknown, b: unknown, m: string) => unknown }, got: Buffer, want: Buffer, what: string): void => {
  const d = firstDiff(got, want);
  tt.equal(d, -1, `${what}${d >= 0 ? ` (first difference at byte ${d})` : ''}`);
};
