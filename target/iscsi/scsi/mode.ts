/**
 * MODE SENSE / MODE SELECT (6 and 10). Pages: read-write error recovery
 * (01h), caching (08h: WCE is the volume's cache policy), control (0Ah: SWP,
 * D_SENSE changeable), informational exceptions (1Ch).
 */
import type { ScsiResponse } from './contract.js';
import { BLOCK, capsOf, type Req } from './lu.js';
import { SENSE, badCdb, badParam, fail } from './sense.js';
import { GOOD, respond } from './spc.js';

const PAGE_ORDER = [0x01, 0x08, 0x0a, 0x1c];

/** Page bytes for page control `pc` (0 current, 1 changeable, 2 default). */
function page(req: Req, code: number, pc: number): Buffer {
  const { lu, io } = req;
  const wce = io.unit.volume.cachePolicy === 'write-back';
  switch (code) {
    case 0x01: {
      const b = Buffer.alloc(12);
      b[0] = 0x01;
      b[1] = 0x0a;
      return b;
    }
    case 0x08: {
      const b = Buffer.alloc(20);
      b[0] = 0x08;
      b[1] = 0x12;
      if (pc === 1) b[2] = 0x04;
      else if (pc === 0 ? wce : true) b[2] = 0x04;
      return b;
    }
    case 0x0a: {
      const b = Buffer.alloc(12);
      b[0] = 0x0a;
      b[1] = 0x0a;
      if (pc === 1) {
        b[2] = 0x04; // D_SENSE
        b[4] = 0x08; // SWP
        return b;
      }
      b[2] = 0x02 | (pc === 0 && lu.dsense ? 0x04 : 0); // GLTSD: no log parameters to save
      b[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
      if (pc === 0 && lu.swp) b[4] = 0x08;
      b.writeUInt16BE(0xffff, 8); // BUSY TIMEOUT PERIOD: unlimited
      return b;
    }
    case 0x1c: {
      const b = Buffer.alloc(12);
      b[0] = 0x1c;
      b[1] = 0x0a;
      return b;
    }
    default:
      throw new Error(`no mode page ${code}`);
  }
}

export function modeSense(req: Req): ScsiResponse {
  const { cdb, io, lu, blocks } = req;
  const ten = cdb[0] === 0x5a;
  const dbd = (cdb[1]! & 0x08) !== 0;
  const llbaa = ten && (cdb[1]! & 0x10) !== 0;
  const pc = cdb[2]! >> 6;
  const code = cdb[2]! & 0x3f;
  const sub = cdb[3]!;
  const alloc = ten ? cdb.readUInt16BE(7) : cdb[4]!;
  if (pc === 3) throw fail(SENSE.SAVING_NOT_SUPPORTED);
  let codes: number[];
  if (code === 0x3f) {
    if (sub !== 0 && sub !== 0xff) throw badCdb(3);
    codes = PAGE_ORDER;
  } else {
    if (!PAGE_ORDER.includes(code)) throw badCdb(2, 5);
    if (sub !== 0) throw badCdb(3);
    codes = [code];
  }
  const pages = codes.map((c) => page(req, c, pc));
  const wp = io.unit.readOnly || capsOf(io).readOnly || lu.swp;
  const devSpecific = (wp ? 0x80 : 0) | 0x10; // WP, DPOFUA
  let bd: Buffer;
  if (dbd) bd = Buffer.alloc(0);
  else if (llbaa) {
    bd = Buffer.alloc(16);
    bd.writeBigUInt64BE(BigInt(blocks), 0);
    bd.writeUInt32BE(BLOCK, 12);
  } else {
    bd = Buffer.alloc(8);
    bd.writeUInt32BE(blocks > 0xffffffff ? 0xffffffff : blocks, 0);
    bd.writeUIntBE(BLOCK, 5, 3);
  }
  const hdr = Buffer.alloc(ten ? 8 : 4);
  const total = hdr.length + bd.length + pages.reduce((n, p) => n + p.length, 0);
  if (ten) {
    hdr.writeUInt16BE(total - 2, 0);
    hdr[3] = devSpecific;
    if (llbaa && !dbd) hdr[4] = 0x01;
    hdr.writeUInt16BE(bd.length, 6);
  } else {
    hdr[0] = total - 1;
    hdr[2] = devSpecific;
    hdr[3] = bd.length;
  }
  return respond(Buffer.concat([hdr, bd, ...pages], total), alloc);
}

/**
 * MODE SELECT: only changeable bits may differ from the current values; a
 * changed WCE becomes the volume's cache policy (through the manager), and
 * every other nexus is told MODE PARAMETERS CHANGED.
 */
export async function modeSelect(req: Req): Promise<ScsiResponse> {
  const { cdb, cmd, lu, io, nexus, ctx } = req;
  const ten = cdb[0] === 0x55;
  const pf = (cdb[1]! & 0x10) !== 0;
  const sp = (cdb[1]! & 0x01) !== 0;
  const len = ten ? cdb.readUInt16BE(7) : cdb[4]!;
  if (sp) throw badCdb(1, 0);
  if (len === 0) return GOOD;
  if (!pf) throw badCdb(1, 4);
  const p = cmd.data;
  const hdrLen = ten ? 8 : 4;
  if (!p || p.length < len || len < hdrLen) throw fail(SENSE.PARAM_LIST_LENGTH_ERROR);
  const bdLen = ten ? p.readUInt16BE(6) : p[3]!;
  let at = hdrLen + bdLen;
  if (at > len) throw fail(SENSE.PARAM_LIST_LENGTH_ERROR);
  if (bdLen > 0) {
    // One block descriptor, and its block length must be ours.
    const bl = bdLen === 16 ? p.readUInt32BE(hdrLen + 12) : bdLen === 8 ? p.readUIntBE(hdrLen + 5, 3) : -1;
    if (bl !== BLOCK) throw badParam(hdrLen);
  }
  let wce: boolean | null = null;
  let swp = lu.swp;
  let dsense = lu.dsense;
  while (at < len) {
    if (at + 2 > len) throw fail(SENSE.PARAM_LIST_LENGTH_ERROR);
    const code = p[at]! & 0x3f;
    if (p[at]! & 0xc0) throw badParam(at); // PS is reserved in MODE SELECT; no subpages here
    const plen = p[at + 1]! + 2;
    if (!PAGE_ORDER.includes(code)) throw badParam(at);
    if (at + plen > len) throw fail(SENSE.PARAM_LIST_LENGTH_ERROR);
    const cur = page(req, code, 0);
    const chg = page(req, code, 1);
    if (plen !== cur.length) throw badParam(at + 1);
    for (let i = 2; i < plen; i++) {
      if ((p[at + i]! ^ cur[i]!) & ~chg[i]! & 0xff) throw badParam(at + i);
    }
    if (code === 0x08) wce = (p[at + 2]! & 0x04) !== 0;
    if (code === 0x0a) {
      dsense = (p[at + 2]! & 0x04) !== 0;
      swp = (p[at + 4]! & 0x08) !== 0;
    }
    at += plen;
  }
  let changed = swp !== lu.swp || dsense !== lu.dsense;
  lu.swp = swp;
  lu.dsense = dsense;
  if (wce !== null) {
    const policy = io.unit.volume.cachePolicy;
    const want = wce ? 'write-back' : policy === 'none' ? 'none' : 'write-through';
    if (want !== policy) {
      // Turning the write cache off: what it holds reaches the arrays first.
      if (!wce) await io.flush();
      await ctx.setCachePolicy(io.unit.volume.id, want);
      changed = true;
    }
  }
  if (changed) lu.raise(SENSE.UA_MODE_PARAMETERS_CHANGED, nexus.id);
  return GOOD;
}
