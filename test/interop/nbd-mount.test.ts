import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { startServer, type TestServer } from '../helpers/server.js';
import { bounded, daemon, killChildren, mounted, unmount, until } from '../helpers/fuse.js';
import { requireTools, run, runOk } from '../helpers/tools.js';

// A host really mounting a disk: nbdfuse exposes the export as a file,
// mkfs.ext4 makes a file system on it, fuse2fs mounts that, files are
// written and read, everything is unmounted, e2fsck -fn is clean, and after
// a server restart the same files read back.

requireTools('nbdfuse', 'fuse2fs', 'mkfs.ext4', 'e2fsck');

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-mount-'));
const dataDir = path.join(work, 'data');
const nbdMnt = path.join(work, 'nbd');
const fsMnt = path.join(work, 'fs');
fs.mkdirSync(dataDir);
fs.mkdirSync(nbdMnt);
fs.mkdirSync(fsMnt);
async function attach(s: TestServer, readOnly: boolean): Promise<{ detach: () => Promise<void> }> {
  const nf = daemon('nbdfuse', [...(readOnly ? ['--readonly'] : []), nbdMnt, s.unixUri('demo', '0/0')]);
  const img = path.join(nbdMnt, 'nbd');
  await until('nbdfuse', () => mounted(nbdMnt) && fs.existsSync(img));
  return {
    detach: async () => {
      await unmount(nbdMnt);
      await bounded(nf.exited, 'nbdfuse exit');
    },
  };
}

function mountFs(readOnly: boolean): { exited: Promise<number | null> } {
  const opts = readOnly ? 'fakeroot,ro' : 'fakeroot';
  return daemon('fuse2fs', ['-f', '-o', opts, path.join(nbdMnt, 'nbd'), fsMnt]);
}

t.teardown(async () => {
  await unmount(fsMnt).catch(() => undefined);
  await unmount(nbdMnt).catch(() => undefined);
  killChildren();
  fs.rmSync(work, { recursive: true, force: true });
});

const payload = Buffer.alloc(8 * 1024 * 1024);
for (let i = 0; i < payload.length; i += 32) crypto.createHash('sha256').update(`block ${i}`).digest().copy(payload, i);
const digest = crypto.createHash('sha256').update(payload).digest('hex');

t.test('mkfs.ext4 on nbdfuse, mount with fuse2fs, write, unmount, fsck, restart, read', async (t) => {
  const s1 = await startServer(t, { dataDir });
  const n1 = await attach(s1, false);
  await runOk('mkfs.ext4', ['-q', '-F', path.join(nbdMnt, 'nbd')], { timeoutMs: 120_000 });
  let f = mountFs(false);
  await until('fuse2fs', () => mounted(fsMnt));
  fs.mkdirSync(path.join(fsMnt, 'dir'));
  await fs.promises.writeFile(path.join(fsMnt, 'dir', 'hello.txt'), 'hello from a blockgate volume\n');
  await fs.promises.writeFile(path.join(fsMnt, 'big.bin'), payload);
  t.equal(crypto.createHash('sha256').update(await fs.promises.readFile(path.join(fsMnt, 'big.bin'))).digest('hex'), digest, 'read back while mounted');
  await unmount(fsMnt);
  t.equal(await bounded(f.exited, 'fuse2fs exit'), 0, 'fuse2fs exited cleanly');
  const fsck = await run('e2fsck', ['-fn', path.join(nbdMnt, 'nbd')], { timeoutMs: 120_000 });
  t.equal(fsck.code, 0, `e2fsck -fn is clean\n${fsck.stdout}${fsck.stderr}`);
  await n1.detach();
  await s1.stop();

  const s2 = await startServer(t, { dataDir });
  const n2 = await attach(s2, true);
  f = mountFs(true);
  await until('fuse2fs', () => mounted(fsMnt));
  t.equal(await fs.promises.readFile(path.join(fsMnt, 'dir', 'hello.txt'), 'utf8'), 'hello from a blockgate volume\n');
  t.equal(crypto.createHash('sha256').update(await fs.promises.readFile(path.join(fsMnt, 'big.bin'))).digest('hex'), digest, 'same data after restart');
  await unmount(fsMnt);
  await bounded(f.exited, 'fuse2fs exit');
  await n2.detach();
});
