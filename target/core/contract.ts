/**
 * The target core's contract: what every protocol frontend calls and what the
 * manager drives. Written first so the NBD split and the iSCSI frontend code
 * against the same surface; target/core implements it.
 *
 * Units speak in bytes; a frontend converts its own addressing (NBD offsets,
 * SCSI LBAs) before calling. Failures are BlockgateError codes (common/errors):
 * OUT_OF_RANGE, READ_ONLY, NO_SPACE, IO_ERROR, NOT_SUPPORTED (a fast zero that
 * would need a real write), SHUTTING_DOWN. Each frontend maps them in its one
 * error map (NBD errno, SCSI sense).
 */
import type { AllocationRun } from '../../cache/index.js';
import type { Unit } from '../namespace.js';

export type Protocol = 'nbd' | 'iscsi';

/**
 * Allocation state of a run of a unit, as the allocation map and dirty cache
 * say, and one run of it (offset: byte offset inside the unit). Defined by the
 * store, which computes them.
 */
export type { AllocationState, AllocationRun } from '../../cache/index.js';

export interface ZeroRequest {
  /** Keep the space allocated (NBD NO_HOLE; SCSI WRITE SAME without UNMAP). */
  noHole: boolean;
  /** Refuse with NOT_SUPPORTED rather than write zero bytes (NBD FAST_ZERO). */
  fast: boolean;
  fua: boolean;
}

export interface UnitCapabilities {
  readOnly: boolean;
  /** Bytes: smallest addressable, preferred, and largest single request. */
  minBlock: number;
  preferredBlock: number;
  maxTransfer: number;
  /** Space is allocated on write; trimmed/zeroed ranges read back as zeroes (SCSI LBPME/LBPRZ). */
  thin: boolean;
  trimReadsZeroes: boolean;
  /** A flush on any session covers writes completed on every session (NBD multi-conn). */
  flushCoversAllSessions: boolean;
}

export interface CompareAndWriteResult {
  /** -1 when the compare matched and the write landed; else the first differing byte, counted from the start of the range. */
  mismatchAt: number;
}

/**
 * One unit's I/O as every protocol sees it. Owns the range and read-only
 * checks and the unit's I/O statistics; fast paths return null when done
 * synchronously (no promise on cache hits).
 */
export interface UnitIO {
  readonly unit: Unit;
  /** Current size in bytes (may grow on resize). */
  size(): number;
  caps(): UnitCapabilities;
  read(offset: number, length: number, dest: Buffer): Promise<void> | null;
  write(offset: number, src: Buffer, fua: boolean): Promise<void> | null;
  /** Every write completed before the call is on stable storage when this resolves. */
  flush(): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  zero(offset: number, length: number, req: ZeroRequest): Promise<void>;
  /** Warm the cache (NBD CACHE, SCSI PRE-FETCH). */
  prefetch(offset: number, length: number): Promise<void>;
  /** Allocation runs covering [offset, offset+length), equal neighbours merged, at most `max`. */
  extents(offset: number, length: number, max: number): AllocationRun[];
  /** True when the whole range is data (a read needs no hole chunks). */
  allData(offset: number, length: number): boolean;
  /**
   * Atomic against every other writer of the volume, over every protocol (SCSI
   * COMPARE AND WRITE). expected and data have the same length (else BAD_REQUEST).
   */
  compareAndWrite(offset: number, expected: Buffer, data: Buffer, fua: boolean): Promise<CompareAndWriteResult>;
  /** Counts a read answered from the allocation map alone, without read() (NBD OFFSET_HOLE replies). */
  countHoleRead(length: number): void;
}

/** Why the namespace changed for a host, so frontends can tell their hosts (SCSI unit attentions). */
export type NamespaceChange = 'mapped' | 'unmapped' | 'resized';

/** Where a host reaches one unit over one protocol (namespace listing, connection descriptor). */
export interface UnitAddress {
  protocol: Protocol;
  uris: string[];
  /** iSCSI: portal "host:port" and target IQN; NBD: export name. */
  portal?: string;
  targetName?: string;
  lun?: number;
  exportName?: string;
}

/**
 * A protocol server as the manager holds it (a list of these). The manager
 * publishes namespaces through target/namespace.ts; a frontend learns of
 * changes and revocations through these calls.
 */
export interface Frontend {
  readonly protocol: Protocol;
  /** The host's units changed (after Namespaces.publish): tell live sessions (unit attention, etc.). */
  namespaceChanged(host: string, change: NamespaceChange, units: readonly Unit[]): void;
  /** End every session of `host` using `unit` (or all of the host's sessions when unit is null); resolves when they are gone. */
  revoke(host: string, unit: Unit | null): Promise<void>;
  /** How `host` reaches `unit` over this protocol, or null when it cannot. */
  address(host: string, unit: Unit): UnitAddress | null;
  /** Open sessions per host (metrics, migration's "B has connected"). */
  sessions(host: string): number;
  /** Whether `host` has a session that reaches `unit` now (migration's "B has connected to every unit"). */
  reaches(host: string, unit: Unit): boolean;
  /**
   * A host exists (start-up, host created): open what this protocol gives each
   * host of its own (NBD: a unix socket at `socket`, a TCP listener at `tcp`).
   * Optional: a frontend with nothing per host leaves it out.
   */
  hostAdded?(host: string, endpoints: HostEndpoints): Promise<void>;
  /** The host is gone (or its creation failed): close what hostAdded opened; its sessions end. */
  hostRemoved?(host: string): Promise<void>;
  close(): Promise<void>;
}

/** Per-host endpoints the manager keeps for a host (its configuration, in the admin's words). */
export interface HostEndpoints {
  /** Path of the host's own unix socket (file permissions prove the host). */
  socket: string;
  /** "host:port" of the host's own NBD TCP listener, or null. */
  nbdTcp: string | null;
}
