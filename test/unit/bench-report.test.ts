import t from 'tap';
import { summariseProfile, shortUrl, type CpuProfile } from '../../bench/profile.js';
import { buildCells, cellKey, evaluateTargets, renderMarkdown, renderSvg, type Lane, type Results } from '../../bench/report.js';
import type { ScenarioId } from '../../bench/scenarios.js';
import type { ServerName, Transport } from '../../bench/servers.js';
import {
  histogramPercentile,
  median,
  medianStats,
  mergeBins,
  parseFioJson,
  ratio,
  rotation,
  statsFromFio,
  type RunStats,
} from '../../bench/stats.js';
import { selectWorkloads, type Workload } from '../../bench/workloads.js';
import { iscsiRunnable, parseQemuBench } from '../../bench/qemu-bench.js';
import { laneServers, laneWorkloads, TCP_IDS } from '../../bench/matrix.js';

const MiB = 1024 * 1024;

/** The shape fio 3.33 writes with --output-format=json+ (trimmed to what is read). */
function fioOutput(read: { iops: number; bins?: Record<string, number>; p50?: number; n?: number }, write?: typeof read): string {
  const dir = (d: typeof read | undefined): object =>
    d
      ? {
          iops: d.iops,
          bw_bytes: d.iops * 4096,
          total_ios: d.n ?? d.iops,
          clat_ns: { percentile: { '50.000000': d.p50 ?? 0, '99.000000': (d.p50 ?? 0) * 2 }, ...(d.bins ? { bins: d.bins } : {}) },
        }
      : { iops: 0, bw_bytes: 0, total_ios: 0, clat_ns: {} };
  return JSON.stringify({ 'fio version': 'fio-3.33', jobs: [{ jobname: 'j', error: 0, read: dir(read), write: dir(write) }] }, null, 2);
}

t.test('fio JSON is found after engine chatter on stdout', async (t) => {
  const out = parseFioJson('fio: connected to NBD server\n' + fioOutput({ iops: 10 }));
  t.equal(out.jobs.length, 1);
  t.throws(() => parseFioJson('fio: nothing here'), /no JSON/);
  t.throws(() => parseFioJson('{"jobs": []}'), /no jobs/);
});

t.test('a mixed run sums both directions and takes percentiles over their merged histograms', async (t) => {
  // reads: 3 at 10 µs; writes: 1 at 100 µs → p50 = 10 µs, p99 = 100 µs over all four.
  const s = statsFromFio(parseFioJson(fioOutput({ iops: 3000, bins: { '10000': 3 } }, { iops: 1000, bins: { '100000': 1 } })));
  t.equal(s.iops, 4000);
  t.equal(s.readIops, 3000);
  t.equal(s.writeIops, 1000);
  t.equal(s.mibps, (4000 * 4096) / MiB);
  t.equal(s.p50us, 10);
  t.equal(s.p99us, 100);
});

t.test('without histograms the busier direction gives the percentiles', async (t) => {
  const s = statsFromFio(parseFioJson(fioOutput({ iops: 100, p50: 5000, n: 100 }, { iops: 50, p50: 9000, n: 50 })));
  t.equal(s.p50us, 5);
  t.equal(s.p99us, 10);
});

t.test('a fio job error fails the run', async (t) => {
  const bad = JSON.stringify({ jobs: [{ jobname: 'x', error: 5, read: { iops: 1 } }] });
  t.throws(() => statsFromFio(parseFioJson(bad)), /error 5/);
});

t.test('histogram helpers', async (t) => {
  const b = mergeBins([{ '1': 1, '2': 1 }, { '2': 1, '4': 1 }, undefined]);
  t.same([...b.entries()].sort((x, y) => x[0] - y[0]), [
    [1, 1],
    [2, 2],
    [4, 1],
  ]);
  t.equal(histogramPercentile(b, 0.5), 2);
  t.equal(histogramPercentile(b, 1), 4);
  t.equal(histogramPercentile(b, 0), 1, 'the minimum is rank 1, not rank 0');
  t.ok(Number.isNaN(histogramPercentile(new Map(), 0.5)));
});

t.test('median, ratio and rotation', async (t) => {
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([4, 1, 3, 2]), 2.5);
  t.equal(median([5, Number.NaN]), 5, 'a missing value does not poison the median');
  t.ok(Number.isNaN(median([])));
  t.equal(ratio(3, 2), 1.5);
  t.equal(ratio(3, 0), null);
  t.equal(ratio(undefined, 2), null);
  t.same(rotation(['a', 'b', 'c'], 1), ['b', 'c', 'a']);
  t.same(rotation(['a', 'b', 'c'], 5), ['c', 'a', 'b']);
  t.same(rotation(['a', 'b', 'c'], -1), ['c', 'a', 'b']);
  const counts = new Map<string, number[]>();
  for (let shift = 0; shift < 3; shift++) rotation(['a', 'b', 'c'], shift).forEach((x, slot) => counts.set(x, [...(counts.get(x) ?? []), slot]));
  for (const slots of counts.values()) t.same([...slots].sort(), [0, 1, 2], 'every server takes every slot once per cycle');
});

t.test('medianStats takes each column on its own', async (t) => {
  const r = (iops: number, p99: number): RunStats => ({ iops, readIops: iops, writeIops: 0, mibps: iops / 256, p50us: 1, p99us: p99 });
  const m = medianStats([r(100, 900), r(300, 100), r(200, 500)]);
  t.equal(m.iops, 200);
  t.equal(m.p99us, 500);
});

function runsFixture(): Map<string, RunStats[]> {
  const s = (iops: number): RunStats => ({ iops, readIops: iops, writeIops: 0, mibps: iops / 256, p50us: 10, p99us: 20 });
  const runs = new Map<string, RunStats[]>();
  const put = (w: string, tr: Transport, srv: ServerName, v: number[], sc: ScenarioId = 'filled'): void => void runs.set(cellKey(w, tr, srv, sc), v.map(s));
  put('randread-4k-qd1', 'unix', 'nbdkit-file', [100, 110, 90]);
  put('randread-4k-qd1', 'unix', 'blockgate', [120, 130, 500]);
  put('randread-4k-qd1', 'unix', 'qemu-nbd', [50, 50, 50]);
  put('randread-4k-qd32', 'unix', 'nbdkit-file', [100]);
  put('randread-4k-qd32', 'unix', 'blockgate', [140]);
  put('randread-4k-qd32', 'unix', 'qemu-nbd', [50]);
  put('seqread-1m-qd8', 'unix', 'nbdkit-file', [10]);
  put('seqread-1m-qd8', 'unix', 'blockgate', [7]);
  put('seqread-1m-qd8', 'unix', 'qemu-nbd', [3]);
  put('seqread-1m-qd8', 'unix', 'blockgate-none', [9]);
  // The same workload in another scenario is its own cell, with its own baseline.
  put('seqread-1m-qd8', 'unix', 'nbdkit-file', [20], 'fresh');
  put('seqread-1m-qd8', 'unix', 'blockgate', [40], 'fresh');
  return runs;
}

const LANES = (ws: Workload[]): Lane[] => [
  { scenario: 'filled', transport: 'unix', workloads: ws },
  { scenario: 'fresh', transport: 'unix', workloads: ws.filter((w) => w.id === 'seqread-1m-qd8') },
];

t.test('cells carry medians, spread and ratios to the baseline; targets hold only when every row does', async (t) => {
  const ws = selectWorkloads(['randread-4k-qd1', 'randread-4k-qd32', 'seqread-1m-qd8']);
  const servers: ServerName[] = ['blockgate', 'blockgate-none', 'nbdkit-file', 'qemu-nbd'];
  const cells = buildCells(runsFixture(), LANES(ws), servers, 'nbdkit-file');
  t.equal(cells.length, 12);
  const bg = cells.find((c) => c.server === 'blockgate' && c.workload === 'randread-4k-qd1')!;
  t.equal(bg.median.iops, 130, 'one outlier round does not move the median');
  t.equal(bg.ratioToBaseline, 1.3);
  t.equal(bg.spread, (500 - 120) / 130, 'the spread shows the outlier');
  t.equal(cells.find((c) => c.server === 'nbdkit-file')!.ratioToBaseline, 1);
  const fresh = cells.find((c) => c.server === 'blockgate' && c.scenario === 'fresh')!;
  t.equal(fresh.ratioToBaseline, 2, 'ratios are taken within the scenario');

  const targets = evaluateTargets(cells, ws);
  const byId = new Map(targets.map((x) => [x.id, x]));
  const wb = byId.get('wb-nbdkit')!;
  t.equal(wb.rows.length, 4, 'every write-back row of every scenario');
  t.equal(wb.worst, 0.7);
  t.equal(wb.met, false, '0.7× is below 1.0×');
  const cached = byId.get('cached-read')!;
  t.same(
    cached.rows.map((r) => r.workload),
    ['randread-4k-qd32'],
    'cached reads: QD ≥ 8 only',
  );
  t.equal(cached.met, false, '1.4× is below 1.5×');
  t.equal(byId.get('none')!.worst, 0.9);
  t.equal(byId.get('none')!.met, true, '0.9× meets ≥ 0.9×');
  t.equal(byId.get('wt')!.met, false, 'a target with no measured rows is not met');
  const q = byId.get('wb-qemu')!;
  t.equal(q.rows.length, 4);
  t.equal(q.rows.find((r) => r.scenario === 'fresh')!.ratio, null, 'no qemu-nbd cell in the fresh lane');
  t.equal(q.met, false, 'an unmeasured row is not met');
});

t.test('report and chart render from a results document', async (t) => {
  const ws = selectWorkloads(['randread-4k-qd1', 'randread-4k-qd32', 'seqread-1m-qd8']);
  const servers: ServerName[] = ['blockgate', 'blockgate-none', 'nbdkit-file', 'qemu-nbd'];
  const cells = buildCells(runsFixture(), LANES(ws), servers, 'nbdkit-file');
  const r: Results = {
    date: '2026-01-01T00:00:00.000Z',
    mode: 'quick',
    config: {
      rounds: 3,
      runtimeS: 5,
      rampS: 1,
      sizeBytes: 256 * MiB,
      transports: ['unix'],
      servers,
      baseline: 'nbdkit-file',
      workloads: ws,
      scenarios: [
        { id: 'filled', title: 'pre-filled', note: 'filled', workloads: ws.map((w) => w.id) },
        { id: 'fresh', title: 'fresh volume', note: 'fresh', workloads: ['seqread-1m-qd8'] },
      ],
      workDirFs: 'ext4',
    },
    machine: { cpuModel: 'Test CPU', nproc: 2, memoryGiB: 4, kernel: 'Linux' },
    versions: { node: 'v20', fio: '3.33', nbdkit: '1.32', 'qemu-nbd': '7.2', blockgate: '0.1.0' },
    cells,
    targets: evaluateTargets(cells, ws),
    profiles: [],
    durationS: 60,
  };
  const md = renderMarkdown(r);
  t.match(md, /Test CPU × 2/);
  t.match(md, /## Results, pre-filled, unix socket/);
  t.match(md, /## Results, fresh volume, unix socket/);
  t.match(md, /\| 4k random read QD1 \| \*\*blockgate\*\* \| 130 \| ±146\.2% \|.*\| 1\.30× \|/);
  t.match(md, /write-back ≥ 1\.0× nbdkit-file, every row \| 3 \/ 4 \| 0\.70× \(seqread-1m-qd8, filled, unix\) .*❌ missed/);
  t.match(md, /policy none ≥ 0\.9× nbdkit-file, every row \| 1 \/ 1 \|.*✅ met/);
  t.match(md, /write-through ≥ 0\.9× nbdkit-file, every row \| 0 \/ 0 .*not measured/);
  t.match(md, /\| fresh volume \| unix \| 1 MiB sequential read QD8 \| 2\.00× ✅ \| – ❌ \|/, 'the per-row table marks each row');
  const svg = renderSvg(r);
  t.match(svg, /^<svg /);
  t.match(svg, /blockgate 4k random read QD1: 1\.30×/);
  t.match(svg, /fresh volume, unix socket/);
  t.notMatch(svg, /nbdkit-file 4k/, 'the baseline is the 1.0 line, not bars');
});

t.test('the iSCSI lane is judged against tgt, beside NBD lanes judged against nbdkit-file', async (t) => {
  const ws = selectWorkloads(['randread-4k-qd1', 'seqwrite-1m-qd8', 'randrw-4k-qd32']);
  t.same(ws.filter(iscsiRunnable).map((w) => w.id), ['randread-4k-qd1', 'seqwrite-1m-qd8'], 'qemu-img bench has no mixed shape');
  const s = (iops: number): RunStats => ({ iops, readIops: iops, writeIops: 0, mibps: iops / 256, p50us: Number.NaN, p99us: Number.NaN });
  const runs = new Map<string, RunStats[]>();
  const put = (w: string, tr: Transport, srv: ServerName, v: number): void => void runs.set(cellKey(w, tr, srv), [s(v)]);
  put('randread-4k-qd1', 'unix', 'nbdkit-file', 100);
  put('randread-4k-qd1', 'unix', 'blockgate', 200);
  put('randread-4k-qd1', 'iscsi', 'tgt', 50);
  put('randread-4k-qd1', 'iscsi', 'blockgate-iscsi', 100);
  put('seqwrite-1m-qd8', 'iscsi', 'tgt', 10);
  put('seqwrite-1m-qd8', 'iscsi', 'blockgate-iscsi', 12);
  const lanes: Lane[] = [
    { scenario: 'filled', transport: 'unix', workloads: ws.slice(0, 1) },
    { scenario: 'filled', transport: 'iscsi', workloads: ws.filter(iscsiRunnable) },
  ];
  const servers: ServerName[] = ['blockgate', 'nbdkit-file', 'blockgate-iscsi', 'tgt'];
  const cells = buildCells(runs, lanes, servers, 'nbdkit-file');
  t.equal(cells.length, 6);
  const at = (w: string, srv: ServerName): number | null => cells.find((c) => c.workload === w && c.server === srv)!.ratioToBaseline;
  t.equal(at('randread-4k-qd1', 'blockgate-iscsi'), 2, 'over tgt, not over nbdkit-file');
  t.equal(at('randread-4k-qd1', 'tgt'), 1);
  t.equal(at('randread-4k-qd1', 'blockgate'), 2);
  t.equal(at('seqwrite-1m-qd8', 'blockgate-iscsi'), 1.2);
  const targets = evaluateTargets(cells, ws);
  const iscsi = targets.find((x) => x.id === 'iscsi-tgt')!;
  t.same(
    iscsi.rows.map((r) => [r.workload, r.transport, r.ratio]),
    [
      ['randread-4k-qd1', 'iscsi', 2],
      ['seqwrite-1m-qd8', 'iscsi', 1.2],
    ],
  );
  t.equal(iscsi.met, false, '1.2× is below 1.5×');
  t.equal(targets.find((x) => x.id === 'wb-nbdkit')!.rows.length, 1, 'the NBD targets ignore the iSCSI lane');
  const r: Results = {
    date: '2026-01-01T00:00:00.000Z',
    mode: 'quick',
    config: {
      rounds: 1,
      runtimeS: 5,
      rampS: 1,
      sizeBytes: 256 * MiB,
      transports: ['unix', 'iscsi'],
      servers,
      baseline: 'nbdkit-file',
      workloads: ws,
      scenarios: [{ id: 'filled', title: 'pre-filled', note: 'filled', workloads: ws.map((w) => w.id) }],
      workDirFs: 'ext4',
    },
    machine: { cpuModel: 'Test CPU', nproc: 2, memoryGiB: 4, kernel: 'Linux' },
    versions: {},
    cells,
    targets,
    profiles: [],
    durationS: 1,
  };
  const md = renderMarkdown(r);
  t.match(md, /## Results, pre-filled, iSCSI over TCP loopback\n\n\| workload \| server \| IOPS \| spread \| MiB\/s \| p50 \| p99 \| vs tgt \|/);
  t.match(md, /## Results, pre-filled, unix socket\n\n\| workload .* vs nbdkit-file \|/);
  t.match(md, /\| 1 MiB sequential write QD8 \| \*\*blockgate-iscsi\*\* \| 12 \|.*\| – \| – \| 1\.20× \|/, 'no latency columns for the iSCSI driver');
  t.match(md, /iSCSI write-back ≥ 1\.5× tgt, every row \| 1 \/ 2 \| 1\.20× \(seqwrite-1m-qd8, filled, iscsi\).*❌ missed/);
  const svg = renderSvg(r);
  t.match(svg, /blockgate-iscsi 4k random read QD1: 2\.00×/);
  t.notMatch(svg, /tgt 4k/, 'tgt is the iSCSI panels\' 1.0 line');
});

t.test('qemu-img bench output: the run time, or null', async (t) => {
  t.equal(parseQemuBench('Sending 20000 write requests, 4096 bytes each, 32 in parallel\nRun completed in 1.456 seconds.\n'), 1.456);
  t.equal(parseQemuBench('qemu-img: Could not open: iSCSI: Failed to connect'), null);
});

/** (root) → main → hot, main → cold; plus (idle) and (garbage collector) under root. */
function profileFixture(): CpuProfile {
  const frame = (functionName: string, url = '', lineNumber = -1) => ({ functionName, url, lineNumber, columnNumber: 0 });
  return {
    nodes: [
      { id: 1, callFrame: frame('(root)'), children: [2, 5, 6] },
      { id: 2, callFrame: frame('main', 'file:///repo/dist/a.js', 0), children: [3, 4] },
      { id: 3, callFrame: frame('hot', 'file:///repo/dist/a.js', 9) },
      { id: 4, callFrame: frame('cold', 'file:///repo/dist/b.js', 4) },
      { id: 5, callFrame: frame('(idle)') },
      { id: 6, callFrame: frame('(garbage collector)') },
    ],
    startTime: 0,
    endTime: 10_000,
    // Each delta is the time the previous sample covered: hot 6 ms, cold 2 ms, idle 1 ms, gc 1 ms.
    samples: [3, 3, 3, 4, 5, 6, 2],
    timeDeltas: [0, 3000, 3000, 0, 2000, 1000, 1000],
  };
}

t.test('profile summary: self and total time per function, idle and GC apart', async (t) => {
  const s = summariseProfile(profileFixture(), { root: '/repo' });
  t.equal(s.durationMs, 10);
  t.equal(s.idlePct, 10);
  t.equal(s.gcPct, 10);
  const hot = s.top[0]!;
  t.equal(hot.label, 'hot (dist/a.js:10)', 'lines are shown 1-based');
  t.equal(hot.selfMs, 6);
  t.equal(hot.selfPct, 60);
  t.equal(Math.round(hot.selfPctBusy * 1000) / 1000, Math.round((600 / 9) * 1000) / 1000);
  const main = summariseProfile(profileFixture(), { root: '/repo', top: 50 }).top.find((f) => f.functionName === 'main');
  t.equal(main, undefined, 'main has no self time, so it is not in the self-time list');
  t.notOk(s.top.some((f) => f.functionName === '(idle)'), 'idle is not a hot spot');
  t.same(
    s.files.map((f) => f.file),
    ['dist/a.js', 'dist/b.js', '(garbage collector)'],
  );
});

t.test('profile summary honours the measurement window', async (t) => {
  // Skip the first 3 ms (one hot sample) and stop 5 ms later.
  const s = summariseProfile(profileFixture(), { skipMs: 3, windowMs: 5, root: '/repo' });
  t.equal(s.durationMs, 5);
  t.equal(s.top[0]!.functionName, 'hot');
  t.equal(s.top[0]!.selfMs, 3);
});

t.test('profiles without timestamps fall back to hit counts', async (t) => {
  const p = profileFixture();
  delete p.samples;
  delete p.timeDeltas;
  p.nodes[2]!.hitCount = 3;
  p.nodes[3]!.hitCount = 1;
  const s = summariseProfile(p);
  t.equal(s.top[0]!.functionName, 'hot');
  t.equal(s.top[0]!.selfPct, 75);
});

t.test('profile URLs are shortened to repository paths', async (t) => {
  t.equal(shortUrl('file:///repo/dist/x.js', '/repo'), 'dist/x.js');
  t.equal(shortUrl('file:///elsewhere/node_modules/pino/x.js', '/repo'), 'node_modules/pino/x.js');
  t.equal(shortUrl('node:fs'), 'node:fs');
  t.equal(shortUrl(''), '');
});

t.test('a native binding is split by the JavaScript frame that called it', async (t) => {
  const frame = (functionName: string, url = '', lineNumber = 0) => ({ functionName, url, lineNumber, columnNumber: 0 });
  const p: CpuProfile = {
    nodes: [
      { id: 1, callFrame: frame('(root)'), children: [2, 4] },
      { id: 2, callFrame: frame('write', 'node:fs', 820), children: [3] },
      { id: 3, callFrame: frame('writeBuffer') },
      { id: 4, callFrame: frame('handleWriteReq', 'node:internal/stream_base_commons', 45), children: [5] },
      { id: 5, callFrame: frame('writeBuffer') },
    ],
    startTime: 0,
    endTime: 4000,
    samples: [3, 3, 5, 1],
    timeDeltas: [0, 1000, 1000, 1000],
  };
  const s = summariseProfile(p);
  t.same(
    s.top.map((f) => [f.label, f.selfMs]),
    [
      ['writeBuffer [native, from write node:fs]', 2],
      ['writeBuffer [native, from handleWriteReq node:internal/stream_base_commons]', 1],
    ],
  );
});

t.test('the full matrix keeps every judged cell and drops lanes that repeat another', async (t) => {
  const all: ServerName[] = ['blockgate', 'blockgate-wt', 'blockgate-none', 'nbdkit-file', 'nbdkit-memory', 'qemu-nbd', 'blockgate-iscsi', 'tgt'];
  const trim = { everyLane: false };
  t.same(laneServers(all, 'filled', 'unix', trim), ['blockgate', 'blockgate-wt', 'blockgate-none', 'nbdkit-file', 'nbdkit-memory', 'qemu-nbd']);
  t.same(laneServers(all, 'fresh', 'unix', trim), ['blockgate', 'blockgate-wt', 'blockgate-none', 'nbdkit-file', 'qemu-nbd']);
  t.same(laneServers(all, 'beyond-cache', 'unix', trim), ['blockgate', 'nbdkit-file', 'qemu-nbd']);
  t.same(laneServers(all, 'filled', 'tcp', trim), ['blockgate', 'nbdkit-file', 'qemu-nbd']);
  t.same(laneServers(all, 'fresh', 'iscsi', trim), ['blockgate-iscsi', 'tgt']);
  t.same(laneServers(all, 'beyond-cache', 'tcp', { everyLane: true }), ['blockgate', 'blockgate-wt', 'blockgate-none', 'nbdkit-file', 'nbdkit-memory', 'qemu-nbd']);

  const ws = selectWorkloads(null);
  const ids = (x: Workload[]): string[] => x.map((w) => w.id);
  t.equal(laneWorkloads(ws, 'unix', { everyLane: false, explicit: false }).length, ws.length);
  t.same(ids(laneWorkloads(ws, 'tcp', { everyLane: false, explicit: false })).sort(), [...TCP_IDS].sort());
  t.equal(laneWorkloads(ws, 'tcp', { everyLane: true, explicit: false }).length, ws.length);
  t.equal(laneWorkloads(ws, 'tcp', { everyLane: false, explicit: true }).length, ws.length);
  t.ok(laneWorkloads(ws, 'iscsi', { everyLane: false, explicit: false }).every(iscsiRunnable));
  // Every TCP id names a real workload: a typo would silently drop a row.
  t.same(ids(selectWorkloads([...TCP_IDS])), [...TCP_IDS]);
});
