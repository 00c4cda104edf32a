import type { UnitCapabilities, UnitIO } from '../../core/contract.js';
import type { Nexus, ScsiCommand, ScsiContext } from './contract.js';
import type { PrState } from './pr.js';
import { emptyPr, parsePr, serializePr } from './pr.js';
import { SENSE, type Sense } from './sense.js';

/** Logical block length every unit is shown with (units address bytes; SCSI addresses blocks). */
export const BLOCK = 512;

/**
 * Logical-unit state, one per volume, shared by every nexus that reaches the
 * volume (whichever host, target number or LUN it sees it at).
 */
export class LuState {
  /** Unit attentions per I_T nexus; a nexus with no entry has never addressed this LU (first touch: power on). */
  readonly ua = new Map<string, Sense[]>();
  /** SCSI-2 RESERVE(6/10) holder (nexus id). */
  reserve2: string | null = null;
  pr: PrState;
  /** Control page: software write protect, descriptor sense. */
  swp = false;
  dsense = false;

  constructor(
    readonly volumeId: number,
    private readonly ctx: ScsiContext,
  ) {
    this.pr = parsePr(ctx.reservations.load(volumeId)) ?? emptyPr();
  }

  /** Persists the reservation state: kept across restarts only while APTPL is set (SPC-4 5.14.5). */
  savePr(): void {
    this.ctx.reservations.save(this.volumeId, serializePr(this.pr.aptpl ? this.pr : emptyPr()));
  }

  queueFor(nexusId: string): Sense[] {
    let q = this.ua.get(nexusId);
    if (!q) {
      q = [SENSE.UA_POWER_ON_RESET];
      this.ua.set(nexusId, q);
    }
    return q;
  }

  /** Queues a unit attention for every nexus that has addressed this LU, except `except`. */
  raise(sense: Sense, except: string | null): void {
    for (const [id, q] of this.ua) {
      if (id === except) continue;
      if (!q.includes(sense)) q.push(sense);
    }
  }

  raiseFor(nexusId: string, sense: Sense): void {
    const q = this.queueFor(nexusId);
    if (!q.includes(sense)) q.push(sense);
  }
}

/**
 * A unit's capabilities. The I/O path asks on every command; UnitIO keeps them
 * built (they change only when the volume turns thick or thin).
 */
export function capsOf(io: UnitIO): UnitCapabilities {
  return io.caps();
}

/** What a command handler is given. */
export interface Req {
  cmd: ScsiCommand;
  cdb: Buffer;
  nexus: Nexus;
  io: UnitIO;
  lu: LuState;
  /** Size in logical blocks. */
  blocks: number;
  ctx: ScsiContext;
}
