/**
 * What keeping DATA/blockgate.config.json up to date costs, against an
 * online SQLite backup of the control database after each change: an
 * in-process manager with N volumes (bound and mapped across N/4 hosts)
 * and a few thousand events, on the local disk.
 *
 *   node dist/bench/config-save.js [--volumes 50,500] [--rounds 20]
 *
 * Results are kept in docs/data-directory.md.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { BlockStore } from '../cache/index.js';
import { SimpleEngine } from '../disks/index.js';
import { StorageManager } from '../manager/index.js';
import { Namespaces, NbdServer } from '../target/index.js';

const arg = (name: string, dflt: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : dflt;
};
const sizes = arg('volumes', '50,500').split(',').map(Number);
const rounds = Number(arg('rounds', '20'));
const M = 1024 * 1024;

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function one(n: number): Promise<Record<string, number | string>> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-bench-save-'));
  const namespaces = new Namespaces();
  const store = new BlockStore();
  const nbd = new NbdServer({ namespaces, store });
  const engine = new SimpleEngine((id) => store.getArray(id));
  const m = await StorageManager.open({ namespaces, store, frontends: [nbd], engine }, { dataDir, log: pino({ level: 'silent' }) });
  await m.start();
  try {
    m.createFarm('f');
    await m.createArray('a0', n * 4 * M);
    const hosts = Math.max(1, Math.floor(n / 4));
    for (let h = 0; h < hosts; h++) await m.createHost({ name: `h${h}`, farm: 'f' });
    for (let v = 0; v < n; v++) {
      m.createVolume({ name: `v${v}`, size: 4 * M, farm: 'f', configure: true });
      m.bind({ volume: `v${v}`, host: `h${v % hosts}`, target: 0, lun: Math.floor(v / hosts), map: true });
    }
    for (let e = 0; e < 5000; e++) m.events.emit('bench', null, { e });
    await m.config.save();
    const doc = JSON.stringify(m.config.export(), null, 2);

    const snap: number[] = [];
    const save: number[] = [];
    const noop: number[] = [];
    const backup: number[] = [];
    const copy = path.join(dataDir, 'backup.db');
    for (let r = 0; r < rounds; r++) {
      let t0 = performance.now();
      m.config.export();
      snap.push(performance.now() - t0);

      m.setSetting('bench.round', String(r));
      t0 = performance.now();
      await m.config.save();
      save.push(performance.now() - t0);

      t0 = performance.now();
      await m.config.save();
      noop.push(performance.now() - t0);

      t0 = performance.now();
      await m.db.backup(copy);
      backup.push(performance.now() - t0);
    }
    return {
      volumes: n,
      hosts,
      documentKiB: Math.round(Buffer.byteLength(doc) / 1024),
      databaseKiB: Math.round(fs.statSync(copy).size / 1024),
      snapshotMs: +median(snap).toFixed(2),
      saveChangedMs: +median(save).toFixed(2),
      saveUnchangedMs: +median(noop).toFixed(3),
      sqliteBackupMs: +median(backup).toFixed(2),
    };
  } finally {
    await m.stop();
    await nbd.close();
    for (const a of store.listArrays()) await a.close();
    m.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

const rows = [];
for (const n of sizes) rows.push(await one(n));
console.table(rows);
