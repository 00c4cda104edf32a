import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startManager } from '../helpers/manager.js';

const M = 1024 * 1024;

t.test('resize grows a mapped volume; the namespace carries the new size; shrinking is refused', async (t) => {
  const { m, namespaces } = await startManager(t);
  m.createFarm('f');
  await m.createArray('a0', 64 * M);
  await m.createHost({ name: 'h', farm: 'f' });
  m.createVolume({ name: 'v', size: 8 * M, farm: 'f', configure: true });
  m.createVolume({ name: 'gap', size: 8 * M, farm: 'f', configure: true });
  m.bind({ volume: 'v', host: 'h', target: 0, lun: 0, map: true });
  const v = m.resize('v', 24 * M);
  t.equal(v.size, 24 * M);
  t.equal(v.state, 'mapped');
  t.equal(m.extentsOf(v.id).length, 2, 'grown with a second extent after the neighbour');
  t.equal(namespaces.lookup('h', 0, 0, 'nbd')?.volume.layout.size, 24 * M);
  t.throws(() => m.resize('v', 4 * M), { code: 'BAD_REQUEST' });
  const tr = m.tracer.volumeTrace(m.volume('v'), 8 * M - 512, 1024) as { segments: { arrayOffset: number }[] };
  t.equal(tr.segments.length, 2, 'trace follows the new layout');
});

t.test('unmap: if the namespace side fails, the database is put back', async (t) => {
  const { m, namespaces } = await startManager(t);
  m.createFarm('f');
  await m.createArray('a0', 64 * M);
  await m.createHost({ name: 'h', farm: 'f' });
  m.createVolume({ name: 'v', size: 8 * M, farm: 'f', configure: true });
  const b = m.bind({ volume: 'v', host: 'h', target: 0, lun: 0, map: true });
  m.injectFaults(['publish']);
  await t.rejects(m.unmap(b.id), { code: 'OPERATION_FAILED' });
  t.equal(m.volume('v').state, 'mapped');
  t.equal(m.binding(b.id).mapped, 1);
  t.ok(namespaces.lookup('h', 0, 0, 'nbd'), 'still published');
  m.injectFaults([]);
  await m.unmap(b.id);
  t.equal(m.volume('v').state, 'unmapped');
  t.notOk(namespaces.lookup('h', 0, 0, 'nbd'));
});

t.test('allocate from predefined volumes by size and class', async (t) => {
  const { m } = await startManager(t);
  m.createFarm('f');
  await m.createArray('fast', 64 * M, 'performance');
  await m.createArray('slow', 64 * M, 'std');
  m.createVolume({ name: 'p-small', size: 8 * M, layout: [{ array: 'fast', size: 8 * M }], configure: true });
  m.createVolume({ name: 'p-big', size: 32 * M, layout: [{ array: 'fast', size: 16 * M }, { array: 'slow', size: 16 * M }], configure: true });
  m.createVolume({ name: 'p-std', size: 16 * M, qualityClass: 'std', configure: true });
  t.equal(m.claimVolume({ farm: 'f', size: 4 * M, qualityClass: 'performance' }).name, 'p-small');
  t.equal(m.claimVolume({ farm: 'f', size: 4 * M }).name, 'p-std', 'smallest that fits');
  t.equal(m.claimVolume({ farm: 'f', size: 20 * M }).name, 'p-big', 'a predefined meta volume');
  t.throws(() => m.claimVolume({ farm: 'f', size: 4 * M }), { code: 'NO_SPACE' });
  t.equal(m.describeVolume(m.volume('p-big')).farm, 'f');
});

t.test('discovery adopts array files placed in the data directory', async (t) => {
  const { m, dataDir } = await startManager(t);
  fs.writeFileSync(path.join(dataDir, 'arrays', 'dropped.img'), Buffer.alloc(0));
  fs.truncateSync(path.join(dataDir, 'arrays', 'dropped.img'), 32 * M + 100);
  const r = (await m.inventory.discover()) as { added: string[]; arrays: { name: string; size: number; free: number }[] };
  t.same(r.added, ['dropped']);
  t.same(r.arrays.map((a) => [a.name, a.size, a.free]), [['dropped', 32 * M, 32 * M]], 'size rounded down to whole extents');
  m.createFarm('f');
  t.equal(m.createVolume({ name: 'v', size: 16 * M, farm: 'f' }).state, 'allocated');
  t.same(((await m.inventory.discover()) as { added: string[] }).added, [], 'nothing twice');
});

t.test('events are persisted with the change; a refused change leaves no event', async (t) => {
  const { m } = await startManager(t);
  const heard: string[] = [];
  m.events.subscribe((e) => heard.push(e.type));
  m.createFarm('f');
  await m.createArray('a0', 16 * M);
  t.throws(() => m.createVolume({ name: 'v', size: 32 * M, farm: 'f' }), { code: 'NO_SPACE' });
  const before = m.events.since(0).length;
  m.createVolume({ name: 'v', size: 8 * M, farm: 'f' });
  await new Promise((r) => setImmediate(r));
  t.equal(m.events.since(0).length, before + 1);
  t.same(heard, ['array.created', 'volume.state']);
  await m.createHost({ name: 'h', farm: 'f' });
  m.configure('v');
  const b = m.bind({ volume: 'v', host: 'h', target: 0, lun: 0 });
  t.throws(() => m.inventory.createVm({ name: 'vm', host: 'h', bindings: [] }), { code: 'BAD_REQUEST' });
  m.inventory.createVm({ name: 'vm', host: 'h', bindings: [b.id] });
  m.inventory.deleteVm('vm');
  await new Promise((r) => setImmediate(r));
  t.same(heard.filter((e) => e.startsWith('host.') || e.startsWith('vm.')), ['host.created', 'vm.created', 'vm.deleted']);
});

t.test('a free volume allocated again gets a new serial and NAA', async (t) => {
  const { m } = await startManager(t);
  m.createFarm('f');
  await m.createArray('a0', 16 * M);
  const first = m.createVolume({ name: 'v', size: 8 * M, farm: 'f' });
  m.breakVolume('v');
  m.deallocate('v');
  t.equal(m.volume('v').state, 'free');
  const again = m.createVolume({ name: 'v', size: 8 * M, farm: 'f' });
  t.equal(again.state, 'allocated');
  t.not(again.serial, first.serial);
  t.not(again.naa, first.naa);
  t.throws(() => m.createVolume({ name: 'v', size: 8 * M }), { code: 'CONFLICT' }, 'a live name is not reused');
});
