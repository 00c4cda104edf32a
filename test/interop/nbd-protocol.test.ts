import t from 'tap';
import { TOKEN, startServer } from '../helpers/server.js';
import { CMD, ERR, FLAG, OPT, REP, TFLAG, WireClient } from '../helpers/nbd-wire.js';

// Wire-level checks of the parts of the protocol real clients rarely exercise
// on purpose: meta contexts, block status, zeroing flags, error replies,
// read-only units, out-of-order replies. One server for the whole file.

const MiB = 1024 * 1024;
const s = await startServer(t);
await s.call('POST', '/v1/volumes', { name: 'ro', size: '16M' });
await s.call('POST', '/v1/bindings', { volume: 'ro', host: 'demo', target: 0, lun: 1, mode: 'read-only' });
const sock = { path: s.socket('demo') };
const connect = (): Promise<WireClient> => WireClient.connect(sock);

t.test('INFO carries size, block size limits and a description with serial and NAA', async (t) => {
  const vol = await s.call('GET', '/v1/volumes/demo-boot');
  const c = await connect();
  await c.greet();
  const r = await c.option(OPT.INFO, WireClient.infoRequest('0/0', [1, 2, 3]));
  t.equal(r[r.length - 1]!.type, REP.ACK);
  const infos = new Map(r.filter((x) => x.type === REP.INFO).map((x) => [x.data.readUInt16BE(0), x.data.subarray(2)]));
  t.equal(infos.get(0)!.readBigUInt64BE(0), 256n * BigInt(MiB));
  const bs = infos.get(3)!;
  t.same([bs.readUInt32BE(0), bs.readUInt32BE(4), bs.readUInt32BE(8)], [1, 4096, 32 * MiB], 'min 1, preferred 4096, max 32 MiB');
  const desc = infos.get(2)!.toString();
  t.match(desc, vol.serial);
  t.match(desc, vol.naa);
  c.destroy();
});

t.test('meta contexts: list, wildcard, select, refusals', async (t) => {
  const c = await connect();
  await c.greet();
  let r = await c.option(OPT.LIST_META_CONTEXT, WireClient.metaRequest('0/0', []));
  t.equal(r[0]!.type, REP.ERR_INVALID, 'LIST before structured replies is refused');
  await c.structuredReplies();
  r = await c.option(OPT.LIST_META_CONTEXT, WireClient.metaRequest('0/0', []));
  t.same(r.map((x) => x.type), [REP.META_CONTEXT, REP.ACK]);
  t.equal(r[0]!.data.toString('utf8', 4), 'base:allocation');
  t.equal(r[0]!.data.readUInt32BE(0), 0, 'LIST uses context id 0');
  r = await c.option(OPT.LIST_META_CONTEXT, WireClient.metaRequest('0/0', ['base:']));
  t.same(r.map((x) => x.type), [REP.META_CONTEXT, REP.ACK], '"base:" lists base:allocation');
  r = await c.option(OPT.LIST_META_CONTEXT, WireClient.metaRequest('0/0', ['qemu:dirty-bitmap:x']));
  t.same(r.map((x) => x.type), [REP.ACK], 'unknown namespaces are ignored');
  r = await c.option(OPT.SET_META_CONTEXT, WireClient.metaRequest('9/9', ['base:allocation']));
  t.equal(r[0]!.type, REP.ERR_UNKNOWN, 'no such export');
  r = await c.option(OPT.SET_META_CONTEXT, WireClient.metaRequest('0/0', ['base:']));
  t.same(r.map((x) => x.type), [REP.ACK], '"base:" selects nothing in SET');
  const bad = WireClient.metaRequest('0/0', ['base:allocation']);
  bad.writeUInt32BE(5, 7); // query count larger than the data
  r = await c.option(OPT.SET_META_CONTEXT, bad);
  t.equal(r[0]!.type, REP.ERR_INVALID, 'malformed query list');
  r = await c.option(OPT.SET_META_CONTEXT, WireClient.metaRequest('0/0', ['base:allocation']));
  t.same(r.map((x) => x.type), [REP.META_CONTEXT, REP.ACK]);
  t.equal(r[0]!.data.readUInt32BE(0), 1);
  c.destroy();
});

t.test('BLOCK_STATUS needs a selected context for the chosen export', async (t) => {
  const c = await connect();
  await c.open('0/0', { meta: false });
  const r = await c.request(CMD.BLOCK_STATUS, 0, 4096);
  t.equal(r.error, ERR.EINVAL);
  t.equal(r.chunks[0]!.type, 0x8001, 'a structured error chunk');
  t.match(r.chunks[0]!.data.toString('utf8', 6), /context/);
  c.destroy();
  const d = await connect();
  await d.greet();
  await d.structuredReplies();
  await d.option(OPT.SET_META_CONTEXT, WireClient.metaRequest('0/1', ['base:allocation']));
  await d.go('0/0');
  t.equal((await d.request(CMD.BLOCK_STATUS, 0, 4096)).error, ERR.EINVAL, 'context was set for another export');
  d.destroy();
});

t.test('allocation: writes, zeroes, trims and their block status', async (t) => {
  const c = await connect();
  await c.open('0/0');
  const base = 8 * MiB;
  t.same(WireClient.extents(await c.request(CMD.BLOCK_STATUS, base, MiB)), [{ length: MiB, flags: 3 }], 'never written: hole+zero');
  const data = Buffer.alloc(8192, 0x5a);
  t.equal((await c.request(CMD.WRITE, base + 4096, 8192, 0, data)).error, 0);
  t.same(WireClient.extents(await c.request(CMD.BLOCK_STATUS, base, MiB)), [
    { length: 4096, flags: 3 },
    { length: 8192, flags: 0 },
    { length: MiB - 12288, flags: 3 },
  ]);
  t.same(WireClient.extents(await c.request(CMD.BLOCK_STATUS, base, MiB, FLAG.REQ_ONE)), [{ length: 4096, flags: 3 }], 'REQ_ONE gives one extent');

  // Sparse structured read: the holes come back as OFFSET_HOLE chunks.
  const rd = await c.request(CMD.READ, base, 16384);
  t.same(rd.chunks.map((x) => x.type), [2, 1, 2]);
  const got = WireClient.readBytes(rd, base, 16384);
  t.ok(got.subarray(0, 4096).every((b) => b === 0) && got.subarray(4096, 12288).every((b) => b === 0x5a) && got.subarray(12288).every((b) => b === 0));
  const df = await c.request(CMD.READ, base, 16384, FLAG.DF);
  t.same(df.chunks.map((x) => x.type), [1], 'DF: one data chunk');

  t.equal((await c.request(CMD.WRITE_ZEROES, base + 4096, 4096, FLAG.NO_HOLE)).error, 0);
  t.equal((await c.request(CMD.WRITE_ZEROES, base + 8192, 4096)).error, 0);
  t.same(WireClient.extents(await c.request(CMD.BLOCK_STATUS, base, 16384)), [
    { length: 4096, flags: 3 },
    { length: 4096, flags: 2 },
    { length: 8192, flags: 3 },
  ], 'NO_HOLE zeroes stay allocated (ZERO), plain zeroes become holes');

  await c.request(CMD.WRITE, base, 4096, 0, Buffer.alloc(4096, 1));
  const fz = await c.request(CMD.WRITE_ZEROES, base + 100, 200, FLAG.FAST_ZERO);
  t.equal(fz.error, ERR.ENOTSUP, 'FAST_ZERO inside a data block fails fast');
  const fz2 = await c.request(CMD.WRITE_ZEROES, base, 4096, FLAG.FAST_ZERO | FLAG.FUA);
  t.equal(fz2.error, 0, 'FAST_ZERO of whole blocks is fast');
  await c.request(CMD.WRITE, base, 4096, 0, Buffer.alloc(4096, 1));
  t.equal((await c.request(CMD.WRITE_ZEROES, base + 100, 200)).error, 0, 'partial zeroing writes zeroes');
  const part = WireClient.readBytes(await c.request(CMD.READ, base, 4096), base, 4096);
  t.ok(part.subarray(100, 300).every((b) => b === 0) && part[99] === 1 && part[300] === 1);

  t.equal((await c.request(CMD.TRIM, base, 4096)).error, 0);
  t.same(WireClient.extents(await c.request(CMD.BLOCK_STATUS, base, 4096)), [{ length: 4096, flags: 3 }], 'trimmed: hole');
  const trimmed = await c.request(CMD.READ, base, 4096);
  t.same(trimmed.chunks.map((x) => x.type), [2], 'a trimmed block reads as one hole chunk');

  // A partial write into a hole leaves the rest of the block zero.
  await c.request(CMD.WRITE, base + 512, 512, 0, Buffer.alloc(512, 7));
  const pw = WireClient.readBytes(await c.request(CMD.READ, base, 4096, FLAG.DF), base, 4096);
  t.ok(pw.subarray(0, 512).every((b) => b === 0) && pw.subarray(512, 1024).every((b) => b === 7) && pw.subarray(1024).every((b) => b === 0));
  t.equal((await c.request(CMD.CACHE, base, MiB)).error, 0, 'CACHE');
  t.equal((await c.request(CMD.FLUSH, 0, 0)).error, 0);
  c.destroy();
});

t.test('CACHE loads the range into the RAM cache: the reads that follow are hits', async (t) => {
  // A server of its own, restarted so the cache starts empty over data that is on disk.
  const own = await startServer(t);
  const w = await (await WireClient.connect({ path: own.socket('demo') })).open('0/0');
  const at = 8 * MiB;
  t.equal((await w.request(CMD.WRITE, at, MiB, 0, Buffer.alloc(MiB, 0x5c))).error, 0);
  t.equal((await w.request(CMD.FLUSH, 0, 0)).error, 0);
  w.destroy();
  await own.stop();
  await own.start();
  const cache = async (): Promise<Record<string, number>> => {
    const text = await (await fetch(`${own.api}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
    const out: Record<string, number> = {};
    for (const m of text.matchAll(/^blockgate_cache\{stat="(\w+)"\} (\S+)$/gm)) out[m[1]!] = Number(m[2]);
    return out;
  };
  const c = await (await WireClient.connect({ path: own.socket('demo') })).open('0/0');
  const before = await cache();
  t.equal((await c.request(CMD.CACHE, at, MiB)).error, 0, 'CACHE answered');
  const warmed = await cache();
  t.ok(warmed.loads! > before.loads!, `blocks loaded from the array (${before.loads} → ${warmed.loads})`);
  t.ok(warmed.cachedBytes! >= before.cachedBytes! + MiB, 'the whole range is resident');
  const r = await c.request(CMD.READ, at, MiB, FLAG.DF);
  t.ok(WireClient.readBytes(r, at, MiB).every((b) => b === 0x5c), 'the data');
  const after = await cache();
  t.equal(after.misses, warmed.misses, 'the read after CACHE missed nothing');
  t.ok(after.hits! > warmed.hits!, 'it was served from the cache');
  c.destroy();
});

t.test('errors: ranges, flags, unknown commands (simple and structured)', async (t) => {
  for (const structured of [false, true]) {
    const c = await connect();
    await c.open('0/0', { structured });
    const size = Number(c.size);
    const e = async (type: number, off: number, len: number, flags = 0, payload?: Buffer): Promise<number> => (await c.request(type, off, len, flags, payload)).error;
    t.equal(await e(CMD.READ, size - 512, 1024), ERR.EINVAL, 'read past the end');
    t.equal(await e(CMD.READ, 2 ** 62, 512), ERR.EINVAL, 'huge offset');
    t.equal(await e(CMD.WRITE, size - 512, 1024, 0, Buffer.alloc(1024)), ERR.ENOSPC, 'write past the end');
    t.equal(await e(CMD.WRITE_ZEROES, size, 4096), ERR.ENOSPC, 'zeroes past the end');
    t.equal(await e(CMD.TRIM, size, 4096), ERR.EINVAL, 'trim past the end');
    t.equal(await e(CMD.CACHE, size, 4096), ERR.EINVAL, 'cache past the end');
    t.equal(await e(CMD.FLUSH, 4096, 0), ERR.EINVAL, 'flush with an offset');
    t.equal(await e(CMD.READ, 0, 4096, FLAG.NO_HOLE), ERR.EINVAL, 'NO_HOLE on READ');
    t.equal(await e(CMD.WRITE, 0, 512, FLAG.REQ_ONE, Buffer.alloc(512)), ERR.EINVAL, 'REQ_ONE on WRITE');
    t.equal(await e(99, 0, 0), ERR.EINVAL, 'unknown command');
    t.equal(await e(CMD.READ, 0, 64 * 1024 * 1024), ERR.EINVAL, 'read larger than the maximum payload');
    if (!structured) t.equal(await e(CMD.READ, 0, 512, FLAG.DF), ERR.EINVAL, 'DF needs structured replies');
    t.equal(await e(CMD.READ, 0, 512), 0, 'still in step after all of that');
    c.destroy();
  }
});

t.test('read-only unit: flag set, every write refused with EPERM', async (t) => {
  const c = await connect();
  await c.open('0/1');
  t.ok(c.flags & TFLAG.READ_ONLY, 'READ_ONLY advertised');
  t.notOk(c.flags & TFLAG.SEND_TRIM, 'no TRIM on a read-only unit');
  t.equal((await c.request(CMD.WRITE, 0, 512, 0, Buffer.alloc(512))).error, ERR.EPERM);
  t.equal((await c.request(CMD.TRIM, 0, 4096)).error, ERR.EPERM);
  t.equal((await c.request(CMD.WRITE_ZEROES, 0, 4096)).error, ERR.EPERM);
  t.equal((await c.request(CMD.READ, 0, 4096)).error, 0);
  t.equal((await c.request(CMD.FLUSH, 0, 0)).error, 0);
  c.destroy();
});

t.test('replies come out of order', async (t) => {
  const w = await connect();
  await w.open('0/0');
  await w.request(CMD.WRITE, 16 * MiB, MiB, 0, Buffer.alloc(MiB, 3));
  w.destroy();
  // A cache hit is answered at once, in order: restart (shutdown writes back)
  // so the cache is cold and the read needs the disk.
  await s.stop();
  await s.start();
  const c = await connect();
  await c.open('0/0');
  // Block status is answered from memory at once.
  // Both in one segment, so the server parses them in the same turn.
  c.sock.cork();
  const rd = c.send(CMD.READ, 16 * MiB, MiB);
  const bs = c.send(CMD.BLOCK_STATUS, 0, 4096);
  c.sock.uncork();
  const first = await c.reply(new Map([[rd, MiB]]));
  const second = await c.reply(new Map([[rd, MiB]]));
  t.equal(first.cookie, bs, 'the later request is answered first');
  t.equal(second.cookie, rd);
  c.destroy();
});

t.test('option handling: unknown, too long, flood, bad magic', async (t) => {
  const c = await connect();
  await c.greet();
  t.equal((await c.option(0x7654321))[0]!.type, REP.ERR_UNSUP, 'unknown option');
  t.equal((await c.option(OPT.LIST, Buffer.alloc(200 * 1024)))[0]!.type, REP.ERR_TOO_BIG, 'oversized option skipped');
  const l = await c.option(OPT.LIST);
  t.same(l.map((x) => x.type), [REP.SERVER, REP.SERVER, REP.ACK], 'still in step: lists both units');
  c.destroy();

  const f = await connect();
  await f.greet();
  let n = 0;
  try {
    for (; n < 1000; n++) await f.option(0x7654321);
  } catch {
    /* disconnected */
  }
  t.ok(n >= 200 && n < 1000, `option flood cut off after ${n} options`);

  const m = await connect();
  await m.open('0/0');
  m.sock.write(Buffer.alloc(28, 0xee));
  t.ok(await m.closed(), 'bad request magic disconnects');
  t.equal((await (await connect()).open('0/0')).size, 256n * BigInt(MiB), 'server still serves');
});

t.test('a whole session sent one byte per segment parses the same', async (t) => {
  const c = await connect();
  const g = await c.reader.read(18);
  t.equal(g.toString('latin1', 0, 8), 'NBDMAGIC');
  const parts: Buffer[] = [];
  const cf = Buffer.alloc(4);
  cf.writeUInt32BE(3);
  parts.push(cf);
  const opt = (o: number, d: Buffer): Buffer => {
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT', 0, 'latin1');
    h.writeUInt32BE(o, 8);
    h.writeUInt32BE(d.length, 12);
    return Buffer.concat([h, d]);
  };
  parts.push(opt(OPT.STRUCTURED_REPLY, Buffer.alloc(0)));
  parts.push(opt(OPT.SET_META_CONTEXT, WireClient.metaRequest('0/0', ['base:allocation'])));
  parts.push(opt(OPT.GO, WireClient.infoRequest('0/0', [3])));
  const req = (type: number, off: number, len: number, payload?: Buffer): Buffer => {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(BigInt(type + 100), 8);
    h.writeBigUInt64BE(BigInt(off), 16);
    h.writeUInt32BE(len, 24);
    return payload ? Buffer.concat([h, payload]) : h;
  };
  const data = Buffer.alloc(1500);
  for (let i = 0; i < data.length; i++) data[i] = (i * 13) & 0xff;
  parts.push(req(CMD.WRITE, 40 * MiB + 100, data.length, data));
  const all = Buffer.concat(parts);
  for (let i = 0; i < all.length; i++) {
    c.sock.write(all.subarray(i, i + 1));
    if (i % 64 === 0) await new Promise((r) => setImmediate(r));
  }
  const types: number[] = [];
  for (;;) {
    const r = await c.optionReply();
    types.push(r.type);
    if (r.option === OPT.GO && r.type === REP.ACK) break;
  }
  t.same(types.filter((x) => x === REP.META_CONTEXT).length, 1, 'context selected');
  const w = await c.reply();
  t.equal(w.error, 0, 'split write acknowledged');
  c.structured = true;
  const back = WireClient.readBytes(await c.request(CMD.READ, 40 * MiB + 100, data.length, FLAG.DF), 40 * MiB + 100, data.length);
  t.ok(back.equals(data), 'the write landed intact');
  c.destroy();
});
