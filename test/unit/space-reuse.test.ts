import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import t from 'tap';
import { BlockStore } from '../../cache/index.js';
import { ArrayFile, SimpleEngine } from '../../disks/index.js';
import { StorageManager } from '../../manager/index.js';
import { Namespaces, NbdServer } from '../../target/index.js';

// Space that held one volume's data and is handed to a new volume reads as
// zeroes (and holes) through the new volume, also after a restart.

const MiB = 1024 * 1024;

async function open(dataDir: string): Promise<{ m: StorageManager; store: BlockStore }> {
  const namespaces = new Namespaces();
  const store = new BlockStore({ size: 16 * MiB });
  const nbd = new NbdServer({ namespaces, store });
  const m = await StorageManager.open({ namespaces, store, frontends: [nbd], engine: new SimpleEngine((id) => store.getArray(id)) }, { dataDir, log: pino({ level: 'silent' }) });
  for (const a of m.listArrays()) {
    // start() would also open host listeners; arrays are all this test needs.
    const f = new ArrayFile(a.id, a.name, a.path, a.size);
    await f.open(false);
    store.addArray(f);
  }
  return { m, store };
}

t.test('a volume on reused space never shows the previous owner\'s bytes', async (t) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-reuse-'));
  t.teardown(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  let { m, store } = await open(dataDir);
  await m.createArray('a0', 16 * MiB);
  const v1 = m.createVolume({ name: 'old', size: 8 * MiB });
  const h1 = { id: v1.id, layout: m.layoutOf(v1.id), cachePolicy: 'none' as const };
  await store.write(h1, 0, Buffer.alloc(8 * MiB, 0x99), false);
  await store.flush(h1);
  // The volume is released (as scrub-less deletion would), its extents free again.
  m.db.prepare('DELETE FROM extents WHERE volume_id = ?').run(v1.id);
  const v2 = m.createVolume({ name: 'new', size: 8 * MiB });
  const h2 = { id: v2.id, layout: m.layoutOf(v2.id), cachePolicy: 'none' as const };
  t.same(m.extentsOf(v2.id).map((e) => e.offset), [0], 'the new volume got the same space');
  const buf = Buffer.alloc(8 * MiB, 0xff);
  await store.read(h2, 0, 8 * MiB, buf);
  t.ok(buf.every((x) => x === 0), 'reads zeroes');
  t.same(store.allocationRuns(h2, 0, 8 * MiB, 10), [{ offset: 0, length: 8 * MiB, state: 'hole' }], 'and reports a hole');
  const crashed = store;
  t.teardown(async () => {
    for (const a of crashed.listArrays()) await a.close();
  });
  m.close();

  // Reopened as after a crash (the first arrays never closed or flushed again): still zeroes.
  ({ m, store } = await open(dataDir));
  const h3 = { id: v2.id, layout: m.layoutOf(v2.id), cachePolicy: 'none' as const };
  buf.fill(0xff);
  await store.read(h3, 0, 8 * MiB, buf);
  t.ok(buf.every((x) => x === 0), 'still zeroes after reopening');
  for (const a of store.listArrays()) await a.close();
  m.close();
});
