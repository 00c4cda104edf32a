import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { startServer } from '../helpers/server.js';
import { requireTools, run, runOk } from '../helpers/tools.js';
import { CMD, WireClient } from '../helpers/nbd-wire.js';
import { BLOCK, Writer } from '../helpers/writer.js';
import { listExports } from '../helpers/api.js';
import { cliOk } from '../helpers/cli.js';

// Protocol switching against a real `blockgate serve` with stock clients: a
// binding is served only over its protocol; a switch under a running NBD
// writer ends that writer's session, refuses its reconnect, and every write
// it saw acknowledged reads back over iSCSI (qemu-img); the host's other
// unit keeps its session; and back again, iSCSI → NBD.

requireTools('iscsi-readcapacity16', 'qemu-img', 'qemu-io', 'qemu-iscsi', 'nbdinfo');

const MiB = 1024 * 1024;
const IQN = 'iqn.2026-01.test:switch-a';

const s = await startServer(t, { demo: false });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-switch-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

await s.call('POST', '/v1/farms', { name: 'f' });
await s.call('POST', '/v1/arrays', { name: 'a0', size: '64M' });
await s.call('POST', '/v1/hosts', { name: 'a', farm: 'f' });
await s.call('POST', '/v1/hosts/a/initiators', { iqn: IQN });
await s.call('POST', '/v1/volumes', { name: 'v0', size: '16M', farm: 'f' });
await s.call('POST', '/v1/volumes', { name: 'v1', size: '16M', farm: 'f' });
const b0 = await s.call('POST', '/v1/bindings', { volume: 'v0', host: 'a', target: 0, lun: 0, protocol: 'nbd' });
const b1 = await s.call('POST', '/v1/bindings', { volume: 'v1', host: 'a', target: 0, lun: 1 });

const iscsiOpts = (lun: number): string => {
  const i = s.iscsi.lastIndexOf(':');
  return `driver=iscsi,transport=tcp,portal=${s.iscsi.slice(0, i)}:${s.iscsi.slice(i + 1)},target=iqn.2026-11.io.blockgate:a.t0,lun=${lun},initiator-name=${IQN}`;
};

/** Which of LUNs 0 and 1 host a can use over iSCSI (READ CAPACITY 16 through libiscsi's tool). */
async function iscsiLuns(): Promise<number[]> {
  const out: number[] = [];
  for (const lun of [0, 1]) {
    const r = await run('iscsi-readcapacity16', ['-i', IQN, `iscsi://${s.iscsi}/iqn.2026-11.io.blockgate:a.t0/${lun}`], { timeoutMs: 30_000 });
    if (r.code === 0 && /Total size:/.test(r.stdout)) out.push(lun);
  }
  return out;
}

/** The unit's bytes as read over iSCSI by qemu-img (a stock initiator). */
async function readOverIscsi(lun: number, name: string): Promise<Buffer> {
  const out = path.join(tmp, name);
  await runOk('qemu-img', ['convert', '--image-opts', iscsiOpts(lun), '-O', 'raw', out], { timeoutMs: 120_000 });
  return fs.readFileSync(out);
}

async function nbdSession(unit: string): Promise<WireClient> {
  return (await WireClient.connect({ path: s.socket('a') })).open(unit);
}

async function switchTo(id: number, protocol: string): Promise<any> {
  return s.call('POST', `/v1/bindings/${id}/switch`, { protocol });
}

t.test('a binding is served only over its protocol; the namespace and descriptor say which', async (t) => {
  t.equal(b0.protocol, 'nbd');
  t.equal(b1.protocol, 'both', "the host's default: it speaks both");
  t.same(await listExports(s, 'a'), ['0/0', '0/1'], 'NBD lists both units');
  t.same(await iscsiLuns(), [1], 'iSCSI reports only the unit served over both');
  const ns = await s.call('GET', '/v1/hosts/a/namespace');
  const [u0, u1] = ns.units;
  t.equal(u0.protocol, 'nbd');
  t.same(u0.descriptor.addresses.map((a: { protocol: string }) => a.protocol), ['nbd']);
  t.equal(u1.protocol, 'both');
  t.same(u1.descriptor.addresses.map((a: { protocol: string }) => a.protocol), ['nbd', 'iscsi']);
  const v0 = await s.call('GET', '/v1/volumes/v0');
  t.match(u0.descriptor, { host: 'a', target: 0, lun: 0, volume: { name: 'v0', serial: v0.serial, naa: v0.naa } });
  t.equal(u0.descriptor.addresses[0].credential.kind, 'unix-socket');
  const r = await run('qemu-io', ['--image-opts', iscsiOpts(0), '-c', 'read 0 4k'], { timeoutMs: 30_000 });
  t.not(r.code === 0 && /read 4096\/4096/.test(r.stdout), true, 'the NBD-only unit cannot be read over iSCSI');
  const bad = await s.request('POST', `/v1/bindings/${b0.id}/switch`, { protocol: 'fc' });
  t.equal(bad.status, 400);
});

t.test('switch NBD → iSCSI under a running writer: its session ends, reconnect is refused, acknowledged writes read back over iSCSI, the other unit is untouched', async (t) => {
  const other = await nbdSession('0/1');
  const mark = crypto.randomBytes(BLOCK);
  t.equal((await other.request(CMD.WRITE, 0, BLOCK, 0, mark)).error, 0);
  const w = new Writer(await nbdSession('0/0'));
  await w.reached(50);
  const sw = await switchTo(b0.id, 'iscsi');
  await w.done;
  t.ok(w.error, `the writer's session ended with an error (${w.error})`);
  t.ok(w.count >= 50);
  t.match(sw, { from: 'nbd', binding: { id: b0.id, protocol: 'iscsi' } });
  t.match(sw.descriptor, { host: 'a', target: 0, lun: 0, protocol: 'iscsi', volume: { name: 'v0' } });
  t.equal(sw.descriptor.addresses.length, 1);
  t.match(sw.descriptor.addresses[0], { protocol: 'iscsi', portal: s.iscsi, targetName: 'iqn.2026-11.io.blockgate:a.t0', lun: 0, credential: { kind: 'initiator-name', ref: IQN } });
  t.ok(sw.pauseMs >= 0, `I/O held for ${sw.pauseMs} ms`);
  // A's NBD reconnect to the unit is refused; the unit is gone from its NBD list.
  const again = await run('nbdinfo', ['--json', s.unixUri('a', '0/0')], { timeoutMs: 30_000 });
  t.not(again.code, 0, 'NBD reconnect refused');
  t.same(await listExports(s, 'a'), ['0/1']);
  t.same(await iscsiLuns(), [0, 1]);
  w.check(t, await readOverIscsi(0, 'after-switch.raw'), 'over iSCSI after the switch');
  // The other unit's NBD session was not touched.
  const r = await other.request(CMD.READ, 0, BLOCK);
  t.equal(r.error, 0, 'the other unit still answers on its session');
  t.ok(WireClient.readBytes(r, 0, BLOCK).equals(mark));
  other.sock.destroy();
});

t.test('switch iSCSI → NBD: an iSCSI writer (qemu-io) then NBD reads its bytes; the LUN leaves iSCSI', async (t) => {
  await runOk('qemu-io', ['--image-opts', iscsiOpts(0), '-c', 'write -P 0x3c 1M 1M'], { timeoutMs: 60_000 });
  const sw = await switchTo(b0.id, 'nbd');
  t.match(sw, { from: 'iscsi', binding: { protocol: 'nbd' } });
  t.same(sw.descriptor.addresses.map((a: { protocol: string }) => a.protocol), ['nbd']);
  t.same(await iscsiLuns(), [1], 'the LUN left iSCSI');
  const r = await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x3c 1M 1M', s.unixUri('a', '0/0')], { timeoutMs: 60_000 });
  t.notMatch(r.stdout, /Pattern verification failed/);
  t.match(r.stdout, /read 1048576\/1048576 bytes/);
});

t.test('a switch the host cannot follow is refused and changes nothing; metrics count switches and pauses', async (t) => {
  await s.call('PUT', '/v1/hosts/a/protocols', { protocols: ['nbd'] });
  const r = await s.request('POST', `/v1/bindings/${b0.id}/switch`, { protocol: 'iscsi' });
  t.equal(r.status, 409);
  t.match(r.body.error.message, /does not speak iscsi/);
  t.equal((await s.call('GET', `/v1/bindings/${b0.id}`)).protocol, 'nbd');
  const stranded = await s.request('PUT', '/v1/hosts/a/protocols', { protocols: ['iscsi'] });
  t.equal(stranded.status, 409, 'dropping the only protocol a binding is served over is refused');
  await s.call('PUT', '/v1/hosts/a/protocols', { protocols: ['nbd', 'iscsi'] });
  const m = await s.request('GET', '/metrics');
  t.match(m.body, /blockgate_cutovers_total\{kind="switch",outcome="succeeded"\} 2/);
  t.match(m.body, /blockgate_cutover_pause_seconds_count 2/);
});

t.test('CLI: `blockgate switch --host a --unit 0/1 --protocol nbd` switches and prints where the unit now is', async (t) => {
  const r = await cliOk(s, ['switch', '--host', 'a', '--unit', '0/1', '--protocol', 'nbd']);
  t.match(r.stdout, /both → nbd/);
  t.match(r.stdout, /nbd\s+nbd\+unix:\/\/\/0\/1/);
  t.equal((await s.call('GET', `/v1/bindings/${b1.id}`)).protocol, 'nbd');
  t.same(await iscsiLuns(), [], 'unit 0/1 left iSCSI too');
});
