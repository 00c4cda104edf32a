import fs from 'node:fs';
import net from 'node:net';
import { formatAddress, parseAddress } from '../../common/address.js';
import type { Frontend, HostEndpoints, NamespaceChange, StatsRegistry, UnitAddress } from '../core/index.js';
import type { Unit } from '../namespace.js';
import { DEFAULT_LIMITS, NbdConnection, type CloseReason, type ListenerTraits, type NbdBackend, type NbdLimits } from './connection.js';

export interface SessionEvent {
  kind: 'connect' | 'negotiate' | 'disconnect';
  host: string | null;
  listener: string;
  remote: string;
  reason?: CloseReason;
  /** negotiate: the unit chosen, how, and with which features. */
  export?: string;
  volume?: string;
  option?: 'GO' | 'EXPORT_NAME';
  structuredReplies?: boolean;
  tls?: boolean;
}

export interface NbdServerOptions {
  limits?: Partial<NbdLimits>;
  onSession?: (e: SessionEvent) => void;
  /** Open sessions per host are counted here (the sessions gauge of /metrics). */
  stats?: StatsRegistry;
}

/** Identity a listener gives every connection it accepts. `null` = nobody in particular. */
export type ListenerIdentity = () => string | null;

/** Where a listener is, for the URIs address() hands out. */
interface ListenerInfo {
  server: net.Server;
  identity: ListenerIdentity;
  /** Unix socket path, or TCP "host:port". */
  unix: string | null;
  tcp: string | null;
  shared: boolean;
}

/**
 * The NBD front-end: per-host unix sockets and TCP ports, plus the shared TCP
 * listener. Every connection's host is fixed by the listener that accepted it.
 * The manager drives it as a Frontend (target/core/contract.ts).
 */
export class NbdServer implements Frontend {
  readonly protocol = 'nbd' as const;
  private readonly backend: NbdBackend;
  private readonly limits: NbdLimits;
  private readonly onSession: (e: SessionEvent) => void;
  private readonly stats: StatsRegistry | undefined;
  private readonly listeners = new Map<string, ListenerInfo>();
  private readonly open = new Set<NbdConnection>();
  /** Open connections by listener key and by the host the listener gave them (the connection limits). */
  private readonly perListener = new Map<string, number>();
  private readonly perHost = new Map<string, number>();

  constructor(backend: NbdBackend, opts: NbdServerOptions = {}) {
    this.backend = backend;
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.onSession = opts.onSession ?? (() => undefined);
    this.stats = opts.stats;
  }

  // ---- Frontend ------------------------------------------------------------

  /** NBD has no way to tell a live session its export changed: sessions on removed units are ended by revoke(). */
  namespaceChanged(_host: string, _change: NamespaceChange, _units: readonly Unit[]): void {}

  /** Ends the host's sessions on `unit`'s volume (all of its sessions when unit is null) at once. */
  revoke(host: string, unit: Unit | null): Promise<void> {
    for (const s of this.open) {
      if (s.host !== host) continue;
      const u = s.exportUnit;
      if (unit === null || (u && u.volume.id === unit.volume.id)) s.close('revoked');
    }
    return Promise.resolve();
  }

  /**
   * The URIs `host` reaches `unit` by: its unix socket, its own TCP listener,
   * and the shared listener when the host is its default (in that order).
   */
  address(host: string, unit: Unit): UnitAddress | null {
    const exportName = `${unit.target}/${unit.lun}`;
    const unix: string[] = [];
    const own: string[] = [];
    const shared: string[] = [];
    for (const l of this.listeners.values()) {
      if (l.identity() !== host) continue;
      if (l.unix !== null) unix.push(`nbd+unix:///${exportName}?socket=${l.unix}`);
      else if (l.tcp !== null) (l.shared ? shared : own).push(`nbd://${l.tcp}/${exportName}`);
    }
    const uris = [...unix, ...own, ...shared];
    return uris.length === 0 ? null : { protocol: 'nbd', uris, exportName };
  }

  sessions(host: string): number {
    return this.sessionCount(host);
  }

  /** An NBD session reaches one export: the host reaches the unit when one of its sessions has it open. */
  reaches(host: string, unit: Unit): boolean {
    for (const s of this.open) {
      const u = s.exportUnit;
      if (s.host === host && u && u.target === unit.target && u.lun === unit.lun && u.volume.id === unit.volume.id) return true;
    }
    return false;
  }

  /** Opens the host's own listeners: its unix socket, and its TCP port if it has one. */
  async hostAdded(host: string, endpoints: HostEndpoints): Promise<void> {
    await this.listenUnix(`unix:${host}`, endpoints.socket, () => host);
    if (endpoints.nbdTcp) {
      const a = parseAddress(endpoints.nbdTcp);
      try {
        await this.listenTcp(`tcp:${host}`, a.host, a.port, () => host);
      } catch (e) {
        await this.closeListener(`unix:${host}`);
        throw e;
      }
    }
  }

  async hostRemoved(host: string): Promise<void> {
    // A net.Server's close waits for its connections: stop accepting, end the host's sessions, then wait.
    const closing = Promise.all([this.closeListener(`unix:${host}`), this.closeListener(`tcp:${host}`)]);
    await this.revoke(host, null);
    await closing;
  }

  // ---- listeners -----------------------------------------------------------

  /**
   * Listens on a unix socket; `key` names the listener for later removal.
   * A host's own socket proves the host by file permissions alone.
   */
  async listenUnix(key: string, path: string, identity: ListenerIdentity): Promise<void> {
    await fs.promises.rm(path, { force: true });
    await this.listen(key, identity, { tlsSelectsHost: false, authenticated: true }, (srv, cb) => srv.listen(path, cb), path);
    await fs.promises.chmod(path, 0o660);
  }

  /**
   * Listens on TCP. `shared` marks the shared listener: plaintext sessions
   * act for `identity()` (the default host), STARTTLS sessions for the host
   * their TLS identity names. Any TCP listener honours a host's require-TLS.
   */
  async listenTcp(key: string, host: string, port: number, identity: ListenerIdentity, shared = false): Promise<number> {
    const srv = await this.listen(key, identity, { tlsSelectsHost: shared, authenticated: false }, (s, cb) => s.listen({ host, port }, cb), null, host, shared);
    return (srv.address() as net.AddressInfo).port;
  }

  private listen(
    key: string,
    identity: ListenerIdentity,
    traits: ListenerTraits,
    start: (srv: net.Server, cb: () => void) => void,
    unix: string | null = null,
    tcpHost: string | null = null,
    shared = false,
  ): Promise<net.Server> {
    const srv = net.createServer({ noDelay: true }, (sock) => this.accept(sock, key, identity(), traits));
    return new Promise((resolve, reject) => {
      srv.once('error', reject);
      start(srv, () => {
        srv.off('error', reject);
        const tcp = tcpHost === null ? null : formatAddress(tcpHost, (srv.address() as net.AddressInfo).port);
        this.listeners.set(key, { server: srv, identity, unix, tcp, shared });
        resolve(srv);
      });
    });
  }

  private accept(sock: net.Socket, listener: string, host: string | null, traits: ListenerTraits): void {
    const remote = sock.remoteAddress ? `${sock.remoteAddress}:${sock.remotePort}` : 'unix';
    const onListener = this.perListener.get(listener) ?? 0;
    const forHost = host === null ? 0 : (this.perHost.get(host) ?? 0);
    if (onListener >= this.limits.maxConnectionsPerListener || forHost >= this.limits.maxConnectionsPerHost) {
      // Refused before any byte is read or sent: a flood costs a socket for one loop turn.
      sock.destroy();
      this.onSession({ kind: 'disconnect', host, listener, remote, reason: 'connection-limit' });
      return;
    }
    this.perListener.set(listener, onListener + 1);
    if (host !== null) this.perHost.set(host, forHost + 1);
    this.onSession({ kind: 'connect', host, listener, remote });
    this.stats?.sessionOpened(host);
    const handshake = setTimeout(() => conn.close('handshake-timeout'), this.limits.handshakeTimeoutMs);
    handshake.unref();
    const conn = new NbdConnection(
      sock,
      host,
      this.backend,
      this.limits,
      (c, reason) => {
        clearTimeout(handshake);
        this.open.delete(c);
        this.release(this.perListener, listener);
        if (host !== null) this.release(this.perHost, host);
        // Counted under the listener's host, the one it was opened under.
        this.stats?.sessionClosed(host, reason);
        // The host may have changed with STARTTLS: log the one the session acted for.
        this.onSession({ kind: 'disconnect', host: c.host, listener, remote, reason });
      },
      traits,
      (c, n) => {
        clearTimeout(handshake);
        if (this.limits.idleTimeoutMs > 0) {
          // Node's socket timeout counts inactivity both ways; a request still being served is not idleness.
          sock.setTimeout(this.limits.idleTimeoutMs, () => {
            if (!c.busy) c.close('idle-timeout');
          });
        }
        this.onSession({ kind: 'negotiate', host: c.host, listener, remote, export: n.export, volume: n.unit.volumeName, option: n.option, structuredReplies: n.structuredReplies, tls: n.tls });
      },
    );
    this.open.add(conn);
  }

  private release(counts: Map<string, number>, key: string): void {
    const n = (counts.get(key) ?? 1) - 1;
    if (n <= 0) counts.delete(key);
    else counts.set(key, n);
  }

  hasListener(key: string): boolean {
    return this.listeners.has(key);
  }

  async closeListener(key: string): Promise<void> {
    const l = this.listeners.get(key);
    if (!l) return;
    this.listeners.delete(key);
    await new Promise<void>((r) => l.server.close(() => r()));
  }

  sessionCount(host?: string): number {
    let n = 0;
    for (const s of this.open) if (host === undefined || s.host === host) n++;
    return n;
  }

  /**
   * Stops accepting, then ends every session gracefully: requests already
   * read are served and answered before the socket closes, so nothing a
   * client saw acknowledged is cut off.
   */
  async close(): Promise<void> {
    // A net.Server's close callback waits for its connections, so stop
    // accepting first, end the sessions, then wait.
    const keys = [...this.listeners.keys()];
    // net.Server.close waits for its connections; start draining them alongside.
    const closing = Promise.all(keys.map((k) => this.closeListener(k)));
    await Promise.all([...this.open].map((s) => s.shutdown()));
    await closing;
  }
}
