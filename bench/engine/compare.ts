/**
 * The engine/cache side-by-side: fio's NBD engine over a unix socket against
 * `blockgate serve` and nbdkit's file plugin on a file of the same size, in
 * the same run, alternating targets job by job. Prints a table and JSON.
 *
 *   node dist/bench/engine/compare.js [--runtime 10] [--cache-block 64K] [--io-route libuv] [--cache-size 512M]
 *
 * Numbers and the machine they came from are kept in docs/engine.md.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const SIZE = 256 * 1024 * 1024;

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : dflt;
}
const runtime = Number(arg('runtime', '10'));
const cacheSize = arg('cache-size', '512M');
const cacheBlock = arg('cache-block', '64K');
const ioRoute = arg('io-route', 'libuv');
const only = arg('only', '');

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (check()) return;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

interface Blockgate {
  child: ChildProcess;
  pid: number;
  sock: string;
}

async function startBlockgate(dir: string): Promise<Blockgate> {
  const runFile = path.join(dir, 'run.json');
  fs.rmSync(runFile, { force: true });
  const child = spawn(
    process.execPath,
    [path.join(ROOT, 'dist/bin/blockgate.js'), 'serve', '--data-dir', dir, '--api', '127.0.0.1:0', '--nbd', '127.0.0.1:0', '--iscsi', '127.0.0.1:0', '--api-token', 'bench', '--log-level', 'warn', '--cache-size', cacheSize, '--cache-block', cacheBlock, '--io-route', ioRoute],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  await waitFor(() => fs.existsSync(runFile), 'blockgate');
  return { child, pid: child.pid!, sock: path.join(dir, 'sockets', 'demo.sock') };
}

async function stop(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const done = new Promise((r) => c.once('exit', r));
  c.kill('SIGTERM');
  await done;
}

async function api(dir: string, method: string, url: string, body: unknown): Promise<void> {
  const info = JSON.parse(fs.readFileSync(path.join(dir, 'run.json'), 'utf8')) as { api: string };
  const r = await fetch(info.api + url, { method, headers: { authorization: 'Bearer bench', 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (!r.ok) throw new Error(`${method} ${url}: ${r.status} ${await r.text()}`);
}

function rssKiB(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

interface Result {
  iops: number;
  mibs: number;
}

function fio(uri: string, job: string[], seconds: number): Result {
  const r = spawnSync('fio', ['--name=j', '--ioengine=nbd', `--uri=${uri}`, '--output-format=json', `--size=${SIZE}`, ...job, ...(seconds > 0 ? ['--time_based', `--runtime=${seconds}`, '--ramp_time=2'] : [])], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  if (r.status !== 0) throw new Error(`fio failed: ${r.stderr}`);
  const j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: { read: { iops: number; bw: number }; write: { iops: number; bw: number } }[] };
  const x = j.jobs[0]!;
  const rw = x.read.iops > 0 ? x.read : x.write;
  return { iops: rw.iops, mibs: rw.bw / 1024 };
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-bench-'));
  const img = path.join(dir, 'nbdkit.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, SIZE);
  const kitSock = path.join(dir, 'nbdkit.sock');
  const kit = spawn('nbdkit', ['-f', '-U', kitSock, 'file', img], { stdio: 'inherit' });
  await waitFor(() => fs.existsSync(kitSock), 'nbdkit');

  // A second 256 MiB volume with cache policy none, next to the default (write-back) demo volume.
  let bg = await startBlockgate(dir);
  await api(dir, 'POST', '/v1/arrays', { name: 'bench1', size: '1G' });
  await api(dir, 'POST', '/v1/volumes', { name: 'bench-none', size: SIZE, layout: [{ array: 'bench1', size: SIZE }] });
  await api(dir, 'POST', '/v1/bindings', { volume: 'bench-none', host: 'demo', target: 0, lun: 1 });
  await stop(bg.child);
  const db = new Database(path.join(dir, 'blockgate.db'));
  db.prepare("UPDATE volumes SET cache_policy = 'none' WHERE name = 'bench-none'").run();
  db.close();
  bg = await startBlockgate(dir);

  const targets = {
    blockgate: `nbd+unix:///0/0?socket=${bg.sock}`,
    'blockgate-none': `nbd+unix:///0/1?socket=${bg.sock}`,
    nbdkit: `nbd+unix:///?socket=${kitSock}`,
  };
  // Fill every target so reads see data, not holes; this pass also warms the cache.
  for (const uri of Object.values(targets)) fio(uri, ['--rw=write', '--bs=1m', '--iodepth=8'], 0);

  let maxRss = 0;
  const poll = setInterval(() => (maxRss = Math.max(maxRss, rssKiB(bg.pid))), 200);
  const jobs: { name: string; job: string[]; ours: keyof typeof targets; target: number }[] = [
    { name: '4k randread QD32 (cached)', job: ['--rw=randread', '--bs=4k', '--iodepth=32'], ours: 'blockgate', target: 1.0 },
    { name: '4k randwrite QD32 (write-back)', job: ['--rw=randwrite', '--bs=4k', '--iodepth=32'], ours: 'blockgate', target: 0.8 },
    { name: '1M read QD8', job: ['--rw=read', '--bs=1m', '--iodepth=8'], ours: 'blockgate', target: 0.8 },
    { name: '1M write QD8', job: ['--rw=write', '--bs=1m', '--iodepth=8'], ours: 'blockgate', target: 0.8 },
    { name: '4k randread QD32 (policy none)', job: ['--rw=randread', '--bs=4k', '--iodepth=32'], ours: 'blockgate-none', target: 0.6 },
  ];
  const rows: Record<string, unknown>[] = [];
  for (const j of jobs) {
    if (only && !j.name.includes(only)) continue;
    const theirs = fio(targets.nbdkit, j.job, runtime);
    const ours = fio(targets[j.ours], j.job, runtime);
    const ratio = ours.iops / theirs.iops;
    rows.push({ job: j.name, blockgate_iops: Math.round(ours.iops), nbdkit_iops: Math.round(theirs.iops), blockgate_mibs: Math.round(ours.mibs), nbdkit_mibs: Math.round(theirs.mibs), ratio: Number(ratio.toFixed(2)), target: j.target, met: ratio >= j.target });
  }
  clearInterval(poll);
  maxRss = Math.max(maxRss, rssKiB(bg.pid));
  await stop(bg.child);
  await stop(kit);
  fs.rmSync(dir, { recursive: true, force: true });

  const header = `blockgate vs nbdkit file plugin — fio nbd engine, unix socket, ${SIZE / 2 ** 20} MiB, runtime ${runtime}s; cache ${cacheSize}, block ${cacheBlock}, route ${ioRoute}; ${os.cpus().length} CPUs, load ${os.loadavg()[0]!.toFixed(1)}`;
  console.log(header);
  console.log('| job | blockgate IOPS | nbdkit IOPS | ratio | target | met |');
  console.log('| --- | ---: | ---: | ---: | ---: | --- |');
  for (const r of rows) console.log(`| ${r.job} | ${r.blockgate_iops} | ${r.nbdkit_iops} | ${r.ratio} | ${r.target} | ${r.met ? 'yes' : 'no'} |`);
  console.log(`max blockgate RSS during the jobs: ${(maxRss / 1024).toFixed(0)} MiB (cache ${cacheSize}; bound = cache + 200 MiB)`);
  console.log(JSON.stringify({ header, rows, maxRssMiB: Math.round(maxRss / 1024) }));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
