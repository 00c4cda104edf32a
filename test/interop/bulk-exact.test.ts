import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { M, waitJob } from '../helpers/api.js';
import { RawNbd } from '../helpers/nbd-client.js';
import { CMD, FLAG } from '../helpers/nbd-wire.js';
import { prng } from '../helpers/prng.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { requireTools, runOk } from '../helpers/tools.js';

/**
 * Bulk paths are byte-exact (issue 13, item 6): for many seeded shapes
 * (bytes written at offsets and lengths that are not multiples of 4 KiB or
 * of the cache block, holes left by TRIM and WRITE_ZEROES over bytes the
 * file still holds, images whose size is not a multiple of 4 KiB, targets
 * larger than their source, volumes spanning two arrays), what a host reads
 * back with a stock client after copy, copy-image, image capture, snap,
 * scrub and resize is exactly what a model of the acknowledged writes says.
 */

requireTools('nbdcopy', 'nbdinfo');

const PAGE = 4096;
const rand = prng(1306);
const int = (n: number): number => Math.floor(rand() * n);

function randomBytes(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = (int(0x7fffffff) | 1) >>> 0;
  for (let i = 0; i + 4 <= n; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeInt32LE(x | 0, i);
  }
  for (let i = n - (n % 4); i < n; i++) b[i] = int(256);
  return b;
}

/** First offset where two buffers differ, or -1. */
function firstDiff(a: Buffer, b: Buffer): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i += 65536) {
    const n = Math.min(65536, a.length - i);
    if (!a.subarray(i, i + n).equals(b.subarray(i, i + n))) {
      for (let j = i; j < i + n; j++) if (a[j] !== b[j]) return j;
    }
  }
  return -1;
}

class Bench {
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
      for (let i = 0; i < 24; i++) {
        const [off, len] = span(i < 4 ? size : 200 * 1024);
        const data = randomBytes(len);
        await c.write(off, data);
        data.copy(model, off);
      }
      await c.flush();
      for (let i = 0; i < 10; i++) {
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

t.test('bulk paths are byte-exact over many shapes', async (t) => {
  const s = await startServer(t, { demo: false });
  const b = new Bench(s);
  await b.api('POST', '/v1/farms', { name: 'f' });
  await b.api('POST', '/v1/arrays', { name: 'a0', size: 256 * M });
  await b.api('POST', '/v1/arrays', { name: 'a1', size: 256 * M });
  await b.api('POST', '/v1/hosts', { name: 'h', farm: 'f' });

  const check = (tt: { equal: (a: unknown, b: unknown, m: string) => unknown }, got: Buffer, want: Buffer, what: string): void => {
    const d = firstDiff(got, want);
    tt.equal(d, -1, `${what}${d >= 0 ? ` (first difference at byte ${d})` : ''}`);
  };

  await t.test('copy: source onto targets of equal and larger size', async (t) => {
    for (let k = 0; k < 3; k++) {
      const size = (2 + int(2)) * M;
      const src = b.name('src');
      const dst = b.name('dst');
      await b.volume(src, size, k === 1);
      const dstSize = size + (k === 0 ? 0 : M);
      await b.volume(dst, dstSize, k === 2);
      const srcModel = Buffer.alloc(size);
      const dstModel = Buffer.alloc(dstSize);
      const sb = await b.map(src);
      const db = await b.map(dst);
      await b.scribble(sb.unit, srcModel);
      await b.scribble(db.unit, dstModel);
      await b.unmap(sb, true);
      await b.unmap(db, true);
      await b.job('POST', `/v1/volumes/${src}/copy`, { targets: [dst] });
      srcModel.copy(dstModel, 0);
      const back = await b.map(dst);
      check(t, await b.readBack(back.unit), dstModel, `shape ${k}: the target reads as the source, and its own tail beyond it`);
    }
  });

  await t.test('copy-image: images whose size is not a multiple of 4 KiB', async (t) => {
    fs.mkdirSync(path.join(s.dataDir, 'images'), { recursive: true });
    for (let k = 0; k < 3; k++) {
      const imgSize = M + 1 + int(2 * M - 2);
      const img = randomBytes(imgSize);
      const name = b.name('img');
      fs.writeFileSync(path.join(s.dataDir, 'images', `${name}.raw`), img);
      await b.api('POST', '/v1/images', { name, path: `images/${name}.raw` });
      const vol = b.name('iv');
      const size = Math.ceil(imgSize / M) * M + (k % 2) * M;
      await b.volume(vol, size, k === 2);
      await b.job('POST', `/v1/volumes/${vol}/copy-image`, { image: name });
      const want = Buffer.alloc(size);
      img.copy(want, 0);
      const back = await b.map(vol);
      check(t, await b.readBack(back.unit), want, `shape ${k}: ${imgSize}-byte image reads back whole, tail included`);
    }
  });

  await t.test('image capture, then copy of the captured image', async (t) => {
    for (let k = 0; k < 2; k++) {
      const size = (2 + k) * M;
      const vol = b.name('cv');
      await b.volume(vol, size, k === 1);
      const model = Buffer.alloc(size);
      const vb = await b.map(vol);
      await b.scribble(vb.unit, model);
      await b.unmap(vb, false);
      const name = b.name('cap');
      await b.job('POST', '/v1/images', { name, fromVolume: vol });
      const img = (await b.api('GET', '/v1/images')).images.find((i: any) => i.name === name);
      check(t, fs.readFileSync(img.path), model, `shape ${k}: the image file holds what hosts read, holes as zeroes`);
      const copy = b.name('cc');
      await b.volume(copy, size);
      await b.job('POST', `/v1/volumes/${copy}/copy-image`, { image: name });
      const back = await b.map(copy);
      check(t, await b.readBack(back.unit), model, `shape ${k}: a volume made from the captured image reads the same`);
    }
  });

  await t.test('snap of a mapped volume', async (t) => {
    for (let k = 0; k < 2; k++) {
      const size = (2 + k) * M;
      const vol = b.name('sv');
      await b.volume(vol, size, k === 1);
      const model = Buffer.alloc(size);
      const vb = await b.map(vol);
      await b.scribble(vb.unit, model);
      const snap = b.name('snap');
      await b.job('POST', `/v1/volumes/${vol}/snap`, { snapshot: snap });
      const back = await b.map(snap);
      check(t, await b.readBack(back.unit), model, `shape ${k}: the snapshot reads as the source did`);
      check(t, await b.readBack(vb.unit), model, `shape ${k}: the source is unchanged`);
    }
  });

  await t.test('scrub over written bytes and holes', async (t) => {
    for (let k = 0; k < 2; k++) {
      const size = (2 + k) * M;
      const vol = b.name('xv');
      await b.volume(vol, size, k === 1);
      const model = Buffer.alloc(size);
      const vb = await b.map(vol);
      await b.scribble(vb.unit, model);
      await b.unmap(vb, true);
      const pattern = 1 + int(255);
      await b.job('POST', `/v1/volumes/${vol}/scrub`, { pattern });
      const back = await b.map(vol);
      check(t, await b.readBack(back.unit), Buffer.alloc(size, pattern), `shape ${k}: every byte reads as the pattern ${pattern}`);
    }
  });

  await t.test('resize of a mapped volume', async (t) => {
    for (let k = 0; k < 2; k++) {
      const size = (2 + k) * M;
      const vol = b.name('rv');
      await b.volume(vol, size, k === 1);
      const model = Buffer.alloc(size);
      const vb = await b.map(vol);
      await b.scribble(vb.unit, model);
      const grown = size + (1 + k) * M;
      await b.api('POST', `/v1/volumes/${vol}/resize`, { size: grown });
      t.equal(await b.size(vb.unit), grown, `shape ${k}: a new connection sees the new size`);
      const want = Buffer.alloc(grown);
      model.copy(want, 0);
      check(t, await b.readBack(vb.unit), want, `shape ${k}: old bytes kept, new space reads as zeroes`);
    }
  });
});
