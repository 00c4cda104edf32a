import fs from 'node:fs';
import net from 'node:net';
import type { StatsRegistry } from '../stats.js';
import { DEFAULT_LIMITS, NbdConnection, type CloseReason, type NbdBackend, type NbdLimits } from './connection.js';

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

  /** Listens on a unix socket; `key` names the listener for later removal. */
  async listenUnix(key: string, path: string, identity: ListenerIdentity): Promise<void> {
    await fs.promises.rm(path, { force: true });
    await this.listen(key, identity, (srv, cb) => srv.listen(path, cb));
    await fs.promises.chmod(path, 0o660);
  }

  async listenTcp(key: string, host: string, port: number, identity: ListenerIdentity): Promise<number> {
    const srv = await this.listen(key, identity, (s, cb) => s.listen({ host, port }, cb));
    return (srv.address() as net.AddressInfo).port;
  }

  private listen(
    key: string,
    identity: ListenerIdentity,
    start: (srv: net.Server, cb: () => void) => void,
  ): Promise<net.Server> {
    const srv = net.createServer({ noDelay: true }, (sock) => this.accept(sock, key, identity()));
    return new Promise((resolve, reject) => {
      srv.once('error', reject);
      start(srv, () => {
        srv.off('error', reject);
        this.listeners.set(key, srv);
        resolve(srv);
      });
    });
  }

  private accept(sock: net.Socket, listener: string, host: string | null): void {
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
        this.stats?.sessionClosed(host, reason);
        this.onSession({ kind: 'disconnect', host, listener, remote, reason });
      },
      (_c, n) =>
        this.onSession({ kind: 'negotiate', host, listener, remote, export: n.export, volume: n.unit.volumeName, option: n.option, structuredReplies: n.structuredReplies, tls: n.tls }),
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
    const keys = [...this.listeners.keys()];
    // net.Server.close waits for its connections; start draining them alongside.
    const closing = Promise.all(keys.map((k) => this.closeListener(k)));
    await Promise.all([...this.sessions].map((s) => s.shutdown()));
    await closing;
  }
}
