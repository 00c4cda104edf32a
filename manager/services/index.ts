import type { Logger } from 'pino';
import type { StatsRegistry } from '../../target/index.js';
import type { Db } from '../db.js';
import type { EventLog, EventRecord } from '../events.js';
import { answer, buildGraph, toDot, type Graph, type GraphAnswer, type GraphQuery } from './graph.js';
import { ChangeNotices, type ChangeNotice } from './notices.js';
import { Webhooks } from './webhooks.js';

export { CHANGE_CLASSES, classify, type ChangeClass, type ChangeNotice, type ChangedObject } from './notices.js';
export { NODE_KINDS, toDot, type GraphAnswer, type GraphQuery, type GraphNode, type GraphEdge } from './graph.js';
export { signature, SIGNATURE_HEADER, DELIVERY_HEADER, type WebhookInfo, type DeliveryInfo, type WebhookCreate } from './webhooks.js';

/** Default merge window of change notices (setting `events.merge_window_ms`). */
export const DEFAULT_MERGE_WINDOW_MS = 2000;

export interface ServicesDeps {
  db: Db;
  dataDir: string;
  events: EventLog;
  stats: StatsRegistry;
  log: Logger;
  setting(key: string): string | undefined;
  hostExists(name: string): boolean;
  arrayState(arrayId: number): 'online' | 'failed';
}

/**
 * A graph of the configuration, cached until an event says the configuration
 * changed. The graph before the last change is kept too: a notice about a
 * binding that is gone still finds the VM that owned it there.
 */
class GraphCache {
  private current: Graph | null = null;
  private previous: Graph | null = null;
  hits = 0;
  misses = 0;

  constructor(private readonly build: () => Graph) {}

  /** The graph for a query (counted as a cache hit or miss). */
  get(): Graph {
    if (this.current) this.hits++;
    else this.misses++;
    return this.peek();
  }

  /** The graph without counting (the notices' lookups). */
  peek(): Graph {
    this.current ??= this.build();
    return this.current;
  }

  invalidate(): void {
    if (this.current) this.previous = this.current;
    this.current = null;
  }

  vmsOver(id: string): string[] {
    const now = this.peek().vmsOver(id);
    const before = this.previous?.vmsOver(id) ?? [];
    return [...new Set([...now, ...before])];
  }

  /** Nodes in the graph as last built (0 before the first build). */
  get size(): number {
    return (this.current ?? this.previous)?.nodes.size ?? 0;
  }
}

/**
 * Storage services built on the event log (issue 15): merged change
 * notices, webhooks, host online/offline and the resource graph.
 */
export class Services {
  readonly notices: ChangeNotices;
  readonly webhooks: Webhooks;
  /** The whole configuration, for graph queries. */
  private readonly graph: GraphCache;
  /** What VMs stand on, for classifying every event (GraphScope). */
  private readonly vmGraph: GraphCache;
  private readonly undo: (() => void)[] = [];

  constructor(private readonly d: ServicesDeps) {
    this.graph = new GraphCache(() => buildGraph(d.db, d.arrayState));
    this.vmGraph = new GraphCache(() => buildGraph(d.db, d.arrayState, 'vms'));
    this.notices = new ChangeNotices(
      () => this.mergeWindowMs(),
      (id) => this.vmGraph.vmsOver(id),
    );
    this.webhooks = new Webhooks(d.db, d.dataDir, d.log);
  }

  /** Setting `events.merge_window_ms`, else the default. */
  mergeWindowMs(): number {
    const raw = this.d.setting('events.merge_window_ms');
    const v = raw === undefined ? NaN : Number(raw);
    return Number.isFinite(v) && v >= 0 ? v : DEFAULT_MERGE_WINDOW_MS;
  }

  async start(): Promise<void> {
    // Classified before the graph forgets: the notice's lookups see the configuration from before this change too.
    this.undo.push(
      this.d.events.subscribe((e: EventRecord) => {
        this.notices.take(e);
        if (!e.type.startsWith('job.')) {
          this.graph.invalidate();
          this.vmGraph.invalidate();
        }
      }),
    );
    this.undo.push(this.notices.subscribe((n) => this.deliver(n)));
    this.undo.push(this.d.stats.watchSessions((host, protocol, opened) => this.sessionChanged(host, protocol, opened)));
    await this.webhooks.start();
  }

  stop(): void {
    // The open window's notice is queued for the webhooks before they stop, so it survives the restart.
    this.notices.flush();
    for (const u of this.undo.splice(0)) u();
    this.notices.stop();
    this.webhooks.stop();
  }

  private deliver(n: ChangeNotice): void {
    try {
      this.webhooks.enqueue(n);
    } catch (e) {
      this.d.log.error({ op: 'webhook.enqueue', notice: n.id, err: e }, 'could not queue a change notice for the webhooks');
    }
  }

  /** A host is online from its first session over any protocol to the end of its last. */
  private sessionChanged(host: string | null, protocol: string, opened: boolean): void {
    if (host === null || !this.d.hostExists(host)) return;
    const n = this.d.stats.sessionsOf(host);
    if (opened ? n !== 1 : n !== 0) return;
    try {
      this.d.events.emit(opened ? 'host.online' : 'host.offline', `host/${host}`, { host, protocol });
    } catch (e) {
      this.d.log.warn({ op: 'host.presence', host, err: e }, 'could not record a host coming online or going offline');
    }
  }

  /** A graph request answered from the cached graph. */
  query(req: GraphQuery): GraphAnswer {
    return answer(this.graph.get(), req);
  }

  dot(a: GraphAnswer): string {
    return toDot(a);
  }

  /** Graph cache hits and misses of queries; the nodes of the graph events are classified on (it grows with VMs, not volumes). */
  graphStats(): { hits: number; misses: number; vmGraphNodes: number } {
    return { hits: this.graph.hits, misses: this.graph.misses, vmGraphNodes: this.vmGraph.size };
  }
}
