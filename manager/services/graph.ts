import { badRequest, notFound } from '../../common/errors.js';
import type { Db } from '../db.js';

/**
 * The resource graph (issue 15 item 6): farm → host → VM → unit → binding →
 * volume → extents → arrays → files, and snapshots beside their volumes.
 * Built from the control database in one pass and kept until an event says
 * the configuration changed; queries walk the cached copy.
 */

export const NODE_KINDS = ['farm', 'host', 'vm', 'unit', 'binding', 'volume', 'snapshot', 'backup', 'extent', 'array', 'file'] as const;
export type NodeKind = (typeof NODE_KINDS)[number];

export interface GraphNode {
  id: string;
  kind: NodeKind;
  name: string;
  attrs: Record<string, string | number | boolean | null>;
}

export interface GraphEdge {
  from: string;
  to: string;
  rel: string;
}

/** Edges a dependency walk does not follow: a snapshot or a backup hangs off its volume but the volume does not stand on it. */
const SIDE_RELS = new Set(['has-snapshot', 'has-backup']);
/** Kinds reached only along side edges: asking for them is the one walk that follows those edges. */
const SIDE_KINDS: ReadonlySet<NodeKind> = new Set(['snapshot', 'backup']);

export class Graph {
  readonly nodes = new Map<string, GraphNode>();
  readonly edges: GraphEdge[] = [];
  private readonly out = new Map<string, GraphEdge[]>();
  private readonly in = new Map<string, GraphEdge[]>();

  add(kind: NodeKind, name: string, attrs: GraphNode['attrs'] = {}): string {
    const id = `${kind}/${name}`;
    this.nodes.set(id, { id, kind, name, attrs });
    return id;
  }

  link(from: string, to: string, rel: string): void {
    const e = { from, to, rel };
    this.edges.push(e);
    push(this.out, from, e);
    push(this.in, to, e);
  }

  node(id: string): GraphNode {
    const n = this.nodes.get(id);
    if (!n) {
      const slash = id.indexOf('/');
      throw notFound(slash > 0 ? id.slice(0, slash) : 'node', slash > 0 ? id.slice(slash + 1) : id);
    }
    return n;
  }

  /** Every node reachable from `id` along (`down`) or against the edges; side edges only when asked. */
  reach(id: string, down: boolean, side = false): Set<string> {
    const seen = new Set<string>([id]);
    const stack = [id];
    while (stack.length) {
      const cur = stack.pop()!;
      for (const e of (down ? this.out : this.in).get(cur) ?? []) {
        if (!side && SIDE_RELS.has(e.rel)) continue;
        const next = down ? e.to : e.from;
        if (!seen.has(next)) {
          seen.add(next);
          stack.push(next);
        }
      }
    }
    return seen;
  }

  /** The part of the graph made of `ids`, nodes in a stable order. */
  subgraph(ids: ReadonlySet<string>): GraphView {
    return {
      nodes: [...this.nodes.values()].filter((n) => ids.has(n.id)),
      edges: this.edges.filter((e) => ids.has(e.from) && ids.has(e.to)),
    };
  }

  whole(): GraphView {
    return { nodes: [...this.nodes.values()], edges: [...this.edges] };
  }

  /** VMs that stand on a node (a volume, a binding, a host, an array…). */
  vmsOver(id: string): string[] {
    if (!this.nodes.has(id)) return [];
    const kind = id.slice(0, id.indexOf('/'));
    // A host runs its VMs: they are below it, not above.
    const ids = kind === 'host' ? this.reach(id, true) : this.reach(id, false);
    return [...ids].filter((i) => i.startsWith('vm/')).map((i) => i.slice(3));
  }
}

function push(m: Map<string, GraphEdge[]>, k: string, e: GraphEdge): void {
  const l = m.get(k);
  if (l) l.push(e);
  else m.set(k, [e]);
}

export interface GraphView {
  nodes: GraphNode[];
  edges: GraphEdge[];
}

/**
 * Which part of the configuration a graph holds. `all` is everything (the
 * graph API). `vms` is what a VM stands on: its host, its units and their
 * bindings, the volumes bound there with their extents, every array and its
 * files. That is every path a walk up from any node to a VM can take (edges
 * into a VM come only from its host, and side edges are not walked), so
 * `vmsOver` answers the same on it, at a cost that grows with the VMs' part
 * of the configuration, not with every volume (a notice is classified per
 * event: with a whole graph per event, creating the last of 10,000 volumes
 * ran at ~6.5 a second, scoped at 33; docs/bench/scale.md).
 */
export type GraphScope = 'all' | 'vms';

/** `WHERE col IN (the ids)` for a scoped read; nothing (and no argument) for the whole graph. */
function scoped(ids: number[] | null, col: string, joiner = 'WHERE'): { sql: string; args: string[] } {
  return ids === null ? { sql: '', args: [] } : { sql: ` ${joiner} ${col} IN (SELECT value FROM json_each(?))`, args: [JSON.stringify(ids)] };
}

/** Reads the configuration (all of it, or a VM's part: `GraphScope`) into a graph; `arrayState` says whether an array's file has failed. */
export function buildGraph(db: Db, arrayState: (arrayId: number) => 'online' | 'failed', scope: GraphScope = 'all'): Graph {
  const g = new Graph();
  // The VMs' bindings name everything else the scope holds: their volumes, and (with the VMs' own) their hosts.
  type U = { id: number; volume_id: number; host_id: number };
  const vmUnits = scope === 'all' ? null : (db.prepare('SELECT b.id, b.volume_id, b.host_id FROM vm_bindings vb JOIN bindings b ON b.id = vb.binding_id').all() as U[]);
  const distinct = (pick: (u: U) => number, more: number[] = []): number[] | null => (vmUnits === null ? null : [...new Set([...vmUnits.map(pick), ...more])]);
  const vmBindings = distinct((u) => u.id);
  const vmVolumes = distinct((u) => u.volume_id);
  const vmHosts = distinct((u) => u.host_id, vmUnits === null ? [] : (db.prepare('SELECT host_id FROM vms').pluck().all() as number[]));
  const vol = scoped(vmVolumes, 'id');
  const ext = scoped(vmVolumes, 'e.volume_id');
  const host = scoped(vmHosts, 'id');
  const bind = scoped(vmBindings, 'b.id');
  const part = scoped(vmVolumes, 'p.volume_id', 'AND');
  const farms = new Map<number, string>();
  for (const f of db.prepare('SELECT id, name FROM farms ORDER BY id').all() as { id: number; name: string }[]) {
    farms.set(f.id, g.add('farm', f.name));
  }
  const arrays = new Map<number, string>();
  for (const a of db.prepare('SELECT id, name, path, size, quality_class FROM arrays ORDER BY id').all() as { id: number; name: string; path: string; size: number; quality_class: string }[]) {
    const id = g.add('array', a.name, { size: a.size, qualityClass: a.quality_class, state: arrayState(a.id) });
    arrays.set(a.id, id);
    g.link(id, g.add('file', a.path, { path: a.path }), 'stored-in');
    g.link(id, g.add('file', `${a.path}.alloc`, { path: `${a.path}.alloc` }), 'map-in');
  }
  const volumes = new Map<number, string>();
  type V = { id: number; name: string; farm_id: number | null; size: number; state: string; snapshot_of: number | null };
  const vrows = db.prepare(`SELECT id, name, farm_id, size, state, snapshot_of FROM volumes${vol.sql} ORDER BY id`).all(...vol.args) as V[];
  for (const v of vrows) {
    const id = g.add(v.snapshot_of === null ? 'volume' : 'snapshot', v.name, { size: v.size, state: v.state });
    volumes.set(v.id, id);
    if (v.farm_id !== null && farms.has(v.farm_id)) g.link(farms.get(v.farm_id)!, id, 'owns');
  }
  for (const v of vrows) {
    if (v.snapshot_of !== null && volumes.has(v.snapshot_of)) g.link(volumes.get(v.snapshot_of)!, volumes.get(v.id)!, 'has-snapshot');
  }
  for (const e of db.prepare(`SELECT e.volume_id, e.seq, e.array_id, e.offset, e.length, v.name FROM extents e JOIN volumes v ON v.id = e.volume_id${ext.sql} ORDER BY e.volume_id, e.seq`).all(...ext.args) as {
    volume_id: number;
    seq: number;
    array_id: number;
    offset: number;
    length: number;
    name: string;
  }[]) {
    const id = g.add('extent', `${e.name}/${e.seq}`, { offset: e.offset, length: e.length });
    g.link(volumes.get(e.volume_id)!, id, 'extent');
    if (arrays.has(e.array_id)) g.link(id, arrays.get(e.array_id)!, 'on');
  }
  const hosts = new Map<number, string>();
  for (const h of db.prepare(`SELECT id, name, farm_id, protocols FROM hosts${host.sql} ORDER BY id`).all(...host.args) as { id: number; name: string; farm_id: number; protocols: string }[]) {
    const id = g.add('host', h.name, { protocols: h.protocols });
    hosts.set(h.id, id);
    if (farms.has(h.farm_id)) g.link(farms.get(h.farm_id)!, id, 'has-host');
  }
  const units = new Map<number, string>();
  type B = { id: number; volume_id: number; host_id: number; target: number; lun: number; protocol: string; mode: string; mapped: number; host: string };
  for (const b of db.prepare(`SELECT b.*, h.name AS host FROM bindings b JOIN hosts h ON h.id = b.host_id${bind.sql} ORDER BY b.id`).all(...bind.args) as B[]) {
    const unit = g.add('unit', `${b.host}/${b.target}/${b.lun}`, { target: b.target, lun: b.lun, mapped: b.mapped === 1 });
    const binding = g.add('binding', String(b.id), { mode: b.mode, protocol: b.protocol, mapped: b.mapped === 1 });
    units.set(b.id, unit);
    g.link(hosts.get(b.host_id)!, unit, 'exports');
    g.link(unit, binding, 'binding');
    if (volumes.has(b.volume_id)) g.link(binding, volumes.get(b.volume_id)!, 'volume');
  }
  for (const v of db.prepare('SELECT id, name, host_id FROM vms ORDER BY id').all() as { id: number; name: string; host_id: number }[]) {
    const id = g.add('vm', v.name);
    if (hosts.has(v.host_id)) g.link(hosts.get(v.host_id)!, id, 'runs');
    for (const r of db.prepare('SELECT binding_id FROM vm_bindings WHERE vm_id = ? ORDER BY binding_id').all(v.id) as { binding_id: number }[]) {
      if (units.has(r.binding_id)) g.link(id, units.get(r.binding_id)!, 'disk');
    }
  }
  // Complete backups hang off the volumes they hold, each with its files in the backup store.
  type K = { id: number; name: string; vm: string; kind: string; created_at: string; volume_id: number; file: string };
  const parts = db.prepare(`SELECT b.id, b.name, b.vm, b.kind, b.created_at, p.volume_id, p.file FROM backups b JOIN backup_volumes p ON p.backup_id = b.id WHERE b.state = 'complete'${part.sql} ORDER BY b.id, p.volume`).all(...part.args) as K[];
  for (const p of parts) {
    const id = g.add('backup', p.name, { id: p.id, vm: p.vm, kind: p.kind, createdAt: p.created_at });
    if (volumes.has(p.volume_id)) g.link(volumes.get(p.volume_id)!, id, 'has-backup');
    g.link(id, g.add('file', p.file, { path: p.file }), 'stored-in');
  }
  return g;
}

// ---- queries ------------------------------------------------------------

/** A graph request: a root (`kind/name`) to centre on, and optionally a question about it. */
export interface GraphQuery {
  root?: string | undefined;
  /** `<kind>s-of` (what the root stands on), `<kind>s-touching` (what stands on the root), or `snapshots-of`. */
  q?: string | undefined;
  /** The query's subject, `kind/name` (from `?vm=x`, `?array=y`, …). */
  subject?: string | undefined;
}

export interface GraphAnswer extends GraphView {
  root: string | null;
  query: string | null;
  /** For a query: the matching nodes' ids. */
  answer: string[] | null;
}

const QUERY_RE = /^([a-z]+)s-(of|touching)$/;

/**
 * Answers a graph request. A root gives the root, everything it stands on
 * and everything standing on it. A query gives the matching nodes and the
 * paths that connect them to the subject.
 */
export function answer(g: Graph, req: GraphQuery): GraphAnswer {
  if (req.q !== undefined) {
    const m = QUERY_RE.exec(req.q);
    const kind = m?.[1] as NodeKind | undefined;
    if (!m || !kind || !(NODE_KINDS as readonly string[]).includes(kind)) {
      throw badRequest(`query '${req.q}' is not one of <kind>s-of or <kind>s-touching, kind one of ${NODE_KINDS.join(', ')}`);
    }
    const subject = req.subject ?? req.root;
    if (!subject) throw badRequest(`query '${req.q}' needs its subject, e.g. ?q=${req.q}&vm=web1`);
    g.node(subject);
    // Snapshots and backups hang beside their volume: asking for them is the one walk that follows that edge.
    const side = SIDE_KINDS.has(kind);
    const down = m[2] === 'of';
    const reached = g.reach(subject, down, side);
    const hits = [...reached].filter((id) => id !== subject && g.nodes.get(id)!.kind === kind);
    // The connecting paths: nodes reachable from the subject that in turn reach a hit.
    const back = new Set<string>();
    for (const h of hits) for (const id of g.reach(h, !down, side)) back.add(id);
    const keep = new Set([...reached].filter((id) => back.has(id)));
    keep.add(subject);
    return { root: subject, query: req.q, answer: hits, ...g.subgraph(keep) };
  }
  if (req.root !== undefined) {
    g.node(req.root);
    const keep = new Set([...g.reach(req.root, true, true), ...g.reach(req.root, false)]);
    return { root: req.root, query: null, answer: null, ...g.subgraph(keep) };
  }
  return { root: null, query: null, answer: null, ...g.whole() };
}

// ---- DOT ------------------------------------------------------------------

const SHAPES: Record<NodeKind, string> = {
  farm: 'folder',
  host: 'box3d',
  vm: 'component',
  unit: 'box',
  binding: 'note',
  volume: 'cylinder',
  snapshot: 'cylinder',
  backup: 'cylinder',
  extent: 'rectangle',
  array: 'box',
  file: 'tab',
};

/** A DOT string literal: every quote and backslash escaped, newlines spelled out. */
const q = (s: string): string => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`;

/** Graphviz DOT of a graph answer; matches of a query are filled. */
export function toDot(a: GraphAnswer): string {
  const hits = new Set(a.answer ?? []);
  const lines = ['digraph blockgate {', '  rankdir=LR;', '  node [fontname="sans-serif", fontsize=10];', '  edge [fontname="sans-serif", fontsize=8];'];
  for (const n of a.nodes) {
    const style = [SIDE_KINDS.has(n.kind) ? 'dashed' : '', hits.has(n.id) || n.id === a.root ? 'filled' : ''].filter(Boolean).join(',');
    const label = `${n.kind}\n${n.name}${n.attrs.state !== undefined ? `\n${String(n.attrs.state)}` : ''}`;
    lines.push(`  ${q(n.id)} [label=${q(label)}, shape=${SHAPES[n.kind]}${style ? `, style=${q(style)}` : ''}];`);
  }
  for (const e of a.edges) lines.push(`  ${q(e.from)} -> ${q(e.to)} [label=${q(e.rel)}];`);
  lines.push('}');
  return lines.join('\n') + '\n';
}
