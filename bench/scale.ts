/**
 * `npm run bench:scale`: cost as the work grows. Aggregate IOPS over more
 * connections and more hosts (beside nbdkit-file where it applies), RSS per
 * idle session and per mapped unit, start-up with 1,000 hosts, 10,000
 * volumes and a 64 TiB array, control API p99 while fio runs flat out,
 * list latency at 1,000 idle volumes. Prints a table and writes
 * docs/bench/scale.md. Options: --quick (smaller counts, short cells),
 * --out FILE, --only SECTIONS, --list-volumes N, --base-bin OLD_BUILD.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { RawNbd } from '../test/helpers/nbd-client.js';
import { machineInfo, versions } from './environment.js';
import { ProcessRegistry, waitListening, type Proc } from './procs.js';
import { TOKEN, api, startServer, waitRunFile } from './servers.js';
import { parseFioJson, statsFromFio } from './stats.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const MiB = 1024 * 1024;
const VOL = 64 * MiB;

const { values: opt } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    out: { type: 'string' },
    bin: { type: 'string' },
    only: { type: 'string' },
    hosts: { type: 'string' },
    volumes: { type: 'string' },
    'list-volumes': { type: 'string' },
    'base-bin': { type: 'string' },
  },
});
/** Another build to compare (its dist/bin/blockgate.js), and which sections to run (conns,hosts,api,startup). */
const BIN = opt.bin ?? path.join(ROOT, 'dist/bin/blockgate.js');
const ONLY = new Set((opt.only ?? 'conns,hosts,api,startup,list').split(','));
const quick = opt.quick;
/** The list section: GET /v1/volumes over this many idle volumes, for this build and (with --base-bin) an older one on the same data. */
const LIST_VOLUMES = Number(opt['list-volumes'] ?? (quick ? 200 : 1000));
const BASE_BIN = opt['base-bin'];
const RUNTIME_S = quick ? 1 : 4;
const CONNS = [1, 4, 16, 64];
const HOSTS = quick ? [1, 16] : [1, 16, 256];
const SEED = { hosts: Number(opt.hosts ?? (quick ? 100 : 1000)), volumes: Number(opt.volumes ?? (quick ? 1000 : 10000)) };
// Enough that the sessions outgrow the heap's slack: with 128, RSS did not move (0 KiB each).
const IDLE_SESSIONS = quick ? 16 : 1024;
const OUT = opt.out ?? path.join(ROOT, 'docs/bench/scale.md');

const reg = new ProcessRegistry();
const rows: string[] = [];
const log = (s: string): void => {
  process.stdout.write(s + '\n');
};

/** tmpfs when there is one: it holds a 64 TiB sparse file (ext4 stops at 16 TiB) and keeps disk noise out. */
const scratchRoot = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
const work = fs.mkdtempSync(path.join(scratchRoot, 'blockgate-scale-'));

function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

function loadavg(): string {
  return os.loadavg().map((x) => x.toFixed(2)).join(' ');
}

interface Blockgate {
  proc: Proc;
  base: string;
  dataDir: string;
}

async function startBg(dataDir: string, extra: string[] = [], bin = BIN): Promise<Blockgate & { startMs: number }> {
  await fs.promises.rm(path.join(dataDir, 'run.json'), { force: true });
  const t0 = performance.now();
  const args = [bin, 'serve', '--data-dir', dataDir, '--api', '127.0.0.1:0', '--nbd', '127.0.0.1:0', '--iscsi', '127.0.0.1:0', '--api-token', TOKEN, '--log-level', 'warn', '--no-demo', ...extra];
  const proc = reg.start('blockgate-scale', process.execPath, args);
  const info = await waitRunFile(dataDir, proc, reg);
  return { proc, base: info.api, dataDir, startMs: performance.now() - t0 };
}

const call = (b: Blockgate, method: string, url: string, body?: unknown): Promise<unknown> => api(b.base, method, url, body);

/** Runs `jobs` in parallel, `width` at a time. */
async function pool<T>(items: T[], width: number, job: (x: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) await job(items[next++]!);
    }),
  );
}

/** One host with its own volume at unit 0/0 (mapped): its socket. */
async function hostWithUnit(b: Blockgate, name: string, array: string, size = VOL): Promise<string> {
  await call(b, 'POST', '/v1/hosts', { name, farm: 'f' });
  await call(b, 'POST', '/v1/volumes', { name, size, farm: 'f', layout: [{ array, size }] });
  await call(b, 'POST', '/v1/bindings', { volume: name, host: name, target: 0, lun: 0, map: true });
  return path.join(b.dataDir, 'sockets', `${name}.sock`);
}

/** fio over several NBD URIs at once, one job (one connection) each; aggregate IOPS. */
/** With `spread`, job i works on [i × size, (i + 1) × size) of its export (many connections to one export, each its own share). */
async function fio(uris: string[], qd: number, rw = 'randrw', size = VOL - MiB, spread = false): Promise<number> {
  const jobFile = path.join(work, `scale-${uris.length}.fio`);
  const sections = uris.map((u, i) => `[j${i}]\nuri=${u}\n${spread ? `offset=${i * size}\n` : ''}`).join('');
  fs.writeFileSync(
    jobFile,
    `[global]\nioengine=nbd\nrw=${rw}\nrwmixread=50\nbs=4k\niodepth=${qd}\nsize=${size}\nnorandommap=1\ntime_based=1\nruntime=${RUNTIME_S}\nramp_time=0.5\ngroup_reporting=1\n${sections}`,
  );
  const out = path.join(work, 'fio.json');
  const p = reg.start('fio', 'fio', ['--output-format=json+', `--output=${out}`, jobFile]);
  const timer = setTimeout(() => void reg.stop(p, 2_000), (RUNTIME_S + 120) * 1000);
  const { code } = await p.exited.finally(() => clearTimeout(timer));
  if (code !== 0) throw new Error(`fio failed (${code}):\n${p.output()}`);
  const s = statsFromFio(parseFioJson(fs.readFileSync(out, 'utf8')));
  return s.iops;
}

function uriUnix(sock: string, name: string): string {
  return `nbd+unix:///${name}?socket=${sock}`;
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

const kib = (n: number): string => `${Math.round(n / 1024)} KiB`;
const mib = (n: number): string => `${(n / MiB).toFixed(1)} MiB`;

async function main(): Promise<void> {
  log(`blockgate scale bench (${quick ? 'quick' : 'full'}), scratch ${work}, load ${loadavg()}`);
  rows.push(`Machine: ${JSON.stringify(machineInfo())}; versions ${JSON.stringify(versions(ROOT))}; scratch on ${scratchRoot}; load at start ${loadavg()}.`, '');

  if (ONLY.has('conns') || ONLY.has('hosts') || ONLY.has('api')) await sessions();
  await startup();
  await lists();
}

async function lists(): Promise<void> {
  // ---- 5. GET /v1/volumes at LIST_VOLUMES idle volumes: this build, and an older one on the same data -----
  if (!ONLY.has('list')) return;
  const dir = path.join(work, 'bg-list');
  fs.mkdirSync(dir);
  let b = await startBg(dir);
  await call(b, 'POST', '/v1/farms', { name: 'f' });
  await call(b, 'POST', '/v1/arrays', { name: 'a', size: `${LIST_VOLUMES + 64}M` });
  await call(b, 'POST', '/v1/hosts', { name: 'h', farm: 'f' });
  const seedT0 = performance.now();
  const names = Array.from({ length: LIST_VOLUMES }, (_, i) => `l${i}`);
  await pool(names, 8, (v) => call(b, 'POST', '/v1/volumes', { name: v, size: '1M', farm: 'f' }));
  // A bound (every 10th, mapped every 20th) volume has bindings, units and a host that counts them.
  for (let i = 0; i < LIST_VOLUMES; i += 10) await call(b, 'POST', '/v1/bindings', { volume: names[i], host: 'h', target: 0, lun: i / 10, map: i % 20 === 0 });
  const seedS = (performance.now() - seedT0) / 1000;
  await reg.stop(b.proc);
  const samples = quick ? 10 : 30;
  const measure = async (label: string, bin: string, urls: string[]): Promise<string[]> => {
    b = await startBg(dir, [], bin);
    const out: string[] = [];
    for (const url of urls) {
      await call(b, 'GET', url);
      const ms: number[] = [];
      for (let i = 0; i < samples; i++) ms.push(await timed(() => call(b, 'GET', url)));
      out.push(`| ${label} | GET ${url} | ${pct(ms, 50).toFixed(1)} ms | ${pct(ms, 99).toFixed(1)} ms | ${loadavg()} |`);
      log(out.at(-1)!);
    }
    await reg.stop(b.proc);
    return out;
  };
  rows.push('', `## Listing ${LIST_VOLUMES} idle volumes (1 MiB each, ${LIST_VOLUMES / 10} bound), ${samples} sequential calls each`, '');
  rows.push('| build | call | p50 | p99 | load (1/5/15 min) |', '|---|---|---:|---:|---|');
  if (BASE_BIN) rows.push(...(await measure('base', BASE_BIN, ['/v1/volumes', '/v1/hosts', '/v1/bindings'])));
  rows.push(...(await measure('this', BIN, ['/v1/volumes', '/v1/volumes?limit=100', '/v1/hosts', '/v1/bindings'])));
  rows.push('', `Seeded through the API in ${seedS.toFixed(1)} s (8 in parallel).`);
}

async function sessions(): Promise<void> {
  // ---- 1. connections and hosts -------------------------------------------
  const dir1 = path.join(work, 'bg1');
  fs.mkdirSync(dir1);
  let b = await startBg(dir1, ['--cache-size', '256M']);
  await call(b, 'POST', '/v1/farms', { name: 'f' });
  await call(b, 'POST', '/v1/arrays', { name: 'a', size: `${(Math.max(...HOSTS) + 1) * 64}M` });
  const rssEmpty = rssOf(b.proc.pid);
  const sock0 = await hostWithUnit(b, 'h0', 'a');
  await waitListening({ kind: 'unix', path: sock0 }, b.proc, reg);
  const nbdkit = await startServer('nbdkit-file', 'unix', { reg, workDir: work, root: ROOT, size: VOL });

  rows.push('## Aggregate IOPS by connections (4k randrw 50/50, QD2 per connection, one 64 MiB unit)', '');
  rows.push('| connections | blockgate IOPS | nbdkit-file IOPS | ratio | load |', '|---:|---:|---:|---:|---|');
  for (const n of ONLY.has('conns') ? CONNS : []) {
    const bg = await fio(Array(n).fill(uriUnix(sock0, '0/0')), 2);
    const nk = await fio(Array(n).fill(nbdkit.uri), 2);
    const line = `| ${n} | ${Math.round(bg)} | ${Math.round(nk)} | ${(bg / nk).toFixed(2)}× | ${loadavg()} |`;
    rows.push(line);
    log(line);
  }

  // The hosts share one 63 MiB working set (each its own 1/n of it), so every row fits the 256 MiB cache and the
  // rows differ in sessions and units only: 16 hosts over 63 MiB each measured the cache's eviction instead.
  rows.push('', '## Aggregate IOPS by hosts (each host its own volume at unit 0/0, one connection each, QD2, 63 MiB shared out among them)', '');
  rows.push(
    'nbdkit-file serves one export, so its column is the same client shape on one export: n connections, each its own',
    '1/n of the working set. Where both fall together, the client (n fio jobs on the same two CPUs) is what falls.',
    '',
    '| hosts | blockgate IOPS | IOPS per host | nbdkit-file, n connections | ratio | RSS after mapping | load |',
    '|---:|---:|---:|---:|---:|---:|---|',
  );
  const socks = [sock0];
  // RSS per unit from the mapping alone (before each step's fio fills cache memory): the largest step.
  let rssUnits = { n: 0, bytes: 0 };
  for (const n of ONLY.has('hosts') ? HOSTS : []) {
    const names = Array.from({ length: n - socks.length }, (_, i) => `h${socks.length + i}`);
    const made: string[] = [];
    const rssBefore = rssOf(b.proc.pid);
    await pool(names, 4, async (h) => made.push(await hostWithUnit(b, h, 'a')));
    socks.push(...made.sort((x, y) => Number(/h(\d+)\.sock$/.exec(x)![1]) - Number(/h(\d+)\.sock$/.exec(y)![1])));
    await Promise.all(socks.map((s) => waitListening({ kind: 'unix', path: s }, b.proc, reg)));
    const rss = rssOf(b.proc.pid);
    if (names.length > rssUnits.n) rssUnits = { n: names.length, bytes: rss - rssBefore };
    const share = Math.max(4096, Math.floor((VOL - MiB) / n / 4096) * 4096);
    const iops = await fio(socks.slice(0, n).map((s) => uriUnix(s, '0/0')), 2, 'randrw', share);
    const nk = await fio(Array(n).fill(nbdkit.uri), 2, 'randrw', share, true);
    const line = `| ${n} | ${Math.round(iops)} | ${Math.round(iops / n)} | ${Math.round(nk)} | ${(iops / nk).toFixed(2)}× | ${mib(rss)} | ${loadavg()} |`;
    rows.push(line);
    log(line);
  }
  await reg.stop(nbdkit.proc);

  // ---- 2. RSS per idle session and per mapped unit -------------------------
  const before = rssOf(b.proc.pid);
  const idle: RawNbd[] = [];
  for (let i = 0; i < IDLE_SESSIONS; i++) idle.push(await RawNbd.connect(socks[i % socks.length]!, '0/0'));
  const after = rssOf(b.proc.pid);
  for (const c of idle) c.close();
  rows.push('', '## Memory', '');
  rows.push('| what | measured |', '|---|---:|');
  rows.push(`| RSS, empty appliance (one array, no host) | ${mib(rssEmpty)} |`);
  rows.push(`| RSS per mapped unit (host + volume + binding + listener), ${rssUnits.n} units mapped | ${kib(rssUnits.bytes / Math.max(1, rssUnits.n))} |`);
  rows.push(`| RSS per idle NBD session (${IDLE_SESSIONS} sessions after handshake) | ${kib((after - before) / IDLE_SESSIONS)} |`);
  log(rows.slice(-3).join('\n'));

  // ---- 3. control API p99 while fio runs flat out -----------------------------
  const sample = async (): Promise<{ list: number[]; bind: number[] }> => {
    const list: number[] = [];
    const bind: number[] = [];
    for (let i = 0; i < (quick ? 20 : 60); i++) {
      list.push(await timed(() => call(b, 'GET', '/v1/volumes')));
      const vol = `p${i}`;
      await call(b, 'POST', '/v1/volumes', { name: vol, size: '4M', farm: 'f', layout: [{ array: 'a', size: '4M' }] });
      let id = 0;
      bind.push(await timed(async () => (id = ((await call(b, 'POST', '/v1/bindings', { volume: vol, host: 'h1', target: 1, lun: 0, map: false })) as { id: number }).id)));
      await call(b, 'DELETE', `/v1/bindings/${id}`);
      await call(b, 'POST', `/v1/volumes/${vol}/break`).catch(() => undefined);
      await call(b, 'POST', `/v1/volumes/${vol}/deallocate`).catch(() => undefined);
    }
    return { list, bind };
  };
  if (!ONLY.has('api')) {
    await reg.stop(b.proc);
    return;
  }
  const quiet = await sample();
  const loaded = fio([uriUnix(sock0, '0/0'), uriUnix(sock0, '0/0'), uriUnix(socks[1] ?? sock0, '0/0'), uriUnix(socks[2] ?? sock0, '0/0')], 32);
  const busy = await sample();
  const busyIops = await loaded;
  rows.push('', `## Control API latency (${socks.length} volumes listed; bind = POST /v1/bindings), idle vs fio 4 jobs QD32 flat out (${Math.round(busyIops)} IOPS)`, '');
  rows.push('| call | idle p50 | idle p99 | under fio p50 | under fio p99 |', '|---|---:|---:|---:|---:|');
  for (const k of ['list', 'bind'] as const) rows.push(`| ${k} | ${pct(quiet[k], 50).toFixed(1)} ms | ${pct(quiet[k], 99).toFixed(1)} ms | ${pct(busy[k], 50).toFixed(1)} ms | ${pct(busy[k], 99).toFixed(1)} ms |`);
  log(rows.slice(-2).join('\n'));
  await reg.stop(b.proc);
}

async function startup(): Promise<void> {
  // ---- 4. start-up with many hosts, volumes and a 64 TiB array -----------------
  if (!ONLY.has('startup')) return;
  const dir2 = path.join(work, 'bg2');
  fs.mkdirSync(dir2);
  let b = await startBg(dir2, ['--overcommit', '1000000']);
  await call(b, 'POST', '/v1/farms', { name: 'f' });
  await call(b, 'POST', '/v1/arrays', { name: 'huge', size: '64T' });
  const seedT0 = performance.now();
  const hostNames = Array.from({ length: SEED.hosts }, (_, i) => `s${i}`);
  await pool(hostNames, 8, (h) => call(b, 'POST', '/v1/hosts', { name: h, farm: 'f' }));
  const volNames = Array.from({ length: SEED.volumes }, (_, i) => `v${i}`);
  let n = 0;
  // When each volume create returned: the rate of the first and the last volumes says whether a create costs more as they grow.
  const createdAt: number[] = [];
  await pool(volNames, 8, async (v) => {
    await call(b, 'POST', '/v1/volumes', { name: v, size: '1G', farm: 'f', layout: [{ array: 'huge', size: '1G' }] });
    createdAt.push(performance.now());
    // One volume per host mapped at unit 0/0; the rest allocated and configured.
    const i = n++;
    if (i < SEED.hosts) await call(b, 'POST', '/v1/bindings', { volume: v, host: hostNames[i], target: 0, lun: 0, map: true });
  });
  const seedS = (performance.now() - seedT0) / 1000;
  // Past the mapped ones (a bind is a different cost), the first and the last fifth of the plain creates.
  const span = Math.max(1, Math.floor((createdAt.length - SEED.hosts) / 5));
  const rate = (from: number): number => (span * 1000) / (createdAt[from + span - 1]! - createdAt[from - 1]!);
  const firstRate = rate(Math.min(SEED.hosts + 1, createdAt.length - span));
  const lastRate = rate(createdAt.length - span);
  const rssSeeded = rssOf(b.proc.pid);
  await reg.stop(b.proc);
  const restarted = await startBg(dir2, ['--overcommit', '1000000']);
  b = restarted;
  // Ready = the API answers and the last host's socket accepts.
  await waitListening({ kind: 'unix', path: path.join(dir2, 'sockets', `s${SEED.hosts - 1}.sock`) }, b.proc, reg, 300_000);
  const readyMs = restarted.startMs;
  const rssStart = rssOf(b.proc.pid);
  const listMs = await timed(() => call(b, 'GET', '/v1/volumes'));
  const mapFile = fs.statSync(path.join(dir2, 'arrays', 'huge.img.alloc')).size;
  await reg.stop(b.proc);
  rows.push('', `## Start-up with ${SEED.hosts} hosts, ${SEED.volumes} volumes (1 GiB each, ${SEED.hosts} mapped) on a 64 TiB array`, '');
  rows.push('| what | measured |', '|---|---:|');
  rows.push(`| seeding through the API (8 in parallel) | ${seedS.toFixed(1)} s |`);
  rows.push(`| volume creates, the first ${span} past the mapped ones / the last ${span} | ${firstRate.toFixed(0)} / ${lastRate.toFixed(0)} a second |`);
  rows.push(`| RSS after seeding | ${mib(rssSeeded)} |`);
  rows.push(`| restart: process start to run.json (API up) | ${(readyMs / 1000).toFixed(2)} s |`);
  rows.push(`| RSS after restart | ${mib(rssStart)} |`);
  rows.push(`| GET /v1/volumes (${SEED.volumes}) after restart | ${listMs.toFixed(0)} ms |`);
  rows.push(`| 64 TiB array's allocation map file | ${mapFile} bytes |`);
  log(rows.slice(-7).join('\n'));
  rows.push('', `Load at end: ${loadavg()}.`);
}

try {
  await main();
  const doc = `# Scale bench (\`npm run bench:scale\`)\n\nRun ${new Date().toISOString()}; one run on a shared 2-core machine: read the load column before the numbers.\n\n${rows.join('\n')}\n`;
  fs.mkdirSync(path.dirname(OUT), { recursive: true });
  fs.writeFileSync(OUT, doc);
  log(`\nwritten ${OUT}`);
} finally {
  await reg.stopAll();
  fs.rmSync(work, { recursive: true, force: true });
}
