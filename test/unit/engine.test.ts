import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { BlockStore } from '../../cache/index.js';
import { ArrayFile, PiscinaEngine } from '../../disks/index.js';
import { VolumeLayout } from '../../mapper/index.js';

const M = 1024 * 1024;

async function setup(tt: { teardown: (fn: () => unknown) => void }, opts: { chunk?: number; withCache?: boolean } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-engine-'));
  const store = new BlockStore({ size: 4 * M, writebackDelayMs: 60_000 });
  const arrays: ArrayFile[] = [];
  for (let i = 1; i <= 3; i++) {
    const a = new ArrayFile(i, `a${i}`, path.join(dir, `a${i}.img`), 32 * M);
    await a.open(true);
    store.addArray(a);
    arrays.push(a);
  }
  const engine = new PiscinaEngine((id) => store.getArray(id), { chunk: opts.chunk, cache: opts.withCache ? store : undefined, progressMs: 10 });
  tt.teardown(async () => {
    await engine.close();
    await store.close();
    for (const a of arrays) await a.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { store, arrays, engine };
}

function fileBytes(a: ArrayFile, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  const fd = fs.openSync(a.path, 'r');
  fs.readSync(fd, b, 0, length, offset);
  fs.closeSync(fd);
  return b;
}

/** Writes bytes below the array object, the way a bulk worker does: edges prepared first, blocks marked after. */
async function putFile(a: ArrayFile, offset: number, data: Buffer): Promise<void> {
  await a.prepareWrite(offset, data.length);
  const fd = fs.openSync(a.path, 'r+');
  fs.writeSync(fd, data, 0, data.length, offset);
  fs.closeSync(fd);
  a.noteWrite(offset, data.length);
}

t.test('scrub writes the pattern across ranges and verifies it', async (t) => {
  const { arrays, engine } = await setup(t);
  await putFile(arrays[0]!, 0, crypto.randomBytes(3 * M));
  const pattern = Buffer.from('blockgate!');
  const progress: number[] = [];
  const r = await engine.scrub(
    [
      { arrayId: 1, offset: 4096, length: M + 100 },
      { arrayId: 2, offset: 5 * M, length: 2 * M },
    ],
    { pattern, verify: true, onProgress: (d) => progress.push(d) },
  );
  t.same(r, { bytes: 3 * M + 100, verified: true });
  // The pattern is phase-locked to the stream: byte i of the stream is pattern[i % len].
  const want = Buffer.alloc(3 * M + 100);
  for (let i = 0; i < want.length; i++) want[i] = pattern[i % pattern.length]!;
  t.same(fileBytes(arrays[0]!, 4096, M + 100), want.subarray(0, M + 100));
  t.same(fileBytes(arrays[1]!, 5 * M, 2 * M), want.subarray(M + 100));
  t.ok(progress.length > 0 && progress[progress.length - 1] === 2 * (3 * M + 100), 'progress reaches the total');
  await engine.scrub([{ arrayId: 1, offset: 0, length: M }]);
  t.same(fileBytes(arrays[0]!, 0, M), Buffer.alloc(M), 'default pattern is zeroes');
});

t.test('copy one source to many targets, verified; a smaller target is refused', async (t) => {
  const { arrays, engine } = await setup(t);
  const src = crypto.randomBytes(3 * M + 12345);
  await putFile(arrays[0]!, M, src);
  const r = await engine.copy(
    [{ arrayId: 1, offset: M, length: src.length }],
    [
      [{ arrayId: 2, offset: 0, length: src.length }],
      [
        { arrayId: 3, offset: 10 * M, length: M },
        { arrayId: 2, offset: 20 * M, length: 4 * M },
      ],
    ],
    { verify: true },
  );
  t.same(r, { bytes: src.length, verified: true });
  t.same(fileBytes(arrays[1]!, 0, src.length), src);
  t.same(Buffer.concat([fileBytes(arrays[2]!, 10 * M, M), fileBytes(arrays[1]!, 20 * M, src.length - M)]), src, 'a meta target gets the stream in order');
  await t.rejects(engine.copy([{ arrayId: 1, offset: 0, length: 2 * M }], [[{ arrayId: 2, offset: 0, length: M }]]), { code: 'CONFLICT' });
});

t.test('checksum is the SHA-256 of the stream', async (t) => {
  const { arrays, engine } = await setup(t);
  const data = crypto.randomBytes(2 * M + 7);
  await putFile(arrays[2]!, 3 * M, data);
  const h = await engine.checksum([
    { arrayId: 3, offset: 3 * M, length: M },
    { arrayId: 3, offset: 4 * M, length: M + 7 },
  ]);
  t.equal(h, crypto.createHash('sha256').update(data).digest('hex'));
});

t.test('an AbortSignal cancels a running job', async (t) => {
  const { engine } = await setup(t, { chunk: 64 * 1024 });
  const ac = new AbortController();
  let seen = 0;
  const job = engine.scrub([{ arrayId: 1, offset: 0, length: 32 * M }], {
    verify: true,
    signal: ac.signal,
    onProgress: (d) => {
      seen = d;
      if (d > 0) ac.abort();
    },
  });
  await t.rejects(job, { code: 'CONFLICT', details: { cancelled: true } });
  t.ok(seen < 2 * 32 * M, 'stopped before the end');
  const pre = new AbortController();
  pre.abort();
  await t.rejects(engine.checksum([{ arrayId: 1, offset: 0, length: M }], { signal: pre.signal }), { code: 'CONFLICT' });
});

t.test('with cache hooks: sources are written back first, targets invalidated after', async (t) => {
  const { store, arrays, engine } = await setup(t, { withCache: true });
  const v1 = { id: 1, layout: new VolumeLayout([{ arrayId: 1, offset: 0, length: 4 * M }]), cachePolicy: 'write-back' as const };
  const v2 = { id: 2, layout: new VolumeLayout([{ arrayId: 2, offset: 0, length: 4 * M }]), cachePolicy: 'write-back' as const };
  const data = crypto.randomBytes(M);
  await store.write(v1, 0, data, false);
  // v2 has an old cached copy of what the copy will overwrite.
  const stale = Buffer.alloc(M);
  await store.read(v2, 0, M, stale);
  await engine.copy([{ arrayId: 1, offset: 0, length: M }], [[{ arrayId: 2, offset: 0, length: M }]], { verify: true });
  t.same(fileBytes(arrays[1]!, 0, M), data, 'the dirty source bytes were copied, not the stale file');
  const got = Buffer.alloc(M);
  await store.read(v2, 0, M, got);
  t.same(got, data, 'the target volume reads the new bytes, not its stale cached copy');
  await engine.scrub([{ arrayId: 2, offset: 0, length: M }], { verify: true });
  await store.read(v2, 0, M, got);
  t.same(got, Buffer.alloc(M), 'scrubbed bytes are what the volume reads');
});
