import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startServer } from '../helpers/server.js';
import { fioStateArgs } from '../helpers/fio.js';
import { requireTools, run, runOk } from '../helpers/tools.js';

requireTools('nbdinfo', 'nbdcopy', 'qemu-img', 'qemu-io', 'fio');

const M = 1024 * 1024;

t.test('demo appliance: stock clients see the boot unit, restart keeps it', async (t) => {
  const s = await startServer(t);
  const info = JSON.parse((await runOk('nbdinfo', ['--json', s.tcpUri()])).stdout);
  const exp = info.exports[0];
  t.equal(exp['export-size'], 256 * M, 'demo boot volume is 256 MiB');
  t.match(exp.description, /serial=BG[0-9A-F]+ naa=3[0-9a-f]{15}/, 'description carries serial and NAA');
  t.equal(exp.can_flush, true);
  t.equal(exp.can_fua, true);
  t.equal(exp.can_multi_conn, true);
  t.equal(exp.block_size_preferred, 4096);
  t.equal(exp.block_size_maximum, 32 * M);

  const hosts = await s.call('GET', '/v1/hosts');
  t.same(hosts.hosts.map((h: { name: string }) => h.name), ['demo']);
  const ns = await s.call('GET', '/v1/hosts/demo/namespace');
  t.equal(ns.units.length, 1);
  t.equal(ns.units[0].volume, 'demo-boot');
  t.ok(ns.units[0].uris.includes(s.unixUri('demo', '0/0')), 'namespace lists the unix socket URI');
  t.ok(ns.units[0].uris.includes(`nbd://${s.nbd}/0/0`), 'and the TCP URI of the shared listener');
  t.ok((ns.units[0].uris as string[]).some((u) => u.startsWith(`iscsi://${s.iscsi}/`)), 'and the iSCSI URI (test/interop/iscsi-clients uses it)');
  for (const uri of (ns.units[0].uris as string[]).filter((u) => u.startsWith('nbd'))) {
    const r = await runOk('nbdinfo', ['--size', uri]);
    t.equal(r.stdout.trim(), String(256 * M), `listed URI works: ${uri}`);
  }

  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 4M 1M', s.unixUri()]);
  await s.stop();
  await s.start();
  t.equal((await s.call('GET', '/v1/volumes')).volumes.length, 1, 'restart creates nothing twice');
  await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x3c 4M 1M', s.unixUri()]);
  t.pass('data written before the restart reads back');
});

t.test('health needs no token; everything else does', async (t) => {
  const s = await startServer(t);
  const health = await s.request('GET', '/v1/health', undefined, null);
  t.equal(health.status, 200);
  t.equal(health.body.status, 'ok', 'health says the appliance is up');
  t.match(health.body.version, /^\d+\.\d+\.\d+/, 'with its version');
  t.match(health.body.appliance, /\S/, 'and its id');
  const r = await s.request('GET', '/v1/hosts', undefined, null);
  t.equal(r.status, 401);
  t.equal(r.body.error.code, 'UNAUTHORIZED');
  t.equal((await s.request('GET', '/v1/hosts', undefined, 'wrong')).status, 401);
  const bad = await s.request('POST', '/v1/volumes', { name: 'x', size: 'lots' });
  t.equal(bad.status, 400);
  t.match(bad.body.error.message, /size/);
  t.equal((await s.request('POST', '/v1/volumes', '{not json')).status, 400);
});

t.test('a second host has its own namespace and cannot reach the first host\'s units', async (t) => {
  const s = await startServer(t);
  await s.call('POST', '/v1/volumes', { name: 'demo-data', size: '16M', farm: 'default' });
  await s.call('POST', '/v1/bindings', { volume: 'demo-data', host: 'demo', target: 1, lun: 0 });
  await s.call('POST', '/v1/farms', { name: 'blue' });
  await s.call('POST', '/v1/hosts', { name: 'h2', farm: 'blue' });
  await s.call('POST', '/v1/volumes', { name: 'h2-boot', size: '16M', farm: 'blue' });
  await s.call('POST', '/v1/bindings', { volume: 'h2-boot', host: 'h2', target: 0, lun: 0 });

  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 64k', s.unixUri('demo', '0/0')]);
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 0 64k', s.unixUri('h2', '0/0')]);
  await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x11 0 64k', s.unixUri('demo', '0/0')]);
  await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x22 0 64k', s.unixUri('h2', '0/0')]);
  t.pass('0/0 is a different volume for each host');

  const list = await runOk('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${s.socket('h2')}`]);
  t.same(JSON.parse(list.stdout).exports.map((e: { 'export-name': string }) => e['export-name']), ['0/0'], 'h2 lists only its own unit');
  const demoList = await runOk('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${s.socket('demo')}`]);
  t.same(JSON.parse(demoList.stdout).exports.map((e: { 'export-name': string }) => e['export-name']).sort(), ['0/0', '1/0']);

  for (const name of ['1/0', 'demo-data', 'demo-boot', 'demo', 'demo/1/0', '../demo.sock', '1/0/']) {
    const r = await run('nbdinfo', [`nbd+unix:///${encodeURIComponent(name)}?socket=${s.socket('h2')}`]);
    t.not(r.code, 0, `h2 cannot open '${name}'`);
    t.match(r.stderr, /unknown|not found|No such file/i, `refused as an unknown export: ${r.stderr.trim()}`);
  }
  const bind = await s.request('POST', '/v1/bindings', { volume: 'demo-data', host: 'h2', target: 1, lun: 0 });
  t.equal(bind.status, 409, 'a volume of farm default cannot bind to a host of farm blue');
  t.equal(bind.body.error.code, 'CONFLICT');
  t.match(bind.body.error.message, /farm/, bind.body.error.message);
});

t.test('meta volume across three arrays: split requests, convert, copy, fio verify, restart', async (t) => {
  const s = await startServer(t);
  for (const a of ['m1', 'm2', 'm3']) await s.call('POST', '/v1/arrays', { name: a, size: '32M' });
  const vol = await s.call('POST', '/v1/volumes', {
    name: 'meta',
    size: '72M',
    farm: 'default',
    layout: [
      { array: 'm1', size: '24M' },
      { array: 'm2', size: '24M' },
      { array: 'm3', size: '24M' },
    ],
  });
  t.equal(vol.meta, true);
  t.same(vol.extents.map((e: { array: string }) => e.array), ['m1', 'm2', 'm3']);
  await s.call('POST', '/v1/bindings', { volume: 'meta', host: 'demo', target: 2, lun: 0 });
  const uri = s.unixUri('demo', '2/0');

  // 128 KiB straddling the m1/m2 boundary at 24 MiB, and the m2/m3 one at 48 MiB.
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 24512k 128k', '-c', 'write -P 0xa5 49088k 128k', uri]);
  await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 24512k 128k', '-c', 'read -P 0xa5 49088k 128k', uri]);
  const arrays = (await s.call('GET', '/v1/arrays')).arrays as { name: string; path: string }[];
  const file = (n: string): string => arrays.find((a) => a.name === n)!.path;
  const at = (n: string, off: number, len: number): Buffer => {
    const fd = fs.openSync(file(n), 'r');
    const b = Buffer.alloc(len);
    fs.readSync(fd, b, 0, len, off);
    fs.closeSync(fd);
    return b;
  };
  const e = vol.extents as { array: string; offset: number }[];
  t.ok(at('m1', e[0]!.offset + 24 * M - 64 * 1024, 64 * 1024).every((b) => b === 0x5a), 'first half landed at the end of m1');
  t.ok(at('m2', e[1]!.offset, 64 * 1024).every((b) => b === 0x5a), 'second half at the start of m2');
  t.ok(at('m3', e[2]!.offset, 64 * 1024).every((b) => b === 0xa5), 'and across m2/m3');

  const dir = s.dataDir;
  const src = path.join(dir, 'src.img');
  const img = Buffer.alloc(72 * M);
  crypto.randomFillSync(img, 0, 20 * M);
  crypto.randomFillSync(img, 40 * M, 20 * M);
  fs.writeFileSync(src, img);
  await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, uri]);
  const out = path.join(dir, 'out.img');
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, out]);
  await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, out]);
  await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri]);
  t.pass('qemu-img convert in and out, compare equal');

  const copied = path.join(dir, 'nbdcopy.img');
  await runOk('nbdcopy', [uri, copied]);
  t.ok(fs.readFileSync(copied).equals(img), 'nbdcopy out matches');
  fs.writeFileSync(src, Buffer.alloc(72 * M, 0x77));
  await runOk('nbdcopy', [src, uri]);
  await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri]);
  t.pass('nbdcopy in matches');

  await s.call('POST', '/v1/volumes', { name: 'fio', size: '64M', farm: 'default' });
  await s.call('POST', '/v1/bindings', { volume: 'fio', host: 'demo', target: 3, lun: 0 });
  const fioJson = path.join(dir, 'fio.json');
  const fioArgs = ['--name=verify', '--ioengine=nbd', `--uri=${s.unixUri('demo', '3/0')}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', '--size=64M', '--verify=crc32c', '--randseed=1234', '--output-format=json', `--output=${fioJson}`, ...fioStateArgs(dir)];
  const fio = async (extra: string): Promise<any> => {
    await runOk('fio', [...fioArgs, extra], { timeoutMs: 300_000 });
    return JSON.parse(fs.readFileSync(fioJson, 'utf8'));
  };
  const w = await fio('--do_verify=1');
  t.equal(w.jobs[0].error, 0, 'fio wrote and verified 64 MiB with no error');
  t.equal(w.jobs[0].write.io_bytes, 64 * M);

  await s.stop();
  await s.start();
  const r = await fio('--verify_only=1');
  t.equal(r.jobs[0].error, 0, 'after restart fio verifies the same 64 MiB');
  await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri]);
  await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x77 24512k 128k', uri]);
  t.pass('meta volume contents survive the restart');
});
