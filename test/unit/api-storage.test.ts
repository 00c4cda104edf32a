import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { MiB, basicAppliance, startApi } from '../helpers/api-app.js';

t.test('farms and arrays', async (t) => {
  const { call, dataDir } = await startApi(t);
  let r = await call('POST', '/v1/farms', { name: 'f' });
  t.equal(r.status, 201);
  t.same(r.body, { name: 'f' });
  t.equal((await call('POST', '/v1/farms', { name: 'f' })).body.error.code, 'CONFLICT');
  t.equal((await call('POST', '/v1/farms', { name: 'bad name' })).status, 400);
  r = await call('GET', '/v1/farms');
  t.match(r.body, { farms: [{ name: 'f', createdAt: String }] });

  r = await call('POST', '/v1/arrays', { name: 'a0', size: '16M', qualityClass: 'fast' });
  t.equal(r.status, 201);
  const fileSystem = r.body.fileSystem as { size: number; available: number; usedPercent: number };
  t.ok(fileSystem.size > 0 && fileSystem.available > 0, 'the array reports its file system');
  const a0 = { name: 'a0', path: path.join(dataDir, 'arrays', 'a0.img'), size: 16 * MiB, qualityClass: 'fast', state: 'online', used: 0, free: 16 * MiB, allocated: 0, volumes: [] };
  t.same(r.body, { ...a0, fileSystem });
  t.ok(fs.existsSync(r.body.path), 'the array file exists');
  for (const size of ['0', 0, -1, '12Q']) {
    r = await call('POST', '/v1/arrays', { name: 'a1', size });
    t.equal(r.status, 400, `size ${JSON.stringify(size)}`);
    t.equal(r.body.error.code, 'BAD_REQUEST');
  }
  r = await call('GET', '/v1/arrays');
  t.match(r.body.arrays, [{ ...a0, fileSystem: { size: Number, available: Number, usedPercent: Number } }]);
  t.equal(r.body.arrays.length, 1);
});

t.test('discovery adopts array files and reports the wiring map', async (t) => {
  const { call, dataDir } = await startApi(t);
  fs.writeFileSync(path.join(dataDir, 'arrays', 'found.img'), '');
  fs.truncateSync(path.join(dataDir, 'arrays', 'found.img'), 8 * MiB);
  let r = await call('GET', '/v1/discovery');
  t.same(r.body.arrays, [], 'GET does not scan');
  r = await call('POST', '/v1/discovery');
  t.equal(r.status, 200);
  t.same(r.body.added, ['found']);
  t.match(r.body.arrays, [{ name: 'found', size: 8 * MiB, free: 8 * MiB, freeExtents: [{ offset: 0, length: 8 * MiB }] }]);
  t.match(r.body, { appliance: /^[0-9a-f]{7}$/, volumes: [], listeners: [] });
  r = await call('POST', '/v1/discovery');
  t.same(r.body.added, [], 'a second scan adopts nothing twice');
});

t.test('volumes: allocate, steps, resize, delete, with exact errors', async (t) => {
  const { call } = await startApi(t);
  await basicAppliance(call);
  let r = await call('POST', '/v1/volumes', { name: 'v', size: '0', farm: 'f' });
  t.equal(r.status, 400, 'a volume of 0 bytes is refused');
  t.match(r.body.error.message, /more than 0 bytes/);
  r = await call('POST', '/v1/volumes', { name: 'v', size: '8M', farm: 'f', configure: false });
  t.equal(r.status, 201);
  t.match(r.body, { name: 'v', farm: 'f', size: 8 * MiB, state: 'allocated', allowed: ['configure', 'break', 'resize'], extents: [{ array: 'a0', offset: 0, length: 8 * MiB }], job: null, meta: false });
  t.equal((await call('POST', '/v1/volumes', { name: 'v', size: '8M' })).status, 409);
  t.equal((await call('POST', '/v1/volumes', { name: 'big', size: '1G' })).body.error.code, 'NO_SPACE');
  t.equal((await call('POST', '/v1/volumes', { name: 'big', size: '1G' })).status, 507);

  r = await call('POST', '/v1/volumes/v/configure');
  t.equal(r.body.state, 'configured');
  r = await call('POST', '/v1/volumes/v/configure');
  t.equal(r.status, 409);
  t.match(r.body.error, { code: 'ILLEGAL_STATE', details: { state: 'configured', allowed: Array } });
  r = await call('POST', '/v1/volumes/v/resize', { size: '4M' });
  t.equal(r.status, 400, 'shrinking is refused');
  r = await call('POST', '/v1/volumes/v/resize', { size: '12M' });
  t.equal(r.status, 200);
  t.equal(r.body.size, 12 * MiB);
  t.equal((await call('GET', '/v1/volumes/v')).body.size, 12 * MiB);
  t.equal((await call('GET', '/v1/volumes/nope')).status, 404);
  t.equal((await call('DELETE', '/v1/volumes/v')).status, 409, 'only a free volume is forgotten');

  r = await call('POST', '/v1/volumes/v/break');
  t.equal(r.body.state, 'unconfigured');
  r = await call('POST', '/v1/volumes/v/deallocate');
  t.equal(r.body.state, 'free');
  r = await call('DELETE', '/v1/volumes/v');
  t.equal(r.status, 204);
  t.equal(r.body, '');
  t.same((await call('GET', '/v1/volumes')).body, { volumes: [] });
});

t.test('claim: predefined volumes by size and class; size 0 refused', async (t) => {
  const { call, m } = await startApi(t);
  await basicAppliance(call);
  await call('POST', '/v1/volumes', { name: 'pre8', size: '8M' });
  await call('POST', '/v1/volumes', { name: 'pre4', size: '4M' });
  for (const size of ['0', 0, '0M']) {
    const r = await call('POST', '/v1/volumes/claim', { farm: 'f', size });
    t.equal(r.status, 400, `claim of ${JSON.stringify(size)}`);
    t.equal(r.body.error.code, 'BAD_REQUEST');
  }
  t.equal((await call('GET', '/v1/volumes/pre4')).body.farm, null, 'a refused claim took nothing');
  // The manager refuses it too, for callers other than the API.
  t.throws(() => m.claimVolume({ farm: 'f', size: 0 }), { code: 'BAD_REQUEST' });
  let r = await call('POST', '/v1/volumes/claim', { farm: 'f', size: '3M' });
  t.equal(r.status, 201);
  t.match(r.body, { name: 'pre4', farm: 'f' });
  r = await call('POST', '/v1/volumes/claim', { farm: 'f', size: '16M' });
  t.equal(r.status, 507);
  r = await call('POST', '/v1/volumes/claim', { farm: 'nope', size: '1M' });
  t.equal(r.status, 404);
});

t.test('scrub and copy answer 202 with a job; bad targets refused', async (t) => {
  const { call, m } = await startApi(t);
  await basicAppliance(call);
  for (const n of ['src', 't1']) {
    await call('POST', '/v1/volumes', { name: n, size: '4M', farm: 'f' });
    const b = await call('POST', '/v1/bindings', { volume: n, host: 'h', target: 0, lun: 0, map: false });
    t.equal((await call('DELETE', `/v1/bindings/${b.body.id}`)).status, 204);
  }
  let r = await call('POST', '/v1/volumes/src/copy', { targets: ['t1', 't1'] });
  t.equal(r.status, 400, 'a target listed twice');
  r = await call('POST', '/v1/volumes/src/copy', { targets: [] });
  t.equal(r.status, 400);
  r = await call('POST', '/v1/volumes/src/copy', { targets: ['t1'] });
  t.equal(r.status, 202);
  t.match(r.body, { job: { id: Number, kind: 'copy', state: 'queued' }, location: `/v1/jobs/${r.body.job.id}` });
  t.equal((await m.jobs.wait(r.body.job.id)).state, 'succeeded');

  // No body at all is the defaults (pattern 0, verify).
  r = await call('POST', '/v1/volumes/t1/scrub');
  t.equal(r.status, 202, JSON.stringify(r.body));
  t.same(r.body.job.params, { volume: 't1', volumeId: r.body.job.params.volumeId, pattern: 0, verify: true });
  t.equal((await m.jobs.wait(r.body.job.id)).state, 'succeeded');
  r = await call('POST', '/v1/volumes/t1/scrub', { pattern: 256 });
  t.equal(r.status, 400);
  r = await call('GET', '/v1/volumes/t1');
  t.match(r.body, { dirty: false, scrubbedAt: String });
});

t.test('images: register a file (201) or capture a volume (202)', async (t) => {
  const { call, m, dataDir } = await startApi(t);
  await basicAppliance(call);
  fs.mkdirSync(path.join(dataDir, 'images'), { recursive: true });
  fs.writeFileSync(path.join(dataDir, 'images', 'os.img'), Buffer.alloc(MiB, 7));
  let r = await call('POST', '/v1/images', { name: 'os', path: 'images/os.img' });
  t.equal(r.status, 201);
  t.match(r.body, { name: 'os', path: path.join(dataDir, 'images', 'os.img'), size: MiB, createdAt: String });
  t.equal((await call('POST', '/v1/images', { name: 'x', path: '/etc/passwd' })).status, 400, 'outside the data directory');
  t.equal((await call('POST', '/v1/images', { name: 'x' })).status, 400, 'neither path nor fromVolume');
  t.equal((await call('POST', '/v1/images', { name: 'x', path: 'a', fromVolume: 'b' })).status, 400, 'both');
  await call('POST', '/v1/volumes', { name: 'v', size: '2M', farm: 'f' });
  r = await call('POST', '/v1/images', { name: 'cap', fromVolume: 'v' });
  t.equal(r.status, 202);
  t.equal(r.body.job.kind, 'image-capture');
  t.equal((await m.jobs.wait(r.body.job.id)).state, 'succeeded');
  r = await call('GET', '/v1/images');
  t.same(r.body.images.map((i: { name: string }) => i.name), ['os', 'cap']);
});
