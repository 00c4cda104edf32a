/**
 * The iSCSI frontend: one TCP portal (portal group 1) for every host. A
 * connection's host is the one its initiator name belongs to, proven by CHAP
 * when the host has a secret; target names then select the host's targets.
 */
import net from 'node:net';
import type { Frontend, NamespaceChange, UnitAddress, UnitIO } from '../core/contract.js';
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
    };
  }

  /** The units of one host target, by LUN. */
  private luns(host: string, target: number): ReadonlyMap<number, UnitIO> {
    const m = new Map<number, UnitIO>();
    for (const u of this.backend.namespaces.list(host, 'iscsi')) if (u.target === target) m.set(u.lun, this.backend.unitIO(u));
    return m;
  }

  /** Target numbers that hold at least one of the host's units. */
  private targets(host: string): number[] {
    const ts = new Set<number>();
    for (const u of this.backend.namespaces.list(host, 'iscsi')) ts.add(u.target);
    return [...ts].sort((a, b) => a - b);
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
    this.device.namespaceChanged(host, change, units.map((u) => u.volume.id));
    for (const c of this.sessionsOf(host)) {
      for (const u of units) if (u.target === c.target) c.reportChange(change === 'resized' ? 'capacity' : 'luns', change === 'resized' ? u.lun : 0);
    }
  }

  /**
   * With a unit: sessions of its target stop using it — commands already
   * running on that LUN finish, later ones find no such LUN (the namespace no
   * longer has it). Without: every session of the host is asked to log out,
   * and dropped after the grace period.
   */
  async revoke(host: string, unit: Unit | null): Promise<void> {
    const sessions = [...this.conns].filter((c) => c.host === host);
    if (unit === null) {
      for (const c of sessions) c.requestLogout();
      await Promise.all(sessions.map((c) => c.closed()));
      return;
    }
    await Promise.all(sessions.filter((c) => c.target === unit.target).map((c) => c.quiesceLun(unit.lun)));
  }

  address(host: string, unit: Unit): UnitAddress | null {
    if (this.portal === null) return null;
    const name = targetIqn(host, unit.target);
    return { protocol: 'iscsi', uris: [`iscsi://${this.portal}/${name}/${unit.lun}`], portal: this.portal, targetName: name, lun: unit.lun };
  }

  sessions(host: string): number {
    return this.sessionsOf(host).length;
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

/** The target number a nexus's target name stands for. */
function targetOf(n: Nexus): number {
  const m = /\.t(\d+)$/.exec(n.targetName);
  return m ? Number(m[1]) : -1;
}
