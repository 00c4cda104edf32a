import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { checkArrayIdentity, readArrayIdentity, writeArrayIdentity } from '../../disks/index.js';

t.test('an array identity tells ours, a copy, the very file of another appliance, and a mismatch apart', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-id-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'a0.img');
  fs.writeFileSync(file, Buffer.alloc(4096));
  const claim = { appliance: 'abc1234', dataDir: '/srv/a', array: 1, name: 'a0', size: 4096 };

  t.same(await checkArrayIdentity(file, claim), { kind: 'unstamped' });
  await writeArrayIdentity(file, claim);
  t.same(fs.readdirSync(dir).sort(), ['a0.img', 'a0.img.id'], 'written atomically: no temporary file left');
  const id = await readArrayIdentity(file);
  t.equal(id?.appliance, 'abc1234');
  t.equal(id?.file.ino, fs.statSync(file).ino, 'names the inode it was written for');

  t.match(await checkArrayIdentity(file, claim), { kind: 'ours', restamp: false });
  t.match(await checkArrayIdentity(file, { ...claim, size: 8192 }), { kind: 'ours', restamp: true }, 'a size change is re-stamped');
  t.match(await checkArrayIdentity(file, { ...claim, dataDir: '/srv/b' }), { kind: 'foreign' }, 'same inode, another data directory');
  t.match(await checkArrayIdentity(file, { ...claim, array: 2 }), { kind: 'mismatch', reason: /array id 1/ });
  t.match(await checkArrayIdentity(file, { ...claim, appliance: 'fff0000' }), { kind: 'mismatch', reason: /appliance abc1234/ });

  // A hard link is the same inode: still the other appliance's file.
  const link = path.join(dir, 'link.img');
  fs.linkSync(file, link);
  fs.copyFileSync(`${file}.id`, `${link}.id`);
  t.match(await checkArrayIdentity(link, { ...claim, dataDir: '/srv/b' }), { kind: 'foreign' });
  // A copy with its identity beside it is another inode: not the other appliance's file.
  const copy = path.join(dir, 'copy.img');
  fs.copyFileSync(file, copy);
  fs.copyFileSync(`${file}.id`, `${copy}.id`);
  t.match(await checkArrayIdentity(copy, { ...claim, dataDir: '/srv/b' }), { kind: 'copy' });

  fs.writeFileSync(`${file}.id`, '{ not json');
  await t.rejects(checkArrayIdentity(file, claim), { code: 'CONFLICT', message: /damaged/ });
});
