import t from 'tap';
import { M } from '../helpers/api.js';
import { Bench, benchServer, check, int, reseed } from '../helpers/bulk-shapes.js';
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

t.test('snap, scrub and resize are byte-exact over many shapes', async (t) => {
  reseed(1307);
  const b: Bench = await benchServer(t);
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
