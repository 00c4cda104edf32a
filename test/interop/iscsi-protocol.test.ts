import t from 'tap';
import { startServer } from '../helpers/server.js';
import { DEMO_IQN, IscsiWire, demoTarget, parseKeyText, read10, tur, write10, syncCache10, type WirePdu } from '../helpers/iscsi-wire.js';

// Wire-level checks of the iSCSI transport against a real `blockgate serve`:
// login refusals, SendTargets filtering, every write data path (immediate,
// unsolicited, R2T within MaxOutstandingR2T), Data-In splitting with status
// collapse, residuals, the CmdSN window, task management, digests, target
// pings and the logout request. One server for the whole file.

const s = await startServer(t, { env: { BLOCKGATE_ISCSI_NOP_MS: '300' } });
await s.call('POST', '/v1/hosts', { name: 'other', farm: 'default' });
await s.call('POST', '/v1/hosts/other/initiators', { iqn: 'iqn.2026-01.test:other' });
await s.call('POST', '/v1/volumes', { name: 'other-disk', size: '16M' });
await s.call('POST', '/v1/bindings', { volume: 'other-disk', host: 'other', target: 2, lun: 0, map: true });

const session = async (extra: Record<string, string> = {}, iqn = DEMO_IQN, target = demoTarget()): Promise<IscsiWire> => {
  const w = await IscsiWire.connect(s.iscsi);
  const r = await w.login(iqn, target, extra);
  if (r.bhs[36] !== 0 || r.bhs[37] !== 0) throw new Error(`login refused ${r.bhs[36]}/${r.bhs[37]}`);
  // A new I_T nexus starts with a unit attention (power on / reset), as libiscsi's connect-time TUR consumes it.
  for (let i = 0; i < 4; i++) {
    w.command(tur(), { edtl: 0 });
    if ((await w.recvReply())?.bhs[3] === 0) return w;
  }
  throw new Error('TEST UNIT READY never GOOD');
};
const status = (p: WirePdu | null): number => (p ? p.bhs[3]! : -1);
const pattern = (n: number, seed: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));

/** Reads `blocks` at `lba`, gathering Data-In; returns the data, the PDUs and the final status PDU. */
async function readBack(w: IscsiWire, lba: number, blocks: number, edtl = blocks * 512): Promise<{ data: Buffer; pdus: WirePdu[]; last: WirePdu }> {
  const itt = w.command(read10(lba, blocks), { read: true, edtl });
  const pdus: WirePdu[] = [];
  const out = Buffer.alloc(edtl);
  for (;;) {
    const p = await w.recvReply();
    if (!p) throw new Error('connection closed during read');
    if (p.itt !== itt) continue;
    pdus.push(p);
    if (p.opcode === 0x25) p.data.copy(out, p.offset);
    if (p.opcode === 0x21 || (p.opcode === 0x25 && p.flags & 1)) return { data: out, pdus, last: p };
  }
}

t.test('login: unknown initiator, foreign or missing target get 0x0201 and learn nothing', async (t) => {
  for (const [iqn, target, what] of [
    ['iqn.2026-01.test:stranger', demoTarget(), 'unknown initiator'],
    [DEMO_IQN, demoTarget('other', 2), "another host's target"],
    [DEMO_IQN, demoTarget('demo', 7), 'no such target'],
    [DEMO_IQN, 'iqn.2026-11.io.blockgate:nosuchhost.t0', 'no such host'],
  ] as const) {
    const w = await IscsiWire.connect(s.iscsi);
    const r = await w.login(iqn, target);
    t.same([r.bhs[36], r.bhs[37]], [2, 1], what);
    t.equal(r.data.length, 0, `${what}: no keys`);
    t.equal(await w.recv(5000), null, `${what}: connection closed`);
  }
  const w = await IscsiWire.connect(s.iscsi);
  const b = Buffer.alloc(48);
  b[0] = 0x01;
  w.send(b);
  t.equal(await w.recv(5000), null, 'a SCSI command before login closes the connection');
});

t.test('discovery: SendTargets lists only the host’s own targets', async (t) => {
  const w = await IscsiWire.connect(s.iscsi);
  const r = await w.login(DEMO_IQN, null);
  t.equal(r.bhs[36], 0);
  w.text({ SendTargets: 'All' });
  const tr = (await w.recvReply())!;
  t.equal(tr.opcode, 0x24);
  const text = tr.data.toString();
  t.match(text, `TargetName=${demoTarget()}\0TargetAddress=${s.iscsi},1\0`);
  t.notMatch(text, 'other');
  // A SCSI command is not allowed in a discovery session.
  w.command(tur(), { edtl: 0 });
  t.equal((await w.recvReply())!.opcode, 0x3f, 'Reject');
  w.logout();
  const lo = (await w.recvReply())!;
  t.equal(lo.opcode, 0x26);
  t.equal(lo.bhs[2], 0);
  t.equal(await w.recv(5000), null, 'closed after logout');

  const o = await IscsiWire.connect(s.iscsi);
  await o.login('iqn.2026-01.test:other', null);
  o.text({ SendTargets: 'All' });
  const ot = (await o.recvReply())!.data.toString();
  t.match(ot, demoTarget('other', 2));
  t.notMatch(ot, 'demo');
  o.close();
});

t.test('writes: immediate, unsolicited and R2T paths land; reads split at MaxRecvDataSegmentLength with status collapsed', async (t) => {
  const w = await session({ MaxRecvDataSegmentLength: '8192', FirstBurstLength: '16384', MaxBurstLength: '65536', MaxOutstandingR2T: '2' });
  // Immediate data only.
  const a = pattern(4096, 1);
  let itt = w.command(write10(0, 8), { write: true, edtl: 4096, immediate: a });
  let p = await w.recvReply();
  t.equal(p!.opcode, 0x21);
  t.equal(p!.itt, itt);
  t.equal(status(p), 0, 'immediate-only write GOOD');

  // Immediate + unsolicited Data-Out up to FirstBurstLength, then R2Ts for the rest (several bursts).
  const big = pattern(256 * 1024, 2);
  itt = w.command(write10(100, 512), { write: true, edtl: big.length, immediate: big.subarray(0, 8192), final: false });
  w.dataOut(itt, 0xffffffff, 0, 8192, big.subarray(8192, 16384), true);
  let outstanding = 0;
  let maxOutstanding = 0;
  let r2ts = 0;
  for (;;) {
    p = await w.recvReply();
    if (!p) throw new Error('closed');
    if (p.opcode === 0x31) {
      r2ts++;
      outstanding++;
      maxOutstanding = Math.max(maxOutstanding, outstanding);
      t.ok(p.word44 <= 65536, 'R2T within MaxBurstLength');
      // Answer each R2T in 8 KiB Data-Outs.
      for (let off = 0, sn = 0; off < p.word44; off += 8192, sn++) {
        const n = Math.min(8192, p.word44 - off);
        w.dataOut(itt, p.ttt, sn, p.offset + off, big.subarray(p.offset + off, p.offset + off + n), off + n === p.word44);
      }
      outstanding--;
      continue;
    }
    break;
  }
  t.equal(p!.opcode, 0x21);
  t.equal(status(p), 0, 'R2T write GOOD');
  t.equal(r2ts, Math.ceil((big.length - 16384) / 65536), 'R2Ts cover the rest in MaxBurstLength pieces');
  t.ok(maxOutstanding <= 2, 'MaxOutstandingR2T respected');

  const rb = await readBack(w, 100, 512);
  t.ok(rb.data.equals(big), 'read back equals what was written');
  const dataIns = rb.pdus.filter((x) => x.opcode === 0x25);
  t.equal(dataIns.length, big.length / 8192, 'Data-In split at the initiator MaxRecvDataSegmentLength');
  t.ok(dataIns.every((x, i) => x.dataSN === i && x.offset === i * 8192 && x.data.length === 8192), 'DataSN and offsets in order');
  t.equal(rb.last.opcode, 0x25, 'status collapsed into the last Data-In');
  t.equal(rb.last.flags & 0x81, 0x81, 'F and S');
  t.equal(status(rb.last), 0);
  t.ok(dataIns.filter((x) => x.flags & 0x80).length >= big.length / 65536, 'F at each MaxBurstLength sequence end');

  const first = await readBack(w, 0, 8);
  t.ok(first.data.equals(a), 'immediate write read back');
  w.close();
});

t.test('InitialR2T=Yes, ImmediateData=No: every byte is solicited', async (t) => {
  const w = await session({ InitialR2T: 'Yes', ImmediateData: 'No' });
  const d = pattern(20000 - (20000 % 512), 3);
  const itt = w.command(write10(2000, d.length / 512), { write: true, edtl: d.length });
  const r2t = (await w.recvReply())!;
  t.equal(r2t.opcode, 0x31);
  t.equal(r2t.offset, 0);
  t.equal(r2t.word44, d.length);
  w.dataOut(itt, r2t.ttt, 0, 0, d, true);
  t.equal(status(await w.recvReply()), 0);
  t.ok((await readBack(w, 2000, d.length / 512)).data.equals(d));
  // Immediate data when ImmediateData=No: protocol error, rejected.
  w.command(write10(0, 1), { write: true, edtl: 512, immediate: Buffer.alloc(512) });
  const rj = (await w.recvReply())!;
  t.equal(rj.opcode, 0x3f);
  t.equal(rj.bhs[2], 0x04);
  w.close();
});

t.test('Data-Out with a wrong TTT, offset or DataSN is rejected and writes nothing', async (t) => {
  const w = await session({ InitialR2T: 'Yes', ImmediateData: 'No' });
  const before = (await readBack(w, 3000, 2)).data;
  const itt = w.command(write10(3000, 2), { write: true, edtl: 1024 });
  const r2t = (await w.recvReply())!;
  w.dataOut(itt, r2t.ttt ^ 0x5555, 0, 0, Buffer.alloc(1024, 0xee), true);
  let p = (await w.recvReply())!;
  t.same([p.opcode, p.bhs[2]], [0x3f, 0x09], 'wrong TTT');
  t.ok(p.data.subarray(0, 1).equals(Buffer.from([0x05])), 'Reject carries the rejected header');
  w.dataOut(itt, r2t.ttt, 0, 512, Buffer.alloc(512, 0xee), true);
  p = (await w.recvReply())!;
  t.same([p.opcode, p.bhs[2]], [0x3f, 0x09], 'wrong offset');
  w.dataOut(itt, r2t.ttt, 3, 0, Buffer.alloc(1024, 0xee), true);
  p = (await w.recvReply())!;
  t.same([p.opcode, p.bhs[2]], [0x3f, 0x09], 'wrong DataSN');
  w.dataOut(0x7777, r2t.ttt, 0, 0, Buffer.alloc(1024, 0xee), true);
  p = (await w.recvReply())!;
  t.same([p.opcode, p.bhs[2]], [0x3f, 0x09], 'unknown ITT');
  // The task is still waiting: abort it, and nothing was written.
  const tm = w.tmf(1, itt);
  p = (await w.recvReply())!;
  t.same([p.opcode, p.itt, p.bhs[2]], [0x22, tm, 0], 'ABORT TASK complete');
  t.ok((await readBack(w, 3000, 2)).data.equals(before), 'nothing written');
  w.close();
});

t.test('residuals: underflow and overflow against the expected length', async (t) => {
  const w = await session();
  let rb = await readBack(w, 0, 1, 2048);
  t.equal(rb.last.flags & 0x02, 0x02, 'U bit');
  t.equal(rb.last.word44, 1536, 'underflow residual');
  rb = await readBack(w, 0, 4, 512);
  t.equal(rb.last.flags & 0x04, 0x04, 'O bit');
  t.equal(rb.last.word44, 1536, 'overflow residual');
  t.equal(rb.pdus.filter((x) => x.opcode === 0x25).reduce((n, x) => n + x.data.length, 0), 512, 'no more than expected is sent');
  w.close();
});

t.test('CmdSN window: out-of-order commands wait for the gap, outside the window are ignored', async (t) => {
  const w = await session();
  const base = w.cmdSN;
  const i2 = w.command(tur(), { edtl: 0, cmdSN: base + 1 });
  t.equal(await w.recvReply(300), null, 'CmdSN+1 waits for CmdSN (pings aside)');
  const i1 = w.command(tur(), { edtl: 0, cmdSN: base });
  const got = [(await w.recvReply())!.itt, (await w.recvReply())!.itt];
  t.same(got, [i1, i2], 'executed in CmdSN order');
  w.cmdSN = base + 2;
  const far = w.command(tur(), { edtl: 0, cmdSN: base + 100_000 });
  const old = w.command(tur(), { edtl: 0, cmdSN: (base - 5) >>> 0 });
  const nop = w.itt();
  w.nopOut(nop, 0xffffffff, false, Buffer.from('ping-data'));
  const r = (await w.recvReply())!;
  t.equal(r.opcode, 0x20);
  t.equal(r.itt, nop, 'only the in-window NOP is answered');
  t.not(r.itt, far);
  t.not(r.itt, old);
  t.equal(r.data.toString(), 'ping-data', 'NOP-In echoes the data');
  t.equal(r.expCmdSN, w.cmdSN, 'ExpCmdSN advanced past the NOP');
  t.ok(((r.maxCmdSN - r.expCmdSN) | 0) >= 0, 'window open');
  w.close();
});

t.test('task management: LUN RESET, unknown LUN, unknown task, unsupported functions', async (t) => {
  const w = await session();
  let tm = w.tmf(5, 0, 0);
  let p = (await w.recvReply())!;
  t.same([p.opcode, p.itt, p.bhs[2]], [0x22, tm, 0], 'LUN RESET complete');
  tm = w.tmf(5, 0, 9);
  p = (await w.recvReply())!;
  t.equal(p.bhs[2], 2, 'LUN does not exist');
  tm = w.tmf(1, 0x4242, 0, 0);
  p = (await w.recvReply())!;
  t.equal(p.bhs[2], 1, 'task does not exist');
  tm = w.tmf(3, 0, 0);
  p = (await w.recvReply())!;
  t.equal(p.bhs[2], 5, 'CLEAR ACA not supported');
  tm = w.tmf(2, 0, 0);
  p = (await w.recvReply())!;
  t.equal(p.bhs[2], 0, 'ABORT TASK SET complete');
  // The unit attention the reset raised is the SCSI layer's; afterwards I/O works.
  let st = -1;
  for (let i = 0; i < 3 && st !== 0; i++) {
    w.command(tur(), { edtl: 0 });
    st = status(await w.recvReply());
  }
  t.equal(st, 0, 'TEST UNIT READY GOOD after the reset');
  w.close();
});

t.test('digests: CRC32C both ways; a bad data digest is rejected, a bad header digest drops the connection', async (t) => {
  const w = await session({ HeaderDigest: 'CRC32C', DataDigest: 'CRC32C' });
  t.ok(w.headerDigest && w.dataDigest, 'negotiated');
  const d = pattern(8192, 9);
  w.command(write10(4000, 16), { write: true, edtl: d.length, immediate: d });
  t.equal(status(await w.recvReply()), 0);
  t.ok((await readBack(w, 4000, 16)).data.equals(d), 'read back with digests');
  const b = Buffer.alloc(48);
  b[0] = 0x40;
  b[1] = 0x80;
  b.writeUInt32BE(99, 16);
  b.writeUInt32BE(0xffffffff, 20);
  b.writeUInt32BE(w.cmdSN, 24);
  w.write(w.pdu(b, Buffer.from('abc'), { badDataDigest: true }));
  const rj = (await w.recvReply())!;
  t.same([rj.opcode, rj.bhs[2]], [0x3f, 0x02], 'data digest error → Reject');
  w.write(w.pdu(b, Buffer.from('abc'), { badHeaderDigest: true }));
  t.equal(await w.recvReply(5000), null, 'header digest error → connection dropped');
});

t.test('the target pings an idle initiator and drops one that does not answer', async (t) => {
  const w = await session();
  const ping = (await w.recv(5000))!;
  t.equal(ping.opcode, 0x20, 'NOP-In');
  t.equal(ping.itt, 0xffffffff);
  t.not(ping.ttt, 0xffffffff, 'with a TTT to answer');
  w.nopOut(0xffffffff, ping.ttt, true);
  const again = await w.recv(5000);
  t.equal(again?.opcode, 0x20, 'answered: pinged again later, not dropped');
  // Now stay silent.
  let p: WirePdu | null;
  do p = await w.recv(5000);
  while (p && p.opcode === 0x20);
  t.equal(p, null, 'dropped after an unanswered ping');
});

t.test('removing an initiator asks its session to log out (Async Message), then drops it', async (t) => {
  await s.call('POST', '/v1/hosts/other/initiators', { iqn: 'iqn.2026-01.test:leaving' });
  const w = await session({}, 'iqn.2026-01.test:leaving', demoTarget('other', 2));
  const del = s.call('DELETE', `/v1/hosts/other/initiators/${encodeURIComponent('iqn.2026-01.test:leaving')}`);
  let p: WirePdu | null;
  do p = await w.recv(5000);
  while (p && p.opcode === 0x20);
  t.equal(p?.opcode, 0x32, 'Async Message');
  t.equal(p?.bhs[36], 1, 'event: logout requested');
  w.logout();
  do p = await w.recv(5000);
  while (p && p.opcode !== 0x26);
  t.equal(p?.opcode, 0x26, 'logout accepted');
  await del;
  const again = await IscsiWire.connect(s.iscsi);
  const r = await again.login('iqn.2026-01.test:leaving', demoTarget('other', 2));
  t.same([r.bhs[36], r.bhs[37]], [2, 1], 'the removed initiator cannot log in');
});

t.test('SYNCHRONIZE CACHE and FUA writes answer GOOD; the namespace lists iSCSI URIs', async (t) => {
  const w = await session();
  w.command(write10(5000, 1, true), { write: true, edtl: 512, immediate: pattern(512, 5) });
  t.equal(status(await w.recvReply()), 0);
  w.command(syncCache10(), { edtl: 0 });
  t.equal(status(await w.recvReply()), 0);
  w.close();
  const ns = await s.call('GET', '/v1/hosts/demo/namespace');
  t.ok(ns.units[0].uris.includes(`iscsi://${s.iscsi}/${demoTarget()}/0`));
  const host = await s.call('GET', '/v1/hosts/demo');
  t.same(host.iscsi.initiators, [DEMO_IQN]);
  t.same(host.protocols, ['nbd', 'iscsi']);
  void parseKeyText;
  const r = await fetch(`${s.api}/metrics`, { headers: { authorization: 'Bearer test-token-0123456789' } });
  const text = await r.text();
  t.match(text, /blockgate_session_ends_total\{reason="nop-timeout",protocol="iscsi"\} [1-9]/, 'iSCSI session ends carry the protocol label');
  t.match(text, /blockgate_session_ends_total\{reason="logout",protocol="iscsi"\} [1-9]/);
});
