import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { startServer } from '../helpers/server.js';
import { CMD, FLAG, WireClient } from '../helpers/nbd-wire.js';

// Allocation truth survives kill -9: what a FLUSH acknowledged (data, trims,
// zeroes) is what the map says after restart. The flush is sent on another
// connection than the writes: with CAN_MULTI_CONN a flush covers writes
// completed on every connection.

const KiB = 1024;
const MiB = 1024 * KiB;

t.test('flushed writes, trims and zeroes survive kill -9, across connections', async (t) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-crash-'));
  t.teardown(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const s1 = await startServer(t, { dataDir });
  const sock = { path: s1.socket('demo') };
  const a = await (await WireClient.connect(sock)).open('0/0');
  const b = await (await WireClient.connect(sock)).open('0/0');

  const pattern = Buffer.alloc(64 * KiB);
  for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7 + 3) & 0xff;
  t.equal((await a.request(CMD.WRITE, 0, pattern.length, 0, pattern)).error, 0);
  t.equal((await a.request(CMD.WRITE, 1 * MiB, MiB, 0, Buffer.alloc(MiB, 9))).error, 0);
  t.equal((await a.request(CMD.WRITE, 2 * MiB, MiB, 0, Buffer.alloc(MiB, 9))).error, 0);
  t.equal((await b.request(CMD.FLUSH, 0, 0)).error, 0, 'flush on the other connection');
  t.equal((await a.request(CMD.TRIM, 1 * MiB, MiB)).error, 0);
  t.equal((await a.request(CMD.WRITE_ZEROES, 2 * MiB, MiB, FLAG.NO_HOLE)).error, 0);
  t.equal((await a.request(CMD.WRITE, 5 * MiB, 512, 0, Buffer.alloc(512, 1))).error, 0, 'a partial block write');
  t.equal((await b.request(CMD.FLUSH, 0, 0)).error, 0);
  // Not flushed: may be lost, must not corrupt anything else.
  a.send(CMD.WRITE, 6 * MiB, 4096, 0, Buffer.alloc(4096, 0xee));
  await s1.kill();

  const s2 = await startServer(t, { dataDir });
  const c = await (await WireClient.connect({ path: s2.socket('demo') })).open('0/0');
  const r = await c.request(CMD.READ, 0, pattern.length, FLAG.DF);
  t.ok(WireClient.readBytes(r, 0, pattern.length).equals(pattern), 'flushed data is back');
  const ext = WireClient.extents(await c.request(CMD.BLOCK_STATUS, 0, 6 * MiB));
  t.same(ext.slice(0, 5), [
    { length: 64 * KiB, flags: 0 },
    { length: 2 * MiB - 64 * KiB, flags: 3 },
    { length: MiB, flags: 2 },
    { length: 2 * MiB, flags: 3 },
    { length: 4096, flags: 0 },
  ], 'data, hole (never written, then trimmed), allocated zeroes, hole, the partial block');
  const blk = WireClient.readBytes(await c.request(CMD.READ, 5 * MiB, 4096, FLAG.DF), 5 * MiB, 4096);
  t.ok(blk.subarray(0, 512).every((x) => x === 1) && blk.subarray(512).every((x) => x === 0), 'partial write padded with zeroes');
  const z = WireClient.readBytes(await c.request(CMD.READ, MiB, 2 * MiB, FLAG.DF), MiB, 2 * MiB);
  t.ok(z.every((x) => x === 0), 'trimmed and zeroed ranges read as zeroes');
  const u = WireClient.readBytes(await c.request(CMD.READ, 6 * MiB, 4096, FLAG.DF), 6 * MiB, 4096);
  t.ok(u.every((x) => x === 0) || u.every((x) => x === 0xee), 'the unflushed write is either there or not, never torn into junk');
  c.destroy();
});
