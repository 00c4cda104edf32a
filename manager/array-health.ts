import fs from 'node:fs';
import path from 'node:path';
import type { ArrayFault, ArrayFile, ArrayIoError } from '../disks/index.js';
import type { StorageManager } from './manager.js';

/** Errors of one kind on one array closer together than this are one burst: one log line, one event. */
export const BURST_MS = 10_000;
/** File-system fill levels (percent used) that raise a warning event when crossed upwards. */
export const CAPACITY_LEVELS = [80, 90, 95] as const;
/** Default thin-provisioning limit: a new array may be at most this many times the file system's free space. */
export const DEFAULT_OVERCOMMIT = 4;

export interface FileSystemSpace {
  /** Directory the numbers were taken for (the array file's). */
  dir: string;
  size: number;
  /** Bytes an unprivileged writer can still use (statfs bavail). */
  available: number;
  usedPercent: number;
}

interface Burst {
  count: number;
  last: number;
}

/**
 * Watches the backing files: turns array faults into the failed state (with
 * one error line and one event naming the array and its volumes), logs I/O
 * error bursts once, re-checks every attached array's file on an interval
 * (deleted, replaced, truncated under us), and raises capacity warnings as
 * the backing file systems fill.
 */
export class ArrayHealth {
  private readonly bursts = new Map<string, Burst>();
  /** Faults of arrays by id (also those that failed to open at start). */
  private readonly faults = new Map<number, ArrayFault>();
  /** Highest capacity level reported per file-system directory. */
  private readonly levels = new Map<string, number>();
  private readonly spaces = new Map<string, FileSystemSpace>();
  private timer: NodeJS.Timeout | null = null;
  private checking: Promise<void> | null = null;

  constructor(
    private readonly m: StorageManager,
    private readonly intervalMs: number,
  ) {}

  /** Starts reporting an attached array's I/O errors. */
  watch(a: ArrayFile): void {
    a.onIoError = (arr, e) => this.ioError(arr, e);
  }

  /** Records an array that failed before it could serve (open refused at start or attach). */
  failedToOpen(a: ArrayFile): void {
    const f = a.fault!;
    if (this.faults.get(a.id)?.message === f.message) return;
    this.faults.set(a.id, f);
    this.announce(a, f);
  }

  cleared(arrayId: number): void {
    this.faults.delete(arrayId);
    for (const k of [...this.bursts.keys()]) if (k.startsWith(`${arrayId}:`)) this.bursts.delete(k);
  }

  fault(arrayId: number): ArrayFault | undefined {
    return this.faults.get(arrayId);
  }

  private ioError(a: ArrayFile, e: ArrayIoError): void {
    if (e.failed && a.fault && !this.faults.has(a.id)) {
      this.faults.set(a.id, a.fault);
      // Out of the I/O completion that found it: the cache may be mid-callback on this array.
      const f = a.fault;
      setImmediate(() => {
        this.m.dataPath.store.cache.dropArray(a.id);
        this.announce(a, f);
      });
    }
    // A fault found by a check (not by an I/O) is announced above; there is no error burst to log.
    if (e.op === 'check') return;
    const key = `${a.id}:${e.errno}`;
    const now = Date.now();
    const b = this.bursts.get(key);
    if (b && now - b.last < BURST_MS) {
      b.count++;
      b.last = now;
      return;
    }
    this.bursts.set(key, { count: 1, last: now });
    const previous = b?.count;
    setImmediate(() => {
      const volumes = this.m.volumesOnArray(a.id);
      this.m.log.error(
        { op: 'array.io-error', array: a.name, volumes, errno: e.errno, operation: e.op, ...(previous ? { previousBurst: previous } : {}) },
        `backing I/O error on array ${a.name} (${e.errno}); volumes ${volumes.join(', ') || '(none)'}; further ${e.errno} errors on it within ${BURST_MS / 1000}s are counted, not logged`,
      );
      this.m.events.emit('array.io-error', `array/${a.name}`, { array: a.name, volumes, errno: e.errno, operation: e.op });
    });
  }

  private announce(a: ArrayFile, f: ArrayFault): void {
    const volumes = this.m.volumesOnArray(a.id);
    this.m.log.error(
      { op: 'array.failed', array: a.name, volumes, reason: f.reason, errno: f.errno, file: a.path },
      `array ${a.name} failed: ${f.message}; I/O to volumes ${volumes.join(', ') || '(none)'} gets EIO until it is repaired and attached`,
    );
    this.m.events.emit('array.failed', `array/${a.name}`, { array: a.name, volumes, reason: f.reason, message: f.message, errno: f.errno ?? null });
  }

  // ---- periodic check -------------------------------------------------------

  start(): void {
    if (this.intervalMs <= 0 || this.timer) return;
    this.timer = setInterval(() => void this.check(), this.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.checking;
  }

  /** One pass: every attached array's file still there, whole and the same; file-system fill levels. */
  check(): Promise<void> {
    this.checking ??= this.checkNow().finally(() => (this.checking = null));
    return this.checking;
  }

  private async checkNow(): Promise<void> {
    const rows = this.m.listArrays();
    const store = this.m.dataPath.store;
    const byDir = new Map<string, string[]>();
    for (const r of rows) {
      const a = store.listArrays().find((x) => x.id === r.id);
      if (a && !a.fault && a.isOpen) await a.verify();
      const dir = path.dirname(r.path);
      byDir.set(dir, [...(byDir.get(dir) ?? []), r.name]);
    }
    for (const [dir, arrays] of byDir) {
      const s = await this.space(dir).catch(() => null);
      if (!s) continue;
      const level = [...CAPACITY_LEVELS].reverse().find((l) => s.usedPercent >= l) ?? 0;
      const before = this.levels.get(dir) ?? 0;
      this.levels.set(dir, level);
      if (level > before) {
        this.m.log.warn({ op: 'array.capacity', dir, arrays, usedPercent: s.usedPercent, available: s.available, level }, `file system of ${dir} is ${s.usedPercent}% full (arrays ${arrays.join(', ')})`);
        this.m.events.emit('array.capacity', `fs/${dir}`, { dir, arrays, level, usedPercent: s.usedPercent, available: s.available, size: s.size });
      }
    }
  }

  /** statfs of a directory, remembered for the health report. */
  async space(dir: string): Promise<FileSystemSpace> {
    const st = await fs.promises.statfs(dir);
    const size = st.blocks * st.bsize;
    const used = (st.blocks - st.bfree) * st.bsize;
    const s: FileSystemSpace = { dir, size, available: st.bavail * st.bsize, usedPercent: size > 0 ? Math.round((used / size) * 1000) / 10 : 0 };
    this.spaces.set(dir, s);
    return s;
  }

  // ---- report ------------------------------------------------------------------

  /** What /v1/health says beyond liveness: failed arrays (degraded) and filling file systems. */
  report(): { status: 'ok' | 'degraded'; reasons: Record<string, unknown>[]; warnings: Record<string, unknown>[] } {
    const names = new Map(this.m.listArrays().map((a) => [a.id, a.name]));
    const reasons: Record<string, unknown>[] = [];
    for (const [id, f] of this.faults) {
      const name = names.get(id);
      if (!name) continue;
      reasons.push({ kind: 'array-failed', array: name, reason: f.reason, message: f.message, since: f.at, volumes: this.m.volumesOnArray(id) });
    }
    const warnings: Record<string, unknown>[] = [];
    for (const [dir, level] of this.levels) {
      const s = this.spaces.get(dir);
      if (level > 0 && s) warnings.push({ kind: 'fs-filling', dir, level, usedPercent: s.usedPercent, available: s.available });
    }
    return { status: reasons.length ? 'degraded' : 'ok', reasons, warnings };
  }
}
