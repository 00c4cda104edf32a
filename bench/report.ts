/**
 * Results model, target checks and the two renderings (markdown, SVG). Pure:
 * the runner hands it data, tests hand it fixtures.
 */
import type { ProfileSummary } from './profile.js';
import type { ScenarioId } from './scenarios.js';
import type { ServerName, Transport } from './servers.js';
import { geomean, medianStats, ratio, type RunStats } from './stats.js';
import type { Kind, Workload } from './workloads.js';

export interface Cell {
  /** Absent in results from before scenarios existed (those were all pre-filled). */
  scenario?: ScenarioId;
  workload: string;
  transport: Transport;
  server: ServerName;
  runs: RunStats[];
  median: RunStats;
  /** (max − min) / median of IOPS over the rounds: how far to trust the median. */
  spread?: number;
  /** Median IOPS over the baseline's median IOPS on the same workload and transport. */
  ratioToBaseline: number | null;
}

export interface TargetRow {
  scenario?: ScenarioId;
  workload: string;
  transport: Transport;
  ratio: number | null;
}

export interface TargetResult {
  id: string;
  label: string;
  /** The blockgate row the target is about (absent: 'blockgate'). */
  server?: ServerName;
  versus: ServerName;
  min: number;
  rows: TargetRow[];
  worst: number | null;
  geomean: number | null;
  met: boolean;
}

export interface ProfileResult {
  workload: string;
  file: string;
  /** The measured window inside the profile, so it can be summarised again the same way. */
  skipMs?: number;
  windowMs?: number;
  summary: ProfileSummary;
}

export interface Results {
  date: string;
  mode: 'quick' | 'full';
  config: {
    rounds: number;
    runtimeS: number;
    rampS: number;
    sizeBytes: number;
    transports: Transport[];
    servers: ServerName[];
    baseline: ServerName;
    workloads: Workload[];
    /** Scenarios run, each with its workload ids (absent: one pre-filled scenario). */
    scenarios?: { id: ScenarioId; title: string; note: string; workloads: string[] }[];
    workDirFs: string;
    /** Environment blockgate ran with beyond the runner's own (absent in older results). */
    blockgateEnv?: Record<string, string>;
    baseEnv?: Record<string, string>;
    /** The volume policy blockgate-base served (absent: write-back). */
    basePolicy?: string;
    /** False: `bench/matrix.ts` ran the policy volumes, nbdkit-memory and TCP on fewer lanes (absent: older results ran every lane). */
    everyLane?: boolean;
  };
  machine: Record<string, string | number>;
  versions: Record<string, string>;
  cells: Cell[];
  targets: TargetResult[];
  profiles: ProfileResult[];
  /** Set when the profiles were taken later than the table (--profile-only). */
  profiledAt?: string;
  durationS: number;
}

export function cellKey(workload: string, transport: Transport, server: ServerName, scenario: ScenarioId = 'filled'): string {
  return `${scenario}|${workload}|${transport}|${server}`;
}

/** One scenario on one transport: the workloads it ran. */
export interface Lane {
  scenario: ScenarioId;
  transport: Transport;
  workloads: readonly Workload[];
}

/** The iSCSI lane's rows are judged against tgt, not the NBD baseline. */
export const ISCSI_BASELINE: ServerName = 'tgt';

/** The server a transport's ratios are taken against. */
export function baselineOf(transport: Transport, nbdBaseline: ServerName): ServerName {
  return transport === 'iscsi' ? ISCSI_BASELINE : nbdBaseline;
}

/** Medians per cell and each cell's ratio to its lane's baseline server (see baselineOf). */
export function buildCells(runs: ReadonlyMap<string, RunStats[]>, lanes: readonly Lane[], servers: readonly ServerName[], baseline: ServerName): Cell[] {
  const cells: Cell[] = [];
  for (const { scenario, transport: tr, workloads } of lanes) {
    for (const w of workloads) {
      const base = runs.get(cellKey(w.id, tr, baselineOf(tr, baseline), scenario));
      const baseIops = base && base.length > 0 ? medianStats(base).iops : undefined;
      for (const s of servers) {
        const r = runs.get(cellKey(w.id, tr, s, scenario));
        if (!r || r.length === 0) continue;
        const m = medianStats(r);
        const iops = r.map((x) => x.iops);
        const spread = m.iops > 0 ? (Math.max(...iops) - Math.min(...iops)) / m.iops : 0;
        cells.push({ scenario, workload: w.id, transport: tr, server: s, runs: [...r], median: m, spread, ratioToBaseline: ratio(m.iops, baseIops) });
      }
    }
  }
  return cells;
}

interface TargetSpec {
  id: string;
  label: string;
  /** The blockgate row measured. */
  server: ServerName;
  versus: ServerName;
  min: number;
  kinds: readonly Kind[] | 'all';
  /** Only rows at this queue depth or deeper. */
  minQd?: number;
  /** Only rows of these scenarios. */
  scenarios?: readonly ScenarioId[];
}

/** Issue 12's targets, as blockgate-over-peer IOPS ratios that must hold on every matching row. */
export const TARGETS: readonly TargetSpec[] = [
  { id: 'wb-nbdkit', label: 'write-back ≥ 1.0× nbdkit-file, every row', server: 'blockgate', versus: 'nbdkit-file', min: 1.0, kinds: 'all' },
  { id: 'wb-qemu', label: 'write-back ≥ 1.5× qemu-nbd, every row', server: 'blockgate', versus: 'qemu-nbd', min: 1.5, kinds: 'all' },
  {
    id: 'cached-read',
    label: 'cached 4k random read QD ≥ 8 ≥ 1.5× nbdkit-file',
    server: 'blockgate',
    versus: 'nbdkit-file',
    min: 1.5,
    kinds: ['randread'],
    minQd: 8,
    scenarios: ['filled'],
  },
  { id: 'wt', label: 'write-through ≥ 0.9× nbdkit-file, every row', server: 'blockgate-wt', versus: 'nbdkit-file', min: 0.9, kinds: 'all' },
  { id: 'none', label: 'policy none ≥ 0.9× nbdkit-file, every row', server: 'blockgate-none', versus: 'nbdkit-file', min: 0.9, kinds: 'all' },
  { id: 'iscsi-tgt', label: 'iSCSI write-back ≥ 1.5× tgt, every row', server: 'blockgate-iscsi', versus: 'tgt', min: 1.5, kinds: 'all' },
];

export function evaluateTargets(cells: readonly Cell[], workloads: readonly Workload[]): TargetResult[] {
  const byId = new Map(workloads.map((w) => [w.id, w]));
  const iops = new Map(cells.map((c) => [cellKey(c.workload, c.transport, c.server, c.scenario), c.median.iops]));
  return TARGETS.map((t) => {
    const rows: TargetRow[] = cells
      .filter((c) => {
        const w = byId.get(c.workload)!;
        return (
          c.server === t.server &&
          (t.kinds === 'all' || t.kinds.includes(w.kind)) &&
          (t.minQd === undefined || w.qd >= t.minQd) &&
          (t.scenarios === undefined || t.scenarios.includes(c.scenario ?? 'filled'))
        );
      })
      .map((c) => ({
        scenario: c.scenario ?? 'filled',
        workload: c.workload,
        transport: c.transport,
        ratio: ratio(c.median.iops, iops.get(cellKey(c.workload, c.transport, t.versus, c.scenario))),
      }));
    const known = rows.map((r) => r.ratio).filter((r): r is number => r !== null);
    const worst = known.length > 0 ? Math.min(...known) : null;
    return {
      id: t.id,
      label: t.label,
      server: t.server,
      versus: t.versus,
      min: t.min,
      rows,
      worst,
      geomean: known.length > 0 ? geomean(known) : null,
      // Unmeasured rows cannot count as met.
      met: rows.length > 0 && known.length === rows.length && worst! >= t.min,
    };
  });
}

// ---- markdown -------------------------------------------------------------

const fmt = {
  int: (x: number): string => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '–'),
  f1: (x: number): string => (Number.isFinite(x) ? x.toFixed(1) : '–'),
  us: (x: number): string => (!Number.isFinite(x) ? '–' : x >= 1000 ? `${(x / 1000).toFixed(2)} ms` : `${x.toFixed(0)} µs`),
  ratio: (x: number | null): string => (x === null ? '–' : `${x.toFixed(2)}×`),
  pct: (x: number): string => `${x.toFixed(1)}%`,
};

/** The scenario/transport lanes a result holds, in run order (older results: one pre-filled scenario). */
export function lanesOf(r: Results): { scenario: ScenarioId; title: string; transport: Transport; label: string }[] {
  const scenarios = r.config.scenarios ?? [{ id: 'filled' as const, title: 'pre-filled', note: '', workloads: r.config.workloads.map((w) => w.id) }];
  return scenarios.flatMap((sc) =>
    r.config.transports.map((transport) => ({
      scenario: sc.id,
      title: sc.title,
      transport,
      label: `${sc.title}, ${transport === 'unix' ? 'unix socket' : transport === 'tcp' ? 'TCP loopback' : 'iSCSI over TCP loopback'}`,
    })),
  );
}

function cellAt(r: Results, scenario: ScenarioId, w: string, tr: Transport, s: ServerName): Cell | undefined {
  return r.cells.find((x) => (x.scenario ?? 'filled') === scenario && x.workload === w && x.transport === tr && x.server === s);
}

function resultsTable(r: Results, scenario: ScenarioId, transport: Transport): string[] {
  const lines = [
    `| workload | server | IOPS | spread | MiB/s | p50 | p99 | vs ${baselineOf(transport, r.config.baseline)} |`,
    '|---|---|---:|---:|---:|---:|---:|---:|',
  ];
  for (const w of r.config.workloads) {
    for (const s of r.config.servers) {
      const c = cellAt(r, scenario, w.id, transport, s);
      if (!c) continue;
      const m = c.median;
      const name = s.startsWith('blockgate') ? `**${s}**` : s;
      const spread = c.spread === undefined ? '–' : `±${fmt.f1((c.spread * 100) / 2)}%`;
      lines.push(`| ${w.title} | ${name} | ${fmt.int(m.iops)} | ${spread} | ${fmt.f1(m.mibps)} | ${fmt.us(m.p50us)} | ${fmt.us(m.p99us)} | ${fmt.ratio(c.ratioToBaseline)} |`);
    }
  }
  return lines;
}

function targetsSection(r: Results): string[] {
  const lines = ['| target | rows meeting it | worst row | best row | geomean | met? |', '|---|---:|---:|---:|---:|:---:|'];
  for (const t of r.targets) {
    const known = t.rows.filter((x) => x.ratio !== null);
    const ok = known.filter((x) => x.ratio! >= t.min).length;
    const best = known.length > 0 ? Math.max(...known.map((x) => x.ratio!)) : null;
    const at = (v: number | null): string => {
      const row = t.rows.find((x) => x.ratio === v);
      return row ? `${fmt.ratio(v)} (${row.workload}, ${row.scenario ?? 'filled'}, ${row.transport})` : '–';
    };
    const verdict = t.rows.length === 0 ? '– not measured' : t.met ? '✅ met' : '❌ missed';
    lines.push(`| ${t.label} | ${ok} / ${t.rows.length} | ${at(t.worst)} | ${at(best)} | ${fmt.ratio(t.geomean)} | ${verdict} |`);
  }
  lines.push('', 'A target is met only when every matching row (every scenario, queue depth and transport) reaches it.');
  return lines;
}

/** Every row a target covers, with its ratio and met/missed: the table the issue asks for. */
function ratioTable(r: Results): string[] {
  const active = r.targets.filter((t) => t.rows.length > 0);
  if (active.length === 0) return ['No target rows in this run.'];
  const head = active.map((t) => `${t.server ?? 'blockgate'} ÷ ${t.versus} (≥ ${t.min})`);
  const lines = [`| scenario | transport | workload | ${head.join(' | ')} |`, `|---|---|---|${active.map(() => '---:').join('|')}|`];
  for (const lane of lanesOf(r)) {
    for (const w of r.config.workloads) {
      const cols = active.map((t) => {
        const row = t.rows.find((x) => (x.scenario ?? 'filled') === lane.scenario && x.transport === lane.transport && x.workload === w.id);
        if (!row) return '';
        if (row.ratio === null) return '– ❌';
        return `${fmt.ratio(row.ratio)} ${row.ratio >= t.min ? '✅' : '❌'}`;
      });
      if (cols.every((c) => c === '')) continue;
      lines.push(`| ${lane.title} | ${lane.transport} | ${w.title} | ${cols.join(' | ')} |`);
    }
  }
  return lines;
}

function profileSection(r: Results): string[] {
  if (r.profiles.length === 0) return ['Not profiled in this run (`npm run bench -- --profile`).'];
  const lines: string[] = [
    ...(r.profiledAt ? [`Profiled separately on ${r.profiledAt} (\`--profile-only\`).`, ''] : []),
    'blockgate alone under `node --cpu-prof`, unix socket, one workload per process. Set-up and fill happen in an',
    'earlier process, and only samples from the measured part of the fio run count (start-up and ramp are cut).',
    '"busy" = share of non-idle main-thread time. The profiler samples wall-clock time on the main thread, so a native',
    'call such as `read`/`writeBuffer` (fs.read/fs.write bindings) includes the time the thread is descheduled while',
    'handing the request to a libuv pool thread — on 2 vCPUs shared with fio that hand-off is expensive.',
    'Native bindings are split by their caller: `writeBuffer [native, from write node:fs]` is fs.write,',
    '`writeBuffer [native, from handleWriteReq …]` a socket write of a single reply.',
  ];
  for (const p of r.profiles) {
    const s = p.summary;
    lines.push(
      '',
      `### ${p.workload}`,
      '',
      `${fmt.f1(s.durationMs / 1000)} s sampled, idle ${fmt.pct(s.idlePct)}, GC ${fmt.pct(s.gcPct)} of all time.`,
      '',
      '| # | function (file:line in dist/) | self ms | self % busy | total % |',
      '|---:|---|---:|---:|---:|',
      ...s.top.map((f, i) => `| ${i + 1} | \`${f.label}\` | ${fmt.f1(f.selfMs)} | ${fmt.pct(f.selfPctBusy)} | ${fmt.pct(f.totalPct)} |`),
      '',
      'Self time by file: ' + s.files.slice(0, 8).map((f) => `\`${f.file}\` ${fmt.pct(f.selfPctBusy)}`).join(', ') + '.',
    );
  }
  return lines;
}

export function renderMarkdown(r: Results): string {
  const m = r.machine;
  const v = r.versions;
  const lines: string[] = [
    '# blockgate benchmark: side by side with nbdkit and qemu-nbd',
    '',
    `Generated by \`npm run bench${r.mode === 'quick' ? ' -- --quick' : ''}\` on ${r.date} (${r.mode} mode, ${fmt.f1(r.durationS / 60)} min).`,
    '',
    '## Machine and versions',
    '',
    `- CPU: ${m.cpuModel} × ${m.nproc} (client and servers share these cores)`,
    `- Memory: ${m.memoryGiB} GiB; kernel ${m.kernel}; backing files on ${r.config.workDirFs}`,
    `- node ${v.node}, fio ${v.fio}, nbdkit ${v.nbdkit}, qemu-nbd ${v['qemu-nbd']}, blockgate ${v.blockgate}`,
    ...(m.loadavg1Start !== undefined
      ? [`- Load average (1 min) at start / end: ${m.loadavg1Start} / ${m.loadavg1End} — above ${m.nproc}, other work shared the cores; rotation spreads that noise over all servers but not evenly per cell`]
      : []),
    '',
    '## Method',
    '',
    `Every server serves a ${r.config.sizeBytes / 1048576} MiB export: blockgate (one volume on one array file; as`,
    '`blockgate` a write-back volume, as `blockgate-wt` write-through, as `blockgate-none` cache policy none, each its own',
    'process), nbdkit\'s `file` plugin (`--threads 16 file cache=default fadvise=normal`) and qemu-nbd',
    '(`-f raw --cache=writeback --aio=io_uring --discard=unmap -e 8 -t`) on sparse files of the same size in the same',
    'directory, and nbdkit\'s `memory` plugin. The peers (and tgt) run with glibc\'s mmap threshold raised to 32 MiB',
    '(`PEER_ENV`, bench/servers.ts): qemu-nbd\'s per-request 1 MiB buffers otherwise pay this VM\'s first touch each time. The same fio job files (`bench/jobs/`, nbd engine, `uri=`) run against',
    `each server in turn; the order rotates per workload and round. ${r.config.rounds} round(s) of`,
    `${r.config.runtimeS} s (after ${r.config.rampS} s ramp) per cell; the tables show per-metric medians and the IOPS`,
    'spread over the rounds (± half of max − min, as a share of the median).',
    `Ratios are IOPS over ${r.config.baseline} on the same workload, scenario and transport (for 1 MiB rows IOPS and MiB/s ratios are equal);`,
    `iSCSI lanes are over ${ISCSI_BASELINE} and driven by \`qemu-img bench\` over libiscsi (no latency percentiles; 4k "random" is a 257-block stride).`,
    'Latency is fio\'s completion latency over reads and writes together. Transports: ' + r.config.transports.join(', ') + '.',
    ...(r.config.everyLane === false
      ? [
          'Lanes (`bench/matrix.ts`): blockgate-wt and blockgate-none run on the unix lane of the pre-filled and fresh',
          'scenarios, nbdkit-memory on the pre-filled unix lane, and TCP runs the QD1/QD32 4k shapes, both 1 MiB streams and',
          'the 4-connection mix; every other cell runs everywhere (`--every-lane` runs them all).',
        ]
      : []),
    `blockgate environment: ${Object.entries(r.config.blockgateEnv ?? {}).map(([k, x]) => `${k}=${x}`).join(' ') || 'defaults (UV_THREADPOOL_SIZE unset = 4)'}${
      Object.keys(r.config.baseEnv ?? {}).length > 0 ? `; blockgate-base also ${Object.entries(r.config.baseEnv!).map(([k, x]) => `${k}=${x}`).join(' ')}` : ''
    }${r.config.basePolicy ? `; blockgate-base serves a ${r.config.basePolicy} volume` : ''}.`,
    '',
    'Scenarios (each starts every server afresh on new sparse files):',
    '',
    ...(r.config.scenarios ?? [{ title: 'pre-filled', note: 'each export filled once sequentially before measuring', workloads: [] as string[] }]).map(
      (sc) => `- **${sc.title}**: ${sc.note}.`,
    ),
    '',
    '## Targets',
    '',
    ...targetsSection(r),
    '',
    '### Every target row',
    '',
    ...ratioTable(r),
    '',
    '![ratios to nbdkit-file](chart.svg)',
    '',
  ];
  for (const lane of lanesOf(r)) {
    lines.push(`## Results, ${lane.label}`, '', ...resultsTable(r, lane.scenario, lane.transport), '');
  }
  lines.push('## Profile of blockgate\'s hot path', '', ...profileSection(r), '');
  return lines.join('\n');
}

// ---- chart ------------------------------------------------------------------

const COLORS: Record<ServerName, string> = {
  blockgate: '#d9480f',
  'blockgate-wt': '#f08c00',
  'blockgate-none': '#ae3ec9',
  'blockgate-base': '#495057',
  'nbdkit-file': '#868e96',
  'nbdkit-memory': '#1c7ed6',
  'qemu-nbd': '#2f9e44',
  'blockgate-iscsi': '#c92a2a',
  tgt: '#343a40',
};

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * Grouped bars of every server's ratio to the baseline, one panel per
 * transport; the baseline is the dashed 1.0 line, so it gets no bars.
 */
export function renderSvg(r: Results): string {
  const servers = r.config.servers.filter((s) => s !== r.config.baseline && s !== ISCSI_BASELINE);
  const ws = r.config.workloads;
  const barW = 9;
  const groupW = servers.length * barW + 10;
  const left = 50;
  const plotW = ws.length * groupW;
  const width = Math.max(left + plotW + 100, 700);
  const plotH = 200;
  const labelH = 130;
  const panelH = 30 + plotH + labelH;
  const legendH = 50;
  const lanes = lanesOf(r);
  const height = legendH + lanes.length * panelH;
  const maxRatio = Math.max(1.5, ...r.cells.filter((c) => c.server !== baselineOf(c.transport, r.config.baseline)).map((c) => c.ratioToBaseline ?? 0));
  const top = Math.ceil(maxRatio * 2) / 2;
  // One decimal is plenty for pixels and keeps the committed file small.
  const y = (v: number): number => Math.round((plotH - (Math.min(v, top) / top) * plotH) * 10) / 10;

  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
  ];
  servers.forEach((s, i) => {
    const x = left + i * 120;
    out.push(`<rect x="${x}" y="10" width="12" height="12" fill="${COLORS[s]}"/>`, `<text x="${x + 16}" y="20">${esc(s)}</text>`);
  });
  out.push(`<text x="${left}" y="40">IOPS ratio to ${esc(r.config.baseline)}, iSCSI panels to ${ISCSI_BASELINE} (dashed line = 1.0)</text>`);

  lanes.forEach((lane, pi) => {
    const tr = lane.transport;
    const oy = legendH + pi * panelH + 20;
    out.push(`<g transform="translate(0,${oy})">`, `<text x="${left}" y="-4" font-weight="bold">${esc(lane.label)}</text>`);
    for (let t = 0; t <= top + 1e-9; t += top > 4 ? 1 : 0.5) {
      out.push(
        `<line x1="${left}" x2="${left + plotW}" y1="${y(t)}" y2="${y(t)}" stroke="#e9ecef"/>`,
        `<text x="${left - 6}" y="${y(t) + 4}" text-anchor="end">${t.toFixed(1)}</text>`,
      );
    }
    ws.forEach((w, wi) => {
      const gx = left + wi * groupW + 5;
      servers.forEach((s, si) => {
        const c = cellAt(r, lane.scenario, w.id, tr, s);
        const v = c?.ratioToBaseline;
        if (v === null || v === undefined) return;
        const x = gx + si * barW;
        out.push(`<rect x="${x}" y="${y(v)}" width="${barW - 1}" height="${plotH - y(v)}" fill="${COLORS[s]}"><title>${esc(`${s} ${w.title}: ${v.toFixed(2)}×`)}</title></rect>`);
      });
      const lx = gx + (servers.length * barW) / 2;
      out.push(`<text transform="translate(${lx},${plotH + 8}) rotate(60)" text-anchor="start">${esc(w.title)}</text>`);
    });
    out.push(
      `<line x1="${left}" x2="${left + plotW}" y1="${y(1)}" y2="${y(1)}" stroke="#343a40" stroke-dasharray="4 3"/>`,
      `<line x1="${left}" x2="${left}" y1="0" y2="${plotH}" stroke="#343a40"/>`,
      '</g>',
    );
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
