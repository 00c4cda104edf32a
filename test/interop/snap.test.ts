import t from 'tap';
import { M, ioOk, qemuIo, waitJob } from '../helpers/api.js';
import { startServer } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';
import { startManager } from '../helpers/manager.js';

requireTools('qemu-io', 'nbdinfo');

t.test('snap while mapped: earlier writes are in the snapshot, later ones are not', async (t) => {
  // The background copy is held to 512 KiB/s (it copies in order, 1 MiB at a time), so the host's
  // writes to the second half land before it gets there and only the copy-on-write hook keeps the point in time.
  const s = await startServer(t, { demo: false, args: ['--bulk-rate', '512K'] });
  const api = s.call.bind(s);
  await api('POST', '/v1/farms', { name: 'f' });
  await api('POST', '/v1/arrays', { name: 'a0', size: '256M' });
  await api('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  await api('POST', '/v1/volumes', { name: 'v', size: '16M', farm: 'f' });
  await api('POST', '/v1/bindings', { volume: 'v', host: 'h', target: 0, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0xaa 0 16M')), 'pattern A acknowledged (no flush asked)');
  const r = await s.request('POST', '/v1/volumes/v/snap', { snapshot: 'v-snap' });
  t.equal(r.status, 202);
  t.equal(r.body.snapshot.snapshotOf, 'v');
  // Pattern B over the second half while the background copy runs.
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0xbb 8M 8M')));
  const mid = await api('GET', `/v1/jobs/${r.body.job.id}`);
  t.equal(mid.state, 'running', 'the writes overtook the background copy');
  t.ok(mid.progress.done < mid.progress.total, `copy at ${mid.progress.done} of ${mid.progress.total} when the writes were acknowledged`);
  t.equal((await waitJob(s, r.body.job.id)).state, 'succeeded');
  t.equal((await api('GET', '/v1/volumes/v')).state, 'mapped', 'the source stayed mapped');
  await api('POST', '/v1/bindings', { volume: 'v-snap', host: 'h', target: 1, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '1/0', 'read -P 0xaa 0 16M')), 'the snapshot holds pattern A');
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'read -P 0xaa 0 8M', 'read -P 0xbb 8M 8M')), 'the source holds pattern B where it was written');
});

t.test('a mapped snapshot can itself be snapped', async (t) => {
  const s = await startServer(t, { demo: false });
  const api = s.call.bind(s);
  await api('POST', '/v1/farms', { name: 'f' });
  await api('POST', '/v1/arrays', { name: 'a0', size: '64M' });
  await api('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  await api('POST', '/v1/volumes', { name: 'v', size: '8M', farm: 'f' });
  await api('POST', '/v1/bindings', { volume: 'v', host: 'h', target: 0, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0x1c 0 8M')));
  const r = await s.call('POST', '/v1/volumes/v/snap', { snapshot: 'v-snap' });
  t.equal((await waitJob(s, r.job.id)).state, 'succeeded');
  await api('POST', '/v1/bindings', { volume: 'v-snap', host: 'h', target: 1, lun: 0 });
  const again = await s.request('POST', '/v1/volumes/v-snap/snap', { snapshot: 'v-snap2' });
  t.equal(again.status, 202);
  t.equal((await waitJob(s, again.body.job.id)).state, 'succeeded');
  await api('POST', '/v1/bindings', { volume: 'v-snap2', host: 'h', target: 2, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '2/0', 'read -P 0x1c 0 8M')), 'the snapshot of the snapshot holds the data');
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
