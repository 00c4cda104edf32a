import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { startServer } from '../helpers/server.js';

t.test('images are registered only from where images live', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-img-'));
  const other = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-img-other-'));
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-img-root-'));
  t.teardown(() => {
    for (const d of [dir, other, root]) fs.rmSync(d, { recursive: true, force: true });
  });
  // A real appliance keeps its token in the data directory.
  fs.writeFileSync(path.join(dir, 'api-token'), 'not-for-hosts\n', { mode: 0o600 });
  const b = await startServer(t, { dataDir: other, demo: false });
  await b.call('POST', '/v1/arrays', { name: 'theirs', size: '4M' });
  const s = await startServer(t, { dataDir: dir, args: ['--image-root', root] });

  const images = path.join(dir, 'images');
  t.ok(fs.statSync(images).isDirectory(), 'the server creates DATA/images');
  fs.writeFileSync(path.join(images, 'good.img'), crypto.randomBytes(64 * 1024));
  fs.writeFileSync(path.join(root, 'rooted.img'), crypto.randomBytes(64 * 1024));
  fs.writeFileSync(path.join(path.dirname(dir), `${path.basename(dir)}-outside.img`), 'x');
  t.teardown(() => fs.rmSync(path.join(path.dirname(dir), `${path.basename(dir)}-outside.img`), { force: true }));
  fs.symlinkSync('../api-token', path.join(images, 'token-link.img'));
  fs.symlinkSync(`../../${path.basename(dir)}-outside.img`, path.join(images, 'outside-link.img'));
  fs.symlinkSync('../arrays/array0.img', path.join(images, 'array-link.img'));
  fs.symlinkSync(path.join(other, 'arrays', 'theirs.img'), path.join(root, 'theirs-link.img'));
  fs.linkSync(path.join(dir, 'arrays', 'array0.img'), path.join(images, 'array-hardlink.img'));
  fs.mkdirSync(path.join(images, 'sub.img'));

  const refused: [string, RegExp][] = [
    ['api-token', /image/],
    ['blockgate.db', /image/],
    ['blockgate.config.json', /image/],
    ['run.json', /image/],
    ['arrays/array0.img', /image/],
    ['arrays/array0.img.alloc', /image/],
    ['images/../api-token', /image/],
    [`../${path.basename(dir)}-outside.img`, /image/],
    ['/etc/hostname', /image/],
    ['images/token-link.img', /image/],
    ['images/outside-link.img', /outside the image directories/],
    ['images/array-link.img', /image/],
    ['images/array-hardlink.img', /array/],
    ['images/sub.img', /regular file/],
    ['images/missing.img', /does not exist/],
    [path.join(other, 'arrays', 'theirs.img'), /image/],
    [path.join(root, 'theirs-link.img'), /array/],
  ];
  for (const [p, msg] of refused) {
    const r = await s.request('POST', '/v1/images', { name: `x${refused.findIndex((x) => x[0] === p)}`, path: p });
    t.equal(r.status, 400, `${p} is refused: ${JSON.stringify(r.body)}`);
    t.equal(r.body?.error?.code, 'BAD_REQUEST');
    t.match(r.body?.error?.message, msg, `${p}: clear message`);
  }
  t.same((await s.call('GET', '/v1/images')).images, [], 'nothing was registered');

  const ok = await s.request('POST', '/v1/images', { name: 'good', path: 'images/good.img' });
  t.equal(ok.status, 201, JSON.stringify(ok.body));
  const rooted = await s.request('POST', '/v1/images', { name: 'rooted', path: path.join(root, 'rooted.img') });
  t.equal(rooted.status, 201, `a file under an admin-configured root: ${JSON.stringify(rooted.body)}`);
});
