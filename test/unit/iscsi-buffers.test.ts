import t, { type Test } from 'tap';
import { LARGE_MIN, largeBuffer, releaseLarge } from '../../target/core/index.js';
import { arenaMoved, buffersMade, inProcessAppliance, pooledOnceSent } from '../helpers/iscsi-appliance.js';
import { IscsiWire, read10, tur, write10 } from '../helpers/iscsi-wire.js';

// Large iSCSI transfers take their buffers from the data path's pool and give
// them back, as NBD's do: a fresh 1 MiB buffer per command costs a fault per
// page on first touch (on this VM ~14 µs each — 1 MiB writes ran at 331 MiB/s
// and reads at 768–1,472 MiB/s against tgt's 556 and 1,604). The pool is
// process-wide, so the appliance runs in this process and the test looks at
// what the pool hands out after each transfer.

const MiB = 1024 * 1024;
const SEG = 256 * 1024;
const IQN = 'iqn.2026-01.test:buffers';

/** An in-process appliance whose host (initiator IQN) has a thin 16 MiB unit at 0/0; a raw iSCSI connection to it, not logged in. */
async function hostWithUnit(t: Parameters<typeof inProcessAppliance>[0], prefix: string): Promise<IscsiWire> {
  const { m, port } = await inProcessAppliance(t, prefix);
  m.createFarm('f');
  await m.createArray('a0', 64 * MiB);
  await m.createHost({ name: 'h', farm: 'f' });
  m.iscsi.addInitiator('h', IQN);
  m.createVolume({ name: 'v0', size: 16 * MiB, farm: 'f', configure: true });
  m.bind({ volume: 'v0', host: 'h', target: 0, lun: 0, map: true });
  const w = await IscsiWire.connect(`127.0.0.1:${port}`);
  t.teardown(() => w.close());
  return w;
}

/** hostWithUnit, logged in with `keys`, past the power-on unit attention. */
async function loggedIn(t: Test, prefix: string, keys: Record<string, string>): Promise<IscsiWire> {
  const w = await hostWithUnit(t, prefix);
  const login = await w.login(IQN, 'iqn.2026-11.io.blockgate:h.t0', keys);
  t.equal(login.bhs[36], 0, 'logged in');
  for (let i = 0; i < 3; i++) {
    w.command(tur(), { edtl: 0 });
    await w.recvReply();
  }
  return w;
}

t.test('1 MiB writes and reads over iSCSI recycle their buffers', async (t) => {
  const w = await loggedIn(t, 'iscsi-buffers', {
    MaxRecvDataSegmentLength: String(SEG),
    MaxBurstLength: String(MiB),
    FirstBurstLength: String(SEG),
    MaxOutstandingR2T: '1',
  });

  const data = Buffer.alloc(MiB);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);

  // Immediate data up to FirstBurstLength, then an R2T for the rest, answered in MaxRecvDataSegmentLength Data-Outs:
  // each of those segments is sent in two parts, so it spans socket reads (one read can hold a whole segment) and is
  // gathered into a pooled buffer. The server shares this event loop: the first part is in its socket when written
  // (loopback), and a loop turn's I/O poll comes before its setImmediate callbacks, so the server has read the first
  // part before the second is written. (A 5 ms timer here failed under CI load: after a stall, timers run before
  // the poll, and both parts arrived in one read.)
  const itt = w.command(write10(0, MiB / 512), { write: true, edtl: MiB, immediate: data.subarray(0, SEG), final: true });
  let rsp = await w.recvReply();
  t.equal(rsp!.opcode, 0x31, 'R2T for the rest');
  const r2t = rsp!;
  const whole = w.write.bind(w);
  let inOrder = Promise.resolve();
  w.write = (b: Buffer) => {
    inOrder = inOrder.then(async () => {
      whole(b.subarray(0, 1000));
      await new Promise((r) => setImmediate(r));
      whole(b.subarray(1000));
    });
  };
  for (let off = 0, sn = 0; off < r2t.word44; off += SEG, sn++) {
    w.dataOut(itt, r2t.ttt, sn, r2t.offset + off, data.subarray(r2t.offset + off, r2t.offset + off + SEG), off + SEG === r2t.word44);
  }
  rsp = await w.recvReply();
  w.write = whole;
  t.equal(rsp!.opcode, 0x21, 'SCSI response');
  t.equal(rsp!.bhs[3], 0, 'write GOOD');

  // The command's buffer came back once the store was done with it, holding what was written.
  const writeBuf = largeBuffer(MiB);
  t.ok(writeBuf.equals(data), 'the write buffer went back to the pool');
  const segBuf = largeBuffer(SEG);
  t.ok(segBuf.equals(data.subarray(MiB - SEG)), 'the last gathered Data-Out segment went back to the pool');
  releaseLarge(segBuf);

  // Zeroed and given back: the read takes it, fills it from the cache, sends it, and gives it back again.
  writeBuf.fill(0);
  releaseLarge(writeBuf);
  w.command(read10(0, MiB / 512), { read: true, edtl: MiB });
  const got = Buffer.alloc(MiB);
  for (;;) {
    const p = await w.recvReply();
    if (!p) throw new Error('connection closed');
    if (p.opcode === 0x25) p.data.copy(got, p.offset);
    if (p.opcode === 0x21 || (p.opcode === 0x25 && p.flags & 0x01)) break;
  }
  t.ok(got.equals(data), 'read back what was written');
  const readBuf = await pooledOnceSent(MiB, data);
  t.ok(readBuf.equals(data), 'the read reply buffer went back to the pool once sent');
  t.ok(LARGE_MIN <= SEG, 'segments of this size are pooled');
});

t.test('a 4 KiB write whose immediate data was realigned gives the copy back to the arena', async (t) => {
  // A header digest puts the data 52 bytes into the PDU: not 8-byte aligned, so the target realigns it.
  const w = await loggedIn(t, 'iscsi-arena', { HeaderDigest: 'CRC32C' });
  const d = Buffer.alloc(4096, 0x77);
  const write = async (lba: number): Promise<void> => {
    w.command(write10(lba, 8), { write: true, edtl: 4096, immediate: d, final: true });
    const rsp = await w.recvReply();
    if (rsp!.opcode !== 0x21 || rsp!.bhs[3] !== 0) throw new Error('write failed');
  };
  // Warm the blocks so every write below completes in memory, at once.
  for (let i = 0; i < 40; i++) await write(i * 8);
  const moved = await arenaMoved(async () => {
    for (let i = 0; i < 40; i++) await write(i * 8);
  });
  t.ok(moved >= 0, 'measured within one arena');
  t.ok(moved < 40 * 64, `the arena moved ${moved} bytes for 40 writes`);
});

t.test('4 KiB writes whose data spans socket reads, or comes after an R2T, take no new buffer', async (t) => {
  const w = await loggedIn(t, 'iscsi-gather', {});
  const d = Buffer.alloc(4096, 0x42);
  const ok = (rsp: Awaited<ReturnType<IscsiWire['recvReply']>>): boolean => rsp!.opcode === 0x21 && rsp!.bhs[3] === 0;
  for (let i = 0; i < 40; i++) {
    w.command(write10(i * 8, 8), { write: true, edtl: 4096, immediate: d, final: true });
    t.ok(ok(await w.recvReply()));
  }
  // Payload-sized buffers made while the writes run (the client's own PDUs are 4,144 bytes; arena refills 1 MiB).
  const made = await buffersMade(
    (n) => n === 4096,
    async () => {
      // Immediate data split: the first 100 bytes of each PDU, then the rest a moment later.
      const whole = w.write.bind(w);
      w.write = (b: Buffer) => {
        whole(b.subarray(0, 100));
        setTimeout(() => whole(b.subarray(100)), 2);
      };
      for (let i = 0; i < 20; i++) {
        w.command(write10(i * 8, 8), { write: true, edtl: 4096, immediate: d, final: true });
        t.ok(ok(await w.recvReply()), `split write ${i}`);
      }
      w.write = whole;
      // No immediate data: the target asks for it with an R2T.
      for (let i = 0; i < 20; i++) {
        const itt = w.command(write10(i * 8, 8), { write: true, edtl: 4096, final: true });
        const r2t = (await w.recvReply())!;
        t.equal(r2t.opcode, 0x31, 'R2T');
        w.dataOut(itt, r2t.ttt, 0, 0, d, true);
        t.ok(ok(await w.recvReply()), `write ${i} after its R2T`);
      }
    },
  );
  t.equal(made, 0, 'no buffer made per write');
});

t.test('4 KiB reads served from memory reuse their Data-In memory once it is sent, not a new arena per MiB', async (t) => {
  const w = await loggedIn(t, 'iscsi-reuse', {});
  const blocks = 64;
  const d = (i: number): Buffer => Buffer.alloc(4096, i + 1);
  for (let i = 0; i < blocks; i++) {
    w.command(write10(i * 8, 8), { write: true, edtl: 4096, immediate: d(i), final: true });
    const rsp = await w.recvReply();
    t.equal(rsp!.bhs[3], 0, 'write GOOD');
  }
  let bad = 0;
  // 8 MiB of Data-In, 32 commands in flight at a time.
  const made = await buffersMade(
    (n) => n === MiB,
    async () => {
      for (let round = 0; round < 64; round++) {
        const block = new Map<number, number>();
        for (let k = 0; k < 32; k++) block.set(w.command(read10(((round + k) % blocks) * 8, 8), { read: true, edtl: 4096 }), (round + k) % blocks);
        for (let k = 0; k < 32; k++) {
          const p = await w.recvReply();
          if (!p || p.opcode !== 0x25 || !(p.flags & 0x01) || !p.data.equals(d(block.get(p.bhs.readUInt32BE(16))!))) bad++;
        }
      }
    },
  );
  t.equal(bad, 0, 'every Data-In holds its block, with its status');
  t.ok(made <= 2, `${made} arenas made for 8 MiB of Data-In`);
});

t.test('sub-page writes whose immediate data came in the shared read buffer keep their bytes while their pages load', async (t) => {
  // Socket reads land in one shared buffer, overwritten by the next read. A 512-byte write into a page that is
  // on the array but not in the cache waits for the page to load, then copies its data: the data must be the
  // write's own copy by then, not a view of the read buffer.
  const w = await loggedIn(t, 'iscsi-lent', { MaxBurstLength: String(MiB), FirstBurstLength: String(SEG), MaxRecvDataSegmentLength: String(SEG) });
  // 1 MiB of 0x11 written around the cache (large writes go straight to the array).
  const base = Buffer.alloc(MiB, 0x11);
  const itt = w.command(write10(0, MiB / 512), { write: true, edtl: MiB, immediate: base.subarray(0, SEG), final: true });
  const r2t = (await w.recvReply())!;
  t.equal(r2t.opcode, 0x31, 'R2T for the rest');
  for (let off = 0, sn = 0; off < r2t.word44; off += SEG, sn++) {
    w.dataOut(itt, r2t.ttt, sn, r2t.offset + off, base.subarray(r2t.offset + off, r2t.offset + off + SEG), off + SEG === r2t.word44);
  }
  t.equal((await w.recvReply())!.bhs[3], 0, 'large write GOOD');
  const pages = 48;
  const sector = (k: number): Buffer => Buffer.alloc(512, 0x40 + k);
  // One sector into each of 48 pages, then 4 KiB writes elsewhere right behind them: more socket reads while the
  // pages load.
  for (let k = 0; k < pages; k++) w.command(write10(k * 8 + 1, 1), { write: true, edtl: 512, immediate: sector(k), final: true });
  await new Promise((r) => setImmediate(r));
  for (let k = 0; k < pages; k++) w.command(write10(4096 + k * 8, 8), { write: true, edtl: 4096, immediate: Buffer.alloc(4096, 0xee), final: true });
  let good = 0;
  for (let k = 0; k < 2 * pages; k++) {
    const r = await w.recvReply();
    if (r && r.opcode === 0x21 && r.bhs[3] === 0) good++;
  }
  t.equal(good, 2 * pages, 'every write GOOD');
  let bad = 0;
  for (let k = 0; k < pages; k++) {
    w.command(read10(k * 8, 8), { read: true, edtl: 4096 });
    const p = (await w.recvReply())!;
    const want = Buffer.alloc(4096, 0x11);
    sector(k).copy(want, 512);
    if (p.opcode !== 0x25 || !p.data.equals(want)) bad++;
  }
  t.equal(bad, 0, 'each page holds its sector and the bytes around it');
});
