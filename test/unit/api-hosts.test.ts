import t from 'tap';
import { basicAppliance, MiB, startApi } from '../helpers/api-app.js';

t.test('hosts: create, namespace, TLS requirement, PSK without TLS set up', async (t) => {
  const { call, dataDir } = await startApi(t);
  await basicAppliance(call);
  let r = await call('GET', '/v1/hosts/h');
  t.same(r.body, {
    name: 'h',
    farm: 'f',
    protocols: ['nbd', 'iscsi'],
    defaultProtocol: 'both',
    nbd: { socket: `${dataDir}/sockets/h.sock`, tcp: null, sharedListenerDefault: false, requireTls: false, tlsPsk: false, socketAccess: { mode: null, uid: null, gid: null } },
    iscsi: { initiators: [], chap: null },
    units: 0,
    createdAt: r.body.createdAt,
  });
  t.equal((await call('POST', '/v1/hosts', { name: 'h', farm: 'f' })).status, 409);
  t.equal((await call('POST', '/v1/hosts', { name: 'h2', farm: 'nope' })).status, 404);
  t.equal((await call('POST', '/v1/hosts', { name: 'h2', farm: 'f', nbdTcp: 'nowhere' })).status, 400);
  r = await call('PUT', '/v1/hosts/h/tls', { requireTls: true });
  t.equal(r.status, 200);
  t.equal(r.body.nbd.requireTls, true);
  t.equal((await call('PUT', '/v1/hosts/h/tls', { requireTls: 'yes' })).status, 400);
  r = await call('POST', '/v1/hosts/h/tls/psk', {});
  t.equal(r.status, 501);
  t.equal(r.body.error.code, 'NOT_SUPPORTED');

  await call('POST', '/v1/volumes', { name: 'v', size: '4M', farm: 'f' });
  await call('POST', '/v1/bindings', { volume: 'v', host: 'h', target: 2, lun: 5 });
  r = await call('GET', '/v1/hosts/h/namespace');
  t.match(r.body, { host: 'h', farm: 'f', tcp: [], units: [{ target: 2, lun: 5, volume: 'v', size: 4 * MiB, readOnly: false, exportName: '2/5', uris: [`nbd+unix:///2/5?socket=${dataDir}/sockets/h.sock`] }] });
  t.equal((await call('GET', '/v1/hosts')).body.hosts[0].units, 1);
});

t.test('bindings: filters by host and volume are validated and honoured', async (t) => {
  const { call } = await startApi(t);
  await basicAppliance(call);
  await call('POST', '/v1/hosts', { name: 'h2', farm: 'f' });
  await call('POST', '/v1/volumes', { name: 'sh', size: '4M', farm: 'f', shareMode: 'shared' });
  await call('POST', '/v1/volumes', { name: 'solo', size: '4M', farm: 'f' });
  const b1 = (await call('POST', '/v1/bindings', { volume: 'sh', host: 'h', target: 0, lun: 0, mode: 'shared' })).body;
  const b2 = (await call('POST', '/v1/bindings', { volume: 'sh', host: 'h2', target: 0, lun: 0, mode: 'shared' })).body;
  const b3 = (await call('POST', '/v1/bindings', { volume: 'solo', host: 'h', target: 0, lun: 1, map: false })).body;
  t.match(b3, { volume: 'solo', host: 'h', target: 0, lun: 1, protocol: 'nbd', mode: 'exclusive', mapped: false });
  const ids = async (q: string): Promise<number[]> => (await call('GET', `/v1/bindings${q}`)).body.bindings.map((b: { id: number }) => b.id);
  t.same(await ids(''), [b1.id, b2.id, b3.id]);
  t.same(await ids('?host=h'), [b1.id, b3.id]);
  t.same(await ids('?host=h2'), [b2.id]);
  t.same(await ids('?volume=sh'), [b1.id, b2.id]);
  t.same(await ids('?volume=sh&host=h2'), [b2.id]);
  t.same(await ids('?volume=solo&host=h2'), []);
  let r = await call('GET', '/v1/bindings?host=ghost');
  t.equal(r.status, 404, 'a filter naming nothing is an error, not an empty list');
  t.equal(r.body.error.code, 'NOT_FOUND');
  r = await call('GET', '/v1/bindings?hostname=h');
  t.equal(r.status, 400, 'an unknown filter is refused');

  // bind errors: unit taken, exclusive volume bound twice, bad lun
  t.equal((await call('POST', '/v1/bindings', { volume: 'solo', host: 'h2', target: 0, lun: 0 })).status, 409);
  t.equal((await call('POST', '/v1/bindings', { volume: 'sh', host: 'h', target: 0, lun: 1 })).status, 409);
  t.equal((await call('POST', '/v1/bindings', { volume: 'sh', host: 'h', target: 0, lun: 16384 })).status, 400);

  // map, unmap, unbind: each a transition with its own reply
  r = await call('POST', `/v1/bindings/${b3.id}/map`);
  t.equal(r.body.mapped, true);
  t.equal((await call('DELETE', `/v1/bindings/${b3.id}`)).status, 409, 'a mapped binding is unmapped first');
  r = await call('POST', `/v1/bindings/${b3.id}/unmap`);
  t.equal(r.body.mapped, false);
  t.equal((await call('POST', `/v1/bindings/${b3.id}/unmap`)).status, 409);
  t.equal((await call('DELETE', `/v1/bindings/${b3.id}`)).status, 204);
  t.equal((await call('GET', `/v1/bindings/${b3.id}`)).status, 404);
  t.equal((await call('GET', '/v1/bindings/abc')).status, 400);
});

t.test('vms: a VM owns bindings of its host, each once', async (t) => {
  const { call, m } = await startApi(t);
  await basicAppliance(call);
  await call('POST', '/v1/hosts', { name: 'h2', farm: 'f' });
  await call('POST', '/v1/volumes', { name: 'v1', size: '4M', farm: 'f' });
  await call('POST', '/v1/volumes', { name: 'v2', size: '4M', farm: 'f' });
  const b1 = (await call('POST', '/v1/bindings', { volume: 'v1', host: 'h', target: 0, lun: 0 })).body;
  const b2 = (await call('POST', '/v1/bindings', { volume: 'v2', host: 'h2', target: 0, lun: 0 })).body;
  let r = await call('POST', '/v1/vms', { name: 'vm', host: 'h', bindings: [b1.id, b1.id] });
  t.equal(r.status, 400, 'a binding listed twice');
  t.match(r.body.error.message, /twice/);
  t.throws(() => m.inventory.createVm({ name: 'vm', host: 'h', bindings: [b1.id, b1.id] }), { code: 'BAD_REQUEST' }, 'the manager refuses it too');
  r = await call('POST', '/v1/vms', { name: 'vm', host: 'h', bindings: [b2.id] });
  t.equal(r.status, 409, "another host's binding");
  r = await call('POST', '/v1/vms', { name: 'vm', host: 'h', bindings: [] });
  t.equal(r.status, 400);
  r = await call('POST', '/v1/vms', { name: 'vm', host: 'h', bindings: [b1.id] });
  t.equal(r.status, 201);
  t.match(r.body, { name: 'vm', host: 'h', bindings: [{ id: b1.id, volume: 'v1', host: 'h', mapped: true }] });
  t.equal((await call('POST', '/v1/vms', { name: 'vm', host: 'h', bindings: [b1.id] })).status, 409);
  t.equal((await call('GET', '/v1/vms/vm')).body.name, 'vm');
  t.equal((await call('GET', '/v1/vms')).body.vms.length, 1);
  t.equal((await call('DELETE', '/v1/vms/vm')).status, 204);
  t.equal((await call('GET', '/v1/vms/vm')).status, 404);
  t.equal((await call('GET', `/v1/bindings/${b1.id}`)).status, 200, 'the bindings stay');
});

t.test('jobs: state and kind filters validated and honoured; cancel', async (t) => {
  const { call, m } = await startApi(t);
  await basicAppliance(call);
  await call('POST', '/v1/volumes', { name: 'v', size: '4M', farm: 'f' });
  const b = (await call('POST', '/v1/bindings', { volume: 'v', host: 'h', target: 0, lun: 0, map: false })).body;
  await call('DELETE', `/v1/bindings/${b.id}`);
  const j1 = (await call('POST', '/v1/volumes/v/scrub', {})).body.job;
  await m.jobs.wait(j1.id);
  let r = await call('GET', '/v1/jobs?state=bogus');
  t.equal(r.status, 400);
  t.equal(r.body.error.code, 'BAD_REQUEST');
  t.match(r.body.error.message, /state/);
  r = await call('GET', '/v1/jobs?kind=bogus');
  t.equal(r.status, 400);
  t.match(r.body.error.message, /scrub/);
  r = await call('GET', '/v1/jobs?limit=0');
  t.equal(r.status, 400);
  t.same((await call('GET', '/v1/jobs?state=succeeded')).body.jobs.map((j: { id: number }) => j.id), [j1.id]);
  t.same((await call('GET', '/v1/jobs?state=failed')).body.jobs, []);
  t.same((await call('GET', '/v1/jobs?kind=copy')).body.jobs, []);
  t.same((await call('GET', '/v1/jobs?kind=scrub&state=succeeded')).body.jobs.map((j: { id: number }) => j.id), [j1.id]);
  r = await call('GET', `/v1/jobs/${j1.id}`);
  t.match(r.body, { id: j1.id, kind: 'scrub', state: 'succeeded', progress: { fraction: 1 }, result: { verified: true }, error: null, attempts: 1 });
  r = await call('POST', `/v1/jobs/${j1.id}/cancel`);
  t.equal(r.status, 409, 'a finished job cannot be cancelled');
  t.equal((await call('GET', '/v1/jobs/999')).status, 404);
});

t.test('activate answers 202; events list what happened', async (t) => {
  const { call, m } = await startApi(t);
  await basicAppliance(call);
  let r = await call('POST', '/v1/hosts/h/activate', { volume: 'data', size: '4M', target: 1, lun: 0 });
  t.equal(r.status, 202);
  t.equal((await m.jobs.wait(r.body.job.id)).state, 'succeeded');
  t.equal((await call('GET', '/v1/volumes/data')).body.state, 'mapped');
  r = await call('GET', '/v1/events?since=0&limit=1000');
  t.equal(r.status, 200);
  const types = r.body.events.map((e: { type: string }) => e.type);
  for (const ty of ['host.created', 'job.queued', 'job.succeeded', 'binding.created', 'namespace.changed']) t.ok(types.includes(ty), ty);
  const last = r.body.events.at(-1).id;
  t.same((await call('GET', `/v1/events?since=${last}`)).body.events, []);
  t.equal((await call('GET', '/v1/events?limit=5000')).status, 400);
  t.equal((await call('GET', '/v1/events?since=-1')).status, 400);
});

t.test('trace and resolve', async (t) => {
  const { call, m } = await startApi(t);
  await basicAppliance(call);
  await call('POST', '/v1/arrays', { name: 'a1', size: '8M' });
  await call('POST', '/v1/volumes', { name: 'meta', size: '8M', farm: 'f', layout: [{ array: 'a0', size: '4M' }, { array: 'a1', size: '4M' }] });
  const b = (await call('POST', '/v1/bindings', { volume: 'meta', host: 'h', target: 3, lun: 1 })).body;
  let r = await call('GET', `/v1/trace/hosts/h/units/3/1?offset=${4 * MiB - 512}&length=1024`);
  t.equal(r.status, 200);
  t.match(r.body, { host: 'h', target: 3, lun: 1, mapped: true, volume: { name: 'meta' }, request: { offset: 4 * MiB - 512, length: 1024 } });
  t.same(
    r.body.segments.map((s: { array: string; arrayOffset: number; length: number }) => [s.array, s.arrayOffset, s.length]),
    [
      ['a0', 4 * MiB - 512, 512],
      ['a1', 0, 512],
    ],
  );
  t.equal((await call('GET', '/v1/trace/hosts/h/units/3/1?offset=9000000')).status, 400);
  t.equal((await call('GET', '/v1/trace/hosts/h/units/3/1?offset=9000000')).body.error.code, 'OUT_OF_RANGE');
  t.equal((await call('GET', '/v1/trace/hosts/h/units/300/1')).status, 400);
  t.equal((await call('GET', '/v1/trace/hosts/h/units/3/2')).status, 404);
  r = await call('GET', '/v1/trace/volumes/meta');
  t.match(r.body, { volume: { name: 'meta', farm: 'f' }, units: [{ host: 'h', export: '3/1', binding: b.id }], vms: [] });

  const v = (await call('GET', '/v1/volumes/meta')).body;
  r = await call('GET', `/v1/resolve?serial=${v.serial}`);
  t.equal(r.body.volume.name, 'meta');
  r = await call('GET', `/v1/resolve?naa=naa.${v.naa}`);
  t.equal(r.body.volume.name, 'meta');
  r = await call('GET', '/v1/resolve?export=3/1&host=h');
  t.match(r.body, { host: 'h', target: 3, lun: 1, volume: { name: 'meta' } });
  r = await call('GET', `/v1/resolve?array=a1&offset=${MiB}`);
  t.match(r.body, { array: 'a1', owner: 'volume', volumeOffset: 5 * MiB, volume: { name: 'meta' } });
  r = await call('GET', `/v1/resolve?array=a1&offset=${6 * MiB}`);
  t.same(r.body, { array: 'a1', file: r.body.file, arrayOffset: 6 * MiB, owner: 'free' });
  await call('POST', '/v1/vms', { name: 'vm', host: 'h', bindings: [b.id] });
  r = await call('GET', '/v1/resolve?vm=vm');
  t.match(r.body, { vm: 'vm', host: 'h', disks: [{ target: 3, lun: 1, volume: { name: 'meta' } }] });
  t.equal((await call('GET', '/v1/resolve')).status, 400);
  t.equal((await call('GET', '/v1/resolve?export=3/1')).status, 400, 'an export needs its host');
  t.equal((await call('GET', '/v1/resolve?serial=NOPE')).status, 404);
  t.equal((await call('GET', '/v1/resolve?colour=red')).status, 400);
  void m;
});
