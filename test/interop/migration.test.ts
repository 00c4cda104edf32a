import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { startServer, TestServer } from '../helpers/server.js';
import { requireTools, run, runOk } from '../helpers/tools.js';
import { WireClient } from '../helpers/nbd-wire.js';
import { IscsiWire } from '../helpers/iscsi-wire.js';
import { listExports, waitJob } from '../helpers/api.js';
import { Writer } from '../helpers/writer.js';

// VM migration against a real `blockgate serve`: a verifying NBD writer on
// host a keeps writing while the VM moves to host b, which speaks only iSCSI;
// b connects, the cutover happens, a's session ends and its reconnect is
// refused, and b reads every write a saw acknowledged. Then b never connects
// (timeout → rollback), and kill -9 of the appliance at the cutover steps.

requireTools('qemu-img', 'qemu-io', 'qemu-iscsi', 'nbdinfo');

const IQN_B = 'iqn.2026-01.test:migrate-b';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-migrate-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const pauses: number[] = [];

async function appliance(s: TestServer): Promise<void> {
  await s.call('POST', '/v1/farms', { name: 'f' });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '64M' });
  await s.call('POST', '/v1/hosts', { name: 'a', farm: 'f' });
  await s.call('POST', '/v1/hosts', { name: 'b', farm: 'f' });
  await s.call('POST', '/v1/hosts/b/initiators', { iqn: IQN_B });
  await s.call('PUT', '/v1/hosts/b/protocols', { protocols: ['iscsi'] });
  await s.call('POST', '/v1/volumes', { name: 'v0', size: '8M', farm: 'f' });
  await s.call('POST', '/v1/volumes', { name: 'v1', size: '8M', farm: 'f' });
  const b0 = await s.call('POST', '/v1/bindings', { volume: 'v0', host: 'a', target: 0, lun: 0, protocol: 'nbd' });
  const b1 = await s.call('POST', '/v1/bindings', { volume: 'v1', host: 'a', target: 0, lun: 1, protocol: 'nbd' });
  await s.call('POST', '/v1/vms', { name: 'web1', host: 'a', bindings: [b0.id, b1.id] });
}

const iscsiOpts = (s: TestServer, lun: number): string => {
  const i = s.iscsi.lastIndexOf(':');
  return `driver=iscsi,transport=tcp,portal=${s.iscsi.slice(0, i)}:${s.iscsi.slice(i + 1)},target=iqn.2026-11.io.blockgate:b.t0,lun=${lun},initiator-name=${IQN_B}`;
};

/** Polls until `ok` holds (a hang guard bounds it, not a timing claim). */
async function until(what: string, ok: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('live NBD → iSCSI migration under a verifying writer: b connects, cutover, a fenced, every acknowledged write reads back on b', async (t) => {
  const s = await startServer(t, { demo: false });
  await appliance(s);
  const w = new Writer(await (await WireClient.connect({ path: s.socket('a') })).open('0/0'));
  await w.reached(30);
  const r = await s.call('POST', '/v1/vms/web1/migrate', { to: 'b' });
  t.equal(r.job.kind, 'vm-migrate');
  t.equal(r.job.params.protocol, 'iscsi', 'b speaks only iSCSI');
  // b sees its units once bound; it connects (one iSCSI session), which triggers the cutover.
  await until('b bound', async () => (await s.call('GET', '/v1/hosts/b/namespace')).units.length === 2);
  const ns = await s.call('GET', '/v1/hosts/b/namespace');
  t.match(ns.units[0].descriptor, { host: 'b', target: 0, lun: 0, protocol: 'iscsi', volume: { name: 'v0' }, addresses: [{ protocol: 'iscsi', targetName: 'iqn.2026-11.io.blockgate:b.t0', credential: { kind: 'initiator-name', ref: IQN_B } }] });
  const bSession = await IscsiWire.connect(s.iscsi);
  await bSession.login(IQN_B, 'iqn.2026-11.io.blockgate:b.t0');
  const job = await waitJob(s, r.job.id);
  t.equal(job.state, 'succeeded', job.error ?? '');
  t.match(job.result, { outcome: 'migrated', vm: 'web1', from: 'a', to: 'b', protocol: 'iscsi' });
  pauses.push(job.result.pauseMs);
  await w.done;
  t.ok(w.error, `a's session ended with an error (${w.error})`);
  const again = await run('nbdinfo', ['--json', s.unixUri('a', '0/0')], { timeoutMs: 30_000 });
  t.not(again.code, 0, "a's reconnect is refused");
  t.same(await listExports(s, 'a'), [], 'a has no units left');
  const out = path.join(tmp, 'b0.raw');
  await runOk('qemu-img', ['convert', '--image-opts', iscsiOpts(s, 0), '-O', 'raw', out], { timeoutMs: 120_000 });
  w.check(t, fs.readFileSync(out), 'read by b over iSCSI');
  const vm = await s.call('GET', '/v1/vms/web1');
  t.equal(vm.host, 'b');
  t.same(vm.bindings.map((b: { host: string; target: number; lun: number }) => `${b.host} ${b.target}/${b.lun}`), ['b 0/0', 'b 0/1'], 'same unit addresses on b');
  const events = await s.call('GET', '/v1/events');
  t.ok(events.events.filter((e: { type: string }) => e.type === 'vm.migrate.step').length >= 3, 'an event per step');
  bSession.close();

  // Back to a over NBD, but a never connects: the timeout rolls back, b keeps its disks.
  const back = await s.call('POST', '/v1/vms/web1/migrate', { to: 'a', timeoutMs: 300 });
  t.equal(back.job.params.protocol, 'both', "a's default");
  const failed = await waitJob(s, back.job.id);
  t.equal(failed.state, 'failed');
  t.match(failed.error, /rolled back .*did not connect/);
  t.equal((await s.call('GET', '/v1/vms/web1')).host, 'b');
  t.same(await listExports(s, 'a'), [], 'a got nothing');
  t.equal((await s.call('GET', '/v1/hosts/b/namespace')).units.length, 2, 'b keeps both units');

  // An explicit cutover moves it without a connection.
  const cut = await s.call('POST', '/v1/vms/web1/migrate', { to: 'a', timeoutMs: 600_000 });
  // Watched through the API: a connection to a's socket would count as a connecting, and cut over by itself.
  await until('a bound', async () => (await s.call('GET', '/v1/hosts/a/namespace')).units.length === 2);
  await s.call('POST', '/v1/vms/web1/migrate/cutover');
  const done = await waitJob(s, cut.job.id);
  t.equal(done.state, 'succeeded', done.error ?? '');
  pauses.push(done.result.pauseMs);
  t.equal((await s.call('GET', '/v1/vms/web1')).host, 'a');
  const pre = await s.request('POST', '/v1/vms/web1/migrate', { to: 'nowhere' });
  t.equal(pre.status, 404, 'an unknown host fails the precondition');
  const m = await s.request('GET', '/metrics');
  t.match(m.body, /blockgate_cutovers_total\{kind="migration",outcome="succeeded"\} 2/);
  t.match(m.body, /blockgate_cutovers_total\{kind="migration",outcome="rolled-back"\} 1/);
});

for (const [point, outcome] of [
  ['migrate-cutover', 'rolled back'],
  ['migrate-committed', 'migrated'],
] as const) {
  t.test(`kill -9 at ${point}: on restart the migration is ${outcome}, consistently`, async (t) => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-migrate-crash-'));
    t.teardown(() => fs.rmSync(dataDir, { recursive: true, force: true }));
    const s = await startServer(t, { demo: false, dataDir, env: { BLOCKGATE_FAULTS: `crash:${point}` } });
    await appliance(s);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x7e 0 1M', '-c', 'flush', s.unixUri('a', '0/0')], { timeoutMs: 60_000 });
    // The job may reach the step (and the appliance die) before the reply is sent.
    await s.request('POST', '/v1/vms/web1/migrate', { to: 'b', mode: 'stop-and-copy' }).catch(() => null);
    await until('the appliance to die', async () => s.exitCode !== null || (await s.request('GET', '/v1/health').then(() => false, () => true)));
    await s.kill();
    const s2 = await startServer(t, { demo: false, dataDir });
    const jobs = await s2.call('GET', '/v1/jobs?kind=vm-migrate');
    const job = await waitJob(s2, jobs.jobs[0].id);
    const vm = await s2.call('GET', '/v1/vms/web1');
    if (outcome === 'migrated') {
      t.equal(job.state, 'succeeded', job.error ?? '');
      t.match(job.result, { outcome: 'migrated', resumed: true });
      t.equal(vm.host, 'b');
      t.same(await listExports(s2, 'a'), [], 'a has nothing');
      const r = await runOk('qemu-io', ['--image-opts', iscsiOpts(s2, 0), '-c', 'read -P 0x7e 0 1M'], { timeoutMs: 60_000 });
      t.notMatch(r.stdout, /Pattern verification failed/, 'b reads what a flushed');
    } else {
      t.equal(job.state, 'failed');
      t.match(job.error, /rolled back .*restarted/);
      t.equal(vm.host, 'a');
      t.equal((await s2.call('GET', '/v1/hosts/b/namespace')).units.length, 0, 'b has nothing');
      const r = await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x7e 0 1M', s2.unixUri('a', '0/0')], { timeoutMs: 60_000 });
      t.notMatch(r.stdout, /Pattern verification failed/, 'a still reads what it flushed');
    }
  });
}

t.teardown(() => {
  const sorted = [...pauses].sort((a, b) => a - b);
  const q = (p: number): number => sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)] ?? NaN;
  t.comment(`cutover pause over ${sorted.length} migrations: p50 ${q(0.5).toFixed(1)} ms, p99 ${q(0.99).toFixed(1)} ms`);
});
