import type { Logger } from 'pino';
import type { BlockStore, CachePolicy } from '../../cache/index.js';
import type { Engine } from '../../disks/index.js';
import type { Extent, VolumeLayout } from '../../mapper/index.js';
import type { Frontend, Namespaces, NbdTlsKeys } from '../../target/index.js';
import type { StatsRegistry } from '../../target/stats.js';
import type { Db } from '../db.js';
import type { EventLog } from '../events.js';
import type { JobQueue } from '../jobs.js';
import type { AccessMode, ArrayRow, BindingProtocol, BindingRow, HostRow, ShareMode, VolumeRow } from '../model.js';
import type { Operation, VolumeState } from '../state.js';
import type { Ownership } from '../ownership.js';

/** The data path as the manager sees it: publish namespaces, attach arrays, manage listeners, bulk work. */
export interface DataPath {
  namespaces: Namespaces;
  store: BlockStore;
  /** Every protocol server (NBD, iSCSI): told of hosts, namespace changes and revocations, asked for addresses. */
  frontends: Frontend[];
  engine: Engine;
  /** TLS identities of the shared NBD listener (PSK keys live in DATA/tls/psk). */
  tls?: NbdTlsKeys | undefined;
  /** Per (host, volume) I/O counters the units record into; one is made if the caller has none. */
  stats?: StatsRegistry;
}

/**
 * The volume lifecycle core the operations build on: lookups, the FIG. 7
 * transitions and namespace publishing. The manager implements it (it owns
 * farms, arrays, volumes and hosts); operations only see this interface, so
 * they never import the manager.
 */
export interface Lifecycle {
  /** The data directory as given (relative paths of images resolve against it). */
  readonly dataDir: string;
  /** Set once; replaced only when a saved configuration is imported into an empty appliance. */
  applianceId: string;
  volume(name: string): VolumeRow;
  volumeById(id: number): VolumeRow;
  listVolumes(): VolumeRow[];
  extentsOf(volumeId: number): Extent[];
  layoutOf(volumeId: number): VolumeLayout;
  volumeHandle(v: VolumeRow): { id: number; layout: VolumeLayout; cachePolicy: CachePolicy };
  createVolume(opts: { name: string; size: number; farm?: string | undefined; qualityClass?: string | undefined; shareMode?: ShareMode | undefined; configure?: boolean | undefined }): VolumeRow;
  configure(name: string): VolumeRow;
  breakVolume(name: string): VolumeRow;
  deallocate(name: string): VolumeRow;
  setDirty(volumeId: number, dirty: boolean): void;
  /** Refuses `op` unless the table allows it and no job of another caller holds the volume. */
  check(v: VolumeRow, op: Operation): VolumeState;
  /** Applies a transition (inside the caller's transaction) and records it. */
  apply(v: VolumeRow, op: Operation, extra?: Record<string, unknown>, to?: VolumeState): VolumeState;
  /** Runs `fn` as the job `jobId`, so the job's own volumes are not busy to it. */
  asJob<T>(jobId: number, fn: () => T): T;
  fault(point: string): void;
  /** True when a fault point is armed (for faults the data path injects itself, such as 'bulk-corrupt'). */
  faultArmed(point: string): boolean;
  /** The data directory's real path: what array identities and the lock name. */
  readonly dataDirReal: string;
  /** Directories besides DATA/images that image files may be registered from. */
  readonly imageRoots: readonly string[];
  readonly ownership: Ownership;
  /** Backing-file faults: which arrays have failed. */
  readonly health: { fault(arrayId: number): unknown };
  /** Tells the data-directory lock (and whoever probes it) the appliance id after a restore changed it. */
  noteApplianceId(): Promise<void>;
  findFarmName(id: number | null): string | null;
  array(name: string): ArrayRow;
  findArray(name: string): ArrayRow | undefined;
  listArrays(): ArrayRow[];
  arrayUsage(a: ArrayRow): { used: number; free: number; freeExtents: Extent[] };
  adoptArray(name: string, file: string, size: number, qualityClass?: string): Promise<ArrayRow>;
  host(name: string): HostRow;
  hostById(id: number): HostRow;
  listHosts(): HostRow[];
  hostSocketPath(host: string): string;
  /** Recomputes a host's namespace from the database and hands it to the data path; resolves when revoked sessions are gone. */
  publishHost(hostId: number): Promise<void>;
  /** Returns the fresh secrets of imported webhooks that had none in this data directory. */
  attachRestored(arrays: ArrayRow[], hosts: HostRow[]): Promise<{ webhookSecrets: { webhook: string; secret: string }[] }>;
  setSetting(key: string, value: string | null): void;
  bind(opts: { volume: string; host: string; target: number; lun: number; mode?: AccessMode | undefined; map?: boolean | undefined; protocol?: BindingProtocol | undefined }): BindingRow;
  map(bindingId: number): BindingRow;
  unmap(bindingId: number): Promise<BindingRow>;
  unbind(bindingId: number): void;
  binding(id: number): BindingRow;
  bindingsOfVolume(volumeId: number): BindingRow[];
  bindingsOfHost(hostId: number): BindingRow[];
}

/** What every operation module is built with. Each module prepares and owns its own SQL. */
export interface OperationContext {
  db: Db;
  dataDir: string;
  dataPath: DataPath;
  events: EventLog;
  jobs: JobQueue;
  log: Logger;
  lifecycle: Lifecycle;
}
