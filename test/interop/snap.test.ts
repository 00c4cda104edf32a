import t, { type Test } from 'tap';
import { M, ioOk, qemuIo, waitJob } from '../helpers/api.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { requireTools, runOk } from '../helpers/tools.js';
import { startManager } from '../helpers/manager.js';

requireTools('qemu-io', 'nbdinfo');

interface MapEntry {
  offset: number;
  length: number;
  type: number;
}

/** nbdinfo --map of a unit: the runs that hold data (type bit 0 clear = allocated). */
async function dataRuns(s: TestServer, host: string, unit: string): Promise<[number, number][]> {
  const r = await runOk('nbdinfo', ['--map', '--json', s.unixUri(host, unit)], { timeoutMs: 30_000 });
  return (JSON.parse(r.stdout) as MapEntry[]).filter((e) => (e.type & 1) === 0).map((e) => [e.offset, e.length]);
}

async function appliance(t: Parameters<typeof startServer>[0], dataDir?: string): Promise<TestServer> {
  const s = await startServer(t, { demo: false, ...(dataDir ? { dataDir } : {}) });
  if (dataDir) return s;
  await s.call('POST', '/v1/farms', { name: 'f' });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '512M' });
  await s.call('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  return s;
}

/** Volume v of `size`, mapped on host h at 0/0, written by qemu-io with `writes`; returns its binding id. */
async function writtenVolume(t: Test, s: TestServer, size: string, ...writes: string[]): Promise<number> {
  await s.call('POST', '/v1/volumes', { name: 'v', size, farm: 'f' });
  const b = await s.call('POST', '/v1/bindings', { volume: 'v', host: 'h', target: 0, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', ...writes)), `v written: ${writes.join('; ')}`);
  return b.id as number;
}

t.test('copy-on-write snapshot: instant, thin, point in time kept across writes, a second snapshot, a restart', async (t) => {
  const s = await appliance(t);
  const api = s.call.bind(s);
  await writtenVolume(t, s, '64M', 'write -P 0xaa 0 64M'); // pattern A, no flush asked
  const r = await s.request('POST', '/v1/volumes/v/snap', { snapshot: 's1' });
  t.equal(r.status, 202);
  t.equal(r.body.snapshot.snapshotOf, 'v');
  t.same(r.body.snapshot.copyOnWrite, { origin: 'v', sharedBytes: 64 * M }, 'every region starts shared with the origin');
  t.equal(r.body.snapshot.allocated, 0, 'creating it copied nothing');
  const j = await waitJob(s, r.body.job.id);
  t.equal(j.state, 'succeeded');
  t.equal(j.result.copied, 0, 'no background copy');

  // Pattern B over 8 MiB of the origin: those regions copy up first.
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0xbb 8M 8M')));
  let snap = await api('GET', '/v1/volumes/s1');
  t.equal(snap.allocated, 8 * M, 'the snapshot holds only the regions copied up');
  t.equal(snap.copyOnWrite.sharedBytes, 56 * M);
  t.equal((await api('GET', '/v1/volumes/v')).state, 'mapped', 'the source stayed mapped');

  await api('POST', '/v1/bindings', { volume: 's1', host: 'h', target: 1, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '1/0', 'read -P 0xaa 0 64M')), 'the snapshot holds pattern A, shared and copied regions alike');
  t.same(await dataRuns(s, 'h', '1/0'), [[0, 64 * M]], 'nbdinfo --map of the snapshot: all data (the shared regions as the origin has them)');

  // A second snapshot of the same origin, then a write both must not see.
  const r2 = await api('POST', '/v1/volumes/v/snap', { snapshot: 's2' });
  await waitJob(s, r2.job.id);
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0xcc 0 1M', 'write -P 0xcc 12M 1M', 'flush')));
  await api('POST', '/v1/bindings', { volume: 's2', host: 'h', target: 2, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '2/0', 'read -P 0xaa 0 8M', 'read -P 0xbb 8M 8M', 'read -P 0xaa 16M 48M')), 's2 holds the origin as it was at its snap');
  t.ok(ioOk(await qemuIo(s, 'h', '1/0', 'read -P 0xaa 0 64M')), 's1 still holds pattern A');
  snap = await api('GET', '/v1/volumes/s1');
  t.equal(snap.allocated, 9 * M, 's1 copied up only the one new region');

  // A write to the snapshot itself copies its region up first, then lands there only.
  t.ok(ioOk(await qemuIo(s, 'h', '1/0', 'write -P 0xdd 32M 4K', 'flush')));
  t.ok(ioOk(await qemuIo(s, 'h', '1/0', 'read -P 0xaa 33550336 4K', 'read -P 0xdd 32M 4K', 'read -P 0xaa 33558528 1020K')), 'the rest of the region came from the origin');
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'read -P 0xaa 32M 1M')), 'the origin is untouched');

  // Restart: links and ownership maps come back.
  await s.stop();
  const s2 = await appliance(t, s.dataDir);
  t.ok(ioOk(await qemuIo(s2, 'h', '1/0', 'read -P 0xaa 0 32M', 'read -P 0xdd 32M 4K', 'read -P 0xaa 33558528 32764K')), 's1 after a restart');
  t.ok(ioOk(await qemuIo(s2, 'h', '2/0', 'read -P 0xaa 0 8M', 'read -P 0xbb 8M 8M', 'read -P 0xaa 16M 48M')), 's2 after a restart');
  t.ok(ioOk(await qemuIo(s2, 'h', '0/0', 'write -P 0xee 40M 1M', 'flush')));
  t.ok(ioOk(await qemuIo(s2, 'h', '2/0', 'read -P 0xaa 40M 1M')), 'writes after the restart still copy up');
});

t.test('an origin with snapshots: bytes-changing operations are refused until they are materialised', async (t) => {
  const s = await appliance(t);
  const api = s.call.bind(s);
  const b = { id: await writtenVolume(t, s, '16M', 'write -P 0x3c 0 16M', 'flush') };
  await waitJob(s, (await api('POST', '/v1/volumes/v/snap', { snapshot: 'vs' })).job.id);
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0x3d 0 1M', 'flush')));
  // Unmapping and unbinding change no bytes: allowed, and the snapshot keeps reading.
  await api('POST', `/v1/bindings/${b.id}/unmap`);
  await api('DELETE', `/v1/bindings/${b.id}`);
  t.equal((await api('GET', '/v1/volumes/v')).state, 'unbound');
  for (const [url, body] of [
    ['/v1/volumes/v/scrub', {}],
    ['/v1/volumes/v/break', undefined],
    ['/v1/volumes/v/resize', { size: '32M' }],
  ] as const) {
    const refused = await s.request('POST', url, body);
    t.equal(refused.status, 409, `${url} refused`);
    t.match(refused.body.error.message, /snapshot\(s\) 'vs' still read its unchanged regions; materialise/);
  }
  const m = await api('POST', '/v1/volumes/vs/materialise');
  t.equal((await waitJob(s, m.job.id)).state, 'succeeded');
  const vs = await api('GET', '/v1/volumes/vs');
  t.equal(vs.copyOnWrite, null, 'the snapshot reads only its own extents now');
  t.equal(vs.allocated, 16 * M);
  // The origin may now be scrubbed; the snapshot keeps its bytes.
  t.equal((await waitJob(s, (await api('POST', '/v1/volumes/v/scrub', { pattern: 0x77 })).job.id)).state, 'succeeded');
  await api('POST', '/v1/bindings', { volume: 'vs', host: 'h', target: 1, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '1/0', 'read -P 0x3c 0 16M')), 'the materialised snapshot holds the point in time');
});

t.test('kill -9 after writes to the origin: the snapshot keeps the point in time, the origin every flushed write', async (t) => {
  const s0 = await appliance(t);
  const api = s0.call.bind(s0);
  await writtenVolume(t, s0, '32M', 'write -P 0x11 0 32M'); // not flushed: the snap flushes it
  await waitJob(s0, (await api('POST', '/v1/volumes/v/snap', { snapshot: 'vs' })).job.id);
  t.ok(ioOk(await qemuIo(s0, 'h', '0/0', 'write -P 0x22 0 4M', 'write -P 0x23 20M 64K', 'flush')), 'origin written after the snapshot and flushed');
  await s0.kill();
  const s = await appliance(t, s0.dataDir);
  await s.call('POST', '/v1/bindings', { volume: 'vs', host: 'h', target: 1, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '1/0', 'read -P 0x11 0 32M')), 'the snapshot holds the point-in-time bytes');
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'read -P 0x22 0 4M', 'read -P 0x11 4M 16M', 'read -P 0x23 20M 64K', 'read -P 0x11 20544K 11712K')), 'the origin holds every flushed write');
});

t.test('copy reads a snapshot, never a mapped volume', async (t) => {
  const s = await appliance(t);
  const api = s.call.bind(s);
  await writtenVolume(t, s, '16M', 'write -P 0x51 0 4M', 'write -P 0x52 12M 1M');
  await api('POST', '/v1/volumes', { name: 'c', size: '16M', farm: 'f' });
  const refused = await s.request('POST', '/v1/volumes/v/copy', { targets: ['c'] });
  t.equal(refused.status, 409, 'a mapped source is refused');
  t.match(refused.body.error.message, /is mapped.*take a snapshot/);
  await waitJob(s, (await api('POST', '/v1/volumes/v/snap', { snapshot: 'vs' })).job.id);
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0x61 0 16M', 'flush')), 'the origin is overwritten after the snapshot');
  const c = await api('POST', '/v1/volumes/vs/copy', { targets: ['c'] });
  const j = await waitJob(s, c.job.id);
  t.equal(j.state, 'succeeded', JSON.stringify(j.error));
  t.equal(j.result.moved, 5 * M, 'only the allocated runs moved');
  await api('POST', '/v1/bindings', { volume: 'c', host: 'h', target: 1, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '1/0', 'read -P 0x51 0 4M', 'read -P 0 4M 8M', 'read -P 0x52 12M 1M', 'read -P 0 13M 3M')), 'the copy holds the point in time');
  t.same(await dataRuns(s, 'h', '1/0'), [[0, 4 * M], [12 * M, M]], 'and its holes stayed holes');
});

t.test('a mapped snapshot can itself be snapped', async (t) => {
  const s = await appliance(t);
  const api = s.call.bind(s);
  await writtenVolume(t, s, '8M', 'write -P 0x1c 0 8M');
  const r = await s.call('POST', '/v1/volumes/v/snap', { snapshot: 'v-snap' });
  t.equal((await waitJob(s, r.job.id)).state, 'succeeded');
  await api('POST', '/v1/bindings', { volume: 'v-snap', host: 'h', target: 1, lun: 0 });
  const again = await s.request('POST', '/v1/volumes/v-snap/snap', { snapshot: 'v-snap2' });
  t.equal(again.status, 202);
  t.equal((await waitJob(s, again.body.job.id)).state, 'succeeded');
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0x2c 0 8M')), 'the origin changes');
  t.ok(ioOk(await qemuIo(s, 'h', '1/0', 'write -P 0x3c 0 2M')), 'the first snapshot changes');
  await api('POST', '/v1/bindings', { volume: 'v-snap2', host: 'h', target: 2, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '2/0', 'read -P 0x1c 0 8M')), 'the snapshot of the snapshot holds the data');
  t.ok(ioOk(await qemuIo(s, 'h', '1/0', 'read -P 0x3c 0 2M', 'read -P 0x1c 2M 6M')));
});

t.test('a consistency group: snapshots of several volumes at one instant', async (t) => {
  const { m, store } = await startManager(t);
  m.createFarm('f');
  await m.createArray('a0', 64 * M);
  await m.createHost({ name: 'h', farm: 'f' });
  const handles = ['a', 'b'].map((n, k) => {
    const v = m.createVolume({ name: n, size: 4 * M, farm: 'f', configure: true });
    m.bind({ volume: n, host: 'h', target: 0, lun: k, map: true });
    return m.volumeHandle(v);
  });
  for (const h of handles) await store.write(h, 0, Buffer.alloc(4 * M, 1), false);
  const made = await m.snapshots.snapGroup([
    { volume: 'a', snapshot: 'a-s' },
    { volume: 'b', snapshot: 'b-s' },
  ]);
  await store.write(handles[1]!, 0, Buffer.alloc(M, 2), false);
  t.equal(made.length, 2);
  t.ok(made.every((x) => x.pauseMs >= 0), 'the I/O pause is measured');
  for (const n of ['a-s', 'b-s']) {
    const got = Buffer.alloc(4 * M);
    await store.read(m.volumeHandle(m.volume(n)), 0, 4 * M, got);
    t.ok(got.every((x) => x === 1), `${n} is the point in time`);
  }
  const b = Buffer.alloc(M);
  await store.read(handles[1]!, 0, M, b);
  t.ok(b.every((x) => x === 2), 'the later write landed on the origin only');
});
