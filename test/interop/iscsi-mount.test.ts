import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { bounded, daemon, killChildren, mounted, unmount, until } from '../helpers/fuse.js';
import { DEMO_IQN, demoTarget } from '../helpers/iscsi-wire.js';
import { startServer } from '../helpers/server.js';
import { requireTools, run, runOk } from '../helpers/tools.js';

// A real file system over an iSCSI path: qemu-nbd (qemu's own iSCSI
// initiator, libiscsi) logs in to blockgate's iSCSI target and exports the
// unit on a unix socket; nbdfuse turns that into a file; mkfs.ext4 makes a
// file system there, fuse2fs mounts it, files are written, everything is
// unmounted and e2fsck -fn is clean. Then the volume is read straight from
// blockgate over NBD: the same file system, fsck-clean, with the same bytes.

requireTools('qemu-nbd', 'qemu-img', 'qemu-iscsi', 'nbdfuse', 'fuse2fs', 'mkfs.ext4', 'e2fsck', 'debugfs');
const skip = fs.existsSync('/dev/fuse') ? false : 'no /dev/fuse on this machine';

const M = 1024 * 1024;
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-iscsi-mount-'));
const sock = path.join(work, 'qemu-nbd.sock');
const nbdMnt = path.join(work, 'nbd');
const fsMnt = path.join(work, 'fs');
fs.mkdirSync(nbdMnt);
fs.mkdirSync(fsMnt);

t.teardown(async () => {
  await unmount(fsMnt).catch(() => undefined);
  await unmount(nbdMnt).catch(() => undefined);
  killChildren();
  fs.rmSync(work, { recursive: true, force: true });
});

const payload = Buffer.alloc(6 * M);
for (let i = 0; i < payload.length; i += 32) crypto.createHash('sha256').update(`iscsi block ${i}`).digest().copy(payload, i);
const digest = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');

t.test('ext4 made, written and checked through qemu-nbd on iscsi://, then read back over NBD', { skip }, async (t) => {
  const s = await startServer(t);
  await s.call('POST', '/v1/volumes', { name: 'iscsi-fs', size: '64M' });
  await s.call('POST', '/v1/bindings', { volume: 'iscsi-fs', host: 'demo', target: 0, lun: 5, map: true });
  const i = s.iscsi.lastIndexOf(':');
  const opts = `driver=iscsi,transport=tcp,portal=${s.iscsi.slice(0, i)}:${s.iscsi.slice(i + 1)},target=${demoTarget()},lun=5,initiator-name=${DEMO_IQN}`;

  const qn = daemon('qemu-nbd', ['--image-opts', opts, '--socket', sock, '--persistent', '--cache=writeback']);
  await until('qemu-nbd socket', () => fs.existsSync(sock), 60_000);
  const nf = daemon('nbdfuse', [nbdMnt, `nbd+unix:///?socket=${sock}`]);
  const img = path.join(nbdMnt, 'nbd');
  await until('nbdfuse', () => mounted(nbdMnt) && fs.existsSync(img));
  t.equal(fs.statSync(img).size, 64 * M, 'the iSCSI unit, through qemu-nbd and nbdfuse');

  await runOk('mkfs.ext4', ['-q', '-F', img], { timeoutMs: 120_000 });
  const f = daemon('fuse2fs', ['-f', '-o', 'fakeroot', img, fsMnt]);
  await until('fuse2fs', () => mounted(fsMnt));
  fs.mkdirSync(path.join(fsMnt, 'dir'));
  await fs.promises.writeFile(path.join(fsMnt, 'dir', 'hello.txt'), 'hello over iSCSI\n');
  await fs.promises.writeFile(path.join(fsMnt, 'big.bin'), payload);
  t.equal(digest(await fs.promises.readFile(path.join(fsMnt, 'big.bin'))), digest(payload), 'read back while mounted');
  await unmount(fsMnt);
  t.equal(await bounded(f.exited, 'fuse2fs exit'), 0, 'fuse2fs exited cleanly');
  const fsck = await run('e2fsck', ['-fn', img], { timeoutMs: 120_000 });
  t.equal(fsck.code, 0, `e2fsck -fn over iSCSI is clean\n${fsck.stdout}${fsck.stderr}`);
  await unmount(nbdMnt);
  await bounded(nf.exited, 'nbdfuse exit');
  // qemu-nbd flushes (SYNCHRONIZE CACHE) and logs out on SIGTERM.
  qn.child.kill('SIGTERM');
  t.equal(await bounded(qn.exited, 'qemu-nbd exit', 60_000), 0, 'qemu-nbd exited cleanly');

  // The same volume straight from blockgate over NBD.
  const raw = path.join(work, 'over-nbd.img');
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', s.unixUri('demo', '0/5'), raw], { timeoutMs: 120_000 });
  const fsck2 = await run('e2fsck', ['-fn', raw], { timeoutMs: 120_000 });
  t.equal(fsck2.code, 0, `e2fsck -fn of the NBD copy is clean\n${fsck2.stdout}${fsck2.stderr}`);
  const out = path.join(work, 'big.out');
  await runOk('debugfs', ['-R', `dump /big.bin ${out}`, raw], { timeoutMs: 60_000 });
  t.equal(digest(fs.readFileSync(out)), digest(payload), 'the file written over iSCSI, read over NBD');
  const hello = await runOk('debugfs', ['-R', 'cat /dir/hello.txt', raw], { timeoutMs: 60_000 });
  t.equal(hello.stdout, 'hello over iSCSI\n');
});
