import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { startServer, TestServer } from '../helpers/server.js';
import { requireTools, run, runOk } from '../helpers/tools.js';
import { CMD, WireClient } from '../helpers/nbd-wire.js';
import { IscsiWire } from '../helpers/iscsi-wire.js';
import { IscsiSession } from '../helpers/iscsi-session.js';
import { listExports, waitJob } from '../helpers/api.js';
import { BLOCK, Writer } from '../helpers/writer.js';
import { cli } from '../helpers/cli.js';

// The migration paths issue 11 asks for beyond NBD → iSCSI: NBD → NBD with
// the fresh credential issued to the new host (and the old host's refused
// after the cutover), "b connected" counted per unit, iSCSI → NBD under an
// iSCSI verifying writer, a fresh CHAP secret, a failed bind, and the CLI.
// Every acknowledged write is read back through the new host.

requireTools('nbdinfo', 'nbdcopy', 'qemu-img', 'qemu-io', 'qemu-iscsi', 'iscsi-inq');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-migrate-paths-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const pauses: number[] = [];
const IQN_A = 'iqn.2026-01.test:paths-a';
const IQN_B = 'iqn.2026-01.test:paths-b';
const tiqn = (host: string): string => `iqn.2026-11.io.blockgate:${host}.t0`;

/** Polls until `ok` holds (a hang guard bounds it, not a timing claim). */
async function until(what: string, ok: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Hosts a and b speaking what they are given, two 8M volumes bound to a at 0/0 and 0/1, VM web1 on a. */
async function appliance(s: TestServer, protocols: { a: string[]; b: string[] }): Promise<void> {
  await s.call('POST', '/v1/farms', { name: 'f' });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '64M' });
  for (const h of ['a', 'b'] as const) {
    await s.call('POST', '/v1/hosts', { name: h, farm: 'f' });
    await s.call('POST', `/v1/hosts/${h}/initiators`, { iqn: h === 'a' ? IQN_A : IQN_B });
    await s.call('PUT', `/v1/hosts/${h}/protocols`, { protocols: protocols[h] });
  }
  await s.call('POST', '/v1/volumes', { name: 'v0', size: '8M', farm: 'f' });
  await s.call('POST', '/v1/volumes', { name: 'v1', size: '8M', farm: 'f' });
  const p = protocols.a[0];
  const b0 = await s.call('POST', '/v1/bindings', { volume: 'v0', host: 'a', target: 0, lun: 0, protocol: p });
  const b1 = await s.call('POST', '/v1/bindings', { volume: 'v1', host: 'a', target: 0, lun: 1, protocol: p });
  await s.call('POST', '/v1/vms', { name: 'web1', host: 'a', bindings: [b0.id, b1.id] });
}

const port = (s: TestServer): string => s.nbd.slice(s.nbd.lastIndexOf(':') + 1);
const pskUri = (s: TestServer, identity: string, file: string, unit = '0/0'): string => `nbds://${identity}@localhost:${port(s)}/${unit}?tls-psk-file=${file}`;

/** Writes an issued psk-file line to a 0600 file, as the host's admin would. */
function pskFile(c: { identity: string; pskFile: string }): string {
  const f = path.join(tmp, `${c.identity}.psk`);
  fs.writeFileSync(f, c.pskFile, { mode: 0o600 });
  return f;
}

const keyFiles = (s: TestServer): string[] => (fs.existsSync(path.join(s.dataDir, 'credentials')) ? fs.readdirSync(path.join(s.dataDir, 'credentials')).filter((f) => f.endsWith('.key')).sort() : []);

/** The first 64 blocks of a unit (what the writer covers) over an NBD session. */
async function readBlocks(c: WireClient): Promise<Buffer> {
  const r = await c.request(CMD.READ, 0, 64 * BLOCK);
  if (r.error !== 0) throw new Error(`read failed: ${r.error}`);
  return WireClient.readBytes(r, 0, 64 * BLOCK);
}

t.test('NBD → NBD: b gets a fresh PSK, one unit reached is not enough, both are; a is refused after the cutover, b after the way back', async (t) => {
  const s = await startServer(t, { demo: false });
  await appliance(s, { a: ['nbd'], b: ['nbd'] });
  const aPsk = pskFile(await s.call('POST', '/v1/hosts/a/tls/psk', {}));
  // A unit of b's own: a withdrawn credential must be refused where b still has something to reach.
  await s.call('POST', '/v1/volumes', { name: 'bown', size: '4M', farm: 'f' });
  await s.call('POST', '/v1/bindings', { volume: 'bown', host: 'b', target: 0, lun: 5 });
  const w = new Writer(await (await WireClient.connect({ path: s.socket('a') })).open('0/0'));
  await w.reached(20);

  // 1. b connects to one of the two units only: no cutover, the timeout rolls back.
  const first = await s.call('POST', '/v1/vms/web1/migrate', { to: 'b', timeoutMs: 15_000 });
  t.equal(first.credentials.length, 1, 'one credential for one protocol');
  const c1 = first.credentials[0];
  t.match(c1, { kind: 'tls-psk', identity: /^mig-[0-9a-f]{12}$/, key: /^[0-9a-f]{64}$/ });
  t.equal(fs.statSync(path.join(s.dataDir, 'credentials', `${c1.identity}.key`)).mode & 0o777, 0o600, 'the key file is 0600');
  const f1 = pskFile(c1);
  await until('b bound', async () => (await s.call('GET', '/v1/hosts/b/namespace')).units.length === 3);
  const ns = await s.call('GET', '/v1/hosts/b/namespace');
  t.match(ns.units[0].descriptor.addresses[0], { protocol: 'nbd', credential: { kind: 'tls-psk', ref: c1.identity } }, "b's descriptor names the fresh identity");
  const viaPsk = JSON.parse((await runOk('nbdinfo', ['--json', pskUri(s, c1.identity, f1)], { timeoutMs: 30_000 })).stdout);
  t.equal(viaPsk.exports[0]['export-size'], 8 * 1024 * 1024, 'b connects with the fresh PSK');
  const bOnly0 = await (await WireClient.connect({ path: s.socket('b') })).open('0/0');
  const rolled = await waitJob(s, first.job.id);
  t.equal(rolled.state, 'failed', 'a session on one unit does not cut over');
  t.match(rolled.error, /did not connect to every unit .*not reached: 0\/1\)/);
  t.equal((await s.call('GET', '/v1/vms/web1')).host, 'a');
  t.same(keyFiles(s), [], 'the rollback withdrew the fresh key');
  t.not((await run('nbdinfo', ['--size', pskUri(s, c1.identity, f1, '0/5')], { timeoutMs: 30_000 })).code, 0, "the withdrawn PSK is refused, even for b's own unit");
  t.ok(await bOnly0.closed(30_000), "b's session on the unit it lost ended");
  await w.reached(w.count + 10);
  t.equal(w.error, '', "a's writer never noticed");

  // 2. b connects to both units: cutover.
  const second = await s.call('POST', '/v1/vms/web1/migrate', { to: 'b', timeoutMs: 600_000 });
  const c2 = second.credentials[0];
  t.not(c2.identity, c1.identity, 'a new identity each time');
  const f2 = pskFile(c2);
  await until('b bound', async () => (await s.call('GET', '/v1/hosts/b/namespace')).units.length === 3);
  const b0 = await (await WireClient.connect({ path: s.socket('b') })).open('0/0');
  const b1 = await (await WireClient.connect({ path: s.socket('b') })).open('0/1');
  const job = await waitJob(s, second.job.id);
  t.equal(job.state, 'succeeded', job.error ?? '');
  pauses.push(job.result.pauseMs);
  const steps = (await s.call('GET', '/v1/events')).events.filter((e: { type: string; data?: { step?: string } }) => e.type === 'vm.migrate.step').map((e: { data: { step: string } }) => e.data.step);
  t.ok(steps.includes('host connected to every unit'), 'the cutover came from b reaching both units');
  await w.done;
  t.ok(w.error, `a's session ended (${w.error})`);
  t.not((await run('nbdinfo', ['--size', s.unixUri('a', '0/0')], { timeoutMs: 30_000 })).code, 0, "a's reconnect on its socket is refused");
  t.not((await run('nbdinfo', ['--size', pskUri(s, 'a', aPsk)], { timeoutMs: 30_000 })).code, 0, "a's own PSK no longer reaches the unit");
  w.check(t, await readBlocks(b0), 'read by b on its session');
  const copy = path.join(tmp, 'b-psk.raw');
  await runOk('nbdcopy', [pskUri(s, c2.identity, f2), copy], { timeoutMs: 120_000 });
  w.check(t, fs.readFileSync(copy), 'read by b with the fresh PSK (nbdcopy)');
  b0.destroy();
  b1.destroy();

  // 3. Back to a: at the commit b's fresh PSK is withdrawn, a's fresh one works.
  t.equal((await runOk('nbdinfo', ['--size', pskUri(s, c2.identity, f2, '0/5')], { timeoutMs: 30_000 })).stdout.trim(), String(4 * 1024 * 1024), "b's fresh PSK reaches b's own unit too (it is b's)");
  const back = await s.call('POST', '/v1/vms/web1/migrate', { to: 'a', mode: 'stop-and-copy' });
  const done = await waitJob(s, back.job.id);
  t.equal(done.state, 'succeeded', done.error ?? '');
  pauses.push(done.result.pauseMs);
  const refused = await run('nbdinfo', ['--size', pskUri(s, c2.identity, f2, '0/5')], { timeoutMs: 30_000 });
  t.not(refused.code, 0, "b's migration PSK is refused once the VM left it, even for b's own unit");
  t.match(refused.stderr, /handshake|TLS|decrypt|identity/i, `in the TLS handshake: ${refused.stderr.trim()}`);
  t.same(keyFiles(s), [`${back.credentials[0].identity}.key`], "only a's fresh key is left");
  t.equal((await runOk('nbdinfo', ['--size', pskUri(s, back.credentials[0].identity, pskFile(back.credentials[0]))], { timeoutMs: 30_000 })).stdout.trim(), String(8 * 1024 * 1024), "a's fresh PSK reaches the unit");
});

t.test('iSCSI → NBD under an iSCSI verifying writer on a: b reaches both exports, a is fenced, b reads every acknowledged write', async (t) => {
  const s = await startServer(t, { demo: false });
  await appliance(s, { a: ['iscsi'], b: ['nbd'] });
  const aSession = await IscsiSession.open(s.iscsi, [0, 1], { iqn: IQN_A, target: tiqn('a') });
  const w = new Writer((offset, data) => aSession.write(0, offset, data));
  await w.reached(20);
  const r = await s.call('POST', '/v1/vms/web1/migrate', { to: 'b' });
  t.equal(r.job.params.protocol, 'nbd', 'b speaks only NBD');
  await until('b bound', async () => (await s.call('GET', '/v1/hosts/b/namespace')).units.length === 2);
  const b0 = await (await WireClient.connect({ path: s.socket('b') })).open('0/0');
  const b1 = await (await WireClient.connect({ path: s.socket('b') })).open('0/1');
  const job = await waitJob(s, r.job.id);
  t.equal(job.state, 'succeeded', job.error ?? '');
  pauses.push(job.result.pauseMs);
  await w.done;
  t.ok(w.error, `a's iSCSI writes are refused after the cutover (${w.error})`);
  aSession.close();
  const again = await IscsiWire.connect(s.iscsi);
  const login = await again.login(IQN_A, tiqn('a'), {}, Buffer.from([0x80, 0, 0, 0, 0x56, 0x78]));
  t.not(login.bhs[36], 0, "a's login to its old target is refused");
  again.close();
  w.check(t, await readBlocks(b0), 'read by b over NBD');
  t.same(await listExports(s, 'b'), ['0/0', '0/1']);
  b0.destroy();
  b1.destroy();
});

t.test("a fresh CHAP secret for a CHAP host: accepted beside b's own, withdrawn when the VM leaves b", async (t) => {
  const s = await startServer(t, { demo: false });
  await appliance(s, { a: ['nbd'], b: ['iscsi'] });
  const own = await s.call('POST', '/v1/hosts/b/chap', { mode: 'one-way' });
  // A unit of b's own on the same target, so its logins can be tried after the VM leaves.
  await s.call('POST', '/v1/volumes', { name: 'bown', size: '4M', farm: 'f' });
  await s.call('POST', '/v1/bindings', { volume: 'bown', host: 'b', target: 0, lun: 5 });
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 0 1M', '-c', 'flush', s.unixUri('a', '0/1')], { timeoutMs: 60_000 });
  const r = await s.call('POST', '/v1/vms/web1/migrate', { to: 'b', mode: 'stop-and-copy' });
  const chap = r.credentials.find((c: { kind: string }) => c.kind === 'chap');
  t.match(chap, { kind: 'chap', username: /^mig-/, secret: /^.{16}$/ });
  const job = await waitJob(s, r.job.id);
  t.equal(job.state, 'succeeded', job.error ?? '');
  pauses.push(job.result.pauseMs);
  const u = (user: string, secret: string, lun: number): string => `iscsi://${encodeURIComponent(user)}%${encodeURIComponent(secret)}@${s.iscsi}/${tiqn('b')}/${lun}`;
  const inq = (user: string, secret: string, lun: number) => run('iscsi-inq', ['-i', IQN_B, u(user, secret, lun)], { timeoutMs: 30_000 });
  t.equal((await inq(chap.username, chap.secret, 1)).code, 0, 'b logs in with the fresh CHAP secret');
  t.not((await inq(chap.username, 'not-the-secret!!', 1)).code, 0, 'a wrong secret under the fresh name is refused');
  const desc = (await s.call('GET', '/v1/hosts/b/namespace')).units.find((x: { lun: number }) => x.lun === 1).descriptor;
  t.match(desc.addresses[0].credential, { kind: 'chap', ref: chap.username }, "b's descriptor names the fresh CHAP user");
  const img = path.join(tmp, 'chap.raw');
  const i = s.iscsi.lastIndexOf(':');
  const opts = `driver=iscsi,transport=tcp,portal=${s.iscsi.slice(0, i)}:${s.iscsi.slice(i + 1)},target=${tiqn('b')},lun=1,initiator-name=${IQN_B},user=${chap.username},password-secret=sec0`;
  await runOk('qemu-img', ['convert', '--object', `secret,id=sec0,data=${chap.secret}`, '--image-opts', opts, '-O', 'raw', img], { timeoutMs: 120_000 });
  t.ok(fs.readFileSync(img).subarray(0, 1024 * 1024).every((x) => x === 0x5c), 'b reads what a flushed, with the fresh secret');

  const back = await s.call('POST', '/v1/vms/web1/migrate', { to: 'a', mode: 'stop-and-copy' });
  t.equal((await waitJob(s, back.job.id)).state, 'succeeded');
  t.not((await inq(chap.username, chap.secret, 5)).code, 0, "the fresh secret is refused once the VM left b, even for b's own unit");
  t.equal((await inq(own.username, own.secret, 5)).code, 0, "b's own CHAP secret still works for its own unit");
});

t.test('fault at migrate-bind: rolled back, a keeps writing, b has nothing, nothing acknowledged lost', async (t) => {
  const s = await startServer(t, { demo: false, env: { BLOCKGATE_FAULTS: 'migrate-bind' } });
  await appliance(s, { a: ['nbd'], b: ['iscsi'] });
  const c = await (await WireClient.connect({ path: s.socket('a') })).open('0/0');
  const w = new Writer(c);
  await w.reached(20);
  const r = await s.call('POST', '/v1/vms/web1/migrate', { to: 'b' });
  const job = await waitJob(s, r.job.id);
  t.equal(job.state, 'failed');
  t.match(job.error, /rolled back .*injected fault at 'migrate-bind'/);
  t.equal((await s.call('GET', '/v1/vms/web1')).host, 'a');
  t.equal((await s.call('GET', '/v1/hosts/b/namespace')).units.length, 0, 'b has nothing');
  t.same(keyFiles(s), [], "b's fresh credential was withdrawn");
  await w.reached(w.count + 20);
  t.equal(w.error, '', "a's writer kept going");
  const check = await (await WireClient.connect({ path: s.socket('a') })).open('0/0');
  c.destroy();
  await w.done;
  w.check(t, await readBlocks(check), 'read back by a');
  check.destroy();
  const m = await s.request('GET', '/metrics');
  t.match(m.body, /blockgate_cutovers_total\{kind="migration",outcome="rolled-back"\} 1/);
});

t.test('CLI: blockgate vm migrate shows progress, writes the fresh credential 0600, exits 0; a refused precondition exits with its code', async (t) => {
  const s = await startServer(t, { demo: false });
  await appliance(s, { a: ['nbd'], b: ['nbd'] });
  const dir = fs.mkdtempSync(path.join(tmp, 'cli-'));
  const ok = await cli(s, ['vm', 'migrate', 'web1', '--to', 'b', '--mode', 'stop-and-copy', '--credentials-dir', dir]);
  t.equal(ok.code, 0, ok.stderr);
  t.match(ok.stderr, /job \d+ vm-migrate .*100%/, 'a progress display on stderr');
  t.match(ok.stdout, /fresh TLS-PSK for b \(mig-[0-9a-f]{12}\) written to .* \(mode 0600\)/);
  t.match(ok.stdout, /job \d+ \(vm-migrate\) succeeded: outcome=migrated .*to=b/);
  const files = fs.readdirSync(dir);
  t.equal(files.length, 1);
  t.equal(fs.statSync(path.join(dir, files[0]!)).mode & 0o777, 0o600, 'the psk file is 0600');
  const identity = files[0]!.replace(/\.psk$/, '');
  t.equal((await runOk('nbdinfo', ['--size', pskUri(s, identity, path.join(dir, files[0]!))], { timeoutMs: 30_000 })).stdout.trim(), String(8 * 1024 * 1024), 'the written psk file works');
  const same = await cli(s, ['vm', 'migrate', 'web1', '--to', 'b']);
  t.equal(same.code, 4, 'already on b: CONFLICT');
  t.match(same.stderr, /already on host 'b'/);
  const nowhere = await cli(s, ['vm', 'migrate', 'web1', '--to', 'nowhere']);
  t.equal(nowhere.code, 3, 'an unknown host: NOT_FOUND');
  const rolled = await cli(s, ['vm', 'migrate', 'web1', '--to', 'a', '--timeout', '300']);
  t.equal(rolled.code, 7, 'a rolled-back migration: JOB_FAILED');
  t.match(rolled.stderr, /rolled back/);
});

t.test('re-assign a volume to another host under a verifying writer (NBD on a → iSCSI on b): a fenced, b reads every acknowledged write', async (t) => {
  const s = await startServer(t, { demo: false });
  await appliance(s, { a: ['nbd'], b: ['iscsi'] });
  await s.call('POST', '/v1/volumes', { name: 'solo', size: '8M', farm: 'f' });
  await s.call('POST', '/v1/bindings', { volume: 'solo', host: 'a', target: 0, lun: 2 });
  const w = new Writer(await (await WireClient.connect({ path: s.socket('a') })).open('0/2'));
  await w.reached(20);
  const vmOwned = await s.request('POST', '/v1/volumes/v0/reassign', { host: 'b', unit: '0/0' });
  t.equal(vmOwned.status, 409, 'a VM-owned volume moves with its VM');
  t.match(vmOwned.body.error.message, /migrate the VM instead/);
  t.equal((await s.request('POST', '/v1/volumes/solo/reassign', { host: 'b', unit: '0/99999' })).status, 400, 'a LUN out of range');
  t.equal((await s.request('POST', '/v1/volumes/solo/reassign', { host: 'a', unit: '0/3' })).status, 409, 'already on that host');
  const moved = await cli(s, ['volume', 'reassign', 'solo', '--host', 'b', '--unit', '0/3']);
  t.equal(moved.code, 0, moved.stderr);
  t.match(moved.stdout, /volume solo moved from a to b at 0\/3 over iscsi/);
  const pause = Number(/I\/O held ([\d.]+) ms/.exec(moved.stdout)?.[1]);
  t.ok(Number.isFinite(pause), 'the pause is reported');
  pauses.push(pause);
  await until("a's writer to stop", async () => w.error !== '');
  t.ok(w.error, `a's session on the volume ended (${w.error})`);
  t.not((await run('nbdinfo', ['--size', s.unixUri('a', '0/2')], { timeoutMs: 30_000 })).code, 0, "a's reconnect is refused");
  t.same(await listExports(s, 'a'), ['0/0', '0/1'], "a keeps its other units, untouched");
  const i = s.iscsi.lastIndexOf(':');
  const img = path.join(tmp, 'reassigned.raw');
  await runOk('qemu-img', ['convert', '--image-opts', `driver=iscsi,transport=tcp,portal=${s.iscsi.slice(0, i)}:${s.iscsi.slice(i + 1)},target=${tiqn('b')},lun=3,initiator-name=${IQN_B}`, '-O', 'raw', img], { timeoutMs: 120_000 });
  w.check(t, fs.readFileSync(img), 'read by b over iSCSI');
  const bindings = (await s.call('GET', '/v1/bindings?volume=solo')).bindings;
  t.same(bindings.map((b: { host: string; target: number; lun: number; protocol: string }) => `${b.host} ${b.target}/${b.lun} ${b.protocol}`), ['b 0/3 iscsi']);
});

t.test('clone on provisioning: of a quiet volume (sparse copy job) and of a mapped one under a writer (snapshot, materialise)', async (t) => {
  const s = await startServer(t, { demo: false });
  await appliance(s, { a: ['nbd'], b: ['nbd'] });
  await s.call('POST', '/v1/volumes', { name: 'gold', size: '8M', farm: 'f' });
  const g = await s.call('POST', '/v1/bindings', { volume: 'gold', host: 'b', target: 1, lun: 0 });
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3d 1M 2M', '-c', 'flush', s.unixUri('b', '1/0')], { timeoutMs: 60_000 });
  await s.call('POST', `/v1/bindings/${g.id}/unmap`);
  await s.call('DELETE', `/v1/bindings/${g.id}`);
  const quiet = await cli(s, ['volume', 'clone', 'web2-root', '--of', 'gold']);
  t.equal(quiet.code, 0, quiet.stderr);
  t.match(quiet.stdout, /job \d+ \(copy\) succeeded/);
  await s.call('POST', '/v1/bindings', { volume: 'web2-root', host: 'b', target: 2, lun: 0 });
  const qr = await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x3d 1M 2M', '-c', 'read -P 0 0 1M', s.unixUri('b', '2/0')], { timeoutMs: 60_000 });
  t.notMatch(qr.stdout, /Pattern verification failed/, 'the clone holds what the source held');

  const w = new Writer(await (await WireClient.connect({ path: s.socket('a') })).open('0/0'));
  await w.reached(20);
  const acked = new Map(w.acked);
  const r = await s.call('POST', '/v1/volumes', { name: 'v0-clone', cloneOf: 'v0' });
  // The snapshot is taken before the answer: each block of the clone is its version from before the call or one written while it ran.
  const during = new Map(w.acked);
  t.equal(r.job.kind, 'materialise', 'a mapped source goes through a snapshot');
  t.equal(r.volume.name, 'v0-clone');
  const job = await waitJob(s, r.job.id);
  t.equal(job.state, 'succeeded', job.error ?? '');
  t.equal(w.error, '', 'the writer on the source kept going');
  const c = await s.call('POST', '/v1/bindings', { volume: 'v0-clone', host: 'b', target: 3, lun: 0 });
  const got = await readBlocks(await (await WireClient.connect({ path: s.socket('b') })).open('3/0'));
  let bad = 0;
  for (const [off, data] of acked) {
    const b = got.subarray(off, off + BLOCK);
    if (!b.equals(data) && !b.equals(during.get(off)!)) bad++;
  }
  t.equal(bad, 0, `all ${acked.size} blocks acknowledged before the clone call are in the clone (or a later write of the same block)`);
  t.ok(c.id > 0);
  t.equal((await s.request('POST', '/v1/volumes', { name: 'x', cloneOf: 'v0', size: '8M' })).status, 400, 'a clone takes its size from the source');
  t.equal((await s.request('POST', '/v1/volumes', { name: 'y', cloneOf: 'nothing' })).status, 404, 'an unknown source');
});

t.teardown(() => {
  const sorted = [...pauses].sort((a, b) => a - b);
  const q = (p: number): number => sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)] ?? NaN;
  t.comment(`cutover pause over ${sorted.length} migrations: p50 ${q(0.5).toFixed(1)} ms, p99 ${q(0.99).toFixed(1)} ms (${sorted.map((x) => x.toFixed(1)).join(', ')})`);
});
