import t from 'tap';
import { inProcessAppliance } from '../helpers/iscsi-appliance.js';
import { IscsiSession, senseCode } from '../helpers/iscsi-session.js';
import { reportLuns, tur } from '../helpers/iscsi-wire.js';
import { RawNbd } from '../helpers/nbd-client.js';

// Frontend.revoke(host, unit) on the iSCSI frontend while the unit is still
// in the host's namespace (what a protocol switch does): only that LUN ends
// for the host's iSCSI sessions — LOGICAL UNIT NOT SUPPORTED, gone from
// REPORT LUNS, REPORTED LUNS DATA HAS CHANGED on the others — and NBD keeps
// serving it. Published to the host again, it comes back. A real manager,
// store and both frontends, wired as `blockgate serve` wires them.

const MiB = 1024 * 1024;
const IQN = 'iqn.2026-01.test:revoke';

const lunsOf = (d: Buffer): number[] => Array.from({ length: d.readUInt32BE(0) / 8 }, (_, i) => d.readUInt16BE(8 + i * 8) & 0x3fff);

t.test('revoke(host, unit) ends only that LUN for iSCSI sessions, until it is published again', async (t) => {
  const { m, namespaces, iscsi, port } = await inProcessAppliance(t, 'revoke');

  m.createFarm('f');
  await m.createArray('a0', 64 * MiB);
  await m.createHost({ name: 'h', farm: 'f' });
  m.iscsi.addInitiator('h', IQN);
  for (const [name, lun] of [['v0', 0], ['v1', 1]] as const) {
    m.createVolume({ name, size: 8 * MiB, farm: 'f', configure: true });
    m.bind({ volume: name, host: 'h', target: 0, lun, map: true });
  }
  const w = await IscsiSession.open(`127.0.0.1:${port}`, [0, 1], { iqn: IQN, target: 'iqn.2026-11.io.blockgate:h.t0' });
  t.teardown(() => w.close());
  await w.write(1, 0, Buffer.alloc(4096, 0x11));
  t.same(lunsOf((await w.command(0, reportLuns(), { read: 4096 })).data), [0, 1], 'both LUNs reported');

  const unit1 = namespaces.lookup('h', 0, 1, 'iscsi')!;
  await iscsi.revoke('h', unit1);
  t.ok(namespaces.lookup('h', 0, 1, 'iscsi'), 'the namespace still has the unit');

  const gone = await w.command(1, tur());
  t.same([gone.status, ...senseCode(gone.sense)], [2, 5, 0x25, 0], 'LUN 1: LOGICAL UNIT NOT SUPPORTED');
  const ua = await w.command(0, tur());
  t.same([ua.status, ...senseCode(ua.sense)], [2, 6, 0x3f, 0x0e], 'LUN 0: REPORTED LUNS DATA HAS CHANGED');
  t.equal((await w.command(0, tur())).status, 0, 'LUN 0 goes on');
  t.same(lunsOf((await w.command(0, reportLuns(), { read: 4096 })).data), [0], 'REPORT LUNS leaves LUN 1 out');

  // A new iSCSI session does not see it either; NBD still serves it.
  const w2 = await IscsiSession.open(`127.0.0.1:${port}`, [0], { iqn: IQN, target: 'iqn.2026-11.io.blockgate:h.t0', isid: Buffer.from([0x80, 0, 0, 0, 0x56, 0x78]) });
  t.teardown(() => w2.close());
  t.same((senseCode((await w2.command(1, tur())).sense)), [5, 0x25, 0], 'a new session: LOGICAL UNIT NOT SUPPORTED');
  const socket = m.hostSocketPath('h');
  const c = await RawNbd.connect(socket, '0/1');
  t.same(await c.read(0, 4096), Buffer.alloc(4096, 0x11), 'NBD still serves the unit');
  c.close();

  // Published to the host again: back for iSCSI.
  iscsi.namespaceChanged('h', 'mapped', [unit1]);
  const back = await w.command(1, tur());
  t.not(back.status === 2 && senseCode(back.sense)[1] === 0x25, true, 'LUN 1 is back');
  t.same(lunsOf((await w.command(0, reportLuns(), { read: 4096 })).data), [0, 1]);
  t.same(await w.read(1, 0, 4096), Buffer.alloc(4096, 0x11), 'with its data');
});
