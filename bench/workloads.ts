/** The workload matrix the issue asks for, and the subset quick mode runs. */

export type Kind = 'randread' | 'randwrite' | 'randrw' | 'seqread' | 'seqwrite';

export interface Workload {
  id: string;
  title: string;
  kind: Kind;
  job: 'rand-4k.fio' | 'seq-1m.fio';
  /** fio's rw= value. */
  rw: string;
  qd: number;
  jobs: number;
}

const RAND_TITLE: Record<string, string> = { randread: '4k random read', randwrite: '4k random write', randrw: '4k random 50/50' };

function rand(kind: 'randread' | 'randwrite' | 'randrw', qd: number, jobs = 1): Workload {
  const conn = jobs > 1 ? ` ×${jobs} conn` : '';
  return {
    id: `${kind}-4k-qd${qd}${jobs > 1 ? `-${jobs}j` : ''}`,
    title: `${RAND_TITLE[kind]} QD${qd}${conn}`,
    kind,
    job: 'rand-4k.fio',
    rw: kind,
    qd,
    jobs,
  };
}

function seq(kind: 'seqread' | 'seqwrite', qd: number): Workload {
  return {
    id: `${kind}-1m-qd${qd}`,
    title: `1 MiB sequential ${kind === 'seqread' ? 'read' : 'write'} QD${qd}`,
    kind,
    job: 'seq-1m.fio',
    rw: kind === 'seqread' ? 'read' : 'write',
    qd,
    jobs: 1,
  };
}

export const QUEUE_DEPTHS = [1, 8, 32, 64] as const;

export const ALL_WORKLOADS: readonly Workload[] = [
  ...(['randread', 'randwrite', 'randrw'] as const).flatMap((k) => QUEUE_DEPTHS.map((qd) => rand(k, qd))),
  seq('seqread', 8),
  seq('seqwrite', 8),
  rand('randrw', 32, 4),
];

/** Quick mode, pre-filled: shallow and deep random read and write, both streams. */
export const QUICK_IDS = ['randread-4k-qd1', 'randread-4k-qd32', 'randwrite-4k-qd1', 'randwrite-4k-qd32', 'seqread-1m-qd8', 'seqwrite-1m-qd8'];
/** Quick mode, fresh volumes: the two write shapes. */
export const QUICK_FRESH_IDS = ['randwrite-4k-qd32', 'seqwrite-1m-qd8'];
/** Quick mode's servers (add others with --servers). */
export const QUICK_SERVERS = ['blockgate', 'nbdkit-file'] as const;

/** The 4k random workloads the profile runs under, then the 1 MiB streams (the furthest behind). */
export const PROFILE_IDS = ['randread-4k-qd32', 'randwrite-4k-qd32', 'randrw-4k-qd32', 'randread-4k-qd1', 'seqread-1m-qd8', 'seqwrite-1m-qd8'];

/** The named entries of `all`, in the order named (all of them for null); an unknown name is an error. */
export function pickById<T extends { id: string }>(all: readonly T[], ids: readonly string[] | null, what: string): T[] {
  if (!ids) return [...all];
  return ids.map((id) => {
    const x = all.find((y) => y.id === id);
    if (!x) throw new Error(`unknown ${what} '${id}' (known: ${all.map((y) => y.id).join(', ')})`);
    return x;
  });
}

export function selectWorkloads(ids: readonly string[] | null): Workload[] {
  return pickById(ALL_WORKLOADS, ids, 'workload');
}
