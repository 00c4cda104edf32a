import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { services } from '../../manager/index.js';
import { startManager } from '../helpers/manager.js';
import { requireTools, run } from '../helpers/tools.js';

requireTools('dot');

const M = 1024 * 1024;
const ev = (type: string, data: Record<string, unknown>, id = 1) => ({ id, at: new Date().toISOString(), type, subject: null, data });

t.test('classify: each event stands for the classes an orchestrator acts on', async (t) => {
  const vms: Record<string, string[]> = { 'volume/v0': ['vm1'], 'binding/7': ['vm1'], 'array/a0': ['vm1', 'vm2'] };
  const lookup = (id: string): string[] => vms[id] ?? [];
  const c = (type: string, data: Record<string, unknown>): string[] => services.classify(ev(type, data), lookup).map(([k, n, cls]) => `${k}/${n}:${cls}`);
  t.same(c('vm.created', { vm: 'vm1' }), ['vm/vm1:vm.added']);
  t.same(c('vm.deleted', { vm: 'vm1' }), ['vm/vm1:vm.removed']);
  t.same(c('host.online', { host: 'h1' }), ['host/h1:host.online']);
  t.same(c('host.offline', { host: 'h1' }), ['host/h1:host.offline']);
  t.same(c('volume.state', { volume: 'v0', operation: 'allocate' }), ['volume/v0:volume.added']);
  t.same(c('volume.state', { volume: 'v0', operation: 'unmap' }), ['volume/v0:volume.modified', 'vm/vm1:vm.modified']);
  t.same(c('binding.deleted', { id: 7, volume: 'v9' }), ['volume/v9:volume.modified', 'vm/vm1:vm.modified'], 'the VM is found by the binding');
  t.same(c('array.failed', { array: 'a0' }), ['array/a0:array.modified', 'vm/vm1:vm.modified', 'vm/vm2:vm.modified']);
  t.same(c('job.running', { id: 1 }), [], 'jobs are not changes');
  // Hostile or odd data: no class, never a throw.
  t.same(c('vm.created', { vm: 42 }), []);
  t.same(c('arrays.discovered', { added: 'a0' }), []);
  t.same(c('volume.copied', { source: null, targets: [1, 'v0'] }), ['volume/v0:volume.modified', 'vm/vm1:vm.modified']);
});

t.test('notices merge a window: each object once, classes in order; the graph answers through the manager', async (t) => {
  const { m, dataDir } = await startManager(t);
  m.setSetting('events.merge_window_ms', '60000');
  const got: services.ChangeNotice[] = [];
  m.services.notices.subscribe((n) => got.push(n));
  m.createFarm('f');
  // A hostile-looking path still makes a DOT file graphviz parses: every label is quoted and escaped.
  await m.createArray('a0', 16 * M);
  m.db.prepare('UPDATE arrays SET path = ? WHERE name = ?').run(path.join(dataDir, 'we"ird name\n.img\\'), 'a0');
  m.events.emit('array.attached', 'array/a0', { array: 'a0', volumes: [] });
  m.createVolume({ name: 'v', size: 8 * M, farm: 'f' });
  await new Promise((r) => setImmediate(r));
  t.equal(got.length, 0, 'the window is still open');
  m.services.notices.flush();
  t.equal(got.length, 1);
  t.same(
    got[0]!.objects.map((o) => [o.kind, o.name, o.classes]),
    [
      ['array', 'a0', ['array.added', 'array.modified']],
      ['volume', 'v', ['volume.added']],
    ],
  );
  m.services.notices.flush();
  t.equal(got.length, 1, 'an empty window sends nothing');

  const a = m.services.query({ q: 'files-of', subject: 'volume/v' });
  t.same(a.answer, [`file/${path.join(dataDir, 'we"ird name\n.img\\')}`, `file/${path.join(dataDir, 'we"ird name\n.img\\')}.alloc`]);
  const dot = m.services.dot(m.services.query({}));
  const r = await run('dot', ['-Tsvg'], { input: dot });
  t.equal(r.code, 0, `dot parses it: ${r.stderr}`);
  t.ok(fs.existsSync(dataDir));
});

t.test('events are classified on what VMs stand on: VMs found as before, at a cost that grows with VMs, not volumes', async (t) => {
  const { m } = await startManager(t);
  m.setSetting('events.merge_window_ms', '60000');
  const got: services.ChangeNotice[] = [];
  m.services.notices.subscribe((n) => got.push(n));
  m.createFarm('f');
  await m.createArray('a0', 64 * M);
  await m.createArray('a1', 64 * M);
  await m.createHost({ name: 'h', farm: 'f' });
  m.createVolume({ name: 'v', size: 8 * M, farm: 'f', layout: [{ array: 'a0', size: 8 * M }], configure: true });
  const b = m.bind({ volume: 'v', host: 'h', target: 0, lun: 0, map: true });
  m.inventory.createVm({ name: 'vm1', host: 'h', bindings: [b.id] });
  for (let i = 0; i < 40; i++) m.createVolume({ name: `u${i}`, size: M, farm: 'f', layout: [{ array: 'a1', size: M }], configure: true });
  await new Promise((r) => setImmediate(r));
  const window = (): string[] => {
    const before = got.length;
    m.services.notices.flush();
    return got.slice(before).flatMap((n) => n.objects.map((o) => `${o.kind}/${o.name}:${o.classes.join(',')}`));
  };
  window();
  const small = m.services.graphStats().vmGraphNodes;
  // farm, 2 arrays and their 4 files, host, vm, unit, binding, volume, extent: 13. The whole graph holds 40 more volumes and extents.
  t.ok(small > 0 && small <= 13, `the graph events are classified on holds the VM's part only (${small} nodes)`);

  m.createVolume({ name: 'u40', size: M, farm: 'f', layout: [{ array: 'a1', size: M }], configure: true });
  m.events.emit('array.failed', 'array/a1', { array: 'a1' });
  await new Promise((r) => setImmediate(r));
  t.same(window(), ['volume/u40:volume.modified,volume.added', 'array/a1:array.modified'], 'no VM stands on an unrelated volume or array');

  m.events.emit('array.failed', 'array/a0', { array: 'a0' });
  await new Promise((r) => setImmediate(r));
  t.same(window(), ['array/a0:array.modified', 'vm/vm1:vm.modified'], 'the VM stands on the array under its volume');

  await m.unmap(b.id);
  m.unbind(b.id);
  await new Promise((r) => setImmediate(r));
  t.ok(window().includes('vm/vm1:vm.modified'), 'unmapping and unbinding its disk modify the VM');
  t.equal(m.services.graphStats().vmGraphNodes, small - 4, 'with its disk gone the graph loses its unit, binding, volume and extent');
});
