import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { startServer } from '../helpers/server.js';
import { requireTools, run, runOk } from '../helpers/tools.js';
import { DEMO_IQN, IscsiWire, demoTarget, tur } from '../helpers/iscsi-wire.js';
import { cli, cliOk } from '../helpers/cli.js';

// Stock iSCSI clients against a real `blockgate serve`: libiscsi's tools with
// the demo initiator name, qemu-img over iscsi://, CHAP with libiscsi, and
// data crossing protocols (written over iSCSI, read over NBD, and back).

requireTools('iscsi-ls', 'iscsi-inq', 'iscsi-readcapacity16', 'qemu-img', 'qemu-io', 'qemu-iscsi', 'nbdinfo');

const MiB = 1024 * 1024;
const s = await startServer(t);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-iscsi-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const url = (lun = 0, host = 'demo', target = 0, cred = ''): string => `iscsi://${cred}${s.iscsi}/${demoTarget(host, target)}/${lun}`;
/** qemu's iscsi driver options: the initiator name cannot go in the URL. */
const qemuOpts = (iqn = DEMO_IQN, lun = 0): string => {
  const i = s.iscsi.lastIndexOf(':');
  return `driver=iscsi,transport=tcp,portal=${s.iscsi.slice(0, i)}:${s.iscsi.slice(i + 1)},target=${demoTarget()},lun=${lun},initiator-name=${iqn}`;
};

t.test('iscsi-ls with the demo initiator lists the demo target and its LUN; a stranger sees nothing', async (t) => {
  const r = await runOk('iscsi-ls', ['-s', '-i', DEMO_IQN, `iscsi://${s.iscsi}`], { timeoutMs: 30_000 });
  t.match(r.stdout, `Target:${demoTarget()} Portal:${s.iscsi},1`);
  t.match(r.stdout, /Lun:0\s+Type:DIRECT_ACCESS \(Size:255M\)/);
  const x = await run('iscsi-ls', ['-i', 'iqn.2026-01.test:stranger', `iscsi://${s.iscsi}`], { timeoutMs: 30_000 });
  t.not(x.code, 0);
  t.notMatch(x.stdout, 'demo');
  t.match(x.stderr + x.stdout, /Authentication failure|Login Failed/);
});

t.test('iscsi-inq: serial (VPD 0x80) and NAA (VPD 0x83) are the volume’s, as NBD describes it', async (t) => {
  const vol = await s.call('GET', '/v1/volumes/demo-boot');
  const std = await runOk('iscsi-inq', ['-i', DEMO_IQN, url()], { timeoutMs: 30_000 });
  t.match(std.stdout, 'Peripheral Device Type:DIRECT_ACCESS');
  const sn = await runOk('iscsi-inq', ['-e', '1', '-c', '128', '-i', DEMO_IQN, url()], { timeoutMs: 30_000 });
  t.match(sn.stdout, `Unit Serial Number:[${vol.serial}]`);
  // The NAA designator is binary: read VPD 0x83 on the wire and find the NAA descriptor.
  const w = await IscsiWire.connect(s.iscsi);
  await w.login(DEMO_IQN, demoTarget());
  let page: Buffer | null = null;
  for (let i = 0; i < 4 && !page; i++) {
    const cdb = Buffer.alloc(16);
    cdb[0] = 0x12;
    cdb[1] = 1;
    cdb[2] = 0x83;
    cdb.writeUInt16BE(512, 3);
    w.command(cdb, { read: true, edtl: 512 });
    const p = (await w.recvReply())!;
    if (p.opcode === 0x25 && p.flags & 1 && p.bhs[3] === 0) page = p.data;
  }
  w.close();
  t.ok(page, 'VPD 0x83 read');
  const naas: string[] = [];
  for (let off = 4; page && off + 4 <= page.length; off += 4 + page[off + 3]!) {
    if ((page[off + 1]! & 0x0f) === 3 && ((page[off + 1]! >> 4) & 3) === 0) naas.push(page.subarray(off + 4, off + 4 + page[off + 3]!).toString('hex'));
  }
  t.same(naas, [vol.naa], 'one logical-unit NAA designator, equal to the volume NAA');
  const nbd = await runOk('nbdinfo', ['--json', s.unixUri('demo', '0/0')]);
  const desc = JSON.parse(nbd.stdout).exports[0].description as string;
  t.match(desc, vol.serial, 'NBD description carries the same serial');
  t.match(desc, vol.naa, 'and the same NAA');
});

t.test('iscsi-readcapacity16 reports the volume size', async (t) => {
  const r = await runOk('iscsi-readcapacity16', ['-i', DEMO_IQN, url()], { timeoutMs: 30_000 });
  t.match(r.stdout, 'LOGICAL BLOCK LENGTH IN BYTES:512');
  t.match(r.stdout, `Total size:${256 * MiB}`);
});

t.test('qemu-img convert into and out of iscsi://, iSCSI → NBD and NBD → iSCSI', async (t) => {
  const src = path.join(tmp, 'src.img');
  const back = path.join(tmp, 'back.img');
  const data = crypto.randomBytes(12 * MiB);
  fs.writeFileSync(src, data);
  await runOk('qemu-img', ['convert', '-n', '--image-opts', `driver=file,filename=${src}`, '--target-image-opts', qemuOpts()], { timeoutMs: 120_000 });
  await runOk('qemu-img', ['convert', '--image-opts', qemuOpts(), '-O', 'raw', back], { timeoutMs: 120_000 });
  const got = fs.readFileSync(back);
  t.equal(got.length, 256 * MiB);
  t.ok(got.subarray(0, data.length).equals(data), 'out of iSCSI equals what went in');
  // Over NBD, the same bytes.
  const nbdBack = path.join(tmp, 'nbd.img');
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', s.tcpUri('0/0'), nbdBack], { timeoutMs: 120_000 });
  t.ok(fs.readFileSync(nbdBack).subarray(0, data.length).equals(data), 'written over iSCSI, read over NBD');
  // Written over NBD, read over iSCSI.
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 100M 1M', s.tcpUri('0/0')], { timeoutMs: 60_000 });
  const r = await runOk('qemu-io', ['--image-opts', qemuOpts(), '-c', 'read -P 0x5a 100M 1M'], { timeoutMs: 60_000 });
  t.notMatch(r.stdout, /Pattern verification failed/);
  t.match(r.stdout, /read 1048576\/1048576 bytes/);
});

t.test('CHAP: the right secret logs in, a wrong or missing one is refused; mutual CHAP checks the target', async (t) => {
  await s.call('POST', '/v1/hosts', { name: 'secure', farm: 'default' });
  await s.call('POST', '/v1/hosts/secure/initiators', { iqn: 'iqn.2026-01.test:secure' });
  await s.call('POST', '/v1/volumes', { name: 'secure-disk', size: '8M' });
  await s.call('POST', '/v1/bindings', { volume: 'secure-disk', host: 'secure', target: 0, lun: 0, map: true });
  const c = await s.call('POST', '/v1/hosts/secure/chap', { mode: 'mutual' });
  t.equal(c.secret.length, 16);
  const file = path.join(s.dataDir, 'iscsi', 'chap', 'secure.json');
  t.equal(fs.statSync(file).mode & 0o777, 0o600, 'secret file mode 0600');
  const shown = await s.call('GET', '/v1/hosts/secure');
  t.same(shown.iscsi.chap, { mode: 'mutual', username: 'secure', mutualUsername: 'blockgate' });
  t.notMatch(JSON.stringify(shown), c.secret, 'the secret is never shown again');
  const u = (cred: string, q = ''): string => `iscsi://${cred}${s.iscsi}/${demoTarget('secure', 0)}/0${q}`;
  const inq = (target: string): Promise<{ code: number | null; stdout: string; stderr: string }> => run('iscsi-inq', ['-i', 'iqn.2026-01.test:secure', target], { timeoutMs: 30_000 });
  let r = await inq(u(`${c.username}%${c.secret}@`));
  t.equal(r.code, 0, 'right secret');
  t.match(r.stdout, 'DIRECT_ACCESS');
  r = await inq(u(`${c.username}%wrong-secret-123@`));
  t.not(r.code, 0);
  t.match(r.stderr + r.stdout, /Authentication failure\(513\)/, 'wrong secret refused');
  r = await inq(u(''));
  t.match(r.stderr + r.stdout, /Authentication failure\(513\)/, 'no CHAP refused');
  r = await inq(u(`${c.username}%${c.secret}@`, `?target_user=${c.mutualUsername}&target_password=${c.mutualSecret}`));
  t.equal(r.code, 0, 'mutual CHAP');
  r = await inq(u(`${c.username}%${c.secret}@`, `?target_user=${c.mutualUsername}&target_password=not-the-target-secret`));
  t.not(r.code, 0, 'the initiator refuses a target that does not know the mutual secret');
  // Rotating makes the old secret useless.
  const c2 = await s.call('POST', '/v1/hosts/secure/chap', { mode: 'one-way' });
  r = await inq(u(`${c.username}%${c.secret}@`));
  t.not(r.code, 0, 'old secret refused after rotation');
  r = await inq(u(`${c2.username}%${c2.secret}@`));
  t.equal(r.code, 0, 'new secret works');
  // Protocols: a host without iscsi cannot log in.
  await s.call('PUT', '/v1/hosts/secure/protocols', { protocols: ['nbd'] });
  r = await inq(u(`${c2.username}%${c2.secret}@`));
  t.not(r.code, 0, 'iscsi not allowed for the host');
  await s.call('PUT', '/v1/hosts/secure/protocols', { protocols: ['nbd', 'iscsi'] });
  const ok = await IscsiWire.connect(s.iscsi);
  t.equal((await ok.login(DEMO_IQN, demoTarget())).bhs[36], 0);
  ok.command(tur(), { edtl: 0 });
  t.ok(await ok.recvReply());
  ok.close();
});

t.test('API refusals: bad iSCSI names, an initiator owned by another host', async (t) => {
  let r = await s.request('POST', '/v1/hosts/demo/initiators', { iqn: 'not an iqn' });
  t.equal(r.status, 400);
  await s.call('POST', '/v1/hosts', { name: 'second', farm: 'default' });
  r = await s.request('POST', '/v1/hosts/second/initiators', { iqn: DEMO_IQN });
  t.equal(r.status, 409);
  r = await s.request('DELETE', `/v1/hosts/second/initiators/${encodeURIComponent('iqn.2026-01.test:none')}`);
  t.equal(r.status, 404);
});

t.test('CLI: initiator names, CHAP shown once, protocols; the namespace shows iscsi:// URIs', async (t) => {
  await cliOk(s, ['host', 'create', 'clihost']);
  let r = await cliOk(s, ['host', 'initiator-add', 'clihost', 'iqn.2026-01.test:cli']);
  t.match(r.stdout, 'iqn.2026-01.test:cli');
  r = await cliOk(s, ['host', 'chap', 'clihost', '--mutual']);
  t.match(r.stdout, /secret/);
  t.match(r.stdout, 'not shown again');
  r = await cliOk(s, ['--json', 'host', 'show', 'clihost']);
  t.same(JSON.parse(r.stdout).iscsi.chap.mode, 'mutual');
  await cliOk(s, ['host', 'chap-clear', 'clihost']);
  r = await cliOk(s, ['host', 'protocols', 'clihost', 'nbd']);
  t.match(r.stdout, 'nbd');
  const bad = await cli(s, ['host', 'protocols', 'clihost', 'ftp']);
  t.not(bad.code, 0);
  r = await cliOk(s, ['host', 'initiator-remove', 'clihost', 'iqn.2026-01.test:cli']);
  t.match(r.stdout, 'no initiators');
  r = await cliOk(s, ['host', 'namespace', 'demo']);
  t.match(r.stdout, `iscsi://${s.iscsi}/${demoTarget()}/0`);
});
