/**
 * The iSCSI frontend: one TCP portal (portal group 1) for every host. A
 * connection's host is the one its initiator name belongs to, proven by CHAP
 * when the host has a secret; target names then select the host's targets.
 */
import net from 'node:net';
import type { Frontend, NamespaceChange, UnitAddress, UnitIO } from '../core/contract.js';
import type { IdlePoll, IoBudget } from '../core/index.js';
import type { Namespaces, Unit } from '../namespace.js';
import type { StatsRegistry } from '../stats.js';
import { IscsiConnection, type CloseReason, type ConnectionContext, type IscsiLimits } from './connection.js';
import { DEFAULT_TARGET_PARAMS, LOGIN_STATUS, type InitiatorAccess, type LoginDirectory } from './login.js';
import { targetIqn } from './naming.js';
import type { Nexus, ReservationStore, ScsiContext, ScsiDevice } from './scsi/contract.js';

export const DEFAULT_ISCSI_LIMITS: IscsiLimits = {
  maxTasks: 128,
  maxBufferedBytes: 64 * 1024 * 1024,
  maxQueuedBytes: 16 * 1024 * 1024,
  loginTimeoutMs: 15_000,
  nopIntervalMs: 10_000,
  nopTimeoutMs: 15_000,
  logoutGraceMs: 5_000,
  maxTextBytes: 64 * 1024,
  params: DEFAULT_TARGET_PARAMS,
};

/** Which host an initiator is: the manager answers from its database. */
export interface InitiatorDirectory {
  initiator(name: string): InitiatorAccess | null;
}

export interface IscsiBackend {
  namespaces: Namespaces;
  /** A unit's I/O (target/core). */
  unitIO(unit: Unit): UnitIO;
  /** The SCSI command set, given the live LUN view and the reservation store. */
  device(ctx: ScsiContext): ScsiDevice;
  reservations: ReservationStore;
  /** MODE SELECT's caching page changes a volume's cache policy (the manager saves it). */
  setCachePolicy(volumeId: number, policy: 'none' | 'write-through' | 'write-back'): Promise<void>;
  initiators: InitiatorDirectory;
}

export interface IscsiSessionEvent {
  kind: 'login' | 'logout';
  host: string | null;
  remote: string;
  initiator: string;
  target: string;
  sessionType: string;
  reason?: CloseReason;
}

export interface IscsiServerOptions {
  limits?: Partial<IscsiLimits>;
  maxSessions?: number;
  maxSessionsPerHost?: number;
  stats?: StatsRegistry;
  onSession?: (e: IscsiSessionEvent) => void;
  /** The appliance-wide I/O budget, shared with the NBD sessions. */
  budget?: IoBudget;
  /** The idle poller, shared with the NBD sessions. */
  poll?: IdlePoll;
}

const TPGT = 1;

export class IscsiServer implements Frontend {
  readonly protocol = 'iscsi' as const;
  private readonly backend: IscsiBackend;
  private readonly device: ScsiDevice;
  private readonly limits: IscsiLimits;
  private readonly maxSessions: number;
  private readonly maxPerHost: number;
  private readonly stats: StatsRegistry | undefined;
  private readonly onSession: (e: IscsiSessionEvent) => void;
  private readonly conns = new Set<IscsiConnection>();
  private readonly ctx: ConnectionContext;
  private srv: net.Server | null = null;
  private portal: string | null = null;
  private nextTsih = 1;
  /**
   * Units revoked for iSCSI while still in the host's namespace (a protocol
   * switch moving them to NBD): host → "target/lun:volume". They are gone for
   * the host's sessions until the unit is published to the host again.
   */
  private readonly revoked = new Map<string, Set<string>>();
  private revokedGen = 0;
  /** The LUN view per host and target, asked on every command: rebuilt only when the namespace or the revocations moved. */
  private readonly lunViews = new Map<string, Map<number, { gen: number; rgen: number; luns: Map<number, UnitIO> }>>();

  constructor(backend: IscsiBackend, opts: IscsiServerOptions = {}) {
    this.backend = backend;
    this.limits = { ...DEFAULT_ISCSI_LIMITS, ...opts.limits };
    this.maxSessions = opts.maxSessions ?? 256;
    this.maxPerHost = opts.maxSessionsPerHost ?? 32;
    this.stats = opts.stats;
    this.onSession = opts.onSession ?? (() => undefined);
    this.device = backend.device({
      luns: (nexus: Nexus) => this.luns(nexus.host, targetOf(nexus)),
      reservations: backend.reservations,
      setCachePolicy: (id, policy) => backend.setCachePolicy(id, policy),
    });
    const directory: LoginDirectory = {
      initiator: (name) => backend.initiators.initiator(name),
      hasTarget: (host, target) => this.targets(host).includes(target),
    };
    this.ctx = {
      directory,
      device: this.device,
      limits: this.limits,
      tpgt: TPGT,
      luns: (host, target) => this.luns(host, target),
      targets: (host) => this.targets(host),
      admit: (c) => this.admit(c),
      onClose: (c, reason) => this.closed(c, reason),
      budget: opts.budget,
      poll: opts.poll,
    };
  }

  /** The units of one host target, by LUN (not those revoked for iSCSI). */
  private luns(host: string, target: number): ReadonlyMap<number, UnitIO> {
    const gen = this.backend.namespaces.generation;
    let perTarget = this.lunViews.get(host);
    if (!perTarget) this.lunViews.set(host, (perTarget = new Map()));
    const v = perTarget.get(target);
    if (v && v.gen === gen && v.rgen === this.revokedGen) return v.luns;
    const luns = new Map<number, UnitIO>();
    for (const u of this.live(host)) if (u.target === target) luns.set(u.lun, this.backend.unitIO(u));
    perTarget.set(target, { gen, rgen: this.revokedGen, luns });
    return luns;
  }

  /** The host's units that iSCSI may serve. */
  private live(host: string): Unit[] {
    const r = this.revoked.get(host);
    const units = this.backend.namespaces.list(host, 'iscsi');
    return r ? units.filter((u) => !r.has(revokedKey(u))) : units;
  }

  /** Target numbers that hold at least one of the host's units. */
  private targets(host: string): number[] {
    const ts = new Set<number>();
    for (const u of this.live(host)) ts.add(u.target);
    return [...ts].sort((a, b) => a - b);
  }

  /** A unit published to the host again (or gone from it) is no longer revoked. */
  private unrevoke(host: string, units: readonly Unit[]): void {
    const r = this.revoked.get(host);
    if (!r) return;
    for (const u of units) r.delete(revokedKey(u));
    if (r.size === 0) this.revoked.delete(host);
    this.revokedGen++;
  }

  async listen(host: string, port: number): Promise<number> {
    const srv = net.createServer({ noDelay: true }, (sock) => this.accept(sock));
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen({ host, port }, () => {
        srv.off('error', reject);
        resolve();
      });
    });
    this.srv = srv;
    const p = (srv.address() as net.AddressInfo).port;
    this.portal = `${host.includes(':') ? `[${host}]` : host}:${p}`;
    return p;
  }

  private accept(sock: net.Socket): void {
    // Before login nothing is known of the peer; the login timeout bounds how long it may sit here.
    if (this.conns.size >= this.maxSessions * 2) {
      sock.destroy();
      return;
    }
    this.conns.add(new IscsiConnection(sock, this.ctx));
  }

  private admit(c: IscsiConnection): { tsih: number } | { status: number } {
    const host = c.host!;
    let total = 0;
    let perHost = 0;
    for (const o of this.conns) {
      if (o === c || !o.loggedIn) continue;
      // Session reinstatement (RFC 7143 §6.3.5): same initiator, ISID and target replaces the old session.
      if (o.initiatorName === c.initiatorName && o.isidHex === c.isidHex && o.targetName === c.targetName && o.sessionType === c.sessionType) {
        o.close('reinstated');
        continue;
      }
      total++;
      if (o.host === host) perHost++;
    }
    if (total >= this.maxSessions || perHost >= this.maxPerHost) return { status: LOGIN_STATUS.OUT_OF_RESOURCES };
    const used = new Set([...this.conns].map((o) => o.tsih));
    while (this.nextTsih === 0 || used.has(this.nextTsih)) this.nextTsih = (this.nextTsih + 1) & 0xffff;
    const tsih = this.nextTsih;
    this.nextTsih = (this.nextTsih + 1) & 0xffff;
    this.stats?.sessionOpened(host, 'iscsi');
    this.onSession({ kind: 'login', host, remote: c.remote, initiator: c.initiatorName, target: c.targetName, sessionType: c.sessionType });
    return { tsih };
  }

  private closed(c: IscsiConnection, reason: CloseReason): void {
    this.conns.delete(c);
    if (c.tsih !== 0 && c.host !== null) {
      this.stats?.sessionClosed(c.host, reason, 'iscsi');
      this.onSession({ kind: 'logout', host: c.host, remote: c.remote, initiator: c.initiatorName, target: c.targetName, sessionType: c.sessionType, reason });
    }
  }

  private sessionsOf(host: string): IscsiConnection[] {
    return [...this.conns].filter((c) => c.loggedIn && c.host === host);
  }

  // ---- Frontend ---------------------------------------------------------------

  namespaceChanged(host: string, change: NamespaceChange, units: readonly Unit[]): void {
    if (change !== 'resized') this.unrevoke(host, units);
    this.device.namespaceChanged(host, change, units.map((u) => u.volume.id));
    for (const c of this.sessionsOf(host)) {
      for (const u of units) if (u.target === c.target) c.reportChange(change === 'resized' ? 'capacity' : 'luns', change === 'resized' ? u.lun : 0);
    }
  }

  /**
   * With a unit: only that LUN ends for the host's iSCSI sessions, whether or
   * not the namespace still has the unit (a protocol switch keeps it there).
   * Commands queued on the LUN are aborted, running ones finish, later ones
   * get LOGICAL UNIT NOT SUPPORTED and REPORT LUNS leaves it out; when the
   * namespace still has it, the host's other LUNs of that target get REPORTED
   * LUNS DATA HAS CHANGED (an unmap already raises that through
   * namespaceChanged). It stays revoked until published to the host again.
   * Without a unit: every session of the host is asked to log out, and
   * dropped after the grace period.
   */
  async revoke(host: string, unit: Unit | null): Promise<void> {
    const sessions = [...this.conns].filter((c) => c.host === host);
    if (unit === null) {
      for (const c of sessions) c.requestLogout();
      await Promise.all(sessions.map((c) => c.closed()));
      return;
    }
    const stillPublished = this.backend.namespaces.lookup(host, unit.target, unit.lun, 'iscsi')?.volume.id === unit.volume.id;
    let r = this.revoked.get(host);
    if (!r) this.revoked.set(host, (r = new Set()));
    r.add(revokedKey(unit));
    this.revokedGen++;
    const onTarget = sessions.filter((c) => c.target === unit.target);
    await Promise.all(onTarget.map((c) => c.quiesceLun(unit.lun)));
    if (stillPublished) {
      this.device.namespaceChanged(host, 'unmapped', [unit.volume.id]);
      for (const c of onTarget) c.reportChange('luns', 0);
    }
  }

  address(host: string, unit: Unit): UnitAddress | null {
    if (this.portal === null) return null;
    const name = targetIqn(host, unit.target);
    return { protocol: 'iscsi', uris: [`iscsi://${this.portal}/${name}/${unit.lun}`], portal: this.portal, targetName: name, lun: unit.lun };
  }

  sessions(host: string): number {
    return this.sessionsOf(host).length;
  }

  /** A normal session on the unit's target sees every LUN the namespace gives that target, unless the LUN is revoked. */
  reaches(host: string, unit: Unit): boolean {
    if (this.revoked.get(host)?.has(revokedKey(unit))) return false;
    return this.sessionsOf(host).some((c) => c.sessionType === 'Normal' && c.target === unit.target);
  }

  /** The portal as "host:port", once listening. */
  get address_(): string | null {
    return this.portal;
  }

  async close(): Promise<void> {
    const srv = this.srv;
    this.srv = null;
    const closing = srv ? new Promise<void>((r) => srv.close(() => r())) : Promise.resolve();
    await Promise.all([...this.conns].map((c) => c.shutdown()));
    await closing;
  }
}

const revokedKey = (u: Unit): string => `${u.target}/${u.lun}:${u.volume.id}`;

const targetNumbers = new Map<string, number>();

/** The target number a nexus's target name stands for (asked per command: parsed once per name). */
function targetOf(n: Nexus): number {
  let t = targetNumbers.get(n.targetName);
  if (t === undefined) {
    const m = /\.t(\d+)$/.exec(n.targetName);
    t = m ? Number(m[1]) : -1;
    // Names come from logged-in sessions of known hosts; the bound only guards against a flood of them.
    if (targetNumbers.size > 4096) targetNumbers.clear();
    targetNumbers.set(n.targetName, t);
  }
  return t;
}
