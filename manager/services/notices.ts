import type { EventRecord } from '../events.js';

/**
 * Merged change notices (issue 15 item 5). Raw events are classified into
 * what an orchestrator cares about (a VM came or went or changed, a host came
 * online or went offline, a volume or an array changed) and merged over a
 * window: one `changed` notice per window names each affected object once,
 * with every class that applied; subscribers pull details (the object's href,
 * the event range) when they want them.
 */

export const CHANGE_CLASSES = [
  'vm.added',
  'vm.removed',
  'vm.modified',
  'host.added',
  'host.modified',
  'host.online',
  'host.offline',
  'volume.added',
  'volume.removed',
  'volume.modified',
  'array.added',
  'array.modified',
] as const;
export type ChangeClass = (typeof CHANGE_CLASSES)[number];
export type ChangedKind = 'vm' | 'host' | 'volume' | 'array';

export interface ChangedObject {
  kind: ChangedKind;
  name: string;
  classes: ChangeClass[];
  /** Where the object's details are (404 once it is gone). */
  href: string;
}

export interface ChangeNotice {
  type: 'changed';
  /** The last event the notice covers: unique and increasing, across restarts too. */
  id: number;
  at: string;
  windowMs: number;
  /** The raw events merged here: GET /v1/events?since=<first - 1> replays them. */
  events: { first: number; last: number; count: number };
  objects: ChangedObject[];
}

/** What a classifier needs of the configuration: the VMs standing on a graph node (`volume/x`, `binding/3`, `array/a0`). */
export type VmLookup = (nodeId: string) => string[];

type Hit = [ChangedKind, string, ChangeClass];

const str = (v: unknown): string | null => (typeof v === 'string' && v.length > 0 ? v : null);
const hrefs: Record<ChangedKind, string> = { vm: '/v1/vms/', host: '/v1/hosts/', volume: '/v1/volumes/', array: '/v1/arrays/' };

/** The classes one event stands for; events that change nothing an orchestrator sees (jobs, images) stand for none. */
export function classify(e: EventRecord, vmsOver: VmLookup): Hit[] {
  const d = e.data;
  const out: Hit[] = [];
  const add = (kind: ChangedKind, name: unknown, cls: ChangeClass): void => {
    const n = str(name);
    if (n) out.push([kind, n, cls]);
  };
  const vmsOf = (...ids: string[]): void => {
    for (const id of ids) for (const vm of vmsOver(id)) out.push(['vm', vm, 'vm.modified']);
  };
  const volumeChanged = (name: string | null): void => {
    if (!name) return;
    out.push(['volume', name, 'volume.modified']);
    vmsOf(`volume/${name}`, `snapshot/${name}`);
  };
  switch (e.type) {
    case 'vm.created':
      add('vm', d.vm, 'vm.added');
      break;
    case 'vm.deleted':
      add('vm', d.vm, 'vm.removed');
      break;
    case 'host.created':
      add('host', d.host, 'host.added');
      break;
    case 'host.online':
    case 'host.offline':
      add('host', d.host, e.type);
      break;
    case 'host.initiator.added':
    case 'host.initiator.removed':
    case 'host.chap.set':
    case 'host.chap.cleared':
    case 'namespace.changed':
      add('host', d.host, 'host.modified');
      break;
    case 'volume.claimed':
      add('volume', d.volume, 'volume.added');
      break;
    case 'volume.deleted':
      add('volume', d.volume, 'volume.removed');
      break;
    case 'volume.state':
      // Allocation is where a volume comes into being (create, or a deallocated row given space again).
      if (d.operation === 'allocate') add('volume', d.volume, 'volume.added');
      else volumeChanged(str(d.volume));
      break;
    case 'volume.scrubbed':
      volumeChanged(str(d.volume));
      break;
    case 'volume.copied':
      volumeChanged(str(d.source));
      for (const t of Array.isArray(d.targets) ? d.targets : []) volumeChanged(str(t));
      break;
    case 'volume.snapshot':
      volumeChanged(str(d.source));
      add('volume', d.snapshot, 'volume.added');
      break;
    case 'binding.created':
    case 'binding.deleted':
      volumeChanged(str(d.volume));
      add('host', d.host, 'host.modified');
      vmsOf(`binding/${String(d.id)}`);
      break;
    case 'array.created':
      add('array', d.array, 'array.added');
      break;
    case 'arrays.discovered':
      for (const a of Array.isArray(d.added) ? d.added : []) add('array', a, 'array.added');
      break;
    case 'array.failed':
    case 'array.attached':
      // A failed array fails the disks of every VM on it; a re-attached one brings them back.
      add('array', d.array, 'array.modified');
      if (str(d.array)) vmsOf(`array/${str(d.array)!}`);
      break;
    case 'array.io-error':
      add('array', d.array, 'array.modified');
      break;
    case 'array.capacity':
      for (const a of Array.isArray(d.arrays) ? d.arrays : []) add('array', a, 'array.modified');
      break;
    default:
      break;
  }
  return out;
}

/** Merges classified events over a window and hands each window's notice to its subscribers. */
export class ChangeNotices {
  private readonly listeners = new Set<(n: ChangeNotice) => void>();
  private readonly objects = new Map<string, ChangedObject>();
  private first = 0;
  private last = 0;
  private count = 0;
  private timer: NodeJS.Timeout | null = null;
  private windowOpen = 0;
  /** The last notices, for a subscriber that reconnects (GET /v1/events/notices). */
  private readonly recent: ChangeNotice[] = [];

  constructor(
    private readonly windowMs: () => number,
    private readonly vmsOver: VmLookup,
  ) {}

  /** Takes one raw event (called for every event, in order). */
  take(e: EventRecord): void {
    const hits = classify(e, this.vmsOver);
    if (hits.length === 0) return;
    if (this.count === 0) {
      this.first = e.id;
      this.windowOpen = this.windowMs();
      this.timer = setTimeout(() => this.flush(), this.windowOpen);
    }
    this.last = e.id;
    this.count++;
    for (const [kind, name, cls] of hits) {
      const key = `${kind}/${name}`;
      let o = this.objects.get(key);
      if (!o) {
        o = { kind, name, classes: [], href: hrefs[kind] + encodeURIComponent(name) };
        this.objects.set(key, o);
      }
      if (!o.classes.includes(cls)) o.classes.push(cls);
    }
  }

  /** Ends the window now: its notice goes out (shutdown; tests use the window itself). */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.count === 0) return;
    const n: ChangeNotice = {
      type: 'changed',
      id: this.last,
      at: new Date().toISOString(),
      windowMs: this.windowOpen,
      events: { first: this.first, last: this.last, count: this.count },
      objects: [...this.objects.values()],
    };
    this.objects.clear();
    this.count = 0;
    this.recent.push(n);
    if (this.recent.length > 100) this.recent.shift();
    for (const l of this.listeners) l(n);
  }

  /** Notices sent after `id` (the last ones kept in memory). */
  since(id: number): ChangeNotice[] {
    return this.recent.filter((n) => n.id > id);
  }

  subscribe(fn: (n: ChangeNotice) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
