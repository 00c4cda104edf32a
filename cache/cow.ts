import fs from 'node:fs';
import { BlockgateError } from '../common/errors.js';
import type { AllocationRun, VolumeHandle } from './store.js';

/**
 * Copy-on-write snapshots.
 *
 * A snapshot volume has extents of its own but starts with every region
 * "shared": its reads of a shared region are served from the origin. Before
 * anything changes a shared region (a write, trim or zero to the origin, or a
 * write to the snapshot itself), the region is "copied up": the origin's
 * bytes of that region are written into the snapshot's own extents, made
 * durable, then the region is recorded as "own" in the ownership map, durably.
 * Only then may the change go on. So, after a crash at any point, a region
 * the map calls shared still holds the point-in-time bytes on the origin, and
 * a region it calls own holds them on the snapshot.
 */

/** What a link needs from the store: reads as a host sees a volume, raw writes below gates and hooks, allocation runs, sync. */
export interface CowIo {
  read(vol: VolumeHandle, offset: number, length: number, dest: Buffer): Promise<void>;
  /** Written to the arrays (not left dirty in the cache); durable only after sync(). */
  write(vol: VolumeHandle, offset: number, src: Buffer): Promise<void>;
  runs(vol: VolumeHandle, offset: number, length: number): AllocationRun[];
  /** fdatasync of the volume's arrays, with their allocation maps after. */
  sync(vol: VolumeHandle): Promise<void>;
}

const MAGIC = 'BGCOW001';
const HEADER = 4096;

/**
 * The persisted per-region ownership of one snapshot: a 4 KiB header, then a
 * byte per region (0 shared, 1 own). A byte turns 1 only after the region's
 * bytes are durable on the snapshot, and is durable before the origin's
 * overwrite of that region is let through.
 */
export class OwnershipMap {
  private constructor(
    readonly path: string,
    readonly regionSize: number,
    readonly own: Uint8Array,
    private handle: fs.promises.FileHandle | null,
  ) {}

  get regions(): number {
    return this.own.length;
  }

  /** Writes a new all-shared map and syncs it (control path). */
  static async create(path: string, regionSize: number, regions: number): Promise<OwnershipMap> {
    const h = await fs.promises.open(path, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
    try {
      const head = Buffer.alloc(HEADER);
      head.write(MAGIC, 0, 'latin1');
      head.writeUInt32LE(regionSize, 8);
      head.writeUInt32LE(regions, 12);
      await h.write(head, 0, HEADER, 0);
      await h.truncate(HEADER + regions);
      await h.datasync();
    } catch (e) {
      await h.close().catch(() => undefined);
      throw mapError(path, e);
    }
    return new OwnershipMap(path, regionSize, new Uint8Array(regions), h);
  }

  /** Opens a map written by create(); refuses one that does not match (start-up). */
  static async open(path: string, regionSize: number, regions: number): Promise<OwnershipMap> {
    const h = await fs.promises.open(path, fs.constants.O_RDWR).catch((e: unknown) => {
      throw mapError(path, e);
    });
    try {
      const head = Buffer.alloc(HEADER);
      const { bytesRead } = await h.read(head, 0, HEADER, 0);
      if (bytesRead !== HEADER || head.toString('latin1', 0, 8) !== MAGIC || head.readUInt32LE(8) !== regionSize || head.readUInt32LE(12) !== regions) {
        throw new BlockgateError('IO_ERROR', `snapshot ownership map ${path} does not match its snapshot (${regions} regions of ${regionSize} bytes)`);
      }
      const own = new Uint8Array(regions);
      for (let done = 0; done < regions; ) {
        const r = await h.read(own, done, regions - done, HEADER + done);
        if (r.bytesRead === 0) throw new BlockgateError('IO_ERROR', `snapshot ownership map ${path} is truncated`);
        done += r.bytesRead;
      }
      return new OwnershipMap(path, regionSize, own, h);
    } catch (e) {
      await h.close().catch(() => undefined);
      throw mapError(path, e);
    }
  }

  /** Records region i as own, durably; the in-memory bit turns only once that is so. */
  async mark(i: number): Promise<void> {
    const h = this.handle;
    if (!h) throw new BlockgateError('IO_ERROR', `snapshot ownership map ${this.path} is closed`);
    await h.write(Uint8Array.of(1), 0, 1, HEADER + i).catch((e: unknown) => {
      throw mapError(this.path, e);
    });
    await h.datasync().catch((e: unknown) => {
      throw mapError(this.path, e);
    });
    this.own[i] = 1;
  }

  ownedCount(): number {
    let n = 0;
    for (const b of this.own) n += b;
    return n;
  }

  async close(): Promise<void> {
    const h = this.handle;
    this.handle = null;
    await h?.close();
  }
}

function mapError(path: string, e: unknown): BlockgateError {
  if (e instanceof BlockgateError) return e;
  const code = (e as NodeJS.ErrnoException).code;
  return new BlockgateError(code === 'ENOSPC' ? 'NO_SPACE' : 'IO_ERROR', `snapshot ownership map ${path}: ${code ?? (e as Error).message}`);
}

/** One snapshot's dependence on its origin. */
export class SnapshotLink {
  private readonly copying = new Map<number, Promise<void>>();

  constructor(
    readonly snapshot: VolumeHandle,
    readonly origin: VolumeHandle,
    readonly map: OwnershipMap,
    private readonly io: CowIo,
  ) {}

  get regionSize(): number {
    return this.map.regionSize;
  }

  get regions(): number {
    return this.map.regions;
  }

  isOwn(i: number): boolean {
    return this.map.own[i] === 1;
  }

  /** Copies region i up from the origin (once; concurrent callers share the copy). */
  own(i: number): Promise<void> {
    if (this.map.own[i] === 1) return Promise.resolve();
    const running = this.copying.get(i);
    if (running) return running;
    const p = this.copyUp(i).finally(() => this.copying.delete(i));
    this.copying.set(i, p);
    return p;
  }

  /** Every region [offset, offset+length) touches is own when this resolves. */
  async ownRange(offset: number, length: number): Promise<void> {
    const R = this.regionSize;
    const first = Math.floor(offset / R);
    const last = Math.min(this.regions - 1, Math.floor((offset + Math.max(length, 1) - 1) / R));
    for (let i = first; i <= last; i++) if (this.map.own[i] !== 1) await this.own(i);
  }

  /**
   * Ends the link while hosts may still write the origin: a write submitted before the unlink
   * still runs this link's hook, so every region is made to count as own (such a write copies
   * nothing more), and copies already running finish before the map closes — none writes into
   * space or a map that is gone.
   */
  async retire(): Promise<void> {
    this.map.own.fill(1);
    await Promise.allSettled([...this.copying.values()]);
    await this.map.close();
  }

  private async copyUp(i: number): Promise<void> {
    const R = this.regionSize;
    const off = i * R;
    const len = Math.min(R, this.snapshot.layout.size - off);
    // Only what the origin holds moves: holes stay holes in the snapshot's space (it was discarded at allocation).
    const runs = this.io.runs(this.origin, off, len).filter((r) => r.state !== 'hole');
    if (runs.length > 0) {
      const buf = Buffer.allocUnsafe(len);
      await this.io.read(this.origin, off, len, buf);
      for (const r of runs) await this.io.write(this.snapshot, r.offset, buf.subarray(r.offset - off, r.offset - off + r.length));
      await this.io.sync(this.snapshot);
    }
    await this.map.mark(i);
  }
}
