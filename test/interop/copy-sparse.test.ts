import fs from 'node:fs';
import t from 'tap';
import { M, ioOk, qemuIo, waitJob } from '../helpers/api.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { requireTools, runOk } from '../helpers/tools.js';

requireTools('qemu-io', 'nbdinfo');

const G = 1024 * M;

interface MapEntry {
  offset: number;
  length: number;
  type: number;
  description: string;
}

async function map(s: TestServer, unit: string): Promise<{ offset: number; length: number; description: string }[]> {
  const r = await runOk('nbdinfo', ['--map', '--json', s.unixUri('h', unit)], { timeoutMs: 60_000 });
  return (JSON.parse(r.stdout) as MapEntry[]).map((e) => ({ offset: e.offset, length: e.length, description: e.description }));
}

t.test('a copy of a 2 GiB volume with 100 MiB written moves 100 MiB; holes stay holes, zeroes stay zeroes', async (t) => {
  const s = await startServer(t, { demo: false });
  const api = s.call.bind(s);
  await api('POST', '/v1/farms', { name: 'f' });
  await api('POST', '/v1/arrays', { name: 'a0', size: '5G' });
  await api('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  await api('POST', '/v1/volumes', { name: 'src', size: '2G', farm: 'f' });
  const b = await api('POST', '/v1/bindings', { volume: 'src', host: 'h', target: 0, lun: 0 });
  // 100 MiB of data in two runs, and 4 MiB of allocated zeroes (write -z without -u keeps them allocated).
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0x5a 0 50M', 'write -P 0x5b 1G 50M', 'write -z 1536M 4M', 'flush')));
  const srcMap = await map(s, '0/0');
  await api('POST', `/v1/bindings/${b.id}/unmap`);
  t.equal((await api('GET', '/v1/volumes/src')).state, 'unmapped', 'the source is not being written');
  await api('POST', '/v1/volumes', { name: 'dst', size: '2G', farm: 'f' });
  t.equal((await api('GET', '/v1/volumes/dst')).state, 'configured', 'a fresh volume is a target');

  const r = await api('POST', '/v1/volumes/src/copy', { targets: ['dst'] });
  const j = await waitJob(s, r.job.id);
  t.equal(j.state, 'succeeded', JSON.stringify(j.error));
  t.equal(j.result.bytes, 2 * G, 'the whole logical volume is copied');
  t.equal(j.result.moved, 100 * M, 'only the 100 MiB of data moved');
  t.equal(j.result.zeroed, 4 * M, 'allocated zeroes became zero marks, not bytes');
  t.equal(j.result.verified, true);
  t.match(j.progress, { done: 100 * M, total: 100 * M }, 'progress counts the allocated bytes to move');
  const dst = await api('GET', '/v1/volumes/dst');
  t.equal(dst.allocated, 104 * M, "the target's allocation is the source's");
  t.equal(dst.dirty, true, 'the target holds data');

  await api('POST', '/v1/bindings', { volume: 'dst', host: 'h', target: 1, lun: 0 });
  t.same(await map(s, '1/0'), srcMap, 'nbdinfo --map of the copy is the source map');
  t.ok(
    ioOk(await qemuIo(s, 'h', '1/0', 'read -P 0x5a 0 50M', 'read -P 0 50M 1M', 'read -P 0x5b 1G 50M', 'read -P 0 1536M 4M', 'read -P 0 2047M 1M')),
    'qemu-io reads the data and zeroes where there were none',
  );

  // Image from the volume: a sparse file holding only the data.
  const c = await api('POST', '/v1/images', { name: 'img', fromVolume: 'src' });
  const cj = await waitJob(s, c.job.id);
  t.equal(cj.state, 'succeeded', JSON.stringify(cj.error));
  t.equal(cj.result.moved, 100 * M, 'the capture moved the data only');
  const img = (await api('GET', '/v1/images')).images.find((i: { name: string }) => i.name === 'img');
  const st = fs.statSync(img.path);
  t.equal(st.size, 2 * G, 'the image is the volume size');
  t.ok(st.blocks * 512 < 200 * M, `and sparse (${st.blocks * 512} bytes on disk)`);
  t.notOk(fs.existsSync(`${img.path}.alloc`), 'no allocation sidecar is left beside the image');
});

t.test('scrub progress is in the volume bytes, not twice them', async (t) => {
  const s = await startServer(t, { demo: false });
  const api = s.call.bind(s);
  await api('POST', '/v1/farms', { name: 'f' });
  await api('POST', '/v1/arrays', { name: 'a0', size: '256M' });
  await api('POST', '/v1/volumes', { name: 'v', size: '96M', farm: 'f' });
  await api('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  const b = await api('POST', '/v1/bindings', { volume: 'v', host: 'h', target: 0, lun: 0, map: false });
  await api('DELETE', `/v1/bindings/${b.id}`);
  const r = await api('POST', '/v1/volumes/v/scrub', { pattern: 0 });
  const j = await waitJob(s, r.job.id);
  t.equal(j.state, 'succeeded');
  t.match(j.progress, { done: 96 * M, total: 96 * M }, 'total is the volume size');
});
