/**
 * SBC-3 block commands. Every LBA/length check happens here, before the unit
 * is touched; UnitIO then works in bytes (LBA × 512).
 */
import type { AllocationRun } from '../../core/contract.js';
import { LARGE_MIN, SMALL_MAX, dataBuffer, smallBuffer } from '../../core/index.js';
import type { ScsiResponse } from './contract.js';
import { BLOCK, capsOf, type Req } from './lu.js';
import { CheckCondition, KEY, SENSE, Sense, badCdb, badParam, fail } from './sense.js';
import { GOOD, MAX_CAW_BLOCKS, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, maxTransferBlocks, respond } from './spc.js';

const TWO32 = 0x1_0000_0000;
/** Largest pattern buffer WRITE SAME builds at once. */
const SAME_CHUNK = 1 << 20;

/** A 64-bit LBA as a number, or Infinity when it is beyond any unit we can hold (2^53). */
function lba64(cdb: Buffer, at: number): number {
  const hi = cdb.readUInt32BE(at);
  if (hi >= 0x200000) return Infinity;
  return hi * TWO32 + cdb.readUInt32BE(at + 4);
}

/** CDB length from the opcode's group code (SPC-4 4.2.5.1). */
export function cdbLength(op: number): number {
  const g = op >> 5;
  return g === 0 ? 6 : g === 4 ? 16 : g === 5 ? 12 : 10;
}

/** Byte of the TRANSFER LENGTH field, for field pointers. */
const lenByte = (op: number): number => [4, 7, 6, 10][[6, 10, 12, 16].indexOf(cdbLength(op))]!;

/** LBA and transfer length of the READ/WRITE/VERIFY/… CDB families. */
function lbaLen(cdb: Buffer): [number, number] {
  switch (cdbLength(cdb[0]!)) {
    case 6: {
      const lba = ((cdb[1]! & 0x1f) << 16) | cdb.readUInt16BE(2);
      return [lba, cdb[4]! === 0 ? 256 : cdb[4]!];
    }
    case 10:
      return [cdb.readUInt32BE(2), cdb.readUInt16BE(7)];
    case 12:
      return [cdb.readUInt32BE(2), cdb.readUInt32BE(6)];
    default:
      return [lba64(cdb, 2), cdb.readUInt32BE(10)];
  }
}

/** LBA OUT OF RANGE unless [lba, lba+n) lies inside the unit (n = 0: lba itself must exist). */
function checkRange(req: Req, lba: number, n: number): void {
  if (n === 0 ? lba >= req.blocks : lba + n > req.blocks) throw fail(SENSE.LBA_OUT_OF_RANGE);
}

function checkWritable(req: Req): void {
  if (req.io.unit.readOnly || capsOf(req.io).readOnly) throw fail(SENSE.WRITE_PROTECTED);
  // Control page SWP: LOGICAL UNIT SOFTWARE WRITE PROTECTED.
  if (req.lu.swp) throw fail(new Sense(KEY.DATA_PROTECT, 0x27, 0x02));
}

/**
 * The Data-Out a write carries, cut to the CDB's length. A shorter one
 * (EDTL < SPDTL) is written as far as it goes when it ends on a block
 * boundary (FCP-4's "process normally, transfer no more than EDTL", what
 * libiscsi 1.19 asks); one ending mid-block is refused with INVALID FIELD IN
 * COMMAND INFORMATION UNIT and nothing is written.
 */
function writeData(req: Req, bytes: number): Buffer {
  const d = req.cmd.data;
  const have = d ? d.length : 0;
  if (have >= bytes) return d!.length === bytes ? d! : d!.subarray(0, bytes);
  if (have % BLOCK !== 0) throw new CheckCondition(new Sense(KEY.ILLEGAL_REQUEST, 0x0e, 0x03), bytes);
  return d ? d.subarray(0, have) : EMPTY;
}

const EMPTY = Buffer.alloc(0);

/** Exactly `bytes` of Data-Out (verify and compare data), else INVALID FIELD IN COMMAND INFORMATION UNIT. */
function needData(req: Req, bytes: number): Buffer {
  const d = req.cmd.data;
  if (!d || d.length < bytes) throw new CheckCondition(new Sense(KEY.ILLEGAL_REQUEST, 0x0e, 0x03), bytes);
  return d.length === bytes ? d : d.subarray(0, bytes);
}

// ---- READ / WRITE -------------------------------------------------------------

// READ and WRITE answer without a promise when the cache completes them in memory.
export function read(req: Req): ScsiResponse | Promise<ScsiResponse> {
  const { cdb, io } = req;
  if (cdb[0] !== 0x08 && cdb[1]! & 0xe0) throw badCdb(1, 7); // RDPROTECT: no protection information
  const [lba, n] = lbaLen(cdb);
  checkRange(req, lba, n);
  if (n === 0) return GOOD;
  if (n > maxTransferBlocks(io)) throw badCdb(lenByte(cdb[0]!));
  const bytes = n * BLOCK;
  // 8-byte aligned either way (the cache copies word-wise only between aligned addresses); a large one pooled.
  const data = dataBuffer(bytes);
  const done: ScsiResponse = bytes >= LARGE_MIN || bytes <= SMALL_MAX ? { status: 0, data, recycle: true } : { status: 0, data };
  const p = io.read(lba * BLOCK, bytes, data);
  return p ? p.then(() => done) : done;
}

export function write(req: Req): ScsiResponse | Promise<ScsiResponse> {
  const { cdb, io } = req;
  if (cdb[0] !== 0x0a && cdb[1]! & 0xe0) throw badCdb(1, 7); // WRPROTECT
  const [lba, n] = lbaLen(cdb);
  checkWritable(req);
  checkRange(req, lba, n);
  if (n === 0) return GOOD;
  if (n > maxTransferBlocks(io)) throw badCdb(lenByte(cdb[0]!));
  const data = writeData(req, n * BLOCK);
  const fua = cdb[0] !== 0x0a && (cdb[1]! & 0x08) !== 0;
  const done: ScsiResponse = req.cmd.expectedLength === n * BLOCK ? GOOD : { status: 0, transferLength: n * BLOCK };
  const p = data.length > 0 ? io.write(lba * BLOCK, data, fua) : null;
  return p ? p.then(() => done) : done;
}

/** WRITE AND VERIFY: the write is read back from the same cache, so verifying is the write itself. */
export async function writeVerify(req: Req): Promise<ScsiResponse> {
  const { cdb, io } = req;
  if (cdb[1]! & 0xe0) throw badCdb(1, 7);
  const [lba, n] = lbaLen(cdb);
  checkWritable(req);
  checkRange(req, lba, n);
  if (n === 0) return GOOD;
  if (n > maxTransferBlocks(io)) throw badCdb(lenByte(cdb[0]!));
  const data = writeData(req, n * BLOCK);
  // Verified data must be on the medium, not only in a write-back cache.
  if (data.length > 0) {
    const p = io.write(lba * BLOCK, data, true);
    if (p) await p;
  }
  return req.cmd.expectedLength === n * BLOCK ? GOOD : { status: 0, transferLength: n * BLOCK };
}

export async function verify(req: Req): Promise<ScsiResponse> {
  const { cdb, io } = req;
  if (cdb[1]! & 0xe0) throw badCdb(1, 7); // VRPROTECT
  const bytchk = (cdb[1]! >> 1) & 0x03;
  if (bytchk === 2) throw badCdb(1, 2);
  const [lba, n] = lbaLen(cdb);
  checkRange(req, lba, n);
  if (n === 0 || bytchk === 0) return GOOD;
  if (n > maxTransferBlocks(io)) throw badCdb(lenByte(cdb[0]!));
  const expected = needData(req, bytchk === 1 ? n * BLOCK : BLOCK);
  const data = Buffer.allocUnsafe(n * BLOCK);
  const p = io.read(lba * BLOCK, n * BLOCK, data);
  if (p) await p;
  for (let b = 0; b < n; b++) {
    const want = bytchk === 1 ? expected.subarray(b * BLOCK, (b + 1) * BLOCK) : expected;
    const got = data.subarray(b * BLOCK, (b + 1) * BLOCK);
    if (!got.equals(want)) {
      let i = 0;
      while (got[i] === want[i]) i++;
      throw fail(new Sense(KEY.MISCOMPARE, 0x1d, 0x00, b * BLOCK + i));
    }
  }
  return GOOD;
}

export async function compareAndWrite(req: Req): Promise<ScsiResponse> {
  const { cdb, io } = req;
  if (cdb[1]! & 0xe0) throw badCdb(1, 7);
  const lba = lba64(cdb, 2);
  const n = cdb[13]!;
  checkWritable(req);
  if (n > MAX_CAW_BLOCKS) throw badCdb(13);
  checkRange(req, lba, n);
  const d = req.cmd.data;
  // No blocks but a Data-Out: the CDB cannot be what the initiator meant (an NLB that overflowed its byte).
  if (n === 0) {
    if (d && d.length > 0) throw badCdb(13);
    return GOOD;
  }
  // The Data-Out is exactly the verify half then the write half.
  if (!d || d.length !== 2 * n * BLOCK) throw fail(new Sense(KEY.ILLEGAL_REQUEST, 0x0e, 0x03));
  const fua = (cdb[1]! & 0x08) !== 0;
  const r = await io.compareAndWrite(lba * BLOCK, d.subarray(0, n * BLOCK), d.subarray(n * BLOCK), fua);
  if (r.mismatchAt >= 0) throw fail(new Sense(KEY.MISCOMPARE, 0x1d, 0x00, r.mismatchAt));
  return GOOD;
}

// ---- cache, provisioning --------------------------------------------------------

/**
 * The block range of a SYNCHRONIZE CACHE or PRE-FETCH CDB (10 or 16 bytes; `op16` names the
 * long form): a count of 0 means "to the end of the unit", so it resolves to what is left.
 */
function cacheRange(req: Req, op16: number): { lba: number; count: number } {
  const { cdb } = req;
  const sixteen = cdb[0] === op16;
  const lba = sixteen ? lba64(cdb, 2) : cdb.readUInt32BE(2);
  const n = sixteen ? cdb.readUInt32BE(10) : cdb.readUInt16BE(7);
  if (n === 0 ? lba > req.blocks : lba + n > req.blocks) throw fail(SENSE.LBA_OUT_OF_RANGE);
  return { lba, count: n === 0 ? req.blocks - lba : n };
}

export async function synchronizeCache(req: Req): Promise<ScsiResponse> {
  // The range is checked but the whole unit is flushed: a unit's dirty data is not tracked per range.
  cacheRange(req, 0x91);
  await req.io.flush();
  return GOOD;
}

export async function prefetch(req: Req): Promise<ScsiResponse> {
  const { io } = req;
  const { lba, count } = cacheRange(req, 0x90);
  if (count > 0) await io.prefetch(lba * BLOCK, Math.min(count, maxTransferBlocks(io)) * BLOCK);
  // GOOD rather than CONDITION MET: the cache does not promise to keep what it warmed.
  return GOOD;
}

export async function writeSame(req: Req): Promise<ScsiResponse> {
  const { cdb, io, cmd } = req;
  const sixteen = cdb[0] === 0x93;
  const flags = cdb[1]!;
  if (flags & 0xe0) throw badCdb(1, 7); // WRPROTECT
  if (flags & 0x06) throw badCdb(1, 2); // PBDATA / LBDATA
  const anchor = (flags & 0x10) !== 0;
  const unmap = (flags & 0x08) !== 0;
  const ndob = sixteen && (flags & 0x01) !== 0;
  if (!sixteen && flags & 0x01) throw badCdb(1, 0);
  const caps = capsOf(io);
  if (anchor) throw badCdb(1, 4); // ANC_SUP is 0
  if (unmap && !caps.thin) throw badCdb(1, 3);
  const lba = sixteen ? lba64(cdb, 2) : cdb.readUInt32BE(2);
  const given = sixteen ? cdb.readUInt32BE(10) : cdb.readUInt16BE(7);
  checkWritable(req);
  if (given === 0 ? lba >= req.blocks : lba + given > req.blocks) throw fail(SENSE.LBA_OUT_OF_RANGE);
  const n = given === 0 ? req.blocks - lba : given;
  if (n > MAX_UNMAP_BLOCKS) throw badCdb(sixteen ? 10 : 7);
  let block: Buffer;
  if (ndob) block = Buffer.alloc(BLOCK);
  else {
    const d = cmd.data;
    // Exactly one block of Data-Out (SBC-3 5.48).
    if (!d || d.length !== BLOCK) throw new CheckCondition(new Sense(KEY.ILLEGAL_REQUEST, 0x0e, 0x03), BLOCK);
    block = d;
  }
  // UNMAP: the blocks are deallocated whatever the data block holds (SBC-3 5.45; they read back as
  // zeroes, LBPRZ). Without it, a zero block keeps them allocated as zeroes.
  if (unmap || isZero(block)) {
    await io.zero(lba * BLOCK, n * BLOCK, { noHole: !unmap, fast: false, fua: false });
    return GOOD;
  }
  const per = Math.max(1, Math.min(n, Math.floor(SAME_CHUNK / BLOCK)));
  const pattern = Buffer.allocUnsafe(per * BLOCK);
  for (let i = 0; i < per; i++) block.copy(pattern, i * BLOCK);
  for (let done = 0; done < n; ) {
    const k = Math.min(per, n - done);
    const p = io.write((lba + done) * BLOCK, k === per ? pattern : pattern.subarray(0, k * BLOCK), false);
    if (p) await p;
    done += k;
  }
  return GOOD;
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

export async function unmap(req: Req): Promise<ScsiResponse> {
  const { cdb, io, cmd } = req;
  if (cdb[1]! & 0x01) throw badCdb(1, 0); // ANCHOR
  const len = cdb.readUInt16BE(7);
  checkWritable(req);
  if (len === 0) return GOOD;
  if (len < 8) throw fail(SENSE.PARAM_LIST_LENGTH_ERROR);
  const p = cmd.data;
  if (!p || p.length < len) throw fail(SENSE.PARAM_LIST_LENGTH_ERROR);
  const descLen = p.readUInt16BE(2);
  if (descLen % 16 !== 0 || 8 + descLen > len) throw fail(SENSE.PARAM_LIST_LENGTH_ERROR);
  const count = descLen / 16;
  if (count > MAX_UNMAP_DESCRIPTORS) throw badParam(2);
  const ranges: [number, number][] = [];
  for (let i = 0; i < count; i++) {
    const at = 8 + 16 * i;
    const lba = lba64(p, at);
    const n = p.readUInt32BE(at + 8);
    if (n > MAX_UNMAP_BLOCKS) throw badParam(at + 8);
    if (lba + n > req.blocks) throw fail(SENSE.LBA_OUT_OF_RANGE);
    if (n > 0) ranges.push([lba, n]);
  }
  // Zeroing rather than trimming: whole allocation blocks become holes either way, and the partial
  // ones read back as zeroes, as LBPRZ promises for every unmapped LBA.
  for (const [lba, n] of ranges) await io.zero(lba * BLOCK, n * BLOCK, { noHole: false, fast: false, fua: false });
  return GOOD;
}

/** GET LBA STATUS: mapped / deallocated runs from the allocation map, from the given LBA on. */
export function getLbaStatus(req: Req): ScsiResponse {
  const { cdb, io, blocks } = req;
  const lba = lba64(cdb, 2);
  const alloc = cdb.readUInt32BE(10);
  if (lba >= blocks) throw fail(SENSE.LBA_OUT_OF_RANGE);
  if (alloc < 24 && alloc !== 0) {
    // Room for the header only is fine; the length field still tells the whole story.
  }
  const max = Math.max(1, Math.min(1024, Math.floor((alloc - 8) / 16)));
  const span = Math.min(blocks - lba, MAX_UNMAP_BLOCKS);
  const runs: AllocationRun[] = capsOf(io).thin ? io.extents(lba * BLOCK, span * BLOCK, max) : [{ offset: lba * BLOCK, length: span * BLOCK, state: 'data' }];
  // Runs are in bytes; descriptors are in blocks, neighbours of equal status merged.
  const descs: [number, number, number][] = [];
  for (const r of runs) {
    const start = Math.max(lba, Math.floor(r.offset / BLOCK));
    const end = Math.ceil((r.offset + r.length) / BLOCK);
    const status = r.state === 'hole' ? 1 : 0;
    const last = descs[descs.length - 1];
    if (last && last[2] === status && last[0] + last[1] === start) last[1] += end - start;
    else if (last && start < last[0] + last[1]) continue;
    else descs.push([start, end - start, status]);
  }
  if (descs.length === 0 || descs[0]![0] !== lba) throw fail(SENSE.INTERNAL_TARGET_FAILURE);
  const out = Buffer.alloc(8 + 16 * descs.length);
  out.writeUInt32BE(4 + 16 * descs.length, 0);
  descs.forEach(([s, n, st], i) => {
    const at = 8 + 16 * i;
    out.writeBigUInt64BE(BigInt(s), at);
    out.writeUInt32BE(Math.min(n, 0xffffffff), at + 8);
    out[at + 12] = st;
  });
  return respond(out, alloc);
}
