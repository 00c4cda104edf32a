/**
 * The contract between the iSCSI transport (target/iscsi/) and the SCSI
 * command set (target/iscsi/scsi/). The transport owns PDUs, sessions,
 * R2T/Data-Out gathering, digests and task management bookkeeping; the SCSI
 * layer owns CDB parsing, sense data, unit attentions, reservations and mode
 * pages, and reaches the data only through target/core's UnitIO.
 */
import type { UnitIO } from '../../core/contract.js';

/** The I_T nexus a command arrived on (SPC: initiator port + target port). */
export interface Nexus {
  /** Stable key: initiator name + ISID + target name + TPGT. */
  readonly id: string;
  readonly initiatorName: string;
  /** 6-byte ISID, hex. */
  readonly isid: string;
  readonly targetName: string;
  readonly tpgt: number;
  /** The appliance host this session acts for. */
  readonly host: string;
}

export type TaskAttribute = 'untagged' | 'simple' | 'ordered' | 'head-of-queue' | 'aca';

export interface ScsiCommand {
  nexus: Nexus;
  /** LUN number inside the host's target (the unit's lun). */
  lun: number;
  /** 16 bytes as carried in the PDU (CDBs longer than 16 via AHS are concatenated). */
  cdb: Buffer;
  /** Expected Data Transfer Length from the PDU. */
  expectedLength: number;
  read: boolean;
  write: boolean;
  /** Every Data-Out byte (immediate + unsolicited + R2T'd), gathered, exactly expectedLength long; null when write is false. */
  data: Buffer | null;
  taskTag: number;
  attr: TaskAttribute;
}

export interface ScsiResponse {
  /** SAM status: 0x00 GOOD, 0x02 CHECK CONDITION, 0x08 BUSY, 0x18 RESERVATION CONFLICT, 0x28 TASK SET FULL. */
  status: number;
  /** Data-In; the transport sends min(data.length, expectedLength) and computes residuals. */
  data?: Buffer;
  /** `data` is a largeBuffer() or a smallBuffer() carve of its own, which the transport gives back once the socket has written it. */
  recycle?: boolean;
  /** Sense data with CHECK CONDITION: fixed format (18 bytes), or descriptor format when the Control page's D_SENSE is set. */
  sense?: Buffer;
  /**
   * The transfer length the CDB implies (SPDTL), when it differs from the
   * bytes actually moved (data.length for reads, nothing for a refused
   * write): the transport sets the overflow/underflow residual against it.
   */
  transferLength?: number;
}

/** Reservation state of one volume, persisted by the manager across restarts. */
export interface ReservationStore {
  load(volumeId: number): unknown | undefined;
  save(volumeId: number, state: unknown): void;
}

/** What the SCSI layer is given: a host target's LUNs (live view) and the shared per-volume state store. */
export interface ScsiContext {
  /** The LUNs of this nexus's target right now (host namespace filtered to the target number). */
  luns(nexus: Nexus): ReadonlyMap<number, UnitIO>;
  reservations: ReservationStore;
  /**
   * MODE SELECT's caching page: WCE=1 asks for 'write-back', WCE=0 for
   * 'write-through' (or keeps 'none'). The manager saves it as the volume's
   * cache policy and updates the live VolumeHandle.
   */
  setCachePolicy(volumeId: number, policy: 'none' | 'write-through' | 'write-back'): Promise<void>;
}

/**
 * The SCSI command set. Logical-unit state (unit attentions per nexus,
 * reservations, mode pages) is kept per volume, so hosts sharing a volume
 * share it, whichever target number or LUN they see it at.
 */
export interface ScsiDevice {
  /** Answers at once (no promise) when the command completed in memory: a cache hit, a write-back write. */
  execute(cmd: ScsiCommand): ScsiResponse | Promise<ScsiResponse>;
  /** Task management, after the transport has dropped the affected tasks. */
  lunReset(nexus: Nexus, lun: number): void;
  targetReset(nexus: Nexus, cold: boolean): void;
  /** A new I_T nexus logged in (power-on/reset unit attention) or one went away. */
  nexusAdded(nexus: Nexus): void;
  nexusRemoved(nexus: Nexus): void;
  /** The host's namespace changed: queue REPORTED LUNS DATA HAS CHANGED / CAPACITY DATA HAS CHANGED. */
  namespaceChanged(host: string, change: 'mapped' | 'unmapped' | 'resized', volumeIds: readonly number[]): void;
}
