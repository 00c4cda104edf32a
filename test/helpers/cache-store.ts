import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BlockStore, type VolumeHandle } from '../../cache/index.js';
import { ArrayFile, type IoRoute } from '../../disks/index.js';

/** Sizes the cache tests speak in: KiB, MiB, a 4 KiB page, the default 64 KiB cache block. */
export const K = 1024;
export const M = 1024 * K;
export const P = 4 * K;
export const BS = 64 * K;

export interface StoreOptions {
  size?: number;
  blockSize?: number;
  dirtyLimit?: number;
  /** Dirty bytes above which write-back starts at once (default: half the dirty limit). */
  dirtyBackground?: number;
  arraySize?: number;
  route?: IoRoute;
  /** Write-back writes at least this long go around the cache (default: the cache's own, 256 KiB). */
  writeAroundMin?: number;
}

/**
 * A block store over one real sparse array file (id 1) in a temp dir, closed
 * and removed in teardown. Write-back waits a minute: nothing is written back
 * unless pressure or a flush asks.
 */
export async function storeOnArray(tt: { teardown: (fn: () => unknown) => void }, opts: StoreOptions = {}): Promise<{ store: BlockStore; a: ArrayFile; dir: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-store-'));
  const store = new BlockStore({
    size: opts.size ?? 4 * 1024 * 1024,
    blockSize: opts.blockSize ?? 64 * 1024,
    dirtyLimit: opts.dirtyLimit,
    dirtyBackground: opts.dirtyBackground,
    writebackDelayMs: 60_000,
    route: opts.route,
    writeAroundMin: opts.writeAroundMin,
  });
  const a = new ArrayFile(1, 'a1', path.join(dir, 'a1.img'), opts.arraySize ?? 16 * 1024 * 1024);
  await a.open(true);
  store.addArray(a);
  tt.teardown(async () => {
    await store.close();
    await a.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { store, a, dir };
}

/** The array file's bytes, read below the cache and the allocation map. */
export function onDisk(a: ArrayFile, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  const fd = fs.openSync(a.path, 'r');
  try {
    fs.readSync(fd, b, 0, length, offset);
  } finally {
    fs.closeSync(fd);
  }
  return b;
}

/** Deterministic bytes (xorshift32), different per seed, never zero (so they never pass for a hole). */
export function seededBytes(n: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(n);
  let x = (Math.imul(seed + 1, 2654435761) >>> 0) || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = (x & 255) | 1;
  }
  return out;
}

/** What a host reads from the volume now. */
export async function readVol(store: BlockStore, v: VolumeHandle, offset: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length);
  await store.read(v, offset, length, b);
  return b;
}
