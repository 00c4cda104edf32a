/**
 * The states a volume is measured in (issue 12 item 1). Each scenario starts
 * every server afresh on new sparse files, so no scenario inherits another's
 * page cache or block cache.
 */
import { pickById, type Kind, type Workload } from './workloads.js';

export type ScenarioId = 'filled' | 'fresh' | 'beyond-cache';

export interface Scenario {
  id: ScenarioId;
  title: string;
  /** Write every byte once (then `sync`) before measuring. */
  fill: boolean;
  /** Extra `blockgate serve` arguments for this scenario. */
  blockgateArgs: string[];
  /** Workload kinds this scenario runs ('all' or a subset). */
  kinds: readonly Kind[] | 'all';
  /** What the reader must know about caches in this state (goes into the report). */
  note: string;
}

export const SCENARIOS: readonly Scenario[] = [
  {
    id: 'filled',
    title: 'pre-filled',
    fill: true,
    blockgateArgs: [],
    kinds: 'all',
    note:
      'every export written once (1 MiB sequential), then `sync`: the file backings sit clean in the page cache ' +
      '(nothing dropped: the runner cannot drop caches on a shared machine), and blockgate holds the volume in its block cache too',
  },
  {
    id: 'fresh',
    title: 'fresh volume',
    fill: false,
    blockgateArgs: [],
    kinds: 'all',
    note:
      'new sparse files and a new volume: reads of unwritten ranges are holes, and the first write of each page pays ' +
      'for fresh memory (page cache for every server, plus block-cache slots for blockgate)',
  },
  {
    id: 'beyond-cache',
    title: 'writes beyond the cache',
    fill: true,
    blockgateArgs: ['--cache-size', '64M'],
    kinds: ['randwrite', 'randrw', 'seqwrite'],
    note:
      'pre-filled as above, but blockgate runs a 64 MiB cache for the 256 MiB export, so sustained writes run through ' +
      'eviction, the dirty limit and write-back (the peers keep the whole page cache)',
  },
];

export function selectScenarios(ids: readonly string[] | null): Scenario[] {
  return pickById(SCENARIOS, ids, 'scenario');
}

export function workloadsFor(s: Scenario, ws: readonly Workload[]): Workload[] {
  return s.kinds === 'all' ? [...ws] : ws.filter((w) => (s.kinds as readonly Kind[]).includes(w.kind));
}
