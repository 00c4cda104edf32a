/** Upper bounds (ms) of the cutover pause histogram: a live switch should sit in the first few. */
export const PAUSE_BUCKETS_MS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000] as const;

export type CutoverKind = 'switch' | 'migration' | 'backup';
export type CutoverOutcome = 'succeeded' | 'failed' | 'rolled-back';

/**
 * Outcomes of protocol switches and migrations, and how long each held its
 * units' I/O (hold → release), for /metrics and the tests' p50/p99.
 */
export class CutoverStats {
  private readonly outcomes = new Map<string, number>();
  readonly buckets: number[] = new Array<number>(PAUSE_BUCKETS_MS.length + 1).fill(0);
  pauseSumMs = 0;
  pauseCount = 0;

  outcome(kind: CutoverKind, outcome: CutoverOutcome): void {
    const k = `${kind}\0${outcome}`;
    this.outcomes.set(k, (this.outcomes.get(k) ?? 0) + 1);
  }

  pause(ms: number): void {
    let i = PAUSE_BUCKETS_MS.findIndex((le) => ms <= le);
    if (i < 0) i = PAUSE_BUCKETS_MS.length;
    this.buckets[i]!++;
    this.pauseSumMs += ms;
    this.pauseCount++;
  }

  outcomeCounts(): [CutoverKind, CutoverOutcome, number][] {
    return [...this.outcomes].map(([k, n]) => {
      const [kind, outcome] = k.split('\0') as [CutoverKind, CutoverOutcome];
      return [kind, outcome, n];
    });
  }
}
