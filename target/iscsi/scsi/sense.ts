import { isBlockgateError } from '../../../common/errors.js';

/** SAM status codes. */
export const STATUS = {
  GOOD: 0x00,
  CHECK_CONDITION: 0x02,
  CONDITION_MET: 0x04,
  BUSY: 0x08,
  RESERVATION_CONFLICT: 0x18,
  TASK_SET_FULL: 0x28,
} as const;

export const KEY = {
  NO_SENSE: 0x0,
  NOT_READY: 0x2,
  MEDIUM_ERROR: 0x3,
  HARDWARE_ERROR: 0x4,
  ILLEGAL_REQUEST: 0x5,
  UNIT_ATTENTION: 0x6,
  DATA_PROTECT: 0x7,
  ABORTED_COMMAND: 0xb,
  MISCOMPARE: 0xe,
} as const;

/**
 * A sense condition: key + additional sense code/qualifier, the INFORMATION
 * field when it means something (miscompare offset), and a sense-key-specific
 * field pointer for ILLEGAL REQUEST (which CDB or parameter byte was wrong).
 */
export class Sense {
  constructor(
    readonly key: number,
    readonly asc: number,
    readonly ascq: number,
    readonly info: number | null = null,
    /** [inCdb, byte, bit|null] */
    readonly field: readonly [boolean, number, number | null] | null = null,
  ) {}
}

/** Thrown inside the SCSI layer to end a command with CHECK CONDITION. */
export class CheckCondition extends Error {
  constructor(
    readonly sense: Sense,
    /** SPDTL for the residual, when the command is refused for its Data-Out length. */
    readonly transferLength?: number,
  ) {
    super(`sense ${sense.key.toString(16)}/${sense.asc.toString(16)}/${sense.ascq.toString(16)}`);
  }
}

/** Thrown to end a command with RESERVATION CONFLICT (no sense). */
export class ReservationConflict extends Error {
  constructor() {
    super('reservation conflict');
  }
}

const s = (key: number, asc: number, ascq: number) => new Sense(key, asc, ascq);

/** Conditions the command set raises by name, so every path says the same thing. */
export const SENSE = {
  NO_SENSE: s(KEY.NO_SENSE, 0, 0),
  INVALID_OPCODE: s(KEY.ILLEGAL_REQUEST, 0x20, 0x00),
  LBA_OUT_OF_RANGE: s(KEY.ILLEGAL_REQUEST, 0x21, 0x00),
  INVALID_FIELD_IN_CDB: s(KEY.ILLEGAL_REQUEST, 0x24, 0x00),
  LU_NOT_SUPPORTED: s(KEY.ILLEGAL_REQUEST, 0x25, 0x00),
  INVALID_FIELD_IN_PARAM: s(KEY.ILLEGAL_REQUEST, 0x26, 0x00),
  PARAM_LIST_LENGTH_ERROR: s(KEY.ILLEGAL_REQUEST, 0x1a, 0x00),
  SAVING_NOT_SUPPORTED: s(KEY.ILLEGAL_REQUEST, 0x39, 0x00),
  INSUFFICIENT_REGISTRATION_RESOURCES: s(KEY.ILLEGAL_REQUEST, 0x55, 0x04),
  WRITE_PROTECTED: s(KEY.DATA_PROTECT, 0x27, 0x00),
  MISCOMPARE_VERIFY: s(KEY.MISCOMPARE, 0x1d, 0x00),
  UNRECOVERED_READ_ERROR: s(KEY.MEDIUM_ERROR, 0x11, 0x00),
  WRITE_ERROR: s(KEY.MEDIUM_ERROR, 0x0c, 0x00),
  SPACE_EXHAUSTED: s(KEY.DATA_PROTECT, 0x27, 0x07),
  LU_NOT_READY_SHUTTING_DOWN: s(KEY.NOT_READY, 0x04, 0x00),
  INTERNAL_TARGET_FAILURE: s(KEY.HARDWARE_ERROR, 0x44, 0x00),
  // Unit attentions.
  UA_POWER_ON_RESET: s(KEY.UNIT_ATTENTION, 0x29, 0x00),
  UA_BUS_DEVICE_RESET: s(KEY.UNIT_ATTENTION, 0x29, 0x03),
  UA_MODE_PARAMETERS_CHANGED: s(KEY.UNIT_ATTENTION, 0x2a, 0x01),
  UA_RESERVATIONS_PREEMPTED: s(KEY.UNIT_ATTENTION, 0x2a, 0x03),
  UA_RESERVATIONS_RELEASED: s(KEY.UNIT_ATTENTION, 0x2a, 0x04),
  UA_REGISTRATIONS_PREEMPTED: s(KEY.UNIT_ATTENTION, 0x2a, 0x05),
  UA_CAPACITY_CHANGED: s(KEY.UNIT_ATTENTION, 0x2a, 0x09),
  UA_REPORTED_LUNS_CHANGED: s(KEY.UNIT_ATTENTION, 0x3f, 0x0e),
} as const;

export const fail = (sense: Sense): CheckCondition => new CheckCondition(sense);
/** INVALID FIELD IN CDB pointing at the offending byte (and bit). */
export const badCdb = (byte: number, bit: number | null = null): CheckCondition =>
  new CheckCondition(new Sense(KEY.ILLEGAL_REQUEST, 0x24, 0x00, null, [true, byte, bit]));
/** INVALID FIELD IN PARAMETER LIST pointing at the offending byte. */
export const badParam = (byte: number, bit: number | null = null): CheckCondition =>
  new CheckCondition(new Sense(KEY.ILLEGAL_REQUEST, 0x26, 0x00, null, [false, byte, bit]));

/**
 * The one place BlockgateError codes become SCSI sense. A write past the end
 * and a read past the end are both LBA OUT OF RANGE (the CDB checks catch
 * these first; this covers a unit that shrank under a command).
 */
export function senseForError(err: unknown, write: boolean): Sense {
  if (err instanceof CheckCondition) return err.sense;
  if (!isBlockgateError(err)) return SENSE.INTERNAL_TARGET_FAILURE;
  switch (err.code) {
    case 'OUT_OF_RANGE':
      return SENSE.LBA_OUT_OF_RANGE;
    case 'READ_ONLY':
    case 'UNAUTHORIZED':
      return SENSE.WRITE_PROTECTED;
    case 'NO_SPACE':
      return SENSE.SPACE_EXHAUSTED;
    case 'BAD_REQUEST':
      return SENSE.INVALID_FIELD_IN_CDB;
    case 'NOT_SUPPORTED':
      return SENSE.INVALID_FIELD_IN_CDB;
    case 'SHUTTING_DOWN':
      return SENSE.LU_NOT_READY_SHUTTING_DOWN;
    case 'REVOKED':
      return SENSE.LU_NOT_SUPPORTED;
    case 'IO_ERROR':
      return write ? SENSE.WRITE_ERROR : SENSE.UNRECOVERED_READ_ERROR;
    default:
      return SENSE.INTERNAL_TARGET_FAILURE;
  }
}

/** Sense data in fixed (0x70) or descriptor (0x72, Control page D_SENSE=1) format. */
export function encodeSense(sense: Sense, descriptor: boolean): Buffer {
  if (descriptor) {
    const hasInfo = sense.info !== null;
    const hasSks = sense.field !== null;
    const len = 8 + (hasInfo ? 12 : 0) + (hasSks ? 8 : 0);
    const b = Buffer.alloc(len);
    b[0] = 0x72;
    b[1] = sense.key & 0x0f;
    b[2] = sense.asc;
    b[3] = sense.ascq;
    b[7] = len - 8;
    let p = 8;
    if (hasInfo) {
      b[p] = 0x00;
      b[p + 1] = 0x0a;
      b[p + 2] = 0x80;
      b.writeBigUInt64BE(BigInt(sense.info!), p + 4);
      p += 12;
    }
    if (hasSks) {
      b[p] = 0x02;
      b[p + 1] = 0x06;
      writeSks(b, p + 4, sense.field!);
    }
    return b;
  }
  const b = Buffer.alloc(18);
  b[0] = 0x70;
  b[2] = sense.key & 0x0f;
  if (sense.info !== null) {
    b[0] |= 0x80;
    b.writeUInt32BE(sense.info >>> 0, 3);
  }
  b[7] = 10;
  b[12] = sense.asc;
  b[13] = sense.ascq;
  if (sense.field !== null) writeSks(b, 15, sense.field);
  return b;
}

function writeSks(b: Buffer, at: number, [inCdb, byte, bit]: readonly [boolean, number, number | null]): void {
  b[at] = 0x80 | (inCdb ? 0x40 : 0) | (bit !== null ? 0x08 | (bit & 7) : 0);
  b.writeUInt16BE(byte & 0xffff, at + 1);
}
