/**
 * `npm run bench [-- --quick] [-- --profile]`: blockgate side by side with
 * nbdkit (file, memory) and qemu-nbd, the same fio jobs against each,
 * interleaved so machine drift hits all alike. See docs/bench/report.md.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { filesystemOf, installTools, machineInfo, versions } from './environment.js';
import { fill, runWorkload, type FioTiming } from './fio.js';
import { summariseProfile, type CpuProfile } from './profile.js';
import { ProcessRegistry } from './procs.js';
import { buildCells, cellKey, evaluateTargets, renderMarkdown, renderSvg, type Lane, type ProfileResult, type Results } from './report.js';
import { selectScenarios, workloadsFor, type Scenario } from './scenarios.js';
import { fillIscsi, runIscsiWorkload } from './qemu-bench.js';
import { BASELINE, DEFAULT_SERVERS, ISCSI_SERVERS, SERVERS, startBlockgate, startServer, type CachePolicy, type ServerName, type Target, type Transport } from './servers.js';
import { rotation, type RunStats } from './stats.js';
import { laneServers, laneWorkloads as laneWorkloadsOf } from './matrix.js';
import { PROFILE_IDS, QUICK_FRESH_IDS, QUICK_IDS, QUICK_SERVERS, selectWorkloads, type Workload } from './workloads.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const JOBS_DIR = path.join(ROOT, 'bench/jobs');
const MiB = 1024 * 1024;

interface Options {
  quick: boolean;
  profile: boolean;
  profileOnly: boolean;
  rounds: number;
  timing: FioTiming;
  profileRuntimeS: number;
  transports: Transport[];
  servers: ServerName[];
  workloads: Workload[];
  scenarios: Scenario[];
  /** Workloads per scenario id when not all of the scenario's kinds (quick mode's short fresh pass). */
  scenarioWorkloads: Map<string, Workload[]>;
  /** Every server on every lane (`matrix.ts` otherwise drops the cells that repeat another lane). */
  everyLane: boolean;
  /** Workloads named with --workloads: every lane runs them. */
  explicitWorkloads: boolean;
  baseBuild: string | undefined;
  sizeBytes: number;
  outDir: string;
  blockgateEnv: Record<string, string>;
  /** Environment blockgate-base gets on top of blockgateEnv (an A/B of one setting on one build). */
  baseEnv: Record<string, string>;
  /** The volume policy blockgate-base serves. */
  basePolicy: CachePolicy | undefined;
}

const USAGE = `usage: node dist/bench/run.js [options]
  --quick              small matrix (unix socket, blockgate and nbdkit-file, 6 workloads pre-filled and 2 fresh,
                       3 rounds of 5 s): a few minutes
  --profile            also profile blockgate (node --cpu-prof) under the 4k random workloads
  --profile-only       only the profile, merged into the existing results.json in --out
  --rounds N           rounds per cell, order rotated; the median and spread are reported (3)
  --runtime S          seconds per fio run after ramp (5)
  --ramp S             fio ramp_time seconds (1)
  --transports LIST    unix,tcp,iscsi (full run: all three; quick: unix)
  --iscsi              add the iSCSI lane (blockgate-iscsi vs tgt, driven by qemu-img bench over libiscsi)
  --scenarios LIST     filled,fresh,beyond-cache (see bench/scenarios.ts)
  --servers LIST       ${SERVERS.join(',')} (${BASELINE} is always included: ratios need it)
  --every-lane         every server on every scenario and transport, every workload on TCP (bench/matrix.ts
                       otherwise runs write-through/none on unix filled+fresh, nbdkit-memory on unix filled,
                       and TCP on the QD1/QD32, 1 MiB and 4-connection shapes)
  --base-build DIR     a checkout whose dist/ the blockgate-base server runs (A/B of two builds in one run)
  --workloads LIST     workload ids (see bench/workloads.ts)
  --size MiB           export size (default 256)
  --uv-threads N       UV_THREADPOOL_SIZE for blockgate (default: node's, 4)
  --env K=V,...        environment for every blockgate process (e.g. UV_USE_IO_URING=0)
  --base-policy P      the volume policy blockgate-base serves: write-back (default), write-through or none
  --base-env K=V,...   environment for blockgate-base only, on top of --env (with --base-build .: one setting A/B)
  --out DIR            output directory (full: docs/bench, quick: bench/out)
  --render DIR         only re-render DIR/report.md and DIR/chart.svg from DIR/results.json`;

function list(v: string | undefined): string[] | null {
  return v ? v.split(',').map((s) => s.trim()).filter(Boolean) : null;
}

/** "K=V,K2=V2" as an environment. */
function envList(v: string | undefined): Record<string, string> {
  const env: Record<string, string> = {};
  for (const kv of list(v) ?? []) {
    const i = kv.indexOf('=');
    if (i <= 0) throw new Error(`bad environment entry '${kv}' (want K=V)\n${USAGE}`);
    env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return env;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      'every-lane': { type: 'boolean', default: false },
      iscsi: { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
      'profile-only': { type: 'boolean', default: false },
      rounds: { type: 'string' },
      runtime: { type: 'string' },
      ramp: { type: 'string' },
      transports: { type: 'string' },
      servers: { type: 'string' },
      workloads: { type: 'string' },
      scenarios: { type: 'string' },
      'base-build': { type: 'string' },
      env: { type: 'string' },
      'base-env': { type: 'string' },
      'base-policy': { type: 'string' },
      size: { type: 'string' },
      'uv-threads': { type: 'string' },
      out: { type: 'string' },
      render: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    process.exit(0);
  }
  if (values.render) {
    render(path.resolve(values.render));
    process.exit(0);
  }
  const quick = values.quick!;
  const num = (v: string | undefined, d: number): number => {
    const n = v === undefined ? d : Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`bad number '${v}'\n${USAGE}`);
    return n;
  };
  const transports = (list(values.transports) ?? (quick ? ['unix'] : ['unix', 'tcp', 'iscsi'])) as Transport[];
  if (values.iscsi && !transports.includes('iscsi')) transports.push('iscsi');
  for (const t of transports) if (t !== 'unix' && t !== 'tcp' && t !== 'iscsi') throw new Error(`unknown transport '${t}'`);
  const wanted = (list(values.servers) ?? [...(quick ? QUICK_SERVERS : DEFAULT_SERVERS), ...(values['base-build'] ? ['blockgate-base'] : [])]) as ServerName[];
  for (const s of wanted) if (!SERVERS.includes(s)) throw new Error(`unknown server '${s}'`);
  const servers = [...SERVERS.filter((s) => s === BASELINE || wanted.includes(s)), ...(transports.includes('iscsi') ? ISCSI_SERVERS : [])];
  const workloads = selectWorkloads(list(values.workloads) ?? (quick ? QUICK_IDS : null));
  const scenarios = selectScenarios(list(values.scenarios) ?? (quick ? ['filled', 'fresh'] : null));
  const scenarioWorkloads = new Map<string, Workload[]>();
  for (const sc of scenarios) {
    const own = quick && !values.workloads && sc.id === 'fresh' ? selectWorkloads(QUICK_FRESH_IDS) : workloads;
    scenarioWorkloads.set(sc.id, workloadsFor(sc, own));
  }
  return {
    quick,
    profile: values.profile! || values['profile-only']!,
    profileOnly: values['profile-only']!,
    rounds: Math.max(1, Math.round(num(values.rounds, 3))),
    timing: { runtimeS: Math.max(0.5, num(values.runtime, 5)), rampS: num(values.ramp, 1) },
    profileRuntimeS: quick ? 2 : 5,
    transports,
    servers,
    workloads,
    scenarios,
    scenarioWorkloads,
    everyLane: values['every-lane']!,
    explicitWorkloads: values.workloads !== undefined,
    baseBuild: values['base-build'] ? path.resolve(values['base-build']) : undefined,
    sizeBytes: Math.round(num(values.size, 256)) * MiB,
    outDir: path.resolve(ROOT, values.out ?? (quick ? 'bench/out' : 'docs/bench')),
    blockgateEnv: {
      ...envList(values.env),
      ...(values['uv-threads'] ? { UV_THREADPOOL_SIZE: String(Math.round(num(values['uv-threads'], 4))) } : {}),
    },
    baseEnv: envList(values['base-env']),
    basePolicy: policyOption(values['base-policy']),
  };
}

function policyOption(v: string | undefined): CachePolicy | undefined {
  if (v === undefined) return undefined;
  if (v !== 'write-back' && v !== 'write-through' && v !== 'none') throw new Error(`--base-policy must be write-back, write-through or none, not '${v}'`);
  return v;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

interface Ctx {
  reg: ProcessRegistry;
  workDir: string;
  rawDir: string;
  opts: Options;
}

function serversFor(opts: Options, sc: Scenario, transport: Transport): ServerName[] {
  return laneServers(opts.servers, sc.id, transport, { everyLane: opts.everyLane });
}

function laneWorkloads(opts: Options, sc: Scenario, transport: Transport): Workload[] {
  return laneWorkloadsOf(opts.scenarioWorkloads.get(sc.id)!, transport, { everyLane: opts.everyLane, explicit: opts.explicitWorkloads });
}

async function startAll(ctx: Ctx, sc: Scenario, transport: Transport): Promise<Target[]> {
  const targets: Target[] = [];
  for (const s of serversFor(ctx.opts, sc, transport)) {
    const t = await startServer(s, transport, {
      reg: ctx.reg,
      workDir: ctx.workDir,
      root: ROOT,
      size: ctx.opts.sizeBytes,
      blockgateEnv: ctx.opts.blockgateEnv,
      baseEnv: ctx.opts.baseEnv,
      ...(ctx.opts.basePolicy ? { basePolicy: ctx.opts.basePolicy } : {}),
      blockgateArgs: sc.blockgateArgs,
      ...(ctx.opts.baseBuild ? { baseBuild: ctx.opts.baseBuild } : {}),
    });
    log(`${s} (${sc.id}, ${transport}) pid ${t.proc.pid} at ${t.uri}`);
    targets.push(t);
  }
  return targets;
}

function load(): string {
  return os.loadavg().map((x) => x.toFixed(2)).join(' ');
}

/**
 * One scenario on one transport: start everything (on new sparse files),
 * fill if the scenario says so, then rounds of rotated runs. A fresh
 * scenario starts every server afresh for each round, so each round begins
 * on unwritten volumes and every server has seen the same workloads before
 * each cell.
 */
async function benchLane(ctx: Ctx, sc: Scenario, transport: Transport, runs: Map<string, RunStats[]>): Promise<void> {
  const { rounds, timing } = ctx.opts;
  const workloads = laneWorkloads(ctx.opts, sc, transport);
  if (workloads.length === 0) return;
  let targets: Target[] = [];
  const stopAll = async (): Promise<void> => {
    // Stopped by PID even when a run failed half way.
    for (const t of targets) await ctx.reg.stop(t.proc, t.stopGraceMs);
    targets = [];
  };
  try {
    for (let round = 0; round < rounds; round++) {
      if (round === 0 || !sc.fill) {
        await stopAll();
        // Every start makes new sparse files (a peer's file is truncated to nothing and regrown, which drops
        // its page cache; blockgate gets a new data directory): nothing of an earlier round is left cached.
        targets = await startAll(ctx, sc, transport);
        if (sc.fill) {
          for (const t of targets) {
            if (transport === 'iscsi') await fillIscsi(ctx.reg, t.uri, ctx.opts.sizeBytes);
            else await fill(ctx.reg, JOBS_DIR, ctx.rawDir, t.uri, `${t.server}-${sc.id}-${transport}`);
          }
          await settle(ctx.reg);
          log(`${sc.id} ${transport}: all exports filled and synced; load ${load()}`);
        }
      }
      log(`${sc.id} ${transport} round ${round + 1}/${rounds}: load ${load()}`);
      for (const [wi, w] of workloads.entries()) {
        for (const t of rotation(targets, round + wi)) {
          const s =
            transport === 'iscsi'
              ? await runIscsiWorkload(ctx.reg, t.uri, w, timing, ctx.opts.sizeBytes)
              : await runWorkload(ctx.reg, JOBS_DIR, ctx.rawDir, t.uri, w, timing, `${w.id}-${sc.id}-${transport}-${t.server}-r${round}`);
          const k = cellKey(w.id, transport, t.server, sc.id);
          runs.set(k, [...(runs.get(k) ?? []), s]);
          log(`${sc.id} ${transport} r${round + 1}/${rounds} ${w.id.padEnd(20)} ${t.server.padEnd(14)} ${Math.round(s.iops).toString().padStart(7)} IOPS ${s.mibps.toFixed(0).padStart(5)} MiB/s p99 ${s.p99us.toFixed(0)} µs`);
        }
      }
    }
  } finally {
    await stopAll();
  }
}

/**
 * Writes the fills' dirty pages back before measuring, so background
 * write-back does not land on whichever server happens to run first.
 */
async function settle(reg: ProcessRegistry): Promise<void> {
  const p = reg.start('sync', 'sync', []);
  await p.exited;
}

async function newestProfile(dir: string): Promise<string> {
  const files = (await fs.promises.readdir(dir)).filter((f) => f.endsWith('.cpuprofile'));
  if (files.length === 0) throw new Error(`no .cpuprofile written in ${dir}`);
  return path.join(dir, files.sort().at(-1)!);
}

/**
 * Profiles blockgate per 4k random workload. Provisioning and the fill run in
 * an unprofiled process first; each profiled process then only serves one workload.
 */
async function profileBlockgate(ctx: Ctx): Promise<ProfileResult[]> {
  const base = { reg: ctx.reg, workDir: ctx.workDir, root: ROOT, size: ctx.opts.sizeBytes, blockgateEnv: ctx.opts.blockgateEnv };
  const setup = await startBlockgate(base, 'unix');
  try {
    await fill(ctx.reg, JOBS_DIR, ctx.rawDir, setup.uri, 'profile');
  } finally {
    await ctx.reg.stop(setup.proc);
  }
  await settle(ctx.reg);
  const keepDir = path.join(ROOT, 'bench/out/profiles');
  await fs.promises.mkdir(keepDir, { recursive: true });
  const results: ProfileResult[] = [];
  for (const w of selectWorkloads(PROFILE_IDS)) {
    const profDir = path.join(ctx.workDir, 'prof', w.id);
    await fs.promises.mkdir(profDir, { recursive: true });
    const spawned = Date.now();
    const t = await startBlockgate({ ...base, dataDir: setup.dataDir, cpuProfDir: profDir }, 'unix');
    const timing = { runtimeS: ctx.opts.profileRuntimeS, rampS: 0.5 };
    // The profile clock starts with the process; keep only the measured part of the fio run.
    const skipMs = Date.now() - spawned + timing.rampS * 1000;
    let exit: { code: number | null; signal: NodeJS.Signals | null };
    try {
      const s = await runWorkload(ctx.reg, JOBS_DIR, ctx.rawDir, t.uri, w, timing, `profile-${w.id}`);
      log(`profile ${w.id}: ${Math.round(s.iops)} IOPS under --cpu-prof`);
    } finally {
      // SIGTERM lets blockgate flush and exit 0, which is when node writes the profile.
      exit = await ctx.reg.stop(t.proc);
    }
    if (exit.code !== 0) throw new Error(`profiled blockgate exited ${exit.code ?? exit.signal}:\n${t.proc.output()}`);
    const file = await newestProfile(profDir);
    const kept = path.join(keepDir, `${w.id}.cpuprofile`);
    await fs.promises.copyFile(file, kept);
    const prof = JSON.parse(await fs.promises.readFile(file, 'utf8')) as CpuProfile;
    const windowMs = timing.runtimeS * 1000;
    results.push({ workload: w.id, file: path.relative(ROOT, kept), skipMs, windowMs, summary: summariseProfile(prof, { top: 15, root: ROOT, skipMs, windowMs }) });
  }
  return results;
}

async function writeOutputs(r: Results, outDir: string): Promise<void> {
  await fs.promises.mkdir(outDir, { recursive: true });
  await fs.promises.writeFile(path.join(outDir, 'results.json'), JSON.stringify(r, null, 2) + '\n');
  await fs.promises.writeFile(path.join(outDir, 'report.md'), renderMarkdown(r));
  await fs.promises.writeFile(path.join(outDir, 'chart.svg'), renderSvg(r));
}

/** A new profile of the current code beside the last full run's table. */
async function mergeProfiles(outDir: string, profiles: ProfileResult[]): Promise<void> {
  const file = path.join(outDir, 'results.json');
  const r = JSON.parse(await fs.promises.readFile(file, 'utf8')) as Results;
  r.profiles = profiles;
  r.profiledAt = new Date().toISOString();
  await writeOutputs(r, outDir);
  log(`profiles merged into ${path.relative(ROOT, file)}`);
}

/** Report-format changes should not need a 15-minute rerun. */
function render(dir: string): void {
  const r = JSON.parse(fs.readFileSync(path.join(dir, 'results.json'), 'utf8')) as Results;
  fs.writeFileSync(path.join(dir, 'report.md'), renderMarkdown(r));
  fs.writeFileSync(path.join(dir, 'chart.svg'), renderSvg(r));
}

function printSummary(r: Results): void {
  for (const t of r.targets) {
    const worst = t.worst === null ? '–' : `${t.worst.toFixed(2)}×`;
    log(`${t.rows.length === 0 ? 'NO ROWS' : t.met ? 'MET    ' : 'MISSED '} ${t.label} (worst ${worst})`);
  }
}

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  const started = Date.now();
  installTools(ROOT);
  const workDir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'blockgate-bench-'));
  const rawDir = path.join(workDir, 'raw');
  await fs.promises.mkdir(rawDir);
  const reg = new ProcessRegistry();
  const ctx: Ctx = { reg, workDir, rawDir, opts };
  const cleanup = async (): Promise<void> => {
    await reg.stopAll();
    await fs.promises.rm(workDir, { recursive: true, force: true });
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    interrupted = true;
    log(`${sig}: stopping ${reg.count} child process(es) by PID`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  // Other work on a shared machine is the biggest noise source; say how busy it was.
  const loadStart = os.loadavg()[0]!;
  const runs = new Map<string, RunStats[]>();
  let profiles: ProfileResult[] = [];
  const date = new Date().toISOString();
  try {
    if (opts.profileOnly) log(`profile only, merged into ${path.relative(ROOT, opts.outDir)}/results.json; scratch ${workDir}`);
    else {
      const cells = opts.scenarios.reduce((n, sc) => n + opts.transports.reduce((m, tr) => m + laneWorkloads(opts, sc, tr).length * serversFor(opts, sc, tr).length, 0), 0) * opts.rounds;
      log(`${opts.quick ? 'quick' : 'full'} run: ${opts.scenarios.map((sc) => sc.id).join('+')} × ${opts.servers.length} servers × ${opts.transports.join('+')} × ${opts.rounds} round(s) = ${cells} cells of ${opts.timing.runtimeS}+${opts.timing.rampS} s; scratch ${workDir}`);
      log(`load average at start: ${load()} on ${os.cpus().length} CPUs`);
    }
    if (!opts.profileOnly) for (const sc of opts.scenarios) for (const tr of opts.transports) await benchLane(ctx, sc, tr, runs);
    if (opts.profile) profiles = await profileBlockgate(ctx);
  } finally {
    await cleanup();
  }
  if (opts.profileOnly) {
    await mergeProfiles(opts.outDir, profiles);
    return;
  }

  const lanes: Lane[] = opts.scenarios.flatMap((sc) => opts.transports.map((transport) => ({ scenario: sc.id, transport, workloads: laneWorkloads(opts, sc, transport) })));
  const cells = buildCells(runs, lanes, opts.servers, BASELINE);
  const results: Results = {
    date,
    mode: opts.quick ? 'quick' : 'full',
    config: {
      rounds: opts.rounds,
      runtimeS: opts.timing.runtimeS,
      rampS: opts.timing.rampS,
      sizeBytes: opts.sizeBytes,
      transports: opts.transports,
      servers: opts.servers,
      baseline: BASELINE,
      workloads: opts.workloads,
      scenarios: opts.scenarios.map((sc) => ({ id: sc.id, title: sc.title, note: sc.note, workloads: opts.scenarioWorkloads.get(sc.id)!.map((w) => w.id) })),
      workDirFs: filesystemOf(os.tmpdir()),
      blockgateEnv: opts.blockgateEnv,
      baseEnv: opts.baseEnv,
      ...(opts.basePolicy ? { basePolicy: opts.basePolicy } : {}),
      everyLane: opts.everyLane,
    },
    machine: { ...machineInfo(), loadavg1Start: round2(loadStart), loadavg1End: round2(os.loadavg()[0]!) },
    versions: versions(ROOT),
    cells,
    targets: evaluateTargets(cells, opts.workloads),
    profiles,
    durationS: (Date.now() - started) / 1000,
  };
  await writeOutputs(results, opts.outDir);
  log(`load average at end: ${load()}`);
  printSummary(results);
  log(`wrote ${path.relative(ROOT, opts.outDir)}/{results.json,report.md,chart.svg} in ${results.durationS.toFixed(0)} s`);
}

/** Set on SIGINT/SIGTERM: the runs that fail because their server was stopped are not errors. */
let interrupted = false;

main().catch((e: unknown) => {
  if (interrupted) process.exit(130);
  process.stderr.write(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
