import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { M, ioOk, qemuIo, regionIs } from '../helpers/api.js';
import { cli } from '../helpers/cli.js';
import { CMD, WireClient } from '../helpers/nbd-wire.js';
import { TOKEN, startServer, type TestServer } from '../helpers/server.js';
import { ROOT, requireTools, run } from '../helpers/tools.js';

requireTools('qemu-io');

// `blockgate serve` options the README documents, each with what it promises:
// --io-route piscina|batch and --cache-block serve the same bytes durably; the
// cache writes back on its own (no FLUSH) and, at its dirty limit, sends
// write-back writes to the array instead (dirtyBypasses in /metrics); running out of space is 507 NO_SPACE and exit 8 in the CLI.

async function cacheStats(s: TestServer): Promise<Record<string, number>> {
  const text = await (await fetch(`${s.api}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^blockgate_cache\{stat="(\w+)"\} (\S+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

/** Threads of a process (Linux). */
function threadCount(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/task`).length;
}

/** Polls until cond holds (bounded: a hang guard, not a timing check). */
async function until(what: string, cond: () => Promise<boolean> | boolean, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('--io-route piscina --cache-block 4K: same bytes, flushed data survives kill -9', async (t) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-route-'));
  t.teardown(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const args = ['--io-route', 'piscina', '--cache-block', '4K'];
  const s = await startServer(t, { dataDir, args });
  t.equal((await cacheStats(s)).blockSize, 4096, 'the cache uses 4 KiB blocks');
  // Unaligned to the cache block on purpose: partial blocks go through the route's read-modify-write.
  t.ok(ioOk(await qemuIo(s, 'demo', '0/0', 'write -P 0x6a 1000 300000', 'write -P 0x6b 8M 1M', 'flush')));
  t.ok(ioOk(await qemuIo(s, 'demo', '0/0', 'read -P 0 0 1000', 'read -P 0x6a 1000 300000', 'read -P 0 301000 4096', 'read -P 0x6b 8M 1M')), 'reads back through the cache');
  await s.kill();
  const s2 = await startServer(t, { dataDir, args });
  t.ok(ioOk(await qemuIo(s2, 'demo', '0/0', 'read -P 0x6a 1000 300000', 'read -P 0x6b 8M 1M')), 'and from the arrays after kill -9');
  // The route is not visible in the API; its worker threads are. The same I/O
  // on the libuv route runs on the process's own threads only.
  const piscinaThreads = threadCount(s2.pid);
  await s2.stop();
  const s3 = await startServer(t, { dataDir, args: ['--cache-block', '4K', '--io-route', 'libuv'] });
  t.ok(ioOk(await qemuIo(s3, 'demo', '0/0', 'read -P 0x6a 1000 300000', 'read -P 0x6b 8M 1M')), 'libuv route: same bytes');
  const libuvThreads = threadCount(s3.pid);
  t.ok(piscinaThreads >= libuvThreads + 4, `piscina's four I/O workers are running (${piscinaThreads} threads, ${libuvThreads} on the libuv route)`);
  await s3.stop();
  const bad = await run(process.execPath, [path.join(ROOT, 'dist/bin/blockgate.js'), 'serve', '--io-route', 'threads', '--data-dir', dataDir]);
  t.not(bad.code, 0, 'an unknown route is refused');
  t.match(bad.stderr, /--io-route must be libuv, batch or piscina/);
});

t.test('--io-route batch (or BLOCKGATE_IO_ROUTE): flushed data survives kill -9, a clean stop writes back the rest', async (t) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-route-'));
  t.teardown(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const s = await startServer(t, { dataDir, args: ['--io-route', 'batch'] });
  t.ok(ioOk(await qemuIo(s, 'demo', '0/0', 'write -P 0x71 4096 300000', 'write -P 0x72 8M 1M', 'flush')));
  await s.kill();
  const s2 = await startServer(t, { dataDir, env: { BLOCKGATE_IO_ROUTE: 'batch' } });
  t.ok(ioOk(await qemuIo(s2, 'demo', '0/0', 'read -P 0x71 4096 300000', 'read -P 0x72 8M 1M')), 'flushed bytes are on the arrays after kill -9');
  const threads = threadCount(s2.pid);
  // Never flushed: only the clean stop's write-back, through the route's workers, puts it on the arrays.
  t.ok(ioOk(await qemuIo(s2, 'demo', '0/0', 'write -P 0x73 16M 2M')));
  await s2.stop();
  const s3 = await startServer(t, { dataDir, env: { BLOCKGATE_IO_ROUTE: 'libuv' } });
  t.ok(ioOk(await qemuIo(s3, 'demo', '0/0', 'read -P 0x73 16M 2M', 'read -P 0x71 4096 300000')), 'a clean stop waited for the batched write-back');
  t.ok(threads >= threadCount(s3.pid) + 2, `the batch route's two workers ran (${threads} threads vs ${threadCount(s3.pid)} on libuv)`);
  await s3.stop();
});

t.test('write-back runs without a FLUSH; dirty data stays within the dirty limit', async (t) => {
  const s = await startServer(t, { args: ['--cache-size', '16M'] });
  const tr = await s.call('GET', '/v1/trace/hosts/demo/units/0/0');
  const { file, arrayOffset } = tr.segments[0];
  const before = await cacheStats(s);
  // 48 MiB in 64 KiB writes (large ones bypass the cache) through a 16 MiB cache, never flushed.
  const c = await (await WireClient.connect({ path: s.socket('demo') })).open('0/0');
  const chunk = Buffer.alloc(64 * 1024, 0x4d);
  let errors = 0;
  for (let off = 0; off < 48 * M; off += chunk.length) if ((await c.request(CMD.WRITE, off, chunk.length, 0, chunk)).error !== 0) errors++;
  c.destroy();
  t.equal(errors, 0, 'every write acknowledged');
  const after = await cacheStats(s);
  t.ok(after.dirtyBytes! <= after.capacityBytes! / 2, `dirty bytes stay within half the cache (${after.dirtyBytes} of ${after.capacityBytes})`);
  // The rest reaches the array by the background schedule alone.
  await until('background write-back', async () => (await cacheStats(s)).dirtyBytes === 0);
  t.ok(regionIs(file, arrayOffset, 48 * M, 0x4d), 'every byte is on the array file without a FLUSH');
  t.ok((await cacheStats(s)).writebacks! > before.writebacks!, 'written back by the cache');
});

t.test('at the dirty limit (half the cache) writes go to the array, and dirty data stays bounded', async (t) => {
  // The fault point writeback-hold (docs/faults.md) keeps background
  // write-back from running: without it a quiet machine's write-back keeps up
  // and the limit is never reached. So dirty data reaches the limit, and every
  // write past it must reach the array by itself.
  const s = await startServer(t, { args: ['--cache-size', '16M'], env: { BLOCKGATE_FAULTS: 'writeback-hold' } });
  const tr = await s.call('GET', '/v1/trace/hosts/demo/units/0/0');
  const { file, arrayOffset } = tr.segments[0];
  const sessions = 2;
  const span = 32 * M;
  const clients = await Promise.all(Array.from({ length: sessions }, async () => (await WireClient.connect({ path: s.socket('demo') })).open('0/0')));
  t.teardown(() => clients.forEach((c) => c.destroy()));
  const before = await cacheStats(s);
  const limit = before.capacityBytes! / 2;
  const chunk = 64 * 1024;
  const depth = 16;
  const total = span / chunk;
  let errors = 0;
  let maxDirty = 0;
  let writing = true;
  const sampler = (async () => {
    while (writing) {
      maxDirty = Math.max(maxDirty, (await cacheStats(s)).dirtyBytes!);
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  const fill = 0x2a;
  const payload = Buffer.alloc(chunk, fill);
  // Every reply read has the wire client's deadline: a writer never released fails the test.
  const writeSpan = async (c: WireClient, base: number): Promise<void> => {
    let sent = 0;
    while (sent < Math.min(depth, total)) c.send(CMD.WRITE, base + sent++ * chunk, chunk, 0, payload);
    for (let answered = 0; answered < total; answered++) {
      if ((await c.reply()).error !== 0) errors++;
      if (sent < total) c.send(CMD.WRITE, base + sent++ * chunk, chunk, 0, payload);
    }
  };
  try {
    await Promise.all(clients.map((c, i) => writeSpan(c, i * span)));
  } finally {
    writing = false;
    await sampler;
  }
  const stats = await cacheStats(s);
  t.equal(errors, 0, 'every write acknowledged');
  const bypassed = stats.dirtyBypasses! - before.dirtyBypasses!;
  t.ok(bypassed >= sessions * span / chunk - limit / chunk - 2 * depth, `writes past the limit went to the array (${bypassed} of ${sessions * span / chunk} at QD ${depth})`);
  t.equal(stats.writebacks, before.writebacks, 'nothing was written back (held): the writes carried their own bytes');
  // The limit is checked when a write is admitted: one admitted just under it
  // (or queued behind its block's load) may still dirty its block, so the
  // bound seen is the limit plus a few blocks, never the whole cache.
  t.ok(maxDirty < stats.capacityBytes!, `dirty data never filled the cache (max ${maxDirty}, limit ${limit}, cache ${stats.capacityBytes})`);
  t.equal((await clients[0]!.request(CMD.FLUSH, 0, 0)).error, 0, 'flush');
  t.ok(regionIs(file, arrayOffset, sessions * span, fill), 'every write landed');
});

t.test('out of space: 507 NO_SPACE from the API, exit 8 from the CLI, nothing allocated', async (t) => {
  const s = await startServer(t, { demo: false });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '64M' });
  const r = await s.request('POST', '/v1/volumes', { name: 'huge', size: '1G' });
  t.equal(r.status, 507);
  t.equal(r.body.error.code, 'NO_SPACE');
  t.match(r.body.error.message, /space|free/i, r.body.error.message);
  const c = await cli(s, ['volume', 'create', 'huge', '--size', '1G']);
  t.equal(c.code, 8, 'exit code 8: no space');
  t.match(c.stderr, /space|free/i);
  t.same((await s.call('GET', '/v1/volumes')).volumes, [], 'no volume was created');
  t.equal((await s.call('GET', '/v1/arrays')).arrays[0].free, 64 * M, 'no space was taken');
});
