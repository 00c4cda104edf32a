/**
 * Pure numbers for the benchmark: turning fio's JSON into one result per run,
 * medians across rounds and ratios between servers. No I/O here, so the unit
 * tests can feed it recorded output.
 */

/** What one fio run measured, read and write combined. */
export interface RunStats {
  iops: number;
  readIops: number;
  writeIops: number;
  mibps: number;
  /** Completion latency percentiles in microseconds, over reads and writes together. */
  p50us: number;
  p99us: number;
}

interface FioClat {
  N?: number;
  percentile?: Record<string, number>;
  bins?: Record<string, number>;
}

interface FioDirection {
  iops?: number;
  bw_bytes?: number;
  total_ios?: number;
  clat_ns?: FioClat;
}

interface FioJob {
  jobname?: string;
  error?: number;
  read?: FioDirection;
  write?: FioDirection;
}

export interface FioOutput {
  'fio version'?: string;
  jobs: FioJob[];
}

/**
 * fio prints engine chatter ("fio: connected to NBD server") before the JSON
 * on some versions, so parsing starts at the first line opening an object.
 */
export function parseFioJson(text: string): FioOutput {
  const start = text.search(/^\{/m);
  if (start < 0) throw new Error('no JSON object in fio output');
  const out = JSON.parse(text.slice(start)) as FioOutput;
  if (!Array.isArray(out.jobs) || out.jobs.length === 0) throw new Error('fio output has no jobs');
  return out;
}

/** Merges clat histograms (fio json+ "bins": latency ns → count) of several directions/jobs. */
export function mergeBins(parts: readonly (Record<string, number> | undefined)[]): Map<number, number> {
  const merged = new Map<number, number>();
  for (const bins of parts) {
    if (!bins) continue;
    for (const [ns, count] of Object.entries(bins)) {
      const k = Number(ns);
      merged.set(k, (merged.get(k) ?? 0) + count);
    }
  }
  return merged;
}

/** The value at quantile q (0..1) of a histogram, nearest-rank; NaN when empty. */
export function histogramPercentile(bins: Map<number, number>, q: number): number {
  const keys = [...bins.keys()].sort((a, b) => a - b);
  let total = 0;
  for (const k of keys) total += bins.get(k)!;
  if (total === 0) return Number.NaN;
  const rank = Math.max(1, Math.ceil(q * total));
  let seen = 0;
  for (const k of keys) {
    seen += bins.get(k)!;
    if (seen >= rank) return k;
  }
  return keys[keys.length - 1]!;
}

/**
 * Without histograms (plain json output) a mixed workload's percentile can only
 * be approximated: take the direction with more I/Os, which dominates the tail.
 */
function fallbackPercentile(dirs: FioDirection[], key: string): number {
  const busiest = [...dirs].sort((a, b) => (b.total_ios ?? 0) - (a.total_ios ?? 0))[0];
  return busiest?.clat_ns?.percentile?.[key] ?? Number.NaN;
}

const MiB = 1024 * 1024;

/** One fio run (group_reporting: jobs summed) as a RunStats. */
export function statsFromFio(out: FioOutput): RunStats {
  const failed = out.jobs.find((j) => (j.error ?? 0) !== 0);
  if (failed) throw new Error(`fio job ${failed.jobname ?? '?'} reported error ${failed.error}`);
  let readIops = 0;
  let writeIops = 0;
  let bytes = 0;
  const used: FioDirection[] = [];
  for (const j of out.jobs) {
    for (const [d, isRead] of [
      [j.read, true],
      [j.write, false],
    ] as const) {
      if (!d || !d.iops) continue;
      if (isRead) readIops += d.iops;
      else writeIops += d.iops;
      bytes += d.bw_bytes ?? 0;
      used.push(d);
    }
  }
  const bins = mergeBins(used.map((d) => d.clat_ns?.bins));
  const pct = (q: number, key: string): number =>
    (bins.size > 0 ? histogramPercentile(bins, q) : fallbackPercentile(used, key)) / 1000;
  return {
    iops: readIops + writeIops,
    readIops,
    writeIops,
    mibps: bytes / MiB,
    p50us: pct(0.5, '50.000000'),
    p99us: pct(0.99, '99.000000'),
  };
}

export function median(values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

/** Per-metric median across rounds: each column is robust to one noisy round. */
export function medianStats(runs: readonly RunStats[]): RunStats {
  const col = (k: keyof RunStats): number => median(runs.map((r) => r[k]));
  return {
    iops: col('iops'),
    readIops: col('readIops'),
    writeIops: col('writeIops'),
    mibps: col('mibps'),
    p50us: col('p50us'),
    p99us: col('p99us'),
  };
}

/** a / b, or null when either side is missing or b is zero. */
export function ratio(a: number | undefined, b: number | undefined): number | null {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) return null;
  return a / b;
}

export function geomean(values: readonly number[]): number {
  const v = values.filter((x) => x > 0 && Number.isFinite(x));
  if (v.length === 0) return Number.NaN;
  return Math.exp(v.reduce((s, x) => s + Math.log(x), 0) / v.length);
}

/**
 * Order in which servers run for one (round, workload): a rotation, so every
 * server takes every slot equally often and drift does not favour one.
 */
export function rotation<T>(items: readonly T[], shift: number): T[] {
  const n = items.length;
  if (n === 0) return [];
  const s = ((shift % n) + n) % n;
  return [...items.slice(s), ...items.slice(0, s)];
}
