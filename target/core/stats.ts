/** Operations counted per (host, volume); indexes into the counter arrays. */
export const OP = { read: 0, write: 1, flush: 2, trim: 3, zero: 4, other: 5 } as const;
export const OP_NAMES = Object.keys(OP) as (keyof typeof OP)[];
const NOPS = OP_NAMES.length;

/** Latency bucket upper bounds in seconds (Prometheus `le`). */
export const LATENCY_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10];
const NB = LATENCY_BUCKETS.length;

/**
 * I/O counters of one host's use of one volume. Plain typed arrays bumped in
 * place: recording a request allocates nothing; the metrics endpoint reads
 * them when scraped.
 */
export class IoStats {
  readonly ops = new Float64Array(NOPS);
  readonly bytes = new Float64Array(NOPS);
  readonly errors = new Float64Array(NOPS);
  readonly latencySum = new Float64Array(NOPS);
  /** Non-cumulative bucket counts; index NB holds the overflow (+Inf). */
  readonly buckets = new Float64Array(NOPS * (NB + 1));

  record(op: number, bytes: number, seconds: number, ok: boolean): void {
    this.ops[op]!++;
    if (ok) this.bytes[op]! += bytes;
    else this.errors[op]!++;
    this.latencySum[op]! += seconds;
    let b = 0;
    while (b < NB && seconds > LATENCY_BUCKETS[b]!) b++;
    this.buckets[op * (NB + 1) + b]!++;
  }

  /** Cumulative counts for bucket `le` index b of op (b === NB is +Inf). */
  cumulative(op: number, b: number): number {
    let n = 0;
    for (let i = 0; i <= b; i++) n += this.buckets[op * (NB + 1) + i]!;
    return n;
  }
}

/** All IoStats, kept across namespace republishing so counters only ever grow. */
export class StatsRegistry {
  private readonly byKey = new Map<string, { host: string; volume: string; stats: IoStats }>();
  private readonly sessionsByHost = new Map<string, number>();
  private readonly endsByReason = new Map<string, number>();

  for(host: string, volume: string): IoStats {
    const key = `${host}\u0000${volume}`;
    let e = this.byKey.get(key);
    if (!e) {
      e = { host, volume, stats: new IoStats() };
      this.byKey.set(key, e);
    }
    return e.stats;
  }

  entries(): { host: string; volume: string; stats: IoStats }[] {
    return [...this.byKey.values()];
  }

  sessionOpened(host: string | null): void {
    const h = host ?? '';
    this.sessionsByHost.set(h, (this.sessionsByHost.get(h) ?? 0) + 1);
  }

  sessionClosed(host: string | null, reason?: string): void {
    const h = host ?? '';
    this.sessionsByHost.set(h, Math.max(0, (this.sessionsByHost.get(h) ?? 0) - 1));
    if (reason !== undefined) this.endsByReason.set(reason, (this.endsByReason.get(reason) ?? 0) + 1);
  }

  /** Sessions ended, by reason (protocol-error and socket-error are the ones to alert on). */
  sessionEnds(): Map<string, number> {
    return new Map(this.endsByReason);
  }

  sessions(): Map<string, number> {
    return new Map(this.sessionsByHost);
  }
}
