/**
 * Which servers and workloads each (scenario, transport) lane runs. Every
 * server on every lane is ~2.7 h of a 2-core machine; the full run keeps
 * every cell a target is judged on and drops the ones that only repeat
 * another lane's answer (`--every-lane` runs them all anyway).
 */
import { iscsiRunnable } from './qemu-bench.js';
import type { ScenarioId } from './scenarios.js';
import { ISCSI_SERVERS, type ServerName, type Transport } from './servers.js';
import type { Workload } from './workloads.js';

/**
 * The write-through and `none` volumes: judged against nbdkit-file on the
 * unix lane. The transport adds the same per-request cost to every server,
 * and with 64 MiB of cache (beyond-cache) they behave as they do with 256.
 */
const POLICY_SERVERS: readonly ServerName[] = ['blockgate-wt', 'blockgate-none'];
/** nbdkit's memory plugin is a ceiling for reference, not a target: one lane shows it. */
const REFERENCE_SERVERS: readonly ServerName[] = ['nbdkit-memory'];

/**
 * TCP repeats the unix lane with a costlier transport: the shallow and deep
 * ends of each 4k shape, the streams and the 4-connection mix show it.
 */
export const TCP_IDS: readonly string[] = [
  'randread-4k-qd1',
  'randread-4k-qd32',
  'randwrite-4k-qd1',
  'randwrite-4k-qd32',
  'randrw-4k-qd1',
  'randrw-4k-qd32',
  'seqread-1m-qd8',
  'seqwrite-1m-qd8',
  'randrw-4k-qd32-4j',
];

export interface LaneChoice {
  /** Every selected server on every lane, every workload on TCP. */
  everyLane: boolean;
}

export function laneServers(servers: readonly ServerName[], scenario: ScenarioId, transport: Transport, c: LaneChoice): ServerName[] {
  return servers.filter((s) => {
    if (ISCSI_SERVERS.includes(s) !== (transport === 'iscsi')) return false;
    if (c.everyLane) return true;
    if (POLICY_SERVERS.includes(s)) return transport === 'unix' && scenario !== 'beyond-cache';
    if (REFERENCE_SERVERS.includes(s)) return transport === 'unix' && scenario === 'filled';
    return true;
  });
}

/** `explicit`: the workloads were named on the command line, so TCP runs them all too. */
export function laneWorkloads(ws: readonly Workload[], transport: Transport, c: LaneChoice & { explicit: boolean }): Workload[] {
  if (transport === 'iscsi') return ws.filter(iscsiRunnable);
  if (transport === 'tcp' && !c.everyLane && !c.explicit) return ws.filter((w) => TCP_IDS.includes(w.id));
  return [...ws];
}
