import t from 'tap';
import { holdGroup } from '../../manager/index.js';
import { openUnit } from '../../target/index.js';
import { startManager } from '../helpers/manager.js';

// The pieces under protocol switching and migration, in process with a real
// store on real array files: fences refuse what a hold caught from a revoked
// session, a consistency group holds several volumes at once, and a binding's
// protocol decides which frontend sees its unit.

const M = 1024 * 1024;

async function rig(t: { teardown: (fn: () => unknown) => void }) {
  const r = await startManager(t);
  r.m.createFarm('f');
  await r.m.createArray('a0', 64 * M);
  await r.m.createHost({ name: 'h', farm: 'f' });
  r.m.createVolume({ name: 'v', size: 8 * M, farm: 'f', configure: true });
  r.m.createVolume({ name: 'w', size: 8 * M, farm: 'f', configure: true });
  return r;
}

t.test('a write a hold caught is refused when the unit was revoked meanwhile, and never reaches the volume', async (t) => {
  const { m, namespaces, store } = await rig(t);
  const b = m.bind({ volume: 'v', host: 'h', target: 0, lun: 0, map: true });
  const u = namespaces.lookup('h', 0, 0, 'nbd')!;
  const io = openUnit(store, u, 'nbd');
  await io.write(0, Buffer.alloc(4096, 0x11), true);
  const release = await store.quiesce(u.volume.id);
  let settled = false;
  const held = Promise.resolve(io.write(0, Buffer.alloc(4096, 0x22), false)).finally(() => (settled = true));
  held.catch(() => undefined);
  // Unmap takes its own hold, flushes, drops the unit from the namespace (fencing it) and lets go of its hold.
  await m.unmap(b.id);
  t.notOk(settled, 'still held by our quiesce');
  release();
  await t.rejects(held, { code: 'REVOKED' }, 'refused once let go');
  await t.rejects(Promise.resolve(io.write(0, Buffer.alloc(4096, 0x33), false)), { code: 'REVOKED' }, 'and so is anything the old session sends later');
  m.map(b.id);
  const back = Buffer.alloc(4096);
  const now = namespaces.lookup('h', 0, 0, 'nbd')!;
  await openUnit(store, now, 'nbd').read(0, 4096, back);
  t.ok(back.equals(Buffer.alloc(4096, 0x11)), 'the volume holds what was acknowledged before, nothing after');
  await openUnit(store, now, 'nbd').write(0, Buffer.alloc(4096, 0x44), false);
  t.pass('the unit mapped again has a fresh fence: writes go through');
});

t.test('consistency group: every volume is held at once, flushed, the callback runs with nothing moving, the pause is measured', async (t) => {
  const { m, namespaces, store } = await rig(t);
  m.bind({ volume: 'v', host: 'h', target: 0, lun: 0, map: true });
  m.bind({ volume: 'w', host: 'h', target: 0, lun: 1, map: true });
  const [uv, uw] = [namespaces.lookup('h', 0, 0, 'nbd')!, namespaces.lookup('h', 0, 1, 'nbd')!];
  const [iv, iw] = [openUnit(store, uv, 'nbd'), openUnit(store, uw, 'nbd')];
  await iv.write(0, Buffer.alloc(4096, 0x55), false);
  t.ok(store.cache.stats().dirtyBytes > 0, 'a write-back write is dirty in the cache');
  const order: string[] = [];
  const r = await holdGroup(store, [uv.volume, uw.volume, uv.volume], async () => {
    order.push('callback');
    t.equal(store.cache.stats().dirtyBytes, 0, 'the group was written back before the callback');
    const during = [Promise.resolve(iv.write(4096, Buffer.alloc(4096, 1), false)), Promise.resolve(iw.write(0, Buffer.alloc(4096, 2), false))];
    for (const p of during) void p.then(() => order.push('write'));
    await new Promise((res) => setImmediate(res));
    order.push('release');
    return 7;
  });
  await new Promise((res) => setImmediate(res));
  t.equal(r.value, 7);
  t.ok(r.pauseMs >= 0);
  t.same(order, ['callback', 'release', 'write', 'write'], 'writes sent during the hold complete only after the release');
});

t.test("a binding's protocol: asked protocols must be spoken and offered; the namespace per protocol follows it", async (t) => {
  const { m, namespaces } = await rig(t);
  // This appliance (in process) offers only NBD.
  t.throws(() => m.bind({ volume: 'v', host: 'h', target: 0, lun: 0, protocol: 'iscsi' }), { code: 'CONFLICT', message: /does not offer iscsi/ });
  const b = m.bind({ volume: 'v', host: 'h', target: 0, lun: 0, map: true });
  t.equal(b.protocol, 'nbd', "the host's default (both) narrowed to what the appliance offers");
  t.equal(namespaces.list('h', 'nbd').length, 1);
  t.equal(namespaces.list('h', 'iscsi').length, 0, 'not served over iSCSI');
  await t.rejects(m.switchProtocol(b.id, 'iscsi'), { code: 'CONFLICT' });
  t.equal(m.binding(b.id).protocol, 'nbd', 'a refused switch changes nothing');
  const same = await m.switchProtocol(b.id, 'nbd');
  t.equal(same.pauseMs, 0, 'switching to the protocol it has is a no-op');
  t.match(same.descriptor, { host: 'h', target: 0, lun: 0, protocol: 'nbd', addresses: [{ protocol: 'nbd', credential: { kind: 'unix-socket' } }] });
});
