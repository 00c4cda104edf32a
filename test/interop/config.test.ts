import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { M, ioOk, qemuIo } from '../helpers/api.js';
import { cli, cliOk } from '../helpers/cli.js';
import { serveRefused, startServer } from '../helpers/server.js';
import { requireTools, run } from '../helpers/tools.js';

requireTools('qemu-io');

/** What hosts see: every host's units with identity. */
async function namespaces(s: Awaited<ReturnType<typeof startServer>>): Promise<unknown> {
  const { hosts } = await s.call('GET', '/v1/hosts');
  const out: Record<string, unknown> = {};
  for (const h of hosts) {
    const ns = await s.call('GET', `/v1/hosts/${h.name}/namespace`);
    out[h.name] = ns.units.map((u: any) => ({ unit: u.exportName, volume: u.volume, size: u.size, serial: u.serial, naa: u.naa, readOnly: u.readOnly }));
  }
  return out;
}

const stable = (doc: any): any => ({ ...doc, exportedAt: undefined });

t.test('config export → wipe the control database → import: same namespaces, same data', async (t) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-config-'));
  t.teardown(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const saved = path.join(dataDir, 'saved', 'blockgate.json');
  fs.mkdirSync(path.dirname(saved));

  let s = await startServer(t, { dataDir, demo: false });
  const api = s.call.bind(s);
  await api('POST', '/v1/farms', { name: 'acme' });
  await api('POST', '/v1/farms', { name: 'other' });
  await api('POST', '/v1/arrays', { name: 'a0', size: '64M' });
  await api('POST', '/v1/arrays', { name: 'a1', size: '64M', qualityClass: 'performance' });
  await api('POST', '/v1/hosts', { name: 'h1', farm: 'acme' });
  await api('POST', '/v1/hosts', { name: 'h2', farm: 'other' });
  // A meta volume across both arrays, mapped at h1 0/0; a read-only unit on h2; one left allocated; one freed.
  await api('POST', '/v1/volumes', { name: 'boot', size: '96M', farm: 'acme', layout: [{ array: 'a0', size: '48M' }, { array: 'a1', size: '48M' }] });
  await api('POST', '/v1/bindings', { volume: 'boot', host: 'h1', target: 0, lun: 0 });
  await api('POST', '/v1/volumes', { name: 'data', size: '8M', farm: 'other' });
  const b2 = await api('POST', '/v1/bindings', { volume: 'data', host: 'h2', target: 1, lun: 0, map: false });
  await api('POST', '/v1/volumes', { name: 'spare', size: '4M', configure: false });
  await api('POST', '/v1/vms', { name: 'vm1', host: 'h1', bindings: [1] });
  await api('POST', `/v1/bindings/${b2.id}/map`);

  t.ok(ioOk(await qemuIo(s, 'h1', '0/0', 'write -P 0xa1 0 1M', `write -P 0xb2 ${48 * M - 4096} 8192`, 'flush')));
  t.ok(ioOk(await qemuIo(s, 'h2', '1/0', 'write -P 0xc3 4096 4096')));
  await api('POST', `/v1/bindings/${b2.id}/unmap`);
  await api('DELETE', `/v1/bindings/${b2.id}`);
  await api('POST', '/v1/bindings', { volume: 'data', host: 'h2', target: 1, lun: 0, mode: 'read-only' });

  const before = await namespaces(s);
  const exp = await cliOk(s, ['config', 'export', '--output', saved]);
  t.match(exp.stderr, /saved 3 volumes, 2 hosts, 2 bindings, 2 arrays/);
  const doc = JSON.parse(fs.readFileSync(saved, 'utf8'));
  t.equal(doc.kind, 'blockgate-config');
  t.same(fs.readdirSync(path.dirname(saved)), ['blockgate.json'], 'no temporary file left behind');
  // stdout export is the same document.
  t.same(stable((await cliOk(s, ['config', 'export'])).json), stable(doc));

  // Wipe the control database and the saved copy beside it; the array files stay.
  await s.stop();
  for (const f of ['blockgate.db', 'blockgate.db-wal', 'blockgate.db-shm', 'blockgate.config.json']) fs.rmSync(path.join(dataDir, f), { force: true });
  // A plain start would be a new appliance over the old arrays: refused, and told how to restore.
  const plain = await serveRefused(dataDir, ['--no-demo']);
  t.notOk(plain.started);
  t.equal(plain.code, 4, plain.output);
  t.match(plain.output, `blockgate serve --data-dir ${dataDir} --restore FILE`);

  // A document that does not validate is refused whole (exit 2), and nothing is written.
  const bad = path.join(dataDir, 'saved', 'bad.json');
  fs.writeFileSync(bad, JSON.stringify({ ...doc, volumes: [{ ...doc.volumes[0], extents: [{ array: 'nope', offset: 0, length: 1 }] }] }));
  const refused = await serveRefused(dataDir, ['--restore', bad]);
  t.equal(refused.code, 2, refused.output);
  t.match(refused.output, /unknown array 'nope'/);
  fs.writeFileSync(bad, JSON.stringify({ ...doc, farms: 'x' }));
  t.equal((await serveRefused(dataDir, ['--restore', bad])).code, 2);
  t.equal((await serveRefused(dataDir, ['--no-demo'])).code, 4, 'nothing was written: a plain start still refuses');

  s = await startServer(t, { dataDir, demo: false, args: ['--restore', saved] });
  // Through the API too, a document that does not validate is refused whole (exit 2).
  t.equal((await cli(s, ['config', 'import', bad])).code, 2);
  t.same(await namespaces(s), before, 'same units, volumes, serials and NAAs');
  t.same(stable((await cliOk(s, ['config', 'export'])).json), stable(doc), 'export after import is the same document');

  // The same bytes are served, across the extent boundary too; read-only stays read-only.
  t.ok(ioOk(await qemuIo(s, 'h1', '0/0', 'read -P 0xa1 0 1M', `read -P 0xb2 ${48 * M - 4096} 8192`)));
  t.ok(ioOk(await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0xc3 4096 4096', s.unixUri('h2', '1/0')])), 'read-only unit serves the data');
  t.notOk(ioOk(await qemuIo(s, 'h2', '1/0', 'write -P 0 0 4096')), 'read-only unit refuses writes');
  t.equal((await s.call('GET', '/v1/volumes/spare')).state, 'allocated');
  t.equal((await s.call('GET', '/v1/vms/vm1')).bindings.length, 1);

  // A second import into a configured appliance is refused; new volumes get new serials.
  const again = await cli(s, ['config', 'import', saved]);
  t.equal(again.code, 4);
  t.match(again.stderr, /only into an empty appliance/);
  const fresh = await s.call('POST', '/v1/volumes', { name: 'fresh', size: '4M', farm: 'acme' });
  t.notOk(doc.volumes.some((v: any) => v.serial === fresh.serial || v.naa === fresh.naa), 'serials are never reused');

  // And it survives a restart like any other state.
  await s.stop();
  s = await startServer(t, { dataDir, demo: false });
  const after = (await namespaces(s)) as Record<string, unknown>;
  t.same(after, before);
});
