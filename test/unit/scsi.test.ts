/**
 * The SCSI command set driven with CDBs against real units: a real manager
 * (SQLite, array files, block store) publishes the volumes, target/core opens
 * them as UnitIOs, and every answer is checked for data, status and exact
 * sense.
 */
import fs from 'node:fs';
import t from 'tap';
import { openUnit, type UnitIO } from '../../target/core/index.js';
import { ScsiCommandSet, type Nexus, type ScsiContext, type ScsiResponse } from '../../target/iscsi/scsi/index.js';
import type { Unit } from '../../target/index.js';
import { startManager } from '../helpers/manager.js';
import { prng } from '../helpers/prng.js';

const M = 1024 * 1024;
const B = 512;
const SIZE = 8 * M;
const BLOCKS = SIZE / B;

const nexusOf = (isid: string, host = 'h', initiator = 'iqn.2024-01.test:init'): Nexus => ({
  id: `${initiator},i,0x${isid},iqn.2024-01.test:tgt,1`,
  initiatorName: initiator,
  isid,
  targetName: 'iqn.2024-01.test:tgt',
  tpgt: 1,
  host,
});

// eslint-disable-next-line @typescript-eslint/no-explicit-any
async function rig(t: { teardown: (fn: () => unknown) => void; same: (...a: any[]) => unknown }) {
  const { m, namespaces, store } = await startManager(t);
  m.createFarm('f');
  await m.createArray('a0', 64 * M);
  await m.createHost({ name: 'h', farm: 'f' });
  m.createVolume({ name: 'v', size: SIZE, farm: 'f', configure: true, shareMode: 'shared' });
  m.createVolume({ name: 'r', size: SIZE, farm: 'f', configure: true });
  m.bind({ volume: 'v', host: 'h', target: 0, lun: 0, map: true });
  m.bind({ volume: 'r', host: 'h', target: 0, lun: 1, mode: 'read-only', map: true });
  const ios = new WeakMap<Unit, UnitIO>();
  const ctx: ScsiContext = {
    luns(nexus) {
      const out = new Map<number, UnitIO>();
      for (const u of namespaces.list(nexus.host)) {
        if (u.target !== 0) continue;
        let io = ios.get(u);
        if (!io) ios.set(u, (io = openUnit(store, u, 'iscsi')));
        out.set(u.lun, io);
      }
      return out;
    },
    reservations: m.iscsi.reservations,
    setCachePolicy: (id, p) => m.iscsi.setCachePolicy(id, p),
  };
  const dev = new ScsiCommandSet(ctx);
  const A = nexusOf('400000000001');
  const Bn = nexusOf('400000000002');
  const run = (nx: Nexus, cdb: number[], opts: { lun?: number; data?: Buffer; expected?: number } = {}): Promise<ScsiResponse> => {
    const c = Buffer.alloc(16);
    Buffer.from(cdb).copy(c);
    const data = opts.data ?? null;
    return Promise.resolve(dev.execute({
      nexus: nx,
      lun: opts.lun ?? 0,
      cdb: c,
      expectedLength: opts.expected ?? (data ? data.length : 0x10000),
      read: !data,
      write: !!data,
      data,
      taskTag: 1,
      attr: 'simple',
    }));
  };
  /** Logs a nexus in and takes its power-on unit attention. */
  const login = async (nx: Nexus): Promise<void> => {
    dev.nexusAdded(nx);
    for (const lun of [0, 1]) {
      const r = await run(nx, [0x00], { lun });
      t.same(senseOf(r), [6, 0x29, 0x00], 'first command of a new nexus: POWER ON, RESET');
    }
  };
  return { m, namespaces, store, dev, ctx, A, B: Bn, run, login };
}

/** [key, asc, ascq] of a CHECK CONDITION (fixed or descriptor format). */
function senseOf(r: ScsiResponse): [number, number, number] | null {
  if (r.status !== 2 || !r.sense) return null;
  const s = r.sense;
  if ((s[0]! & 0x7f) === 0x72) return [s[1]! & 0x0f, s[2]!, s[3]!];
  return [s[2]! & 0x0f, s[12]!, s[13]!];
}

const be32 = (n: number): number[] => [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
const be16 = (n: number): number[] => [(n >> 8) & 0xff, n & 0xff];
const be64 = (n: bigint): number[] => [...be32(Number(n >> 32n)), ...be32(Number(n & 0xffffffffn))];
const read10 = (lba: number, n: number, b1 = 0): number[] => [0x28, b1, ...be32(lba), 0, ...be16(n), 0];
const write10 = (lba: number, n: number, b1 = 0): number[] => [0x2a, b1, ...be32(lba), 0, ...be16(n), 0];
const read16 = (lba: bigint, n: number, b1 = 0): number[] => [0x88, b1, ...be64(lba), ...be32(n), 0, 0];
const write16 = (lba: bigint, n: number, b1 = 0): number[] => [0x8a, b1, ...be64(lba), ...be32(n), 0, 0];
const pattern = (blocks: number, seed: number): Buffer => {
  const b = Buffer.alloc(blocks * B);
  for (let i = 0; i < b.length; i++) b[i] = (i * 7 + seed) & 0xff;
  return b;
};

t.test('unit attentions: power on per nexus per LU, not on INQUIRY; REQUEST SENSE takes them', async (t) => {
  const { dev, A, run } = await rig(t);
  dev.nexusAdded(A);
  const inq = await run(A, [0x12, 0, 0, 0, 96, 0]);
  t.equal(inq.status, 0, 'INQUIRY passes a pending unit attention');
  const rs = await run(A, [0x03, 0, 0, 0, 18, 0]);
  t.equal(rs.status, 0);
  t.same([rs.data![2]! & 0x0f, rs.data![12], rs.data![13]], [6, 0x29, 0], 'REQUEST SENSE reports the unit attention');
  t.equal((await run(A, [0x00])).status, 0, 'and clears it');
  const rs2 = await run(A, [0x03, 0, 0, 0, 18, 0]);
  t.same([rs2.data![2], rs2.data![12]], [0, 0], 'then NO SENSE');
  const other = await run(A, [0x00], { lun: 1 });
  t.same(senseOf(other), [6, 0x29, 0], 'the other LU has its own');
});

t.test('INQUIRY: standard data, VPD pages, bad fields', async (t) => {
  const { m, A, run, login } = await rig(t);
  await login(A);
  const std = (await run(A, [0x12, 0, 0, 0, 255, 0])).data!;
  t.equal(std[0], 0x00, 'direct access block device');
  t.equal(std.subarray(16, 32).toString('ascii'), 'blockgate volume');
  t.equal(std.readUInt16BE(64), 0x04c0, 'claims SBC-3');
  t.equal((await run(A, [0x12, 0, 0, 0, 8, 0])).data!.length, 8, 'allocation length truncates');
  const pages = (await run(A, [0x12, 1, 0x00, 0, 255, 0])).data!;
  t.same([...pages.subarray(4)], [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2], 'supported pages, ascending');
  const v = m.volume('v');
  const sn = (await run(A, [0x12, 1, 0x80, 0, 255, 0])).data!;
  t.equal(sn.subarray(4).toString('ascii'), v.serial, 'unit serial number is the volume serial');
  const id = (await run(A, [0x12, 1, 0x83, 0, 255, 0])).data!;
  t.equal(id[5]! & 0x0f, 3, 'first designator is NAA');
  t.equal(id.subarray(8, 16).toString('hex'), v.naa, 'the volume NAA');
  t.ok(id.includes(Buffer.from('iqn.2024-01.test:tgt,t,0x0001')), 'target port name');
  const bl = (await run(A, [0x12, 1, 0xb0, 0, 255, 0])).data!;
  t.equal(bl.readUInt16BE(2), 0x3c);
  t.equal(bl.readUInt32BE(8), (32 * M) / B, 'maximum transfer length');
  t.ok(bl.readUInt32BE(20) > 0, 'maximum unmap LBA count (thin)');
  const lbp = (await run(A, [0x12, 1, 0xb2, 0, 255, 0])).data!;
  t.equal(lbp[5]! & 0xe0, 0xe0, 'LBPU, LBPWS, LBPWS10');
  t.equal(lbp[6]! & 7, 2, 'thin provisioned');
  t.same(senseOf(await run(A, [0x12, 0, 0x80, 0, 255, 0])), [5, 0x24, 0], 'page code without EVPD');
  t.same(senseOf(await run(A, [0x12, 1, 0x99, 0, 255, 0])), [5, 0x24, 0], 'unknown VPD page');
});

t.test('READ CAPACITY 10/16, unknown opcode and service action, missing LUN, REPORT LUNS', async (t) => {
  const { A, run, login } = await rig(t);
  await login(A);
  const rc10 = (await run(A, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])).data!;
  t.same([rc10.readUInt32BE(0), rc10.readUInt32BE(4)], [BLOCKS - 1, B]);
  const rc16 = (await run(A, [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, ...be32(32), 0, 0])).data!;
  t.equal(Number(rc16.readBigUInt64BE(0)), BLOCKS - 1);
  t.equal(rc16[14]! & 0xc0, 0xc0, 'LBPME and LBPRZ from the unit caps');
  t.same(senseOf(await run(A, [0xc7])), [5, 0x20, 0], 'unknown opcode: INVALID COMMAND OPERATION CODE');
  const sa = await run(A, [0x9e, 0x1f]);
  t.same(senseOf(sa), [5, 0x24, 0], 'unknown service action: INVALID FIELD IN CDB');
  t.equal(sa.sense!.readUInt16BE(16), 1, 'field pointer at byte 1');
  const none = await run(A, [0x12, 0, 0, 0, 96, 0], { lun: 7 });
  t.equal(none.data![0], 0x7f, 'INQUIRY of a missing LUN: no unit here');
  t.same(senseOf(await run(A, [0x00], { lun: 7 })), [5, 0x25, 0], 'TUR of a missing LUN');
  const rl = (await run(A, [0xa0, 0, 0, 0, 0, 0, ...be32(256), 0, 0], { lun: 7 })).data!;
  t.equal(rl.readUInt32BE(0), 16, 'two LUNs');
  t.same([rl[9], rl[17]], [0, 1]);
  t.same(senseOf(await run(A, [0xa0, 0, 0, 0, 0, 0, ...be32(8), 0, 0])), [5, 0x24, 0], 'allocation length under 16');
});

t.test('READ/WRITE 6/10/12/16: data lands, ranges, protect bits, read-only binding', async (t) => {
  const { A, run, login } = await rig(t);
  await login(A);
  const d = pattern(8, 1);
  t.equal((await run(A, write10(100, 8, 0x08), { data: d })).status, 0, 'WRITE10 FUA');
  t.same((await run(A, read10(100, 8))).data, d, 'READ10 reads it back');
  const r16 = await run(A, read16(104n, 4, 0x18));
  t.same(r16.data, d.subarray(4 * B), 'READ16 with DPO+FUA');
  t.same((await run(A, [0xa8, 0, ...be32(100), ...be32(2), 0, 0])).data, d.subarray(0, 2 * B), 'READ12');
  const w6 = pattern(1, 9);
  t.equal((await run(A, [0x0a, 0, 0, 5, 1, 0], { data: w6 })).status, 0, 'WRITE6');
  t.same((await run(A, [0x08, 0, 0, 5, 1, 0])).data, w6, 'READ6');
  t.same(senseOf(await run(A, read10(BLOCKS - 1, 2))), [5, 0x21, 0], 'read past the end');
  t.same(senseOf(await run(A, read16(0xffffffffffffffffn, 1))), [5, 0x21, 0], 'LBA 2^64-1');
  t.same(senseOf(await run(A, write16(BigInt(BLOCKS), 1), { data: pattern(1, 0) })), [5, 0x21, 0], 'write past the end');
  t.equal((await run(A, read10(BLOCKS - 1, 0))).status, 0, 'zero blocks inside: GOOD');
  t.same(senseOf(await run(A, read10(BLOCKS, 0))), [5, 0x21, 0], 'zero blocks beyond the end');
  const prot = await run(A, read10(0, 1, 0x20));
  t.same(senseOf(prot), [5, 0x24, 0], 'RDPROTECT');
  t.equal(prot.sense![15]! & 0xc8, 0xc8, 'SKSV, C/D and BPV');
  t.equal(prot.sense!.readUInt16BE(16), 1, 'points at byte 1');
  t.same(senseOf(await run(A, write10(0, 1), { lun: 1, data: pattern(1, 0) })), [7, 0x27, 0], 'read-only binding: WRITE PROTECTED');
  const ms = (await run(A, [0x1a, 0x08, 0x3f, 0, 255, 0], { lun: 1 })).data!;
  t.equal(ms[2]! & 0x80, 0x80, 'MODE SENSE shows WP on the read-only binding');
  t.equal((await run(A, read10(0, 1), { lun: 1 })).status, 0, 'and still reads');
});

t.test('write residuals: a short Data-Out is written as far as it goes in whole blocks, a partial block refused; a longer one cut to the CDB', async (t) => {
  const { A, run, login } = await rig(t);
  await login(A);
  const before = (await run(A, read10(10, 2))).data!;
  const odd = await run(A, write10(10, 2), { data: pattern(1, 5).subarray(0, 200), expected: 200 });
  t.same(senseOf(odd), [5, 0x0e, 0x03], 'mid-block EDTL: INVALID FIELD IN COMMAND INFORMATION UNIT');
  t.equal(odd.transferLength, 2 * B, 'the transfer length the CDB asked for, for the residual');
  t.same((await run(A, read10(10, 2))).data, before, 'nothing written');
  const short = pattern(1, 5);
  const r = await run(A, write10(10, 2), { data: short, expected: B });
  t.equal(r.status, 0, 'one block of two: GOOD');
  t.equal(r.transferLength, 2 * B, 'overflow residual against two blocks');
  t.same((await run(A, read10(10, 2))).data, Buffer.concat([short, before.subarray(B)]), 'only the block sent is written');
  const long = pattern(2, 6);
  const w = await run(A, write10(11, 1), { data: long, expected: 2 * B });
  t.equal(w.status, 0);
  t.equal(w.transferLength, B);
  t.same((await run(A, read10(10, 2))).data, Buffer.concat([short, long.subarray(0, B)]), 'one block written');
});

t.test('VERIFY, WRITE AND VERIFY, COMPARE AND WRITE: miscompare sense carries the offset', async (t) => {
  const { A, run, login } = await rig(t);
  await login(A);
  const d = pattern(4, 3);
  t.equal((await run(A, [0x2e, 0x02, ...be32(20), 0, ...be16(4), 0], { data: d })).status, 0, 'WRITE AND VERIFY10');
  t.equal((await run(A, [0x2f, 0x02, ...be32(20), 0, ...be16(4), 0], { data: d })).status, 0, 'VERIFY10 BYTCHK=1 matches');
  const bad = Buffer.from(d);
  bad[B + 17] ^= 0xff;
  const v = await run(A, [0x2f, 0x02, ...be32(20), 0, ...be16(4), 0], { data: bad });
  t.same(senseOf(v), [0xe, 0x1d, 0], 'MISCOMPARE');
  t.equal(v.sense![0]! & 0x80, 0x80, 'INFORMATION valid');
  t.equal(v.sense!.readUInt32BE(3), B + 17, 'at the first differing byte');
  t.equal((await run(A, [0x2f, 0x00, ...be32(20), 0, ...be16(4), 0])).status, 0, 'BYTCHK=0: medium verify');
  t.same(senseOf(await run(A, [0x2f, 0x04, ...be32(20), 0, ...be16(4), 0])), [5, 0x24, 0], 'BYTCHK=2 is reserved');
  // COMPARE AND WRITE over two blocks.
  const next = pattern(2, 77);
  const caw = (lba: number, cmp: Buffer, w: Buffer) => run(A, [0x89, 0, ...be64(BigInt(lba)), 0, 0, 0, 2, 0, 0], { data: Buffer.concat([cmp, w]) });
  t.equal((await caw(20, d.subarray(0, 2 * B), next)).status, 0, 'compare matched, write landed');
  t.same((await run(A, read10(20, 2))).data, next);
  const miss = await caw(20, d.subarray(0, 2 * B), pattern(2, 1));
  t.same(senseOf(miss), [0xe, 0x1d, 0], 'MISCOMPARE');
  t.equal(miss.sense!.readUInt32BE(3), 0, 'offset 0');
  t.same((await run(A, read10(20, 2))).data, next, 'no write on miscompare');
  const half = await run(A, [0x89, 0, ...be64(20n), 0, 0, 0, 2, 0, 0], { data: next });
  t.same(senseOf(half), [5, 0x0e, 0x03], 'Data-Out must be both halves');
});

t.test('WRITE SAME, UNMAP, GET LBA STATUS over the allocation map', async (t) => {
  const { A, run, login } = await rig(t);
  await login(A);
  const lbaStatus = async (lba: number) => {
    const r = await run(A, [0x9e, 0x12, ...be64(BigInt(lba)), ...be32(1024), 0, 0]);
    t.equal(r.status, 0);
    const d = r.data!;
    const out: [number, number, number][] = [];
    for (let at = 8; at < 8 + d.readUInt32BE(0) - 4 && at + 16 <= d.length; at += 16) out.push([Number(d.readBigUInt64BE(at)), d.readUInt32BE(at + 8), d[at + 12]!]);
    return out;
  };
  const blk = pattern(1, 42);
  t.equal((await run(A, [0x93, 0, ...be64(64n), ...be32(64), 0, 0], { data: blk })).status, 0, 'WRITE SAME16 pattern');
  const got = (await run(A, read10(64, 64))).data!;
  for (let i = 0; i < 64; i++) if (!got.subarray(i * B, (i + 1) * B).equals(blk)) t.fail(`block ${i}`);
  t.same((await lbaStatus(64))[0], [64, 64, 0], 'mapped');
  t.equal((await run(A, [0x93, 0x08, ...be64(64n), ...be32(32), 0, 0], { data: Buffer.alloc(B) })).status, 0, 'WRITE SAME16 UNMAP zeroes');
  t.same((await lbaStatus(64))[0], [64, 32, 1], 'deallocated');
  t.same((await run(A, read10(64, 32))).data, Buffer.alloc(32 * B), 'reads zeroes');
  const param = Buffer.alloc(24);
  param.writeUInt16BE(22, 0);
  param.writeUInt16BE(16, 2);
  param.writeBigUInt64BE(96n, 8);
  param.writeUInt32BE(16, 16);
  t.equal((await run(A, [0x42, 0, 0, 0, 0, 0, 0, ...be16(24), 0], { data: param })).status, 0, 'UNMAP');
  const st = await lbaStatus(64);
  t.same(st[0], [64, 48, 1], 'the unmapped run joins');
  t.same(st[1], [112, 16, 0], 'the rest still mapped');
  t.same(senseOf(await run(A, [0x9e, 0x12, ...be64(BigInt(BLOCKS)), ...be32(1024), 0, 0])), [5, 0x21, 0], 'GET LBA STATUS beyond the end');
  param.writeBigUInt64BE(BigInt(BLOCKS - 8), 8);
  t.same(senseOf(await run(A, [0x42, 0, 0, 0, 0, 0, 0, ...be16(24), 0], { data: param })), [5, 0x21, 0], 'UNMAP past the end');
  t.same(senseOf(await run(A, [0x42, 0, 0, 0, 0, 0, 0, ...be16(4), 0], { data: param.subarray(0, 4) })), [5, 0x1a, 0], 'UNMAP parameter list too short');
  t.equal((await run(A, [0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0])).status, 0, 'UNMAP of nothing');
  t.equal((await run(A, [0x93, 0x08, ...be64(112n), ...be32(16), 0, 0], { data: blk })).status, 0, 'WRITE SAME16 UNMAP with a pattern block');
  t.same((await run(A, read10(112, 16))).data, Buffer.alloc(16 * B), 'deallocated anyway: reads zeroes');
  t.same(senseOf(await run(A, [0x93, 0x10, ...be64(64n), ...be32(1), 0, 0], { data: blk })), [5, 0x24, 0], 'ANCHOR unsupported');
  t.same(senseOf(await run(A, [0x93, 0, ...be64(64n), ...be32(1), 0, 0], { data: Buffer.alloc(10) })), [5, 0x0e, 0x03], 'WRITE SAME needs one block of Data-Out');
});

t.test('SYNCHRONIZE CACHE puts acknowledged writes in the array file', async (t) => {
  const { m, A, run, login } = await rig(t);
  await login(A);
  const d = pattern(8, 11);
  await run(A, write10(2048, 8), { data: d });
  t.equal((await run(A, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0])).status, 0);
  const v = m.volume('v');
  const ext = m.extentsOf(v.id)[0]!;
  const file = m.listArrays()[0]!.path;
  const fd = await fs.promises.open(file, 'r');
  const onDisk = Buffer.alloc(8 * B);
  await fd.read(onDisk, 0, onDisk.length, ext.offset + 2048 * B);
  await fd.close();
  t.same(onDisk, d, 'bytes in the array file');
  t.same(senseOf(await run(A, [0x35, 0, ...be32(BLOCKS), 0, 0, 1, 0])), [5, 0x21, 0], 'range checked');
});

t.test('MODE SENSE/SELECT: caching page is the volume cache policy; SWP and D_SENSE change behaviour; other nexus told', async (t) => {
  const { m, A, B: Bx, run, login } = await rig(t);
  await login(A);
  await login(Bx);
  const all = (await run(A, [0x1a, 0, 0x3f, 0, 255, 0])).data!;
  t.equal(all[0], all.length - 1, 'mode data length');
  t.equal(all[3], 8, 'block descriptor');
  t.equal(all[2]! & 0x10, 0x10, 'DPOFUA');
  const cache = (await run(A, [0x1a, 0x08, 0x08, 0, 255, 0])).data!;
  t.equal(cache[4], 0x08);
  t.equal(cache[6]! & 0x04, 0x04, 'WCE: write-back');
  // WCE off.
  const sel = Buffer.concat([Buffer.alloc(4), cache.subarray(4)]);
  sel[6]! &= ~0x04;
  t.equal((await run(A, [0x15, 0x10, 0, 0, sel.length, 0], { data: sel })).status, 0, 'MODE SELECT WCE=0');
  t.equal(m.volume('v').cache_policy, 'write-through', 'saved as the volume cache policy');
  t.equal((await run(A, [0x1a, 0x08, 0x08, 0, 255, 0])).data![6]! & 0x04, 0, 'and shown');
  t.same(senseOf(await run(Bx, [0x00])), [6, 0x2a, 0x01], 'the other nexus: MODE PARAMETERS CHANGED');
  t.equal((await run(A, [0x00])).status, 0, 'not the one that changed it');
  // A bit that is not changeable.
  const bad = Buffer.from(sel);
  bad[6]! |= 0x01; // RCD
  t.same(senseOf(await run(A, [0x15, 0x10, 0, 0, bad.length, 0], { data: bad })), [5, 0x26, 0], 'INVALID FIELD IN PARAMETER LIST');
  // SWP.
  const ctl = (await run(A, [0x1a, 0x08, 0x0a, 0, 255, 0])).data!;
  const swp = Buffer.concat([Buffer.alloc(4), ctl.subarray(4)]);
  swp[8]! |= 0x08;
  t.equal((await run(A, [0x15, 0x10, 0, 0, swp.length, 0], { data: swp })).status, 0, 'SWP on');
  t.same(senseOf(await run(A, write10(0, 1), { data: pattern(1, 0) })), [7, 0x27, 0x02], 'writes refused');
  swp[8]! &= ~0x08;
  swp[6]! |= 0x04; // D_SENSE
  t.equal((await run(A, [0x15, 0x10, 0, 0, swp.length, 0], { data: swp })).status, 0, 'SWP off, D_SENSE on');
  const ds = await run(A, read10(BLOCKS, 1));
  t.equal(ds.sense![0], 0x72, 'descriptor format sense');
  t.same(senseOf(ds), [5, 0x21, 0]);
  t.same(senseOf(await run(A, [0x1a, 0, 0xca, 0, 255, 0])), [5, 0x39, 0], 'saved values not supported');
});

t.test('persistent reservations: register, reserve, conflicts, read keys/reservation/full status, preempt, APTPL across restarts', async (t) => {
  const { m, A, B: Bx, run, login, ctx } = await rig(t);
  await login(A);
  await login(Bx);
  const prout = (nx: typeof A, sa: number, type: number, key: bigint, saKey: bigint, aptpl = false) => {
    const p = Buffer.alloc(24);
    p.writeBigUInt64BE(key, 0);
    p.writeBigUInt64BE(saKey, 8);
    p[20] = aptpl ? 1 : 0;
    return run(nx, [0x5f, sa, type, 0, 0, ...be32(24), 0], { data: p });
  };
  const prin = (nx: typeof A, sa: number) => run(nx, [0x5e, sa, 0, 0, 0, 0, 0, ...be16(4096), 0]);
  t.equal((await prout(A, 0, 0, 0n, 0xaan)).status, 0, 'A registers');
  t.equal((await prout(Bx, 6, 0, 0n, 0xbbn)).status, 0, 'B registers and ignores');
  t.equal((await prout(Bx, 0, 0, 0x1n, 0xccn)).status, 0x18, 'REGISTER with a wrong key conflicts');
  const keys = (await prin(A, 0)).data!;
  t.equal(keys.readUInt32BE(4), 16, 'two keys');
  t.same([keys.readBigUInt64BE(8), keys.readBigUInt64BE(16)], [0xaan, 0xbbn]);
  t.equal((await prout(A, 1, 1, 0xaan, 0n)).status, 0, 'A reserves WRITE EXCLUSIVE');
  const res = (await prin(Bx, 1)).data!;
  t.same([res.readUInt32BE(4), res.readBigUInt64BE(8), res[21]! & 0x0f], [16, 0xaan, 1], 'READ RESERVATION');
  t.equal((await run(Bx, write10(0, 1), { data: pattern(1, 0) })).status, 0x18, 'B may not write');
  t.equal((await run(Bx, read10(0, 1))).status, 0, 'B may read');
  t.equal((await run(A, write10(0, 1), { data: pattern(1, 0) })).status, 0, 'A writes');
  const full = (await prin(A, 3)).data!;
  t.equal(full.readUInt32BE(4), full.length - 8);
  t.equal(full[8 + 12]! & 1, 1, 'A is the holder in READ FULL STATUS');
  t.ok(full.includes(Buffer.from('iqn.2024-01.test:init,i,0x400000000001')), 'iSCSI TransportID');
  t.same(senseOf(await prin(A, 4)), [5, 0x24, 0], 'service action 4 is invalid');
  const caps = (await prin(A, 2)).data!;
  t.equal(caps.readUInt16BE(0), 8, 'REPORT CAPABILITIES');
  t.equal((await prout(Bx, 1, 3, 0xbbn, 0n)).status, 0x18, 'B cannot reserve over A');
  // B preempts A.
  const gen = keys.readUInt32BE(0);
  t.equal((await prout(Bx, 4, 3, 0xbbn, 0xaan)).status, 0, 'B preempts A as EXCLUSIVE ACCESS');
  t.same(senseOf(await run(A, [0x00])), [6, 0x2a, 0x05], 'A: REGISTRATIONS PREEMPTED');
  t.equal((await run(A, read10(0, 1))).status, 0x18, 'A may not even read now');
  const keys2 = (await prin(Bx, 0)).data!;
  t.same([keys2.readUInt32BE(0), keys2.readUInt32BE(4), keys2.readBigUInt64BE(8)], [gen + 1, 8, 0xbbn]);
  t.same(senseOf(await run(Bx, [0x5f, 0, 0, 0, 0, ...be32(20), 0], { data: Buffer.alloc(20) })), [5, 0x1a, 0], 'parameter list length error');
  // APTPL: a new command set over the same store (a restart) keeps the registration.
  t.equal((await prout(Bx, 0, 0, 0xbbn, 0xbbn, true)).status, 0, 'B sets APTPL');
  const dev2 = new ScsiCommandSet(ctx);
  const c = Buffer.alloc(16);
  Buffer.from([0x5e, 1, 0, 0, 0, 0, 0, ...be16(4096), 0]).copy(c);
  const again = await dev2.execute({ nexus: Bx, lun: 0, cdb: c, expectedLength: 4096, read: true, write: false, data: null, taskTag: 2, attr: 'simple' });
  t.same(senseOf(again), [6, 0x29, 0], 'restart: power on first');
  const again2 = await dev2.execute({ nexus: Bx, lun: 0, cdb: c, expectedLength: 4096, read: true, write: false, data: null, taskTag: 3, attr: 'simple' });
  t.same([again2.data!.readBigUInt64BE(8), again2.data![21]! & 0x0f], [0xbbn, 3], 'the reservation survived');
  const row = m.db.prepare('SELECT state FROM scsi_reservations WHERE volume_id = ?').get(m.volume('v').id) as { state: string };
  t.ok(row.state.includes('"aptpl":true'), 'kept in SQLite');
  t.equal((await prout(Bx, 3, 0, 0xbbn, 0n)).status, 0, 'CLEAR');
  t.equal((await prin(Bx, 0)).data!.readUInt32BE(4), 0, 'no keys');
});

t.test('RESERVE/RELEASE(6): other nexus conflicts except INQUIRY; released on nexus loss and LU reset', async (t) => {
  const { dev, A, B: Bx, run, login } = await rig(t);
  await login(A);
  await login(Bx);
  t.equal((await run(A, [0x16, 0, 0, 0, 0, 0])).status, 0, 'A reserves');
  t.equal((await run(A, [0x16, 0, 0, 0, 0, 0])).status, 0, 'again');
  t.equal((await run(Bx, [0x16, 0, 0, 0, 0, 0])).status, 0x18, 'B conflicts');
  t.equal((await run(Bx, [0x1a, 0, 0x3f, 0, 255, 0])).status, 0x18, 'B MODE SENSE conflicts');
  t.equal((await run(Bx, [0x12, 0, 0, 0, 36, 0])).status, 0, 'B INQUIRY passes');
  t.equal((await run(Bx, [0x17, 0, 0, 0, 0, 0])).status, 0, 'B RELEASE is a no-op');
  t.equal((await run(A, read10(0, 1))).status, 0, 'A still reads');
  dev.nexusRemoved(A);
  t.equal((await run(Bx, [0x16, 0, 0, 0, 0, 0])).status, 0, 'after A logs out, B reserves');
  dev.lunReset(Bx, 0);
  await login(A);
  t.equal((await run(A, [0x16, 0, 0, 0, 0, 0])).status, 0, 'LU reset released B');
});

t.test('namespace changes: capacity changed, reported LUNs changed (cleared by REPORT LUNS)', async (t) => {
  const { m, dev, A, run, login } = await rig(t);
  await login(A);
  m.resize('v', 2 * SIZE);
  dev.namespaceChanged('h', 'resized', [m.volume('v').id]);
  t.same(senseOf(await run(A, [0x00])), [6, 0x2a, 0x09], 'CAPACITY DATA HAS CHANGED');
  const rc = (await run(A, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])).data!;
  t.equal(rc.readUInt32BE(0), 2 * BLOCKS - 1, 'new capacity');
  dev.namespaceChanged('h', 'mapped', []);
  t.equal((await run(A, [0xa0, 0, 0, 0, 0, 0, ...be32(256), 0, 0])).status, 0, 'REPORT LUNS');
  t.equal((await run(A, [0x00])).status, 0, 'REPORT LUNS cleared it');
  dev.namespaceChanged('h', 'unmapped', []);
  t.same(senseOf(await run(A, [0x00], { lun: 1 })), [6, 0x3f, 0x0e], 'REPORTED LUNS DATA HAS CHANGED');
});

t.test('REPORT SUPPORTED OPERATION CODES: all, one, service actions, timeouts', async (t) => {
  const { A, run, login } = await rig(t);
  await login(A);
  const all = (await run(A, [0xa3, 0x0c, 0x80, 0, 0, 0, ...be32(8192), 0, 0])).data!;
  const n = all.readUInt32BE(0) / 20;
  t.ok(n > 30, `${n} commands with timeouts descriptors`);
  let sawRead10 = false;
  for (let i = 0; i < n; i++) if (all[4 + 20 * i] === 0x28) sawRead10 = (all[4 + 20 * i + 5]! & 0x02) !== 0;
  t.ok(sawRead10, 'READ10 with CTDP');
  const one = (await run(A, [0xa3, 0x0c, 0x01, 0x28, 0, 0, ...be32(64), 0, 0])).data!;
  t.equal(one[1]! & 7, 3, 'READ10 supported');
  t.equal(one[5]! & 0x18, 0x18, 'usage shows DPO and FUA');
  t.equal((await run(A, [0xa3, 0x0c, 0x01, 0xc7, 0, 0, ...be32(64), 0, 0])).data![1]! & 7, 1, 'unknown opcode: not supported');
  t.same(senseOf(await run(A, [0xa3, 0x0c, 0x01, 0x9e, 0, 0, ...be32(64), 0, 0])), [5, 0x24, 0], 'opcode with service actions asked without one');
  const sa = (await run(A, [0xa3, 0x0c, 0x82, 0x9e, 0, 0x10, ...be32(64), 0, 0])).data!;
  t.same([sa[1]! & 0x87, sa.readUInt16BE(2)], [0x83, 16], 'READ CAPACITY16 by service action, with timeouts');
});

t.test('hostile CDBs: random opcodes, fields and Data-Out never throw, hang or touch another unit', async (t) => {
  const { A, run, login, m } = await rig(t);
  await login(A);
  const rnd = prng(0x5c51);
  const byte = (): number => Math.floor(rnd() * 256);
  // Opcodes we implement (their parsers see hostile fields), plus a few we do not.
  const ops = [0x00, 0x03, 0x08, 0x0a, 0x12, 0x15, 0x16, 0x17, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x2a, 0x2e, 0x2f, 0x34, 0x35, 0x41, 0x42, 0x55, 0x56, 0x57, 0x5a, 0x5e, 0x5f, 0x88, 0x89, 0x8a, 0x8e, 0x8f, 0x90, 0x91, 0x93, 0x9e, 0xa0, 0xa3, 0xa8, 0xaa, 0xae, 0xaf, 0x83, 0xff];
  const other = (await run(A, read10(0, 64), { lun: 1 })).data!;
  const statuses = new Map<number, number>();
  for (let i = 0; i < 1500; i++) {
    const cdb = Array.from({ length: 16 }, byte);
    cdb[0] = ops[Math.floor(rnd() * ops.length)]!;
    // Keep lengths mostly small so the run stays quick; some stay huge.
    if (rnd() < 0.9) for (const at of [4, 7, 8, 9, 10, 11, 12]) cdb[at] = cdb[at]! & 0x03;
    const withData = rnd() < 0.5;
    const data = withData ? Buffer.from(Array.from({ length: Math.floor(rnd() * 3) * 512 + (rnd() < 0.2 ? byte() : 0) }, byte)) : undefined;
    const r = await run(A, cdb, { data, expected: data ? data.length : Math.floor(rnd() * 65536) });
    statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
    if (![0, 2, 0x18].includes(r.status)) t.fail(`status ${r.status} for ${Buffer.from(cdb).toString('hex')}`);
    if (r.status === 2 && (!r.sense || r.sense.length < 8)) t.fail(`no sense for ${Buffer.from(cdb).toString('hex')}`);
    if (r.status === 2 && senseOf(r)![0] === 4) t.fail(`internal failure for ${Buffer.from(cdb).toString('hex')}`);
  }
  t.ok((statuses.get(0) ?? 0) > 0 && (statuses.get(2) ?? 0) > 0, `statuses ${JSON.stringify([...statuses])}`);
  t.same((await run(A, read10(0, 64), { lun: 1 })).data, other, 'the other unit is untouched');
  t.equal(m.volume('v').state, 'mapped');
});
