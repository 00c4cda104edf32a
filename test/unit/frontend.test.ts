import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { BlockStore } from '../../cache/index.js';
import { ArrayFile } from '../../disks/index.js';
import { VolumeLayout } from '../../mapper/index.js';
import { IoStats, Namespaces, NbdServer, freshFences, type Frontend, type Unit } from '../../target/index.js';
import { startManager } from '../helpers/manager.js';
import { RawNbd } from '../helpers/nbd-client.js';

const MiB = 1024 * 1024;

/** A real NBD server over a real store, with two units of two volumes published for host 'h'. */
async function setup(tt: { teardown: (fn: () => unknown) => void }): Promise<{ nbd: NbdServer; units: Unit[]; dir: string; namespaces: Namespaces }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-frontend-'));
  const array = new ArrayFile(1, 'a', path.join(dir, 'a.img'), 8 * MiB);
  await array.open(true);
  const store = new BlockStore({ size: 4 * MiB });
  store.addArray(array);
  const namespaces = new Namespaces();
  const unit = (lun: number, id: number): Unit => ({
    host: 'h',
    target: 0,
    lun,
    volume: { id, layout: new VolumeLayout([{ arrayId: 1, offset: lun * MiB, length: MiB }]), cachePolicy: 'write-back' },
    volumeName: `v${id}`,
    serial: `S${id}`,
    naa: '3000',
    readOnly: false,
    stats: new IoStats(),
    protocols: ['nbd', 'iscsi'],
    fences: freshFences(),
  });
  const units = [unit(0, 1), unit(1, 2)];
  namespaces.publish('h', units);
  const nbd = new NbdServer({ namespaces, store });
  tt.teardown(async () => {
    await nbd.close();
    await store.close();
    await array.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { nbd, units, dir, namespaces };
}

/** Resolves when the client's socket is closed by the server. */
async function closed(c: RawNbd): Promise<string> {
  // A request on a revoked session fails with the closed connection.
  return c.read(0, 512).then(
    () => 'served',
    () => 'closed',
  );
}

t.test('hostAdded opens the host\'s listeners; address() lists how the host reaches each unit', async (t) => {
  const { nbd, units, dir } = await setup(t);
  const f: Frontend = nbd;
  t.equal(f.protocol, 'nbd');
  t.equal(f.address('h', units[0]!), null, 'no listener for the host yet: no address');
  const socket = path.join(dir, 'h.sock');
  await f.hostAdded!('h', { socket, nbdTcp: '127.0.0.1:0' });
  const shared = await nbd.listenTcp('tcp:shared', '127.0.0.1', 0, () => 'h', true);
  const a = f.address('h', units[1]!)!;
  t.equal(a.exportName, '0/1');
  t.equal(a.uris[0], `nbd+unix:///0/1?socket=${socket}`, 'unix socket first');
  t.match(a.uris[1]!, /^nbd:\/\/127\.0\.0\.1:\d+\/0\/1$/, 'then the host\'s own TCP listener');
  t.equal(a.uris[2], `nbd://127.0.0.1:${shared}/0/1`, 'then the shared listener it is the default host of');
  t.equal(a.uris.length, 3);
  t.equal(f.address('other', units[1]!), null, 'another host reaches nothing through h\'s listeners');

  const c = await RawNbd.connect(socket, '0/0');
  t.equal(f.sessions('h'), 1, 'one session of h');
  t.equal(f.sessions('other'), 0);
  await c.write(0, Buffer.alloc(512, 7));
  t.same(await c.read(0, 512), Buffer.alloc(512, 7), 'served through the unit');
  c.close();

  await f.hostRemoved!('h');
  t.equal(f.address('h', units[0]!)!.uris.length, 1, 'only the shared listener is left');
  await t.rejects(
    new Promise((res, rej) => net.createConnection(socket).once('connect', res).once('error', rej)),
    'the host socket no longer accepts',
  );
});

t.test('revoke() ends the host\'s sessions on that unit only; revoke(host, null) ends them all', async (t) => {
  const { nbd, units, dir } = await setup(t);
  const socket = path.join(dir, 'h.sock');
  await nbd.hostAdded('h', { socket, nbdTcp: null });
  const on0 = await RawNbd.connect(socket, '0/0');
  const on1 = await RawNbd.connect(socket, '0/1');
  const on1b = await RawNbd.connect(socket, '0/1');
  t.equal(nbd.sessions('h'), 3);
  await nbd.revoke('h', units[0]!);
  t.equal(await closed(on0), 'closed', 'the session on the revoked unit is closed');
  t.equal(await closed(on1), 'served', 'a session on another unit goes on');
  await nbd.revoke('other', null);
  t.equal(await closed(on1b), 'served', 'revoking another host touches nothing of h');
  t.equal(nbd.sessions('h'), 2);
  await nbd.revoke('h', null);
  t.equal(await closed(on1), 'closed', 'all of the host\'s sessions end');
  t.equal(await closed(on1b), 'closed');
  t.equal(nbd.sessions('h'), 0);
});

t.test('the manager drives its frontends: host listeners, namespace URIs, revoke on unmap', async (t) => {
  const { m } = await startManager(t);
  m.createFarm('f');
  await m.createArray('a0', 64 * MiB);
  await m.createHost({ name: 'h', farm: 'f' });
  m.createVolume({ name: 'v', size: 8 * MiB, farm: 'f', configure: true });
  const b = m.bind({ volume: 'v', host: 'h', target: 0, lun: 0, map: true });
  const socket = m.hostSocketPath('h');
  const ns = m.namespaceView('h') as { units: { exportName: string; uris: string[] }[] };
  t.same(ns.units.map((u) => [u.exportName, u.uris]), [['0/0', [`nbd+unix:///0/0?socket=${socket}`]]], 'URIs from the NBD frontend');
  const c = await RawNbd.connect(socket, '0/0');
  await c.write(0, Buffer.alloc(512, 1));
  await m.unmap(b.id);
  t.equal(await closed(c), 'closed', 'unmap revoked the open session');
});
