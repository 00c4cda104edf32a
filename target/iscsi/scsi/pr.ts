/**
 * Reservations: SCSI-2 RESERVE/RELEASE and SPC-4 persistent reservations,
 * kept per volume (LuState) and checked before every command.
 */
import type { Nexus, ScsiResponse } from './contract.js';
import type { LuState, Req } from './lu.js';
import { KEY, ReservationConflict, SENSE, Sense, badCdb, badParam, fail } from './sense.js';

/** SPC-4 persistent reservation types. */
export const PR_TYPE = { WE: 1, EA: 3, WE_RO: 5, EA_RO: 6, WE_AR: 7, EA_AR: 8 } as const;
const VALID_TYPES = new Set<number>([1, 3, 5, 6, 7, 8]);

export interface Registration {
  nexus: string;
  key: bigint;
  initiatorName: string;
  isid: string;
  tpgt: number;
}

export interface PrState {
  generation: number;
  aptpl: boolean;
  regs: Registration[];
  /** Nexus id of the holder (for all-registrants types: the nexus that reserved). */
  holder: string | null;
  type: number;
}

export const emptyPr = (): PrState => ({ generation: 0, aptpl: false, regs: [], holder: null, type: 0 });

/** Reads a stored state back, or undefined when there is none or it is not ours. */
export function parsePr(raw: unknown): PrState | undefined {
  if (raw === undefined || raw === null) return undefined;
  try {
    const o = (typeof raw === 'string' ? JSON.parse(raw) : raw) as {
      generation: number;
      aptpl: boolean;
      regs: { nexus: string; key: string; initiatorName: string; isid: string; tpgt: number }[];
      holder: string | null;
      type: number;
    };
    if (!Array.isArray(o.regs)) return undefined;
    return {
      generation: o.generation >>> 0,
      aptpl: o.aptpl === true,
      regs: o.regs.map((r) => ({ nexus: String(r.nexus), key: BigInt(r.key), initiatorName: String(r.initiatorName), isid: String(r.isid), tpgt: Number(r.tpgt) })),
      holder: o.holder === null ? null : String(o.holder),
      type: Number(o.type),
    };
  } catch {
    return undefined;
  }
}

/** The stored form (bigint keys as decimal strings). */
export function serializePr(pr: PrState): unknown {
  return { ...pr, regs: pr.regs.map((r) => ({ ...r, key: r.key.toString() })) };
}

/** How a command touches the medium, for the reservation conflict tables. */
export type Access = 'none' | 'read' | 'write';

const allRegistrants = (type: number): boolean => type === PR_TYPE.WE_AR || type === PR_TYPE.EA_AR;
const registrantsOnly = (type: number): boolean => type === PR_TYPE.WE_RO || type === PR_TYPE.EA_RO;

/** True when `nexus` holds the persistent reservation (every registrant does for all-registrants types). */
function isHolder(pr: PrState, nexus: string): boolean {
  if (pr.holder === null) return false;
  if (allRegistrants(pr.type)) return pr.regs.some((r) => r.nexus === nexus);
  return pr.holder === nexus;
}

/**
 * RESERVATION CONFLICT for a command of `access` from `nexus`? SCSI-2
 * reservations block every command but the few SPC-2 lets through (r2ok);
 * persistent ones follow SPC-4 table 65 (reads pass a write-exclusive one).
 */
export function conflicts(lu: LuState, nexus: string, access: Access, r2ok: boolean): boolean {
  if (lu.reserve2 !== null && lu.reserve2 !== nexus && !r2ok) return true;
  const pr = lu.pr;
  if (pr.holder === null || access === 'none' || isHolder(pr, nexus)) return false;
  const exclusiveAccess = pr.type === PR_TYPE.EA || pr.type === PR_TYPE.EA_RO || pr.type === PR_TYPE.EA_AR;
  if (access === 'read' && !exclusiveAccess) return false;
  if (registrantsOnly(pr.type) || allRegistrants(pr.type)) return !pr.regs.some((r) => r.nexus === nexus);
  return true;
}

// ---- SCSI-2 RESERVE / RELEASE (6 and 10) ---------------------------------------

export function reserve2(req: Req): ScsiResponse {
  const { lu, nexus, cdb } = req;
  // Third-party and extent reservations are not supported.
  if (cdb[1]! & 0x03) throw badCdb(1);
  if (lu.pr.holder !== null || lu.pr.regs.length > 0) {
    if (!lu.pr.regs.some((r) => r.nexus === nexus.id) || lu.pr.holder !== null) throw new ReservationConflict();
  }
  if (lu.reserve2 !== null && lu.reserve2 !== nexus.id) throw new ReservationConflict();
  lu.reserve2 = nexus.id;
  return GOOD;
}

export function release2(req: Req): ScsiResponse {
  const { lu, nexus, cdb } = req;
  if (cdb[1]! & 0x03) throw badCdb(1);
  // Releasing a reservation someone else holds is a no-op (SPC-2 7.17).
  if (lu.reserve2 === nexus.id) lu.reserve2 = null;
  return GOOD;
}

// ---- PERSISTENT RESERVE IN ------------------------------------------------------

export function persistentReserveIn(req: Req): ScsiResponse {
  const { cdb, lu } = req;
  const sa = cdb[1]! & 0x1f;
  const alloc = cdb.readUInt16BE(7);
  const pr = lu.pr;
  let out: Buffer;
  switch (sa) {
    case 0: {
      out = Buffer.alloc(8 + 8 * pr.regs.length);
      out.writeUInt32BE(pr.generation, 0);
      out.writeUInt32BE(8 * pr.regs.length, 4);
      pr.regs.forEach((r, i) => out.writeBigUInt64BE(r.key, 8 + 8 * i));
      break;
    }
    case 1: {
      const held = pr.holder !== null;
      out = Buffer.alloc(held ? 24 : 8);
      out.writeUInt32BE(pr.generation, 0);
      out.writeUInt32BE(held ? 16 : 0, 4);
      if (held) {
        const key = allRegistrants(pr.type) ? 0n : (pr.regs.find((r) => r.nexus === pr.holder)?.key ?? 0n);
        out.writeBigUInt64BE(key, 8);
        out[21] = pr.type & 0x0f;
      }
      break;
    }
    case 2: {
      out = Buffer.alloc(8);
      out.writeUInt16BE(8, 0);
      // PTPL_C: persist-through-power-loss is supported; ATP_C/SIP_C are not.
      out[2] = 0x01;
      // TMV: the type mask is valid; PTPL_A: whether it is active now.
      out[3] = 0x80 | (pr.aptpl ? 0x01 : 0);
      out[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
      out[5] = 0x01;
      break;
    }
    case 3: {
      const descs = pr.regs.map((r) => fullStatusDescriptor(r, pr));
      const len = descs.reduce((n, d) => n + d.length, 0);
      out = Buffer.concat([Buffer.alloc(8), ...descs]);
      out.writeUInt32BE(pr.generation, 0);
      out.writeUInt32BE(len, 4);
      break;
    }
    default:
      throw badCdb(1, 4);
  }
  return { status: 0, data: out.length > alloc ? out.subarray(0, alloc) : out };
}

function fullStatusDescriptor(r: Registration, pr: PrState): Buffer {
  const tid = transportId(r.initiatorName, r.isid);
  const d = Buffer.alloc(24 + tid.length);
  d.writeBigUInt64BE(r.key, 0);
  const holds = pr.holder !== null && (allRegistrants(pr.type) || pr.holder === r.nexus);
  if (holds) {
    d[12] = 0x01;
    d[13] = pr.type & 0x0f;
  }
  d.writeUInt16BE(r.tpgt & 0xffff, 18);
  d.writeUInt32BE(tid.length, 20);
  tid.copy(d, 24);
  return d;
}

/** iSCSI TransportID, format 01: "name,i,0x<isid>", NUL-terminated, padded to 4 (SPC-4 7.6.4.6). */
function transportId(name: string, isid: string): Buffer {
  const s = `${name},i,0x${isid}`;
  const n = Math.max(20, 4 + ((Buffer.byteLength(s) + 1 + 3) & ~3));
  const b = Buffer.alloc(n);
  b[0] = 0x40 | 0x05;
  b.writeUInt16BE(n - 4, 2);
  b.write(s, 4, 'utf8');
  return b;
}

// ---- PERSISTENT RESERVE OUT -----------------------------------------------------

const GOOD: ScsiResponse = Object.freeze({ status: 0 }) as ScsiResponse;

export function persistentReserveOut(req: Req): ScsiResponse {
  const { cdb, lu, nexus, cmd } = req;
  const sa = cdb[1]! & 0x1f;
  const scope = cdb[2]! >> 4;
  const type = cdb[2]! & 0x0f;
  const listLen = cdb.readUInt32BE(5);
  if (sa > 7) throw badCdb(1, 4);
  if (sa === 7) throw badCdb(1, 4); // REGISTER AND MOVE: not supported (one target port per target).
  if (listLen !== 24) throw fail(SENSE.PARAM_LIST_LENGTH_ERROR);
  const p = cmd.data;
  if (!p || p.length < 24) throw fail(SENSE.PARAM_LIST_LENGTH_ERROR);
  const key = p.readBigUInt64BE(0);
  const saKey = p.readBigUInt64BE(8);
  const flags = p[20]!;
  if (flags & 0x08) throw badParam(20, 3); // SPEC_I_PT
  if (flags & 0x04) throw badParam(20, 2); // ALL_TG_PT
  const aptpl = (flags & 0x01) !== 0;
  const pr = lu.pr;
  const mine = pr.regs.find((r) => r.nexus === nexus.id);

  switch (sa) {
    case 0: // REGISTER
    case 6: {
      // REGISTER AND IGNORE EXISTING KEY
      if (sa === 0) {
        if (!mine && key !== 0n) throw new ReservationConflict();
        if (mine && mine.key !== key) throw new ReservationConflict();
      }
      if (saKey === 0n) {
        if (mine) unregister(lu, nexus.id);
      } else if (mine) {
        mine.key = saKey;
      } else {
        pr.regs.push({ nexus: nexus.id, key: saKey, initiatorName: nexus.initiatorName, isid: nexus.isid, tpgt: nexus.tpgt });
      }
      pr.aptpl = aptpl;
      pr.generation = (pr.generation + 1) >>> 0;
      break;
    }
    case 1: {
      // RESERVE
      if (!mine || mine.key !== key) throw new ReservationConflict();
      if (scope !== 0) throw badCdb(2, 7);
      if (!VALID_TYPES.has(type)) throw badCdb(2, 3);
      if (lu.reserve2 !== null && lu.reserve2 !== nexus.id) throw new ReservationConflict();
      if (pr.holder !== null) {
        if (isHolder(pr, nexus.id) && pr.type === type) return GOOD;
        throw new ReservationConflict();
      }
      pr.holder = nexus.id;
      pr.type = type;
      break;
    }
    case 2: {
      // RELEASE
      if (!mine || mine.key !== key) throw new ReservationConflict();
      if (pr.holder === null || !isHolder(pr, nexus.id)) return GOOD;
      if (scope !== 0 || pr.type !== type) throw fail(new Sense(KEY.ILLEGAL_REQUEST, 0x26, 0x04));
      releaseReservation(lu, nexus.id);
      break;
    }
    case 3: {
      // CLEAR
      if (!mine || mine.key !== key) throw new ReservationConflict();
      for (const r of pr.regs) if (r.nexus !== nexus.id) lu.raiseFor(r.nexus, SENSE.UA_RESERVATIONS_PREEMPTED);
      pr.regs = [];
      pr.holder = null;
      pr.type = 0;
      pr.generation = (pr.generation + 1) >>> 0;
      break;
    }
    case 4:
    case 5: {
      // PREEMPT (and ABORT: the transport has no task set to abort from here; the preemption is the same)
      if (!mine || mine.key !== key) throw new ReservationConflict();
      if (pr.holder !== null && !allRegistrants(pr.type)) {
        if (scope !== 0) throw badCdb(2, 7);
        if (!VALID_TYPES.has(type)) throw badCdb(2, 3);
      }
      preempt(lu, nexus.id, saKey, scope, type);
      pr.generation = (pr.generation + 1) >>> 0;
      break;
    }
  }
  lu.savePr();
  return GOOD;
}

/** Removes a registration; a holder's leaving releases the reservation (SPC-4 5.14.11.2.3). */
function unregister(lu: LuState, nexusId: string): void {
  const pr = lu.pr;
  const wasHolder = pr.holder !== null && (allRegistrants(pr.type) ? pr.regs.length === 1 : pr.holder === nexusId);
  pr.regs = pr.regs.filter((r) => r.nexus !== nexusId);
  if (pr.holder !== null && allRegistrants(pr.type)) {
    if (pr.regs.length === 0) clearReservation(pr);
    else if (pr.holder === nexusId) pr.holder = pr.regs[0]!.nexus;
    return;
  }
  if (wasHolder) {
    const type = pr.type;
    clearReservation(pr);
    // Registrants-only types tell the other registrants the reservation is gone.
    if (registrantsOnly(type)) for (const r of pr.regs) lu.raiseFor(r.nexus, SENSE.UA_RESERVATIONS_RELEASED);
  }
}

function releaseReservation(lu: LuState, nexusId: string): void {
  const pr = lu.pr;
  const type = pr.type;
  clearReservation(pr);
  if (type !== PR_TYPE.WE && type !== PR_TYPE.EA) {
    for (const r of pr.regs) if (r.nexus !== nexusId) lu.raiseFor(r.nexus, SENSE.UA_RESERVATIONS_RELEASED);
  }
}

function clearReservation(pr: PrState): void {
  pr.holder = null;
  pr.type = 0;
}

function preempt(lu: LuState, me: string, saKey: bigint, scope: number, type: number): void {
  const pr = lu.pr;
  const removeWhere = (pred: (r: Registration) => boolean): number => {
    const gone = pr.regs.filter((r) => r.nexus !== me && pred(r));
    for (const r of gone) lu.raiseFor(r.nexus, SENSE.UA_REGISTRATIONS_PREEMPTED);
    pr.regs = pr.regs.filter((r) => !gone.includes(r));
    return gone.length;
  };
  if (pr.holder === null) {
    if (saKey === 0n) throw badParam(8);
    if (removeWhere((r) => r.key === saKey) === 0) throw new ReservationConflict();
    return;
  }
  if (allRegistrants(pr.type)) {
    if (saKey === 0n) {
      // Preempting an all-registrants reservation with key 0 removes every other registrant and takes it over.
      if (scope !== 0) throw badCdb(2, 7);
      if (!VALID_TYPES.has(type)) throw badCdb(2, 3);
      removeWhere(() => true);
      pr.holder = me;
      pr.type = type;
      return;
    }
    if (removeWhere((r) => r.key === saKey) === 0) throw new ReservationConflict();
    return;
  }
  const holderKey = pr.regs.find((r) => r.nexus === pr.holder)?.key;
  if (holderKey === saKey) {
    removeWhere((r) => r.key === saKey);
    const typeChanged = pr.type !== type;
    pr.holder = me;
    pr.type = type;
    if (typeChanged) for (const r of pr.regs) if (r.nexus !== me) lu.raiseFor(r.nexus, SENSE.UA_RESERVATIONS_RELEASED);
    return;
  }
  if (saKey === 0n) throw badParam(8);
  if (removeWhere((r) => r.key === saKey) === 0) throw new ReservationConflict();
}

/** A nexus went away: SCSI-2 reservations do not survive it; persistent ones do. */
export function nexusGone(lu: LuState, nexus: Nexus | string): void {
  const id = typeof nexus === 'string' ? nexus : nexus.id;
  if (lu.reserve2 === id) lu.reserve2 = null;
}
