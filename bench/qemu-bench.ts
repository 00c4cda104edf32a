/**
 * The iSCSI lane's driver. Debian's fio has no libiscsi engine and
 * `iscsi-perf` only reads, so the lane runs `qemu-img bench` over qemu's
 * libiscsi block driver: reads and writes, a fixed block size and queue depth,
 * one session per run. It runs a count of requests, not a time, so each
 * measurement is preceded by a short run that doubles as the ramp and sizes
 * the measured run to about --runtime seconds.
 */
import type { ProcessRegistry } from './procs.js';
import type { RunStats } from './stats.js';
import type { FioTiming } from './fio.js';
import type { Workload } from './workloads.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * "Random" 4k is a stride of 257 blocks: odd, so over an export of a
 * power-of-two number of blocks it visits every block once before repeating,
 * and consecutive requests never touch neighbouring blocks (qemu-img bench
 * has no random mode).
 */
const RAND_STRIDE = 257 * 4 * KiB;

/** Workloads this driver can run: one direction, one connection. */
export function iscsiRunnable(w: Workload): boolean {
  return w.jobs === 1 && w.kind !== 'randrw';
}

/** The line qemu-img bench ends with; null if absent. */
export function parseQemuBench(out: string): number | null {
  const m = /Run completed in ([0-9.]+) seconds/.exec(out);
  return m ? Number(m[1]) : null;
}

function shapeOf(w: Workload): { bs: number; step: number; write: boolean } {
  const write = w.kind === 'randwrite' || w.kind === 'seqwrite';
  return w.job === 'seq-1m.fio' ? { bs: MiB, step: MiB, write } : { bs: 4 * KiB, step: RAND_STRIDE, write };
}

async function bench(reg: ProcessRegistry, image: string, args: string[], limitS: number): Promise<number> {
  // writeback: no FUA on writes and no flush per request, like the NBD rows' fio jobs.
  const proc = reg.start('qemu-img bench', 'qemu-img', ['bench', '--image-opts', '-t', 'writeback', ...args, image]);
  const timer = setTimeout(() => void reg.stop(proc, 2_000), limitS * 1000);
  const { code, signal } = await proc.exited.finally(() => clearTimeout(timer));
  const secs = parseQemuBench(proc.output());
  if (code !== 0 || secs === null) throw new Error(`qemu-img bench on ${image} failed (${code ?? signal}):\n${proc.output()}`);
  return secs;
}

function argsFor(w: Workload, count: number, offset: number): string[] {
  const { bs, step, write } = shapeOf(w);
  return ['-c', String(count), '-d', String(w.qd), '-s', String(bs), '-S', String(step), '-o', String(offset), ...(write ? ['-w', '--pattern=165'] : [])];
}

export async function runIscsiWorkload(reg: ProcessRegistry, image: string, w: Workload, t: FioTiming, sizeBytes: number): Promise<RunStats> {
  if (!iscsiRunnable(w)) throw new Error(`the iSCSI driver cannot run ${w.id}`);
  const { bs } = shapeOf(w);
  const probe = Math.max(w.qd * 4, bs === MiB ? 64 : 2000);
  const probeS = await bench(reg, image, argsFor(w, probe, 0), 120);
  const rate = probe / Math.max(probeS, 1e-3);
  const count = Math.max(w.qd * 4, Math.round(rate * t.runtimeS));
  // Start where the probe stopped, so a read run does not replay the blocks the probe just cached.
  const { step, write } = shapeOf(w);
  const secs = await bench(reg, image, argsFor(w, count, (probe * step) % sizeBytes), t.runtimeS * 10 + 60);
  const iops = count / secs;
  return { iops, readIops: write ? 0 : iops, writeIops: write ? iops : 0, mibps: (iops * bs) / MiB, p50us: Number.NaN, p99us: Number.NaN };
}

/** Writes every byte of the LUN once (1 MiB requests, QD 8), like jobs/fill.fio. */
export async function fillIscsi(reg: ProcessRegistry, image: string, sizeBytes: number): Promise<void> {
  await bench(reg, image, ['-c', String(Math.ceil(sizeBytes / MiB)), '-d', '8', '-s', String(MiB), '-w', '--pattern=90'], 300);
}
