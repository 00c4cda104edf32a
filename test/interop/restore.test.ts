import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { M, ioOk, qemuIo } from '../helpers/api.js';
import { serveRefused, startServer, type TestServer } from '../helpers/server.js';
import { requireTools, run, runOk } from '../helpers/tools.js';

requireTools('qemu-io', 'qemu-img', 'nbdcopy');

/** Every mapped unit of every host, by volume name: (host, unit) to read it through. */
async function units(s: TestServer): Promise<Map<string, { host: string; unit: string; serial: string; naa: string }>> {
  const out = new Map<string, { host: string; unit: string; serial: string; naa: string }>();
  for (const h of (await s.call('GET', '/v1/hosts')).hosts) {
    for (const u of (await s.call('GET', `/v1/hosts/${h.name}/namespace`)).units) out.set(u.volume, { host: h.name, unit: u.exportName, serial: u.serial, naa: u.naa });
  }
  return out;
}

const dbFiles = ['blockgate.db', 'blockgate.db-wal', 'blockgate.db-shm'];

t.test('a lost control database: start refuses, restore brings every volume back byte for byte', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-restore-'));
  const refs = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-restore-refs-'));
  t.teardown(() => {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(refs, { recursive: true, force: true });
  });

  let s = await startServer(t, { dataDir: dir });
  const api = s.call.bind(s);
  await api('POST', '/v1/farms', { name: 'acme' });
  await api('POST', '/v1/arrays', { name: 'a1', size: '64M' });
  await api('POST', '/v1/hosts', { name: 'h1', farm: 'acme' });
  // A meta volume across the demo's array0 (after demo-boot) and a1.
  await api('POST', '/v1/volumes', { name: 'meta', size: '48M', farm: 'acme', layout: [{ array: 'array0', size: '16M' }, { array: 'a1', size: '32M' }] });
  await api('POST', '/v1/bindings', { volume: 'meta', host: 'h1', target: 0, lun: 0 });

  // Random data on both volumes, written by a stock client (nbdcopy --flush: acknowledged flushed before the crash below).
  const seed = path.join(refs, 'seed.img');
  fs.writeFileSync(seed, crypto.randomBytes(20 * M));
  await runOk('nbdcopy', ['--flush', seed, s.unixUri('h1', '0/0')]);
  t.ok(ioOk(await qemuIo(s, 'demo', '0/0', 'write -P 0xd1 0 3M', `write -P 0xd2 ${200 * M} 1M`, 'flush')));

  const before = await units(s);
  t.same([...before.keys()].sort(), ['demo-boot', 'meta']);
  for (const [vol, u] of before) await runOk('nbdcopy', [s.unixUri(u.host, u.unit), path.join(refs, `${vol}.img`)]);

  // A change acknowledged just before a crash is in the saved copy too.
  await api('POST', '/v1/volumes', { name: 'late', size: '4M', farm: 'acme' });
  await s.kill();
  t.ok(fs.existsSync(path.join(dir, 'blockgate.config.json')), 'a saved configuration lives beside the database');

  // The database is lost (zero length, then gone): every start refuses and says how to restore.
  fs.writeFileSync(path.join(dir, 'blockgate.db'), '');
  for (const f of dbFiles.slice(1)) fs.rmSync(path.join(dir, f), { force: true });
  const zero = await serveRefused(dir);
  t.notOk(zero.started, 'a zero-length database does not start a new appliance');
  t.equal(zero.code, 4);
  t.match(zero.output, `blockgate serve --data-dir ${dir} --restore`, 'says exactly how to restore');
  for (const f of dbFiles) fs.rmSync(path.join(dir, f), { force: true });
  const gone = await serveRefused(dir);
  t.notOk(gone.started, 'a missing database does not start a new appliance');
  t.equal(gone.code, 4);
  t.match(gone.output, '--restore');
  const noDemo = await serveRefused(dir, ['--no-demo']);
  t.notOk(noDemo.started, '--no-demo does not get around it either');

  s = await startServer(t, { dataDir: dir, args: ['--restore'] });
  const after = await units(s);
  t.same(after, before, 'same units, serials and NAAs');
  t.same(((await s.call('GET', '/v1/volumes')).volumes as { name: string }[]).map((v) => v.name).sort(), ['demo-boot', 'late', 'meta'], 'every volume, the demo not seeded again');
  for (const [vol, u] of after) {
    const r = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(refs, `${vol}.img`), s.unixUri(u.host, u.unit)]);
    t.equal(r.code, 0, `volume ${vol} reads back byte-identical\n${r.stdout}${r.stderr}`);
  }

  // A restored appliance restarts as any other.
  await s.stop();
  s = await startServer(t, { dataDir: dir });
  t.same(await units(s), before);
});

t.test('the demo is seeded only into an empty data directory', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-restore-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  let s = await startServer(t, { dataDir: dir, demo: false });
  await s.call('POST', '/v1/farms', { name: 'acme' });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '64M' });
  await s.stop();
  // Started later without --no-demo: the appliance is not empty, so no demo appears in it.
  s = await startServer(t, { dataDir: dir });
  t.same(((await s.call('GET', '/v1/farms')).farms as { name: string }[]).map((f) => f.name), ['acme']);
  t.same(((await s.call('GET', '/v1/arrays')).arrays as { name: string }[]).map((a) => a.name), ['a0']);
});
