/**
 * Summarises a V8 .cpuprofile (what `node --cpu-prof` writes): self and total
 * time per function, and self time per source file. Pure, for unit tests.
 */

export interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
  scriptId?: string | number;
}

export interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  hitCount?: number;
  children?: number[];
}

export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface FunctionCost {
  /** "name (file:line)" — what a reader greps for. */
  label: string;
  functionName: string;
  file: string;
  line: number;
  selfMs: number;
  /** Share of all sampled time, idle included. */
  selfPct: number;
  /** Share of the time the thread was not idle: what a fix can win. */
  selfPctBusy: number;
  totalPct: number;
}

export interface FileCost {
  file: string;
  selfMs: number;
  selfPctBusy: number;
}

export interface ProfileSummary {
  durationMs: number;
  samples: number;
  idlePct: number;
  gcPct: number;
  top: FunctionCost[];
  files: FileCost[];
}

/** Nodes V8 adds for time not spent in JavaScript frames. */
const IDLE = '(idle)';
const GC = '(garbage collector)';

/** Makes profile URLs short and stable: repo-relative paths, "node:" for built-ins. */
export function shortUrl(url: string, root?: string): string {
  if (!url) return '';
  let u = url.startsWith('file://') ? decodeURIComponent(url.slice(7)) : url;
  if (root && u.startsWith(root)) u = u.slice(root.length).replace(/^\/+/, '');
  const nm = u.lastIndexOf('node_modules/');
  if (nm >= 0) u = u.slice(nm);
  return u;
}

function keyOf(f: CallFrame): string {
  return `${f.functionName}\u0000${f.url}\u0000${f.lineNumber}\u0000${f.columnNumber}`;
}

/**
 * Time per node. Sample timestamps give real durations; profiles without them
 * (or hand-made ones) fall back to hitCount × the mean sampling interval.
 */
function selfTimes(p: CpuProfile, window: Window): Map<number, number> {
  const t = new Map<number, number>();
  if (p.samples && p.timeDeltas && p.samples.length === p.timeDeltas.length && p.samples.length > 0) {
    const from = p.startTime + window.skipMs * 1000;
    const to = window.windowMs === undefined ? Infinity : from + window.windowMs * 1000;
    let ts = p.startTime + p.timeDeltas[0]!;
    // timeDeltas[i] is the gap before sample i, so it is the time sample i-1 covered.
    for (let i = 1; i < p.samples.length; i++) {
      const dt = Math.max(0, p.timeDeltas[i]!);
      if (ts >= from && ts < to) {
        const owner = p.samples[i - 1]!;
        t.set(owner, (t.get(owner) ?? 0) + dt);
      }
      ts += dt;
    }
    return t;
  }
  const hits = p.nodes.reduce((s, n) => s + (n.hitCount ?? 0), 0);
  const per = hits > 0 ? (p.endTime - p.startTime) / hits : 0;
  for (const n of p.nodes) if (n.hitCount) t.set(n.id, n.hitCount * per);
  return t;
}

/**
 * Which part of the profile counts: start-up (module loading) and the idle
 * tail after the workload would otherwise crowd the hot path out of the top list.
 */
interface Window {
  skipMs: number;
  windowMs?: number | undefined;
}

export interface SummaryOptions {
  top?: number;
  /** Repository root, stripped from file URLs. */
  root?: string;
  /** Ignore samples in the first skipMs of the profile… */
  skipMs?: number;
  /** …and after skipMs + windowMs. Needs sample timestamps; hitCount-only profiles count whole. */
  windowMs?: number;
}

export function summariseProfile(p: CpuProfile, opts: SummaryOptions = {}): ProfileSummary {
  const topN = opts.top ?? 15;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = selfTimes(p, { skipMs: opts.skipMs ?? 0, windowMs: opts.windowMs });

  let total = 0;
  let idle = 0;
  let gc = 0;
  type Entry = { frame: CallFrame; via: string; self: number; total: number };
  const fnSelf = new Map<string, Entry>();
  /**
   * Native bindings are ambiguous by name (`writeBuffer` is both fs.write and
   * a socket write), so they are told apart by the JavaScript frame calling them.
   */
  const viaOf = (id: number): string => {
    const f = byId.get(id)!.callFrame;
    if (f.url !== '' || f.functionName === '' || f.functionName.startsWith('(')) return '';
    const pid = parent.get(id);
    const pf = pid === undefined ? undefined : byId.get(pid)!.callFrame;
    if (!pf) return '';
    const where = shortUrl(pf.url, opts.root);
    return `${pf.functionName || '(anonymous)'}${where ? ` ${where}` : ''}`;
  };
  const keyFor = (id: number): string => `${keyOf(byId.get(id)!.callFrame)}\u0000${viaOf(id)}`;
  const entry = (id: number): Entry => {
    const k = keyFor(id);
    let e = fnSelf.get(k);
    if (!e) fnSelf.set(k, (e = { frame: byId.get(id)!.callFrame, via: viaOf(id), self: 0, total: 0 }));
    return e;
  };

  for (const [id, us] of self) {
    const n = byId.get(id);
    if (!n || us === 0) continue;
    total += us;
    if (n.callFrame.functionName === IDLE) idle += us;
    if (n.callFrame.functionName === GC) gc += us;
    entry(id).self += us;
    // Total time: each function once per stack, however often it recurses.
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const k = keyFor(cur);
      if (seen.has(k)) continue;
      seen.add(k);
      entry(cur).total += us;
    }
  }

  const busy = total - idle;
  const pct = (x: number, of: number): number => (of > 0 ? (100 * x) / of : 0);
  const top: FunctionCost[] = [...fnSelf.values()]
    .filter((e) => e.frame.functionName !== IDLE && e.frame.functionName !== '(root)' && e.self > 0)
    .sort((a, b) => b.self - a.self)
    .slice(0, topN)
    .map((e) => {
      const file = shortUrl(e.frame.url, opts.root);
      const name = e.frame.functionName || '(anonymous)';
      const line = e.frame.lineNumber + 1;
      return {
        label: file ? `${name} (${file}:${line})` : e.via ? `${name} [native, from ${e.via}]` : name,
        functionName: name,
        file,
        line,
        selfMs: e.self / 1000,
        selfPct: pct(e.self, total),
        selfPctBusy: pct(e.self, busy),
        totalPct: pct(e.total, total),
      };
    });

  const perFile = new Map<string, number>();
  for (const e of fnSelf.values()) {
    if (e.frame.functionName === IDLE || e.self === 0) continue;
    const f = shortUrl(e.frame.url, opts.root) || e.frame.functionName || '(native)';
    perFile.set(f, (perFile.get(f) ?? 0) + e.self);
  }
  const files = [...perFile.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, topN)
    .map(([file, us]) => ({ file, selfMs: us / 1000, selfPctBusy: pct(us, busy) }));

  return {
    durationMs: total / 1000,
    samples: p.samples?.length ?? p.nodes.reduce((s, n) => s + (n.hitCount ?? 0), 0),
    idlePct: pct(idle, total),
    gcPct: pct(gc, total),
    top,
    files,
  };
}
