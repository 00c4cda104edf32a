import type { VolumeHandle } from '../cache/index.js';
import type { Protocol } from './core/contract.js';
import type { IoStats } from './core/stats.js';

/**
 * Whether a host may still reach a unit over one protocol. Set once, when the
 * unit leaves that protocol (switch, unmap, migration's revoke): requests a
 * quiesce was holding for it are refused when let go, so nothing a revoked
 * session sent reaches the volume. A unit that comes back gets a fresh one.
 */
export interface UnitFence {
  revoked: boolean;
}

/** A unit as one host sees it: an address in the host's namespace backed by a volume. */
export interface Unit {
  host: string;
  target: number;
  lun: number;
  volume: VolumeHandle;
  volumeName: string;
  serial: string;
  naa: string;
  readOnly: boolean;
  /** Counters of this host's I/O to this volume (kept across republishing; read by /metrics). */
  stats: IoStats;
  /** The protocols the unit is served over (its binding's protocol); a frontend sees only units naming it. */
  protocols: readonly Protocol[];
  /** One fence per protocol, kept across republishing while the unit stays on that protocol. */
  fences: Readonly<Record<Protocol, UnitFence>>;
}

/** Fences for a unit newly served over its protocols: nothing revoked yet. */
export const freshFences = (): Record<Protocol, UnitFence> => ({ nbd: { revoked: false }, iscsi: { revoked: false } });

export type UnitListener = (host: string, removed: Unit[]) => void;

export const unitKey = (target: number, lun: number): string => `${target}/${lun}`;

/**
 * Host identity → its units. This is the one place access is decided: a
 * protocol front-end asks for (host, target, lun) and gets a unit only if the
 * manager has published it for that host. Nothing here trusts a name sent by
 * a client; the host comes from the listener or credential that accepted it.
 */
export class Namespaces {
  private readonly hosts = new Map<string, Map<string, Unit>>();
  private readonly removalListeners: UnitListener[] = [];
  private readonly tlsRequired = new Set<string>();
  /** Moves on every publish: frontends that keep a view of a namespace rebuild it when this changed. */
  generation = 0;

  /** Replaces a host's namespace wholesale (the manager's view is the truth). */
  publish(host: string, units: readonly Unit[]): void {
    this.generation++;
    const next = new Map<string, Unit>();
    for (const u of units) next.set(unitKey(u.target, u.lun), u);
    const prev = this.hosts.get(host);
    this.hosts.set(host, next);
    if (prev) {
      const removed = [...prev.entries()]
        .filter(([k, u]) => next.get(k)?.volume.id !== u.volume.id)
        .map(([, u]) => u);
      if (removed.length > 0) for (const l of this.removalListeners) l(host, removed);
    }
  }

  drop(host: string): void {
    this.publish(host, []);
    this.hosts.delete(host);
    this.tlsRequired.delete(host);
  }

  /** The unit at (target, lun) of `host` if it is served over `protocol`. */
  lookup(host: string | null, target: number, lun: number, protocol: Protocol): Unit | undefined {
    if (host === null) return undefined;
    const u = this.hosts.get(host)?.get(unitKey(target, lun));
    return u?.protocols.includes(protocol) ? u : undefined;
  }

  /** The host's units, in address order: those served over `protocol`, or all of them (the manager's view). */
  list(host: string | null, protocol?: Protocol): Unit[] {
    if (host === null) return [];
    let units = [...(this.hosts.get(host)?.values() ?? [])];
    if (protocol !== undefined) units = units.filter((u) => u.protocols.includes(protocol));
    return units.sort((a, b) => a.target - b.target || a.lun - b.lun);
  }

  /** Sets whether a host may only be reached over TLS (on listeners that do not prove the host by themselves). */
  setRequireTls(host: string, required: boolean): void {
    if (required) this.tlsRequired.add(host);
    else this.tlsRequired.delete(host);
  }

  requiresTls(host: string | null): boolean {
    return host !== null && this.tlsRequired.has(host);
  }

  hasHost(host: string): boolean {
    return this.hosts.has(host);
  }

  /** Called when units disappear from a host, so front-ends can end sessions using them. */
  onRemoval(l: UnitListener): void {
    this.removalListeners.push(l);
  }
}
