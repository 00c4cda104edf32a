import { revokedError, type BlockStore, type VolumeHandle } from '../../cache/index.js';
import { BlockgateError } from '../../common/errors.js';
import type { Unit } from '../namespace.js';
import type { AllocationRun, CompareAndWriteResult, Protocol, UnitCapabilities, UnitIO, ZeroRequest } from './contract.js';
import { changeMaps, type ChangeMap } from './changes.js';
import { OP, type IoStats } from './stats.js';

/** Largest single request a unit takes (NBD's 32 MiB payload limit; SCSI reports it as MAXIMUM TRANSFER LENGTH). */
export const MAX_TRANSFER = 32 * 1024 * 1024;
export const PREFERRED_BLOCK = 4096;

const outOfRange = (what: string, offset: number, length: number, size: number): BlockgateError =>
  new BlockgateError('OUT_OF_RANGE', `${what} of ${length} bytes at ${offset} is beyond the end of the unit (${size} bytes)`);
const readOnly = (): BlockgateError => new BlockgateError('READ_ONLY', 'the unit is read-only for this host');

/**
 * UnitIO over the block store. Every check a protocol would otherwise repeat
 * is here, and every request is counted in the unit's IoStats. Failures are
 * always a rejected promise (never thrown), so callers have one error path;
 * extents() and allData() are synchronous and throw.
 *
 * The fast paths allocate nothing when the cache completes the request: they
 * return null and the bytes are already in (or taken from) the caller's buffer.
 */
class StoreUnit implements UnitIO {
  readonly unit: Unit;
  readonly store: BlockStore;
  private readonly vol: VolumeHandle;
  private readonly stats: IoStats;
  private readonly changes: Map<number, ChangeMap>;

  constructor(store: BlockStore, unit: Unit, protocol: Protocol) {
    this.store = store;
    this.unit = unit;
    // The handle carries this protocol's fence, so the store can refuse what a revoke caught held.
    this.vol = { ...unit.volume, fence: unit.fences[protocol] };
    this.stats = unit.stats;
    this.changes = changeMaps(store);
  }

  size(): number {
    return this.vol.layout.size;
  }

  /** Capabilities are asked on every SCSI command: built once, and again only when provisioning changed. */
  private capsCached: UnitCapabilities | null = null;
  private capsGen = -1;

  caps(): UnitCapabilities {
    if (this.capsCached && this.capsGen === this.store.provisioningGen) return this.capsCached;
    this.capsGen = this.store.provisioningGen;
    return (this.capsCached = {
      readOnly: this.unit.readOnly,
      minBlock: 1,
      preferredBlock: PREFERRED_BLOCK,
      maxTransfer: MAX_TRANSFER,
      // Thick volumes keep every block allocated: no thin provisioning to report, and a trim keeps the bytes.
      thin: !this.store.isThick(this.vol.id),
      trimReadsZeroes: !this.store.isThick(this.vol.id),
      // One store and one cache behind every session; a flush syncs the volume's arrays.
      flushCoversAllSessions: true,
    });
  }

  read(offset: number, length: number, dest: Buffer): Promise<void> | null {
    if (!this.vol.layout.inRange(offset, length)) return this.refuse(OP.read, outOfRange('read', offset, length, this.vol.layout.size));
    const t0 = performance.now();
    let work: Promise<void> | null;
    try {
      work = this.store.readFast(this.vol, offset, length, dest);
    } catch (err) {
      work = Promise.reject(err as Error);
    }
    if (work === null) {
      this.stats.record(OP.read, length, (performance.now() - t0) / 1000, true);
      return null;
    }
    return this.timed(work, OP.read, length, t0);
  }

  write(offset: number, src: Buffer, fua: boolean): Promise<void> | null {
    if (this.vol.fence!.revoked) return this.refuse(OP.write, revokedError());
    if (this.unit.readOnly) return this.refuse(OP.write, readOnly());
    if (!this.vol.layout.inRange(offset, src.length)) return this.refuse(OP.write, outOfRange('write', offset, src.length, this.vol.layout.size));
    const t0 = performance.now();
    let work: Promise<void> | null;
    try {
      work = this.store.writeFast(this.vol, offset, src, fua);
    } catch (err) {
      work = Promise.reject(err as Error);
    }
    if (work === null) {
      if (this.changes.size > 0) this.changes.get(this.vol.id)?.mark(offset, src.length);
      this.stats.record(OP.write, src.length, (performance.now() - t0) / 1000, true);
      return null;
    }
    return this.timed(work, OP.write, src.length, t0, offset, src.length);
  }

  flush(): Promise<void> {
    const t0 = performance.now();
    return this.timed(this.call(() => this.store.flush(this.vol)), OP.flush, 0, t0);
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    if (this.vol.fence!.revoked) return this.refuse(OP.trim, revokedError());
    if (this.unit.readOnly) return this.refuse(OP.trim, readOnly());
    if (!this.vol.layout.inRange(offset, length)) return this.refuse(OP.trim, outOfRange('trim', offset, length, this.vol.layout.size));
    const t0 = performance.now();
    return this.timed(this.call(() => this.store.trim(this.vol, offset, length, fua)), OP.trim, 0, t0, offset, length);
  }

  zero(offset: number, length: number, req: ZeroRequest): Promise<void> {
    if (this.vol.fence!.revoked) return this.refuse(OP.zero, revokedError());
    if (this.unit.readOnly) return this.refuse(OP.zero, readOnly());
    if (!this.vol.layout.inRange(offset, length)) return this.refuse(OP.zero, outOfRange('zero', offset, length, this.vol.layout.size));
    const t0 = performance.now();
    const opts = { noHole: req.noHole, fast: req.fast, fua: req.fua };
    return this.timed(this.call(() => this.store.writeZeroes(this.vol, offset, length, opts)), OP.zero, 0, t0, offset, length);
  }

  prefetch(offset: number, length: number): Promise<void> {
    if (!this.vol.layout.inRange(offset, length)) return this.refuse(OP.other, outOfRange('prefetch', offset, length, this.vol.layout.size));
    const t0 = performance.now();
    return this.timed(this.call(() => this.store.prefetch(this.vol, offset, length)), OP.other, 0, t0);
  }

  extents(offset: number, length: number, max: number): AllocationRun[] {
    if (!this.vol.layout.inRange(offset, length)) throw outOfRange('allocation query', offset, length, this.vol.layout.size);
    return this.store.allocationRuns(this.vol, offset, length, max);
  }

  /** False too when the range is not inside the unit (the read that follows refuses it). */
  allData(offset: number, length: number): boolean {
    if (!this.vol.layout.inRange(offset, length)) return false;
    return this.store.allData(this.vol, offset, length);
  }

  /**
   * Reads the range, compares it with `expected` and writes `data` only if
   * they match, with the volume held (store.exclusive): no request of any
   * session, host or protocol touches the volume in between. The cost: every
   * other request to the volume waits while the requests already in flight
   * drain and while this one reads and writes (one round trip to the array on
   * a cache miss, plus the write's own cost: in memory under write-back,
   * through to the array otherwise or with FUA).
   */
  compareAndWrite(offset: number, expected: Buffer, data: Buffer, fua: boolean): Promise<CompareAndWriteResult> {
    const length = data.length;
    if (expected.length !== length) {
      return this.refuse(OP.other, new BlockgateError('BAD_REQUEST', `compare and write: ${expected.length} bytes to compare but ${length} to write`));
    }
    if (this.unit.readOnly) return this.refuse(OP.other, readOnly());
    if (!this.vol.layout.inRange(offset, length)) return this.refuse(OP.other, outOfRange('compare and write', offset, length, this.vol.layout.size));
    const t0 = performance.now();
    const work = this.store.exclusive(this.vol, async (io) => {
      if (this.vol.fence!.revoked) throw revokedError();
      const current = Buffer.allocUnsafe(length);
      await io.read(offset, length, current);
      const mismatchAt = firstDifference(current, expected);
      if (mismatchAt < 0) {
        try {
          await io.write(offset, data, fua);
        } finally {
          this.changed(offset, length);
        }
      }
      return { mismatchAt };
    });
    return work.then(
      (r) => {
        this.stats.record(OP.other, length, (performance.now() - t0) / 1000, true);
        return r;
      },
      (err: unknown) => {
        this.stats.record(OP.other, 0, (performance.now() - t0) / 1000, false);
        throw err;
      },
    );
  }

  /** A read answered from the allocation map alone (NBD hole chunks): counted as served at once. */
  countHoleRead(length: number): void {
    this.stats.record(OP.read, length, 0, true);
  }

  private refuse<T>(op: number, err: BlockgateError): Promise<T> {
    this.stats.record(op, 0, 0, false);
    return Promise.reject(err);
  }

  private call(fn: () => Promise<void>): Promise<void> {
    try {
      return fn();
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  private changed(offset: number, length: number): void {
    if (this.changes.size > 0) this.changes.get(this.vol.id)?.mark(offset, length);
  }

  /**
   * Counts `work` in IoStats when it settles; a modifying request
   * (changedLength > 0) marks its range in the volume's change map when it
   * settles, failed or not. A hold drains every modifying request (the store
   * counts those that came before its gate too) and the mark is taken one
   * step after the store saw the request finish, before the hold can get to
   * its instant (it still has a flush to do): a request marks the map of the
   * backup whose snapshot holds its bytes.
   */
  private timed(work: Promise<void>, op: number, bytes: number, t0: number, changedAt = 0, changedLength = 0): Promise<void> {
    return work.then(
      () => {
        if (changedLength > 0) this.changed(changedAt, changedLength);
        this.stats.record(op, bytes, (performance.now() - t0) / 1000, true);
      },
      (err: unknown) => {
        if (changedLength > 0) this.changed(changedAt, changedLength);
        this.stats.record(op, bytes, (performance.now() - t0) / 1000, false);
        throw err;
      },
    );
  }
}

function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  // Compare in 4 KiB steps with the native comparison, then find the byte.
  const STEP = 4096;
  for (let p = 0; p < a.length; p += STEP) {
    const e = Math.min(a.length, p + STEP);
    if (a.compare(b, p, e, p, e) !== 0) {
      for (let i = p; i < e; i++) if (a[i] !== b[i]) return i;
    }
  }
  return -1;
}

/** The same UnitIO for the same published unit and protocol, whichever session asks. */
const ios = new WeakMap<Unit, Partial<Record<Protocol, StoreUnit>>>();

/**
 * The UnitIO of a published unit as one protocol uses it. Sessions of a
 * protocol get the one instance per (store, unit, protocol): each protocol's
 * own fence decides when its held requests are refused. Units republished by
 * the manager get a new one (counters live in unit.stats, so they carry over).
 */
export function openUnit(store: BlockStore, unit: Unit, protocol: Protocol): UnitIO {
  let byProtocol = ios.get(unit);
  if (!byProtocol) ios.set(unit, (byProtocol = {}));
  let io = byProtocol[protocol];
  if (!io || io.store !== store) byProtocol[protocol] = io = new StoreUnit(store, unit, protocol);
  return io;
}
