import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { basicAppliance, MiB, startApi } from '../helpers/api-app.js';
import { freePort } from '../helpers/ports.js';
import { within } from '../helpers/wait.js';

// Every noun can be deleted once nothing uses it; while something does, 409 says what.

t.test('farms: delete refused while a host or volume belongs to it', async (t) => {
  const { call } = await startApi(t);
  await basicAppliance(call);
  let r = await call('DELETE', '/v1/farms/f');
  t.equal(r.status, 409);
  t.equal(r.body.error.code, 'CONFLICT');
  t.match(r.body.error.message, /hosts h/);
  t.equal((await call('DELETE', '/v1/hosts/h')).status, 204);
  await call('POST', '/v1/volumes', { name: 'v', size: '4M', farm: 'f' });
  r = await call('DELETE', '/v1/farms/f');
  t.equal(r.status, 409);
  t.match(r.body.error.message, /volumes v/);
  await call('POST', '/v1/volumes/v/break');
  t.equal((await call('POST', '/v1/volumes/v/deallocate')).status, 200);
  t.equal((await call('DELETE', '/v1/farms/f')).status, 204);
  t.equal((await call('GET', '/v1/farms')).body.farms.filter((f: { name: string }) => f.name === 'f').length, 0);
  t.equal((await call('DELETE', '/v1/farms/f')).status, 404);
});

t.test('arrays: delete refused while a volume has space on it; files removed after', async (t) => {
  const { call, m } = await startApi(t);
  await basicAppliance(call);
  await call('POST', '/v1/volumes', { name: 'v', size: '4M', farm: 'f' });
  let r = await call('DELETE', '/v1/arrays/a0');
  t.equal(r.status, 409);
  t.match(r.body.error.message, /volumes v/);
  const file = (await call('GET', '/v1/arrays/a0')).body.path as string;
  t.ok(fs.existsSync(file));
  await call('POST', '/v1/volumes/v/break');
  await call('POST', '/v1/volumes/v/deallocate');
  r = await call('DELETE', '/v1/arrays/a0');
  t.equal(r.status, 204, JSON.stringify(r.body));
  for (const f of [file, `${file}.alloc`, `${file}.id`]) t.notOk(fs.existsSync(f), `${path.basename(f)} removed`);
  t.equal((await call('GET', '/v1/arrays/a0')).status, 404);
  t.equal(m.dataPath.store.listArrays().length, 0, 'the store holds it no more');
  // Discovery would adopt a file left in DATA/arrays: nothing comes back.
  await call('POST', '/v1/discovery');
  t.equal((await call('GET', '/v1/arrays')).body.arrays.length, 0);
  t.equal((await call('POST', '/v1/arrays', { name: 'a0', size: '8M' })).status, 201, 'the name can be used again');
});

t.test('hosts: delete closes the listeners, refused while bound or in a VM', async (t) => {
  const { call, m, dataDir } = await startApi(t);
  await basicAppliance(call);
  const port = await freePort();
  t.equal((await call('POST', '/v1/hosts', { name: 'h2', farm: 'f', nbdTcp: `127.0.0.1:${port}` })).status, 201);
  await call('POST', '/v1/volumes', { name: 'v', size: '4M', farm: 'f' });
  const b = (await call('POST', '/v1/bindings', { volume: 'v', host: 'h2', target: 0, lun: 0 })).body;
  await call('POST', '/v1/vms', { name: 'vm', host: 'h2', bindings: [b.id] });
  await call('POST', '/v1/hosts/h2/initiators', { iqn: 'iqn.2026-11.test:h2' });
  await call('POST', '/v1/hosts/h2/chap', {});
  let r = await call('DELETE', '/v1/hosts/h2');
  t.equal(r.status, 409);
  t.match(r.body.error.message, /bindings at 0\/0 and VMs vm/);
  await call('DELETE', '/v1/vms/vm');
  await call('POST', `/v1/bindings/${b.id}/unmap`);
  await call('DELETE', `/v1/bindings/${b.id}`);
  const sock = path.join(dataDir, 'sockets', 'h2.sock');
  t.ok(fs.existsSync(sock));
  // An open connection on the host's socket ends with the host.
  const c = net.connect(sock);
  await within('greeting on the host socket', new Promise((res) => c.once('data', res)));
  const closed = new Promise((res) => c.once('close', res));
  r = await call('DELETE', '/v1/hosts/h2');
  t.equal(r.status, 204, JSON.stringify(r.body));
  await within('close of the host socket', closed);
  t.notOk(fs.existsSync(sock), 'its unix socket is gone');
  t.notOk(fs.existsSync(path.join(dataDir, 'iscsi', 'chap', 'h2.json')), 'its CHAP secrets are gone');
  t.equal(m.iscsi.initiator('iqn.2026-11.test:h2'), null, 'its initiator name is nobody now');
  const refused = await new Promise<string>((res) => net.connect(port, '127.0.0.1').once('error', (e: NodeJS.ErrnoException) => res(e.code ?? '')).once('connect', () => res('connected')));
  t.equal(refused, 'ECONNREFUSED', 'its TCP listener is closed');
  t.equal((await call('GET', '/v1/hosts/h2')).status, 404);
  t.equal((await call('POST', '/v1/hosts', { name: 'h2', farm: 'f', nbdTcp: `127.0.0.1:${port}` })).status, 201, 'the name and the port can be used again');
});

t.test('hosts: the shared listener forgets a deleted default host', async (t) => {
  const { call, m } = await startApi(t);
  await basicAppliance(call);
  m.setSetting('nbd.default_host', 'h');
  t.equal((await call('DELETE', '/v1/hosts/h')).status, 204);
  t.equal(m.setting('nbd.default_host'), undefined);
});

t.test('hosts: listener addresses are validated; PATCH moves the listener', async (t) => {
  const { call } = await startApi(t);
  await basicAppliance(call);
  for (const [addr, why] of [
    ['', /empty/],
    ['   ', /empty/],
    ['127.0.0.1', /HOST:PORT/],
    ['127.0.0.1:0', /port must be 1-65535/],
    ['127.0.0.1:65536', /HOST:PORT/],
    ['0.0.0.0:10900', /every network/],
    ['[::]:10900', /every network/],
    ['999.1.1.1:10900', /not an IPv4/],
    ['bad_host!:10900', /not an IPv4/],
    ['[nonsense]:10900', /not an IPv4/],
    ['-x.example:10900', /not an IPv4/],
  ] as const) {
    const r = await call('POST', '/v1/hosts', { name: 'h2', farm: 'f', nbdTcp: addr });
    t.equal(r.status, 400, `'${addr}' refused`);
    t.match(r.body.error.message, why, `'${addr}': ${r.body.error.message}`);
  }
  t.equal((await call('GET', '/v1/hosts/h2')).status, 404, 'nothing was created');
  const p1 = await freePort();
  let r = await call('POST', '/v1/hosts', { name: 'h2', farm: 'f', nbdTcp: `localhost:${p1}` });
  t.equal(r.status, 201, 'a host name is fine');
  const p2 = await freePort();
  r = await call('PATCH', '/v1/hosts/h2', { nbdTcp: `127.0.0.1:${p2}` });
  t.equal(r.status, 200, JSON.stringify(r.body));
  t.equal(r.body.nbd.tcp, `127.0.0.1:${p2}`);
  t.equal((await call('PATCH', '/v1/hosts/h2', { nbdTcp: '0.0.0.0:1' })).status, 400);
  // A port someone else holds: refused, and the old listener still serves.
  const blocker = net.createServer().listen(0, '127.0.0.1');
  await new Promise((res) => blocker.once('listening', res));
  t.teardown(() => blocker.close());
  r = await call('PATCH', '/v1/hosts/h2', { nbdTcp: `127.0.0.1:${(blocker.address() as net.AddressInfo).port}` });
  t.equal(r.status, 409);
  t.match(r.body.error.message, /keeps 127\.0\.0\.1/);
  t.equal((await call('GET', '/v1/hosts/h2')).body.nbd.tcp, `127.0.0.1:${p2}`);
  const c = net.connect(p2, '127.0.0.1');
  await within('greeting on the TCP listener', new Promise((res, rej) => c.once('data', res).once('error', rej)));
  c.destroy();
  r = await call('PATCH', '/v1/hosts/h2', { nbdTcp: null });
  t.equal(r.body.nbd.tcp, null);
  t.equal((await call('PATCH', '/v1/hosts/h2', { socketMode: 1 })).status, 400, 'unknown fields are refused');
});

t.test('images: delete refused while a copy reads it; the file stays', async (t) => {
  const { call, m, dataDir } = await startApi(t);
  await basicAppliance(call);
  const file = path.join(dataDir, 'images', 'os.img');
  fs.writeFileSync(file, Buffer.alloc(MiB, 7));
  t.equal((await call('POST', '/v1/images', { name: 'os', path: 'images/os.img' })).status, 201);
  await call('POST', '/v1/volumes', { name: 'v', size: '4M', farm: 'f' });
  // A copy that reads the image, waiting in the queue (written as the queue writes it, without waking the queue).
  const params = JSON.stringify({ volume: 'v', volumeId: m.volume('v').id, image: 'os', imageId: m.bulk.image('os').id, verify: true });
  const job = Number(m.db.prepare("INSERT INTO jobs (kind, state, params, created_at) VALUES ('image-copy', 'queued', ?, 'now')").run(params).lastInsertRowid);
  let r = await call('DELETE', '/v1/images/os');
  t.equal(r.status, 409);
  t.match(r.body.error.message, new RegExp(`job ${job}`));
  m.db.prepare("UPDATE jobs SET state = 'cancelled' WHERE id = ?").run(job);
  r = await call('DELETE', '/v1/images/os');
  t.equal(r.status, 204, JSON.stringify(r.body));
  t.ok(fs.existsSync(file), 'the file is the admin\'s and stays');
  t.equal((await call('GET', '/v1/images')).body.images.length, 0);
  t.equal((await call('DELETE', '/v1/images/os')).status, 404);
});

t.test("hosts: the unix socket's owner, group and mode are kept and applied whenever it is made", async (t) => {
  const { call, m, dataDir } = await startApi(t);
  await basicAppliance(call);
  const sock = path.join(dataDir, 'sockets', 'h.sock');
  t.equal(fs.statSync(sock).mode & 0o777, 0o660, 'default 0660');
  let r = await call('PATCH', '/v1/hosts/h', { socket: { mode: '0666' } });
  t.equal(r.status, 400, 'world access would give anyone the host identity');
  t.equal((await call('PATCH', '/v1/hosts/h', { socket: { mode: 'rw' } })).status, 400);
  const root = process.getuid?.() === 0;
  r = await call('PATCH', '/v1/hosts/h', { socket: { mode: '0640', ...(root ? { uid: 1, gid: 2 } : {}) } });
  t.equal(r.status, 200, JSON.stringify(r.body));
  t.same(r.body.nbd.socketAccess, { mode: '0640', uid: root ? 1 : null, gid: root ? 2 : null }, 'the host view shows what was set');
  const check = (what: string): void => {
    const st = fs.statSync(sock);
    t.equal(st.mode & 0o777, 0o640, `${what}: mode`);
    if (root) t.same([st.uid, st.gid], [1, 2], `${what}: owner and group`);
  };
  check('now');
  // The socket is made again when the host's listeners reopen (as at every start): the settings follow it.
  t.equal((await call('PATCH', '/v1/hosts/h', { nbdTcp: `127.0.0.1:${await freePort()}` })).status, 200);
  check('after the listeners reopened');
  t.match(JSON.parse(m.setting('host.h.socket')!), { mode: '0640' }, 'kept as a setting (saved with the configuration)');
  t.equal((await call('GET', '/v1/config')).body.settings['host.h.socket'], m.setting('host.h.socket'));
  await call('DELETE', '/v1/hosts/h');
  t.equal(m.setting('host.h.socket'), undefined, 'and forgotten with the host');
});
