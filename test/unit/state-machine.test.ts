import t from 'tap';
import { BlockgateError } from '../../common/errors.js';
import { OPERATIONS, TRANSITIONS, VOLUME_STATES, allowedOperations, transition, type Operation, type VolumeState } from '../../manager/index.js';
import { startManager } from '../helpers/manager.js';

/**
 * FIG. 7 written out independently of manager/state.ts: every edge the seed
 * draws (T1–T16) plus the admin edges the table documents. Every pair not
 * listed must be refused.
 */
const EXPECTED: Record<string, VolumeState> = {
  'free/allocate': 'allocated', // T1
  'allocated/configure': 'configured', // T2
  'allocated/configure-failed': 'unconfigured', // T3
  'configured/copy-image': 'configured', // T4
  'configured/copy': 'configured',
  'configured/copy-image-failed': 'unconfigured', // T5
  'configured/bind': 'bound', // T6
  'configured/bind-failed': 'unconfigured', // T7
  'bound/map': 'mapped', // T8
  'bound/map-failed': 'unbound', // T9
  'unbound/bind': 'bound', // T10
  'mapped/snap': 'mapped', // T11
  'mapped/unmap': 'unmapped', // T12
  'unmapped/unbind': 'unbound', // T13
  'unbound/scrub': 'unbound', // T14
  'unbound/break': 'unconfigured', // T15
  'unconfigured/deallocate': 'free', // T16
  // admin edges
  'allocated/break': 'unconfigured',
  'allocated/resize': 'allocated',
  'configured/break': 'unconfigured',
  'configured/resize': 'configured',
  'bound/bind': 'bound',
  'bound/unbind': 'unbound',
  'bound/resize': 'bound',
  'bound/copy': 'bound',
  'unmapped/copy': 'unmapped',
  'mapped/map': 'mapped',
  'mapped/map-failed': 'mapped',
  'mapped/bind': 'mapped',
  'mapped/unbind': 'mapped',
  'mapped/resize': 'mapped',
  'unmapped/map': 'mapped',
  'unmapped/map-failed': 'unbound',
  'unmapped/bind': 'unmapped',
  'unbound/bind-failed': 'unconfigured',
  'unbound/copy': 'unbound',
  'unbound/resize': 'unbound',
  'unconfigured/scrub': 'unconfigured',
};

t.test('every state x operation against the table', async (t) => {
  let legal = 0;
  for (const s of VOLUME_STATES) {
    for (const op of OPERATIONS) {
      const want = EXPECTED[`${s}/${op}`];
      if (want) {
        t.equal(transition(s, op), want, `${s} --${op}--> ${want}`);
        legal++;
      } else {
        try {
          transition(s, op, 'v');
          t.fail(`${s} --${op}--> should be refused`);
        } catch (e) {
          t.ok(e instanceof BlockgateError && e.code === 'ILLEGAL_STATE', `${s} --${op}--> refused with ILLEGAL_STATE`);
          const d = (e as BlockgateError).details as { state: string; allowed: string[] };
          t.equal(d.state, s);
          t.same(d.allowed, allowedOperations(s));
          t.match((e as Error).message, new RegExp(`state '${s}'`));
        }
      }
    }
  }
  t.equal(legal, Object.keys(EXPECTED).length, 'no expected edge missing from the sweep');
  const tableEdges = Object.values(TRANSITIONS).reduce((n, m) => n + Object.keys(m).length, 0);
  t.equal(tableEdges, legal, 'the table has no edge the test does not know');
});

t.test('the normal lifecycle order is a path through the table', async (t) => {
  const path: Operation[] = ['allocate', 'configure', 'copy-image', 'bind', 'map', 'snap', 'unmap', 'unbind', 'scrub', 'break', 'deallocate'];
  let s: VolumeState = 'free';
  for (const op of path) s = transition(s, op);
  t.equal(s, 'free');
});

const M = 1024 * 1024;

/** Everything the control database says, to prove a refused operation changed nothing. */
function snapshotDb(m: Awaited<ReturnType<typeof startManager>>['m']): string {
  const rows = ['volumes', 'extents', 'bindings', 'jobs'].map((tb) => m.db.prepare(`SELECT * FROM ${tb} ORDER BY rowid`).all());
  return JSON.stringify(rows);
}

t.test('every illegal manager operation is refused and changes nothing', async (t) => {
  const { m } = await startManager(t);
  m.createFarm('f');
  await m.createArray('a0', 256 * M);
  await m.createHost({ name: 'h', farm: 'f' });
  const ops: Record<string, (name: string) => unknown> = {
    configure: (n) => m.configure(n),
    break: (n) => m.breakVolume(n),
    deallocate: (n) => m.deallocate(n),
    scrub: (n) => m.bulk.scrub(n),
    bind: (n) => m.bind({ volume: n, host: 'h', target: 9, lun: 0 }),
    resize: (n) => m.resize(n, 32 * M),
    snap: (n) => m.snapshots.snap(n, `${n}-snap`),
  };
  // Drive one volume through each state, and try every operation there.
  const v = 'v';
  let bindingId = 0;
  const reach: [VolumeState, () => unknown][] = [
    ['allocated', () => m.createVolume({ name: v, size: 16 * M, farm: 'f' })],
    ['configured', () => m.configure(v)],
    ['bound', () => (bindingId = m.bind({ volume: v, host: 'h', target: 0, lun: 0 }).id)],
    ['mapped', () => m.map(bindingId)],
    ['unmapped', () => m.unmap(bindingId)],
    ['unbound', () => m.unbind(bindingId)],
    ['unconfigured', () => m.breakVolume(v)],
  ];
  for (const [state, go] of reach) {
    await go();
    t.equal(m.volume(v).state, state, `reached ${state}`);
    for (const [op, fn] of Object.entries(ops)) {
      if (TRANSITIONS[state][op as Operation] !== undefined) continue;
      const before = snapshotDb(m);
      await t.rejects(
        (async () => fn(v))(),
        { code: 'ILLEGAL_STATE' },
        `${op} refused in ${state}`,
      );
      t.equal(snapshotDb(m), before, `${op} in ${state} changed nothing`);
    }
  }
  // Unconfigured and dirty (it was mapped): de-allocate waits for a scrub.
  await t.rejects((async () => m.deallocate(v))(), { code: 'ILLEGAL_STATE', message: /scrub/ });
  const j = m.bulk.scrub(v) as { id: number };
  t.equal((await m.jobs.wait(j.id)).state, 'succeeded');
  t.equal(m.deallocate(v).state, 'free');
  // Unmap or unbind of a binding in the wrong state.
  m.createVolume({ name: 'w', size: 16 * M, farm: 'f', configure: true });
  const b = m.bind({ volume: 'w', host: 'h', target: 1, lun: 0, map: true });
  t.throws(() => m.unbind(b.id), { code: 'ILLEGAL_STATE', message: /unmap it first/ });
  await m.unmap(b.id);
  await t.rejects(m.unmap(b.id), { code: 'ILLEGAL_STATE' });
});

t.test('failure edges: meta build, bind, map, image copy', async (t) => {
  t.test('a failed configure goes to unconfigured', async (t) => {
    const { m } = await startManager(t, ['configure']);
    m.createFarm('f');
    await m.createArray('a0', 64 * M);
    m.createVolume({ name: 'v', size: 16 * M, farm: 'f' });
    t.throws(() => m.configure('v'), { code: 'OPERATION_FAILED', message: /now 'unconfigured'/ });
    t.equal(m.volume('v').state, 'unconfigured');
    t.equal(m.deallocate('v').state, 'free', 'never written: de-allocates without a scrub');
  });
  t.test('a failed bind goes to unconfigured and leaves no binding', async (t) => {
    const { m } = await startManager(t, ['bind']);
    m.createFarm('f');
    await m.createArray('a0', 64 * M);
    await m.createHost({ name: 'h', farm: 'f' });
    m.createVolume({ name: 'v', size: 16 * M, farm: 'f', configure: true });
    t.throws(() => m.bind({ volume: 'v', host: 'h', target: 0, lun: 0 }), { code: 'OPERATION_FAILED' });
    t.equal(m.volume('v').state, 'unconfigured');
    t.equal(m.listBindings().length, 0);
  });
  t.test('a failed map removes the bindings: unbound, then bind is retried', async (t) => {
    const { m, namespaces } = await startManager(t, ['map']);
    m.createFarm('f');
    await m.createArray('a0', 64 * M);
    await m.createHost({ name: 'h', farm: 'f' });
    m.createVolume({ name: 'v', size: 16 * M, farm: 'f', configure: true });
    const b = m.bind({ volume: 'v', host: 'h', target: 0, lun: 0 });
    t.throws(() => m.map(b.id), { code: 'OPERATION_FAILED', message: /now 'unbound'/ });
    t.equal(m.volume('v').state, 'unbound');
    t.equal(m.listBindings().length, 0, 'the array-side grant was undone');
    t.same(namespaces.list('h'), [], 'nothing in the namespace');
    const b2 = m.bind({ volume: 'v', host: 'h', target: 0, lun: 0 });
    t.equal(m.volume('v').state, 'bound', 'bind retried from unbound (T10)');
    t.ok(b2.id);
  });
  t.test('a failed image copy goes to unconfigured', async (t) => {
    const { m, dataDir } = await startManager(t, ['copy-image']);
    m.createFarm('f');
    await m.createArray('a0', 64 * M);
    const fs = await import('node:fs');
    fs.writeFileSync(`${dataDir}/images/os.img`, Buffer.alloc(M, 7));
    await m.bulk.registerImage('os', 'images/os.img');
    m.createVolume({ name: 'v', size: 16 * M, farm: 'f', configure: true });
    const j = m.bulk.copyImage('v', 'os') as { id: number };
    const done = await m.jobs.wait(j.id);
    t.equal(done.state, 'failed');
    t.equal(m.volume('v').state, 'unconfigured');
    t.equal(m.volume('v').dirty, 1, 'a copy cut short must be scrubbed before reuse');
  });
  t.test('activate rolls back to free when a step fails', async (t) => {
    const { m } = await startManager(t, ['map']);
    m.createFarm('f');
    await m.createArray('a0', 64 * M);
    await m.createHost({ name: 'h', farm: 'f' });
    const j = m.bulk.activate({ host: 'h', volume: 'v', size: 16 * M, target: 0, lun: 0 }) as { id: number };
    const done = await m.jobs.wait(j.id);
    t.equal(done.state, 'failed');
    t.match(done.error, /map/);
    t.notMatch(done.error, /compensation/, String(done.error));
    t.equal(m.volume('v').state, 'free');
    t.equal(m.extentsOf(m.volume('v').id).length, 0, 'space returned');
    t.equal(m.listBindings().length, 0);
  });
});

t.test('farms: a volume binds only to hosts of its farm; exclusive binds once; shared maps to several', async (t) => {
  const { m, namespaces } = await startManager(t);
  m.createFarm('fa');
  m.createFarm('fb');
  await m.createArray('a0', 128 * M);
  await m.createHost({ name: 'ha1', farm: 'fa' });
  await m.createHost({ name: 'ha2', farm: 'fa' });
  await m.createHost({ name: 'hb', farm: 'fb' });
  m.createVolume({ name: 'vb', size: 16 * M, farm: 'fb', configure: true });
  t.throws(() => m.bind({ volume: 'vb', host: 'ha1', target: 0, lun: 0 }), { code: 'CONFLICT', message: /another farm/ });
  m.createVolume({ name: 'ex', size: 16 * M, farm: 'fa', configure: true });
  m.bind({ volume: 'ex', host: 'ha1', target: 0, lun: 0, map: true });
  t.throws(() => m.bind({ volume: 'ex', host: 'ha2', target: 0, lun: 0 }), { code: 'CONFLICT', message: /exclusive/ });
  m.createVolume({ name: 'g', size: 16 * M, farm: 'fa', shareMode: 'shared', configure: true });
  m.bind({ volume: 'g', host: 'ha1', target: 1, lun: 0, map: true });
  const b2 = m.bind({ volume: 'g', host: 'ha2', target: 5, lun: 2, map: true });
  t.same(namespaces.list('ha2').map((u) => `${u.target}/${u.lun}:${u.volumeName}`), ['5/2:g']);
  t.same(namespaces.list('ha1').map((u) => `${u.target}/${u.lun}:${u.volumeName}`), ['0/0:ex', '1/0:g']);
  await m.unmap(b2.id);
  t.equal(m.volume('g').state, 'mapped', 'still mapped on the other host');
  t.same(namespaces.list('hb'), []);
});

// Killed Stryker survivors (docs/testing.md, mutation scores): the refusal's
// words and details are what the API's 409 and the CLI print, so they are
// checked exactly, with and without the volume's name.
t.test('a refused transition names the volume, the state and what is allowed there', async (t) => {
  const refused = (state: string, op: Operation, subject?: string): BlockgateError => {
    try {
      transition(state, op, subject);
    } catch (e) {
      if (e instanceof BlockgateError) return e;
      throw e;
    }
    throw new Error(`${state}/${op} was allowed`);
  };
  const named = refused('allocated', 'map', 'v1');
  t.equal(named.code, 'ILLEGAL_STATE');
  t.equal(named.message, "cannot map volume 'v1' in state 'allocated'; allowed in 'allocated': configure, break, resize");
  t.same(named.details, { state: 'allocated', operation: 'map', allowed: ['configure', 'break', 'resize'], volume: 'v1' });
  const anon = refused('free', 'map');
  t.equal(anon.message, "cannot map in state 'free'; allowed in 'free': allocate");
  t.same(anon.details, { state: 'free', operation: 'map', allowed: ['allocate'] });
  t.notOk('volume' in (anon.details as object), 'no volume detail without a name');
  const unknown = refused('melted', 'map', 'v1');
  t.equal(unknown.code, 'INTERNAL');
  t.equal(unknown.message, "unknown volume state 'melted'");
});
