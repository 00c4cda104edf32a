import t from 'tap';
import { startServer } from '../helpers/server.js';
import { CMD, WireClient } from '../helpers/nbd-wire.js';

// Sessions read the socket into one buffer shared by every connection
// (target/core/socket-reads.ts): a write that cannot finish at once must have
// its own copy of the payload, or the next socket read (this connection's or
// another's) overwrites its bytes before they reach the cache. A tiny cache
// makes such writes common: a partial write to a written block that is not
// cached waits for a read from the array file first.

const KiB = 1024;
const MiB = 1024 * KiB;
const s = await startServer(t, { args: ['--cache-size', '1M'] });
const sock = { path: s.socket('demo') };

/** Bytes written where: the model every read-back is checked against. */
const model = Buffer.alloc(24 * MiB, 0);

let failedWrites = 0;

async function writeAll(c: WireClient, reqs: { offset: number; data: Buffer }[]): Promise<void> {
  // All sent before any reply is read, so the server keeps reading while earlier writes wait for their loads.
  for (const r of reqs) c.send(CMD.WRITE, r.offset, r.data.length, 0, r.data);
  for (const r of reqs) r.data.copy(model, r.offset);
  for (let i = 0; i < reqs.length; i++) if ((await c.reply()).error !== 0) failedWrites++;
}

t.test('writes waiting on a load keep their payload while other reads reuse the buffer', async (t) => {
  const a = await WireClient.connect(sock).then((c) => c.open('0/0', { structured: false }));
  const b = await WireClient.connect(sock).then((c) => c.open('0/0', { structured: false }));
  // Written once (8 MiB of data on the array, far more than the 1 MiB cache holds) and flushed.
  for (let off = 0; off < 8 * MiB; off += MiB) {
    const data = Buffer.alloc(MiB, 0xaa);
    await writeAll(a, [{ offset: off, data }]);
  }
  t.equal((await a.request(CMD.FLUSH, 0, 0)).error, 0);

  for (let round = 0; round < 4; round++) {
    // A: 64 small writes into 64 different uncached blocks (each waits for a pread), then more traffic on
    // both connections right behind them, which the server reads into the same buffer meanwhile.
    const partial = Array.from({ length: 64 }, (_, i) => ({
      offset: i * 128 * KiB + round * 8 * KiB + 1000,
      data: Buffer.alloc(512, (round * 64 + i) % 250 + 1),
    }));
    const behindA = Array.from({ length: 64 }, (_, i) => ({ offset: 16 * MiB + i * 4 * KiB, data: Buffer.alloc(4 * KiB, 0xe0 + round) }));
    const behindB = Array.from({ length: 64 }, (_, i) => ({ offset: 20 * MiB + i * 4 * KiB, data: Buffer.alloc(4 * KiB, 0xf0 + round) }));
    await Promise.all([writeAll(a, [...partial, ...behindA]), writeAll(b, behindB)]);
  }

  t.equal(failedWrites, 0, 'every write acknowledged');
  const c = await WireClient.connect(sock).then((x) => x.open('0/0', { structured: false }));
  let wrong = 0;
  for (let off = 0; off < model.length; off += MiB) {
    const r = await c.request(CMD.READ, off, MiB);
    t.equal(r.error, 0);
    if (!r.data!.equals(model.subarray(off, off + MiB))) wrong++;
  }
  t.equal(wrong, 0, 'every MiB reads back exactly what was written');
  for (const x of [a, b, c]) x.destroy();
});

t.test('large payloads read straight into place arrive whole, however the client splits them', async (t) => {
  // A 1 MiB + 3 KiB payload is gathered by reading the socket into the payload itself once 64 KiB or more is
  // left (target/nbd/framing.ts directRead): sent in uneven pieces with pauses, so the server sees reads that end
  // mid-payload on both paths, and with the next request's header in the same write as the payload's last bytes
  // (a read into the payload must stop at its end). Another connection's writes run through the shared buffer
  // meanwhile. Each byte's value depends on its position, so a piece landing at the wrong offset shows.
  const a = await WireClient.connect(sock).then((c) => c.open('0/0', { structured: false }));
  const b = await WireClient.connect(sock).then((c) => c.open('0/0', { structured: false }));
  const at = 2 * MiB + 4 * KiB;
  const big = Buffer.alloc(MiB + 3 * KiB);
  for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
  const small = Buffer.alloc(4 * KiB, 0x5c);
  const header = (offset: number, length: number, cookie: number): Buffer => {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(CMD.WRITE, 6);
    h.writeUInt32BE(cookie, 12);
    h.writeUInt32BE(offset, 20);
    h.writeUInt32BE(length, 24);
    return h;
  };
  const pause = (): Promise<void> => new Promise((r) => setTimeout(r, 15));
  const cuts = [1, 70 * KiB, 70 * KiB + 1, 200 * KiB, 200 * KiB + 3, 900 * KiB, big.length - 5];
  a.sock.write(header(at, big.length, 1));
  let from = 0;
  for (const cut of cuts) {
    a.sock.write(big.subarray(from, cut));
    from = cut;
    b.send(CMD.WRITE, 12 * MiB + cut, small.length, 0, small);
    await pause();
  }
  // The payload's last bytes and the next request, in one write.
  a.sock.write(Buffer.concat([big.subarray(from), header(at + big.length, small.length, 2), small]));
  for (let i = 0; i < 2; i++) t.equal((await a.reply()).error, 0, `write ${i + 1} acknowledged`);
  for (let i = 0; i < cuts.length; i++) t.equal((await b.reply()).error, 0);
  const back = await a.request(CMD.READ, at, big.length + small.length);
  t.equal(back.error, 0);
  t.ok(back.data!.subarray(0, big.length).equals(big), 'the large payload reads back exactly');
  t.ok(back.data!.subarray(big.length).equals(small), 'and the request right behind it');
  for (const x of [a, b]) x.destroy();
});
