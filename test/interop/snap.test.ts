import t from 'tap';
import { M, ioOk, qemuIo, waitJob } from '../helpers/api.js';
import { startServer } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';
import { startManager } from '../helpers/manager.js';

requireTools('qemu-io', 'nbdinfo');

t.test('snap while mapped: earlier writes are in the snapshot, later ones are not', async (t) => {
  const s = await startServer(t, { demo: false });
  const api = s.call.bind(s);
  await api('POST', '/v1/farms', { name: 'f' });
  await api('POST', '/v1/arrays', { name: 'a0', size: '256M' });
  await api('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  await api('POST', '/v1/volumes', { name: 'v', size: '64M', farm: 'f' });
  await api('POST', '/v1/bindings', { volume: 'v', host: 'h', target: 0, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0xaa 0 64M')), 'pattern A acknowledged (no flush asked)');
  const r = await s.request('POST', '/v1/volumes/v/snap', { snapshot: 'v-snap' });
  t.equal(r.status, 202);
  t.equal(r.body.snapshot.snapshotOf, 'v');
  // Pattern B over the whole volume while the background copy runs.
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0xbb 0 64M')));
  t.equal((await waitJob(s, r.body.job.id)).state, 'succeeded');
  t.equal((await api('GET', '/v1/volumes/v')).state, 'mapped', 'the source stayed mapped');
  await api('POST', '/v1/bindings', { volume: 'v-snap', host: 'h', target: 1, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '1/0', 'read -P 0xaa 0 64M')), 'the snapshot holds pattern A');
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'read -P 0xbb 0 64M')), 'the source holds pattern B');
  const bad = await s.request('POST', '/v1/volumes/v-snap/snap', { snapshot: 'x' });
  t.equal(bad.status, 202, 'a mapped snapshot can itself be snapped');
  await waitJob(s, bad.body.job.id);
});

t.test('copy-on-write saves old bytes before a write overtakes the background copy', async (t) => {
  const { m, store } = await startManager(t);
  m.createFarm('f');
  await m.createArray('a0', 64 * M);
  await m.createHost({ name: 'h', farm: 'f' });
  const v = m.createVolume({ name: 'v', size: 8 * M, farm: 'f', configure: true });
  m.bind({ volume: 'v', host: 'h', target: 0, lun: 0, map: true });
  const h = m.volumeHandle(v);
  await store.write(h, 0, Buffer.alloc(8 * M, 1), false);
  const { job } = await m.bulk.snap('v', 's');
  // The last region is copied last by the job: this write must save it first.
  await store.write(h, 7 * M, Buffer.alloc(M, 2), false);
  t.equal((await m.jobs.wait(job.id as number)).state, 'succeeded');
  const got = Buffer.alloc(8 * M);
  await store.read(m.volumeHandle(m.volume('s')), 0, 8 * M, got);
  t.ok(got.every((x) => x === 1), 'snapshot is the point in time');
  const src = Buffer.alloc(M);
  await store.read(h, 7 * M, M, src);
  t.ok(src.every((x) => x === 2), 'the source has the new write');
});
