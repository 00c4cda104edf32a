import t from 'tap';
import { startServer } from '../helpers/server.js';
import { requireTools, runOk } from '../helpers/tools.js';

// The interop matrix: what stock clients see and do against a real server.
// nbdinfo (flags, contexts, map), qemu-img map, qemu-io discard / write -z,
// nbdcopy sparse copy, nbdkit's nbd plugin as a proxy.

requireTools('nbdinfo', 'nbdcopy', 'qemu-img', 'qemu-io', 'nbdkit');

const MiB = 1024 * 1024;
const s = await startServer(t);
await s.call('POST', '/v1/volumes', { name: 'src', size: '64M' });
await s.call('POST', '/v1/volumes', { name: 'dst', size: '64M' });
await s.call('POST', '/v1/bindings', { volume: 'src', host: 'demo', target: 1, lun: 0 });
await s.call('POST', '/v1/bindings', { volume: 'dst', host: 'demo', target: 1, lun: 1 });
const boot = s.unixUri('demo', '0/0');
const src = s.unixUri('demo', '1/0');
const dst = s.unixUri('demo', '1/1');

interface MapEntry {
  offset: number;
  length: number;
  type: number;
}
const nbdMap = async (uri: string): Promise<MapEntry[]> =>
  (JSON.parse((await runOk('nbdinfo', ['--map', '--json', uri], { timeoutMs: 30_000 })).stdout) as MapEntry[]).map((e) => ({
    offset: e.offset,
    length: e.length,
    type: e.type,
  }));

t.test('nbdinfo --json: every capability and base:allocation', async (t) => {
  const info = JSON.parse((await runOk('nbdinfo', ['--json', boot])).stdout);
  const e = info.exports[0];
  for (const k of ['can_trim', 'can_zero', 'can_fast_zero', 'can_cache', 'can_df', 'can_multi_conn', 'can_fua', 'can_flush']) t.equal(e[k], true, k);
  t.equal(e.is_read_only, false);
  t.ok(e.contexts.includes('base:allocation'), 'base:allocation offered');
  t.equal(e.block_size_preferred, 4096);
  t.equal(e.block_size_maximum, 32 * MiB);
  t.match(e.description, /serial=BG[0-9A-F]+ naa=3[0-9a-f]+/);
  t.equal(info.structured, true);
});

t.test('nbdinfo --map and qemu-img map show the holes; qemu-io discard and write -z make them', async (t) => {
  await runOk('qemu-io', ['-f', 'raw', '-c', 'w -P 0xa1 0 1M', '-c', 'w -P 0xa2 4M 1M', '-c', 'w -P 0xa3 8M 2M', src]);
  t.same(await nbdMap(src), [
    { offset: 0, length: MiB, type: 0 },
    { offset: MiB, length: 3 * MiB, type: 3 },
    { offset: 4 * MiB, length: MiB, type: 0 },
    { offset: 5 * MiB, length: 3 * MiB, type: 3 },
    { offset: 8 * MiB, length: 2 * MiB, type: 0 },
    { offset: 10 * MiB, length: 54 * MiB, type: 3 },
  ]);
  // qemu-io: discard punches a hole, write -z (NO_HOLE by default) leaves zeroes allocated, -u lets it unmap.
  await runOk('qemu-io', ['-f', 'raw', '-c', 'discard 8M 512k', '-c', 'write -z 9M 512k', '-c', 'write -z -u 9728k 512k', src]);
  await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0 8M 512k', '-c', 'read -P 0xa3 8704k 512k', '-c', 'read -P 0 9M 1M', src]);
  const m = await nbdMap(src);
  const at = (off: number): number => m.find((e) => e.offset <= off && off < e.offset + e.length)!.type;
  t.equal(at(8 * MiB), 3, 'discarded range is a hole');
  t.equal(at(8 * MiB + 512 * 1024), 0, 'data between stays');
  t.equal(at(9 * MiB), 2, 'write -z: zero, allocated');
  t.equal(at(9 * MiB + 512 * 1024), 3, 'write -z -u: hole');

  const q = JSON.parse((await runOk('qemu-img', ['map', '--output=json', '-f', 'raw', src])).stdout) as { start: number; length: number; data: boolean; zero: boolean }[];
  const hole = q.find((e) => e.start === MiB)!;
  t.same([hole.length, hole.data, hole.zero], [3 * MiB, false, true], 'qemu-img map: hole after the first MiB');
  t.ok(q.find((e) => e.start === 0 && e.data && !e.zero), 'qemu-img map: data at 0');
});

t.test('nbdcopy keeps a sparse copy sparse, and it compares equal', async (t) => {
  await runOk('nbdcopy', [src, dst], { timeoutMs: 60_000 });
  const dataOf = (m: MapEntry[]): number => m.filter((e) => (e.type & 2) === 0).reduce((n, e) => n + e.length, 0);
  const srcData = dataOf(await nbdMap(src));
  const dstData = dataOf(await nbdMap(dst));
  t.ok(srcData > 0 && srcData <= 4 * MiB, `source holds ${srcData} data bytes`);
  t.ok(dstData <= srcData, `destination holds ${dstData} data bytes, no more than the source`);
  await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, dst], { timeoutMs: 60_000 });
});

t.test('nbdkit nbd plugin as a proxy in front of blockgate', async (t) => {
  const script = [
    'nbdinfo --json "$uri" | grep -q "\\"can_multi_conn\\": true"',
    'qemu-io -f raw -c "w -P 0x77 32M 128k" -c "r -P 0x77 32M 128k" -c "w -z 33M 64k" -c "discard 34M 64k" -c flush "$uri"',
    'nbdinfo --map "$uri" | grep -q "hole,zero"',
  ].join(' && ');
  await runOk('nbdkit', ['-U', '-', '--exit-with-parent', 'nbd', `uri=${src}`, '--run', script], { timeoutMs: 60_000 });
  // Read back directly, not through the proxy.
  await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x77 32M 128k', '-c', 'read -P 0 33M 64k', src]);
  t.pass('proxied writes, zeroes and trims reached the volume');
});
