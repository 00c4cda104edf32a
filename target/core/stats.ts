import type { IoBudget } from './budget.js';
import type { IdlePoll } from './idle-poll.js';
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
  /** The appliance-wide I/O budget, when there is one (its gauges in /metrics). */
  budget: IoBudget | undefined;
  /** The idle poller, when there is one (its counters in /metrics). */
  poll: IdlePoll | undefined;
  private readonly byKey = new Map<string, { host: string; volume: string; stats: IoStats }>();
  private readonly sessionsByHost = new Map<string, number>();
  private readonly endsByReason = new Map<string, number>();
  private readonly watchers = new Set<(host: string | null, protocol: string, opened: boolean) => void>();

  /** Session opens and closes as they happen (the manager's host online/offline); returns the unwatch. */
  watchSessions(fn: (host: string | null, protocol: string, opened: boolean) => void): () => void {
    this.watchers.add(fn);
    return () => this.watchers.delete(fn);
  }

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

  /** Sessions are counted per protocol and host ("nbd" when the caller does not say). */
  sessionOpened(host: string | null, protocol = 'nbd'): void {
    const k = `${protocol}\u0000${host ?? ''}`;
    this.sessionsByHost.set(k, (this.sessionsByHost.get(k) ?? 0) + 1);
    for (const w of this.watchers) w(host, protocol, true);
  }

  sessionClosed(host: string | null, reason?: string, protocol = 'nbd'): void {
    const k = `${protocol}\u0000${host ?? ''}`;
    this.sessionsByHost.set(k, Math.max(0, (this.sessionsByHost.get(k) ?? 0) - 1));
    if (reason !== undefined) {
      const r = `${protocol}\u0000${reason}`;
      this.endsByReason.set(r, (this.endsByReason.get(r) ?? 0) + 1);
    }
    for (const w of this.watchers) w(host, protocol, false);
  }

  /** Sessions ended, by reason (protocol-error and socket-error are the ones to alert on), summed over protocols. */
  sessionEnds(): Map<string, number> {
    return sum(this.endsByReason);
  }

  /** Open sessions of one host, summed over protocols. */
  sessionsOf(host: string): number {
    let n = 0;
    for (const [k, c] of this.sessionsByHost) if (k.slice(k.indexOf('\u0000') + 1) === host) n += c;
    return n;
  }

  /** Open sessions per host, summed over protocols. */
  sessions(): Map<string, number> {
    return sum(this.sessionsByHost);
  }

  /** Open sessions as [protocol, host, count]. */
  sessionsByProtocol(): [string, string, number][] {
    return split(this.sessionsByHost);
  }

  /** Ended sessions as [protocol, reason, count]. */
  sessionEndsByProtocol(): [string, string, number][] {
    return split(this.endsByReason);
  }
}

function split(m: Map<string, number>): [string, string, number][] {
  return [...m].map(([k, n]) => {
    const i = k.indexOf('\u0000');
    return [k.slice(0, i), k.slice(i + 1), n];
  });
}

function sum(m: Map<string, number>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [, key, n] of split(m)) out.set(key, (out.get(key) ?? 0) + n);
  return out;
}
