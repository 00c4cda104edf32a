import fs from 'node:fs';
import net from 'node:net';
import type { StatsRegistry } from '../stats.js';
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

/**
 * The NBD front-end: per-host unix sockets and TCP ports, plus the shared TCP
 * listener. Every connection's host is fixed by the listener that accepted it.
 */
export class NbdServer {
  private readonly backend: NbdBackend;
  private readonly limits: NbdLimits;
  private readonly onSession: (e: SessionEvent) => void;
  private readonly stats: StatsRegistry | undefined;
  private readonly listeners = new Map<string, net.Server>();
  private readonly sessions = new Set<NbdConnection>();

  constructor(backend: NbdBackend, opts: NbdServerOptions = {}) {
    this.backend = backend;
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.onSession = opts.onSession ?? (() => undefined);
    this.stats = opts.stats;
    backend.namespaces.onRemoval((host, removed) => {
      const gone = new Set(removed.map((u) => u.volume.id));
      for (const s of this.sessions) {
        const u = s.exportUnit;
        if (s.host === host && u && gone.has(u.volume.id)) s.close('revoked');
      }
    });
  }

  /**
   * Listens on a unix socket; `key` names the listener for later removal.
   * A host's own socket proves the host by file permissions alone.
   */
  async listenUnix(key: string, path: string, identity: ListenerIdentity): Promise<void> {
    await fs.promises.rm(path, { force: true });
    await this.listen(key, identity, { tlsSelectsHost: false, authenticated: true }, (srv, cb) => srv.listen(path, cb));
    await fs.promises.chmod(path, 0o660);
  }

  /**
   * Listens on TCP. `shared` marks the shared listener: plaintext sessions
   * act for `identity()` (the default host), STARTTLS sessions for the host
   * their TLS identity names. Any TCP listener honours a host's require-TLS.
   */
  async listenTcp(key: string, host: string, port: number, identity: ListenerIdentity, shared = false): Promise<number> {
    const srv = await this.listen(key, identity, { tlsSelectsHost: shared, authenticated: false }, (s, cb) => s.listen({ host, port }, cb));
    return (srv.address() as net.AddressInfo).port;
  }

  private listen(
    key: string,
    identity: ListenerIdentity,
    traits: ListenerTraits,
    start: (srv: net.Server, cb: () => void) => void,
  ): Promise<net.Server> {
    const srv = net.createServer({ noDelay: true }, (sock) => this.accept(sock, key, identity(), traits));
    return new Promise((resolve, reject) => {
      srv.once('error', reject);
      start(srv, () => {
        srv.off('error', reject);
        this.listeners.set(key, srv);
        resolve(srv);
      });
    });
  }

  private accept(sock: net.Socket, listener: string, host: string | null, traits: ListenerTraits): void {
    const remote = sock.remoteAddress ? `${sock.remoteAddress}:${sock.remotePort}` : 'unix';
    this.onSession({ kind: 'connect', host, listener, remote });
    this.stats?.sessionOpened(host);
    const conn = new NbdConnection(
      sock,
      host,
      this.backend,
      this.limits,
      (c, reason) => {
        this.sessions.delete(c);
        // Counted under the listener's host, the one it was opened under.
        this.stats?.sessionClosed(host, reason);
        // The host may have changed with STARTTLS: log the one the session acted for.
        this.onSession({ kind: 'disconnect', host: c.host, listener, remote, reason });
      },
      traits,
      (c, n) =>
        this.onSession({ kind: 'negotiate', host: c.host, listener, remote, export: n.export, volume: n.unit.volumeName, option: n.option, structuredReplies: n.structuredReplies, tls: n.tls }),
    );
    this.sessions.add(conn);
  }

  hasListener(key: string): boolean {
    return this.listeners.has(key);
  }

  async closeListener(key: string): Promise<void> {
    const srv = this.listeners.get(key);
    if (!srv) return;
    this.listeners.delete(key);
    await new Promise<void>((r) => srv.close(() => r()));
  }

  /** Ends every session of a host (host removed or its identity changed). */
  closeHostSessions(host: string): void {
    for (const s of this.sessions) if (s.host === host) s.close('revoked');
  }

  sessionCount(host?: string): number {
    let n = 0;
    for (const s of this.sessions) if (host === undefined || s.host === host) n++;
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
    await Promise.all([...this.sessions].map((s) => s.shutdown()));
    await closing;
  }
}
