import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { BlockStore } from '../../cache/index.js';
import { SimpleEngine } from '../../disks/index.js';
import { StorageManager } from '../../manager/index.js';
import { largeBuffer, releaseLarge, smallBuffer } from '../../target/core/index.js';
import { Namespaces, NbdServer, openUnit } from '../../target/index.js';
import { IscsiServer } from '../../target/iscsi/index.js';
import { ScsiCommandSet } from '../../target/iscsi/scsi/index.js';

export interface InProcessAppliance {
  m: StorageManager;
  namespaces: Namespaces;
  nbd: NbdServer;
  iscsi: IscsiServer;
  /** The iSCSI portal's port on 127.0.0.1. */
  port: number;
}

/**
 * A real manager, store and both frontends in this process, wired as
 * `blockgate serve` wires them: for tests that look inside (the frontends'
 * own state, process-wide buffers) while real sockets carry the protocol.
 * Everything is stopped and the data directory removed at teardown.
 */
export async function inProcessAppliance(t: { teardown: (fn: () => unknown) => void }, prefix: string): Promise<InProcessAppliance> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `blockgate-${prefix}-`));
  const namespaces = new Namespaces();
  const store = new BlockStore();
  const nbd = new NbdServer({ namespaces, store });
  let mgr: StorageManager | null = null;
  const iscsi = new IscsiServer({
    namespaces,
    unitIO: (u) => openUnit(store, u, 'iscsi'),
    device: (ctx) => new ScsiCommandSet(ctx),
    reservations: { load: (id) => mgr!.iscsi.reservations.load(id), save: (id, s) => mgr!.iscsi.reservations.save(id, s) },
    setCachePolicy: (id, p) => mgr!.iscsi.setCachePolicy(id, p),
    initiators: { initiator: (name) => mgr?.iscsi.initiator(name) ?? null },
  });
  const engine = new SimpleEngine((id) => store.getArray(id));
  const m = await StorageManager.open({ namespaces, store, frontends: [nbd, iscsi], engine }, { dataDir, log: pino({ level: 'silent' }) });
  mgr = m;
  await m.start();
  const port = await iscsi.listen('127.0.0.1', 0);
  t.teardown(async () => {
    await m.stop();
    await iscsi.close();
    await nbd.close();
    await store.close();
    for (const a of store.listArrays()) await a.close();
    m.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  return { m, namespaces, nbd, iscsi, port };
}

/**
 * The next buffer of `size` the data path's pool hands out, once it holds
 * `expect` (a reply buffer goes back when the socket's write callback runs,
 * which may be just after the client has the bytes); gives up after ~0.5 s
 * and returns whatever the pool hands out then.
 */
export async function pooledOnceSent(size: number, expect: Buffer): Promise<Buffer> {
  let b = largeBuffer(size);
  for (let i = 0; i < 50 && !b.equals(expect); i++) {
    releaseLarge(b);
    await new Promise((r) => setTimeout(r, 10));
    b = largeBuffer(size);
  }
  return b;
}

/**
 * How far the data path's small-buffer arena moves while `run` runs; a fresh
 * arena between the two marks makes the distance meaningless, so that round is
 * run again (up to three). -1 when every round crossed an arena.
 */
export async function arenaMoved(run: () => Promise<void>): Promise<number> {
  for (let round = 0; round < 3; round++) {
    const before = smallBuffer(8);
    await run();
    const after = smallBuffer(8);
    if (after.buffer === before.buffer) return after.byteOffset - before.byteOffset;
  }
  return -1;
}

/**
 * Counts the Buffer.allocUnsafe / allocUnsafeSlow calls `counts(size)` picks
 * while `run` runs (the appliance is in this process), restoring both after.
 */
export async function buffersMade(counts: (size: number) => boolean, run: () => Promise<void>): Promise<number> {
  let made = 0;
  const { allocUnsafe, allocUnsafeSlow } = Buffer;
  Buffer.allocUnsafe = (n: number) => ((made += counts(n) ? 1 : 0), allocUnsafe(n));
  Buffer.allocUnsafeSlow = (n: number) => ((made += counts(n) ? 1 : 0), allocUnsafeSlow(n));
  try {
    await run();
  } finally {
    Buffer.allocUnsafe = allocUnsafe;
    Buffer.allocUnsafeSlow = allocUnsafeSlow;
  }
  return made;
}
