/** SPC-4 primary commands: INQUIRY and its VPD pages, REPORT LUNS, REQUEST SENSE, READ CAPACITY, TUR, … */
import type { UnitIO } from '../../core/contract.js';
import type { Nexus, ScsiResponse } from './contract.js';
import { BLOCK, capsOf, type Req } from './lu.js';
import { SENSE, type Sense, badCdb, encodeSense } from './sense.js';

export const GOOD: ScsiResponse = Object.freeze({ status: 0 }) as ScsiResponse;

const VENDOR = 'BLKGATE ';
const PRODUCT = 'blockgate volume';
const REVISION = '0001';
/** Largest WRITE SAME / UNMAP run per command, in blocks (512 MiB; libiscsi holds targets to at most 1M blocks). */
export const MAX_UNMAP_BLOCKS = 1024 * 1024;
export const MAX_UNMAP_DESCRIPTORS = 256;
export const MAX_CAW_BLOCKS = 128;
/** Allocation granularity of the arrays (disks' ALLOC_BLOCK): whole ones are unmapped, partial ones only zeroed. */
export const ALLOC_BLOCK = 4096;

export const respond = (data: Buffer, alloc: number): ScsiResponse => ({ status: 0, data: data.length > alloc ? data.subarray(0, alloc) : data });

/** Maximum READ/WRITE transfer, in blocks (VPD B0). */
export const maxTransferBlocks = (io: UnitIO): number => Math.max(1, Math.floor(capsOf(io).maxTransfer / BLOCK));

function ascii(b: Buffer, at: number, len: number, s: string): void {
  b.fill(0x20, at, at + len);
  b.write(s.slice(0, len), at, 'ascii');
}

// ---- INQUIRY ----------------------------------------------------------------------

/** Standard INQUIRY data; `present` false gives the "no logical unit here" answer (PQ 3, type 1Fh). */
export function standardInquiry(present: boolean): Buffer {
  const b = Buffer.alloc(96);
  b[0] = present ? 0x00 : 0x7f;
  b[2] = 0x06; // SPC-4
  b[3] = 0x12; // HISUP, response data format 2
  b[4] = b.length - 5;
  b[7] = 0x02; // CMDQUE
  ascii(b, 8, 8, VENDOR);
  ascii(b, 16, 16, PRODUCT);
  ascii(b, 32, 4, REVISION);
  // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
  [0x00a0, 0x0960, 0x0460, 0x04c0].forEach((v, i) => b.writeUInt16BE(v, 58 + 2 * i));
  return b;
}

const VPD_PAGES = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

export function inquiry(req: Req): ScsiResponse {
  const { cdb } = req;
  const evpd = cdb[1]! & 0x01;
  const page = cdb[2]!;
  const alloc = cdb.readUInt16BE(3);
  if (cdb[1]! & 0xfe) throw badCdb(1);
  if (!evpd) {
    if (page !== 0) throw badCdb(2);
    return respond(standardInquiry(true), alloc);
  }
  return respond(vpd(req, page), alloc);
}

function vpdPage(page: number, body: Buffer): Buffer {
  const b = Buffer.alloc(4 + body.length);
  b[1] = page;
  b.writeUInt16BE(body.length, 2);
  body.copy(b, 4);
  return b;
}

function vpd(req: Req, page: number): Buffer {
  const { io, nexus } = req;
  const caps = capsOf(io);
  switch (page) {
    case 0x00:
      return vpdPage(0, Buffer.from(VPD_PAGES));
    case 0x80:
      return vpdPage(0x80, Buffer.from(io.unit.serial, 'ascii'));
    case 0x83:
      return vpdPage(0x83, deviceIdentification(io, nexus));
    case 0xb0: {
      const b = Buffer.alloc(0x3c);
      b[1] = Math.min(MAX_CAW_BLOCKS, Math.floor(maxTransferBlocks(io) / 2));
      b.writeUInt16BE(Math.max(1, Math.floor(caps.preferredBlock / BLOCK)) & 0xffff, 2);
      b.writeUInt32BE(maxTransferBlocks(io), 4);
      b.writeUInt32BE(Math.max(1, Math.floor(caps.preferredBlock / BLOCK)), 8);
      b.writeUInt32BE(maxTransferBlocks(io), 12);
      if (caps.thin) {
        b.writeUInt32BE(MAX_UNMAP_BLOCKS, 16);
        b.writeUInt32BE(MAX_UNMAP_DESCRIPTORS, 20);
        b.writeUInt32BE(ALLOC_BLOCK / BLOCK, 24);
        b.writeUInt32BE(0x80000000, 28);
      }
      b.writeBigUInt64BE(BigInt(MAX_UNMAP_BLOCKS), 32);
      return vpdPage(0xb0, b);
    }
    case 0xb1: {
      const b = Buffer.alloc(0x3c);
      b.writeUInt16BE(1, 0); // non-rotating medium
      return vpdPage(0xb1, b);
    }
    case 0xb2: {
      const b = Buffer.alloc(4);
      if (caps.thin) {
        b[1] = 0x80 | 0x40 | 0x20 | (caps.trimReadsZeroes ? 0x04 : 0);
        b[2] = 0x02;
      }
      return vpdPage(0xb2, b);
    }
    default:
      throw badCdb(2);
  }
}

function designator(codeSet: number, assoc: number, type: number, value: Buffer, iscsi = false): Buffer {
  const b = Buffer.alloc(4 + value.length);
  b[0] = (iscsi ? 0x50 : 0) | codeSet;
  b[1] = (iscsi ? 0x80 : 0) | (assoc << 4) | type;
  b[3] = value.length;
  value.copy(b, 4);
  return b;
}

/** SCSI name strings are NUL-terminated and padded to a multiple of 4. */
function nameString(s: string): Buffer {
  const n = (Buffer.byteLength(s) + 1 + 3) & ~3;
  const b = Buffer.alloc(n);
  b.write(s, 0, 'utf8');
  return b;
}

function deviceIdentification(io: UnitIO, nexus: Nexus): Buffer {
  const naa = /^[0-9a-f]{16}$|^[0-9a-f]{32}$/i.test(io.unit.naa) ? Buffer.from(io.unit.naa, 'hex') : null;
  const rel = Buffer.alloc(4);
  rel.writeUInt16BE(Math.max(1, nexus.tpgt) & 0xffff, 2);
  const parts = [
    ...(naa ? [designator(1, 0, 3, naa)] : []),
    designator(2, 0, 1, Buffer.from(VENDOR + io.unit.serial, 'ascii')),
    designator(1, 1, 4, rel, true),
    designator(3, 1, 8, nameString(`${nexus.targetName},t,0x${Math.max(1, nexus.tpgt).toString(16).padStart(4, '0')}`), true),
    designator(3, 2, 8, nameString(nexus.targetName), true),
  ];
  return Buffer.concat(parts);
}

// ---- READ CAPACITY --------------------------------------------------------------

export function readCapacity10(req: Req): ScsiResponse {
  const { cdb, blocks } = req;
  // PMI is obsolete; without it the LBA field must be zero.
  if (!(cdb[8]! & 0x01) && cdb.readUInt32BE(2) !== 0) throw badCdb(2);
  const b = Buffer.alloc(8);
  b.writeUInt32BE(blocks - 1 > 0xffffffff ? 0xffffffff : blocks - 1, 0);
  b.writeUInt32BE(BLOCK, 4);
  return { status: 0, data: b };
}

export function readCapacity16(req: Req): ScsiResponse {
  const { cdb, blocks, io } = req;
  const alloc = cdb.readUInt32BE(10);
  const caps = capsOf(io);
  const b = Buffer.alloc(32);
  b.writeBigUInt64BE(BigInt(blocks - 1), 0);
  b.writeUInt32BE(BLOCK, 8);
  // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT stays 0: any 512-byte block is written without a read
  // (the unmap granularity in VPD B0 tells hosts about the 4 KiB allocation block).
  if (caps.thin) b[14] = 0x80 | (caps.trimReadsZeroes ? 0x40 : 0);
  return respond(b, alloc);
}

// ---- REPORT LUNS / REQUEST SENSE / TUR ---------------------------------------------

/** 8-byte LUN: peripheral addressing below 256, flat space above (SAM-5 4.7). */
export function encodeLun(lun: number, out: Buffer, at: number): void {
  if (lun < 256) {
    out[at] = 0;
    out[at + 1] = lun;
  } else {
    out[at] = 0x40 | ((lun >> 8) & 0x3f);
    out[at + 1] = lun & 0xff;
  }
}

export function reportLuns(cdb: Buffer, luns: readonly number[]): ScsiResponse {
  const select = cdb[2]!;
  const alloc = cdb.readUInt32BE(6);
  if (select > 2) throw badCdb(2);
  if (alloc < 16) throw badCdb(6);
  // Select 1 asks for well-known LUNs only: we have none.
  const list = select === 1 ? [] : [...luns].sort((a, b) => a - b);
  // SPC-4: the list always holds LUN 0 (a "no unit here" answer to INQUIRY if nothing is mapped there).
  if (select !== 1 && list[0] !== 0) list.unshift(0);
  const b = Buffer.alloc(8 + 8 * list.length);
  b.writeUInt32BE(8 * list.length, 0);
  list.forEach((l, i) => encodeLun(l, b, 8 + 8 * i));
  return respond(b, alloc);
}

export function requestSense(cdb: Buffer, sense: Sense | null, descFormat: boolean): ScsiResponse {
  const alloc = cdb[4]!;
  const s = encodeSense(sense ?? SENSE.NO_SENSE, descFormat);
  return respond(s, alloc);
}

export function startStopUnit(req: Req): ScsiResponse {
  const { cdb } = req;
  // Not removable: nothing to eject or load; power conditions are accepted and ignored.
  if (cdb[1]! & 0xfe) throw badCdb(1);
  return GOOD;
}

export function preventAllow(req: Req): ScsiResponse {
  const { cdb } = req;
  if (cdb[4]! & 0xfc) throw badCdb(4);
  return GOOD;
}
