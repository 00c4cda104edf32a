/**
 * The SCSI command set behind the iSCSI transport: one dispatch table (what
 * each opcode runs, how reservations treat it, what REPORT SUPPORTED
 * OPERATION CODES says about it), unit attentions per I_T nexus per LU, and
 * the one place thrown conditions become status + sense.
 */
import type { UnitIO } from '../../core/contract.js';
import type { Nexus, ScsiCommand, ScsiContext, ScsiDevice, ScsiResponse } from './contract.js';
import { BLOCK, LuState, capsOf, type Req } from './lu.js';
import { modeSelect, modeSense } from './mode.js';
import { type Access, conflicts, nexusGone, persistentReserveIn, persistentReserveOut, release2, reserve2 } from './pr.js';
import * as sbc from './sbc.js';
import { CheckCondition, ReservationConflict, SENSE, type Sense, badCdb, encodeSense, senseForError } from './sense.js';
import * as spc from './spc.js';

type Handler = (req: Req) => ScsiResponse | Promise<ScsiResponse>;

interface OpDef {
  op: number;
  /** Service action (0x9E, 0xA3), or null. */
  sa: number | null;
  run: Handler;
  access: Access;
  /** Passes a SCSI-2 reservation held by another nexus (SPC-2 5.5.1). */
  r2ok?: boolean;
  /** Delivered without first reporting a pending unit attention. */
  noUa?: boolean;
  /** Only offered on thin units (others answer INVALID COMMAND OPERATION CODE, so hosts and tests see it unsupported). */
  thinOnly?: boolean;
  /** CDB usage data (SPC-4 6.35.3): which bits the command looks at. */
  usage: number[];
}

/** 10-byte usage: opcode, byte-1 flags, LBA(4), group, length(2), control. */
const u10 = (op: number, b1: number, group = 0x1f): number[] => [op, b1, 0xff, 0xff, 0xff, 0xff, group, 0xff, 0xff, 0x00];
const u12 = (op: number, b1: number): number[] => [op, b1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x00];
const u16 = (op: number, b1: number): number[] => [op, b1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x00];

// The handlers of commands that do not need a unit run before the LU lookup.
const reportLunsOp: Handler = (r) => spc.reportLuns(r.cdb, [...r.ctx.luns(r.nexus).keys()]);

const OPS: OpDef[] = [
  { op: 0x00, sa: null, run: () => spc.GOOD, access: 'none', usage: [0x00, 0, 0, 0, 0, 0] },
  { op: 0x03, sa: null, run: () => spc.GOOD /* answered in execute() */, access: 'none', r2ok: true, noUa: true, usage: [0x03, 0x01, 0, 0, 0xff, 0] },
  { op: 0x08, sa: null, run: sbc.read, access: 'read', usage: [0x08, 0x1f, 0xff, 0xff, 0xff, 0] },
  { op: 0x0a, sa: null, run: sbc.write, access: 'write', usage: [0x0a, 0x1f, 0xff, 0xff, 0xff, 0] },
  { op: 0x12, sa: null, run: spc.inquiry, access: 'none', r2ok: true, noUa: true, usage: [0x12, 0x01, 0xff, 0xff, 0xff, 0] },
  { op: 0x15, sa: null, run: modeSelect, access: 'write', usage: [0x15, 0x11, 0, 0, 0xff, 0] },
  { op: 0x16, sa: null, run: reserve2, access: 'none', usage: [0x16, 0, 0, 0, 0, 0] },
  { op: 0x17, sa: null, run: release2, access: 'none', r2ok: true, usage: [0x17, 0, 0, 0, 0, 0] },
  { op: 0x1a, sa: null, run: modeSense, access: 'write', usage: [0x1a, 0x08, 0xff, 0xff, 0xff, 0] },
  { op: 0x1b, sa: null, run: spc.startStopUnit, access: 'write', usage: [0x1b, 0x01, 0, 0x0f, 0xf7, 0] },
  { op: 0x1e, sa: null, run: spc.preventAllow, access: 'none', usage: [0x1e, 0, 0, 0, 0x03, 0] },
  { op: 0x25, sa: null, run: spc.readCapacity10, access: 'none', usage: [0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0] },
  { op: 0x28, sa: null, run: sbc.read, access: 'read', usage: u10(0x28, 0xf8) },
  { op: 0x2a, sa: null, run: sbc.write, access: 'write', usage: u10(0x2a, 0xf8) },
  { op: 0x2e, sa: null, run: sbc.writeVerify, access: 'write', usage: u10(0x2e, 0xf2) },
  { op: 0x2f, sa: null, run: sbc.verify, access: 'read', usage: u10(0x2f, 0xf6) },
  { op: 0x34, sa: null, run: sbc.prefetch, access: 'read', usage: u10(0x34, 0x02) },
  { op: 0x35, sa: null, run: sbc.synchronizeCache, access: 'write', usage: u10(0x35, 0x02) },
  { op: 0x41, sa: null, run: sbc.writeSame, access: 'write', usage: u10(0x41, 0xf8) },
  { op: 0x42, sa: null, run: sbc.unmap, access: 'write', thinOnly: true, usage: [0x42, 0x01, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0] },
  { op: 0x55, sa: null, run: modeSelect, access: 'write', usage: [0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0] },
  { op: 0x56, sa: null, run: reserve2, access: 'none', usage: [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0] },
  { op: 0x57, sa: null, run: release2, access: 'none', r2ok: true, usage: [0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0] },
  { op: 0x5a, sa: null, run: modeSense, access: 'write', usage: [0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0] },
  { op: 0x5e, sa: null, run: persistentReserveIn, access: 'none', usage: [0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0] },
  { op: 0x5f, sa: null, run: persistentReserveOut, access: 'none', usage: [0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0] },
  { op: 0x88, sa: null, run: sbc.read, access: 'read', usage: u16(0x88, 0xf8) },
  { op: 0x89, sa: null, run: sbc.compareAndWrite, access: 'write', usage: [0x89, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0] },
  { op: 0x8a, sa: null, run: sbc.write, access: 'write', usage: u16(0x8a, 0xf8) },
  { op: 0x8e, sa: null, run: sbc.writeVerify, access: 'write', usage: u16(0x8e, 0xf2) },
  { op: 0x8f, sa: null, run: sbc.verify, access: 'read', usage: u16(0x8f, 0xf6) },
  { op: 0x90, sa: null, run: sbc.prefetch, access: 'read', usage: u16(0x90, 0x02) },
  { op: 0x91, sa: null, run: sbc.synchronizeCache, access: 'write', usage: u16(0x91, 0x02) },
  { op: 0x93, sa: null, run: sbc.writeSame, access: 'write', usage: u16(0x93, 0xf9) },
  { op: 0x9e, sa: 0x10, run: spc.readCapacity16, access: 'none', usage: [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0] },
  { op: 0x9e, sa: 0x12, run: sbc.getLbaStatus, access: 'read', usage: [0x9e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0] },
  { op: 0xa0, sa: null, run: reportLunsOp, access: 'none', r2ok: true, noUa: true, usage: [0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0] },
  { op: 0xa3, sa: 0x0c, run: (r) => reportSupportedOpcodes(r), access: 'none', usage: [0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0] },
  { op: 0xa8, sa: null, run: sbc.read, access: 'read', usage: u12(0xa8, 0xf8) },
  { op: 0xaa, sa: null, run: sbc.write, access: 'write', usage: u12(0xaa, 0xf8) },
  { op: 0xae, sa: null, run: sbc.writeVerify, access: 'write', usage: u12(0xae, 0xf2) },
  { op: 0xaf, sa: null, run: sbc.verify, access: 'read', usage: u12(0xaf, 0xf6) },
];

/** opcode → its definition, or (for 0x9E/0xA3) a map of service actions. */
const TABLE: (OpDef | Map<number, OpDef> | undefined)[] = new Array(256);
for (const d of OPS) {
  if (d.sa === null) TABLE[d.op] = d;
  else {
    let m = TABLE[d.op] as Map<number, OpDef> | undefined;
    if (!m) TABLE[d.op] = m = new Map();
    m.set(d.sa, d);
  }
}

const offered = (d: OpDef, io: UnitIO): boolean => !d.thinOnly || capsOf(io).thin;

/** REPORT SUPPORTED OPERATION CODES (SPC-4 6.35). */
function reportSupportedOpcodes(req: Req): ScsiResponse {
  const { cdb, io } = req;
  const rctd = (cdb[2]! & 0x80) !== 0;
  const options = cdb[2]! & 0x07;
  const reqOp = cdb[3]!;
  const reqSa = cdb.readUInt16BE(4);
  const alloc = cdb.readUInt32BE(6);
  const timeouts = (): Buffer => {
    const t = Buffer.alloc(12);
    t.writeUInt16BE(0x0a, 0);
    t.writeUInt32BE(30, 8); // recommended timeout, seconds
    return t;
  };
  if (options === 0) {
    const list = OPS.filter((d) => offered(d, io));
    const per = 8 + (rctd ? 12 : 0);
    const b = Buffer.alloc(4 + per * list.length);
    b.writeUInt32BE(per * list.length, 0);
    list.forEach((d, i) => {
      const at = 4 + per * i;
      b[at] = d.op;
      b.writeUInt16BE(d.sa ?? 0, at + 2);
      b[at + 5] = (rctd ? 0x02 : 0) | (d.sa !== null ? 0x01 : 0);
      b.writeUInt16BE(d.usage.length, at + 6);
      if (rctd) timeouts().copy(b, at + 8);
    });
    return spc.respond(b, alloc);
  }
  if (options > 3) throw badCdb(2, 2);
  const entry = TABLE[reqOp];
  let def: OpDef | undefined;
  if (entry instanceof Map) {
    if (options === 1) throw badCdb(2, 2); // this opcode has service actions
    def = entry.get(reqSa);
  } else {
    if (options === 2 && entry !== undefined) throw badCdb(2, 2); // no service actions here
    def = entry;
  }
  if (def && !offered(def, io)) def = undefined;
  const usage = def ? def.usage : [];
  const b = Buffer.alloc(4 + usage.length + (def && rctd ? 12 : 0));
  b[1] = def ? (rctd ? 0x80 : 0) | 0x03 : 0x01;
  b.writeUInt16BE(usage.length, 2);
  Buffer.from(usage).copy(b, 4);
  if (def && rctd) timeouts().copy(b, 4 + usage.length);
  return spc.respond(b, alloc);
}

const checkCondition = (sense: Sense, descriptor: boolean, transferLength?: number): ScsiResponse =>
  transferLength === undefined ? { status: 0x02, sense: encodeSense(sense, descriptor) } : { status: 0x02, sense: encodeSense(sense, descriptor), transferLength };

/** The one place a command's error becomes its status and sense. */
function failed(e: unknown, cmd: ScsiCommand, lu: LuState): ScsiResponse {
  if (e instanceof ReservationConflict) return { status: 0x18 };
  const tl = e instanceof CheckCondition ? e.transferLength : undefined;
  return checkCondition(senseForError(e, cmd.write), lu.dsense, tl);
}

export class ScsiCommandSet implements ScsiDevice {
  private readonly lus = new Map<number, LuState>();
  /** Live nexuses, for namespace changes and resets. */
  private readonly nexuses = new Map<string, Nexus>();

  constructor(private readonly ctx: ScsiContext) {}

  private luOf(volumeId: number): LuState {
    let lu = this.lus.get(volumeId);
    if (!lu) {
      lu = new LuState(volumeId, this.ctx);
      this.lus.set(volumeId, lu);
    }
    return lu;
  }

  execute(cmd: ScsiCommand): ScsiResponse | Promise<ScsiResponse> {
    const cdb = cmd.cdb;
    const op = cdb[0]!;
    const io = this.ctx.luns(cmd.nexus).get(cmd.lun);
    if (!io) return this.noUnit(cmd);
    const lu = this.luOf(io.unit.volume.id);
    try {
      let def = TABLE[op];
      if (def instanceof Map) {
        const d = def.get(cdb[1]! & 0x1f);
        if (!d) {
          // Unknown service action of a known opcode: INVALID FIELD IN CDB pointing at it.
          this.deliverUa(lu, cmd.nexus);
          throw badCdb(1, 4);
        }
        def = d;
      }
      const queue = lu.queueFor(cmd.nexus.id);
      if (!def || !offered(def, io)) {
        this.deliverUa(lu, cmd.nexus);
        return checkCondition(SENSE.INVALID_OPCODE, lu.dsense);
      }
      if (op === 0x03) return this.requestSense(cmd, queue, lu.dsense);
      if (!def.noUa) this.deliverUa(lu, cmd.nexus);
      if (op === 0xa0) this.clearLunsChanged(cmd.nexus.id);
      if (conflicts(lu, cmd.nexus.id, def.access, def.r2ok === true)) return { status: 0x18 };
      const size = io.size();
      const req: Req = { cmd, cdb, nexus: cmd.nexus, io, lu, blocks: Math.floor(size / BLOCK), ctx: this.ctx };
      const r = def.run(req);
      return r instanceof Promise ? r.catch((e: unknown) => failed(e, cmd, lu)) : r;
    } catch (e) {
      return failed(e, cmd, lu);
    }
  }

  /** The oldest pending unit attention becomes this command's CHECK CONDITION. */
  private deliverUa(lu: LuState, nexus: Nexus): void {
    const q = lu.queueFor(nexus.id);
    const s = q.shift();
    if (s) throw new CheckCondition(s);
  }

  private requestSense(cmd: ScsiCommand, queue: Sense[], dsense: boolean): ScsiResponse {
    const cdb = cmd.cdb;
    if (cdb[1]! & 0xfe) return checkCondition(SENSE.INVALID_FIELD_IN_CDB, dsense);
    const desc = (cdb[1]! & 0x01) !== 0;
    return spc.requestSense(cdb, queue.shift() ?? null, desc);
  }

  /** REPORT LUNS clears REPORTED LUNS DATA HAS CHANGED for the nexus on every LU (SPC-4 6.33). */
  private clearLunsChanged(nexusId: string): void {
    for (const lu of this.lus.values()) {
      const q = lu.ua.get(nexusId);
      if (!q) continue;
      const i = q.indexOf(SENSE.UA_REPORTED_LUNS_CHANGED);
      if (i >= 0) q.splice(i, 1);
    }
  }

  /** A LUN with no unit behind it: INQUIRY says "nothing here", REPORT LUNS works, the rest LOGICAL UNIT NOT SUPPORTED. */
  private noUnit(cmd: ScsiCommand): ScsiResponse {
    const cdb = cmd.cdb;
    try {
      switch (cdb[0]) {
        case 0x12:
          if (cdb[1]! & 0x01) throw new CheckCondition(SENSE.LU_NOT_SUPPORTED);
          return spc.respond(spc.standardInquiry(false), cdb.readUInt16BE(3));
        case 0xa0:
          this.clearLunsChanged(cmd.nexus.id);
          return spc.reportLuns(cdb, [...this.ctx.luns(cmd.nexus).keys()]);
        case 0x03:
          return spc.requestSense(cdb, SENSE.LU_NOT_SUPPORTED, (cdb[1]! & 0x01) !== 0);
        default:
          return checkCondition(SENSE.LU_NOT_SUPPORTED, false);
      }
    } catch (e) {
      return checkCondition(senseForError(e, cmd.write), false);
    }
  }

  lunReset(nexus: Nexus, lun: number): void {
    const io = this.ctx.luns(nexus).get(lun);
    if (!io) return;
    const lu = this.luOf(io.unit.volume.id);
    // SAM-5: the reset clears SCSI-2 reservations (not persistent ones) and tells the other nexuses.
    lu.reserve2 = null;
    lu.raise(SENSE.UA_BUS_DEVICE_RESET, nexus.id);
  }

  targetReset(nexus: Nexus, _cold: boolean): void {
    for (const io of this.ctx.luns(nexus).values()) {
      const lu = this.luOf(io.unit.volume.id);
      lu.reserve2 = null;
      lu.raise(SENSE.UA_POWER_ON_RESET, nexus.id);
    }
  }

  nexusAdded(nexus: Nexus): void {
    this.nexuses.set(nexus.id, nexus);
    // A new nexus starts with POWER ON, RESET OCCURRED on every LU (queued on first touch).
    for (const lu of this.lus.values()) lu.ua.delete(nexus.id);
  }

  nexusRemoved(nexus: Nexus): void {
    this.nexuses.delete(nexus.id);
    for (const lu of this.lus.values()) {
      lu.ua.delete(nexus.id);
      nexusGone(lu, nexus);
    }
  }

  namespaceChanged(host: string, change: 'mapped' | 'unmapped' | 'resized', volumeIds: readonly number[]): void {
    if (change === 'resized') {
      for (const id of volumeIds) this.lus.get(id)?.raise(SENSE.UA_CAPACITY_CHANGED, null);
      return;
    }
    for (const nexus of this.nexuses.values()) {
      if (nexus.host !== host) continue;
      for (const io of this.ctx.luns(nexus).values()) {
        const lu = this.lus.get(io.unit.volume.id);
        const q = lu?.ua.get(nexus.id);
        if (q && !q.includes(SENSE.UA_REPORTED_LUNS_CHANGED)) q.push(SENSE.UA_REPORTED_LUNS_CHANGED);
      }
    }
  }
}
