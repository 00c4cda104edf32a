/**
 * Micro-bench for the cache's miss route: random preadv/pwritev of one cache
 * block into SharedArrayBuffer slots at queue depth 32, through libuv's pool
 * (fs.readv/fs.writev), through a piscina worker pool and through batches
 * per loop turn to worker threads (the batch route), for 4 KiB and
 * 64 KiB blocks, on a page-cached 256 MiB file. Also measures how much the
 * main thread spends per operation (event-loop utilisation), since that is
 * the budget the NBD codec shares.
 *
 *   node dist/bench/engine/route.js [--seconds 3] [--qd 32]
 *
 * Results are kept in docs/engine.md.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Slab } from '../../cache/slab.js';
import { ArrayFile, BatchRoute, LibuvRoute, PiscinaRoute, type IoRoute } from '../../disks/index.js';

const FILE_SIZE = 256 * 1024 * 1024;
const arg = (name: string, d: number): number => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : d;
};
const QD = arg('--qd', 32);
const seconds = arg('--seconds', 3);

async function measure(route: IoRoute, a: ArrayFile, blockSize: number, op: 'readv' | 'writev'): Promise<{ ops: number; elu: number }> {
  const slab = new Slab(QD * blockSize, blockSize);
  const blocks = FILE_SIZE / blockSize;
  let seed = 12345;
  const next = (): number => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % blocks;
  };
  let ops = 0;
  const deadline = performance.now() + seconds * 1000;
  const elu0 = performance.eventLoopUtilization();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: QD }, async (_, lane) => {
      const buf = [slab.view(lane) as Uint8Array];
      while (performance.now() < deadline) {
        await route[op](a, buf, blockSize, next() * blockSize);
        ops++;
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  const elu = performance.eventLoopUtilization(elu0).utilization;
  return { ops: ops / elapsed, elu };
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-route-'));
  const file = path.join(dir, 'a.img');
  const fd = fs.openSync(file, 'w');
  const chunk = Buffer.alloc(1024 * 1024, 0x5a);
  for (let o = 0; o < FILE_SIZE; o += chunk.length) fs.writeSync(fd, chunk, 0, chunk.length, o);
  fs.closeSync(fd);
  const a = new ArrayFile(1, 'bench', file, FILE_SIZE);
  await a.open(false);
  const routes: [string, () => IoRoute][] = [
    [`libuv (UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? 4})`, () => new LibuvRoute()],
    ['piscina 2 threads', () => new PiscinaRoute(2)],
    ['piscina 4 threads', () => new PiscinaRoute(4)],
    ['batch 2 threads', () => new BatchRoute(2)],
    ['batch 1 thread', () => new BatchRoute(1)],
  ];
  console.log(`| route | block | op | ops/s | main-thread busy | main-thread µs/op |`);
  console.log(`| --- | ---: | --- | ---: | ---: | ---: |`);
  for (const [name, make] of routes) {
    const r = make();
    // Warm-up: worker start-up is not what we are measuring.
    await measure(r, a, 4096, 'readv');
    for (const bs of [4096, 65536]) {
      for (const op of ['readv', 'writev'] as const) {
        const m = await measure(r, a, bs, op);
        console.log(`| ${name} | ${bs / 1024}K | ${op} | ${Math.round(m.ops)} | ${(m.elu * 100).toFixed(0)}% | ${((m.elu * 1e6) / m.ops).toFixed(1)} |`);
      }
    }
    await r.close();
  }
  await a.close();
  fs.rmSync(dir, { recursive: true, force: true });
  console.log(`QD ${QD}; ${os.cpus().length} CPUs, load ${os.loadavg()[0]!.toFixed(1)}, ${seconds}s per cell`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
