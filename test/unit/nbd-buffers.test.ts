import t from 'tap';
import { releaseLarge } from '../../target/core/index.js';
import { arenaMoved, buffersMade, inProcessAppliance, pooledOnceSent } from '../helpers/iscsi-appliance.js';
import { CMD, WireClient } from '../helpers/nbd-wire.js';

// A structured NBD read over data and holes (OFFSET_DATA and OFFSET_HOLE
// chunks) takes its data buffer from the data path's pool and gives it back
// once the last chunk is written, as a plain read does. It allocated a fresh
// buffer per request: at 1 MiB QD8 that was ~1 GB/s of new memory, and V8
// answered with back-to-back full collections (the fresh 1 MiB read row ran
// at 850 or 2,600 MiB/s depending on whether they started). The pool is
// process-wide, so the appliance runs in this process.

const MiB = 1024 * 1024;

/** An in-process appliance with one host and a thin 16 MiB unit at 0/0; a raw NBD client on the host's socket. */
async function hostWithUnit(t: Parameters<typeof inProcessAppliance>[0], prefix: string): Promise<WireClient> {
  const { m } = await inProcessAppliance(t, prefix);
  m.createFarm('f');
  await m.createArray('a0', 64 * MiB);
  await m.createHost({ name: 'h', farm: 'f' });
  m.createVolume({ name: 'v0', size: 16 * MiB, farm: 'f', configure: true });
  m.bind({ volume: 'v0', host: 'h', target: 0, lun: 0, map: true });
  const c = await WireClient.connect({ path: m.hostSocketPath('h') });
  t.teardown(() => c.destroy());
  return c;
}

t.test('a 1 MiB structured read over data and holes recycles its buffer', async (t) => {
  const c = await hostWithUnit(t, 'nbd-buffers');
  await c.open('0/0');
  // Data at pages 1, 2 and 200 of the first MiB; the rest never written.
  const expect = Buffer.alloc(MiB);
  for (const [page, n, byte] of [[1, 2, 0x5a], [200, 1, 0xa5]] as const) {
    const d = Buffer.alloc(n * 4096, byte);
    t.equal((await c.request(CMD.WRITE, page * 4096, d.length, 0, d)).error, 0);
    d.copy(expect, page * 4096);
  }
  // Nothing before this read used a 1 MiB buffer: the pool holds none until the read gives its back.
  const r = await c.request(CMD.READ, 0, MiB);
  t.equal(r.error, 0);
  t.same(r.chunks.map((x) => x.type), [2, 1, 2, 1, 2], 'hole, data, hole, data, hole');
  t.ok(WireClient.readBytes(r, 0, MiB).equals(expect), 'the bytes read');

  const back = await pooledOnceSent(MiB, expect);
  t.ok(back.equals(expect), 'the read buffer went back to the pool, holding what was read');
  releaseLarge(back);
});

t.test('a small write the store takes at once gives its payload copy back to the arena', async (t) => {
  const c = await hostWithUnit(t, 'nbd-arena');
  await c.open('0/0', { structured: false });
  const d = Buffer.alloc(4096, 0x3c);
  // Warm the blocks so every write below completes in memory, at once.
  for (let i = 0; i < 40; i++) t.equal((await c.request(CMD.WRITE, i * 4096, 4096, 0, d)).error, 0);

  // How far the arena moves over 40 writes (each 4 KiB payload copy plus a 16-byte reply).
  const moved = await arenaMoved(async () => {
    for (let i = 0; i < 40; i++) await c.request(CMD.WRITE, i * 4096, 4096, 0, d);
  });
  t.ok(moved >= 0, 'measured within one arena');
  t.ok(moved < 40 * 64, `the arena moved ${moved} bytes for 40 writes: the replies, not the payloads`);
  const back = (await c.request(CMD.READ, 0, 40 * 4096)).data!;
  t.ok(back.equals(Buffer.concat(Array(40).fill(d))), 'and the data is what was written');
});

t.test('a small payload that arrives after its header is gathered into the arena, not a new buffer, and given back', async (t) => {
  const c = await hostWithUnit(t, 'nbd-gather');
  await c.open('0/0', { structured: false });
  const d = Buffer.alloc(4096, 0x6e);
  for (let i = 0; i < 40; i++) t.equal((await c.request(CMD.WRITE, i * 4096, 4096, 0, d)).error, 0);
  // Header and payload in separate segments, the payload after a pause: the server reads them apart.
  const gatheredWrite = async (i: number): Promise<number> => {
    c.send(CMD.WRITE, i * 4096, 4096, 0);
    await new Promise((r) => setTimeout(r, 2));
    c.sock.write(d);
    return (await c.reply()).error;
  };
  // Buffers made for data the size of a payload or smaller (arena refills are 1 MiB) while the writes run.
  let moved = -1;
  const made = await buffersMade(
    (n) => n > 0 && n <= 64 * 1024,
    async () => {
      moved = await arenaMoved(async () => {
        for (let i = 0; i < 40; i++) t.equal(await gatheredWrite(i), 0);
      });
    },
  );
  t.equal(made, 0, 'no buffer made per gathered payload');
  t.ok(moved >= 0 && moved < 40 * 64, `the arena moved ${moved} bytes for 40 gathered writes: the replies, not the payloads`);
  const back = (await c.request(CMD.READ, 0, 40 * 4096)).data!;
  t.ok(back.equals(Buffer.concat(Array(40).fill(d))), 'and the data is what was written');
});

t.test('4 KiB reads served from memory reuse their reply memory once it is sent, not a new arena per MiB', async (t) => {
  // Every 1 MiB of replies took a fresh arena: at 0.5 GB/s of cached reads V8 ran a full collection 16 times
  // a second for the external memory (docs/bench/findings.md, session 12).
  const c = await hostWithUnit(t, 'nbd-reuse');
  await c.open('0/0', { structured: false });
  const blocks = 64;
  const d = (i: number): Buffer => Buffer.alloc(4096, i + 1);
  for (let i = 0; i < blocks; i++) t.equal((await c.request(CMD.WRITE, i * 4096, 4096, 0, d(i))).error, 0);
  let bad = 0;
  // 8 MiB of read replies, 64 in flight at a time.
  const made = await buffersMade(
    (n) => n === MiB,
    async () => {
      for (let round = 0; round < 32; round++) {
        const lengths = new Map<bigint, number>();
        const at = new Map<bigint, number>();
        for (let i = 0; i < blocks; i++) {
          const cookie = c.send(CMD.READ, i * 4096, 4096);
          lengths.set(cookie, 4096);
          at.set(cookie, i);
        }
        for (let i = 0; i < blocks; i++) {
          const r = await c.reply(lengths);
          if (r.error !== 0 || !r.data!.equals(d(at.get(r.cookie)!))) bad++;
        }
      }
    },
  );
  t.equal(bad, 0, 'every reply holds its block');
  t.ok(made <= 2, `${made} arenas made for 8 MiB of replies`);
});
