import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { BlockStore } from '../../cache/index.js';
import { SimpleEngine } from '../../disks/index.js';
import { StorageManager } from '../../manager/index.js';
import { Namespaces, NbdServer } from '../../target/index.js';

/** An in-process manager on a temporary data directory (no API, no shared listener). */
export async function startManager(t: { teardown: (fn: () => unknown) => void }, faults: string[] = []): Promise<{ m: StorageManager; namespaces: Namespaces; store: BlockStore; dataDir: string }> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-mgr-'));
  const namespaces = new Namespaces();
  const store = new BlockStore();
  const nbd = new NbdServer({ namespaces, store });
  const engine = new SimpleEngine((id) => store.getArray(id));
  const m = await StorageManager.open({ namespaces, store, frontends: [nbd], engine }, { dataDir, log: pino({ level: 'silent' }), faults });
  await m.start();
  t.teardown(async () => {
    await m.stop();
    await nbd.close();
    // Dirty write-back blocks reach the arrays before they close (a later write-back to a closed file never ends).
    await store.close();
    for (const a of store.listArrays()) await a.close();
    m.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  return { m, namespaces, store, dataDir };
}
